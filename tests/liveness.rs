//! Heartbeats find dead peers; metrics count what a user would count.

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use syncws::{BlockingClient, Config, Error, Event, Initiator, ThreadedClient, TimeoutKind};
use tungstenite::Message;
use util::*;

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(300);

#[test]
fn a_half_open_peer_is_detected_within_interval_plus_timeout() {
    // The modes side by side: each waits out its own heartbeat.
    std::thread::scope(|s| {
        for mode in MODES {
            s.spawn(move || a_half_open_peer_is_detected_in(mode));
        }
    });
}

fn a_half_open_peer_is_detected_in(mode: Mode) {
    let (done_tx, done_rx) = bounded::<()>(1);
    // Accepts, then goes silent without closing TCP: reads nothing, answers nothing.
    let (url, server) = ws_server(move |ws| {
        let _ = done_rx.recv_timeout(TEST_DEADLINE);
        drop(ws);
    });
    let started = Instant::now();
    let mut activated = None;
    let (times_tx, times_rx) = bounded(1);
    let out = drive(
        mode,
        &url,
        Config::builder()
            .ping_interval(Some(INTERVAL))
            .pong_timeout(TIMEOUT),
        Box::new(move |rec, _| match rec {
            Rec::Activated(_) => activated = Some(Instant::now()),
            Rec::Error(_) => {
                let _ = times_tx.try_send((activated, Instant::now()));
            }
            _ => {}
        }),
    );
    let elapsed = started.elapsed();
    done_tx.send(()).unwrap();
    server.join().unwrap();
    assert!(
        matches!(out.errors.as_slice(), [Error::Timeout(TimeoutKind::Pong)]),
        "{mode:?}: {:?}",
        out.recs
    );
    assert_eq!(
        out.errors[0].to_string(),
        "heartbeat pong timed out",
        "the error says it was the pong"
    );
    // Not before the peer had its chance (the heartbeat starts with the connection, so this
    // is measured from before connecting)...
    assert!(elapsed >= INTERVAL + TIMEOUT, "{mode:?}: {elapsed:?}");
    // ...and then within interval + timeout, plus scheduling, once open.
    let (activated, failed) = times_rx.try_recv().expect("activated, then the error");
    let found = failed - activated.expect("activated first");
    assert!(
        found < INTERVAL + TIMEOUT + Duration::from_secs(2),
        "{mode:?}: {found:?}"
    );
}

/// Heartbeat settings for a live peer: a pong timeout far shorter than the test.
const PING_EVERY: Duration = Duration::from_millis(50);
const PONG_WITHIN: Duration = Duration::from_millis(250);
/// How long the live peer's connection must last: twice interval + timeout, so a heartbeat
/// that did not take the pongs as life would have ended it with `Timeout(Pong)` first.
const LIVE_FOR: Duration = Duration::from_millis(2 * (50 + 250));

#[test]
fn a_quiet_but_live_peer_keeps_the_connection_and_gives_an_rtt() {
    std::thread::scope(|s| {
        for mode in MODES {
            s.spawn(move || a_quiet_but_live_peer_in(mode));
        }
    });
}

fn a_quiet_but_live_peer_in(mode: Mode) {
    // Reads (tungstenite answers pings) but never sends anything of its own.
    let (url, server) = ws_server(|mut ws| {
        let mut pings = 0;
        loop {
            match ws.read() {
                Ok(Message::Ping(p)) => {
                    assert_eq!(p.as_ref(), b"hb");
                    pings += 1;
                }
                Ok(Message::Close(_)) => {
                    let _ = ws.flush();
                }
                Ok(_) => {}
                Err(_) => return pings,
            }
        }
    });
    let pongs = Arc::new(AtomicUsize::new(0));
    let p = pongs.clone();
    let mut opened = None;
    let out = drive(
        mode,
        &url,
        Config::builder()
            .ping_interval(Some(PING_EVERY))
            .pong_timeout(PONG_WITHIN)
            .ping_payload(b"hb"),
        Box::new(move |rec, act| match rec {
            Rec::Activated(_) => opened = Some(Instant::now()),
            Rec::Pong(payload) => {
                assert_eq!(payload, b"hb");
                p.fetch_add(1, Ordering::Relaxed);
                // Only the heartbeat keeps this connection: close once it has outlived
                // several pong timeouts.
                if opened.expect("open").elapsed() >= LIVE_FOR {
                    act.close(1000, "").unwrap();
                }
            }
            _ => {}
        }),
    );
    assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
    // It ended with our close (after LIVE_FOR), not with a pong timeout or the peer.
    let closed = out
        .closed()
        .unwrap_or_else(|| panic!("{mode:?}: {:?}", out.recs));
    assert_eq!(closed.initiator, Initiator::Local, "{mode:?}");
    assert_eq!(u16::from(closed.code), 1000, "{mode:?}");
    // Each pong answered one of our pings, and the last one gave a round-trip time: a pong
    // cannot take longer than the timeout (it would have ended the connection) nor nothing.
    let rtt = out
        .metrics
        .last_rtt
        .expect("an rtt from the heartbeat's pongs");
    assert!(
        rtt > Duration::ZERO && rtt < PONG_WITHIN,
        "{mode:?}: {rtt:?}"
    );
    let pings = server.join().unwrap();
    assert!(
        pongs.load(Ordering::Relaxed) <= pings,
        "{mode:?}: {pings} pings"
    );
}

#[test]
fn traffic_counts_as_life_so_a_busy_peer_is_not_pinged() {
    // The server streams a message every few ms for several intervals; with an interval much
    // longer than the gaps, no heartbeat ping is ever needed. A server thread that the machine
    // stalls for half an interval makes a gap where a ping would be fair: that run proves
    // nothing, so it is run again.
    const INTERVAL: Duration = Duration::from_millis(150);
    for _ in 0..3 {
        let (url, server) = ws_server(|mut ws| {
            let mut last = Instant::now();
            let mut widest = Duration::ZERO;
            for i in 0..100 {
                ws.send(Message::text(i.to_string())).unwrap();
                widest = widest.max(last.elapsed());
                last = Instant::now();
                std::thread::sleep(Duration::from_millis(3));
            }
            let mut pings = 0;
            loop {
                match ws.read() {
                    Ok(Message::Ping(_)) => pings += 1,
                    Ok(Message::Close(_)) => {
                        let _ = ws.flush();
                    }
                    Ok(_) => {}
                    Err(_) => return (pings, widest),
                }
            }
        });
        let out = drive(
            Mode::Blocking,
            &url,
            Config::builder().ping_interval(Some(INTERVAL)),
            Box::new(|rec, act| {
                if *rec == Rec::Text("99".into()) {
                    act.close(1000, "").unwrap();
                }
            }),
        );
        assert_eq!(out.texts().len(), 100);
        let (pings, widest) = server.join().unwrap();
        if widest < INTERVAL / 2 {
            assert_eq!(pings, 0, "no ping while traffic flows");
            return;
        }
        println!("the server stalled for {widest:?}: again");
    }
    panic!("the server stalled in every run: the test could not judge");
}

#[test]
fn metrics_count_messages_bytes_and_round_trips() {
    let (url, server) = ws_server(echo);
    let client = BlockingClient::connect(&url, &Config::default()).unwrap();
    let metrics = client.metrics();
    struct Run;
    impl syncws::Handler for Run {
        fn on_activated(&mut self, ctx: &mut syncws::Context<'_>) {
            for i in 0..10 {
                ctx.send_text(&"x".repeat(i)).unwrap();
            }
            ctx.send_binary(&[1, 2, 3]).unwrap();
            ctx.send_ping(b"rtt").unwrap();
        }
        fn on_binary_message(&mut self, ctx: &mut syncws::Context<'_>, _: &[u8]) {
            assert_eq!(ctx.metrics().messages_received(), 11);
        }
        fn on_pong(&mut self, ctx: &mut syncws::Context<'_>, _: &[u8]) {
            ctx.close(1000, "").unwrap();
        }
    }
    within_deadline(move || client.run(&mut Run));
    assert_eq!(metrics.messages_sent(), 11);
    assert_eq!(metrics.bytes_sent(), 45 + 3);
    assert_eq!(metrics.messages_received(), 11);
    assert_eq!(metrics.bytes_received(), 45 + 3);
    assert!(metrics.last_rtt().is_some(), "measured from our ping");
    assert_eq!(server.join().unwrap(), 11);
}

#[test]
fn threaded_metrics_are_readable_while_the_worker_runs() {
    let (url, server) = ws_server(echo);
    let client = ThreadedClient::connect(&url, &Config::default()).unwrap();
    let metrics = client.metrics();
    for i in 0..100 {
        client.control_tx.send_text(format!("{i}")).unwrap();
    }
    let mut echoed = 0;
    for event in events(&client.event_rx) {
        if let Event::TextMessage(_) = event {
            echoed += 1;
            // Read from this (application) thread while the worker updates them.
            assert!(metrics.messages_received() >= echoed);
            if echoed == 100 {
                client.control_tx.close(1000, "").unwrap();
            }
        }
    }
    assert_eq!(metrics.messages_sent(), 100);
    assert_eq!(metrics.messages_received(), 100);
    assert_eq!(server.join().unwrap(), 100);
}
