//! Proxies: HTTP CONNECT (with basic auth) and SOCKS5 (with username/password), through the
//! real clients, against the small proxies in tests/util/proxy.rs. Which proxy the environment
//! names is unit-tested in src/proxy/env.rs with a fake environment (tests never change the
//! process environment).

mod util;

use std::net::{TcpListener, ToSocketAddrs};
use std::time::Duration;

use syncws::{
    BlockingClient, Config, ConfigBuilder, Error, NonBlockingClient, Proxy, ProxyStatus,
    ThreadedClient, TimeoutKind, TlsFailure,
};
use util::proxy::{silent_proxy, HttpProxy, Socks5Proxy};
use util::*;

const HELLO: &str = "hello through the proxy";

fn with_proxy(url: &str) -> ConfigBuilder {
    Config::builder().proxy(Some(Proxy::parse(url).expect("valid proxy url")))
}

/// Send one text, close when it comes back.
fn round_trip(mode: Mode, url: &str, builder: ConfigBuilder) -> Outcome {
    let out = drive(
        mode,
        url,
        builder,
        Box::new(|rec, act| match rec {
            Rec::Activated(_) => act.text(HELLO).unwrap(),
            Rec::Text(_) => act.close(1000, "").unwrap(),
            _ => {}
        }),
    );
    assert_eq!(out.texts(), [HELLO], "{mode:?}");
    assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The connect error of every client type (they share the connect path; this checks that each
/// hands the typed error back).
fn connect_errors(url: &str, config: &Config) -> Vec<Error> {
    vec![
        BlockingClient::connect(url, config).expect_err("blocking"),
        NonBlockingClient::connect(url, config).expect_err("non-blocking"),
        ThreadedClient::connect(url, config).expect_err("threaded"),
    ]
}

fn refused_status(e: &Error) -> ProxyStatus {
    match e {
        Error::ProxyRefused { status, .. } => *status,
        other => panic!("expected ProxyRefused, got {other:?}"),
    }
}

// ----- HTTP CONNECT ------------------------------------------------------------------------------

#[test]
fn ws_through_an_http_connect_proxy_in_every_mode() {
    let proxy = HttpProxy::default().start();
    for mode in MODES {
        let (url, server) = ws_server(echo);
        let target = url
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .to_owned();
        round_trip(mode, &url, with_proxy(&format!("http://{}", proxy.addr)));
        assert_eq!(server.join().unwrap(), 1, "{mode:?}");
        let seen = proxy.next_seen();
        assert_eq!(seen.target, target, "{mode:?}");
        assert_eq!(
            seen.head,
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
            "{mode:?}: no credentials, nothing else"
        );
        // The upgrade went through the tunnel, naming the target; the echo came back the same way
        // (in the clear: this is ws://).
        let up = String::from_utf8_lossy(&seen.up);
        assert!(
            up.starts_with(&format!("GET / HTTP/1.1\r\nHost: {target}\r\n")),
            "{mode:?}: {up}"
        );
        assert!(contains(&seen.down, HELLO.as_bytes()), "{mode:?}");
    }
}

#[test]
fn wss_through_an_http_connect_proxy_is_encrypted_end_to_end_in_every_mode() {
    let pki = TestPki::new();
    let proxy = HttpProxy::default().start();
    for mode in MODES {
        let (port, server) = wss_server(pki.server_identity(&["localhost"]), |ws| {
            echo(ws.expect("tls + upgrade"))
        });
        round_trip(
            mode,
            &format!("wss://localhost:{port}/"),
            with_proxy(&format!("http://{}", proxy.addr))
                .root_certificate_pem(pki.ca_pem.as_bytes()),
        );
        assert_eq!(server.join().unwrap(), 1, "{mode:?}");
        let seen = proxy.next_seen();
        assert_eq!(seen.target, format!("localhost:{port}"), "{mode:?}");
        // The proxy carried TLS records only: a handshake record first, and none of the
        // plaintext (the upgrade, the 101, the server's unmasked echo) in either direction.
        assert_eq!(
            seen.up.first(),
            Some(&0x16),
            "{mode:?}: TLS handshake record"
        );
        assert_eq!(
            seen.down.first(),
            Some(&0x16),
            "{mode:?}: TLS handshake record"
        );
        for plain in [&b"GET /"[..], b"Sec-WebSocket-Key", b"localhost:"] {
            assert!(
                !contains(&seen.up, plain),
                "{mode:?}: {plain:?} went up in the clear"
            );
        }
        for plain in [&b"Switching Protocols"[..], HELLO.as_bytes()] {
            assert!(
                !contains(&seen.down, plain),
                "{mode:?}: {plain:?} came down in the clear"
            );
        }
    }
}

#[test]
fn wss_through_a_proxy_verifies_the_targets_name() {
    let pki = TestPki::new();
    let proxy = HttpProxy::default().start();
    let (port, server) = wss_server(pki.server_identity(&["other.example"]), |r| r.is_ok());
    let config = with_proxy(&format!("http://{}", proxy.addr))
        .root_certificate_pem(pki.ca_pem.as_bytes())
        .build()
        .unwrap();
    match BlockingClient::connect(&format!("wss://localhost:{port}/"), &config) {
        Err(e @ Error::Tls { failure, .. }) => {
            assert_eq!(failure, TlsFailure::HostnameMismatch, "{e}");
            assert!(
                e.to_string().starts_with("tls handshake with localhost:"),
                "{e}"
            );
        }
        Err(other) => panic!("expected a TLS error, got {other:?}"),
        Ok(_) => panic!("a certificate for another host was accepted"),
    }
    assert!(!server.join().unwrap());
}

#[test]
fn basic_auth_is_sent_and_wrong_or_missing_credentials_get_a_typed_407() {
    let proxy = HttpProxy {
        // base64("user:p@ss")
        require_auth: Some("Basic dXNlcjpwQHNz".into()),
        ..HttpProxy::default()
    }
    .start();
    let (url, server) = ws_server(echo);
    round_trip(
        Mode::Blocking,
        &url,
        with_proxy(&format!("http://user:p%40ss@{}", proxy.addr)),
    );
    server.join().unwrap();
    assert_eq!(
        proxy.next_seen().auth.as_deref(),
        Some("Basic dXNlcjpwQHNz"),
        "credentials percent-decoded, then base64"
    );

    for (proxy_url, sent) in [
        (format!("http://user:wrong@{}", proxy.addr), true),
        (format!("http://{}", proxy.addr), false),
    ] {
        let config = with_proxy(&proxy_url).build().unwrap();
        for e in connect_errors(&url, &config) {
            assert_eq!(
                refused_status(&e),
                ProxyStatus::Http(http::StatusCode::PROXY_AUTHENTICATION_REQUIRED)
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "proxy {} refused the tunnel: HTTP 407 Proxy Authentication Required",
                    proxy.addr
                )
            );
            assert!(!e.to_string().contains("wrong"), "no credentials in errors");
            assert!(
                !format!("{e:?}").contains("wrong"),
                "no credentials in errors"
            );
            assert_eq!(proxy.next_seen().auth.is_some(), sent, "{proxy_url}");
        }
    }
}

#[test]
fn a_proxy_that_forbids_or_cannot_reach_the_target_gives_its_status() {
    let forbidding = HttpProxy {
        refuse_with: Some("403 Forbidden"),
        ..HttpProxy::default()
    }
    .start();
    let config = with_proxy(&format!("http://{}", forbidding.addr))
        .build()
        .unwrap();
    let e = BlockingClient::connect("ws://127.0.0.1:9/", &config).unwrap_err();
    assert_eq!(
        refused_status(&e),
        ProxyStatus::Http(http::StatusCode::FORBIDDEN)
    );
    assert!(e.to_string().ends_with("HTTP 403 Forbidden"), "{e}");

    // A target nobody listens on: the proxy itself answers 502.
    let closed = {
        let (listener, addr) = bind();
        drop(listener);
        addr
    };
    let proxy = HttpProxy::default().start();
    let config = with_proxy(&format!("http://{}", proxy.addr))
        .build()
        .unwrap();
    let e = BlockingClient::connect(&format!("ws://{closed}/"), &config).unwrap_err();
    assert_eq!(
        refused_status(&e),
        ProxyStatus::Http(http::StatusCode::BAD_GATEWAY)
    );
    assert!(e.to_string().ends_with("HTTP 502 Bad Gateway"), "{e}");
    assert_eq!(proxy.next_seen().target, closed.to_string());
}

#[test]
fn a_proxy_answering_garbage_is_a_protocol_error() {
    let (addr, server) = raw_server(|mut tcp| {
        use std::io::{Read, Write};
        let mut request = [0u8; 1024];
        let _ = tcp.read(&mut request);
        tcp.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").unwrap();
    });
    let config = with_proxy(&format!("http://{addr}")).build().unwrap();
    let e = BlockingClient::connect("ws://127.0.0.1:9/", &config).unwrap_err();
    assert!(
        matches!(&e, Error::ProxyProtocol { proxy, reason }
            if *proxy == addr.to_string() && reason.contains("malformed")),
        "{e:?}"
    );
    server.join().unwrap();
}

// ----- SOCKS5 ------------------------------------------------------------------------------------

#[test]
fn ws_through_socks5h_sends_the_name_in_every_mode() {
    let proxy = Socks5Proxy::default().start();
    for mode in MODES {
        let (url, server) = ws_server(echo);
        let port = url.rsplit(':').next().unwrap().trim_end_matches('/');
        let url = format!("ws://localhost:{port}/");
        round_trip(mode, &url, with_proxy(&format!("socks5h://{}", proxy.addr)));
        assert_eq!(server.join().unwrap(), 1, "{mode:?}");
        let seen = proxy.next_seen();
        assert_eq!(seen.socks_atyp, Some(3), "{mode:?}: a domain name");
        assert_eq!(seen.target, format!("localhost:{port}"), "{mode:?}");
        let up = String::from_utf8_lossy(&seen.up);
        assert!(
            up.starts_with(&format!("GET / HTTP/1.1\r\nHost: localhost:{port}\r\n")),
            "{mode:?}: {up}"
        );
    }
}

#[test]
fn socks5_resolves_the_name_locally_and_sends_the_first_address() {
    // Listen where the resolver's first answer for localhost points (127.0.0.1 or ::1).
    let first = ("localhost", 0)
        .to_socket_addrs()
        .unwrap()
        .next()
        .expect("localhost resolves")
        .ip();
    let listener = TcpListener::bind((first, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
        echo(tungstenite::accept(tcp).unwrap())
    });
    let proxy = Socks5Proxy::default().start();
    round_trip(
        Mode::Blocking,
        &format!("ws://localhost:{port}/"),
        with_proxy(&format!("socks5://{}", proxy.addr)),
    );
    assert_eq!(server.join().unwrap(), 1);
    let seen = proxy.next_seen();
    assert_eq!(
        seen.socks_atyp,
        Some(if first.is_ipv4() { 1 } else { 4 }),
        "an address, not the name"
    );
    assert_eq!(
        seen.target,
        std::net::SocketAddr::new(first, port).to_string()
    );
}

#[test]
fn socks5_reads_every_kind_of_bound_address() {
    for atyp in [1, 3, 4] {
        let proxy = Socks5Proxy {
            bound_atyp: Some(atyp),
            ..Socks5Proxy::default()
        }
        .start();
        let (url, server) = ws_server(echo);
        // A misread reply would leave bytes in front of the 101 and break the upgrade.
        round_trip(
            Mode::Blocking,
            &url,
            with_proxy(&format!("socks5h://{}", proxy.addr)),
        );
        assert_eq!(server.join().unwrap(), 1, "bound address type {atyp}");
        assert_eq!(proxy.next_seen().socks_atyp, Some(1), "an IPv4 target");
    }
}

#[test]
fn socks5_username_and_password_are_checked() {
    let proxy = Socks5Proxy {
        credentials: Some(("user".into(), "p@ss".into())),
        ..Socks5Proxy::default()
    }
    .start();
    let (url, server) = ws_server(echo);
    round_trip(
        Mode::Threaded,
        &url,
        with_proxy(&format!("socks5h://user:p%40ss@{}", proxy.addr)),
    );
    server.join().unwrap();
    assert_eq!(proxy.next_seen().auth.as_deref(), Some("user:p@ss"));

    let config = with_proxy(&format!("socks5h://user:wrong@{}", proxy.addr))
        .build()
        .unwrap();
    for e in connect_errors(&url, &config) {
        assert_eq!(refused_status(&e), ProxyStatus::Socks5AuthRejected, "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "proxy {} refused the tunnel: SOCKS5 user name and password rejected",
                proxy.addr
            )
        );
        assert_eq!(proxy.next_seen().auth.as_deref(), Some("user:wrong"));
    }
    let config = with_proxy(&format!("socks5h://{}", proxy.addr))
        .build()
        .unwrap();
    let e = BlockingClient::connect(&url, &config).unwrap_err();
    assert_eq!(
        refused_status(&e),
        ProxyStatus::Socks5NoAcceptableAuth,
        "{e}"
    );
}

#[test]
fn socks5_reply_codes_are_typed_with_reasons() {
    let proxy = Socks5Proxy {
        refuse_with: Some(2),
        ..Socks5Proxy::default()
    }
    .start();
    let config = with_proxy(&format!("socks5h://{}", proxy.addr))
        .build()
        .unwrap();
    let e = BlockingClient::connect("ws://127.0.0.1:9/", &config).unwrap_err();
    assert_eq!(refused_status(&e), ProxyStatus::Socks5(2));
    assert!(
        e.to_string()
            .ends_with("SOCKS5 reply 2: connection not allowed by ruleset"),
        "{e}"
    );

    // A target nobody listens on: the proxy answers "connection refused".
    let closed = {
        let (listener, addr) = bind();
        drop(listener);
        addr
    };
    let proxy = Socks5Proxy::default().start();
    let config = with_proxy(&format!("socks5://{}", proxy.addr))
        .build()
        .unwrap();
    let e = BlockingClient::connect(&format!("ws://{closed}/"), &config).unwrap_err();
    assert_eq!(refused_status(&e), ProxyStatus::Socks5(5), "{e}");
    assert!(e.to_string().ends_with("connection refused"), "{e}");
}

// ----- failures on the way to the proxy ----------------------------------------------------------

#[test]
fn a_proxy_that_never_answers_hits_the_handshake_timeout() {
    for scheme in ["http", "socks5h"] {
        let (addr, proxy) = silent_proxy();
        let config = with_proxy(&format!("{scheme}://{addr}"))
            .handshake_timeout(Some(Duration::from_millis(300)))
            .build()
            .unwrap();
        let e = BlockingClient::connect("ws://127.0.0.1:9/", &config).unwrap_err();
        assert!(
            matches!(e, Error::Timeout(TimeoutKind::Handshake)),
            "{scheme}: {e:?}"
        );
        // The proxy got the start of the exchange, then the client hung up.
        let got = proxy.join().unwrap();
        assert!(!got.is_empty(), "{scheme}");
    }
}

#[test]
fn an_unreachable_proxy_is_a_typed_error_naming_the_proxy() {
    let closed = {
        let (listener, addr) = bind();
        drop(listener);
        addr
    };
    let config = with_proxy(&format!("socks5h://{closed}")).build().unwrap();
    for e in connect_errors("ws://127.0.0.1:9/", &config) {
        match &e {
            Error::ProxyConnect { proxy, source } => {
                assert_eq!(*proxy, closed.to_string());
                assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                assert!(
                    e.to_string()
                        .starts_with(&format!("connection to proxy {closed}: ")),
                    "{e}"
                );
            }
            other => panic!("expected ProxyConnect, got {other:?}"),
        }
    }
}

#[test]
fn a_bad_proxy_url_is_a_typed_error_that_hides_the_password() {
    let e = Proxy::parse("ftp://user:hunter2@127.0.0.1:21").unwrap_err();
    assert!(
        matches!(&e, Error::InvalidProxy { url, .. } if url == "ftp://***@127.0.0.1:21"),
        "{e:?}"
    );
    assert!(!e.to_string().contains("hunter2"), "{e}");
    let config = with_proxy("http://user:hunter2@127.0.0.1:3128")
        .build()
        .unwrap();
    assert!(!format!("{config:?}").contains("hunter2"));
}
