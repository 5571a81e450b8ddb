//! The server side of the core (`ServerConnection`), driven by an independent client
//! (tungstenite's). Every test that runs a connection runs it both ways (`util::SIDES`): on a
//! thread of its own and adopted by a `ConnectionSet`.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crossbeam_channel::bounded;
use syncws::http::StatusCode;
use syncws::{
    Accept, Config, DeflateConfig, Error, Incoming, Initiator, ServerConnection, TimeoutKind,
};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::Message;
use util::*;

fn serve_one(
    side: Side,
    tls: Option<native_tls::TlsAcceptor>,
) -> (u16, std::thread::JoinHandle<Echo>) {
    let (addr, handle) = raw_server(move |tcp| {
        let conn = ServerConnection::accept(tcp, tls.as_ref(), &Config::default()).unwrap();
        let mut echo = Echo::default();
        serve(side, conn, &mut echo);
        echo
    });
    (addr.port(), handle)
}

#[test]
fn a_server_connection_echoes_and_answers_the_clients_close() {
    for side in SIDES {
        let (port, server) = serve_one(side, None);
        let (mut ws, _) = connect_timed(format!("ws://127.0.0.1:{port}/")).unwrap();
        for i in 0..100 {
            ws.send(Message::text(format!("m{i}"))).unwrap();
        }
        ws.send(Message::binary(vec![1, 2, 3])).unwrap();
        for i in 0..100 {
            assert_eq!(ws.read().unwrap(), Message::text(format!("m{i}")));
        }
        assert_eq!(ws.read().unwrap(), Message::binary(vec![1, 2, 3]));
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
        let echo = server.join().unwrap();
        let closed = echo.closed.expect("close handshake");
        assert_eq!(closed.initiator, Initiator::Remote);
        assert!(echo.errors.is_empty(), "{:?}", echo.errors);
    }
}

#[test]
fn a_handle_sends_from_another_thread_which_is_how_a_server_broadcasts() {
    for side in SIDES {
        let (listener, addr) = bind();
        let (handle_tx, handle_rx) = bounded(1);
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = ServerConnection::accept(tcp, None, &Config::default()).unwrap();
            handle_tx.send(conn.handle()).unwrap();
            serve(side, conn, &mut Echo::default());
        });
        let (mut ws, _) = connect_timed(format!("ws://{addr}/")).unwrap();
        let handle = handle_rx.recv_timeout(TEST_DEADLINE).unwrap();
        // Running and then waiting: what follows must wake it.
        ws.send(Message::text("up?")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("up?"), "{side:?}");
        for i in 0..10 {
            handle.send_text(format!("broadcast {i}")).unwrap();
        }
        handle.close(1001, "server going away").unwrap();
        for i in 0..10 {
            assert_eq!(ws.read().unwrap(), Message::text(format!("broadcast {i}")));
        }
        match ws.read().unwrap() {
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1001);
                assert_eq!(frame.reason.as_str(), "server going away");
            }
            other => panic!("expected the close, got {other:?}"),
        }
        while ws.read().is_ok() {}
        server.join().unwrap();
    }
}

#[test]
fn a_bad_upgrade_request_is_a_typed_error_and_a_silent_client_times_out() {
    let (listener, addr) = bind();
    let server = std::thread::spawn(move || {
        let config = Config::builder()
            .handshake_timeout(Some(Duration::from_millis(300)))
            .build()
            .unwrap();
        let (tcp, _) = listener.accept().unwrap();
        let bad = ServerConnection::accept(tcp, None, &config).unwrap_err();
        let (tcp, _) = listener.accept().unwrap();
        let silent = ServerConnection::accept(tcp, None, &config).unwrap_err();
        (bad, silent)
    });
    let mut tcp = timed_tcp(addr);
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    drop(tcp);
    let _silent = timed_tcp(addr);
    let (bad, silent) = server.join().unwrap();
    assert!(
        matches!(&bad, Error::BadRequest { status, .. } if status.as_u16() == 400),
        "{bad:?}"
    );
    assert!(answer.starts_with(b"HTTP/1.1 400 "), "{answer:?}");
    assert!(
        matches!(silent, Error::Timeout(TimeoutKind::Handshake)),
        "{silent:?}"
    );
}

#[test]
fn a_server_connection_speaks_tls() {
    for side in SIDES {
        let pki = TestPki::new();
        let (cert, key) = pki.issue(&["localhost"]);
        let identity = native_tls::Identity::from_pkcs8(cert.as_bytes(), key.as_bytes()).unwrap();
        let (port, server) = serve_one(side, Some(native_tls::TlsAcceptor::new(identity).unwrap()));
        let out = drive(
            Mode::Blocking,
            &format!("wss://localhost:{port}/"),
            Config::builder().root_certificate_pem(pki.ca_pem.as_bytes()),
            Box::new(|rec, act| match rec {
                Rec::Activated(_) => act.text("both sides are syncws").unwrap(),
                Rec::Text(_) => act.close(1000, "").unwrap(),
                _ => {}
            }),
        );
        assert_eq!(out.texts(), ["both sides are syncws"]);
        let echo = server.join().unwrap();
        assert_eq!(echo.closed.map(|c| u16::from(c.code)), Some(1000));
    }
}

#[test]
fn over_tls_the_same_port_answers_plain_http_too() {
    let pki = TestPki::new();
    let acceptor = native_tls::TlsAcceptor::new(pki.server_identity(&["localhost"])).unwrap();
    let (addr, results) = serve_n(1, move |tcp| {
        let incoming =
            ServerConnection::read_request(tcp, Some(&acceptor), &Config::server_defaults())?;
        assert!(!incoming.is_upgrade());
        let mut http = incoming.into_http();
        http.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret")?;
        http.close()?;
        Ok::<_, Error>(())
    });
    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let tcp = timed_tcp(addr);
    tcp.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
    let mut tls = connector.connect("localhost", tcp).unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    // The server's close_notify ends the stream cleanly.
    tls.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nsecret"), "{answer}");
    drop(tls);
    results.recv_timeout(TEST_DEADLINE).unwrap().unwrap();
}

#[test]
fn a_failed_server_connection_ends_on_the_clients_close_not_on_the_close_timeout() {
    for side in SIDES {
        // The close timeout is far longer than the test waits: only the client's Close can end it.
        let config = Config::builder()
            .close_timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let (done_tx, done_rx) = bounded(1);
        let (addr, _server) = raw_server(move |tcp| {
            let conn = ServerConnection::accept(tcp, None, &config).unwrap();
            let mut echo = Echo::default();
            serve(side, conn, &mut echo);
            let _ = done_tx.send(echo);
        });
        let (mut ws, _) = connect_timed(format!("ws://{addr}/")).unwrap();
        // A masked text frame whose payload (0xC3 0x28) is not UTF-8.
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x82];
        frame.extend_from_slice(&mask);
        frame.extend([0xC3 ^ mask[0], 0x28 ^ mask[1]]);
        ws.get_mut().write_all(&frame).unwrap();
        match ws.read().unwrap() {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1007),
            other => panic!("expected the server's close, got {other:?}"),
        }
        // Answer the Close, then wait for the server to end TCP, as RFC 6455 7.1.1 asks of a client.
        ws.flush().unwrap();
        let echo = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the server must end once the client's Close is read, not at close_timeout");
        assert_eq!(echo.errors, ["invalid utf-8 in a text message"]);
        assert!(echo.closed.is_none(), "a failure is not a normal close");
        match ws.read() {
            Err(tungstenite::Error::ConnectionClosed) => {}
            other => panic!("the server should end TCP after the close handshake, got {other:?}"),
        }
    }
}

#[test]
fn a_silent_client_times_out_in_the_tls_handshake_as_a_timeout_not_a_tls_failure() {
    let acceptor = native_tls::TlsAcceptor::new(self_signed_identity()).unwrap();
    let (listener, addr) = bind();
    let server = std::thread::spawn(move || {
        let config = Config::builder()
            .handshake_timeout(Some(Duration::from_millis(300)))
            .build()
            .unwrap();
        let (tcp, _) = listener.accept().unwrap();
        ServerConnection::accept(tcp, Some(&acceptor), &config).unwrap_err()
    });
    // Connects and sends nothing: no ClientHello ever arrives.
    let mut silent = timed_tcp(addr);
    silent.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
    let _ = read_to_end(&mut silent);
    let err = server.join().unwrap();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::Handshake)),
        "{err:?}"
    );
}

// ----- the request, before the answer ---------------------------------------------------------

/// Serve `n` connections on one listener, one thread each, with `serve`; results come back on
/// the returned channel in the order the connections end.
fn serve_n<R: Send + 'static>(
    n: usize,
    serve: impl Fn(TcpStream) -> R + Send + Sync + Clone + 'static,
) -> (SocketAddr, crossbeam_channel::Receiver<R>) {
    let (listener, addr) = bind();
    let (tx, rx) = bounded(n);
    std::thread::spawn(move || accept_n(listener, n, serve, tx));
    (addr, rx)
}

fn accept_n<R: Send + 'static>(
    listener: TcpListener,
    n: usize,
    serve: impl Fn(TcpStream) -> R + Send + Sync + Clone + 'static,
    tx: crossbeam_channel::Sender<R>,
) {
    for tcp in listener.incoming().take(n) {
        let tcp = tcp.expect("accept");
        let (serve, tx) = (serve.clone(), tx.clone());
        // One thread per connection, as the docs tell servers to do.
        std::thread::spawn(move || {
            let _ = tx.send(serve(tcp));
        });
    }
}

/// What the server saw of a request.
#[derive(Debug)]
struct Seen {
    path: String,
    query: Option<String>,
    token: Option<String>,
    peer: SocketAddr,
    offered: Vec<String>,
    upgrade: bool,
}

fn seen(incoming: &Incoming) -> Seen {
    Seen {
        path: incoming.path().to_owned(),
        query: incoming.query().map(str::to_owned),
        token: incoming
            .headers()
            .get("x-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        peer: incoming.peer_addr(),
        offered: incoming.subprotocols().map(str::to_owned).collect(),
        upgrade: incoming.is_upgrade(),
    }
}

fn client_request(url: &str, headers: &[(&str, &str)]) -> tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

fn local_addr(ws: &WebSocket<TcpStream>) -> SocketAddr {
    ws.get_ref().local_addr().unwrap()
}

#[test]
fn the_server_sees_the_request_and_answers_with_a_subprotocol_the_client_offered() {
    for side in SIDES {
        let (addr, results) = serve_n(1, move |tcp| {
            let incoming = ServerConnection::read_request(tcp, None, &Config::server_defaults())?;
            let seen = seen(&incoming);
            // The server's preference among what the client offers.
            let chosen = ["chat.v2", "chat.v1"]
                .into_iter()
                .find(|p| incoming.subprotocols().any(|o| o == *p))
                .unwrap();
            let conn =
                incoming.accept(Accept::new().subprotocol(chosen).header("X-Served-By", "t"))?;
            let subprotocol = conn.subprotocol().map(str::to_owned);
            serve(side, conn, &mut Echo::default());
            Ok::<_, Error>((seen, subprotocol))
        });
        let request = client_request(
            &format!("ws://{addr}/chat?room=lobby&since=42"),
            &[
                ("X-Token", "abc"),
                ("Sec-WebSocket-Protocol", "chat.v1, chat.v2"),
            ],
        );
        let (mut ws, response) = connect_timed(request).unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
        assert_eq!(response.headers()["x-served-by"], "t");
        let me = local_addr(&ws);
        ws.send(Message::text("hello")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("hello"));
        ws.close(None).unwrap();
        while ws.read().is_ok() {}

        let (seen, subprotocol) = results.recv_timeout(TEST_DEADLINE).unwrap().unwrap();
        assert_eq!(seen.path, "/chat");
        assert_eq!(seen.query.as_deref(), Some("room=lobby&since=42"));
        assert_eq!(seen.token.as_deref(), Some("abc"));
        assert_eq!(seen.peer, me);
        assert_eq!(seen.offered, ["chat.v1", "chat.v2"]);
        assert!(seen.upgrade);
        assert_eq!(subprotocol.as_deref(), Some("chat.v2"));
    }
}

#[test]
fn a_subprotocol_the_client_did_not_offer_is_refused_with_a_typed_error() {
    let (addr, results) = serve_n(2, |tcp| {
        let incoming = ServerConnection::read_request(tcp, None, &Config::server_defaults())?;
        incoming
            .accept(Accept::new().subprotocol("chat.v9"))
            .map(drop)
    });
    for offer in [Some("chat.v1, chat.v2"), None] {
        let headers: Vec<_> = offer
            .map(|o| ("Sec-WebSocket-Protocol", o))
            .into_iter()
            .collect();
        let request = client_request(&format!("ws://{addr}/"), &headers);
        match connect_timed(request) {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
            other => panic!("expected HTTP 400, got {other:?}"),
        }
        let err = results.recv_timeout(TEST_DEADLINE).unwrap().unwrap_err();
        assert!(
            matches!(&err, Error::SubprotocolNotOffered { protocol } if protocol == "chat.v9"),
            "{err:?}"
        );
    }
}

#[test]
fn a_rejected_request_gets_the_status_and_the_reason() {
    let (addr, results) = serve_n(2, |tcp| {
        let incoming = ServerConnection::read_request(tcp, None, &Config::server_defaults())?;
        incoming.reject(StatusCode::FORBIDDEN, "not on the guest list")
    });
    match connect_timed(format!("ws://{addr}/")) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    // The whole answer, as any HTTP client reads it.
    let mut tcp = timed_tcp(addr);
    tcp.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
    tcp.write_all(b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let answer = String::from_utf8(read_to_end(&mut tcp)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    assert!(answer.contains("\r\nContent-Length: 21\r\n"), "{answer}");
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\nnot on the guest list"),
        "{answer}"
    );
    // Hang up as an HTTP client does after `Connection: close` (the server lingers until then).
    drop(tcp);
    for _ in 0..2 {
        results.recv_timeout(TEST_DEADLINE).unwrap().unwrap();
    }
}

#[test]
fn one_port_answers_plain_http_and_upgrades_websockets() {
    for side in SIDES {
        let (addr, results) = serve_n(3, move |tcp| {
            let incoming = ServerConnection::read_request(tcp, None, &Config::server_defaults())?;
            match (incoming.method().as_str(), incoming.path()) {
                ("GET", "/healthz") => {
                    let mut http = incoming.into_http();
                    http.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                    )?;
                    http.close()?;
                    Ok("http")
                }
                ("POST", "/echo") => {
                    // The body came with the head: it is read from the stream first.
                    let length: usize = incoming.headers()["content-length"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let mut http = incoming.into_http();
                    let mut body = vec![0u8; length];
                    http.read_exact(&mut body)?;
                    write!(
                        http,
                        "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
                    )?;
                    http.write_all(&body)?;
                    http.close()?;
                    Ok("body")
                }
                _ => {
                    serve(side, incoming.accept(Accept::new())?, &mut Echo::default());
                    Ok::<_, Error>("websocket")
                }
            }
        });
        let mut tcp = timed_tcp(addr);
        tcp.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        let answer = String::from_utf8(read_to_end(&mut tcp)).unwrap();
        assert_eq!(
            answer,
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        );
        drop(tcp);

        let mut tcp = timed_tcp(addr);
        tcp.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
        tcp.write_all(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello there")
            .unwrap();
        let answer = String::from_utf8(read_to_end(&mut tcp)).unwrap();
        assert!(answer.ends_with("\r\n\r\nhello there"), "{answer}");
        drop(tcp);

        let (mut ws, _) = connect_timed(format!("ws://{addr}/chat")).unwrap();
        ws.send(Message::text("same port")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("same port"));
        ws.close(None).unwrap();
        while ws.read().is_ok() {}

        let mut served: Vec<_> = (0..3)
            .map(|_| results.recv_timeout(TEST_DEADLINE).unwrap().unwrap())
            .collect();
        served.sort();
        assert_eq!(served, ["body", "http", "websocket"]);
    }
}

#[test]
fn bad_upgrades_are_answered_with_the_right_status() {
    let upgrade = "GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        (
            format!("{upgrade}Sec-WebSocket-Version: 8\r\n{key}\r\n"),
            "HTTP/1.1 426 Upgrade Required\r\n",
            Some("\r\nSec-WebSocket-Version: 13\r\n"),
        ),
        (
            format!("{upgrade}Sec-WebSocket-Version: 13\r\n\r\n"),
            "HTTP/1.1 400 Bad Request\r\n",
            None,
        ),
        (
            format!("{upgrade}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n"),
            "HTTP/1.1 400 Bad Request\r\n",
            None,
        ),
        (
            "POST /chat HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n".to_owned(),
            "HTTP/1.1 405 Method Not Allowed\r\n",
            Some("\r\nAllow: GET\r\n"),
        ),
        (
            "GET /chat HTTP/1.0\r\nHost: h\r\n\r\n".to_owned(),
            "HTTP/1.1 400 Bad Request\r\n",
            None,
        ),
        (
            "NOT HTTP AT ALL\r\n\r\n".to_owned(),
            "HTTP/1.1 400 Bad Request\r\n",
            None,
        ),
    ];
    let (addr, results) = serve_n(cases.len(), |tcp| {
        ServerConnection::accept(tcp, None, &Config::server_defaults()).map(drop)
    });
    for (request, status_line, header) in cases {
        let mut tcp = timed_tcp(addr);
        tcp.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
        tcp.write_all(request.as_bytes()).unwrap();
        let answer = String::from_utf8(read_to_end(&mut tcp)).unwrap();
        assert!(answer.starts_with(status_line), "{request:?} -> {answer}");
        if let Some(header) = header {
            assert!(answer.contains(header), "{request:?} -> {answer}");
        }
        drop(tcp);
        let code: u16 = status_line[9..12].parse().unwrap();
        let err = results.recv_timeout(TEST_DEADLINE).unwrap().unwrap_err();
        assert!(
            matches!(&err, Error::BadRequest { status, .. } if status.as_u16() == code),
            "{request:?} -> {err:?}"
        );
    }
}

#[test]
fn a_head_longer_than_the_bound_is_refused_without_reading_on() {
    let (addr, results) = serve_n(1, move |tcp| {
        ServerConnection::read_request(tcp, None, &Config::server_defaults()).map(drop)
    });
    let mut tcp = timed_tcp(addr);
    tcp.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
    // A head that never ends: 64 KiB of one header, and the connection kept open.
    let mut writer = tcp.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let _ = writer.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ");
        let _ = writer.write_all(&[b'a'; 64 << 10]);
        writer
    });
    // The answer comes, and then the end of the stream, while the head is still unfinished.
    let answer = String::from_utf8(read_to_end(&mut tcp)).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
    drop(flood.join().unwrap());
    drop(tcp);
    let err = results.recv_timeout(TEST_DEADLINE).unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::BadRequest { status, .. } if status.as_u16() == 431),
        "{err:?}"
    );
}

#[test]
fn a_head_the_application_read_itself_is_upgraded_with_what_came_after_it() {
    for side in SIDES {
        let (addr, results) = serve_n(1, move |mut tcp| {
            // The application's own reader, which reads in chunks and so past the head.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let end = loop {
                let n = tcp.read(&mut chunk).unwrap();
                assert!(n > 0, "the client closed before its head");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let (head, leftover) = buf.split_at(end);
            let incoming = Incoming::from_parts(tcp, head, leftover, &Config::server_defaults())?;
            serve(side, incoming.accept(Accept::new())?, &mut Echo::default());
            Ok::<_, Error>(leftover.len())
        });
        let mut tcp = timed_tcp(addr);
        tcp.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
        let mut first = upgrade_request("", None);
        first.extend(masked_frame(true, false, 1, b"in the same packet"));
        tcp.write_all(&first).unwrap();
        let mut ws = client_after_101(tcp);
        assert_eq!(ws.read().unwrap(), Message::text("in the same packet"));
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
        let leftover = results.recv_timeout(TEST_DEADLINE).unwrap().unwrap();
        assert!(leftover > 0, "the frame was meant to arrive with the head");
    }
}

// ----- frames the client sent before our 101 ----------------------------------------------------

/// An upgrade request for a raw client, with extra header lines.
fn upgrade_request(extra: &str, key: Option<&str>) -> Vec<u8> {
    let key = key.unwrap_or("dGhlIHNhbXBsZSBub25jZQ==");
    format!(
        "GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A masked (client-to-server) frame.
fn masked_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode];
    match payload.len() {
        l if l < 126 => f.push(0x80 | l as u8),
        l => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(l as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Read the server's answer head byte by byte (nothing past it), check it is a 101, and go on
/// as a tungstenite client on the same socket. Returns the head too.
fn read_101(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).expect("the server's answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let accept = tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
    assert!(
        head.contains(&format!("Sec-WebSocket-Accept: {accept}\r\n")),
        "{head}"
    );
    head
}

fn client_after_101(mut tcp: TcpStream) -> WebSocket<TcpStream> {
    read_101(&mut tcp);
    WebSocket::from_raw_socket(tcp, Role::Client, None)
}

#[test]
fn frames_sent_with_the_request_reach_the_handler() {
    for side in SIDES {
        let (addr, results) = serve_n(1, move |tcp| {
            let conn = ServerConnection::accept(tcp, None, &Config::server_defaults())?;
            let mut echo = Echo::default();
            serve(side, conn, &mut echo);
            Ok::<_, Error>(echo.errors)
        });
        let mut tcp = timed_tcp(addr);
        tcp.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
        // The request and two frames in one write, as an impatient client sends them.
        let mut bytes = upgrade_request("", None);
        bytes.extend(masked_frame(true, false, 1, b"first, before the 101"));
        bytes.extend(masked_frame(true, false, 2, &[1, 2, 3]));
        tcp.write_all(&bytes).unwrap();
        let mut ws = client_after_101(tcp);
        assert_eq!(ws.read().unwrap(), Message::text("first, before the 101"));
        assert_eq!(ws.read().unwrap(), Message::binary(vec![1, 2, 3]));
        ws.send(Message::text("after")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("after"));
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
        let errors = results.recv_timeout(TEST_DEADLINE).unwrap().unwrap();
        assert!(errors.is_empty(), "{errors:?}");
    }
}

#[test]
fn compressed_frames_sent_with_the_request_are_inflated() {
    for side in SIDES {
        // Echoes stay uncompressed (threshold above their size), so a plain tungstenite client can
        // read them; what is under test is the inflating of what came with the request.
        let config = Config::server_builder()
            .deflate(Some(DeflateConfig::new().threshold(1 << 20)))
            .build()
            .unwrap();
        let (addr, results) = serve_n(1, move |tcp| {
            let conn = ServerConnection::accept(tcp, None, &config)?;
            let agreed = conn.deflate().is_some();
            let mut echo = Echo::default();
            serve(side, conn, &mut echo);
            Ok::<_, Error>((agreed, echo.errors))
        });
        let text = "pipelined and compressed, pipelined and compressed, pipelined and compressed";
        let mut compress = flate2::Compress::new(flate2::Compression::default(), false);
        let mut deflated = Vec::with_capacity(256);
        compress
            .compress_vec(text.as_bytes(), &mut deflated, flate2::FlushCompress::Sync)
            .unwrap();
        assert!(deflated.ends_with(&[0, 0, 0xff, 0xff]));
        deflated.truncate(deflated.len() - 4);
        assert!(
            deflated.len() < text.len(),
            "the frame is really compressed"
        );

        let mut tcp = timed_tcp(addr);
        tcp.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
        let mut bytes = upgrade_request("Sec-WebSocket-Extensions: permessage-deflate\r\n", None);
        bytes.extend(masked_frame(true, true, 1, &deflated));
        // And one uncompressed message after it, which passes the layer untouched.
        bytes.extend(masked_frame(true, false, 1, b"plain"));
        tcp.write_all(&bytes).unwrap();
        let head = read_101(&mut tcp);
        assert!(
            head.contains("Sec-WebSocket-Extensions: permessage-deflate"),
            "{head}"
        );
        let mut ws = WebSocket::from_raw_socket(tcp, Role::Client, None);
        assert_eq!(ws.read().unwrap(), Message::text(text));
        assert_eq!(ws.read().unwrap(), Message::text("plain"));
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
        let (agreed, errors) = results.recv_timeout(TEST_DEADLINE).unwrap().unwrap();
        assert!(agreed);
        assert!(errors.is_empty(), "{errors:?}");
    }
}

#[test]
fn an_endpoint_can_choose_its_own_config_after_reading_the_request() {
    for side in SIDES {
        let small = Config::server_builder()
            .max_message_size(Some(16))
            .build()
            .unwrap();
        let large = Config::server_builder()
            .max_message_size(Some(1 << 20))
            .build()
            .unwrap();
        let (addr, results) = serve_n(2, move |tcp| {
            let incoming = ServerConnection::read_request(tcp, None, &small)?;
            let incoming = if incoming.path() == "/large" {
                incoming.with_config(&large)
            } else {
                incoming
            };
            serve(side, incoming.accept(Accept::new())?, &mut Echo::default());
            Ok::<(), Error>(())
        });
        let payload = "x".repeat(1000);
        // The large endpoint echoes 1,000 bytes...
        let (mut ws, _) = connect_timed(format!("ws://{addr}/large")).unwrap();
        ws.send(Message::text(payload.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(payload.clone()));
        ws.close(None).unwrap();
        read_until_close(&mut ws);
        // ...which the small one refuses with 1009.
        let (mut ws, _) = connect_timed(format!("ws://{addr}/small")).unwrap();
        ws.send(Message::text(payload)).unwrap();
        assert_eq!(close_code_from_client(&mut ws), Some(1009));
        // Send our reply, so the server ends now rather than at its close timeout.
        let _ = ws.flush();
        for _ in 0..2 {
            results.recv_timeout(TEST_DEADLINE).unwrap().unwrap();
        }
    }
}

/// RFC 6455 7.1.1: the server closes TCP first. A server that fails a connection sends its
/// Close and then FIN at once, so a client that already sent its own Close (here, an invalid
/// one) or that waits for the server to hang up is not left waiting for the close timeout.
#[test]
fn a_server_that_fails_the_connection_closes_tcp_first() {
    for side in SIDES {
        let config = Config::server_builder()
            .close_timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        // A Close with a one-byte payload (no room for a code) and a frame with a reserved opcode.
        for bad in [
            masked_frame(true, false, 0x8, b"x"),
            masked_frame(true, false, 0x3, b""),
        ] {
            let config = config.clone();
            let (addr, results) = serve_n(1, move |tcp| {
                let conn = ServerConnection::accept(tcp, None, &config)?;
                serve(side, conn, &mut Echo::default());
                Ok::<(), Error>(())
            });
            let mut tcp = timed_tcp(addr);
            tcp.write_all(&upgrade_request("", None)).unwrap();
            read_101(&mut tcp);
            tcp.write_all(&bad).unwrap();
            // The server's Close (1002), then the end of the stream: long before the close timeout
            // (this read gives up after SERVER_IO_TIMEOUT, a quarter of it).
            let mut rest = Vec::new();
            tcp.read_to_end(&mut rest)
                .expect("the server ended TCP (not a read timeout)");
            assert!(rest.len() >= 4, "a Close frame: {rest:?}");
            assert_eq!(rest[0], 0x88, "{rest:?}");
            assert_eq!(u16::from_be_bytes([rest[2], rest[3]]), 1002);
            // Our side hangs up too: the server's connection ends.
            drop(tcp);
            results.recv_timeout(TEST_DEADLINE).unwrap().unwrap();
        }
    }
}
