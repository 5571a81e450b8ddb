//! TLS over a [`TcpConn`], for clients and servers: native-tls (the default, the platform's
//! library) or rustls (the `rustls` feature, clients only), with the same client options: extra
//! roots, a client identity, and the dangerous switch. A client's handshake runs on the dial's
//! non-blocking socket, a step at a time ([`start`], [`TlsHandshake::resume`]); a server's
//! blocks under the handshake deadline ([`accept`]).

use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};

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
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
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

/// A client's TLS handshake under way on a non-blocking socket (see [`start`]).
#[derive(Debug)]
pub(crate) enum TlsHandshake {
    Native(Box<native_tls::MidHandshakeTlsStream<TcpConn>>),
    /// rustls's connection over the socket, still handshaking.
    #[cfg(feature = "rustls")]
    Rustls(Box<rustls_backend::RustlsStream>),
}

/// How far a client's TLS handshake got before the socket would block.
#[derive(Debug)]
pub(crate) enum TlsProgress {
    Done(TlsConn),
    /// Waiting for the socket: [`TlsHandshake::resume`] when it is ready (which way:
    /// [`TcpConn::blocked_writing`]).
    Blocked(TlsHandshake),
}

/// Start the client's TLS handshake with `host` on `conn`, whose socket is non-blocking: it
/// goes as far as the socket allows.
pub(crate) fn start(host: &str, conn: TcpConn, config: &Config) -> Result<TlsProgress, Error> {
    if config.danger_accept_invalid_certs() {
        tracing::warn!("certificate verification is off (danger_accept_invalid_certs)");
    }
    match config.tls_backend() {
        TlsBackend::NativeTls => native_progress(host, native(host, config)?.connect(host, conn)),
        #[cfg(feature = "rustls")]
        TlsBackend::Rustls => {
            TlsHandshake::Rustls(Box::new(rustls_backend::start(host, conn, config)?)).resume(host)
        }
        #[cfg(not(feature = "rustls"))]
        TlsBackend::Rustls => Err(Error::Config(
            "the rustls TLS backend needs the `rustls` feature".into(),
        )),
    }
}

impl TlsHandshake {
    /// Go on with the handshake with `host` as far as the socket allows.
    pub(crate) fn resume(self, host: &str) -> Result<TlsProgress, Error> {
        match self {
            TlsHandshake::Native(mid) => native_progress(host, mid.handshake()),
            #[cfg(feature = "rustls")]
            TlsHandshake::Rustls(mut stream) => match rustls_backend::handshake(&mut stream, host)?
            {
                true => Ok(established(host, TlsConn::Rustls(stream))),
                false => Ok(TlsProgress::Blocked(TlsHandshake::Rustls(stream))),
            },
        }
    }

    /// The TCP connection under the handshake.
    pub(crate) fn tcp_conn(&self) -> &TcpConn {
        match self {
            TlsHandshake::Native(mid) => mid.get_ref(),
            #[cfg(feature = "rustls")]
            TlsHandshake::Rustls(stream) => stream.get_ref(),
        }
    }
}

fn established(host: &str, tls: TlsConn) -> TlsProgress {
    let backend = match &tls {
        TlsConn::Native(_) => TlsBackend::NativeTls,
        #[cfg(feature = "rustls")]
        TlsConn::Rustls(_) => TlsBackend::Rustls,
    };
    tracing::debug!(host, ?backend, "tls established");
    TlsProgress::Done(tls)
}

/// Where native-tls's handshake stands after a step on the non-blocking socket.
fn native_progress(
    host: &str,
    r: Result<native_tls::TlsStream<TcpConn>, native_tls::HandshakeError<TcpConn>>,
) -> Result<TlsProgress, Error> {
    match r {
        Ok(stream) => Ok(established(host, TlsConn::Native(Box::new(stream)))),
        Err(native_tls::HandshakeError::WouldBlock(mid)) => {
            Ok(TlsProgress::Blocked(TlsHandshake::Native(Box::new(mid))))
        }
        Err(e) => Err(native_failure(host, e)),
    }
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

/// The TLS client context of a config, built on first use and shared by the config's clones.
/// Building one loads the system's root certificates (tens of milliseconds), so building it
/// per connection made a thousand `wss://` connections of one client spend seconds there, one
/// after another.
#[derive(Clone, Default)]
pub(crate) struct ConnectorCache(Arc<ContextCells>);

#[derive(Default)]
struct ContextCells {
    native: OnceLock<native_tls::TlsConnector>,
    #[cfg(feature = "rustls")]
    rustls: OnceLock<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ConnectorCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectorCache")
    }
}

/// The native-tls connector for `config`'s roots, identity and dangerous switch (cached).
fn native(host: &str, config: &Config) -> Result<native_tls::TlsConnector, Error> {
    if let Some(connector) = config.tls.cache.0.native.get() {
        return Ok(connector.clone());
    }
    let connector = build_native(host, config)?;
    let _ = config.tls.cache.0.native.set(connector.clone());
    Ok(connector)
}

fn build_native(host: &str, config: &Config) -> Result<native_tls::TlsConnector, Error> {
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
    builder
        .build()
        .map_err(|e| tls_error(host, TlsFailure::Configuration, e))
}

/// A failed native-tls handshake (either side), as the library's error. `peer` names the other
/// side: the host we verified, or the client's address.
fn native_failure<S>(peer: &str, e: native_tls::HandshakeError<S>) -> Error {
    match e {
        // The handshake wanted to wait on a blocking socket (a server's accept): its timeout,
        // our deadline, fired. (A client's non-blocking handshake waits instead.)
        native_tls::HandshakeError::WouldBlock(_) => Error::Timeout(TimeoutKind::Handshake),
        // Our deadline shows up as an io error inside the TLS library's.
        native_tls::HandshakeError::Failure(e) if crate::error::deadline_in_chain(&e) => {
            Error::Timeout(TimeoutKind::Handshake)
        }
        native_tls::HandshakeError::Failure(e) => {
            let failure = crate::native_tls_failure::classify(&e);
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

    // rustls 0.23.48 deprecates ring's provider (no post-quantum key exchange) to steer users
    // to aws-lc-rs, which needs a C toolchain and CMake to build; ring keeps the feature
    // buildable anywhere Rust is. Allowed, so a `cargo update` does not fail `-D warnings`.
    #[allow(deprecated)]
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

    /// Check the material by building the client context, and keep it for the connections.
    pub(crate) fn validate(config: &Config) -> Result<(), Error> {
        cached_client_config(config).map(|_| ())
    }

    fn cached_client_config(config: &Config) -> Result<Arc<ClientConfig>, Error> {
        if let Some(c) = config.tls.cache.0.rustls.get() {
            return Ok(c.clone());
        }
        let built = Arc::new(client_config(config)?);
        let _ = config.tls.cache.0.rustls.set(built.clone());
        Ok(built)
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

    /// rustls's client connection to `host` over `conn`, not started yet.
    pub(crate) fn start(host: &str, conn: TcpConn, config: &Config) -> Result<RustlsStream, Error> {
        let tls = cached_client_config(config)?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| tls_error(host, TlsFailure::Configuration, e))?;
        let client = ClientConnection::new(tls, name)
            .map_err(|e| tls_error(host, TlsFailure::Configuration, e))?;
        Ok(StreamOwned::new(client, conn))
    }

    /// Go on with the handshake as far as the non-blocking socket allows: true when it is
    /// over.
    pub(crate) fn handshake(stream: &mut RustlsStream, host: &str) -> Result<bool, Error> {
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                match io_outcome(&e) {
                    IoOutcome::WouldBlock => return Ok(false),
                    IoOutcome::Interrupted => {}
                    _ => return Err(failure(host, e)),
                }
            }
        }
        Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_builds_its_tls_context_once_and_its_clones_share_it() {
        let builder = Config::builder();
        let config = builder.clone().build().unwrap();
        assert!(
            config.tls.cache.0.native.get().is_none(),
            "built on first use"
        );
        native("example.test", &config).unwrap();
        assert!(config.tls.cache.0.native.get().is_some());
        assert!(
            config.clone().tls.cache.0.native.get().is_some(),
            "clones share the context"
        );
        let other = builder.build().unwrap();
        assert!(
            other.tls.cache.0.native.get().is_none(),
            "another build of the same settings has its own"
        );
    }
}
