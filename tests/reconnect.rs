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
fn a_user_close_or_force_quit_stops_reconnecting_even_in_the_middle_of_a_backoff() {
    // From the hook that announces the attempt (the threaded client's application thread
    // acts through its command sender).
    for mode in MODES {
        for force in [false, true] {
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
                Box::new(move |rec, act| {
                    if let Rec::Reconnecting(_) = rec {
                        if force {
                            act.quit();
                        } else {
                            act.close(1000, "stop").unwrap();
                        }
                    }
                }),
            );
            // The backoff is 15-30 s: the client quit long before, and made no second
            // connection.
            assert!(
                started.elapsed() < PROMPTLY,
                "{mode:?} force_quit={force}: waited out the backoff"
            );
            let attempts = out
                .recs
                .iter()
                .filter(|r| matches!(r, Rec::Reconnecting(_)))
                .count();
            assert_eq!(attempts, 1, "{mode:?} force_quit={force}");
            assert!(
                out.attempts[0].delay >= Duration::from_secs(15),
                "{mode:?}: {:?}",
                out.attempts
            );
            assert_eq!(
                stop(&url, stop_tx, server),
                1,
                "{mode:?} force_quit={force}: no second connection"
            );
        }
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
            out.errors.last().is_some_and(|e| e
                .to_string()
                .contains("the connection ended with 1 accepted messages not yet sent")),
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

/// How a test stops a reconnecting client from another thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopBy {
    Close,
    ForceQuit,
    /// Dropping the client: a threaded client only (the others' `run` owns them).
    Drop,
}

/// The stops that apply to `mode`.
fn stops(mode: Mode) -> Vec<StopBy> {
    let mut all = vec![StopBy::Close, StopBy::ForceQuit];
    if mode == Mode::Threaded {
        all.push(StopBy::Drop);
    }
    all
}

/// Says which reconnect attempts are announced and when `on_quit` ran.
struct Signals {
    reconnecting: crossbeam_channel::Sender<u32>,
    quit: crossbeam_channel::Sender<()>,
}

impl syncws::Handler for Signals {
    fn on_reconnecting(&mut self, _: &mut syncws::Context<'_>, a: &syncws::ReconnectAttempt) {
        let _ = self.reconnecting.send(a.attempt);
    }
    fn on_quit(&mut self) {
        let _ = self.quit.send(());
    }
}

/// A client in `mode` running on threads of its own: the attempts it announces, when it quits,
/// and how to stop it.
struct Running {
    handle: syncws::CommandSender,
    reconnecting: Receiver<u32>,
    quit: Receiver<()>,
    threaded: Option<syncws::ThreadedClient>,
}

impl Running {
    fn start(mode: Mode, url: &str, builder: syncws::ConfigBuilder) -> Self {
        use syncws::{BlockingClient, Event, NonBlockingClient, ThreadedClient, WaitStrategy};
        let strategy = match mode {
            Mode::NonBlocking(s) => s,
            _ => WaitStrategy::Readiness,
        };
        let config = builder.wait_strategy(strategy).build().unwrap();
        let (reconnecting_tx, reconnecting) = bounded(64);
        let (quit_tx, quit) = bounded(1);
        let mut signals = Signals {
            reconnecting: reconnecting_tx,
            quit: quit_tx,
        };
        let (handle, threaded) = match mode {
            Mode::Blocking => {
                let client = BlockingClient::connect(url, &config).unwrap();
                let handle = client.handle();
                std::thread::spawn(move || client.run(&mut signals));
                (handle, None)
            }
            Mode::NonBlocking(_) => {
                let client = NonBlockingClient::connect(url, &config).unwrap();
                let handle = client.handle();
                std::thread::spawn(move || client.run(&mut signals));
                (handle, None)
            }
            Mode::Set => {
                let mut set = syncws::ClientSet::new().unwrap();
                let (_, handle) = set.add(url, &config, signals).unwrap();
                std::thread::spawn(move || set.run());
                (handle, None)
            }
            Mode::Threaded => {
                let client = ThreadedClient::connect(url, &config).unwrap();
                let events = client.event_rx.clone();
                // The application's loop: it ends when the worker's channel disconnects (the
                // test itself waits on `quit` with a deadline).
                std::thread::spawn(move || {
                    for event in events.iter() {
                        match event {
                            Event::Reconnecting(a) => {
                                let _ = signals.reconnecting.send(a.attempt);
                            }
                            Event::Quit => break,
                            _ => {}
                        }
                    }
                    let _ = signals.quit.send(());
                });
                (client.control_tx.clone(), Some(client))
            }
        };
        Running {
            handle,
            reconnecting,
            quit,
            threaded,
        }
    }

    fn stop(&mut self, by: StopBy) {
        match by {
            StopBy::Close => self.handle.close(1000, "stop").unwrap(),
            StopBy::ForceQuit => self.handle.force_quit().unwrap(),
            StopBy::Drop => drop(self.threaded.take().expect("a threaded client")),
        }
    }

    /// Wait for the announcement of attempt `n`.
    fn announces(&self, n: u32) {
        loop {
            match self.reconnecting.recv_timeout(TEST_DEADLINE) {
                Ok(a) if a == n => return,
                Ok(_) => {}
                Err(e) => panic!("no reconnect attempt {n}: {e:?}"),
            }
        }
    }

    /// Whether the client quit within [`PROMPTLY`].
    fn quits_promptly(&self) -> bool {
        self.quit.recv_timeout(PROMPTLY).is_ok()
    }
}

#[test]
fn a_close_or_force_quit_ends_a_reconnect_attempt_that_is_still_opening() {
    for tls in [false, true] {
        for mode in MODES {
            for by in [StopBy::ForceQuit, StopBy::Close] {
                let what = format!("{mode:?} tls={tls} {by:?}");
                let (url, accepted, server) = server_that_falls_silent(tls);
                let mut client = Running::start(mode, &url, patient(Config::builder()));
                accepted
                    .recv_timeout(TEST_DEADLINE)
                    .expect("reconnect attempt");
                client.stop(by);
                assert!(client.quits_promptly(), "{what}: did not quit");
                assert!(
                    server.join().unwrap(),
                    "{what}: the attempt's socket was closed"
                );
            }
        }
    }
}

#[test]
fn a_stop_from_another_thread_ends_a_backoff_wait() {
    for mode in MODES {
        for by in stops(mode) {
            let (url, stop_tx, server) = always_dropping_server();
            let mut client = Running::start(
                mode,
                &url,
                Config::builder().reconnect(Some(
                    Reconnect::new()
                        .min_delay(Duration::from_secs(30))
                        .max_delay(Duration::from_secs(30)),
                )),
            );
            // Announced before its delay: the client now waits out a backoff of 15-30 s.
            client.announces(1);
            client.stop(by);
            assert!(
                client.quits_promptly(),
                "{mode:?} {by:?}: waited out the backoff"
            );
            assert_eq!(
                stop(&url, stop_tx, server),
                1,
                "{mode:?} {by:?}: no second connection"
            );
        }
    }
}

/// The loopback sockets (any process's: the port is ours) in SYN_SENT towards `port`: TCP
/// connects still under way. Linux: /proc/net/tcp.
#[cfg(target_os = "linux")]
fn connects_pending_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && fields[3] == "02"
        })
        .count()
}

/// Poll `done` (a kernel table, which announces nothing) until it holds, within `limit`.
#[cfg(target_os = "linux")]
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while !done() {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// A server whose first connection dies once its listen queue is full, a queue nobody ever
/// serves: Linux drops a SYN to a full queue and the client retries it for minutes, so a
/// reconnect attempt's TCP connect stays pending. The thread returns the listener and the
/// connection filling the queue, to be kept until the test ends.
#[cfg(target_os = "linux")]
fn server_whose_queue_is_full() -> (SocketAddr, JoinHandle<(TcpListener, Vec<TcpStream>)>) {
    let socket = reusable_socket();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let ws = tungstenite::accept(tcp).unwrap();
        // Fill the queue: connect until a connect does not complete.
        let mut fillers = Vec::new();
        while let Ok(tcp) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(tcp);
            assert!(fillers.len() < 64, "the listen queue never filled");
        }
        drop(ws); // the connection dies: the client reconnects
        (listener, fillers)
    });
    (addr, handle)
}

#[cfg(target_os = "linux")]
#[test]
fn a_stop_ends_a_reconnect_attempt_whose_tcp_connect_is_pending() {
    // The modes side by side: filling each listen queue waits out one connect that cannot
    // complete.
    std::thread::scope(|s| {
        for mode in MODES {
            s.spawn(move || a_stop_ends_a_pending_tcp_connect_in(mode));
        }
    });
}

#[cfg(target_os = "linux")]
fn a_stop_ends_a_pending_tcp_connect_in(mode: Mode) {
    for by in stops(mode) {
        let what = format!("{mode:?} {by:?}");
        let (addr, server) = server_whose_queue_is_full();
        let mut client = Running::start(
            mode,
            &format!("ws://{addr}/"),
            Config::builder()
                .reconnect(Some(fast()))
                .connect_timeout(Some(Duration::from_secs(30))),
        );
        let _full = server.join().unwrap();
        client.announces(1);
        assert!(
            eventually(TEST_DEADLINE, || connects_pending_to(addr.port()) == 1),
            "{what}: the attempt's connect never started"
        );
        client.stop(by);
        // Long before the 30 s connect timeout (or the minutes of SYN retries).
        assert!(client.quits_promptly(), "{what}: did not quit");
        assert!(
            eventually(PROMPTLY, || connects_pending_to(addr.port()) == 0),
            "{what}: the attempt's socket is still connecting"
        );
        assert!(
            client.reconnecting.try_recv().is_err(),
            "{what}: no attempt after the stop"
        );
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

/// A server that upgrades each connection, keeps it `up` (then drops it), `serve` times, and
/// then stops listening (so later attempts are refused).
fn flapping_server(serve: usize, up: Duration) -> (String, JoinHandle<Port>) {
    let port = Port::new();
    let url = port.url();
    let listener = port.listen();
    let handle = std::thread::spawn(move || {
        for _ in 0..serve {
            let (tcp, _) = listener.accept().unwrap();
            let mut ws = tungstenite::accept(tcp).unwrap();
            // Pacing, not synchronisation: how long the connection stays up. The client
            // sends nothing, so this read only waits out `up`.
            if !up.is_zero() {
                ws.get_mut().set_read_timeout(Some(up)).unwrap();
                let _ = ws.read();
            }
        }
        drop(listener);
        port
    });
    (url, handle)
}

#[test]
fn a_server_that_drops_every_connection_at_once_gets_the_backoff_not_a_herd() {
    for mode in MODES {
        // Every connection is upgraded and dropped at once: each counts as a failed attempt, so
        // the delays go on doubling and max_attempts ends it.
        let (url, server) = flapping_server(3, Duration::ZERO);
        let out = drive(
            mode,
            &url,
            Config::builder().reconnect(Some(
                Reconnect::new()
                    .min_delay(Duration::from_millis(10))
                    .max_delay(Duration::from_millis(80))
                    .jitter(0.0)
                    .max_attempts(Some(4)),
            )),
            passive(),
        );
        drop(server.join().unwrap());
        let got: Vec<(u32, Duration)> = out.attempts.iter().map(|a| (a.attempt, a.delay)).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            got,
            [(1, ms(10)), (2, ms(20)), (3, ms(40)), (4, ms(80))],
            "{mode:?}: a connection that does not last does not reset the backoff"
        );
        assert_eq!(
            out.metrics.reconnects, 2,
            "{mode:?}: two reconnects succeeded"
        );
    }
}

#[test]
fn a_connection_that_lasts_min_uptime_starts_the_backoff_again() {
    for mode in MODES {
        // Each connection stays up longer than min_uptime: every outage starts from attempt 1,
        // until the server stops listening and attempts fail for real.
        let (url, server) = flapping_server(3, Duration::from_millis(150));
        let out = drive(
            mode,
            &url,
            Config::builder().reconnect(Some(
                Reconnect::new()
                    .min_delay(Duration::from_millis(10))
                    .max_delay(Duration::from_millis(80))
                    .jitter(0.0)
                    .max_attempts(Some(2))
                    .min_uptime(Duration::from_millis(50)),
            )),
            passive(),
        );
        drop(server.join().unwrap());
        let got: Vec<u32> = out.attempts.iter().map(|a| a.attempt).collect();
        assert_eq!(got, [1, 1, 1, 2], "{mode:?}");
        assert_eq!(out.metrics.reconnects, 2, "{mode:?}");
    }
}
