//! One connection's panic is that connection's end: in a `ConnectionSet`, a panic in one
//! member's hook closes that member with 1011 and reports it (`Error::Panicked`, then
//! `on_quit`), and the other members carry on, in both roles.

mod util;

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use syncws::{
    CloseCode, CloseInfo, Config, ConnId, ConnectionSet, Context, Error, Handler, ServerConnection,
};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};
use util::{bind, connect_timed, SERVER_IO_TIMEOUT, TEST_DEADLINE};

/// What a member saw, sent when it quits.
#[derive(Debug, Default)]
struct Seen {
    id: Option<ConnId>,
    texts: Vec<String>,
    closed: Option<CloseInfo>,
    errors: Vec<String>,
}

/// Echoes text (as a server) or counts echoes (as a client); on `BOOM` it sends its last
/// words, then panics.
struct Fragile {
    seen: Seen,
    done: Sender<Seen>,
    /// A client: sends `count` numbered messages, one after each echo, then closes.
    client: Option<usize>,
}

const BOOM: &str = "boom";
const LAST_WORDS: &str = "last words";

impl Fragile {
    fn new(done: &Sender<Seen>, client: Option<usize>) -> Self {
        Fragile {
            seen: Seen::default(),
            done: done.clone(),
            client,
        }
    }
}

impl Handler for Fragile {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        self.seen.id = ctx.id();
        if self.client.is_some() {
            ctx.send_text(&format!("{} 0", ctx.id().unwrap())).unwrap();
        }
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        self.seen.texts.push(text.to_owned());
        if text == BOOM {
            ctx.send_text(LAST_WORDS).unwrap();
            panic!("{BOOM}");
        }
        match self.client {
            None => ctx.send_text(text).unwrap(),
            Some(count) if self.seen.texts.len() == count => ctx.close(1000, "done").unwrap(),
            Some(_) => {
                let n = self.seen.texts.len();
                ctx.send_text(&format!("{} {n}", ctx.id().unwrap()))
                    .unwrap();
            }
        }
    }
    fn on_connection_closed(&mut self, _: &mut Context<'_>, close: &CloseInfo) {
        self.seen.closed = Some(close.clone());
    }
    fn on_error(&mut self, _: &mut Context<'_>, error: &Error) {
        self.seen.errors.push(error.to_string());
    }
    fn on_quit(&mut self) {
        let _ = self.done.send(std::mem::take(&mut self.seen));
    }
}

const PANIC_REPORT: &str = "a panic on the set's thread ended this connection: boom";

fn close_normally(ws: &mut WebSocket<TcpStream>) {
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .unwrap();
    while ws.read().is_ok() {}
}

/// Read until the peer's Close; return its code.
fn close_code(ws: &mut WebSocket<TcpStream>) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn a_server_connection_that_panics_is_closed_with_1011_and_the_others_carry_on() {
    const N: usize = 10;
    const PANICKY: usize = 4;
    let mut set = ConnectionSet::new().unwrap();
    let handle = set.handle();
    let running = std::thread::spawn(move || {
        set.run_until_stopped();
        set.len()
    });
    let (done, quits) = bounded(N);
    let (listener, addr) = bind();
    let mut clients = Vec::new();
    for _ in 0..N {
        let client = std::thread::spawn(move || connect_timed(format!("ws://{addr}/")).unwrap().0);
        let (tcp, _) = listener.accept().unwrap();
        let conn = ServerConnection::accept(tcp, None, &Config::server_defaults()).unwrap();
        handle.adopt(conn, Fragile::new(&done, None)).unwrap();
        clients.push(client.join().unwrap());
    }
    let round = |clients: &mut Vec<WebSocket<TcpStream>>, round: usize| {
        for (i, ws) in clients.iter_mut().enumerate() {
            ws.send(Message::text(format!("{i} {round}"))).unwrap();
            assert_eq!(ws.read().unwrap(), Message::text(format!("{i} {round}")));
        }
    };
    round(&mut clients, 0);
    // One member's handler panics; what it sent before the panic goes out before its Close.
    let mut panicky = clients.remove(PANICKY);
    panicky.send(Message::text(BOOM)).unwrap();
    assert_eq!(panicky.read().unwrap(), Message::text(LAST_WORDS));
    assert_eq!(close_code(&mut panicky), Some(1011));
    close_normally(&mut panicky);
    let fallen = quits.recv_timeout(TEST_DEADLINE).expect("its on_quit");
    assert_eq!(fallen.texts, ["4 0", BOOM]);
    assert_eq!(fallen.errors, [PANIC_REPORT], "{fallen:?}");
    assert!(fallen.closed.is_none(), "a panic is not a normal close");
    // The others carry on, in the same set, and end normally.
    round(&mut clients, 1);
    for ws in &mut clients {
        close_normally(ws);
    }
    for _ in 0..N - 1 {
        let seen = quits.recv_timeout(TEST_DEADLINE).expect("on_quit");
        assert_eq!(seen.texts.len(), 2, "{seen:?}");
        assert!(seen.errors.is_empty(), "{seen:?}");
        assert_eq!(seen.closed.map(|c| c.code), Some(CloseCode::Normal));
    }
    handle.stop().unwrap();
    let left = within(running);
    assert_eq!(left, 0);
    assert!(quits.try_recv().is_err(), "on_quit once each");
}

/// Accept `n` connections, each served on its own thread by `serve` (tungstenite's server).
fn servers<R: Send + 'static>(
    n: usize,
    serve: impl Fn(WebSocket<TcpStream>) -> R + Send + Sync + Clone + 'static,
) -> (String, Receiver<R>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = bounded(n);
    std::thread::spawn(move || {
        for _ in 0..n {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
            let (serve, tx) = (serve.clone(), tx.clone());
            std::thread::spawn(move || {
                let _ = tx.send(serve(tungstenite::accept(tcp).unwrap()));
            });
        }
    });
    (format!("ws://{addr}/"), rx)
}

/// Echo until the client's Close; the one that receives "<id> 3" from client `boom_at` answers
/// BOOM instead. Returns the client's close code.
fn echo_or_boom(mut ws: WebSocket<TcpStream>, boom: &str) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) if t.as_str() == boom => ws.send(Message::text(BOOM)).unwrap(),
            Ok(m @ Message::Text(_)) => ws.send(m).unwrap(),
            Ok(Message::Close(frame)) => {
                let _ = ws.flush();
                return frame.map(|f| u16::from(f.code));
            }
            Ok(_) => {}
            Err(e) => panic!("the server's read failed before the client's close: {e}"),
        }
    }
}

#[test]
fn a_client_connection_that_panics_is_closed_with_1011_and_the_others_carry_on() {
    const N: usize = 20;
    const COUNT: usize = 10;
    // Client #7's server answers its fourth message with BOOM.
    let (url, closes) = servers(N, |ws| echo_or_boom(ws, "#7 3"));
    let (done, quits) = bounded(N);
    let mut set = ConnectionSet::new().unwrap();
    for _ in 0..N {
        set.add(&url, &Config::default(), Fragile::new(&done, Some(COUNT)))
            .unwrap();
    }
    let ran = std::thread::spawn(move || {
        set.run();
        set.len()
    });
    assert_eq!(
        within(ran),
        0,
        "the run ends once every connection has quit"
    );
    let mut seen: Vec<Seen> = (0..N).map(|_| quits.try_recv().expect("on_quit")).collect();
    assert!(quits.try_recv().is_err(), "on_quit once each");
    seen.sort_by_key(|s| s.id.map(ConnId::get));
    for s in &seen {
        let id = s.id.unwrap();
        if id.get() == 7 {
            assert_eq!(s.texts, ["#7 0", "#7 1", "#7 2", BOOM], "{s:?}");
            assert_eq!(s.errors, [PANIC_REPORT], "{s:?}");
        } else {
            let expected: Vec<String> = (0..COUNT).map(|i| format!("{id} {i}")).collect();
            assert_eq!(s.texts, expected, "{id}");
            assert!(s.errors.is_empty(), "{id}: {:?}", s.errors);
            assert_eq!(s.closed.as_ref().map(|c| c.code), Some(CloseCode::Normal));
        }
    }
    let mut codes: Vec<Option<u16>> = (0..N)
        .map(|_| closes.recv_timeout(TEST_DEADLINE).unwrap())
        .collect();
    codes.sort();
    let mut expected = vec![Some(1000); N - 1];
    expected.push(Some(1011));
    assert_eq!(
        codes, expected,
        "the servers saw one 1011 and the rest 1000"
    );
}

/// Counts the calls into a handler that panics in every hook it gets after the first message.
#[derive(Clone, Default)]
struct Calls {
    texts: Arc<AtomicUsize>,
    errors: Arc<AtomicUsize>,
    quits: Arc<AtomicUsize>,
    others: Arc<AtomicUsize>,
}

struct Hopeless(Calls);

impl Handler for Hopeless {
    fn on_text_message(&mut self, _: &mut Context<'_>, _: &str) {
        self.0.texts.fetch_add(1, Ordering::SeqCst);
        panic!("first");
    }
    fn on_error(&mut self, _: &mut Context<'_>, _: &Error) {
        self.0.errors.fetch_add(1, Ordering::SeqCst);
        panic!("again, in on_error");
    }
    fn on_connection_closed(&mut self, _: &mut Context<'_>, _: &CloseInfo) {
        self.0.others.fetch_add(1, Ordering::SeqCst);
    }
    fn on_idle(&mut self, _: &mut Context<'_>) {
        self.0.others.fetch_add(1, Ordering::SeqCst);
    }
    fn on_writable(&mut self, _: &mut Context<'_>) {
        self.0.others.fetch_add(1, Ordering::SeqCst);
    }
    fn on_quit(&mut self) {
        self.0.quits.fetch_add(1, Ordering::SeqCst);
        panic!("and in on_quit");
    }
}

#[test]
fn a_handler_that_panics_again_while_its_connection_ends_is_called_a_bounded_number_of_times() {
    let calls = Calls::default();
    let mut set: ConnectionSet<Box<dyn Handler + Send>> = ConnectionSet::new().unwrap();
    let handle = set.handle();
    let running = std::thread::spawn(move || {
        set.run_until_stopped();
        set.len()
    });
    let (done, quits) = bounded(1);
    let (listener, addr) = bind();
    let mut sockets = Vec::new();
    let mut senders = Vec::new();
    for hopeless in [true, false] {
        let client = std::thread::spawn(move || connect_timed(format!("ws://{addr}/")).unwrap().0);
        let (tcp, _) = listener.accept().unwrap();
        let conn = ServerConnection::accept(tcp, None, &Config::server_defaults()).unwrap();
        let sender = conn.handle();
        let handler: Box<dyn Handler + Send> = if hopeless {
            Box::new(Hopeless(calls.clone()))
        } else {
            Box::new(Fragile::new(&done, None))
        };
        handle.adopt(conn, handler).unwrap();
        senders.push(sender);
        sockets.push(client.join().unwrap());
    }
    let mut steady = sockets.pop().unwrap();
    let mut hopeless = sockets.pop().unwrap();
    hopeless.send(Message::text("anything")).unwrap();
    let code = loop {
        match hopeless.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, Some(1011));
    // While it waits for our answer to its Close: sends it can only report as not carried
    // out, to an on_error that panicked the first time it was called.
    for _ in 0..5 {
        let _ = senders[0].send_text("too late");
    }
    close_normally(&mut hopeless);
    // The other member is unaffected.
    steady.send(Message::text("still here")).unwrap();
    assert_eq!(steady.read().unwrap(), Message::text("still here"));
    close_normally(&mut steady);
    let seen = quits.recv_timeout(TEST_DEADLINE).unwrap();
    assert!(seen.errors.is_empty(), "{seen:?}");
    handle.stop().unwrap();
    assert_eq!(within(running), 0);
    // One panic in on_text_message; then one on_error (with the panic; it panicked too, so
    // the sends it could not carry out were not reported to it), nothing else, and on_quit
    // exactly once (which panicked as well).
    assert_eq!(calls.texts.load(Ordering::SeqCst), 1);
    assert_eq!(calls.errors.load(Ordering::SeqCst), 1);
    assert_eq!(calls.others.load(Ordering::SeqCst), 0);
    assert_eq!(calls.quits.load(Ordering::SeqCst), 1);
}

/// Join a thread within the test deadline.
fn within<R: Send + 'static>(thread: std::thread::JoinHandle<R>) -> R {
    let (tx, rx) = bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(thread.join());
    });
    rx.recv_timeout(TEST_DEADLINE)
        .expect("the set's thread ended in time")
        .expect("the set's thread did not panic")
}
