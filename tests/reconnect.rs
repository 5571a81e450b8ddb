//! Reconnect: a killed and restarted server is found again; the user can always stop it; sends
//! made meanwhile are refused or held, never dropped silently.

mod util;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};
use syncws::{Config, Error, Reconnect, WhileDisconnected};
use tungstenite::Message;
use util::*;

fn fast() -> Reconnect {
    Reconnect::new()
        .min_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
}

/// A server that says "one" and dies (listener and connection gone: attempts are refused), then,
/// once told, comes back on the same port, says "two" and records what it receives.
fn dying_server(restart: Receiver<()>) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        drop(listener);
        let mut ws = tungstenite::accept(tcp).unwrap();
        ws.send(Message::text("one")).unwrap();
        drop(ws); // killed: no close handshake
        restart.recv_timeout(TEST_DEADLINE).expect("restart signal");
        // std sets SO_REUSEADDR, so the port can be bound again at once.
        let listener = TcpListener::bind(addr).unwrap();
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
        let mut ws = tungstenite::accept(tcp).unwrap();
        ws.send(Message::text("two")).unwrap();
        let (got, _) = read_until_close(&mut ws);
        while ws.read().is_ok() {}
        got.into_iter()
            .map(|m| m.into_text().unwrap().to_string())
            .collect()
    });
    (format!("ws://{addr}/"), handle)
}

#[test]
fn a_killed_and_restarted_server_is_reconnected_to_and_held_sends_arrive() {
    for mode in MODES {
        let (restart_tx, restart_rx) = bounded(1);
        let (url, server) = dying_server(restart_rx);
        let sent_while_down = Arc::new(Mutex::new(Vec::new()));
        let s = sent_while_down.clone();
        let out = drive(
            mode,
            &url,
            Config::builder()
                .reconnect(Some(fast()))
                .while_disconnected(WhileDisconnected::Queue { max_bytes: 1024 }),
            Box::new(move |rec, act| match rec {
                Rec::Reconnecting(1) => {
                    // Held while disconnected; delivered after the new on_activated.
                    s.lock().unwrap().push(act.text("held 1"));
                    s.lock().unwrap().push(act.text("held 2"));
                }
                // The first attempt was refused: bring the server back.
                Rec::Reconnecting(2) => {
                    let _ = restart_tx.try_send(());
                }
                Rec::Text(t) if t == "two" => act.close(1000, "").unwrap(),
                _ => {}
            }),
        );
        assert_eq!(out.texts(), ["one", "two"], "{mode:?}");
        let activations = out
            .recs
            .iter()
            .filter(|r| matches!(r, Rec::Activated(_)))
            .count();
        assert_eq!(activations, 2, "{mode:?}: on_activated again on success");
        assert!(
            matches!(out.errors.first(), Some(Error::ConnectionReset)),
            "{mode:?}: {:?}",
            out.recs
        );
        assert!(
            out.errors[1..]
                .iter()
                .all(|e| matches!(e, Error::Connect { .. })),
            "{mode:?}: refused attempts reported: {:?}",
            out.errors
        );
        let attempts: Vec<u32> = out
            .recs
            .iter()
            .filter_map(|r| match r {
                Rec::Reconnecting(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert_eq!(
            attempts,
            (1..=attempts.len() as u32).collect::<Vec<_>>(),
            "{mode:?}"
        );
        assert!(sent_while_down.lock().unwrap().iter().all(Result::is_ok));
        assert_eq!(server.join().unwrap(), ["held 1", "held 2"], "{mode:?}");
    }
}

/// A server that accepts and drops every connection, until told to stop.
fn always_dropping_server() -> (String, crossbeam_channel::Sender<()>, JoinHandle<usize>) {
    let (listener, addr) = bind();
    listener.set_nonblocking(false).unwrap();
    let (stop_tx, stop_rx) = bounded::<()>(1);
    let handle = std::thread::spawn(move || {
        let mut accepted = 0;
        for tcp in listener.incoming() {
            if stop_rx.try_recv().is_ok() {
                return accepted;
            }
            if let Ok(tcp) = tcp {
                accepted += 1;
                let _ = tungstenite::accept(tcp);
            }
        }
        accepted
    });
    (format!("ws://{addr}/"), stop_tx, handle)
}

fn stop(url: &str, stop_tx: crossbeam_channel::Sender<()>, server: JoinHandle<usize>) -> usize {
    stop_tx.send(()).unwrap();
    // Wake the accept loop so it sees the signal.
    let _ = std::net::TcpStream::connect(url.trim_start_matches("ws://").trim_end_matches('/'));
    server.join().unwrap()
}

#[test]
fn a_user_close_stops_reconnecting_even_in_the_middle_of_a_backoff() {
    for mode in MODES {
        let (url, stop_tx, server) = always_dropping_server();
        let started = Instant::now();
        let out = drive(
            mode,
            &url,
            Config::builder().reconnect(Some(
                Reconnect::new()
                    .min_delay(Duration::from_secs(30))
                    .max_delay(Duration::from_secs(30)),
            )),
            Box::new(|rec, act| {
                if let Rec::Reconnecting(_) = rec {
                    act.close(1000, "stop").unwrap();
                }
            }),
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{mode:?}: did not wait out the 30 s backoff"
        );
        let attempts = out
            .recs
            .iter()
            .filter(|r| matches!(r, Rec::Reconnecting(_)))
            .count();
        assert_eq!(attempts, 1, "{mode:?}");
        assert_eq!(
            stop(&url, stop_tx, server),
            1,
            "{mode:?}: no second connection"
        );
    }
}

#[test]
fn reconnecting_gives_up_after_max_attempts_and_reports_lost_held_messages() {
    for mode in MODES {
        let (listener, addr) = bind();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            drop(listener); // every later attempt is refused
            drop(tungstenite::accept(tcp).unwrap());
        });
        let out = drive(
            mode,
            &format!("ws://{addr}/"),
            Config::builder()
                .reconnect(Some(fast().max_attempts(Some(3))))
                .while_disconnected(WhileDisconnected::Queue { max_bytes: 64 }),
            Box::new(|rec, act| {
                if let Rec::Reconnecting(1) = rec {
                    act.text("never delivered").unwrap();
                }
            }),
        );
        server.join().unwrap();
        let attempts: Vec<&Rec> = out
            .recs
            .iter()
            .filter(|r| matches!(r, Rec::Reconnecting(_)))
            .collect();
        assert_eq!(attempts.len(), 3, "{mode:?}");
        let refused = out
            .errors
            .iter()
            .filter(|e| matches!(e, Error::Connect { .. }))
            .count();
        assert_eq!(refused, 3, "{mode:?}: {:?}", out.errors);
        assert!(
            matches!(out.errors.last(), Some(Error::Disconnected)),
            "{mode:?}: the held message is reported lost: {:?}",
            out.errors
        );
    }
}

#[test]
fn sends_while_disconnected_are_refused_by_default() {
    for mode in MODES {
        let (url, stop_tx, server) = always_dropping_server();
        let results = Arc::new(Mutex::new(Vec::new()));
        let r = results.clone();
        let mut reconnects = 0;
        let out = drive(
            mode,
            &url,
            Config::builder().reconnect(Some(fast())),
            Box::new(move |rec, act| {
                // Every attempt succeeds and is dropped again, so count the notices.
                if let Rec::Reconnecting(_) = rec {
                    reconnects += 1;
                    if reconnects == 1 {
                        r.lock().unwrap().push(act.text("refused"));
                    } else {
                        act.quit();
                    }
                }
            }),
        );
        stop(&url, stop_tx, server);
        let refused_now = results.lock().unwrap().iter().any(|r| {
            r.as_ref()
                .is_err_and(|e| e.starts_with("disconnected (reconnecting)"))
        });
        let refused_later = out.errors.iter().any(|e| matches!(e, Error::Disconnected));
        assert!(
            refused_now || refused_later,
            "{mode:?}: a clear refusal: {:?}",
            out.recs
        );
    }
}

#[test]
fn an_error_that_retrying_cannot_fix_ends_reconnecting_at_once() {
    for mode in MODES {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            drop(tungstenite::accept(tcp).unwrap()); // the first connection dies
                                                     // Every attempt after it is refused with 401: the credentials will not get better.
            let (mut tcp, _) = listener.accept().unwrap();
            let mut request = [0u8; 2048];
            let _ = std::io::Read::read(&mut tcp, &mut request);
            std::io::Write::write_all(
                &mut tcp,
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n",
            )
            .unwrap();
        });
        let out = drive(
            mode,
            &format!("ws://{addr}/"),
            Config::builder().reconnect(Some(fast().max_attempts(None))),
            passive(),
        );
        server.join().unwrap();
        let attempts = out
            .recs
            .iter()
            .filter(|r| matches!(r, Rec::Reconnecting(_)))
            .count();
        assert_eq!(attempts, 1, "{mode:?}: {:?}", out.recs);
        assert!(
            out.errors
                .iter()
                .any(|e| e.to_string().contains("HTTP 401")),
            "{mode:?}: {:?}",
            out.errors
        );
    }
}

#[test]
fn shutdown_during_a_reconnect_attempt_is_bounded() {
    use syncws::{Event, ThreadedClient, TimeoutKind};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (release_tx, release_rx) = bounded::<()>(1);
    let (accepted_tx, accepted_rx) = bounded::<()>(1);
    let server = std::thread::spawn(move || {
        // The first connection dies, so the client reconnects...
        let (tcp, _) = listener.accept().unwrap();
        drop(tungstenite::accept(tcp).unwrap());
        // ...to a server that accepts TCP and never answers the upgrade.
        let (silent, _) = listener.accept().unwrap();
        accepted_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(TEST_DEADLINE);
        drop(silent);
    });
    let config = Config::builder()
        .reconnect(Some(fast()))
        .handshake_timeout(Some(Duration::from_secs(2)))
        .build()
        .unwrap();
    let client = ThreadedClient::connect(&format!("ws://{addr}/"), &config).unwrap();
    let events = client.event_rx.clone();
    // Wait until the worker is inside the reconnect attempt's (blocking) upgrade.
    accepted_rx
        .recv_timeout(TEST_DEADLINE)
        .expect("reconnect attempt");
    let started = Instant::now();
    let result = client.shutdown(Duration::from_millis(200));
    assert!(
        matches!(result, Err(Error::Timeout(TimeoutKind::Shutdown))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shutdown is bounded"
    );
    // The detached worker still ends by itself, within the handshake timeout.
    let ended = Instant::now();
    let rest: Vec<Event> = std::iter::from_fn(|| events.recv_timeout(TEST_DEADLINE).ok()).collect();
    assert!(
        ended.elapsed() < Duration::from_secs(5),
        "{:?}",
        ended.elapsed()
    );
    assert!(rest.iter().any(|e| matches!(e, Event::Reconnecting(_))));
    assert!(matches!(rest.last(), Some(Event::Quit)), "{rest:?}");
    release_tx.send(()).unwrap();
    server.join().unwrap();
}

/// More held messages than the new socket takes at once: they drain as it takes them, all of
/// them, before the Close, instead of meeting a full queue.
#[test]
fn held_messages_larger_than_the_queue_all_arrive_after_reconnecting() {
    const HELD: usize = 40;
    const SIZE: usize = 32 << 10;
    for mode in MODES {
        let (restart_tx, restart_rx) = bounded(1);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            drop(listener);
            drop(tungstenite::accept(tcp).unwrap()); // killed: no close handshake
            restart_rx
                .recv_timeout(TEST_DEADLINE)
                .expect("restart signal");
            let listener = TcpListener::bind(addr).unwrap();
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
            let mut ws = tungstenite::accept(tcp).unwrap();
            ws.send(Message::text("two")).unwrap();
            let (got, _) = read_until_close(&mut ws);
            while ws.read().is_ok() {}
            got.into_iter()
                .map(|m| m.into_data()[0] as usize)
                .collect::<Vec<_>>()
        });
        let out = drive(
            mode,
            &format!("ws://{addr}/"),
            Config::builder()
                .reconnect(Some(fast()))
                .while_disconnected(WhileDisconnected::Queue { max_bytes: 4 << 20 })
                .send_buffer_size(Some(64 << 10))
                .write_buffer_size(16 << 10)
                .max_queued_bytes(64 << 10),
            Box::new(move |rec, act| match rec {
                Rec::Reconnecting(1) => {
                    for i in 0..HELD {
                        act.binary(&vec![i as u8; SIZE]).unwrap();
                    }
                }
                Rec::Reconnecting(2) => {
                    let _ = restart_tx.try_send(());
                }
                Rec::Text(t) if t == "two" => act.close(1000, "").unwrap(),
                _ => {}
            }),
        );
        let lost: Vec<_> = out
            .errors
            .iter()
            .filter(|e| !matches!(e, Error::ConnectionReset | Error::Connect { .. }))
            .collect();
        assert!(lost.is_empty(), "{mode:?}: {lost:?}");
        assert_eq!(
            server.join().unwrap(),
            (0..HELD).collect::<Vec<_>>(),
            "{mode:?}: every held message, in order, before the Close"
        );
    }
}
