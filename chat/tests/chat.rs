//! The chat server end to end: real sockets on 127.0.0.1, the library's own clients.

mod util;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use syncws::Config;
use tungstenite::Message;
use util::*;

fn seqs(msgs: &Value) -> Vec<u64> {
    msgs.as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn every_member_gets_every_message_once_in_one_order_the_sender_included() {
    let server = TestServer::start(&[]);
    let mut chats: Vec<Chat> = (0..3).map(|_| Chat::connect(&server.url)).collect();
    for c in &mut chats {
        c.join("r");
    }
    const EACH: usize = 50;
    for (i, c) in chats.iter().enumerate() {
        for n in 0..EACH {
            c.send(json!({"op": "say", "room": "r", "text": format!("{i}:{n}"), "cid": format!("c{i}-{n}")}));
        }
    }
    let mut orders = Vec::new();
    for (i, c) in chats.iter_mut().enumerate() {
        let mut order = Vec::new();
        let mut own = 0;
        for expected_seq in 1..=(3 * EACH as u64) {
            let m = c.msg("r");
            assert_eq!(m["seq"], expected_seq, "gap-free, increasing by one");
            if m["text"].as_str().unwrap().starts_with(&format!("{i}:")) {
                // The sender's copy is its acknowledgement, with its cid.
                assert_eq!(m["cid"], format!("c{i}-{own}"));
                own += 1;
            }
            order.push(m["text"].as_str().unwrap().to_owned());
        }
        assert_eq!(own, EACH);
        orders.push(order);
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "one total order");
    assert_eq!(server.metric("chat_deliveries_total"), 3 * 3 * EACH as u64);
}

#[test]
fn plain_text_is_a_say_and_bad_frames_get_an_error_and_the_connection_stays_open() {
    let server = TestServer::start(&[]);
    let mut c = Chat::connect(&server.url);
    c.send_raw("hello from websocat");
    let m = c.msg("lobby");
    assert_eq!(m["text"], "hello from websocat");
    assert_eq!(m["from"], c.welcome["nick"]);
    c.send_raw("{not json");
    assert_eq!(c.expect("error")["code"], "bad_json");
    c.send(json!({"op": "dance", "cid": 9}));
    let e = c.expect("error");
    assert_eq!(
        (e["code"].as_str(), &e["cid"]),
        (Some("unknown_op"), &json!(9))
    );
    c.send(json!({"op": "say", "room": "lobby"}));
    assert_eq!(c.expect("error")["code"], "bad_request");
    c.send(json!({"op": "say", "room": "elsewhere", "text": "x", "cid": 1}));
    let e = c.expect("error");
    assert_eq!(
        (e["code"].as_str(), &e["cid"]),
        (Some("not_member"), &json!(1))
    );
    c.send(json!({"op": "hello", "nick": "ann"}));
    assert_eq!(c.expect("welcome")["nick"], "ann");
    c.send(json!({"op": "hello", "nick": " "}));
    assert_eq!(c.expect("error")["code"], "bad_nick");
    // Or named from the start, in the URL.
    let named = Chat::connect(&format!("{}?nick=b%C3%A9a", server.url));
    assert_eq!(named.welcome["nick"], "béa");
    // The lobby holds everyone: its size, not its list (n^2 bytes over a connect storm).
    assert_eq!(named.lobby["members"], json!([]));
    assert_eq!(named.lobby["count"], 2);
    named.close();
    c.send(json!({"op": "ping"}));
    c.expect("pong");
    // béa's close completed on her side before her connection told the hub it ended: ask
    // until the hub has heard (an answer listing someone who left is not what is tested).
    let start = Instant::now();
    loop {
        c.send(json!({"op": "who", "room": "lobby"}));
        let members = c.expect("who")["members"].clone();
        if members == json!(["ann"]) {
            break;
        }
        assert_eq!(
            members,
            json!(["ann", "béa"]),
            "only ann, or béa not yet gone"
        );
        assert!(start.elapsed() < Duration::from_secs(10), "béa never left");
    }
    c.send(json!({"op": "rooms"}));
    assert_eq!(c.expect("rooms")["rooms"][0]["room"], "lobby");
    c.close();
}

#[test]
fn history_pages_backwards() {
    let server = TestServer::start(&[]);
    let mut c = Chat::connect(&server.url);
    for n in 1..=30 {
        c.send(json!({"op": "say", "room": "lobby", "text": format!("m{n}")}));
    }
    for _ in 0..30 {
        c.msg("lobby");
    }
    c.send(json!({"op": "history", "room": "lobby", "limit": 10}));
    let h = c.expect("history");
    assert_eq!(seqs(&h["msgs"]), (21..=30).collect::<Vec<_>>());
    assert_eq!(h["more"], true);
    c.send(json!({"op": "history", "room": "lobby", "before": 21, "limit": 10}));
    assert_eq!(
        seqs(&c.expect("history")["msgs"]),
        (11..=20).collect::<Vec<_>>()
    );
    c.send(json!({"op": "history", "room": "lobby", "before": 3}));
    let h = c.expect("history");
    assert_eq!((seqs(&h["msgs"]), &h["more"]), (vec![1, 2], &json!(false)));
    c.close();
}

#[test]
fn a_client_that_reconnects_with_since_gets_everything_it_missed() {
    let server = TestServer::start(&["--history-max", "10"]);
    let mut a = Chat::connect(&server.url);
    let mut b = Chat::connect(&server.url);
    a.join("r");
    let joined = b.join("r");
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    a.send(json!({"op": "say", "room": "r", "text": "before"}));
    let seen = b.msg("r")["seq"].as_u64().unwrap();
    b.close();
    for n in 0..5 {
        a.send(json!({"op": "say", "room": "r", "text": format!("missed {n}")}));
    }
    for _ in 0..5 {
        a.msg("r");
    }
    let mut b = Chat::connect(&server.url);
    b.send(json!({"op": "join", "room": "r", "since": seen, "epoch": epoch}));
    let joined = b.expect("joined");
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["seq"], seen + 5);
    let replay = b.expect("history");
    assert_eq!(replay["replay"], true);
    assert_eq!(
        seqs(&replay["msgs"]),
        ((seen + 1)..=(seen + 5)).collect::<Vec<_>>()
    );
    // Live messages follow the replay.
    a.send(json!({"op": "say", "room": "r", "text": "live"}));
    assert_eq!(b.msg("r")["seq"], seen + 6);

    // More missed than the room keeps: said so, and nothing partial is replayed.
    b.close();
    for n in 0..15 {
        a.send(json!({"op": "say", "room": "r", "text": format!("lost {n}")}));
    }
    for _ in 0..15 {
        a.msg("r");
    }
    let mut b = Chat::connect(&server.url);
    b.send(json!({"op": "join", "room": "r", "since": seen + 6, "epoch": epoch}));
    let joined = b.expect("joined");
    assert_eq!(joined["recovered"], false);
    assert_eq!(
        joined["first"],
        seen + 6 + 15 - 10 + 1,
        "the first seq still kept"
    );
    // Another store's epoch: not recovered either.
    b.send(json!({"op": "join", "room": "r", "since": seen + 20, "epoch": "0000"}));
    assert_eq!(b.expect("joined")["recovered"], false);
    // A barrier in the hub's order (a `pong` comes from the connection and may overtake).
    b.send(json!({"op": "who", "room": "r"}));
    b.expect("who");
    assert!(
        b.seen.iter().all(|v| v["ev"] != "history"),
        "no partial replay"
    );
    assert_eq!(server.metric("chat_recoveries_total"), 1);
    assert_eq!(server.metric("chat_recoveries_failed_total"), 2);
}

#[test]
fn kill_9_and_restart_keep_every_delivered_message_and_never_reuse_a_seq() {
    for flags in [&[][..], &["--durable"][..]] {
        kill_9_and_restart(flags);
    }
}

fn kill_9_and_restart(flags: &[&str]) {
    let (_keep, dir) = data_dir();
    let server = Binary::start(&dir, flags);
    let mut c = Chat::connect(&server.url);
    for n in 1..=20 {
        c.send(json!({"op": "say", "room": "lobby", "text": format!("m{n}")}));
    }
    let mut delivered = Vec::new();
    for _ in 0..20 {
        delivered.push(c.msg("lobby")["seq"].as_u64().unwrap());
    }
    server.kill_9();
    assert_eq!(c.closed(), None, "killed: no close frame");

    let server = Binary::start(&dir, flags);
    let mut c = Chat::connect(&server.url);
    c.send(json!({"op": "history", "room": "lobby", "limit": 100}));
    assert_eq!(seqs(&c.expect("history")["msgs"]), delivered);
    c.send(json!({"op": "say", "room": "lobby", "text": "after"}));
    assert_eq!(c.msg("lobby")["seq"], 21);
    // A graceful stop: SIGTERM, 1001 to every client, exit 0.
    let mut server = server;
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(c.closed(), Some(1001));
    assert!(server.child.wait().unwrap().success());
}

#[test]
fn strangers_are_matched_and_a_partner_leaving_requeues_the_other() {
    let server = TestServer::start(&[]);
    let mut a = Chat::connect(&server.url);
    let mut b = Chat::connect(&server.url);
    let mut c = Chat::connect(&server.url);
    a.send(json!({"op": "hello", "nick": "ann"}));
    b.send(json!({"op": "hello", "nick": "bob"}));
    c.send(json!({"op": "hello", "nick": "cy"}));
    for x in [&mut a, &mut b, &mut c] {
        x.expect("welcome");
    }
    a.send(json!({"op": "match"}));
    assert_eq!(a.expect("queued")["pos"], 1);
    b.send(json!({"op": "match"}));
    let ma = a.expect("matched");
    let mb = b.expect("matched");
    // Positions told while waiting are history now.
    a.seen.clear();
    b.seen.clear();
    assert_eq!(
        (ma["peer"].as_str(), mb["peer"].as_str()),
        (Some("bob"), Some("ann"))
    );
    let room = ma["room"].as_str().unwrap().to_owned();
    assert_eq!(mb["room"], room);
    a.send(json!({"op": "typing", "room": room}));
    assert_eq!(b.expect("typing")["nick"], "ann");
    a.send(json!({"op": "say", "room": room, "text": "hi stranger"}));
    assert_eq!(b.msg(&room)["text"], "hi stranger");
    // Ann's own copy comes through the hub after anything the typing made for her.
    assert_eq!(a.msg(&room)["text"], "hi stranger");
    assert!(
        a.seen.iter().all(|v| v["ev"] != "typing"),
        "echoed to the typist: {:?}",
        a.seen
    );
    // Nobody else can join a pair room.
    c.send(json!({"op": "join", "room": room}));
    assert_eq!(c.expect("error")["code"], "private_room");

    a.close();
    assert_eq!(b.expect("peer_left")["room"], room);
    assert_eq!(b.expect("queued")["pos"], 1, "back in the queue");
    b.send(json!({"op": "say", "room": room, "text": "still there?", "cid": 5}));
    let e = b.expect("error");
    assert_eq!(
        (e["code"].as_str(), &e["cid"]),
        (Some("peer_left"), &json!(5))
    );
    c.send(json!({"op": "match"}));
    assert_eq!(c.expect("matched")["peer"], "bob");
    assert_eq!(b.expect("matched")["peer"], "cy");
    // `next` leaves the pair and queues again, and the two are not matched with each other
    // again at once; `unmatch` leaves the queue.
    b.send(json!({"op": "next"}));
    c.expect("peer_left");
    c.send(json!({"op": "unmatch"}));
    c.expect("unmatched");
    assert!(c.seen.iter().all(|v| v["ev"] != "matched"));
    assert_eq!(server.metric("chat_matches_total"), 2);
}

#[test]
fn a_partner_left_alone_is_matched_at_once_with_a_stranger_already_waiting() {
    let server = TestServer::start(&[]);
    let mut a = Chat::connect(&format!("{}?nick=ann", server.url));
    let mut b = Chat::connect(&format!("{}?nick=bob", server.url));
    let mut c = Chat::connect(&format!("{}?nick=cy", server.url));
    a.send(json!({"op": "match"}));
    a.expect("queued");
    b.send(json!({"op": "match"}));
    assert_eq!(b.expect("matched")["peer"], "ann");
    a.expect("matched");
    c.send(json!({"op": "match"}));
    assert_eq!(c.expect("queued")["pos"], 1);
    // Ann goes: Bob is put back in the queue behind Cy, and the two are paired then, not at
    // the next `match` someone else happens to send.
    a.close();
    b.expect("peer_left");
    assert_eq!(b.expect("matched")["peer"], "cy");
    assert_eq!(c.expect("matched")["peer"], "bob");
    // An ended pair's room is not kept: the lobby and the one live pair.
    assert_eq!(server.metric("chat_rooms"), 2);
    b.send(json!({"op": "next"}));
    c.expect("peer_left");
    b.expect("queued");
    assert_eq!(server.metric("chat_rooms"), 1, "only the lobby");
}

/// A raw client: upgraded, joined to `room`, then it never reads again.
fn stalled_client(url: &str, room: &str) -> tungstenite::WebSocket<TcpStream> {
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let (mut ws, _) = tungstenite::client(url, tcp).unwrap();
    ws.send(Message::text(
        json!({"op": "join", "room": room}).to_string(),
    ))
    .unwrap();
    loop {
        let m = ws.read().unwrap();
        if m.to_text().unwrap().contains("\"joined\"") && m.to_text().unwrap().contains(room) {
            return ws;
        }
    }
}

#[test]
fn a_slow_consumer_is_closed_with_4008_and_the_fast_ones_get_everything() {
    let server = TestServer::start(&["--outbox-bytes", "262144"]);
    // More than the socket buffers of the stalled client can absorb.
    const N: u64 = 2500;
    const WINDOW: u64 = 25;
    let mut sender = Chat::connect(&server.url);
    sender.join("busy");
    let mut fast: Vec<Chat> = (0..2).map(|_| Chat::connect(&server.url)).collect();
    for f in &mut fast {
        f.join("busy");
    }
    let mut slow = stalled_client(&server.url, "busy");
    // The stalled client reads again once it has been closed (before the server's write
    // timeout gives up on it): what was queued for it, then the Close.
    let (go, wake) = crossbeam_channel::bounded::<()>(1);
    let slow = std::thread::spawn(move || {
        wake.recv().unwrap();
        loop {
            match slow.read() {
                Ok(Message::Close(Some(f))) => return u16::from(f.code),
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    });
    // The fast ones read as fast as the messages come, each on its own thread.
    let readers: Vec<_> = fast
        .into_iter()
        .map(|mut f| {
            std::thread::spawn(move || {
                for seq in 1..=N {
                    assert_eq!(f.msg("busy")["seq"], seq);
                }
                f
            })
        })
        .collect();
    // The sender keeps a window of messages in flight, as a chat client does: its own copies
    // are its acknowledgements.
    let text = "x".repeat(4000);
    let mut woken = false;
    for _ in 0..N / WINDOW {
        for _ in 0..WINDOW {
            sender.send(json!({"op": "say", "room": "busy", "text": text}));
        }
        for _ in 0..WINDOW {
            sender.msg("busy");
        }
        if !woken && server.metric("chat_slow_consumer_closes_total") == 1 {
            go.send(()).unwrap();
            woken = true;
        }
    }
    assert!(woken, "the stalled client was not closed");
    for r in readers {
        r.join().unwrap().close();
    }
    assert_eq!(server.metric("chat_slow_consumer_closes_total"), 1);
    assert_eq!(slow.join().unwrap(), 4008);
}

#[test]
fn limits_size_rate_and_connections() {
    let server = TestServer::start(&[
        "--max-message",
        "1000",
        "--rate",
        "5",
        "--burst",
        "5",
        "--rate-abuse",
        "20",
        "--max-connections",
        "3",
    ]);
    // Size: 1009.
    let mut big = Chat::connect(&server.url);
    big.send_raw(&"y".repeat(2000));
    assert_eq!(big.closed(), Some(1009));
    // Rate: the excess is refused with its cid; sustained abuse closes with 1008.
    let mut fast = Chat::connect(&server.url);
    for n in 0..10 {
        fast.send(json!({"op": "say", "room": "lobby", "text": "spam", "cid": n}));
    }
    // The burst (5) goes through; the sixth is the first refused, with its cid, and refused
    // ones reach no one.
    let e = fast.expect("error");
    assert_eq!(
        (e["code"].as_str(), &e["cid"]),
        (Some("rate_limited"), &json!(5))
    );
    let mut delivered = Vec::new();
    while delivered.len() < 5 {
        delivered.push(fast.msg("lobby")["cid"].as_u64().unwrap());
    }
    assert_eq!(delivered, [0, 1, 2, 3, 4]);
    // Sustained abuse: the server closes with 1008 (sends may fail once it has).
    for _ in 0..100 {
        if !fast.try_send(json!({"op": "ping"})) {
            break;
        }
    }
    assert_eq!(fast.closed(), Some(1008));
    // Connections: the fourth is answered 503 with Retry-After before any upgrade. The two
    // closed connections give their slots back when their threads end, after their clients
    // saw the close.
    wait_until("the closed connections' slots back", || {
        server.metric("chat_connections") == 0
    });
    let _held: Vec<Chat> = (0..3).map(|_| Chat::connect(&server.url)).collect();
    let addr = server.url.trim_start_matches("ws://").trim_end_matches('/');
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        tcp,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: "), "{answer}");
    assert_eq!(server.metric("chat_too_big_closes_total"), 1);
    assert_eq!(server.metric("chat_rate_limit_closes_total"), 1);
    assert_eq!(server.metric("chat_connections_refused_total"), 1);
    // Each limit is a line in the event log.
    server.server.as_ref().unwrap().flush_log();
    let events = syncws_chat::eventlog::read(&server.dir.path().join("log")).unwrap();
    for kind in ["rate_limited", "rate_limit_close", "refused"] {
        assert!(events.iter().any(|e| e["kind"] == kind), "no {kind} line");
    }
    let too_big = events
        .iter()
        .find(|e| e["kind"] == "disconnect" && e["code"] == 1009)
        .expect("the too-big close is logged");
    assert_eq!(too_big["why"], "too_big");
}

#[test]
fn a_dead_peer_is_dropped_by_the_heartbeat_and_its_presence_removed() {
    let server = TestServer::start(&["--ping-interval", "1", "--pong-timeout", "1"]);
    let mut watcher = Chat::connect(&server.url);
    watcher.join("r");
    // Joined, then silent: never reads, so never answers a ping.
    let _dead = stalled_client(&server.url, "r");
    let mut presence_in_r = || loop {
        let p = watcher.expect("presence");
        if p["room"] == "r" {
            return p["state"].as_str().unwrap().to_owned();
        }
    };
    assert_eq!(presence_in_r(), "joined");
    assert_eq!(presence_in_r(), "left");
    assert_eq!(server.metric("chat_dead_peers_total"), 1);
}

#[test]
fn an_idle_client_is_closed() {
    let server = TestServer::start(&["--idle-timeout", "1"]);
    let mut c = Chat::connect(&server.url);
    assert_eq!(c.closed(), Some(1000));
    assert_eq!(server.metric("chat_idle_closes_total"), 1);
}

#[test]
fn shutdown_closes_everyone_with_1001_after_the_last_commit() {
    let mut server = TestServer::start(&[]);
    let mut c = Chat::connect(&server.url);
    for n in 0..100 {
        c.send(json!({"op": "say", "room": "lobby", "text": format!("m{n}")}));
    }
    for _ in 0..100 {
        c.msg("lobby");
    }
    let addr = server.server.as_ref().unwrap().ws_addr.unwrap();
    server.shutdown();
    assert_eq!(c.closed(), Some(1001));
    // It no longer accepts anything.
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after the shutdown"
    );
    // Every message delivered before the stop is in the store.
    let restarted = syncws_chat::Server::start(&options(server.dir.path(), &[])).unwrap();
    let mut c = Chat::connect(&format!("ws://{}/", restarted.ws_addr.unwrap()));
    c.send(json!({"op": "history", "room": "lobby", "limit": 200}));
    let h = c.expect("history");
    assert_eq!(seqs(&h["msgs"]), (1..=100).collect::<Vec<_>>());
    c.close();
    restarted.shutdown(Duration::from_secs(5));
}

#[test]
fn wss_with_the_generated_certificate_and_http_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), &[]);
    opts.tls_listen = "127.0.0.1:0".into();
    let server = syncws_chat::Server::start(&opts).unwrap();
    let files = server.tls_files.clone().unwrap();
    assert!(files.generated);
    let pem = std::fs::read(&files.cert).unwrap();
    let config = Config::builder()
        .root_certificate_pem(&pem)
        .build()
        .unwrap();
    let url = format!("wss://localhost:{}/", server.wss_addr.unwrap().port());
    let mut c = Chat::connect_with(&url, &config);
    c.send_raw("over tls");
    assert_eq!(c.msg("lobby")["text"], "over tls");
    c.close();
    // Plain HTTP on the ws port.
    let mut tcp = TcpStream::connect(server.ws_addr.unwrap()).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(metric_in(&answer, "chat_messages_total"), 1);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn the_event_log_records_connections_messages_and_limits() {
    // An idle close, on a server of its own (every client there is closed when quiet).
    let mut quiet = TestServer::start(&["--idle-timeout", "1"]);
    let mut idle = Chat::connect(&quiet.url);
    assert_eq!(idle.closed(), Some(1000));
    quiet.shutdown();
    let events = syncws_chat::eventlog::read(&quiet.dir.path().join("log")).unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "idle_close"),
        "no idle_close line"
    );

    let server = TestServer::start(&["--outbox-bytes", "262144"]);
    let mut c = Chat::connect(&server.url);
    c.send_raw("logged");
    c.msg("lobby");
    // A slow consumer: a client that never reads.
    let _stalled = stalled_client(&server.url, "lobby");
    let text = "z".repeat(60_000);
    while server.metric("chat_slow_consumer_closes_total") == 0 {
        c.send(json!({"op": "say", "room": "lobby", "text": text}));
        c.msg("lobby");
    }
    c.close();
    let mut server = server;
    server.shutdown();
    let events = syncws_chat::eventlog::read(&server.dir.path().join("log")).unwrap();
    let kinds: HashSet<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    for kind in [
        "start",
        "connect",
        "join",
        "msg",
        "slow_consumer",
        "disconnect",
        "stop",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    let msg = events.iter().find(|e| e["kind"] == "msg").unwrap();
    assert!(msg.get("text").is_none(), "sizes, not text");
    assert_eq!(msg["bytes"], 6);
}

#[test]
fn rooms_per_connection_are_bounded_and_unused_rooms_are_forgotten() {
    let server = TestServer::start(&["--max-rooms", "2"]);
    let mut c = Chat::connect(&server.url);
    c.join("a");
    c.send(json!({"op": "join", "room": "b"}));
    assert_eq!(c.expect("error")["code"], "too_many_rooms");
    c.send(json!({"op": "leave", "room": "a"}));
    assert_eq!(c.expect("presence")["state"], "left");
    c.join("b");
    c.send(json!({"op": "rooms"}));
    let rooms = c.expect("rooms");
    let names: Vec<&str> = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"a"),
        "a room nobody wrote to is gone once empty: {names:?}"
    );
    assert!(names.contains(&"b"));
    c.close();
}

/// The scheduling policy of every thread named `name` (or `name-N`) of process `pid` (Linux:
/// field 41 of /proc/PID/task/TID/stat; 0 normal, 3 batch).
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32, name: &str) -> Vec<u32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if comm != name && !comm.strip_prefix(name).is_some_and(|n| n.starts_with('-')) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Fields after the command name, which ends at the last ')', start at field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        policies.push(
            rest.split_whitespace()
                .nth(41 - 3)
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    policies
}

#[cfg(target_os = "linux")]
#[test]
fn connection_threads_run_as_batch_threads_unless_told_otherwise() {
    for (flags, policy) in [(&[][..], 3), (&["--no-batch-threads"][..], 0)] {
        let (_keep, dir) = data_dir();
        let server = Binary::start(&dir, flags);
        let a = Chat::connect(&server.url);
        let b = Chat::connect(&server.url);
        // Two connections: a thread each, or the event threads that run them all.
        let (name, threads) = match event_threads() {
            0 => ("chat-conn", 2),
            n => ("chat-events", n),
        };
        assert_eq!(
            thread_policies(server.child.id(), name),
            vec![policy; threads],
            "{flags:?}"
        );
        a.close();
        b.close();
        server.kill_9();
    }
}

#[test]
fn a_rename_is_announced_to_its_rooms_and_a_refused_join_names_its_room() {
    let server = TestServer::start(&[]);
    let mut a = Chat::connect(&server.url);
    let mut b = Chat::connect(&server.url);
    a.join("r");
    b.join("r");
    let old = a.welcome["nick"].as_str().unwrap().to_owned();
    a.send(json!({"op": "hello", "nick": "ann2"}));
    let renamed = loop {
        let p = b.expect("presence");
        if p["state"] == "renamed" {
            break p;
        }
    };
    assert_eq!(
        renamed,
        json!({"ev": "presence", "room": "r", "state": "renamed", "nick": "ann2", "old": old})
    );
    b.send(json!({"op": "who", "room": "r"}));
    let mut members: Vec<String> =
        serde_json::from_value(b.expect("who")["members"].clone()).unwrap();
    members.sort();
    assert!(
        members.contains(&"ann2".to_owned()) && !members.contains(&old),
        "{members:?}"
    );
    for (room, code) in [("bad room!", "bad_room"), ("pair:x", "private_room")] {
        a.send(json!({"op": "join", "room": room}));
        let e = a.expect("error");
        assert_eq!(
            (e["code"].as_str(), e["room"].as_str()),
            (Some(code), Some(room)),
            "{e}"
        );
    }
    a.close();
    b.close();
}

#[test]
fn rooms_nobody_is_in_leave_memory_and_come_back_with_their_seq() {
    let server = TestServer::start(&[]);
    let mut c = Chat::connect(&server.url);
    for n in 0..50 {
        let room = format!("r{n}");
        c.join(&room);
        c.send(json!({"op": "say", "room": room, "text": "once"}));
        c.msg(&room);
        c.send(json!({"op": "leave", "room": room}));
        c.expect("presence");
    }
    // Each sends its frames before the hub publishes the gauge: ask once more to be after.
    c.send(json!({"op": "rooms"}));
    c.expect("rooms");
    assert_eq!(server.metric("chat_rooms"), 1, "only the lobby is held");
    let joined = c.join("r7");
    assert_eq!(joined["seq"], 1, "loaded from the store");
    c.send(json!({"op": "say", "room": "r7", "text": "twice"}));
    assert_eq!(c.msg("r7")["seq"], 2, "its seq goes on, never reused");
    c.close();
}

#[test]
fn history_hours_ages_out_quiet_rooms_too() {
    let (_keep, dir) = data_dir();
    // A room written to once, two hours ago, and never since.
    {
        let mut store = syncws_chat::store::Store::open(
            &dir.join("chat.db"),
            syncws_chat::store::Retention {
                max_messages: 1000,
                max_age: Duration::from_secs(100 * 3600),
            },
            false,
        )
        .unwrap();
        let mut b = store.begin().unwrap();
        b.append(&syncws_chat::protocol::Msg {
            room: "quiet".into(),
            seq: 1,
            from: "ann".into(),
            text: "old".into(),
            ts: syncws_chat::now_ms() - 2 * 3600 * 1000,
            cid: None,
        })
        .unwrap();
        b.commit().unwrap();
    }
    let server = syncws_chat::Server::start(&options(&dir, &["--history-hours", "1"])).unwrap();
    let mut c = Chat::connect(&format!("ws://{}/", server.ws_addr.unwrap()));
    // The sweep visits every room within seconds; nobody writes to this one.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        c.send(json!({"op": "history", "room": "quiet"}));
        if c.expect("history")["msgs"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old message is still kept"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its seq is kept: the next message is 2.
    c.join("quiet");
    c.send(json!({"op": "say", "room": "quiet", "text": "new"}));
    assert_eq!(c.msg("quiet")["seq"], 2);
    c.close();
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_data_directory_of_the_first_store_layout_keeps_its_history_and_seqs() {
    let (_keep, dir) = data_dir();
    // chat.db as servers before the arrival-order layout wrote it: rooms by name, messages in
    // (room, seq) order; the lobby's 1 and 2 pruned, and everything of "quiet" aged out.
    let now = syncws_chat::now_ms();
    {
        let conn = rusqlite::Connection::open(dir.join("chat.db")).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE rooms (room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
             CREATE TABLE messages (
                 room TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
                 text TEXT NOT NULL, ts INTEGER NOT NULL, cid TEXT,
                 PRIMARY KEY (room, seq)) WITHOUT ROWID;
             INSERT INTO meta VALUES ('epoch', '0123456789abcdef');
             INSERT INTO rooms VALUES ('lobby', 4), ('quiet', 9);",
        )
        .unwrap();
        for (seq, text) in [(3, "three"), (4, "four")] {
            conn.execute(
                "INSERT INTO messages VALUES ('lobby', ?1, 'ann', ?2, ?3, NULL)",
                rusqlite::params![seq, text, now - 1000 + seq],
            )
            .unwrap();
        }
    }
    let server = Binary::start(&dir, &[]);
    let mut c = Chat::connect(&server.url);
    c.send(json!({"op": "history", "room": "lobby"}));
    let page = c.expect("history");
    assert_eq!(seqs(&page["msgs"]), [3, 4]);
    assert_eq!(page["msgs"][1]["text"], "four");
    // A member that saw seq 3 under the old store recovers what it missed.
    c.send(json!({"op": "join", "room": "lobby", "since": 3, "epoch": "0123456789abcdef"}));
    let joined = c.expect("joined");
    assert_eq!(
        (joined["recovered"].as_bool(), joined["seq"].as_u64()),
        (Some(true), Some(4))
    );
    assert_eq!(seqs(&c.expect("history")["msgs"]), [4]);
    c.send(json!({"op": "say", "room": "lobby", "text": "five"}));
    assert_eq!(c.msg("lobby")["seq"], 5);
    assert_eq!(
        c.join("quiet")["seq"],
        9,
        "a seq with no history left is kept too"
    );
    c.send(json!({"op": "say", "room": "quiet", "text": "ten"}));
    assert_eq!(c.msg("quiet")["seq"], 10);
    // Killed after the move, opened again: moved once, everything delivered still there.
    server.kill_9();
    let server = Binary::start(&dir, &[]);
    let mut c = Chat::connect(&server.url);
    c.send(json!({"op": "history", "room": "lobby"}));
    assert_eq!(seqs(&c.expect("history")["msgs"]), [3, 4, 5]);
    c.join("quiet");
    c.send(json!({"op": "say", "room": "quiet", "text": "eleven"}));
    assert_eq!(c.msg("quiet")["seq"], 11);
    c.close();
}

/// Threads of process `pid` named `name` or `name-N`.
#[cfg(target_os = "linux")]
fn threads_named(pid: u32, name: &str) -> usize {
    thread_policies(pid, name).len()
}

#[cfg(target_os = "linux")]
#[test]
fn event_threads_serve_every_connection_without_a_thread_each() {
    let (_keep, dir) = data_dir();
    let server = Binary::start(&dir, &["--event-threads", "2"]);
    let mut chats: Vec<Chat> = (0..20)
        .map(|n| Chat::connect(&format!("{}?nick=u{n}", server.url)))
        .collect();
    // The handshake threads hand their connection over and end; two threads run all twenty.
    let start = Instant::now();
    while threads_named(server.child.id(), "chat-conn") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "handshake threads left"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(threads_named(server.child.id(), "chat-events"), 2);
    // Everyone hears everyone, once, in one order.
    for (n, c) in chats.iter_mut().enumerate().take(3) {
        c.send(json!({"op": "say", "room": "lobby", "text": format!("from u{n}")}));
    }
    let mut orders = HashSet::new();
    for c in &mut chats {
        let got: Vec<String> = (0..3)
            .map(|_| c.msg("lobby")["text"].as_str().unwrap().to_owned())
            .collect();
        orders.insert(got);
    }
    assert_eq!(orders.len(), 1, "one order for everyone: {orders:?}");
    // A member that leaves is gone from the room for the others.
    chats.pop().unwrap().close();
    loop {
        chats[0].send(json!({"op": "who", "room": "lobby"}));
        if chats[0].expect("who")["count"] == 19 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the member never left"
        );
    }
    for c in chats {
        c.close();
    }
    server.kill_9();
}
