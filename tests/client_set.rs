//! The many-connections front-end with hundreds of connections at once, against servers
//! written with plain tungstenite (a thread per accepted connection). One connection in a set
//! also runs every all-modes test (`Mode::Set` in tests/util).

mod util;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use syncws::{
    ClientSet, CloseCode, CloseInfo, Command, Config, ConnId, Context, Error, Handler, Initiator,
};
use tungstenite::{Message, WebSocket};
use util::{SERVER_IO_TIMEOUT, TEST_DEADLINE};

/// Accept `n` connections, each on its own thread running `serve(index, ws)`; returns the URL
/// and a handle that yields what each one returned, in accept order.
fn many_server<R: Send + 'static>(
    n: usize,
    serve: impl Fn(usize, WebSocket<TcpStream>) -> R + Send + Sync + 'static,
) -> (String, JoinHandle<Vec<R>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    let handle = std::thread::spawn(move || {
        let mut threads = Vec::new();
        for index in 0..n {
            let (tcp, _) = listener.accept().expect("accept");
            tcp.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
            tcp.set_write_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
            let serve = serve.clone();
            threads.push(
                std::thread::Builder::new()
                    .stack_size(128 << 10)
                    .spawn(move || serve(index, tungstenite::accept(tcp).expect("handshake")))
                    .unwrap(),
            );
        }
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    (format!("ws://{addr}/"), handle)
}

/// Echo every data message until the client closes; returns the close code it sent.
fn echo_until_close(mut ws: WebSocket<TcpStream>) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).is_err() {
                    return None;
                }
            }
            Ok(Message::Close(frame)) => {
                let _ = ws.flush();
                return frame.map(|f| u16::from(f.code));
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// What one connection saw, sent back when it quits.
#[derive(Debug, Default)]
struct Seen {
    id: Option<ConnId>,
    activated: usize,
    texts: Vec<String>,
    closed: Option<CloseInfo>,
    errors: Vec<String>,
    threads: Vec<ThreadId>,
}

/// Sends `count` numbered messages, one at a time, each after the echo of the last; closes
/// with 1000 after the last echo. Reports what it saw on `done`.
struct PingPong {
    count: usize,
    seen: Seen,
    done: Sender<Seen>,
}

impl PingPong {
    fn new(count: usize, done: &Sender<Seen>) -> Self {
        PingPong {
            count,
            seen: Seen::default(),
            done: done.clone(),
        }
    }
    fn note(&mut self, ctx: &Context<'_>) {
        self.seen.id = ctx.id();
        let me = std::thread::current().id();
        if !self.seen.threads.contains(&me) {
            self.seen.threads.push(me);
        }
    }
}

impl Handler for PingPong {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        self.note(ctx);
        self.seen.activated += 1;
        if self.count == 0 {
            ctx.close(1000, "done").unwrap();
        } else {
            ctx.send_text(&format!("{} 0", ctx.id().unwrap())).unwrap();
        }
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        self.note(ctx);
        self.seen.texts.push(text.to_owned());
        let n = self.seen.texts.len();
        if n == self.count {
            ctx.close(1000, "done").unwrap();
        } else {
            ctx.send_text(&format!("{} {n}", ctx.id().unwrap()))
                .unwrap();
        }
    }
    fn on_connection_closed(&mut self, ctx: &mut Context<'_>, close: &CloseInfo) {
        self.note(ctx);
        self.seen.closed = Some(close.clone());
    }
    fn on_error(&mut self, ctx: &mut Context<'_>, error: &Error) {
        self.note(ctx);
        self.seen.errors.push(format!("{error:?}"));
    }
    fn on_quit(&mut self) {
        let _ = self.done.send(std::mem::take(&mut self.seen));
    }
}

/// Run `set` on its own thread; fails the test if it has not returned within the deadline.
fn run_set<H: Handler + Send + 'static>(mut set: ClientSet<H>) -> Receiver<ClientSet<H>> {
    let (tx, rx) = bounded(1);
    std::thread::spawn(move || {
        set.run();
        let _ = tx.send(set);
    });
    rx
}

fn finished<H: syncws::Handler>(ran: &Receiver<ClientSet<H>>) -> ClientSet<H> {
    ran.recv_timeout(TEST_DEADLINE)
        .expect("the set's run returned once every connection had quit")
}

fn collect(done: &Receiver<Seen>, n: usize) -> Vec<Seen> {
    let mut all: Vec<Seen> = (0..n)
        .map(|_| {
            done.recv_timeout(TEST_DEADLINE)
                .expect("on_quit of every connection")
        })
        .collect();
    all.sort_by_key(|s| s.id.map(ConnId::get));
    all
}

/// After the set's run returned: no connection quit a second time.
fn no_more(done: &Receiver<Seen>) {
    if let Ok(extra) = done.try_recv() {
        panic!("on_quit more than once: {extra:?}");
    }
}

fn check_clean(seen: &Seen, count: usize) {
    let id = seen.id.expect("hooks learn their connection's id");
    assert_eq!(seen.activated, 1, "{id}: {seen:?}");
    let expected: Vec<String> = (0..count).map(|i| format!("{id} {i}")).collect();
    assert_eq!(seen.texts, expected, "{id}: every echo once, in order");
    let closed = seen
        .closed
        .as_ref()
        .unwrap_or_else(|| panic!("{id}: {seen:?}"));
    assert_eq!(closed.code, CloseCode::Normal, "{id}");
    assert_eq!(closed.initiator, Initiator::Local, "{id}");
    assert!(seen.errors.is_empty(), "{id}: {:?}", seen.errors);
}

const MANY: usize = 300;

#[test]
fn hundreds_of_connections_exchange_and_close_on_one_thread() {
    let (url, server) = many_server(MANY, |_, ws| echo_until_close(ws));
    let (done, seen) = bounded(MANY);
    let mut set = ClientSet::new().unwrap();
    let mut ids = Vec::new();
    for _ in 0..MANY {
        ids.push(
            set.add(&url, &Config::default(), PingPong::new(20, &done))
                .unwrap()
                .0,
        );
    }
    assert_eq!(set.len(), MANY);
    let ids_in_order: Vec<u64> = ids.iter().map(|id| id.get()).collect();
    assert_eq!(ids_in_order, (0..MANY as u64).collect::<Vec<_>>());
    let set = finished(&run_set(set));
    assert!(set.is_empty());
    let all = collect(&seen, MANY);
    no_more(&seen);
    let mut threads: Vec<ThreadId> = all.iter().flat_map(|s| s.threads.clone()).collect();
    threads.dedup();
    assert_eq!(threads.len(), 1, "every hook ran on the set's one thread");
    for s in &all {
        check_clean(s, 20);
    }
    let codes = server.join().unwrap();
    assert!(codes.iter().all(|c| *c == Some(1000)), "{codes:?}");
}

/// Accepts TCP and never answers the upgrade; returns once the client has hung up.
fn silent_server() -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        util::read_to_end(&mut tcp);
    });
    (format!("ws://{addr}/"), handle)
}

#[test]
fn a_server_that_never_answers_the_handshake_holds_only_its_own_connection() {
    // Two servers that never answer: one client gives up after 300 ms (its own deadline), the
    // other would wait 30 s, far longer than the test; 100 healthy connections carry on.
    let (silent, silent_peer) = silent_server();
    let (brief, brief_peer) = silent_server();
    let (url, server) = many_server(100, |_, ws| echo_until_close(ws));
    let (done, seen) = bounded(102);
    let mut set = ClientSet::new().unwrap();
    let patient = Config::builder()
        .handshake_timeout(Some(Duration::from_secs(30)))
        .build()
        .unwrap();
    let (stuck, stuck_sender) = set.add(&silent, &patient, PingPong::new(1, &done)).unwrap();
    let hasty = Config::builder()
        .handshake_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let (timed_out, _) = set.add(&brief, &hasty, PingPong::new(1, &done)).unwrap();
    for _ in 0..100 {
        set.add(&url, &Config::default(), PingPong::new(10, &done))
            .unwrap();
    }
    let ran = run_set(set);
    // Everything but the patient one ends: the healthy ones cleanly, the hasty one by its
    // handshake deadline.
    let mut ended: Vec<Seen> = (0..101)
        .map(|_| {
            seen.recv_timeout(TEST_DEADLINE)
                .expect("every other connection quits")
        })
        .collect();
    let at = ended
        .iter()
        .position(|s| s.id == Some(timed_out))
        .expect("the hasty one quit");
    let hasty = ended.remove(at);
    assert_eq!(hasty.activated, 0);
    assert_eq!(hasty.errors, ["Timeout(Handshake)"], "{hasty:?}");
    for s in &ended {
        check_clean(s, 10);
    }
    // The patient one still waits for its answer, holding nobody up; a stop ends it.
    assert!(seen.try_recv().is_err(), "the silent one ended by itself");
    stuck_sender.force_quit().unwrap();
    let last = seen
        .recv_timeout(TEST_DEADLINE)
        .expect("the force-quit ends it");
    // It never opened, so no hook learnt its id (only its on_quit ran): it is the one left.
    assert!(last.id.is_none_or(|id| id == stuck), "{last:?}");
    assert_eq!(last.activated, 0);
    assert!(
        last.errors.is_empty(),
        "a force-quit is not an error: {last:?}"
    );
    finished(&ran);
    no_more(&seen);
    silent_peer.join().unwrap();
    brief_peer.join().unwrap();
    server.join().unwrap();
}

#[test]
fn one_peer_sending_bad_data_ends_only_its_own_connection() {
    const BAD: usize = 7;
    // Connection BAD's server answers with a text frame that is not UTF-8: that client must
    // fail with 1007 while the other 199 carry on to a clean close.
    let (url, server) = many_server(200, |index, mut ws| {
        if index == BAD {
            let _ = ws.read();
            let frame = [0x81, 0x02, 0xc3, 0x28];
            let _ = std::io::Write::write_all(ws.get_mut(), &frame);
            return util::close_code_from_client(&mut ws);
        }
        echo_until_close(ws)
    });
    let (done, seen) = bounded(200);
    let mut set = ClientSet::new().unwrap();
    for _ in 0..200 {
        set.add(&url, &Config::default(), PingPong::new(10, &done))
            .unwrap();
    }
    finished(&run_set(set));
    let all = collect(&seen, 200);
    no_more(&seen);
    let codes = server.join().unwrap();
    // Accept order is not add order: find the bad one by what it saw.
    let (bad, good): (Vec<&Seen>, Vec<&Seen>) = all.iter().partition(|s| !s.errors.is_empty());
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].errors, ["InvalidUtf8"], "{:?}", bad[0]);
    assert!(bad[0].texts.is_empty());
    assert_eq!(codes[BAD], Some(1007), "the bad peer got 1007");
    for s in good {
        check_clean(s, 10);
    }
}

#[test]
fn sends_from_other_threads_reach_each_connection_once_and_in_order() {
    const CONNS: usize = 200;
    const EACH: usize = 50;
    let (url, server) = many_server(CONNS, |_, ws| echo_until_close(ws));
    let (done, seen) = bounded(CONNS);
    let mut set = ClientSet::new().unwrap();

    /// Counts echoes of what other threads sent; closes after the last.
    struct Count(Seen, Sender<Seen>);
    impl Handler for Count {
        fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
            self.0.id = ctx.id();
            self.0.texts.push(text.to_owned());
            if self.0.texts.len() == EACH {
                ctx.close(1000, "done").unwrap();
            }
        }
        fn on_connection_closed(&mut self, _: &mut Context<'_>, close: &CloseInfo) {
            self.0.closed = Some(close.clone());
        }
        fn on_error(&mut self, _: &mut Context<'_>, error: &Error) {
            self.0.errors.push(format!("{error:?}"));
        }
        fn on_quit(&mut self) {
            let _ = self.1.send(std::mem::take(&mut self.0));
        }
    }

    let mut senders = Vec::new();
    for _ in 0..CONNS {
        let (id, sender) = set
            .add(
                &url,
                &Config::default(),
                Count(Seen::default(), done.clone()),
            )
            .unwrap();
        senders.push((id, sender));
    }
    // Sends start before the set runs: they wait for their connection to open.
    let threads: Vec<_> = senders
        .chunks(50)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    for (id, sender) in &chunk {
                        sender
                            .send(Command::SendText(format!("{id} {i}").into()))
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    let ran = run_set(set);
    for t in threads {
        t.join().unwrap();
    }
    finished(&ran);
    let all = collect(&seen, CONNS);
    no_more(&seen);
    for s in all {
        let id = s.id.unwrap();
        let expected: Vec<String> = (0..EACH).map(|i| format!("{id} {i}")).collect();
        assert_eq!(s.texts, expected, "{id}");
        assert!(s.errors.is_empty(), "{id}: {:?}", s.errors);
        assert_eq!(s.closed.map(|c| c.code), Some(CloseCode::Normal), "{id}");
    }
    server.join().unwrap();
}

/// Adds the next connection of a chain from its own `on_activated`, through the set's handle,
/// until `left` runs out.
struct Chain {
    handle: syncws::SetHandle<Chain>,
    url: String,
    left: usize,
    inner: PingPong,
}

impl Handler for Chain {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        if self.left > 0 {
            let next = Chain {
                handle: self.handle.clone(),
                url: self.url.clone(),
                left: self.left - 1,
                inner: PingPong::new(3, &self.inner.done),
            };
            self.handle
                .add(&self.url, &Config::default(), next)
                .unwrap();
        }
        self.inner.on_activated(ctx);
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        self.inner.on_text_message(ctx, text);
    }
    fn on_connection_closed(&mut self, ctx: &mut Context<'_>, close: &CloseInfo) {
        self.inner.on_connection_closed(ctx, close);
    }
    fn on_error(&mut self, ctx: &mut Context<'_>, error: &Error) {
        self.inner.on_error(ctx, error);
    }
    fn on_quit(&mut self) {
        self.inner.on_quit();
    }
}

#[test]
fn connections_are_added_from_hooks_and_from_other_threads_while_the_set_runs() {
    const CHAIN: usize = 100;
    const FROM_THREADS: usize = 100;
    let (url, server) = many_server(1 + CHAIN + FROM_THREADS, |_, ws| echo_until_close(ws));
    let (done, seen) = bounded(1 + CHAIN + FROM_THREADS);
    let mut set = ClientSet::new().unwrap();
    let handle = set.handle();
    let first = Chain {
        handle: handle.clone(),
        url: url.clone(),
        left: CHAIN,
        inner: PingPong::new(3, &done),
    };
    set.add(&url, &Config::default(), first).unwrap();
    let ran = run_set(set);
    let adders: Vec<_> = (0..2)
        .map(|_| {
            let handle = handle.clone();
            let url = url.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                for _ in 0..FROM_THREADS / 2 {
                    let chain = Chain {
                        handle: handle.clone(),
                        url: url.clone(),
                        left: 0,
                        inner: PingPong::new(3, &done),
                    };
                    handle.add(&url, &Config::default(), chain).unwrap();
                }
            })
        })
        .collect();
    for a in adders {
        a.join().unwrap();
    }
    let all = collect(&seen, 1 + CHAIN + FROM_THREADS);
    drop(handle);
    finished(&ran);
    no_more(&seen);
    let mut ids: Vec<u64> = all.iter().map(|s| s.id.unwrap().get()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 1 + CHAIN + FROM_THREADS, "ids are never reused");
    for s in &all {
        check_clean(s, 3);
    }
    server.join().unwrap();
}

#[test]
fn close_all_closes_every_connection_with_a_handshake() {
    const CONNS: usize = 200;
    let (url, server) = many_server(CONNS, |_, ws| echo_until_close(ws));
    let (done, seen) = bounded(CONNS);
    let (up_tx, up) = bounded(CONNS);

    let mut set = ClientSet::new().unwrap();
    for _ in 0..CONNS {
        set.add(
            &url,
            &Config::default(),
            Quiet(Seen::default(), done.clone(), up_tx.clone()),
        )
        .unwrap();
    }
    let handle = set.handle();
    let ran = run_set(set);
    for _ in 0..CONNS {
        up.recv_timeout(TEST_DEADLINE)
            .expect("every connection opens");
    }
    assert!(
        handle.close_all(1005, "not allowed").is_err(),
        "1005 is never sent"
    );
    handle.close_all(CloseCode::Away, "shutting down").unwrap();
    finished(&ran);
    for s in collect(&seen, CONNS) {
        let closed = s.closed.unwrap_or_else(|| panic!("{:?}: no close", s.id));
        assert_eq!(closed.code, CloseCode::Away);
        assert_eq!(closed.initiator, Initiator::Local);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }
    let codes = server.join().unwrap();
    assert!(codes.iter().all(|c| *c == Some(1001)), "{codes:?}");
}

#[test]
fn a_connection_that_cannot_open_reports_why_and_quits_while_the_others_carry_on() {
    // A port nobody listens on: bind, note the port, close.
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}/", l.local_addr().unwrap())
    };
    let (url, server) = many_server(50, |_, ws| echo_until_close(ws));
    let (done, seen) = bounded(51);
    let mut set = ClientSet::new().unwrap();
    let (bad, sender) = set
        .add(&refused, &Config::default(), PingPong::new(1, &done))
        .unwrap();
    // A send made while it is still opening is reported, not dropped, when it never opens.
    sender.send_text("never sent").unwrap();
    for _ in 0..50 {
        set.add(&url, &Config::default(), PingPong::new(5, &done))
            .unwrap();
    }
    assert!(matches!(
        set.add(
            "http://127.0.0.1:1/",
            &Config::default(),
            PingPong::new(1, &done)
        ),
        Err(Error::UnsupportedScheme { .. })
    ));
    assert!(matches!(
        set.add("not a url", &Config::default(), PingPong::new(1, &done)),
        Err(Error::InvalidUrl { .. })
    ));
    finished(&run_set(set));
    let all = collect(&seen, 51);
    no_more(&seen);
    let failed = all
        .iter()
        .find(|s| s.id == Some(bad))
        .expect("its on_quit ran");
    assert_eq!(failed.activated, 0);
    assert_eq!(failed.errors.len(), 2, "{failed:?}");
    assert!(failed.errors[0].starts_with("Connect"), "{failed:?}");
    assert_eq!(
        failed.errors[1], "Closed",
        "the send that waited is reported"
    );
    for s in all.iter().filter(|s| s.id != Some(bad)) {
        check_clean(s, 5);
    }
    server.join().unwrap();
}

/// Says when it is open, records errors and how it closed, and waits.
struct Quiet(Seen, Sender<Seen>, Sender<()>);

impl Handler for Quiet {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        self.0.id = ctx.id();
        self.0.activated += 1;
        let _ = self.2.send(());
    }
    fn on_connection_closed(&mut self, _: &mut Context<'_>, close: &CloseInfo) {
        self.0.closed = Some(close.clone());
    }
    fn on_error(&mut self, _: &mut Context<'_>, error: &Error) {
        self.0.errors.push(format!("{error:?}"));
    }
    fn on_quit(&mut self) {
        let _ = self.1.send(std::mem::take(&mut self.0));
    }
}

#[test]
fn each_connection_has_its_own_heartbeat_and_dead_peers_end_alone() {
    const CONNS: usize = 100;
    const DEAD: usize = 10;
    // Every tenth server connection reads nothing (so never answers a ping) once open; the
    // others answer pings as they read. Each dead one must end by its own pong deadline while
    // the live ones stay open through many heartbeats.
    let (url, server) = many_server(CONNS, move |index, mut ws| {
        if index % (CONNS / DEAD) == 0 {
            let mut tcp = ws.get_mut().try_clone().unwrap();
            util::read_to_end(&mut tcp);
            return None;
        }
        echo_until_close(ws)
    });
    let (done, seen) = bounded(CONNS);
    let (up_tx, up) = bounded(CONNS);
    let config = Config::builder()
        .ping_interval(Some(Duration::from_millis(200)))
        .pong_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut set = ClientSet::new().unwrap();
    for _ in 0..CONNS {
        set.add(
            &url,
            &config,
            Quiet(Seen::default(), done.clone(), up_tx.clone()),
        )
        .unwrap();
    }
    let handle = set.handle();
    let ran = run_set(set);
    for _ in 0..CONNS {
        up.recv_timeout(TEST_DEADLINE)
            .expect("every connection opens");
    }
    // The dead ones end first, each with its own pong timeout.
    let mut dead = Vec::new();
    for _ in 0..DEAD {
        dead.push(
            seen.recv_timeout(TEST_DEADLINE)
                .expect("a dead peer is found"),
        );
    }
    for d in &dead {
        assert_eq!(d.errors, ["Timeout(Pong)"], "{d:?}");
    }
    // The live ones are still open, through many heartbeats: close them all.
    handle.close_all(CloseCode::Normal, "done").unwrap();
    finished(&ran);
    let live = collect(&seen, CONNS - DEAD);
    no_more(&seen);
    for s in &live {
        assert!(s.errors.is_empty(), "{:?}: {:?}", s.id, s.errors);
        assert_eq!(
            s.closed.as_ref().map(|c| c.code),
            Some(CloseCode::Normal),
            "{s:?}"
        );
    }
    let codes = server.join().unwrap();
    assert_eq!(
        codes.iter().filter(|c| **c == Some(1000)).count(),
        CONNS - DEAD
    );
}
