//! Both TLS backends honour the same options: extra roots, the dangerous switch, hostname and
//! issuer checks with typed reasons. rustls runs when the `rustls` feature is on
//! (`cargo test --all-features`, as CI does).

mod util;

use syncws::{BlockingClient, Config, Error, TlsBackend, TlsFailure};
use util::*;

fn backends() -> Vec<TlsBackend> {
    let mut all = vec![TlsBackend::NativeTls];
    if cfg!(feature = "rustls") {
        all.push(TlsBackend::Rustls);
    }
    all
}

fn echo_once<S: std::io::Read + std::io::Write>(
    ws: Result<tungstenite::WebSocket<S>, String>,
) -> usize {
    echo(ws.expect("tls + upgrade"))
}

#[test]
fn each_backend_trusts_an_extra_root_in_every_mode() {
    let pki = TestPki::new();
    for backend in backends() {
        for mode in MODES {
            let (port, server) = wss_server(pki.server_identity(&["localhost"]), echo_once);
            let out = drive(
                mode,
                &format!("wss://localhost:{port}/"),
                Config::builder()
                    .tls_backend(backend)
                    .root_certificate_pem(pki.ca_pem.as_bytes()),
                Box::new(|rec, act| match rec {
                    Rec::Activated(_) => act.text("over tls").unwrap(),
                    Rec::Text(_) => act.close(1000, "").unwrap(),
                    _ => {}
                }),
            );
            assert_eq!(out.texts(), ["over tls"], "{backend:?} {mode:?}");
            assert!(
                out.errors.is_empty(),
                "{backend:?} {mode:?}: {:?}",
                out.errors
            );
            assert_eq!(server.join().unwrap(), 1);
        }
    }
}

fn failure(backend: TlsBackend, url: &str, builder: syncws::ConfigBuilder) -> TlsFailure {
    let config = builder.tls_backend(backend).build().unwrap();
    match BlockingClient::connect(url, &config).unwrap_err() {
        Error::Tls { failure, host, .. } => {
            assert_eq!(host, "localhost");
            failure
        }
        other => panic!("{backend:?}: expected a TLS error, got {other:?}"),
    }
}

#[test]
fn each_backend_refuses_another_hosts_certificate_and_an_unknown_issuer() {
    let pki = TestPki::new();
    for backend in backends() {
        let (port, server) = wss_server(pki.server_identity(&["other.example"]), |r| r.is_ok());
        let got = failure(
            backend,
            &format!("wss://localhost:{port}/"),
            Config::builder().root_certificate_pem(pki.ca_pem.as_bytes()),
        );
        assert_eq!(got, TlsFailure::HostnameMismatch, "{backend:?}");
        assert!(!server.join().unwrap());

        let (port, server) = wss_server(pki.server_identity(&["localhost"]), |r| r.is_ok());
        let got = failure(
            backend,
            &format!("wss://localhost:{port}/"),
            Config::builder(),
        );
        assert_eq!(got, TlsFailure::UntrustedIssuer, "{backend:?}");
        assert!(!server.join().unwrap());
    }
}

#[test]
fn each_backend_refuses_an_expired_or_not_yet_valid_certificate_as_expired() {
    let pki = TestPki::new();
    // Signed by a CA the client trusts, for the right name: only the dates are wrong.
    for (years, what) in [((2000, 2001), "expired"), ((3000, 3001), "not yet valid")] {
        for backend in backends() {
            let (cert, key) = pki.issue_valid(&["localhost"], Some(years));
            let identity =
                native_tls::Identity::from_pkcs8(cert.as_bytes(), key.as_bytes()).unwrap();
            let (port, server) = wss_server(identity, |r| r.is_ok());
            let got = failure(
                backend,
                &format!("wss://localhost:{port}/"),
                Config::builder().root_certificate_pem(pki.ca_pem.as_bytes()),
            );
            assert_eq!(got, TlsFailure::Expired, "{backend:?}: {what}");
            assert!(!server.join().unwrap(), "{backend:?}: {what}");
        }
    }
}

/// A self-signed certificate: OpenSSL (native-tls on Linux) says so (tests/connect.rs); rustls
/// only knows that its issuer is not trusted, and the README says it reports that.
#[cfg(feature = "rustls")]
#[test]
fn rustls_reports_a_self_signed_certificate_as_an_untrusted_issuer() {
    let (port, server) = wss_server(self_signed_identity(), |r| r.is_ok());
    let got = failure(
        TlsBackend::Rustls,
        &format!("wss://localhost:{port}/"),
        Config::builder(),
    );
    assert_eq!(got, TlsFailure::UntrustedIssuer);
    assert!(!server.join().unwrap());
}

#[test]
fn each_backend_accepts_anything_with_the_dangerous_switch() {
    for backend in backends() {
        let (port, server) = wss_server(self_signed_identity(), echo_once);
        let out = drive(
            Mode::Blocking,
            &format!("wss://localhost:{port}/"),
            Config::builder()
                .tls_backend(backend)
                .danger_accept_invalid_certs(true),
            Box::new(|rec, act| match rec {
                Rec::Activated(_) => act.text("trust me").unwrap(),
                Rec::Text(_) => act.close(1000, "").unwrap(),
                _ => {}
            }),
        );
        assert_eq!(out.texts(), ["trust me"], "{backend:?}");
        assert_eq!(server.join().unwrap(), 1);
    }
}

#[test]
fn each_backend_refuses_bad_tls_material_at_build() {
    for backend in backends() {
        let e = Config::builder()
            .tls_backend(backend)
            .root_certificate_pem(b"garbage")
            .build()
            .unwrap_err();
        assert!(
            matches!(&e, Error::Config(m) if m.starts_with("root certificate")),
            "{backend:?}: {e}"
        );
        let e = Config::builder()
            .tls_backend(backend)
            .identity_pem(b"garbage", b"garbage")
            .build()
            .unwrap_err();
        assert!(
            matches!(&e, Error::Config(m) if m.starts_with("client identity")),
            "{backend:?}: {e}"
        );
    }
}

#[cfg(not(feature = "rustls"))]
#[test]
fn rustls_without_the_feature_is_a_configuration_error() {
    let e = Config::builder()
        .tls_backend(TlsBackend::Rustls)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("`rustls` feature"), "{e}");
}

#[test]
fn each_backend_presents_a_client_identity_when_one_is_configured() {
    let pki = TestPki::new();
    let (client_cert, client_key) = pki.issue(&["client.test"]);
    for backend in backends() {
        let (port, server) = mtls_server(&pki);
        let out = drive(
            Mode::Blocking,
            &format!("wss://localhost:{port}/"),
            Config::builder()
                .tls_backend(backend)
                .root_certificate_pem(pki.ca_pem.as_bytes())
                .identity_pem(client_cert.as_bytes(), client_key.as_bytes()),
            Box::new(|rec, act| match rec {
                Rec::Activated(_) => act.text("it is me").unwrap(),
                Rec::Text(_) => act.close(1000, "").unwrap(),
                _ => {}
            }),
        );
        assert_eq!(out.texts(), ["it is me"], "{backend:?}");
        assert_eq!(
            server.join().unwrap(),
            Ok(1),
            "{backend:?}: the server verified us"
        );

        // Without the identity the server refuses us.
        let (port, server) = mtls_server(&pki);
        let config = Config::builder()
            .tls_backend(backend)
            .root_certificate_pem(pki.ca_pem.as_bytes())
            .build()
            .unwrap();
        assert!(BlockingClient::connect(&format!("wss://localhost:{port}/"), &config).is_err());
        let refused = server.join().unwrap().unwrap_err();
        assert!(refused.contains("certificate"), "{backend:?}: {refused}");
    }
}

#[test]
fn each_backend_says_when_the_server_does_not_speak_tls() {
    for backend in backends() {
        // A plain HTTP server on the port we address as wss://.
        let (addr, server) = raw_server(|mut tcp| {
            let mut hello = [0u8; 1024];
            let _ = std::io::Read::read(&mut tcp, &mut hello);
            let _ = std::io::Write::write_all(&mut tcp, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        });
        let config = Config::builder().tls_backend(backend).build().unwrap();
        let e = BlockingClient::connect(&format!("wss://localhost:{}/", addr.port()), &config)
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Tls {
                    failure: TlsFailure::NotTls,
                    ..
                }
            ),
            "{backend:?}: {e:?}"
        );
        assert!(e.to_string().contains("does not speak tls"), "{e}");
        server.join().unwrap();

        // A server that hangs up on the ClientHello.
        let (addr, server) = raw_server(|mut tcp| {
            let mut hello = [0u8; 1024];
            let _ = std::io::Read::read(&mut tcp, &mut hello);
        });
        let e = BlockingClient::connect(&format!("wss://localhost:{}/", addr.port()), &config)
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Tls {
                    failure: TlsFailure::ClosedDuringHandshake,
                    ..
                }
            ),
            "{backend:?}: {e:?}"
        );
        server.join().unwrap();
    }
}

#[test]
fn a_silent_server_is_the_handshake_timeout_in_each_backend_not_a_tls_failure() {
    for backend in backends() {
        // Accepts TCP, then never answers the ClientHello.
        let (addr, server) = raw_server(|mut tcp| read_to_end(&mut tcp).len());
        let config = Config::builder()
            .tls_backend(backend)
            .handshake_timeout(Some(std::time::Duration::from_millis(300)))
            .build()
            .unwrap();
        let e = BlockingClient::connect(&format!("wss://localhost:{}/", addr.port()), &config)
            .unwrap_err();
        assert!(
            matches!(e, Error::Timeout(syncws::TimeoutKind::Handshake)),
            "{backend:?}: {e:?}"
        );
        assert!(
            server.join().unwrap() > 0,
            "{backend:?}: a ClientHello was sent"
        );
    }
}
