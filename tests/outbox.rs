//! Commands from other threads under backpressure: a stop always gets through, a stalled send
//! resumes when the socket drains, the command bound holds in every wait strategy, and every
//! accepted command is carried out or reported. Small queues and peers that stop reading, so
//! sends really meet a full socket.

mod util;

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender};
use syncws::{
    BlockingClient, Command, CommandSender, Config, ConfigBuilder, Context, Error, Event, Handler,
    NonBlockingClient, SendFailure, ThreadedClient, TimeoutKind, WaitStrategy,
};
use tungstenite::protocol::WebSocket;
use tungstenite::Message;
use util::*;

/// Socket buffers pinned on both ends, so a few MiB of sends fill the kernel.
const SOCKET_BUFFER: usize = 64 << 10;

/// A per-connection queue as small as a server would use.
fn small_queue() -> ConfigBuilder {
    Config::builder()
        .send_buffer_size(Some(SOCKET_BUFFER))
        .write_buffer_size(16 << 10)
        .max_queued_bytes(64 << 10)
}

/// Every mode that takes commands from another thread.
const HANDLE_MODES: [Mode; 6] = MODES;

/// A running client in `mode`, driven on its own thread: its handle, and what it reported
/// (errors, then the end) once it quits.
struct Running {
    handle: CommandSender,
    ended: Receiver<Vec<String>>,
}

struct Collect(Vec<String>, Sender<Vec<String>>);

impl Handler for Collect {
    fn on_error(&mut self, _: &mut Context<'_>, error: &Error) {
        self.0.push(format!("{error:?}"));
    }
    fn on_quit(&mut self) {
        let _ = self.1.send(std::mem::take(&mut self.0));
    }
}

fn start(mode: Mode, url: &str, builder: ConfigBuilder) -> Running {
    let strategy = match mode {
        Mode::NonBlocking(s) => s,
        _ => WaitStrategy::Readiness,
    };
    let config = builder.wait_strategy(strategy).build().unwrap();
    let (tx, ended) = bounded(1);
    let handle = match mode {
        Mode::Blocking => {
            let client = BlockingClient::connect(url, &config).unwrap();
            let handle = client.handle();
            std::thread::spawn(move || client.run(&mut Collect(Vec::new(), tx)));
            handle
        }
        Mode::NonBlocking(_) => {
            let client = NonBlockingClient::connect(url, &config).unwrap();
            let handle = client.handle();
            std::thread::spawn(move || client.run(&mut Collect(Vec::new(), tx)));
            handle
        }
        Mode::Threaded => {
            let client = ThreadedClient::connect(url, &config).unwrap();
            let handle = client.control_tx.clone();
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                for event in events(&client.event_rx) {
                    match event {
                        Event::Error(e) => errors.push(format!("{e:?}")),
                        Event::Quit => {
                            let _ = tx.send(errors);
                            return;
                        }
                        _ => {}
                    }
                }
            });
            handle
        }
        Mode::Set => {
            let mut set = syncws::ClientSet::new().unwrap();
            let (_, handle) = set.add(url, &config, Collect(Vec::new(), tx)).unwrap();
            std::thread::spawn(move || set.run());
            handle
        }
    };
    Running { handle, ended }
}

/// A server that reads nothing until `go`, then reads everything until the connection ends and
/// returns the data messages it got.
fn server_that_reads_after(go: Receiver<()>) -> (String, std::thread::JoinHandle<Vec<Message>>) {
    ws_server_small_rcvbuf(SOCKET_BUFFER, move |mut ws: WebSocket<TcpStream>| {
        let _ = go.recv_timeout(TEST_DEADLINE);
        let mut got = Vec::new();
        loop {
            match ws.read() {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => got.push(m),
                Ok(_) => {}
                Err(_) => return got,
            }
        }
    })
}

/// Send 1 KiB messages through `handle` until a send has waited `patience` for room: the queue
/// and the socket buffers are then full. Returns how many were accepted.
fn fill(handle: &CommandSender, patience: Duration) -> usize {
    let mut accepted = 0;
    loop {
        let command = Command::SendBinary(vec![accepted as u8; 1024].into());
        match handle.send_timeout(command, patience) {
            Ok(()) => accepted += 1,
            Err(SendTimeoutError::Timeout(_)) => return accepted,
            Err(SendTimeoutError::Disconnected(_)) => panic!("client ended while filling"),
        }
        assert!(accepted < 100_000, "sends never stalled");
    }
}

#[test]
fn force_quit_from_another_thread_gets_through_a_stalled_queue() {
    for mode in HANDLE_MODES {
        let (go_tx, go_rx) = bounded(1);
        let (url, server) = server_that_reads_after(go_rx);
        let client = start(mode, &url, small_queue());
        fill(&client.handle, Duration::from_millis(200));
        client.handle.force_quit().unwrap();
        let ended = client.ended.recv_timeout(Duration::from_secs(10));
        go_tx.send(()).unwrap();
        assert!(
            ended.is_ok(),
            "{mode:?}: force_quit did not end a client whose queue was stalled"
        );
        server.join().unwrap();
    }
}

#[test]
fn close_from_another_thread_ends_a_stalled_connection_within_its_close_timeout() {
    for mode in HANDLE_MODES {
        let (go_tx, go_rx) = bounded(1);
        let (url, server) = server_that_reads_after(go_rx);
        let builder = small_queue().close_timeout(Duration::from_millis(500));
        let client = start(mode, &url, builder);
        fill(&client.handle, Duration::from_millis(200));
        client.handle.close(1000, "bye").unwrap();
        assert!(
            client.handle.send_text("after close").is_err(),
            "{mode:?}: a send after close is refused, not queued"
        );
        let ended = client.ended.recv_timeout(Duration::from_secs(10));
        go_tx.send(()).unwrap();
        let errors = ended.unwrap_or_else(|_| {
            panic!("{mode:?}: close did not end a client whose queue was stalled")
        });
        assert!(
            errors.contains(&format!("{:?}", Error::Timeout(TimeoutKind::Close))),
            "{mode:?}: the peer never read, so the close timed out: {errors:?}"
        );
        server.join().unwrap();
    }
}

#[test]
fn sends_through_a_handle_resume_when_a_slow_reader_catches_up() {
    const N: usize = 8_000;
    for mode in HANDLE_MODES {
        let (go_tx, go_rx) = bounded(1);
        let (url, server) = server_that_reads_after(go_rx);
        let client = start(mode, &url, small_queue());
        let handle = client.handle.clone();
        let sender = std::thread::spawn(move || {
            let mut released = Some(go_tx);
            for i in 0..N {
                let mut command = Command::SendBinary((i as u32).to_be_bytes().repeat(256).into());
                // The first time the channel stays full, the socket is stalled: let the
                // server start reading, then block as a plain `send` would.
                if let Some(go) = released.take() {
                    match handle.send_timeout(command, Duration::from_millis(200)) {
                        Ok(()) => {
                            released = Some(go);
                            continue;
                        }
                        Err(SendTimeoutError::Timeout(c)) => {
                            go.send(()).unwrap();
                            command = c;
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
                handle.send(command).unwrap();
            }
            handle.close(1000, "done").unwrap();
        });
        let errors = client.ended.recv_timeout(Duration::from_secs(30));
        let errors = errors.unwrap_or_else(|_| {
            panic!("{mode:?}: the client never finished sending once the peer read again")
        });
        sender.join().unwrap();
        assert!(errors.is_empty(), "{mode:?}: {errors:?}");
        let got = server.join().unwrap();
        assert_eq!(got.len(), N, "{mode:?}: every message arrives");
        for (i, m) in got.iter().enumerate() {
            assert_eq!(
                m.clone().into_data()[..4],
                (i as u32).to_be_bytes(),
                "{mode:?}: in order, once each"
            );
        }
    }
}

#[test]
fn a_stalled_queue_makes_senders_wait_in_every_wait_strategy() {
    const CAPACITY: usize = 16;
    const MESSAGE: usize = 32 << 10;
    for mode in HANDLE_MODES {
        let (go_tx, go_rx) = bounded(1);
        let (url, server) = server_that_reads_after(go_rx);
        let client = start(
            mode,
            &url,
            small_queue()
                .max_queued_bytes(128 << 10)
                .write_buffer_size(32 << 10)
                .control_capacity(CAPACITY),
        );
        let mut accepted = 0;
        while accepted < 2_000 {
            let command = Command::SendBinary(vec![0u8; MESSAGE].into());
            match client
                .handle
                .send_timeout(command, Duration::from_millis(300))
            {
                Ok(()) => accepted += 1,
                Err(_) => break,
            }
        }
        client.handle.force_quit().unwrap();
        go_tx.send(()).unwrap();
        client
            .ended
            .recv_timeout(TEST_DEADLINE)
            .expect("client ends");
        server.join().unwrap();
        // What the queue, both socket buffers (the kernel may double what we ask for) and the
        // channel can hold, and a margin; not thousands.
        let bound = (128 << 10) / MESSAGE + 4 * SOCKET_BUFFER / MESSAGE + CAPACITY + 8;
        assert!(
            accepted <= bound,
            "{mode:?}: {accepted} x 32 KiB accepted by a stalled connection (bound {bound})"
        );
    }
}

/// The README's threaded pattern, `for ev in event_rx.iter() { control_tx.send(..) }`, with
/// small channels and queue, against a peer that floods and reads slowly: it must finish.
#[test]
fn the_threaded_echo_loop_does_not_deadlock_with_a_flooding_slow_reader() {
    use std::io::{Read, Write};
    const N: usize = 5_000;
    let (url, server) = raw_server_upgraded(move |tcp| {
        let mut writer = tcp.try_clone().unwrap();
        let flood = std::thread::spawn(move || {
            for i in 0..N {
                let text = format!("{i:0>100}");
                let mut frame = vec![0x81, text.len() as u8];
                frame.extend_from_slice(text.as_bytes());
                writer.write_all(&frame).unwrap();
            }
        });
        // Read the echoes slowly: 16 KiB, then a pause, until all have come back.
        let mut reader = tcp;
        let want = N * (2 + 4 + 100);
        let mut got = 0;
        let mut buf = vec![0u8; 16 << 10];
        while got < want {
            let n = reader.read(&mut buf).unwrap();
            assert!(n > 0, "client hung up early");
            got += n;
            std::thread::sleep(Duration::from_millis(10));
        }
        flood.join().unwrap();
        // Close and let the client answer.
        reader.write_all(&[0x88, 0x02, 0x03, 0xe8]).unwrap();
        let _ = read_to_end(&mut reader);
        got
    });
    let config = small_queue()
        .event_capacity(4)
        .control_capacity(4)
        .build()
        .unwrap();
    let client = ThreadedClient::connect(&url, &config).unwrap();
    let (done_tx, done_rx) = bounded(1);
    std::thread::spawn(move || {
        let mut echoed = 0;
        for event in client.event_rx.iter() {
            match event {
                Event::TextMessage(t) => {
                    client.control_tx.send(Command::SendText(t)).unwrap();
                    echoed += 1;
                }
                Event::Quit => break,
                _ => {}
            }
        }
        let _ = done_tx.send(echoed);
    });
    let echoed = done_rx
        .recv_timeout(Duration::from_secs(40))
        .expect("the echo loop deadlocked");
    assert_eq!(echoed, N);
    assert_eq!(server.join().unwrap(), N * 106);
}

/// Every send that returned Ok is either carried out (the peer receives it) or reported as an
/// error; none disappears when the connection ends while another thread is sending. In every
/// mode: the command sender and the gate are shared, the reporting is each mode's own.
/// (The end races the sender, so each round is a fresh chance to lose one.)
#[test]
fn every_accepted_command_is_sent_or_reported_when_the_connection_ends() {
    for mode in HANDLE_MODES {
        for round in 0..10 {
            let (url, server) = ws_server(|mut ws| {
                let mut got = 0usize;
                // Take a few, then close while the client is still sending.
                while got < 5 {
                    match ws.read() {
                        Ok(Message::Text(_)) => got += 1,
                        Ok(_) => {}
                        Err(e) => panic!("the client went away after {got} messages: {e}"),
                    }
                }
                ws.close(None).unwrap();
                loop {
                    match ws.read() {
                        Ok(Message::Text(_)) => got += 1,
                        Ok(_) => {}
                        Err(_) => return got,
                    }
                }
            });
            let client = start(mode, &url, Config::builder());
            let control = client.handle.clone();
            let sender = std::thread::spawn(move || {
                let mut accepted = 0usize;
                while control.send_text(accepted.to_string()).is_ok() {
                    accepted += 1;
                    assert!(accepted < 10_000_000, "sends never failed");
                }
                accepted
            });
            let errors = client
                .ended
                .recv_timeout(TEST_DEADLINE)
                .unwrap_or_else(|_| panic!("{mode:?}: the client never ended"));
            let reported = errors.iter().filter(|e| *e == "Closed").count();
            assert_eq!(
                reported,
                errors.len(),
                "{mode:?}: only sends that could not go out are reported: {errors:?}"
            );
            let accepted = sender.join().unwrap();
            let received = server.join().unwrap();
            assert_eq!(
                received + reported,
                accepted,
                "{mode:?} round {round}: accepted {accepted}: {received} reached the peer, \
                 {reported} were reported"
            );
        }
    }
}

#[test]
fn a_blocking_client_can_be_stopped_from_another_thread() {
    let (go_tx, go_rx) = bounded::<()>(1);
    let (url, server) = ws_server(move |mut ws| {
        let _ = go_rx.recv_timeout(TEST_DEADLINE);
        close_code_from_client(&mut ws)
    });
    let client = BlockingClient::connect(&url, &Config::default()).unwrap();
    let handle = client.handle();
    let quit = Arc::new(AtomicBool::new(false));
    struct Quit(Arc<AtomicBool>);
    impl Handler for Quit {
        fn on_quit(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let (done_tx, done_rx) = bounded(1);
    let q = quit.clone();
    std::thread::spawn(move || {
        client.run(&mut Quit(q));
        let _ = done_tx.send(());
    });
    handle.close(1001, "shutting down").unwrap();
    go_tx.send(()).unwrap();
    assert_eq!(
        server.join().unwrap(),
        Some(1001),
        "the Close reached the peer"
    );
    done_rx
        .recv_timeout(TEST_DEADLINE)
        .expect("run returned after the close from another thread");
    assert!(quit.load(Ordering::SeqCst));
    assert!(
        handle.send_text("late").is_err(),
        "the handle reports the end"
    );
}

/// A raw TCP server that completes the upgrade by hand and then runs `f` on the socket.
fn raw_server_upgraded<R: Send + 'static>(
    f: impl FnOnce(TcpStream) -> R + Send + 'static,
) -> (String, std::thread::JoinHandle<R>) {
    let (addr, handle) = raw_server(move |mut tcp| {
        upgrade_by_hand(&mut tcp, "");
        f(tcp)
    });
    (format!("ws://{addr}/"), handle)
}

/// A hook that meets a full queue gets its message back, learns when the queue has drained
/// (`on_writable`) and sends the rest; everything arrives once, in order. On the way,
/// `Metrics::queued_bytes` is exact: each frame queued behind the full socket adds its size,
/// a refusal comes when the next frame would pass the bound, and the queue is empty when
/// `on_writable` comes.
#[test]
fn on_writable_tells_a_refused_hook_when_to_send_again() {
    const N: u32 = 2_000;
    const PAYLOAD: usize = 1024;
    /// A client frame of PAYLOAD bytes: header with a 16-bit length, mask, payload.
    const FRAME: u64 = 2 + 2 + 4 + PAYLOAD as u64;
    struct Producer {
        next: u32,
        /// The message the full queue handed back.
        kept: Option<Message>,
        go: Option<Sender<()>>,
        refusals: usize,
        writable: usize,
        /// Sends checked against queued_bytes while the socket was full, and what was wrong.
        exact: usize,
        wrong: Vec<String>,
    }
    impl Producer {
        fn produce(&mut self, ctx: &mut Context<'_>) {
            while self.next < N {
                let message = match self.kept.take() {
                    Some(m) => m,
                    None => Message::binary(self.next.to_be_bytes().repeat(PAYLOAD / 4)),
                };
                let before = Counters::of(ctx.metrics());
                match ctx.try_send(message) {
                    Ok(()) => {
                        self.next += 1;
                        // The socket was found full and the peer has not read yet: nothing
                        // can leave, so the frame adds exactly its size.
                        let after = ctx.metrics().queued_bytes();
                        if self.go.is_some() && before.frames_queued > 0 {
                            self.exact += 1;
                            if after != before.queued_bytes + FRAME {
                                self.wrong.push(format!(
                                    "queued {} -> {after} for a {FRAME}-byte frame",
                                    before.queued_bytes
                                ));
                            }
                        }
                    }
                    Err(SendFailure {
                        error: Error::QueueFull { len, limit },
                        message,
                        ..
                    }) => {
                        let queued = ctx.metrics().queued_bytes() as usize;
                        if !(queued <= limit && queued + len > limit) {
                            self.wrong.push(format!(
                                "refused {len} bytes with {queued} of {limit} queued"
                            ));
                        }
                        self.kept = Some(message);
                        self.refusals += 1;
                        // The queue is full: let the peer start reading.
                        if let Some(go) = self.go.take() {
                            go.send(()).unwrap();
                        }
                        return;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            ctx.close(1000, "all sent").unwrap();
        }
    }
    impl Handler for Producer {
        fn on_activated(&mut self, ctx: &mut Context<'_>) {
            self.produce(ctx);
        }
        fn on_writable(&mut self, ctx: &mut Context<'_>) {
            self.writable += 1;
            let queued = ctx.metrics().queued_bytes();
            if queued != 0 {
                self.wrong
                    .push(format!("on_writable with {queued} bytes queued"));
            }
            self.produce(ctx);
        }
    }
    // Every mode whose hooks run on the client's thread (the threaded client has none).
    for mode in MODES.into_iter().filter(|m| *m != Mode::Threaded) {
        let (go_tx, go_rx) = bounded(1);
        let (url, server) = server_that_reads_after(go_rx);
        let strategy = match mode {
            Mode::NonBlocking(s) => s,
            _ => WaitStrategy::Readiness,
        };
        let config = small_queue().wait_strategy(strategy).build().unwrap();
        let mut producer = Producer {
            next: 0,
            kept: None,
            go: Some(go_tx),
            refusals: 0,
            writable: 0,
            exact: 0,
            wrong: Vec::new(),
        };
        let producer = within_deadline(move || {
            match mode {
                Mode::Blocking => BlockingClient::connect(&url, &config)
                    .unwrap()
                    .run(&mut producer),
                Mode::Set => {
                    let mut set = syncws::ClientSet::new().unwrap();
                    set.add(&url, &config, &mut producer).unwrap();
                    set.run();
                }
                _ => NonBlockingClient::connect(&url, &config)
                    .unwrap()
                    .run(&mut producer),
            }
            producer
        });
        assert!(producer.refusals > 0, "{mode:?}: the queue never filled");
        assert_eq!(
            producer.writable, producer.refusals,
            "{mode:?}: one on_writable per refusal"
        );
        assert!(
            producer.exact > 0,
            "{mode:?}: nothing queued behind the socket"
        );
        assert!(producer.wrong.is_empty(), "{mode:?}: {:?}", producer.wrong);
        let got = server.join().unwrap();
        let firsts: Vec<u32> = got
            .iter()
            .map(|m| u32::from_be_bytes(m.clone().into_data()[..4].try_into().unwrap()))
            .collect();
        assert_eq!(firsts, (0..N).collect::<Vec<_>>(), "{mode:?}");
    }
}
