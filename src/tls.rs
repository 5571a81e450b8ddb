//! TLS over a [`TcpConn`], for clients and servers: native-tls (the default, the platform's
//! library) or rustls (the `rustls` feature, clients only), with the same client options: extra
//! roots, a client identity, and the dangerous switch.

use std::io::{self, Read, Write};

use crate::error::{Error, TimeoutKind, TlsFailure};
use crate::tcp::TcpConn;
use crate::Config;

/// Which TLS implementation a client uses for `wss://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsBackend {
    /// The platform's TLS library through native-tls (OpenSSL on Linux). The default.
    #[default]
    NativeTls,
    /// rustls with the `ring` provider and the system's root certificates. Needs the crate's
    /// `rustls` feature; [`ConfigBuilder::build`](crate::ConfigBuilder::build) refuses it
    /// otherwise.
    Rustls,
}

/// An established TLS connection over TCP, from either library.
#[derive(Debug)]
pub(crate) enum TlsConn {
    Native(Box<native_tls::TlsStream<TcpConn>>),
    #[cfg(feature = "rustls")]
    Rustls(Box<rustls_backend::RustlsStream>),
}

impl TlsConn {
    /// The TCP connection under TLS.
    pub(crate) fn tcp_conn(&self) -> &TcpConn {
        match self {
            TlsConn::Native(t) => t.get_ref(),
            #[cfg(feature = "rustls")]
            TlsConn::Rustls(t) => t.get_ref(),
        }
    }

    pub(crate) fn tcp_conn_mut(&mut self) -> &mut TcpConn {
        match self {
            TlsConn::Native(t) => t.get_mut(),
            #[cfg(feature = "rustls")]
            TlsConn::Rustls(t) => t.get_mut(),
        }
    }

    /// Best effort: tell the peer we are done writing (TLS close_notify).
    pub(crate) fn close_notify(&mut self) {
        match self {
            TlsConn::Native(t) => {
                let _ = t.shutdown();
            }
            #[cfg(feature = "rustls")]
            TlsConn::Rustls(t) => {
                t.conn.send_close_notify();
                let _ = t.flush();
            }
        }
    }
}

impl Read for TlsConn {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            TlsConn::Native(t) => t.read(buf),
            #[cfg(feature = "rustls")]
            TlsConn::Rustls(t) => t.read(buf),
        }
    }
}

impl Write for TlsConn {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            TlsConn::Native(t) => t.write(buf),
            #[cfg(feature = "rustls")]
            TlsConn::Rustls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            TlsConn::Native(t) => t.flush(),
            #[cfg(feature = "rustls")]
            TlsConn::Rustls(t) => t.flush(),
        }
    }
}

/// Run the client's TLS handshake with `host` on `conn` (blocking, under the handshake deadline).
pub(crate) fn handshake(host: &str, conn: TcpConn, config: &Config) -> Result<TlsConn, Error> {
    if config.danger_accept_invalid_certs() {
        tracing::warn!("certificate verification is off (danger_accept_invalid_certs)");
    }
    let tls = match config.tls_backend() {
        TlsBackend::NativeTls => TlsConn::Native(Box::new(native(host, conn, config)?)),
        #[cfg(feature = "rustls")]
        TlsBackend::Rustls => {
            TlsConn::Rustls(Box::new(rustls_backend::handshake(host, conn, config)?))
        }
        #[cfg(not(feature = "rustls"))]
        TlsBackend::Rustls => {
            return Err(Error::Config(
                "the rustls TLS backend needs the `rustls` feature".into(),
            ))
        }
    };
    tracing::debug!(host, backend = ?config.tls_backend(), "tls established");
    Ok(tls)
}

/// Run a server's TLS handshake with the client `peer` on an accepted `conn` (blocking, under
/// the handshake deadline).
pub(crate) fn accept(
    acceptor: &native_tls::TlsAcceptor,
    conn: TcpConn,
    peer: &str,
) -> Result<TlsConn, Error> {
    match acceptor.accept(conn) {
        Ok(s) => Ok(TlsConn::Native(Box::new(s))),
        Err(e) => Err(native_failure(peer, e)),
    }
}

/// Check the TLS material for `backend` (called by `ConfigBuilder::build`).
pub(crate) fn validate(config: &Config) -> Result<(), Error> {
    match config.tls_backend() {
        TlsBackend::NativeTls => {
            for pem in config.root_certificates() {
                match native_tls::Certificate::stack_from_pem(pem) {
                    Ok(certs) if !certs.is_empty() => {}
                    Ok(_) => {
                        return Err(Error::Config(
                            "root certificate: no PEM certificate found".into(),
                        ))
                    }
                    Err(e) => return Err(Error::Config(format!("root certificate: {e}"))),
                }
            }
            if let Some((chain, key)) = config.identity() {
                if let Err(e) = native_tls::Identity::from_pkcs8(chain, key) {
                    return Err(Error::Config(format!("client identity: {e}")));
                }
            }
            Ok(())
        }
        #[cfg(feature = "rustls")]
        TlsBackend::Rustls => rustls_backend::validate(config),
        #[cfg(not(feature = "rustls"))]
        TlsBackend::Rustls => Err(Error::Config(
            "the rustls TLS backend needs the `rustls` feature".into(),
        )),
    }
}

fn tls_error(
    host: &str,
    failure: TlsFailure,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Tls {
        host: host.to_owned(),
        failure,
        source: Box::new(source),
    }
}

fn native(
    host: &str,
    conn: TcpConn,
    config: &Config,
) -> Result<native_tls::TlsStream<TcpConn>, Error> {
    let mut builder = native_tls::TlsConnector::builder();
    for pem in config.root_certificates() {
        let certs = native_tls::Certificate::stack_from_pem(pem)
            .map_err(|e| tls_error(host, TlsFailure::Configuration, e))?;
        for cert in certs {
            builder.add_root_certificate(cert);
        }
    }
    if let Some((chain, key)) = config.identity() {
        let identity = native_tls::Identity::from_pkcs8(chain, key)
            .map_err(|e| tls_error(host, TlsFailure::Configuration, e))?;
        builder.identity(identity);
    }
    if config.danger_accept_invalid_certs() {
        builder.danger_accept_invalid_certs(true);
        builder.danger_accept_invalid_hostnames(true);
    }
    let connector = builder
        .build()
        .map_err(|e| tls_error(host, TlsFailure::Configuration, e))?;
    connector
        .connect(host, conn)
        .map_err(|e| native_failure(host, e))
}

/// A failed native-tls handshake (either side), as the library's error. `peer` names the other
/// side: the host we verified, or the client's address.
fn native_failure<S>(peer: &str, e: native_tls::HandshakeError<S>) -> Error {
    match e {
        // The handshake wanted to wait on a blocking socket: its timeout, our deadline, fired.
        native_tls::HandshakeError::WouldBlock(_) => Error::Timeout(TimeoutKind::Handshake),
        // Our deadline shows up as an io error inside the TLS library's.
        native_tls::HandshakeError::Failure(e) if crate::error::deadline_in_chain(&e) => {
            Error::Timeout(TimeoutKind::Handshake)
        }
        native_tls::HandshakeError::Failure(e) => {
            let failure = TlsFailure::classify(&e);
            tls_error(peer, failure, e)
        }
    }
}

#[cfg(feature = "rustls")]
mod rustls_backend {
    use std::io;
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{
        CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, StreamOwned,
    };

    use super::tls_error;
    use crate::error::{Error, TimeoutKind, TlsFailure};
    use crate::io_outcome::{io_outcome, IoOutcome};
    use crate::tcp::TcpConn;
    use crate::Config;

    pub(crate) type RustlsStream = StreamOwned<ClientConnection, TcpConn>;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("no PEM certificate found".into());
        }
        Ok(certs)
    }

    pub(crate) fn validate(config: &Config) -> Result<(), Error> {
        client_config(config).map(|_| ())
    }

    fn client_config(config: &Config) -> Result<ClientConfig, Error> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("rustls: {e}")))?;
        let builder = if config.danger_accept_invalid_certs() {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            let system = rustls_native_certs::load_native_certs();
            for e in &system.errors {
                tracing::debug!(error = %e, "a system root could not be loaded");
            }
            let (added, _ignored) = roots.add_parsable_certificates(system.certs);
            tracing::trace!(added, "system roots");
            for pem in config.root_certificates() {
                for cert in
                    certs(pem).map_err(|e| Error::Config(format!("root certificate: {e}")))?
                {
                    roots
                        .add(cert)
                        .map_err(|e| Error::Config(format!("root certificate: {e}")))?;
                }
            }
            builder.with_root_certificates(roots)
        };
        match config.identity() {
            None => Ok(builder.with_no_client_auth()),
            Some((chain, key)) => {
                let chain =
                    certs(chain).map_err(|e| Error::Config(format!("client identity: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| Error::Config(format!("client identity: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Config(format!("client identity: {e}")))
            }
        }
    }

    pub(crate) fn handshake(
        host: &str,
        mut conn: TcpConn,
        config: &Config,
    ) -> Result<RustlsStream, Error> {
        let tls = Arc::new(client_config(config)?);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| tls_error(host, TlsFailure::Configuration, e))?;
        let mut client = ClientConnection::new(tls, name)
            .map_err(|e| tls_error(host, TlsFailure::Configuration, e))?;
        while client.is_handshaking() {
            if let Err(e) = client.complete_io(&mut conn) {
                return Err(failure(host, e));
            }
        }
        Ok(StreamOwned::new(client, conn))
    }

    /// rustls reports verification failures as typed errors inside the io::Error.
    fn failure(host: &str, e: io::Error) -> Error {
        if crate::error::is_deadline(&e) {
            return Error::Timeout(TimeoutKind::Handshake);
        }
        let kind = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(c)) => match c {
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => TlsFailure::HostnameMismatch,
                CertificateError::UnknownIssuer => TlsFailure::UntrustedIssuer,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
                _ => TlsFailure::Other,
            },
            Some(rustls::Error::InvalidMessage(_)) => TlsFailure::NotTls,
            None if io_outcome(&e) == IoOutcome::Ended => TlsFailure::ClosedDuringHandshake,
            _ => TlsFailure::Other,
        };
        tls_error(host, kind, e)
    }

    /// The dangerous switch: accepts any certificate (signatures are still checked, so the
    /// handshake itself stays well-formed).
    #[derive(Debug)]
    struct AcceptAnyCertificate(Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
