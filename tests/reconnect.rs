//! Reconnect: a killed and restarted server is found again; the user can always stop it; sends
//! made meanwhile are refused or held, never dropped silently.

mod util;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};
use syncws::{Config, Error, Reconnect, WhileDisconnected};
use tungstenite::{Message, WebSocket};
use util::*;

fn fast() -> Reconnect {
    Reconnect::new()
        .min_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
}

/// A loopback port kept bound but not listening: connections to it are refused, and no other
/// socket can take it meanwhile (another test's listener, or an outgoing connection's local
/// port, which could even connect to itself), so a server can come back on it.
struct Port {
    _reserved: socket2::Socket,
    addr: SocketAddr,
}

impl Port {
    fn new() -> Self {
        let reserved = reusable_socket();
        reserved
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let addr = reserved.local_addr().unwrap().as_socket().unwrap();
        Port {
            _reserved: reserved,
            addr,
        }
    }

    /// A listener on the port (beside the reservation, which stays when it is dropped).
    fn listen(&self) -> TcpListener {
        let socket = reusable_socket();
        socket.bind(&self.addr.into()).unwrap();
        socket.listen(128).unwrap();
        socket.into()
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

fn reusable_socket() -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket
}

/// A server that says "one" and dies (listener and connection gone: attempts are refused), then,
/// once told, comes back on the same port, says "two" and records what it receives.
fn dying_server(restart: Receiver<()>) -> (String, JoinHandle<Vec<String>>) {
    dying_server_recording(restart, |m| m.into_text().unwrap().to_string())
}

/// [`dying_server`], recording each message it receives as `record` says.
fn dying_server_recording<T: Send + 'static>(
    restart: Receiver<()>,
    record: fn(Message) -> T,
) -> (String, JoinHandle<Vec<T>>) {
    let port = Port::new();
    let url = port.url();
    let listener = port.listen();
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        drop(listener);
        let mut ws = tungstenite::accept(tcp).unwrap();
        ws.send(Message::text("one")).unwrap();
        drop(ws); // killed: no close handshake
        restart.recv_timeout(TEST_DEADLINE).expect("restart signal");
        let listener = port.listen();
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
        let mut ws = tungstenite::accept(tcp).unwrap();
        ws.send(Message::text("two")).unwrap();
        let (got, _) = read_until_close(&mut ws);
        while ws.read().is_ok() {}
        got.into_iter().map(record).collect()
    });
    (url, handle)
}

/// A server whose first connection ends as `end` says, after which every attempt is refused
/// until the port is dropped (the thread returns it).
fn server_that_goes_away(end: fn(WebSocket<TcpStream>)) -> (String, JoinHandle<Port>) {
    let port = Port::new();
    let url = port.url();
    let listener = port.listen();
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        drop(listener);
        end(tungstenite::accept(tcp).unwrap());
        port
    });
    (url, handle)
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
        // Each attempt says how long it waits (the policy's doubling delay, less up to half
        // of it as jitter) and what failed last: the reset, then each refused attempt.
        for a in &out.attempts {
            let full = (Duration::from_millis(20) * 2u32.pow(a.attempt - 1))
                .min(Duration::from_millis(200));
            assert!(
                a.delay <= full && a.delay >= full / 2,
                "{mode:?}: attempt {}: {:?} for {full:?}",
                a.attempt,
                a.delay
            );
            let expected = if a.attempt == 1 {
                Error::ConnectionReset.to_string()
            } else {
                format!(
                    "connect to {}: ",
                    url.trim_start_matches("ws://").trim_end_matches('/')
                )
            };
            let last = a.last_error.as_deref().unwrap_or_default();
            assert!(
                last.starts_with(&expected),
                "{mode:?}: attempt {}: {:?}",
                a.attempt,
                a.last_error
            );
        }
        // One successful reconnection, counted.
        assert_eq!(out.metrics.reconnects, 1, "{mode:?}");
        assert!(sent_while_down.lock().unwrap().iter().all(Result::is_ok));
        assert_eq!(server.join().unwrap(), ["held 1", "held 2"], "{mode:?}");
    }
}

#[test]
fn each_attempt_reports_its_exact_delay_and_none_after_a_close_by_the_server() {
    for mode in MODES {
        // The server closes with a handshake ("going away"), then is gone.
        let (url, server) = server_that_goes_away(|mut ws| {
            ws.close(Some(tungstenite::protocol::CloseFrame {
                code: 1001.into(),
                reason: "restarting".into(),
            }))
            .unwrap();
            while ws.read().is_ok() {}
        });
        let out = drive(
            mode,
            &url,
            Config::builder().reconnect(Some(
                Reconnect::new()
                    .min_delay(Duration::from_millis(10))
                    .max_delay(Duration::from_millis(30))
                    .jitter(0.0)
                    .max_attempts(Some(3)),
            )),
            passive(),
        );
        let port = server.join().unwrap();
        // What the OS says to a connect to the (still reserved) port.
        let refused = format!(
            "connect to {}: {}",
            port.addr,
            TcpStream::connect(port.addr).unwrap_err()
        );
        let got: Vec<(u32, Duration, Option<String>)> = out
            .attempts
            .iter()
            .map(|a| (a.attempt, a.delay, a.last_error.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (1, Duration::from_millis(10), None),
                (2, Duration::from_millis(20), Some(refused.clone())),
                (3, Duration::from_millis(30), Some(refused)),
            ],
            "{mode:?}: doubling, capped, no jitter; nothing failed before the first"
        );
        assert_eq!(
            out.closed().map(|c| u16::from(c.code)),
            Some(1001),
            "{mode:?}"
        );
        assert_eq!(out.metrics.reconnects, 0, "{mode:?}: none succeeded");
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
        // Every attempt after the first connection is refused.
        let (url, server) = server_that_goes_away(drop);
        let out = drive(
            mode,
            &url,
            Config::builder()
                .reconnect(Some(fast().max_attempts(Some(3))))
                .while_disconnected(WhileDisconnected::Queue { max_bytes: 64 }),
            Box::new(|rec, act| {
                if let Rec::Reconnecting(1) = rec {
                    act.text("never delivered").unwrap();
                }
            }),
        );
        let _port = server.join().unwrap();
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
        assert_eq!(out.metrics.reconnects, 0, "{mode:?}");
    }
}

#[test]
fn sends_while_disconnected_are_refused_by_default() {
    for mode in MODES {
        // The connection dies and every attempt is refused: the client stays disconnected.
        let (url, server) = server_that_goes_away(drop);
        let results = Arc::new(Mutex::new(Vec::new()));
        let r = results.clone();
        let out = drive(
            mode,
            &url,
            Config::builder().reconnect(Some(fast())),
            Box::new(move |rec, act| match rec {
                Rec::Reconnecting(1) => {
                    let sent = act.text("refused");
                    let refused = sent.is_err();
                    r.lock().unwrap().push(sent);
                    if refused {
                        act.quit();
                    }
                }
                // A send the connection took in and could not carry out is reported.
                Rec::Error(e) if e == "Disconnected" => act.quit(),
                // Nothing came of it: stop, and let the checks below say so.
                Rec::Reconnecting(20) => act.quit(),
                _ => {}
            }),
        );
        let _port = server.join().unwrap();
        let results = results.lock().unwrap().clone();
        let reported = out
            .errors
            .iter()
            .filter(|e| matches!(e, Error::Disconnected))
            .count();
        if mode == Mode::Threaded {
            // A CommandSender cannot know: the send is accepted, then refused by the
            // connection and reported as an error event, once.
            assert_eq!(results, [Ok(())], "{mode:?}");
            assert_eq!(reported, 1, "{mode:?}: {:?}", out.recs);
        } else {
            // A hook's send is refused at once, with the error, and not reported again.
            assert_eq!(results, [Err(Error::Disconnected.to_string())], "{mode:?}");
            assert_eq!(reported, 0, "{mode:?}: {:?}", out.recs);
        }
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
    use syncws::{Event, ThreadedClient};
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
        .handshake_timeout(Some(Duration::from_secs(30)))
        .build()
        .unwrap();
    let client = ThreadedClient::connect(&format!("ws://{addr}/"), &config).unwrap();
    let events = client.event_rx.clone();
    // Wait until the worker is inside the reconnect attempt's upgrade.
    accepted_rx
        .recv_timeout(TEST_DEADLINE)
        .expect("reconnect attempt");
    // The attempt is a state of the worker's loop, so the stop ends it: the worker is joined,
    // long before the attempt's own timeout.
    let result = client.shutdown(PROMPTLY);
    assert!(result.is_ok(), "{result:?}");
    let rest: Vec<Event> = std::iter::from_fn(|| events.recv_timeout(TEST_DEADLINE).ok()).collect();
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
        let (url, server) = dying_server_recording(restart_rx, |m| m.into_data()[0] as usize);
        let out = drive(
            mode,
            &url,
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

/// A server whose first connection dies (so the client reconnects), and which then accepts TCP
/// and never answers: neither the TLS hello (`tls`) nor the upgrade request. `accepted` says
/// when the silent connection is in; the thread returns whether the client hung up on it.
fn server_that_falls_silent(tls: bool) -> (String, Receiver<()>, JoinHandle<bool>) {
    let (listener, addr) = bind();
    let (accepted_tx, accepted_rx) = bounded::<()>(1);
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        if tls {
            let acceptor = native_tls::TlsAcceptor::new(self_signed_identity()).unwrap();
            drop(tungstenite::accept(acceptor.accept(tcp).unwrap()).unwrap());
        } else {
            drop(tungstenite::accept(tcp).unwrap());
        }
        let (mut silent, _) = listener.accept().unwrap();
        silent.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
        accepted_tx.send(()).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut silent, &mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    });
    let scheme = if tls { "wss" } else { "ws" };
    (format!("{scheme}://{addr}/"), accepted_rx, handle)
}

/// Reconnecting to the silent server with a handshake timeout far longer than any test waits.
fn patient(builder: syncws::ConfigBuilder) -> syncws::ConfigBuilder {
    builder
        .reconnect(Some(fast()))
        .handshake_timeout(Some(Duration::from_secs(30)))
        .danger_accept_invalid_certs(true)
}

/// Well within the 30 s handshake timeout, without being a timing test.
const PROMPTLY: Duration = Duration::from_secs(10);

/// Records the reconnect attempts and says when `on_quit` ran.
struct QuitSignal(crossbeam_channel::Sender<()>);

impl syncws::Handler for QuitSignal {
    fn on_quit(&mut self) {
        let _ = self.0.send(());
    }
}

#[test]
fn a_close_or_force_quit_ends_a_reconnect_attempt_that_is_still_opening() {
    use syncws::{BlockingClient, CommandSender, Event, NonBlockingClient, ThreadedClient};
    for tls in [false, true] {
        for mode in MODES {
            for force in [true, false] {
                let what = format!("{mode:?} tls={tls} force_quit={force}");
                let (url, accepted, server) = server_that_falls_silent(tls);
                let strategy = match mode {
                    Mode::NonBlocking(s) => s,
                    _ => syncws::WaitStrategy::Readiness,
                };
                let config = patient(Config::builder().wait_strategy(strategy))
                    .build()
                    .unwrap();
                let stop = |handle: &CommandSender| {
                    if force {
                        handle.force_quit().unwrap();
                    } else {
                        handle.close(1000, "stop").unwrap();
                    }
                };
                let (quit_tx, quit_rx) = bounded::<()>(1);
                let threaded = match mode {
                    Mode::Threaded => Some(ThreadedClient::connect(&url, &config).unwrap()),
                    Mode::Blocking => {
                        let client = BlockingClient::connect(&url, &config).unwrap();
                        let handle = client.handle();
                        std::thread::spawn(move || client.run(&mut QuitSignal(quit_tx)));
                        accepted
                            .recv_timeout(TEST_DEADLINE)
                            .expect("reconnect attempt");
                        stop(&handle);
                        None
                    }
                    Mode::NonBlocking(_) => {
                        let client = NonBlockingClient::connect(&url, &config).unwrap();
                        let handle = client.handle();
                        std::thread::spawn(move || client.run(&mut QuitSignal(quit_tx)));
                        accepted
                            .recv_timeout(TEST_DEADLINE)
                            .expect("reconnect attempt");
                        stop(&handle);
                        None
                    }
                    Mode::Set => {
                        let mut set = syncws::ClientSet::new().unwrap();
                        let (_, handle) = set.add(&url, &config, QuitSignal(quit_tx)).unwrap();
                        std::thread::spawn(move || set.run());
                        accepted
                            .recv_timeout(TEST_DEADLINE)
                            .expect("reconnect attempt");
                        stop(&handle);
                        None
                    }
                };
                if let Some(client) = &threaded {
                    accepted
                        .recv_timeout(TEST_DEADLINE)
                        .expect("reconnect attempt");
                    stop(&client.control_tx);
                    loop {
                        match client.event_rx.recv_timeout(PROMPTLY) {
                            Ok(Event::Quit) => break,
                            Ok(_) => {}
                            Err(e) => panic!("{what}: no Quit: {e:?}"),
                        }
                    }
                } else {
                    quit_rx
                        .recv_timeout(PROMPTLY)
                        .unwrap_or_else(|e| panic!("{what}: no on_quit: {e:?}"));
                }
                assert!(
                    server.join().unwrap(),
                    "{what}: the attempt's socket was closed"
                );
            }
        }
    }
}

#[test]
fn dropping_a_threaded_client_ends_a_reconnect_attempt_that_is_still_opening() {
    use crossbeam_channel::RecvTimeoutError;
    use syncws::{Event, ThreadedClient};
    for tls in [false, true] {
        let (url, accepted, server) = server_that_falls_silent(tls);
        let config = patient(Config::builder()).build().unwrap();
        let client = ThreadedClient::connect(&url, &config).unwrap();
        let events = client.event_rx.clone();
        accepted
            .recv_timeout(TEST_DEADLINE)
            .expect("reconnect attempt");
        drop(client);
        // The worker is gone once the event channel disconnects.
        let mut seen = Vec::new();
        loop {
            match events.recv_timeout(PROMPTLY) {
                Ok(event) => seen.push(event),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("tls={tls}: the worker still runs"),
            }
        }
        assert!(
            seen.iter().any(|e| matches!(e, Event::Reconnecting(_))),
            "tls={tls}: {seen:?}"
        );
        assert!(
            server.join().unwrap(),
            "tls={tls}: the attempt's socket was closed"
        );
    }
}
