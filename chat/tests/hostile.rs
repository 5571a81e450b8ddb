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
    tx.send(Request::Plain {
        id: 7,
        text: "still me".into(),
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
    wait_until("both counted", || {
        server.metric("chat_handshake_failures_total") == 2
    });
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

/// Peak resident memory of process `pid`, in KiB (VmHWM).
#[cfg(target_os = "linux")]
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The most expensive history the protocol allows (200 messages of 64 KiB of characters that
/// JSON escapes), asked for by 20 connections at once, must neither balloon the server's
/// memory nor hold up another room: every answer is cut to a bounded page.
#[cfg(target_os = "linux")]
#[test]
fn a_history_flood_is_answered_in_bounded_pages_and_holds_nobody_up() {
    let (_keep, dir) = data_dir();
    let server = Binary::start(&dir, &["--max-per-ip", "100"]);
    let pid = server.child.id();
    let mut filler = Chat::connect(&server.url);
    filler.join("junk");
    // Plain text (no JSON around it): 65,000 quotes, each escaped to two bytes on the way out.
    let junk = "\"".repeat(65_000);
    // A few at a time, reading its acknowledgements as a client must (each is 130 KB).
    for _ in 0..40 {
        for _ in 0..5 {
            filler.send_raw(&junk);
        }
        for _ in 0..5 {
            filler.msg("junk");
        }
    }
    let before = peak_rss_kib(pid);
    let mut calm = Chat::connect(&server.url);
    calm.join("calm");
    let mut askers: Vec<Chat> = (0..20).map(|_| Chat::connect(&server.url)).collect();
    let started = std::time::Instant::now();
    for a in &askers {
        a.send(json!({"op": "history", "room": "junk", "limit": 200, "cid": "h"}));
    }
    // Meanwhile, another room's say -> ack round trip.
    let mut worst = std::time::Duration::ZERO;
    for n in 0..20 {
        let sent = std::time::Instant::now();
        calm.send(json!({"op": "say", "room": "calm", "text": format!("ping {n}"), "cid": n}));
        let ack = calm.msg("calm");
        assert_eq!(ack["cid"], n);
        worst = worst.max(sent.elapsed());
    }
    for a in &mut askers {
        let page = a.expect("history");
        assert_eq!(page["cid"], "h");
        assert_eq!(page["more"], true, "cut short");
        let len = page.to_string().len();
        assert!(len <= 256 << 10, "a history frame of {len} bytes");
        assert!(!page["msgs"].as_array().unwrap().is_empty());
    }
    let all_answered = started.elapsed();
    let peak = peak_rss_kib(pid);
    eprintln!(
        "history flood: 20 x history{{limit:200}} over 64 KiB messages: all answered in {all_answered:?}; \
         another room's say->ack worst {worst:?}; server peak RSS {peak} KiB (before the flood {before} KiB)"
    );
    assert!(peak < 256 << 10, "peak RSS {peak} KiB");
}

/// Plain text meant for a stranger never reaches anyone else: once the pair ends (or the
/// member leaves its current room) it is refused, not said in the lobby or to the next
/// stranger.
#[test]
fn plain_text_after_a_pair_ends_is_refused_never_said_elsewhere() {
    let server = TestServer::start(&[]);
    let mut others = Chat::connect(&format!("{}?nick=olga", server.url));
    let mut pat = Chat::connect(&format!("{}?nick=pat", server.url));
    let mut quinn = Chat::connect(&format!("{}?nick=quinn", server.url));
    pat.send(json!({"op": "match"}));
    pat.expect("queued");
    quinn.send(json!({"op": "match"}));
    let room = quinn.expect("matched")["room"].as_str().unwrap().to_owned();
    pat.expect("matched");
    pat.send_raw("hi quinn, my number is 555-0100");
    assert_eq!(quinn.msg(&room)["text"], "hi quinn, my number is 555-0100");
    // Quinn goes; pat's next line was typed for quinn.
    quinn.send(json!({"op": "unmatch"}));
    pat.expect("peer_left");
    pat.send_raw("quinn, my address is 1 Main St");
    let e = pat.expect("error");
    assert_eq!(
        (e["code"].as_str(), e["room"].as_str()),
        (Some("peer_left"), Some(room.as_str()))
    );
    // Put back in the queue, pat is matched with the next stranger, but plain text still does
    // not go there until pat chooses.
    let mut rita = Chat::connect(&format!("{}?nick=rita", server.url));
    rita.send(json!({"op": "match"}));
    let new_room = rita.expect("matched")["room"].as_str().unwrap().to_owned();
    assert_eq!(pat.expect("matched")["room"], new_room.as_str());
    pat.send_raw("still about quinn");
    let e = pat.expect("error");
    assert_eq!(e["code"], "peer_left");
    assert!(e["message"].as_str().unwrap().contains(&new_room), "{e}");
    // Choosing the new pair: from then on plain text goes there.
    pat.join(&new_room);
    pat.send_raw("hello rita");
    assert_eq!(rita.msg(&new_room)["text"], "hello rita");
    // Leaving the current room leaves no current room: refused, not said in the lobby.
    pat.join("side");
    pat.send(json!({"op": "leave", "room": "side"}));
    pat.expect("presence");
    pat.send_raw("to nobody");
    assert_eq!(pat.expect("error")["code"], "no_room");
    for c in [&mut others, &mut rita] {
        let got = drain(c);
        assert!(
            got.iter()
                .all(|v| v["ev"] != "msg" || v["text"] == "hello rita"),
            "a line meant for someone else arrived: {got:?}"
        );
    }
}

/// A sender's `cid` is its own: members see its messages without it, live and in history;
/// only the sender's copy (its acknowledgement) and its own history carry it.
#[test]
fn a_cid_reaches_only_its_sender() {
    let server = TestServer::start(&[]);
    let mut ann = Chat::connect(&format!("{}?nick=ann", server.url));
    let mut bob = Chat::connect(&format!("{}?nick=bob", server.url));
    ann.join("r");
    bob.join("r");
    ann.send(json!({"op": "say", "room": "r", "text": "mine", "cid": "ann-secret-1"}));
    assert_eq!(ann.msg("r")["cid"], "ann-secret-1");
    let seen = bob.msg("r");
    assert!(seen.get("cid").is_none(), "bob saw ann's cid: {seen}");
    for (c, own) in [(&mut ann, true), (&mut bob, false)] {
        c.send(json!({"op": "history", "room": "r"}));
        let page = c.expect("history");
        let m = &page["msgs"][0];
        assert_eq!(m.get("cid").is_some(), own, "{m}");
    }
}

/// Expensive requests cost more of the rate limit than messages, and binary frames pay too
/// (the third closes the connection with 1003).
#[test]
fn expensive_requests_and_binary_frames_pay_the_rate_limit() {
    let server = TestServer::start(&["--rate", "0.01", "--burst", "10", "--rate-abuse", "100"]);
    let mut c = Chat::connect(&server.url);
    // 9 tokens: one full history page; then 1 token left, too little for `rooms` (5).
    c.send(json!({"op": "history", "room": "lobby", "limit": 200, "cid": 1}));
    assert_eq!(c.expect("history")["cid"], 1);
    c.send(json!({"op": "rooms", "cid": 2}));
    let e = c.expect("error");
    assert_eq!(
        (e["code"].as_str(), &e["cid"]),
        (Some("rate_limited"), &json!(2))
    );
    // The last token goes to a binary frame: refused, and it counted.
    c.client.control_tx.send_binary(vec![0u8; 4]).unwrap();
    assert_eq!(c.expect("error")["code"], "binary_unsupported");
    c.send(json!({"op": "ping", "cid": 3}));
    assert_eq!(c.expect("error")["code"], "rate_limited");
    assert_eq!(server.metric("chat_rate_limited_total"), 2);

    let server = TestServer::start(&[]);
    let mut c = Chat::connect(&server.url);
    for _ in 0..5 {
        let _ = c.client.control_tx.send_binary(vec![1u8; 4]);
    }
    assert_eq!(c.closed(), Some(1003));
}

/// Any op may carry a `cid`, and its answer or error carries it back (with the room a refusal
/// is about).
#[test]
fn every_op_answers_with_its_cid() {
    let server = TestServer::start(&[]);
    let mut c = Chat::connect(&server.url);
    c.send(json!({"op": "join", "room": "r", "cid": "j"}));
    assert_eq!(c.expect("joined")["cid"], "j");
    c.send(json!({"op": "who", "room": "r", "cid": "w"}));
    assert_eq!(c.expect("who")["cid"], "w");
    c.send(json!({"op": "rooms", "cid": "rs"}));
    assert_eq!(c.expect("rooms")["cid"], "rs");
    c.send(json!({"op": "history", "room": "r", "cid": "h"}));
    assert_eq!(c.expect("history")["cid"], "h");
    c.send(json!({"op": "leave", "room": "r", "cid": "l"}));
    let left = c.expect("presence");
    assert_eq!(
        (left["state"].as_str(), &left["cid"]),
        (Some("left"), &json!("l"))
    );
    c.send(json!({"op": "leave", "room": "nowhere", "cid": "n"}));
    let e = c.expect("error");
    assert_eq!(
        (e["code"].as_str(), e["room"].as_str(), &e["cid"]),
        (Some("not_member"), Some("nowhere"), &json!("n"))
    );
    c.send(json!({"op": "match", "cid": "m"}));
    assert_eq!(c.expect("queued")["cid"], "m");
    c.send(json!({"op": "unmatch", "cid": "u"}));
    assert_eq!(c.expect("unmatched")["cid"], "u");
    c.send(json!({"op": "ping", "cid": 5}));
    assert_eq!(c.expect("pong")["cid"], 5);
    c.send(json!({"op": "hello", "nick": "zed", "cid": "hi"}));
    assert_eq!(c.expect("welcome")["cid"], "hi");
    c.send(json!({"op": "say", "room": "lobby", "text": "bell\u{7}", "cid": "t"}));
    let e = c.expect("error");
    assert_eq!(
        (e["code"].as_str(), &e["cid"]),
        (Some("bad_text"), &json!("t"))
    );
}

/// A tmpfs of `size` mounted on a fresh directory for the life of the value (Linux, root: as
/// on the machines CI runs on; elsewhere the test says it cannot run, and CI fails on that).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            return Some(SmallDisk { dir });
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs (run as root) for the full-disk test"
        );
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        None
    }

    /// Fill what is left with a file; returns its path (remove it to free the disk).
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 16 << 10];
        while f.write_all(&chunk).is_ok() {}
        // Whatever fits in the last partial chunk.
        while f.write_all(&[0]).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A full disk: messages that cannot be committed are refused to their senders (with their
/// cid), reach nobody, and their seqs are not seen by anyone; the server stays up and works
/// again as soon as there is room.
#[test]
fn a_full_disk_refuses_messages_loudly_and_the_server_carries_on_when_there_is_room() {
    let Some(disk) = SmallDisk::mount("8m") else {
        return;
    };
    let server = syncws_chat::Server::start(&options(disk.dir.path(), &[])).unwrap();
    let url = format!("ws://{}/", server.ws_addr.unwrap());
    let mut ann = Chat::connect(&format!("{url}?nick=ann"));
    let mut bob = Chat::connect(&format!("{url}?nick=bob"));
    ann.join("r");
    bob.join("r");
    ann.send(json!({"op": "say", "room": "r", "text": "before", "cid": 1}));
    assert_eq!(ann.msg("r")["seq"], 1);
    assert_eq!(bob.msg("r")["seq"], 1);
    let filler = disk.fill();
    // Enough to need new pages on disk: refused, each with its cid. Each is followed by a
    // recovering join of the same room, most likely in the same batch: whatever it is told
    // must hold nothing that was not stored (no refused message, no seq past the last stored).
    let text = "x".repeat(60_000);
    let mut refused = 0;
    let mut stored = 1;
    for n in 0..30 {
        ann.send(json!({"op": "say", "room": "r", "text": text, "cid": format!("full-{n}")}));
        ann.send(json!({"op": "join", "room": "r", "since": 1, "cid": format!("j-{n}")}));
        let (mut said, mut joined) = (false, false);
        while !(said && joined) {
            let v = ann.next();
            match (v["ev"].as_str(), v["cid"].as_str()) {
                (Some("error"), Some(c)) if c.starts_with("full-") => {
                    assert_eq!(v["code"], "unavailable", "{v}");
                    assert_eq!(c, format!("full-{n}"));
                    refused += 1;
                    said = true;
                }
                // Some may still fit (SQLite's cache and the WAL take a few).
                (Some("msg"), Some(c)) if c.starts_with("full-") => {
                    stored += 1;
                    said = true;
                }
                (Some("joined"), _) => {
                    let seq = v["seq"].as_u64().unwrap();
                    assert!(
                        seq <= stored,
                        "joined shows seq {seq}; {stored} stored: {v}"
                    );
                    joined = true;
                }
                (Some("history"), _) => {
                    for m in v["msgs"].as_array().unwrap() {
                        assert!(m["seq"].as_u64().unwrap() <= stored, "replayed {m}");
                    }
                }
                _ => {}
            }
        }
    }
    assert!(refused > 0, "nothing was refused on a full disk");
    eprintln!("full disk: {refused} of 30 messages refused");
    // The server is up: it answers, and a new connection is served.
    let mut carol = Chat::connect(&format!("{url}?nick=carol"));
    carol.send(json!({"op": "ping"}));
    carol.expect("pong");
    std::fs::remove_file(filler).unwrap();
    ann.send(json!({"op": "say", "room": "r", "text": "after", "cid": "after"}));
    let after = ann.msg("r");
    assert_eq!(after["cid"], "after");
    // Bob saw exactly what was stored, gap-free: no refused message, no seq twice.
    let mut seqs = Vec::new();
    loop {
        let m = bob.msg("r");
        seqs.push(m["seq"].as_u64().unwrap());
        if m["text"] == "after" {
            break;
        }
    }
    let expected: Vec<u64> = (2..=after["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, expected);
    // And history agrees with what was delivered.
    carol.send(json!({"op": "history", "room": "r", "limit": 200}));
    let page = carol.expect("history");
    let stored: Vec<u64> = page["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(stored.first(), Some(&1));
    assert_eq!(stored.last(), after["seq"].as_u64().as_ref());
    assert!(
        server
            .metrics()
            .store_errors_total
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    for c in [ann, bob, carol] {
        c.close();
    }
    server.shutdown(std::time::Duration::from_secs(5));
}

#[test]
fn a_queue_too_small_for_one_message_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(
        dir.path(),
        &["--max-message", "1000000", "--outbox-bytes", "1048576"],
    );
    let e = syncws_chat::Server::start(&opts).err().expect("started");
    assert!(e.to_string().contains("--outbox-bytes"), "{e}");
}

/// A small, seeded PRNG (xorshift64*): the abuse is random, and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len() as u64) as usize]
    }
    fn text(&mut self, max: usize) -> String {
        let len = self.below(max as u64 + 1) as usize;
        (0..len)
            .map(|_| match self.below(10) {
                0 => char::from_u32(self.below(0x20) as u32).unwrap(),
                1 => '"',
                2 => '\\',
                3 => 'é',
                4 => '\u{1F600}',
                _ => char::from(b'a' + self.below(26) as u8),
            })
            .collect()
    }
    /// A value for any field: sometimes the right type, often not.
    fn value(&mut self) -> Value {
        match self.below(9) {
            0 => Value::Null,
            1 => json!(self.below(1 << 40)),
            2 => json!(-1),
            3 => json!(u64::MAX),
            4 => json!(self.text(40)),
            5 => json!({"nested": [1, {"deep": "x"}]}),
            6 => json!(self.pick(&ROOMS)),
            7 => json!(self.text(3000)),
            _ => json!(true),
        }
    }
}

const ROOMS: [&str; 8] = ["lobby", "calm", "a", "b", "pair:1-1", "x y", "", "r:1"];
const OPS: [&str; 14] = [
    "hello", "join", "leave", "say", "history", "rooms", "who", "match", "next", "unmatch",
    "typing", "ping", "dance", "",
];

/// One random frame, valid or not.
fn abuse_frame(rng: &mut Rng) -> String {
    match rng.below(12) {
        // Not JSON at all: plain text to the current room (of any length and content), or
        // broken JSON.
        0 => rng.text(200),
        1 => format!("{{\"op\":\"say\",\"room\":{}", rng.text(20)),
        2 => "{".repeat(rng.below(200) as usize + 1),
        _ => {
            let mut op = serde_json::Map::new();
            op.insert("op".into(), json!(rng.pick(&OPS)));
            for field in [
                "room", "text", "nick", "since", "epoch", "before", "limit", "cid", "extra",
            ] {
                if rng.below(3) == 0 {
                    op.insert(field.into(), rng.value());
                }
            }
            // Often well-formed enough to reach the hub.
            if rng.below(2) == 0 {
                op.insert("room".into(), json!(rng.pick(&ROOMS)));
                op.insert("text".into(), json!(rng.text(100)));
            }
            Value::Object(op).to_string()
        }
    }
}

/// Clients sending random valid and invalid frames, binary frames and raw bytes against a live
/// server for a bounded time, while two well-behaved clients chat: afterwards the server is
/// up, nothing panicked, its memory stayed bounded, and the well-behaved clients got every
/// message, in order, once.
#[cfg(target_os = "linux")]
#[test]
fn random_abuse_leaves_the_server_up_bounded_and_the_others_served() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("abuse seed: {seed}");
    let (_keep, dir) = data_dir();
    let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let server = Binary::start_with_stderr(&dir, &[], stderr);
    let addr: std::net::SocketAddr = server
        .url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(4);

    let mut abusers = Vec::new();
    for n in 0..4u64 {
        let url = server.url.clone();
        abusers.push(std::thread::spawn(move || {
            let mut rng = Rng(seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
            let mut frames = 0u64;
            while std::time::Instant::now() < until {
                let Ok(client) = syncws::ThreadedClient::connect(&url, &Config::default()) else {
                    continue;
                };
                // Each connection sends a burst, reading whatever comes, until it is closed
                // or the burst ends.
                for _ in 0..rng.below(400) {
                    let sent = if rng.below(20) == 0 {
                        let len = rng.below(64) as usize;
                        client.control_tx.send_binary(vec![0u8; len])
                    } else {
                        client.control_tx.send_text(abuse_frame(&mut rng))
                    };
                    if sent.is_err() {
                        break;
                    }
                    frames += 1;
                    while client.event_rx.try_recv().is_ok() {}
                }
            }
            frames
        }));
    }
    // Raw sockets: random bytes before, in and after an upgrade.
    let raw = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut rng = Rng(seed ^ 0xdead_beef);
        while std::time::Instant::now() < until {
            let Ok(mut tcp) = std::net::TcpStream::connect(addr) else {
                continue;
            };
            let _ = tcp.set_read_timeout(Some(std::time::Duration::from_millis(50)));
            let junk: Vec<u8> = (0..rng.below(300)).map(|_| rng.below(256) as u8).collect();
            let request = match rng.below(3) {
                0 => junk,
                1 => [b"GET / HTTP/1.1\r\nHost: x\r\n".as_slice(), &junk].concat(),
                _ => [
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".as_slice(),
                    &junk,
                ]
                .concat(),
            };
            let _ = tcp.write_all(&request);
            let _ = tcp.read(&mut [0u8; 512]);
        }
    });

    // Meanwhile two clients chat in a room of their own and must get everything.
    let mut ann = Chat::connect(&format!("{}?nick=ann", server.url));
    let mut bob = Chat::connect(&format!("{}?nick=bob", server.url));
    ann.join("quiet-corner");
    bob.join("quiet-corner");
    let mut said = 0u64;
    while std::time::Instant::now() < until {
        said += 1;
        ann.send(
            json!({"op": "say", "room": "quiet-corner", "text": format!("m{said}"), "cid": said}),
        );
        assert_eq!(ann.msg("quiet-corner")["cid"], said);
    }
    let frames: u64 = abusers.into_iter().map(|a| a.join().unwrap()).sum();
    raw.join().unwrap();
    for n in 1..=said {
        let m = bob.msg("quiet-corner");
        assert_eq!(
            (m["seq"].as_u64(), m["text"].as_str()),
            (Some(n), Some(format!("m{n}").as_str()))
        );
    }
    // Up and serving: a new client, through the hub.
    let mut late = Chat::connect(&server.url);
    late.send(json!({"op": "rooms"}));
    late.expect("rooms");
    let peak = peak_rss_kib(server.child.id());
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    eprintln!("abuse: {frames} random frames from 4 clients and raw sockets over 4 s; {said} messages between the others; server peak RSS {peak} KiB");
    assert!(!log.contains("panicked"), "a thread panicked:\n{log}");
    assert!(peak < 256 << 10, "peak RSS {peak} KiB");
    assert!(frames > 1000, "the abuse hardly ran: {frames} frames");
}
