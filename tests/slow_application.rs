//! When the application is slower than the socket (a threaded client whose `event_rx` is
//! full), no deadline that measures the peer runs on the application's time: a live peer is
//! not declared dead, a graceful close answered at once loses nothing, and the worker sleeps.
//! And a close from a hook goes out even while other threads keep sending.

mod util;

use std::time::{Duration, Instant};

use syncws::{Config, Event, ThreadedClient};
use tungstenite::Message;
use util::*;

/// The application's own work: it does not read `event_rx` for this long.
const BUSY: Duration = Duration::from_millis(1500);

/// Every event of `client`, in order, until `Quit` (bounded by the test deadline).
fn all_events(client: &ThreadedClient) -> Vec<Event> {
    events(&client.event_rx).collect()
}

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::TextMessage(t) => Some(t.as_str().to_owned()),
            _ => None,
        })
        .collect()
}

fn errors(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Error(e) => Some(e.to_string()),
            _ => None,
        })
        .collect()
}

/// A peer that talks all the time and answers every ping is alive, however long the
/// application takes to read: the heartbeat must not call it dead (review scenario E: it did,
/// with 2 of 200 messages delivered).
#[test]
fn a_live_peer_is_not_taken_for_dead_while_the_application_is_behind() {
    const N: usize = 200;
    let (url, server) = ws_server(|mut ws| {
        for i in 0..N {
            ws.send(Message::text(format!("m{i}"))).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        // Answer pings (tungstenite does, as it reads) until the client closes.
        read_until_close(&mut ws)
    });
    let config = Config::builder()
        .event_capacity(1)
        .ping_interval(Some(Duration::from_millis(200)))
        .pong_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let client = ThreadedClient::connect(&url, &config).unwrap();
    std::thread::sleep(BUSY);
    let mut got = Vec::new();
    let deadline = Instant::now() + TEST_DEADLINE;
    while got.len() < N {
        match client.event_rx.recv_deadline(deadline).unwrap() {
            Event::TextMessage(t) => got.push(t.as_str().to_owned()),
            Event::Error(e) => panic!("after {} messages: {e}", got.len()),
            Event::Quit => panic!("ended after {} messages", got.len()),
            _ => {}
        }
    }
    assert_eq!(got, (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>());
    client.control_tx.close(1000, "done").unwrap();
    let rest = all_events(&client);
    assert!(errors(&rest).is_empty(), "{rest:?}");
    server.join().unwrap();
}

/// A graceful close the server answers at once, while the application is behind: every
/// message the server sent before its Close still reaches the application (review scenario I:
/// 1 of 50, then `Timeout(Close)`).
#[test]
fn a_graceful_close_loses_nothing_while_the_application_is_behind() {
    const N: usize = 50;
    let (url, server) = ws_server(|mut ws| {
        for i in 0..N {
            ws.send(Message::text(format!("m{i}"))).unwrap();
        }
        // Then answer the client's Close.
        read_until_close(&mut ws)
    });
    let config = Config::builder()
        .event_capacity(1)
        .close_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = ThreadedClient::connect(&url, &config).unwrap();
    client.control_tx.close(1000, "bye").unwrap();
    std::thread::sleep(BUSY);
    let events = all_events(&client);
    assert_eq!(
        texts(&events),
        (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert!(errors(&events).is_empty(), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::ConnectionClosed(c) if u16::from(c.code) == 1000)),
        "{events:?}"
    );
    server.join().unwrap();
}

/// A close from a hook while a send is held (the queue is full) and another thread keeps
/// sending: the gate closes at once (later sends are refused) and the Close frame is sent after
/// what was accepted before it (review scenario H: 244 sends accepted after the close, no
/// Close frame ever sent).
#[test]
fn a_hook_close_with_a_held_send_closes_the_gate_and_sends_the_close() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    // A server that reads slowly: 16 KiB messages, 5 ms each.
    let (url, server) = ws_server_small_rcvbuf(16 << 10, |mut ws| {
        let mut close = None;
        loop {
            match ws.read() {
                Ok(Message::Close(f)) => {
                    close = f.map(|f| u16::from(f.code));
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return close,
            }
        }
    });
    let closed = Arc::new(AtomicBool::new(false));
    let after_close = Arc::new(AtomicUsize::new(0));
    let (handle_tx, handle_rx) = crossbeam_channel::bounded(1);
    let producer = {
        let closed = closed.clone();
        let after_close = after_close.clone();
        std::thread::spawn(move || {
            let handle: syncws::CommandSender = handle_rx.recv().unwrap();
            let payload = vec![7u8; 16 << 10];
            loop {
                let was_closed = closed.load(Ordering::SeqCst);
                match handle.send_timeout(
                    syncws::Command::SendBinary(payload.clone().into()),
                    TEST_DEADLINE,
                ) {
                    Ok(()) if was_closed => {
                        after_close.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(()) => {}
                    Err(_) => return,
                }
            }
        })
    };
    struct Closer {
        closed: Arc<AtomicBool>,
        errors: Vec<String>,
    }
    impl syncws::Handler for Closer {
        fn on_idle(&mut self, ctx: &mut syncws::Context<'_>) {
            if !self.closed.swap(true, Ordering::SeqCst) {
                ctx.close(1000, "enough").unwrap();
            }
        }
        fn on_error(&mut self, _: &mut syncws::Context<'_>, e: &syncws::Error) {
            self.errors.push(e.to_string());
        }
    }
    let config = Config::builder()
        .max_queued_bytes(256 << 10)
        .read_timeout(Some(Duration::from_millis(300)))
        .close_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let client = syncws::BlockingClient::connect(&url, &config).unwrap();
    handle_tx.send(client.handle()).unwrap();
    let mut closer = Closer {
        closed,
        errors: Vec::new(),
    };
    client.run(&mut closer);
    producer.join().unwrap();
    assert_eq!(
        server.join().unwrap(),
        Some(1000),
        "the server saw our Close"
    );
    assert_eq!(
        after_close.load(Ordering::SeqCst),
        0,
        "sends accepted after the close"
    );
    assert!(
        !closer.errors.iter().any(|e| e.contains("timed out")),
        "{:?}",
        closer.errors
    );
}

/// Autobahn 3.2 and its kin: a valid message, then at once a bad frame. The application of a
/// threaded client answers the first on its own time; its answer must go out before the
/// connection fails (1002), as it does in the callback modes, where the hook answers before
/// the next frame is read. (Before, the threaded mode failed first: NON-STRICT in Autobahn.)
#[test]
fn the_applications_answers_to_what_it_was_given_go_out_before_a_failure() {
    use std::io::Write;
    for round in 0..20 {
        let (addr, server) = raw_server(|mut tcp| {
            let (_, mut ws) = accept_by_hand(tcp.try_clone().unwrap(), "");
            // "hello", then a text frame with RSV2 set (a protocol error), in one write.
            let mut bytes = vec![0x81, 5];
            bytes.extend_from_slice(b"hello");
            bytes.extend_from_slice(&[0xA1, 2, b'n', b'o']);
            tcp.write_all(&bytes).unwrap();
            let mut got = Vec::new();
            loop {
                match ws.read() {
                    Ok(Message::Text(t)) => got.push(format!("text {t}")),
                    Ok(Message::Close(f)) => {
                        got.push(format!("close {:?}", f.map(|f| u16::from(f.code))));
                        return got;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        got.push(format!("error {e}"));
                        return got;
                    }
                }
            }
        });
        let client = ThreadedClient::connect(&format!("ws://{addr}/"), &Config::default()).unwrap();
        for event in events(&client.event_rx) {
            if let Event::TextMessage(t) = event {
                // Echo, as Autobahn's testee does.
                let _ = client.control_tx.send_text(t);
            }
        }
        let got = server.join().unwrap();
        assert_eq!(
            got,
            ["text hello", "close Some(1002)"],
            "round {round}: the echo before the close"
        );
    }
}
