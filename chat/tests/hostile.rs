//! The chat server against clients that do what well-behaved test clients never do: come in
//! through both listeners at once, never read, flood, ask for expensive answers, send binary.
//! Each test reproduces an attack from outside, on real sockets.

mod util;

use serde_json::{json, Value};
use syncws::Config;
use util::*;

/// A server with both listeners (ws and wss, as by default) and a client config that trusts its
/// generated certificate.
fn both_listeners(extra: &[&str]) -> (syncws_chat::Server, String, String, Config) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), extra);
    opts.tls_listen = "127.0.0.1:0".into();
    let server = syncws_chat::Server::start(&opts).unwrap();
    let pem = std::fs::read(&server.tls_files.clone().unwrap().cert).unwrap();
    let config = Config::builder()
        .root_certificate_pem(&pem)
        .build()
        .unwrap();
    let ws = format!("ws://{}/", server.ws_addr.unwrap());
    let wss = format!("wss://localhost:{}/", server.wss_addr.unwrap().port());
    // The directory lives as long as the test process: the server holds files in it.
    std::mem::forget(dir);
    (server, ws, wss, config)
}

/// Read `c`'s events up to its answer to a `ping`: everything the server sent it before.
fn drain(c: &mut Chat) -> Vec<Value> {
    c.send(json!({"op": "ping"}));
    let mut got: Vec<Value> = c.seen.drain(..).collect();
    loop {
        let v = c.next();
        if v["ev"] == "pong" {
            return got;
        }
        got.push(v);
    }
}

#[test]
fn ids_are_unique_across_listeners_and_nobody_reads_or_speaks_as_someone_else() {
    let (server, ws, wss, tls) = both_listeners(&[]);
    let mut ann = Chat::connect(&format!("{ws}?nick=ann"));
    let mut bob = Chat::connect_with(&format!("{wss}?nick=bob"), &tls);
    let mut carol = Chat::connect(&format!("{ws}?nick=carol"));
    let mut dan = Chat::connect_with(&format!("{wss}?nick=dan"), &tls);
    let ids: Vec<u64> = [&ann, &bob, &carol, &dan]
        .iter()
        .map(|c| c.welcome["id"].as_u64().unwrap())
        .collect();
    let unique: std::collections::HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        4,
        "one id per connection, whatever the listener: {ids:?}"
    );

    // A room only ann and carol joined: its members, its messages.
    ann.join("r1");
    let joined = carol.join("r1");
    assert_eq!(joined["members"], json!(["ann", "carol"]));
    carol.send(json!({"op": "say", "room": "r1", "text": "for r1 only"}));
    let m = ann.msg("r1");
    assert_eq!(
        (m["text"].as_str(), m["from"].as_str()),
        (Some("for r1 only"), Some("carol"))
    );
    carol.msg("r1");
    for outsider in [&mut bob, &mut dan] {
        let got = drain(outsider);
        assert!(
            got.iter().all(|v| v["room"] != "r1"),
            "a non-member saw r1: {got:?}"
        );
    }

    // The lobby: `from` is always the sender's own nick, and each member gets it once.
    ann.send(json!({"op": "say", "room": "lobby", "text": "written by ann"}));
    for c in [&mut ann, &mut bob, &mut carol, &mut dan] {
        let m = c.msg("lobby");
        assert_eq!(m["from"], "ann");
        let again = drain(c);
        assert!(
            again.iter().all(|v| v["ev"] != "msg"),
            "delivered twice: {again:?}"
        );
    }
    for c in [ann, bob, carol, dan] {
        c.close();
    }
    server.shutdown(std::time::Duration::from_secs(5));
}

/// A handler that does nothing (the hub drives the connection through its handle).
struct Quiet;
impl syncws::Handler for Quiet {}

/// A real server-side connection to hand the hub, and the raw client at its other end.
fn connection_pair() -> (
    syncws::ServerConnection,
    tungstenite::WebSocket<std::net::TcpStream>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        tungstenite::client(format!("ws://{addr}/"), tcp).unwrap().0
    });
    let (tcp, _) = listener.accept().unwrap();
    let conn = syncws::ServerConnection::accept(tcp, None, &Config::server_defaults()).unwrap();
    (conn, client.join().unwrap())
}

#[test]
fn the_hub_refuses_a_second_member_under_an_id_in_use_and_keeps_the_first() {
    use std::sync::atomic::AtomicI64;
    use std::sync::Arc;
    use syncws_chat::hub::{self, HubOptions, Request};
    let dir = tempfile::tempdir().unwrap();
    let store = syncws_chat::store::Store::open(
        &dir.path().join("chat.db"),
        syncws_chat::store::Retention {
            max_messages: 100,
            max_age: std::time::Duration::from_secs(3600),
        },
        false,
    )
    .unwrap();
    let log = syncws_chat::eventlog::EventLog::open(&dir.path().join("log"), 1 << 20).unwrap();
    let (tx, rx) = crossbeam_channel::bounded(16);
    let options = HubOptions::from_options(&syncws_chat::Options::defaults());
    let hub = hub::spawn(store, None, Arc::default(), log.clone(), options, rx).unwrap();
    let mut runs = Vec::new();
    let mut clients = Vec::new();
    for nick in ["first", "second"] {
        let (conn, client) = connection_pair();
        tx.send(Request::Connect {
            id: 7,
            nick: nick.into(),
            tx: conn.handle(),
            metrics: conn.metrics(),
            last_active: Arc::new(AtomicI64::new(syncws_chat::now_ms())),
        })
        .unwrap();
        runs.push(std::thread::spawn(move || conn.run(&mut Quiet)));
        clients.push(client);
    }
    let mut second = clients.pop().unwrap();
    let mut first = clients.pop().unwrap();
    // The second is closed with 1011 and gets nothing meant for id 7.
    loop {
        match second.read().unwrap() {
            tungstenite::Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 1011);
                break;
            }
            tungstenite::Message::Text(t) => panic!("the duplicate got {t}"),
            _ => {}
        }
    }
    // The first keeps its place: its lobby `joined`, then its own message, `from` itself.
    tx.send(Request::Say {
        id: 7,
        room: Some("lobby".into()),
        text: "still me".into(),
        cid: None,
        at: std::time::Instant::now(),
    })
    .unwrap();
    let mut texts = Vec::new();
    while texts.len() < 2 {
        if let tungstenite::Message::Text(t) = first.read().unwrap() {
            texts.push(serde_json::from_str::<Value>(&t).unwrap());
        }
    }
    assert_eq!(texts[0]["ev"], "joined");
    assert_eq!(
        (texts[1]["text"].as_str(), texts[1]["from"].as_str()),
        (Some("still me"), Some("first"))
    );
    log.flush();
    let events = syncws_chat::eventlog::read(&dir.path().join("log")).unwrap();
    assert!(events
        .iter()
        .any(|e| e["kind"] == "duplicate_id" && e["id"] == 7));
    drop(first);
    drop(second);
    for r in runs {
        r.join().unwrap();
    }
    tx.send(Request::Disconnect { id: 7 }).unwrap();
    let (done, finished) = crossbeam_channel::bounded(1);
    tx.send(Request::Shutdown(done)).unwrap();
    finished.recv_timeout(DEADLINE).unwrap();
    drop(tx);
    hub.join().unwrap();
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.x: another client).
fn connect_from(from: &str, addr: std::net::SocketAddr) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let tcp: std::net::TcpStream = socket.into();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp
}

/// Threads of process `pid` named `name`.
#[cfg(target_os = "linux")]
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap_or_default().trim() == name
        })
        .count()
}

/// Read what the server says until it closes.
fn answer_of(tcp: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[cfg(target_os = "linux")]
#[test]
fn silent_sockets_from_one_address_cost_no_thread_beyond_its_limit() {
    let (_keep, dir) = data_dir();
    let server = Binary::start(&dir, &["--max-per-ip", "64", "--first-byte-timeout", "60"]);
    let addr: std::net::SocketAddr = server
        .url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let pid = server.child.id();
    let before = threads_named(pid, "chat-conn");
    // 300 sockets that say nothing, all from 127.0.0.1.
    let mut silent: Vec<std::net::TcpStream> =
        (0..300).map(|_| connect_from("127.0.0.1", addr)).collect();
    // The 65th and later are answered 503 and closed at once, by the accept loop.
    let mut refused = silent.split_off(64);
    for tcp in &mut refused {
        let answer = answer_of(tcp);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        assert!(
            answer.contains("too many connections from this address"),
            "{answer}"
        );
    }
    let threads = threads_named(pid, "chat-conn");
    eprintln!(
        "chat-conn threads with 300 silent sockets from one address: {threads} (before: {before})"
    );
    assert!(
        threads <= 64,
        "{threads} connection threads for 64 admitted sockets"
    );
    // Another client address is not held up by this one.
    let tcp = connect_from("127.0.0.2", addr);
    let (mut other, _) = tungstenite::client(server.url.as_str(), tcp).unwrap();
    let welcome = other.read().unwrap();
    assert!(
        welcome.to_text().unwrap().contains("\"welcome\""),
        "{welcome}"
    );
    drop(silent);
}

#[test]
fn a_silent_socket_is_closed_at_its_first_byte_deadline_and_a_slow_request_at_the_handshakes() {
    let server = TestServer::start(&["--first-byte-timeout", "0.3", "--handshake-timeout", "1"]);
    let addr: std::net::SocketAddr = server
        .url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let started = std::time::Instant::now();
    let mut silent = connect_from("127.0.0.1", addr);
    assert_eq!(answer_of(&mut silent), "", "closed without a word");
    let silent_for = started.elapsed();
    // A request that starts and never ends: the handshake deadline ends it.
    let mut slow = connect_from("127.0.0.1", addr);
    std::io::Write::write_all(&mut slow, b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let _ = answer_of(&mut slow);
    let slow_for = started.elapsed() - silent_for;
    assert!(
        silent_for < slow_for,
        "the first byte's deadline ({silent_for:?}) is the shorter ({slow_for:?})"
    );
    assert_eq!(server.metric("chat_first_byte_timeouts_total"), 1);
    assert_eq!(server.metric("chat_handshake_failures_total"), 2);
    server.server.as_ref().unwrap().flush_log();
    let events = syncws_chat::eventlog::read(&server.dir.path().join("log")).unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "handshake_failed"),
        "the slow request is logged"
    );
}

#[test]
fn the_connection_limit_counts_both_listeners_together() {
    let (server, ws, wss, tls) = both_listeners(&["--max-connections", "3"]);
    let a = Chat::connect(&ws);
    let b = Chat::connect_with(&wss, &tls);
    let c = Chat::connect(&ws);
    // The fourth, on either listener, is refused before its upgrade.
    for url in [&ws, &wss] {
        let refused = if url.starts_with("wss") {
            syncws::ThreadedClient::connect(url, &tls)
        } else {
            syncws::ThreadedClient::connect(url, &Config::default())
        };
        let e = refusal(refused, "a fourth connection was accepted");
        assert!(e.to_string().contains("503"), "{e}");
    }
    assert_eq!(
        server
            .metrics()
            .connections_refused_total
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    for c in [a, b, c] {
        c.close();
    }
    server.shutdown(std::time::Duration::from_secs(5));
}

/// The error of a connection attempt that must fail.
fn refusal(attempt: Result<syncws::ThreadedClient, syncws::Error>, what: &str) -> syncws::Error {
    match attempt {
        Ok(_) => panic!("{what}"),
        Err(e) => e,
    }
}

fn token(secret: &str, sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[test]
fn echo_is_off_unless_asked_and_then_takes_the_token_its_own_slots_and_an_idle_close() {
    // Off by default: /echo is no WebSocket endpoint.
    let server = TestServer::start(&[]);
    let echo = format!("{}echo", server.url);
    let e = refusal(
        syncws::ThreadedClient::connect(&echo, &Config::default()),
        "/echo upgraded",
    );
    assert!(e.to_string().contains("404"), "{e}");

    let secret = "an-echo-test-secret-of-32-bytes!";
    let server = TestServer::start(&[
        "--echo",
        "--echo-max-connections",
        "1",
        "--jwt-secret",
        secret,
        "--idle-timeout",
        "1",
    ]);
    let echo = format!("{}echo", server.url);
    let e = refusal(
        syncws::ThreadedClient::connect(&echo, &Config::default()),
        "no token, yet upgraded",
    );
    assert!(e.to_string().contains("401"), "{e}");
    let with_token = format!("{echo}?token={}", token(secret, "tester"));
    let client = syncws::ThreadedClient::connect(&with_token, &Config::default()).unwrap();
    client.control_tx.send_text("hello").unwrap();
    loop {
        match client.event_rx.recv_timeout(DEADLINE).unwrap() {
            syncws::Event::TextMessage(t) => {
                assert_eq!(t.as_str(), "hello");
                break;
            }
            syncws::Event::Activated(_) => {}
            other => panic!("{other:?}"),
        }
    }
    // Its own pool: a second echo is refused, while chat still has room.
    let e = refusal(
        syncws::ThreadedClient::connect(&with_token, &Config::default()),
        "a second echo",
    );
    assert!(e.to_string().contains("503"), "{e}");
    let chat = Chat::connect(&format!("{}?token={}", server.url, token(secret, "ann")));
    // Idle for a second: closed with 1000, as a chat connection is.
    let mut code = None;
    loop {
        match client.event_rx.recv_timeout(DEADLINE).unwrap() {
            syncws::Event::ConnectionClosed(c) => code = Some(u16::from(c.code)),
            syncws::Event::Quit => break,
            _ => {}
        }
    }
    assert_eq!(code, Some(1000));
    drop(chat);
}
