//! A slow resolver, as the front-ends see it: it holds up only the connection whose name it
//! is looking up, a stop ends that connection's attempt at once, and the pool bounds the
//! lookups that run. Real sockets on 127.0.0.1; the slow lookups are the test seam's
//! (`fake::answer`), which answer when the test lets them, so nothing sleeps.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::fake::{self, held as held_lookup, pool_to_myself};
use crate::{ClientSet, Config, Context, Error, Event, Handler, Reconnect, ThreadedClient};
use crate::{CloseInfo, TimeoutKind};

/// How long any wait of these tests may take before the test fails instead of hanging.
const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// A WebSocket echo server on 127.0.0.1 (plain tungstenite) for `connections` connections.
fn echo_server(connections: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let echoes: Vec<_> = (0..connections)
            .map(|_| {
                let (tcp, _) = listener.accept().unwrap();
                tcp.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
                std::thread::spawn(move || {
                    let mut ws = tungstenite::accept(tcp).unwrap();
                    // Until the client's Close has been answered and TCP ends.
                    while let Ok(m) = ws.read() {
                        if m.is_text() || m.is_binary() {
                            let _ = ws.send(m);
                        }
                    }
                })
            })
            .collect();
        for echo in echoes {
            echo.join().unwrap();
        }
    });
    (addr, server)
}

/// How a connection of a set went, told at `on_quit`.
#[derive(Debug)]
struct Outcome {
    echoed: bool,
    closed: Option<CloseInfo>,
    errors: Vec<Error>,
}

/// Sends one message, closes once it comes back, and reports at `on_quit`.
struct Ping {
    outcome: Option<Outcome>,
    done: Sender<Outcome>,
}

impl Ping {
    fn new(done: &Sender<Outcome>) -> Self {
        Ping {
            outcome: Some(Outcome {
                echoed: false,
                closed: None,
                errors: Vec::new(),
            }),
            done: done.clone(),
        }
    }

    fn outcome(&mut self) -> &mut Outcome {
        self.outcome.as_mut().expect("nothing after on_quit")
    }
}

impl Handler for Ping {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        ctx.send_text("ping").unwrap();
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        assert_eq!(text, "ping");
        self.outcome().echoed = true;
        ctx.close(1000, "done").unwrap();
    }
    fn on_connection_closed(&mut self, _ctx: &mut Context<'_>, close: &CloseInfo) {
        self.outcome().closed = Some(close.clone());
    }
    fn on_error(&mut self, _ctx: &mut Context<'_>, error: &Error) {
        // Errors are not Clone: keep what the assertions need.
        let kept = match error {
            Error::Timeout(kind) => Error::Timeout(*kind),
            other => Error::Io(std::io::Error::other(other.to_string())),
        };
        self.outcome().errors.push(kept);
    }
    fn on_quit(&mut self) {
        let outcome = self.outcome.take().expect("one on_quit");
        let _ = self.done.send(outcome);
    }
}

#[test]
fn a_slow_lookup_in_a_set_holds_up_only_its_own_connection() {
    let _pool = pool_to_myself();
    const FAST: usize = 100;
    let (_, release_timing_out) = held_lookup(&["slow-timeout.test"]);
    let (closing, release_closing) = held_lookup(&["slow-close.test"]);
    let (addr, server) = echo_server(FAST);
    let mut set = ClientSet::new().unwrap();
    // The slow ones first: a set that resolves on its own thread is stuck from its first pass.
    let (timeout_tx, timeout_rx) = crossbeam_channel::unbounded();
    let patient = Config::builder()
        .connect_timeout(Some(Duration::from_secs(2)))
        .build()
        .unwrap();
    set.add(
        &format!("ws://slow-timeout.test:{}/", addr.port()),
        &patient,
        Ping::new(&timeout_tx),
    )
    .unwrap();
    let (close_tx, close_rx) = crossbeam_channel::unbounded();
    let endless = Config::builder()
        .connect_timeout(None)
        .handshake_timeout(None)
        .build()
        .unwrap();
    let (_, slow_sender) = set
        .add(
            &format!("ws://slow-close.test:{}/", addr.port()),
            &endless,
            Ping::new(&close_tx),
        )
        .unwrap();
    let (fast_tx, fast_rx) = crossbeam_channel::unbounded();
    for _ in 0..FAST {
        set.add(
            &format!("ws://{addr}/"),
            &Config::default(),
            Ping::new(&fast_tx),
        )
        .unwrap();
    }
    let runner = std::thread::spawn(move || set.run());

    // Every fast connection opens, echoes and closes, while both slow lookups are held.
    for n in 0..FAST {
        let outcome = fast_rx
            .recv_timeout(TEST_DEADLINE)
            .unwrap_or_else(|_| panic!("only {n} of {FAST} connections by IP ended"));
        assert!(outcome.echoed, "{outcome:?}");
        assert!(outcome.errors.is_empty(), "{outcome:?}");
        assert_eq!(outcome.closed.map(|c| c.code), Some(1000.into()));
    }
    server.join().unwrap();
    // The held lookup did start (it holds its connection, nothing else). (The other one's may
    // not have, on a machine slow enough to let its connect_timeout pass first.)
    closing.recv_timeout(TEST_DEADLINE).unwrap();

    // Closed through its sender during the lookup: it ends at once, with nothing to report.
    slow_sender.close(1000, "never mind").unwrap();
    let closed = close_rx.recv_timeout(TEST_DEADLINE).unwrap();
    assert!(!closed.echoed && closed.errors.is_empty(), "{closed:?}");

    // The other one's lookup outlasts connect_timeout: a typed timeout, at its deadline.
    let timed_out = timeout_rx.recv_timeout(TEST_DEADLINE).unwrap();
    assert!(
        matches!(timed_out.errors[..], [Error::Timeout(TimeoutKind::Resolve)]),
        "{timed_out:?}"
    );
    runner.join().unwrap();
    // Only now do the lookups answer; their connections are long gone.
    drop((release_timing_out, release_closing));
}

#[test]
fn shutting_down_a_threaded_client_whose_reconnect_attempt_is_in_a_slow_lookup_is_prompt() {
    let _pool = pool_to_myself();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The first lookup answers at once; the reconnect attempt's is held.
    let (entered_tx, entered) = crossbeam_channel::unbounded();
    let (release, released) = crossbeam_channel::unbounded::<()>();
    let lookups = AtomicUsize::new(0);
    fake::answer("reconnect-slow.test", move |port| {
        if lookups.fetch_add(1, Ordering::SeqCst) == 0 {
            return Ok(vec![SocketAddr::new(addr.ip(), port)]);
        }
        let _ = entered_tx.send(());
        let _ = released.recv();
        Err(ErrorKind::TimedOut.into())
    });
    // The server takes the connection and drops it: the client starts reconnecting.
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        drop(tungstenite::accept(tcp).unwrap());
    });
    let config = Config::builder()
        .reconnect(Some(Reconnect::new().min_delay(Duration::from_millis(1))))
        .build()
        .unwrap();
    let client = ThreadedClient::connect(
        &format!("ws://reconnect-slow.test:{}/", addr.port()),
        &config,
    )
    .unwrap();
    server.join().unwrap();
    entered.recv_timeout(TEST_DEADLINE).unwrap();
    let events = client.event_rx.clone();
    // The worker is waiting for the lookup: the stop must reach it there.
    let shutdown = client.shutdown(TEST_DEADLINE / 2);
    assert!(shutdown.is_ok(), "{shutdown:?}");
    let seen: Vec<Event> = events.try_iter().collect();
    assert!(
        seen.iter().any(|e| matches!(e, Event::Reconnecting(_))),
        "{seen:?}"
    );
    drop(release);
}

#[test]
fn the_pool_runs_a_few_lookups_at_once_and_skips_those_nobody_waits_for() {
    let _pool = pool_to_myself();
    const MEMBERS: usize = 50;
    // A name each: lookups of one name would be one lookup.
    let names: Vec<String> = (0..MEMBERS).map(|n| format!("bound-{n}.test")).collect();
    let (entered, release) = held_lookup(&names);
    let mut set = ClientSet::new().unwrap();
    let handle = set.handle();
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let endless = Config::builder()
        .connect_timeout(None)
        .handshake_timeout(None)
        .build()
        .unwrap();
    for name in &names {
        set.add(&format!("ws://{name}:9/"), &endless, Ping::new(&done_tx))
            .unwrap();
    }
    let runner = std::thread::spawn(move || set.run());
    // As many lookups run at once as the pool has threads...
    for n in 0..super::POOL_SIZE {
        entered
            .recv_timeout(TEST_DEADLINE)
            .unwrap_or_else(|_| panic!("only {n} lookups at once"));
    }
    // ... and no more: the others wait for a thread until their connections end.
    handle.close_all(1000, "enough").unwrap();
    for _ in 0..MEMBERS {
        let outcome = done_rx.recv_timeout(TEST_DEADLINE).unwrap();
        assert!(outcome.errors.is_empty(), "{outcome:?}");
    }
    runner.join().unwrap();
    assert!(
        entered.try_recv().is_err(),
        "a lookup beyond the pool's threads ran"
    );
    // Every asker is gone: once the held lookups answer, the queued ones are skipped, not run.
    // Lookups asked for after them hold every thread only once the queue before them is
    // through, and by then no other lookup of `bound-N.test` may have run.
    drop(release);
    let through: Vec<String> = (0..super::POOL_SIZE)
        .map(|n| format!("through-{n}.test"))
        .collect();
    let (through_entered, release_through) = held_lookup(&through);
    let _after: Vec<_> = through
        .iter()
        .map(|name| super::lookup(name, 9, super::Wake::new(|| {})).unwrap())
        .collect();
    for _ in 0..super::POOL_SIZE {
        through_entered.recv_timeout(TEST_DEADLINE).unwrap();
    }
    assert!(
        entered.try_recv().is_err(),
        "a lookup nobody waited for ran"
    );
    drop(release_through);
}

#[test]
fn askers_of_one_name_share_its_lookup_and_each_gets_the_answer() {
    let _pool = pool_to_myself();
    const ASKERS: usize = 20;
    let (entered, release) = held_lookup(&["shared.test"]);
    let (woken_tx, woken) = crossbeam_channel::unbounded();
    let lookups: Vec<_> = (0..ASKERS)
        .map(|n| {
            let woken_tx = woken_tx.clone();
            let wake = super::Wake::new(move || woken_tx.send(n).unwrap());
            super::lookup("shared.test", 9, wake).unwrap()
        })
        .collect();
    entered.recv_timeout(TEST_DEADLINE).unwrap();
    // One answer for the one lookup: every asker wakes with it.
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    release.send(vec![addr]).unwrap();
    let mut seen: Vec<usize> = (0..ASKERS)
        .map(|_| woken.recv_timeout(TEST_DEADLINE).unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..ASKERS).collect::<Vec<_>>());
    for lookup in &lookups {
        assert_eq!(lookup.answer().unwrap().unwrap(), [addr]);
    }
    assert!(entered.try_recv().is_err(), "the name was looked up again");
}
