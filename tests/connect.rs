//! Opening a connection: each way it can fail gives a distinct, typed, readable error; deadlines
//! hold; TLS works with extra roots; headers and subprotocols go out as configured.

mod util;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use syncws::{
    BlockingClient, Config, Error, NonBlockingClient, ThreadedClient, TimeoutKind, TlsFailure,
};
use util::*;

/// Connect with each client type; all three must give the same kind of error.
fn connect_errors(url: &str, config: &Config) -> Vec<Error> {
    vec![
        BlockingClient::connect(url, config).unwrap_err(),
        NonBlockingClient::connect(url, config).unwrap_err(),
        ThreadedClient::connect(url, config).unwrap_err(),
    ]
}

#[test]
fn connection_refused() {
    let (listener, addr) = bind();
    drop(listener);
    for e in connect_errors(&format!("ws://{addr}/"), &Config::default()) {
        match &e {
            Error::Connect { addr: a, source } => {
                assert_eq!(*a, addr);
                assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            other => panic!("expected Connect, got {other:?}"),
        }
        assert!(
            e.to_string().starts_with(&format!("connect to {addr}: ")),
            "{e}"
        );
    }
}

#[test]
fn unknown_host() {
    for e in connect_errors("ws://no-such-host.invalid/", &Config::default()) {
        assert!(
            matches!(&e, Error::Resolve { host, .. } if host == "no-such-host.invalid"),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("resolve no-such-host.invalid: "),
            "{e}"
        );
    }
}

#[test]
fn unsupported_scheme_and_bad_urls() {
    for e in connect_errors("http://127.0.0.1:9/", &Config::default()) {
        assert!(
            matches!(&e, Error::UnsupportedScheme { scheme } if scheme == "http"),
            "{e:?}"
        );
    }
    for e in connect_errors("not a url", &Config::default()) {
        assert!(matches!(e, Error::InvalidUrl { .. }), "{e:?}");
    }
}

#[test]
fn a_server_that_never_answers_the_handshake_cannot_hold_connect() {
    for scheme in ["ws", "wss"] {
        // Accepts TCP, then says nothing (no HTTP answer, no TLS) until the client leaves.
        let (addr, server) = raw_server(|mut tcp| read_to_end(&mut tcp).len());
        let config = Config::builder()
            .handshake_timeout(Some(Duration::from_millis(300)))
            .build()
            .unwrap();
        let started = Instant::now();
        let e = BlockingClient::connect(&format!("{scheme}://localhost:{}/", addr.port()), &config)
            .unwrap_err();
        assert!(
            matches!(e, Error::Timeout(TimeoutKind::Handshake)),
            "{scheme}: {e:?}"
        );
        assert_eq!(e.to_string(), "websocket opening handshake timed out");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{scheme}: bounded"
        );
        server.join().unwrap();
    }
}

#[test]
fn a_server_that_trickles_its_answer_cannot_stretch_the_deadline() {
    // One byte of HTTP every 100 ms: each read succeeds, the whole must still end on time.
    let (addr, server) = raw_server(|mut tcp| {
        let mut request = [0u8; 1024];
        let _ = tcp.read(&mut request);
        for b in b"HTTP/1.1 101 Switching Protocols\r\n"
            .iter()
            .cycle()
            .take(200)
        {
            if tcp.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let config = Config::builder()
        .handshake_timeout(Some(Duration::from_millis(500)))
        .build()
        .unwrap();
    let e = BlockingClient::connect(&format!("ws://{addr}/"), &config).unwrap_err();
    assert!(matches!(e, Error::Timeout(TimeoutKind::Handshake)), "{e:?}");
    server.join().unwrap();
}

#[test]
fn a_rejected_upgrade_reports_the_http_status() {
    let (addr, server) = raw_server(|mut tcp| {
        let mut request = [0u8; 2048];
        let _ = tcp.read(&mut request);
        tcp.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
    });
    let e = BlockingClient::connect(&format!("ws://{addr}/"), &Config::default()).unwrap_err();
    assert!(
        matches!(e, Error::HandshakeRejected { status } if status.as_u16() == 403),
        "{e:?}"
    );
    server.join().unwrap();
}

#[test]
fn headers_go_out_in_order_and_the_chosen_subprotocol_is_reported() {
    for mode in MODES {
        let (addr, server) = raw_server(|tcp| {
            let (head, ws) = accept_by_hand(tcp, "Sec-WebSocket-Protocol: chat.v2\r\n");
            echo(ws);
            head
        });
        let out = drive(
            mode,
            &format!("ws://{addr}/feed?x=1#frag"),
            Config::builder()
                .header("X-Trace", "a")
                .header("X-Token", "b")
                .header("X-Trace", "c")
                .subprotocol("chat.v1")
                .subprotocol("chat.v2"),
            Box::new(|rec, act| {
                if let Rec::Activated(_) = rec {
                    act.close(1000, "").unwrap();
                }
            }),
        );
        assert_eq!(
            out.recs[0],
            Rec::Activated(Some("chat.v2".into())),
            "{mode:?}"
        );
        let head = server.join().unwrap();
        let lines: Vec<&str> = head.lines().collect();
        assert_eq!(
            lines[0], "GET /feed?x=1 HTTP/1.1",
            "{mode:?}: path and query, no fragment"
        );
        assert_eq!(lines[1], format!("Host: {addr}"), "{mode:?}");
        let user: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("x-") || l.starts_with("Sec-WebSocket-Protocol"))
            .collect();
        assert_eq!(
            user,
            [
                "Sec-WebSocket-Protocol: chat.v1, chat.v2",
                "x-trace: a",
                "x-token: b",
                "x-trace: c"
            ],
            "{mode:?}: exact order on the wire"
        );
    }
}

#[test]
fn a_host_header_replaces_the_derived_one_and_reserved_headers_are_refused() {
    let (addr, server) = raw_server(|tcp| {
        let (head, mut ws) = accept_by_hand(tcp, "");
        read_until_close(&mut ws);
        head
    });
    let out = drive(
        Mode::Blocking,
        &format!("ws://{addr}/"),
        Config::builder().header("Host", "example.test"),
        Box::new(|rec, act| {
            if let Rec::Activated(_) = rec {
                act.close(1000, "").unwrap();
            }
        }),
    );
    assert!(out.errors.is_empty());
    let head = server.join().unwrap();
    assert_eq!(head.lines().filter(|l| l.starts_with("Host:")).count(), 1);
    assert!(head.contains("Host: example.test\r\n"), "{head}");
    let e = Config::builder()
        .header("Sec-WebSocket-Key", "x")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("written by the handshake"), "{e}");
}

#[test]
fn a_bad_accept_key_or_an_unoffered_extension_or_subprotocol_fails_the_handshake() {
    for (extra, expected) in [
        (
            "Sec-WebSocket-Extensions: permessage-deflate\r\n",
            "extension \"permessage-deflate\", which we did not offer",
        ),
        ("Sec-WebSocket-Protocol: evil\r\n", "which we did not offer"),
    ] {
        let (addr, server) = raw_server(move |tcp| {
            let _ = accept_by_hand(tcp, extra);
        });
        let config = Config::builder().subprotocol("chat.v1").build().unwrap();
        let e = BlockingClient::connect(&format!("ws://{addr}/"), &config).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidHandshake(m) if m.contains(expected)),
            "{e:?}"
        );
        server.join().unwrap();
    }
    let (addr, server) = raw_server(|mut tcp| {
        let mut request = [0u8; 2048];
        let _ = tcp.read(&mut request);
        tcp.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSBrZXk=\r\n\r\n",
        )
        .unwrap();
    });
    let e = BlockingClient::connect(&format!("ws://{addr}/"), &Config::default()).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidHandshake(m) if m.contains("Accept")),
        "{e:?}"
    );
    server.join().unwrap();
}

// ----- TLS ------------------------------------------------------------------------------------

fn tls_error(url: &str, config: &Config) -> (TlsFailure, String) {
    match BlockingClient::connect(url, config).unwrap_err() {
        e @ Error::Tls { failure, .. } => (failure, e.to_string()),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[test]
fn a_certificate_for_another_host_is_refused() {
    let pki = TestPki::new();
    let (port, server) = wss_server(pki.server_identity(&["other.example"]), |r| r.is_ok());
    let config = Config::builder()
        .root_certificate_pem(pki.ca_pem.as_bytes())
        .build()
        .unwrap();
    let (failure, text) = tls_error(&format!("wss://localhost:{port}/"), &config);
    assert_eq!(failure, TlsFailure::HostnameMismatch, "{text}");
    assert!(
        text.starts_with("tls handshake with localhost: certificate is for another host"),
        "{text}"
    );
    assert!(!server.join().unwrap());
}

#[test]
fn a_self_signed_certificate_is_refused_unless_the_dangerous_switch_is_on() {
    let (port, server) = wss_server(self_signed_identity(), |r| r.is_ok());
    let (failure, text) = tls_error(&format!("wss://localhost:{port}/"), &Config::default());
    assert_eq!(failure, TlsFailure::SelfSigned, "{text}");
    assert!(!server.join().unwrap());

    let (port, server) = wss_server(self_signed_identity(), |ws| {
        let mut ws = ws.expect("tls + upgrade");
        read_until_close(&mut ws).1.map(|f| u16::from(f.code))
    });
    let out = drive(
        Mode::Blocking,
        &format!("wss://localhost:{port}/"),
        Config::builder().danger_accept_invalid_certs(true),
        Box::new(|rec, act| {
            if let Rec::Activated(_) = rec {
                act.close(1000, "").unwrap();
            }
        }),
    );
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(server.join().unwrap(), Some(1000));
}

#[test]
fn an_untrusted_issuer_is_refused_with_its_own_reason() {
    // Signed by a CA the client does not know.
    let pki = TestPki::new();
    let (port, server) = wss_server(pki.server_identity(&["localhost"]), |r| r.is_ok());
    let (failure, text) = tls_error(&format!("wss://localhost:{port}/"), &Config::default());
    assert_eq!(failure, TlsFailure::UntrustedIssuer, "{text}");
    assert!(!server.join().unwrap());
}

/// The socket options a client's socket was found with.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    nodelay: bool,
    /// IP_TTL, or IPV6_UNICAST_HOPS on an IPv6 socket.
    ttl: u32,
    /// The keepalive idle time, when keepalive is on.
    keepalive: Option<Duration>,
    send_buffer: usize,
    recv_buffer: usize,
}

/// Find this process's socket connected to `peer` (the client's: the server's accepted socket
/// is connected to the client's address) and read its options. Linux: the descriptors are
/// listed in /proc/self/fd and duplicated with pidfd_getfd, so no unsafe code is needed.
#[cfg(target_os = "linux")]
fn options_of_socket_connected_to(peer: std::net::SocketAddr) -> Options {
    use rustix::process::{getpid, pidfd_getfd, pidfd_open, PidfdFlags, PidfdGetfdFlags};
    let pidfd = pidfd_open(getpid(), PidfdFlags::empty()).expect("pidfd_open on this process");
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(number) = entry.file_name().to_string_lossy().parse() else {
            continue;
        };
        // Other tests open and close descriptors meanwhile: a number that no longer is a
        // socket, or is another one, is skipped by the address check.
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|link| link.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        let fd = match pidfd_getfd(&pidfd, number, PidfdGetfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::BADF) => continue,
            Err(e) => panic!("pidfd_getfd on this process's own descriptor: {e}"),
        };
        let socket = socket2::Socket::from(fd);
        if socket.peer_addr().ok().and_then(|a| a.as_socket()) != Some(peer) {
            continue;
        }
        let ttl = if peer.is_ipv6() {
            socket.unicast_hops_v6()
        } else {
            socket.ttl_v4()
        };
        return Options {
            nodelay: socket.tcp_nodelay().unwrap(),
            ttl: ttl.unwrap(),
            keepalive: socket
                .keepalive()
                .unwrap()
                .then(|| socket.tcp_keepalive_time().unwrap()),
            send_buffer: socket.send_buffer_size().unwrap(),
            recv_buffer: socket.recv_buffer_size().unwrap(),
        };
    }
    panic!("no socket of this process is connected to {peer}");
}

/// Connect to an echo server on `listen`, read the client socket's options while it is open,
/// and check a message goes through. Returns the options and the request head.
#[cfg(target_os = "linux")]
fn options_in_use(listen: &str, builder: syncws::ConfigBuilder) -> (Options, String) {
    let listener = std::net::TcpListener::bind(listen).expect("loopback is available here");
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
        let (head, ws) = accept_by_hand(tcp, "");
        echo(ws);
        head
    });
    let (options_tx, options_rx) = crossbeam_channel::bounded(1);
    let out = drive(
        Mode::Blocking,
        &format!("ws://{addr}/"),
        builder,
        Box::new(move |rec, act| match rec {
            Rec::Activated(_) => {
                let _ = options_tx.try_send(options_of_socket_connected_to(addr));
                act.text("over loopback").unwrap();
            }
            Rec::Text(_) => act.close(1000, "").unwrap(),
            _ => {}
        }),
    );
    assert_eq!(out.texts(), ["over loopback"]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let head = server.join().unwrap();
    let options = options_rx.try_recv().expect("read while open");
    (options, head)
}

/// The buffer size the OS reports for a socket asked for `n` bytes (Linux doubles it).
#[cfg(target_os = "linux")]
fn buffer_granted(n: usize, send: bool) -> usize {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if send {
        socket.set_send_buffer_size(n).unwrap();
        socket.send_buffer_size().unwrap()
    } else {
        socket.set_recv_buffer_size(n).unwrap();
        socket.recv_buffer_size().unwrap()
    }
}

#[cfg(target_os = "linux")]
#[test]
fn ipv6_literals_work_and_every_socket_option_reaches_the_socket() {
    let set = || {
        Config::builder()
            .nodelay(false)
            .ttl(Some(32))
            .keepalive(Some(Duration::from_secs(30)))
            .send_buffer_size(Some(48 << 10))
            .recv_buffer_size(Some(40 << 10))
            .connect_timeout(Some(Duration::from_secs(2)))
    };
    let expected = Options {
        nodelay: false,
        ttl: 32,
        keepalive: Some(Duration::from_secs(30)),
        send_buffer: buffer_granted(48 << 10, true),
        recv_buffer: buffer_granted(40 << 10, false),
    };
    // IPv6 (the hop limit is its TTL) and IPv4.
    let (options, head) = options_in_use("[::1]:0", set());
    assert_eq!(options, expected, "over ::1");
    let port = head
        .lines()
        .find_map(|l| l.strip_prefix("Host: [::1]:"))
        .unwrap_or_else(|| panic!("the Host header names the IPv6 literal: {head}"));
    assert!(port.parse::<u16>().is_ok(), "{head}");
    let (options, _) = options_in_use("127.0.0.1:0", set());
    assert_eq!(options, expected, "over 127.0.0.1");
    // The defaults the README gives: nodelay on, keepalive off, TTL and buffers the OS's.
    let (defaults, _) = options_in_use("127.0.0.1:0", Config::builder());
    assert!(defaults.nodelay, "{defaults:?}");
    assert_eq!(defaults.keepalive, None, "{defaults:?}");
    assert_ne!(defaults.ttl, 32, "{defaults:?}");
}
