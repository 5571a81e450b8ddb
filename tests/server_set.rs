//! Server connections in a `ConnectionSet`: many on one thread, handed over by an accept loop
//! on another thread while the set runs, a peer that never reads holding up no one, sends from
//! other threads, and stopping the set. (Every per-connection server test also runs with its
//! connection in a set: `util::serve`.)

mod util;

use std::net::{SocketAddr, TcpListener, TcpStream};

use crossbeam_channel::{bounded, Receiver, Sender};
use syncws::{
    CloseCode, CloseInfo, CommandSender, Config, ConnId, ConnectionSet, Context, Error, Handler,
    ServerConnection, SetHandle,
};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};
use util::{bind, connect_timed, TEST_DEADLINE};

/// What a server connection in the set saw, sent when it quits.
#[derive(Debug, Default)]
struct Served {
    id: Option<ConnId>,
    activated: usize,
    echoed: usize,
    /// Sends its hooks could not queue (the peer does not read).
    refused: usize,
    closed: Option<CloseInfo>,
    errors: Vec<String>,
    quits: usize,
}

/// Echoes every data message; reports what it saw when it quits. Asked for a [`FLOOD`], it
/// sends until its queue refuses more (the peer does not read), then says so on `full`.
struct EchoMember {
    served: Served,
    done: Sender<Served>,
    full: Option<Sender<()>>,
}

/// What a peer sends to be flooded.
const FLOOD: &str = "flood me";

impl EchoMember {
    fn new(done: &Sender<Served>) -> Self {
        EchoMember {
            served: Served::default(),
            done: done.clone(),
            full: None,
        }
    }
}

impl Handler for EchoMember {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        self.served.id = ctx.id();
        self.served.activated += 1;
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        if let (FLOOD, Some(full)) = (text, &self.full) {
            let chunk = vec![7u8; 16 << 10];
            while ctx.send_binary(&chunk).is_ok() {}
            let _ = full.send(());
            return;
        }
        match ctx.send_text(text) {
            Ok(()) => self.served.echoed += 1,
            Err(_) => self.served.refused += 1,
        }
    }
    fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        match ctx.send_binary(data) {
            Ok(()) => self.served.echoed += 1,
            Err(_) => self.served.refused += 1,
        }
    }
    fn on_connection_closed(&mut self, _: &mut Context<'_>, close: &CloseInfo) {
        self.served.closed = Some(close.clone());
    }
    fn on_error(&mut self, _: &mut Context<'_>, error: &Error) {
        self.served.errors.push(error.to_string());
    }
    fn on_quit(&mut self) {
        self.served.quits += 1;
        let _ = self.done.send(std::mem::take(&mut self.served));
    }
}

/// A set running on its own thread until stopped; yields the set once its run returned.
fn set_thread<H: Handler + Send + 'static>() -> (SetHandle<H>, Receiver<ConnectionSet<H>>) {
    let mut set = ConnectionSet::new().unwrap();
    let handle = set.handle();
    let (tx, rx) = bounded(1);
    std::thread::spawn(move || {
        set.run_until_stopped();
        let _ = tx.send(set);
    });
    (handle, rx)
}

/// An accept loop on its own thread: `n` connections, each upgraded there and handed to the
/// set through `handle` with the handler `make` gives; yields each one's sender, in accept
/// order.
fn accept_into_set<H: Handler + Send + 'static>(
    n: usize,
    config: Config,
    handle: SetHandle<H>,
    make: impl Fn(usize) -> H + Send + 'static,
) -> (SocketAddr, Receiver<CommandSender>) {
    let (listener, addr) = bind();
    accept_from(listener, addr, n, config, handle, make)
}

fn accept_from<H: Handler + Send + 'static>(
    listener: TcpListener,
    addr: SocketAddr,
    n: usize,
    config: Config,
    handle: SetHandle<H>,
    make: impl Fn(usize) -> H + Send + 'static,
) -> (SocketAddr, Receiver<CommandSender>) {
    let (tx, rx) = bounded(n);
    std::thread::spawn(move || {
        for index in 0..n {
            let (tcp, _) = listener.accept().expect("accept");
            let conn = ServerConnection::accept(tcp, None, &config).expect("upgrade");
            let (_, sender) = handle.adopt(conn, make(index)).expect("the set takes it");
            tx.send(sender).unwrap();
        }
    });
    (addr, rx)
}

fn collect(done: &Receiver<Served>, n: usize) -> Vec<Served> {
    let mut all: Vec<Served> = (0..n)
        .map(|_| {
            done.recv_timeout(TEST_DEADLINE)
                .expect("on_quit of every connection")
        })
        .collect();
    all.sort_by_key(|s| s.id.map(ConnId::get));
    all
}

/// Send `count` numbered messages on each of `sockets`, read every echo, then close.
fn exchange(thread: usize, sockets: &mut [WebSocket<TcpStream>], count: usize) {
    for (i, ws) in sockets.iter_mut().enumerate() {
        for k in 0..count {
            ws.send(Message::text(format!("{thread}/{i}/{k}"))).unwrap();
        }
        for k in 0..count {
            assert_eq!(
                ws.read().unwrap(),
                Message::text(format!("{thread}/{i}/{k}")),
                "client {thread}/{i}"
            );
        }
    }
    for ws in sockets.iter_mut() {
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .unwrap();
        while ws.read().is_ok() {}
    }
}

#[test]
fn two_hundred_server_connections_share_a_set_and_a_peer_that_never_reads_holds_up_no_one() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 50;
    const MESSAGES: usize = 20;
    let (handle, ran) = set_thread::<EchoMember>();
    let (done, quits) = bounded(THREADS * PER_THREAD + 1);
    // No write timeout: only a stop can end the connection whose peer never reads, so while
    // the others run it is certainly there, full.
    let config = Config::server_builder()
        .max_queued_bytes(64 << 10)
        .write_timeout(None)
        .build()
        .unwrap();
    let (filled, full) = bounded(1);
    let members = done.clone();
    // Small socket buffers on the server's side (and the flooder's), so the kernel holds
    // little of what is not read and the flooded connection's own queue stays full.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_send_buffer_size(16 << 10).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(128).unwrap();
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let (addr, senders) = accept_from(
        listener,
        addr,
        THREADS * PER_THREAD + 1,
        config,
        handle.clone(),
        move |_| EchoMember {
            full: Some(filled.clone()),
            ..EchoMember::new(&members)
        },
    );

    // First, a peer that asks for a flood and never reads: its connection fills its queue
    // until the socket takes no more (a hook's send is then refused), and waits for room.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4 << 10).unwrap();
    socket.connect(&addr.into()).unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(util::SERVER_IO_TIMEOUT)).unwrap();
    let (mut flooder, _) = tungstenite::client(format!("ws://{addr}/"), tcp).unwrap();
    let stuck = senders.recv_timeout(TEST_DEADLINE).unwrap();
    flooder.send(Message::text(FLOOD)).unwrap();
    full.recv_timeout(TEST_DEADLINE)
        .expect("the flooded connection's queue filled up");

    // Then 200 well-behaved clients on several threads, all served by the same set meanwhile.
    let clients: Vec<_> = (0..THREADS)
        .map(|thread| {
            std::thread::spawn(move || {
                let mut sockets: Vec<_> = (0..PER_THREAD)
                    .map(|_| connect_timed(format!("ws://{addr}/")).unwrap().0)
                    .collect();
                exchange(thread, &mut sockets, MESSAGES);
            })
        })
        .collect();
    for client in clients {
        client.join().expect("every client got every echo");
    }
    let served = {
        let mut served = Vec::new();
        for _ in 0..THREADS * PER_THREAD {
            served.push(quits.recv_timeout(TEST_DEADLINE).expect("on_quit"));
        }
        served
    };
    for s in &served {
        let id = s.id.expect("hooks learn their id");
        assert_eq!(
            (s.activated, s.echoed, s.refused, s.quits),
            (1, MESSAGES, 0, 1),
            "{id}: {s:?}"
        );
        assert_eq!(
            s.closed.as_ref().map(|c| c.code),
            Some(CloseCode::Normal),
            "{id}"
        );
        assert!(s.errors.is_empty(), "{id}: {:?}", s.errors);
    }
    // The stuck connection is still there: nothing ended it while the others were served.
    assert!(
        quits.try_recv().is_err(),
        "the connection whose peer never reads was still open"
    );
    // A stop gets through its full queue.
    stuck.force_quit().unwrap();
    let flooded = quits.recv_timeout(TEST_DEADLINE).expect("its on_quit");
    assert_eq!((flooded.activated, flooded.quits), (1, 1), "{flooded:?}");
    assert!(
        flooded.errors.iter().any(|e| e.contains("not yet sent")),
        "what it could not send is reported: {flooded:?}"
    );
    drop(flooder);
    handle.stop().unwrap();
    let set = ran
        .recv_timeout(TEST_DEADLINE)
        .expect("the run ends once stopped and empty");
    assert!(set.is_empty());
}

#[test]
fn a_handle_taken_before_the_set_adopts_the_connection_sends_through_the_set() {
    let (handle, ran) = set_thread::<EchoMember>();
    let (done, quits) = bounded(1);
    let (listener, addr) = bind();
    let client = std::thread::spawn(move || connect_timed(format!("ws://{addr}/")).unwrap().0);
    let (tcp, _) = listener.accept().unwrap();
    let conn = ServerConnection::accept(tcp, None, &Config::server_defaults()).unwrap();
    let mut ws = client.join().unwrap();
    // Taken and used before the set has it: sends wait in the channel, go out after
    // on_activated; a close asked for meanwhile follows them.
    let early = conn.handle();
    early.send_text("before adopt").unwrap();
    let (id, sender) = handle.adopt(conn, EchoMember::new(&done)).unwrap();
    // From another thread while the set runs, through either sender: they are the same.
    std::thread::spawn(move || {
        early.send_text("from another thread").unwrap();
        sender.send_text("through adopt's sender").unwrap();
        sender.close(1001, "bye").unwrap();
    })
    .join()
    .unwrap();
    let got: Vec<Message> = (0..4).map(|_| ws.read().unwrap()).collect();
    assert_eq!(
        got[..3],
        [
            Message::text("before adopt"),
            Message::text("from another thread"),
            Message::text("through adopt's sender"),
        ]
    );
    match &got[3] {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1001);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected the close, got {other:?}"),
    }
    while ws.read().is_ok() {}
    let served = quits.recv_timeout(TEST_DEADLINE).unwrap();
    assert_eq!(served.id, Some(id));
    assert_eq!((served.activated, served.quits), (1, 1), "{served:?}");
    assert!(served.errors.is_empty(), "{:?}", served.errors);
    handle.stop().unwrap();
    ran.recv_timeout(TEST_DEADLINE).unwrap();
}

#[test]
fn close_all_and_stop_end_every_server_connection_with_a_close_and_on_quit_once() {
    const N: usize = 20;
    let (handle, ran) = set_thread::<EchoMember>();
    let (done, quits) = bounded(N);
    let members = done.clone();
    let (addr, senders) = accept_into_set(N, Config::server_defaults(), handle.clone(), {
        move |_| EchoMember::new(&members)
    });
    let mut clients: Vec<_> = (0..N)
        .map(|_| connect_timed(format!("ws://{addr}/")).unwrap().0)
        .collect();
    for _ in 0..N {
        senders.recv_timeout(TEST_DEADLINE).unwrap();
    }
    // Each is open (an echo came back) before the shutdown.
    for ws in &mut clients {
        ws.send(Message::text("up")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("up"));
    }
    handle.close_all(1001, "shutting down").unwrap();
    handle.stop().unwrap();
    for ws in &mut clients {
        match ws.read().unwrap() {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected the close, got {other:?}"),
        }
        while ws.read().is_ok() {}
    }
    let served = collect(&quits, N);
    for s in &served {
        assert_eq!((s.activated, s.echoed, s.quits), (1, 1, 1), "{s:?}");
        let closed = s.closed.as_ref().expect("the close handshake completed");
        assert_eq!(closed.code, CloseCode::Away);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }
    let set = ran
        .recv_timeout(TEST_DEADLINE)
        .expect("the run returns once stopped and empty");
    assert!(set.is_empty());
    assert!(quits.try_recv().is_err(), "on_quit once each");
}

#[test]
fn a_set_dropped_with_server_connections_closes_each_with_1001_and_quits_each_once() {
    const N: usize = 5;
    let (done, quits) = bounded(N);
    let mut set = ConnectionSet::new().unwrap();
    let (listener, addr) = bind();
    let mut clients = Vec::new();
    for _ in 0..N {
        let client = std::thread::spawn(move || connect_timed(format!("ws://{addr}/")).unwrap().0);
        let (tcp, _) = listener.accept().unwrap();
        let conn = ServerConnection::accept(tcp, None, &Config::server_defaults()).unwrap();
        let sender = conn.handle();
        set.adopt(conn, EchoMember::new(&done));
        // Accepted before the drop, never carried out: reported, not lost silently.
        sender.send_text("never sent").unwrap();
        clients.push(client.join().unwrap());
    }
    drop(set);
    for ws in &mut clients {
        match ws.read().unwrap() {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected the close, got {other:?}"),
        }
    }
    let served = collect(&quits, N);
    for s in &served {
        assert_eq!((s.activated, s.quits), (0, 1), "{s:?}");
        assert_eq!(s.errors, ["connection is closing or closed"], "{s:?}");
    }
    assert!(quits.try_recv().is_err(), "on_quit once each");
}

#[test]
fn a_server_connection_sent_to_a_dropped_set_is_handed_back_as_an_error_and_closed() {
    let set = ConnectionSet::<EchoMember>::new().unwrap();
    let handle = set.handle();
    drop(set);
    let (done, quits) = bounded(1);
    let (listener, addr) = bind();
    let client = std::thread::spawn(move || connect_timed(format!("ws://{addr}/")).unwrap().0);
    let (tcp, _) = listener.accept().unwrap();
    let conn = ServerConnection::accept(tcp, None, &Config::server_defaults()).unwrap();
    let mut ws = client.join().unwrap();
    let refused = handle.adopt(conn, EchoMember::new(&done));
    assert!(matches!(refused, Err(Error::Closed)), "{refused:?}");
    match ws.read().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected the close, got {other:?}"),
    }
    assert!(
        quits.try_recv().is_err(),
        "no hook of a handler the set never took"
    );
}

#[test]
fn members_of_one_set_broadcast_to_each_other_through_their_senders() {
    const N: usize = 10;
    /// Hands every message to every member of the room (itself included) through their
    /// senders: a broadcast from a hook to members of the same set.
    struct Room {
        senders: std::sync::Arc<std::sync::Mutex<Vec<CommandSender>>>,
        done: Sender<()>,
    }
    impl Handler for Room {
        fn on_text_message(&mut self, _: &mut Context<'_>, text: &str) {
            for member in self.senders.lock().unwrap().iter() {
                member.send_text(text.to_owned()).unwrap();
            }
        }
        fn on_quit(&mut self) {
            let _ = self.done.send(());
        }
    }
    let (handle, ran) = set_thread::<Room>();
    let senders = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (done, quits) = bounded(N);
    let (addr, adopted) = accept_into_set(N, Config::server_defaults(), handle.clone(), {
        let senders = senders.clone();
        move |_| Room {
            senders: senders.clone(),
            done: done.clone(),
        }
    });
    let mut clients: Vec<_> = (0..N)
        .map(|_| connect_timed(format!("ws://{addr}/")).unwrap().0)
        .collect();
    for _ in 0..N {
        senders
            .lock()
            .unwrap()
            .push(adopted.recv_timeout(TEST_DEADLINE).unwrap());
    }
    clients[3].send(Message::text("hello, room")).unwrap();
    for ws in &mut clients {
        assert_eq!(ws.read().unwrap(), Message::text("hello, room"));
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    }
    let _ = (0..N)
        .map(|_| quits.recv_timeout(TEST_DEADLINE).unwrap())
        .count();
    handle.stop().unwrap();
    ran.recv_timeout(TEST_DEADLINE).unwrap();
}
