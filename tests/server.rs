//! The server side of the core (`ServerConnection`), driven by an independent client
//! (tungstenite's).

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crossbeam_channel::bounded;
use syncws::{Config, Error, Initiator, ServerConnection};
use tungstenite::Message;
use util::*;

fn serve_one(tls: Option<native_tls::TlsAcceptor>) -> (u16, std::thread::JoinHandle<Echo>) {
    let (addr, handle) = raw_server(move |tcp| {
        let conn = ServerConnection::accept(tcp, tls.as_ref(), &Config::default()).unwrap();
        let mut echo = Echo::default();
        conn.run(&mut echo);
        echo
    });
    (addr.port(), handle)
}

#[test]
fn a_server_connection_echoes_and_answers_the_clients_close() {
    let (port, server) = serve_one(None);
    let (mut ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}/")).unwrap();
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

#[test]
fn a_handle_sends_from_another_thread_which_is_how_a_server_broadcasts() {
    let (listener, addr) = bind();
    let (handle_tx, handle_rx) = bounded(1);
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = ServerConnection::accept(tcp, None, &Config::default()).unwrap();
        handle_tx.send(conn.handle()).unwrap();
        conn.run(&mut Echo::default());
    });
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/")).unwrap();
    let handle = handle_rx.recv_timeout(TEST_DEADLINE).unwrap();
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
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let _silent = TcpStream::connect(addr).unwrap();
    let (bad, silent) = server.join().unwrap();
    assert!(matches!(bad, Error::InvalidHandshake(_)), "{bad:?}");
    assert!(
        matches!(silent, Error::Timeout(syncws::TimeoutKind::Handshake)),
        "{silent:?}"
    );
}

#[test]
fn a_server_connection_speaks_tls() {
    let pki = TestPki::new();
    let (cert, key) = pki.issue(&["localhost"]);
    let identity = native_tls::Identity::from_pkcs8(cert.as_bytes(), key.as_bytes()).unwrap();
    let (port, server) = serve_one(Some(native_tls::TlsAcceptor::new(identity).unwrap()));
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

#[test]
fn a_failed_server_connection_ends_on_the_clients_close_not_on_the_close_timeout() {
    // The close timeout is far longer than the test waits: only the client's Close can end it.
    let config = Config::builder()
        .close_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (done_tx, done_rx) = bounded(1);
    let (addr, _server) = raw_server(move |tcp| {
        let conn = ServerConnection::accept(tcp, None, &config).unwrap();
        let mut echo = Echo::default();
        conn.run(&mut echo);
        let _ = done_tx.send(echo);
    });
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/")).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        tcp.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
    }
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
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
    let _ = read_to_end(&mut silent);
    let err = server.join().unwrap();
    assert!(
        matches!(err, Error::Timeout(syncws::TimeoutKind::Handshake)),
        "{err:?}"
    );
}
