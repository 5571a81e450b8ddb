//! The edges of a client's life: any duration the API accepts works, a close that may not be
//! sent is refused at once, and a client dropped without running closes its connection and
//! leaves nothing accepted unaccounted for where a handler exists to hear it.

mod util;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use syncws::{
    BlockingClient, ClientSet, Command, Config, Context, Error, Handler, NonBlockingClient,
    Reconnect,
};
use tungstenite::Message;
use util::*;

/// Review scenario B: `handshake_timeout(Some(Duration::MAX))` passed `build()` and panicked
/// later on `Instant + Duration`. Every duration, at its largest, now works in every mode.
#[test]
fn every_duration_at_its_largest_works_in_every_mode() {
    for mode in MODES {
        let (url, server) = ws_server(echo);
        let builder = Config::builder()
            .connect_timeout(Some(Duration::MAX))
            .handshake_timeout(Some(Duration::MAX))
            .close_timeout(Duration::MAX)
            .read_timeout(Some(Duration::MAX))
            .write_timeout(Some(Duration::MAX))
            .ping_interval(Some(Duration::MAX))
            .pong_timeout(Duration::MAX)
            .shutdown_timeout(Duration::MAX)
            .reconnect(Some(
                Reconnect::new()
                    .min_delay(Duration::MAX)
                    .max_delay(Duration::MAX),
            ));
        let out = drive(
            mode,
            &url,
            builder,
            Box::new(|rec, act| match rec {
                Rec::Activated(_) => act.text("hi").unwrap(),
                Rec::Text(_) => act.close(1000, "done").unwrap(),
                _ => {}
            }),
        );
        assert_eq!(out.texts(), ["hi"], "{mode:?}");
        assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
        assert_eq!(server.join().unwrap(), 1, "{mode:?}");
    }
}

/// `send_timeout` with `Duration::MAX` waits for room, as crossbeam's does (it panicked).
#[test]
fn a_send_with_the_longest_timeout_waits_for_room() {
    let (url, server) = ws_server(echo);
    let config = Config::builder().control_capacity(1).build().unwrap();
    let client = BlockingClient::connect(&url, &config).unwrap();
    let handle = client.handle();
    handle.send_text("first").unwrap();
    // The channel is full until the client runs: this send waits, then goes.
    let sender = std::thread::spawn(move || {
        handle.send_timeout(Command::SendText("second".into()), Duration::MAX)
    });
    struct CloseAfter(usize);
    impl Handler for CloseAfter {
        fn on_text_message(&mut self, ctx: &mut Context<'_>, _: &str) {
            self.0 -= 1;
            if self.0 == 0 {
                ctx.close(1000, "done").unwrap();
            }
        }
    }
    // Run on a thread joined with a deadline: a send that never gets room would hang here.
    let run = std::thread::spawn(move || client.run(&mut CloseAfter(2)));
    assert!(sender.join().unwrap().is_ok());
    join_within(run, TEST_DEADLINE);
    assert_eq!(server.join().unwrap(), 2);
}

/// Review scenario C: `close(1005, ..)` on a full channel blocked (it went in order with the
/// sends) and its error came later through `on_error`. It is refused at once now, with
/// nothing sent, whatever the channel holds.
#[test]
fn a_close_that_may_not_be_sent_is_refused_at_once() {
    let (url, server) = ws_server(|mut ws| read_until_close(&mut ws).1.map(|f| u16::from(f.code)));
    let config = Config::builder().control_capacity(1).build().unwrap();
    let client = BlockingClient::connect(&url, &config).unwrap();
    let handle = client.handle();
    handle.send_text("fills the channel").unwrap();
    for (code, reason) in [
        (1005u16, ""),
        (1006, ""),
        (5000, ""),
        (1000, &"x".repeat(124)[..]),
    ] {
        match handle.close(code, reason) {
            Err(Error::InvalidCloseCode(c)) => assert_eq!(c, code),
            Err(Error::CloseReasonTooLong(n)) => assert_eq!(n, 124),
            other => panic!("close({code}): {other:?}"),
        }
    }
    // A valid one still goes, beside the full channel.
    handle.close(4001, "fine").unwrap();
    let run = std::thread::spawn(move || client.run(&mut Quiet));
    join_within(run, TEST_DEADLINE);
    assert_eq!(server.join().unwrap(), Some(4001));
    assert!(matches!(handle.close(1000, ""), Err(Error::Closed)));
}

/// A handler that does nothing.
struct Quiet;
impl Handler for Quiet {}

/// What a handler heard, shared with the test.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<Vec<String>>>);

impl Handler for Heard {
    fn on_error(&mut self, _: &mut Context<'_>, e: &Error) {
        self.0.lock().unwrap().push(format!("error: {e}"));
    }
    fn on_quit(&mut self) {
        self.0.lock().unwrap().push("quit".into());
    }
}

/// Review scenario D: a blocking or non-blocking client dropped without `run` reset the
/// connection with no Close, and its handle kept accepting. Now the peer gets a Close 1001 and
/// the handle refuses from then on.
#[test]
fn a_client_dropped_without_run_closes_with_1001_and_its_handle_refuses() {
    for blocking in [true, false] {
        let (url, server) = ws_server(|mut ws| loop {
            match ws.read() {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(e) => panic!("no close: {e}"),
            }
        });
        let handle = if blocking {
            let client = BlockingClient::connect(&url, &Config::default()).unwrap();
            let handle = client.handle();
            handle.send_text("never sent").unwrap();
            drop(client);
            handle
        } else {
            let client = NonBlockingClient::connect(&url, &Config::default()).unwrap();
            let handle = client.handle();
            drop(client);
            handle
        };
        assert_eq!(server.join().unwrap(), Some(1001), "blocking: {blocking}");
        assert!(handle.send_text("later").is_err(), "blocking: {blocking}");
    }
}

/// Review scenario G: a `ClientSet` dropped unrun dropped its handlers without `on_quit` and
/// every accepted send without a word. Each connection's handler now hears each send as not
/// carried out, then `on_quit`, exactly once.
#[test]
fn a_set_dropped_without_run_reports_every_send_and_quits_every_handler() {
    let mut set = ClientSet::new().unwrap();
    let heard: Vec<Heard> = (0..3).map(|_| Heard::default()).collect();
    let mut senders = Vec::new();
    for h in &heard {
        // A port nothing listens on: the set never runs, so nothing is dialed anyway.
        let (_, sender) = set
            .add("ws://127.0.0.1:9/", &Config::default(), h.clone())
            .unwrap();
        sender.send_text("one").unwrap();
        sender.send_text("two").unwrap();
        senders.push(sender);
    }
    // One more added through a handle, never taken in by a run.
    let late = Heard::default();
    let (_, sender) = set
        .handle()
        .add("ws://127.0.0.1:9/", &Config::default(), late.clone())
        .unwrap();
    sender.send_text("three").unwrap();
    drop(set);
    for h in heard.iter().chain([&late]) {
        let got = h.0.lock().unwrap().clone();
        let errors = got.iter().filter(|g| g.starts_with("error")).count();
        assert!(errors >= 1, "{got:?}");
        assert_eq!(got.last().map(String::as_str), Some("quit"), "{got:?}");
        assert_eq!(got.iter().filter(|g| *g == "quit").count(), 1, "{got:?}");
    }
    assert_eq!(heard[0].0.lock().unwrap().len(), 3, "two sends, then quit");
    for s in senders {
        assert!(s.send_text("after").is_err());
    }
}

fn join_within<T>(handle: std::thread::JoinHandle<T>, deadline: Duration) -> T {
    let start = std::time::Instant::now();
    while !handle.is_finished() {
        assert!(
            start.elapsed() < deadline,
            "did not finish within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.join().unwrap()
}

/// Review item 7: messages still in the queue when a connection fails were dropped with one
/// generic error, and `WhileDisconnected::Queue` did not keep them. Now they are counted
/// (`Error::Unsent`) or, with `Queue`, sent again on the next connection: the peer then gets an
/// unbroken run of them, each once, in order.
#[test]
fn messages_left_queued_by_a_failed_connection_are_reported_or_sent_again() {
    const N: usize = 20;
    const SIZE: usize = 64 << 10;
    for queue in [false, true] {
        let (listener, addr) = {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_recv_buffer_size(16 << 10).unwrap();
            socket
                .bind(
                    &"127.0.0.1:0"
                        .parse::<std::net::SocketAddr>()
                        .unwrap()
                        .into(),
                )
                .unwrap();
            socket.listen(4).unwrap();
            let listener: std::net::TcpListener = socket.into();
            let addr = listener.local_addr().unwrap();
            (listener, addr)
        };
        let (reset_tx, reset_rx) = crossbeam_channel::bounded::<()>(1);
        let server = std::thread::spawn(move || {
            // The first connection reads nothing, then is reset (no close handshake).
            let (tcp, _) = listener.accept().unwrap();
            let ws = tungstenite::accept(tcp.try_clone().unwrap()).unwrap();
            reset_rx.recv_timeout(TEST_DEADLINE).unwrap();
            socket2::SockRef::from(&tcp)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop((ws, tcp));
            if !queue {
                return Vec::new();
            }
            // The second reads what comes, and says when the last one is in.
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
            let mut ws = tungstenite::accept(tcp).unwrap();
            let mut got = Vec::new();
            loop {
                match ws.read().unwrap() {
                    Message::Binary(b) => {
                        got.push(b[0]);
                        if usize::from(b[0]) == N - 1 {
                            ws.send(Message::text("all in")).unwrap();
                        }
                    }
                    Message::Close(_) => {
                        let _ = ws.flush();
                        return got;
                    }
                    _ => {}
                }
            }
        });
        struct Sender {
            first: bool,
            reset: crossbeam_channel::Sender<()>,
            heard: Heard,
        }
        impl Handler for Sender {
            fn on_activated(&mut self, ctx: &mut Context<'_>) {
                if std::mem::take(&mut self.first) {
                    for i in 0..N {
                        ctx.send_binary(&vec![i as u8; SIZE]).unwrap();
                    }
                    self.reset.send(()).unwrap();
                }
            }
            fn on_text_message(&mut self, ctx: &mut Context<'_>, _: &str) {
                ctx.close(1000, "done").unwrap();
            }
            fn on_error(&mut self, ctx: &mut Context<'_>, e: &Error) {
                self.heard.on_error(ctx, e);
            }
        }
        let mut builder = Config::builder()
            .send_buffer_size(Some(16 << 10))
            .max_queued_bytes(16 << 20);
        if queue {
            builder = builder
                .reconnect(Some(Reconnect::new().min_delay(Duration::from_millis(10))))
                .while_disconnected(syncws::WhileDisconnected::Queue {
                    max_bytes: 16 << 20,
                });
        }
        let client =
            BlockingClient::connect(&format!("ws://{addr}/"), &builder.build().unwrap()).unwrap();
        let metrics = client.metrics();
        let heard = Heard::default();
        let mut sender = Sender {
            first: true,
            reset: reset_tx,
            heard: heard.clone(),
        };
        let run = std::thread::spawn(move || client.run(&mut sender));
        join_within(run, TEST_DEADLINE);
        let got = server.join().unwrap();
        let errors = heard.0.lock().unwrap().clone();
        let unsent: Vec<&String> = errors
            .iter()
            .filter(|e| e.contains("not yet sent"))
            .collect();
        if queue {
            // An unbroken run ending with the last, each once: the ones the first socket had
            // taken (and lost with it) before, none twice.
            assert!(!got.is_empty());
            let first = usize::from(got[0]);
            assert_eq!(got, (first..N).map(|i| i as u8).collect::<Vec<_>>());
            assert!(unsent.is_empty(), "{errors:?}");
            assert_eq!(metrics.messages_unsent(), 0);
        } else {
            assert_eq!(unsent.len(), 1, "{errors:?}");
            let n = metrics.messages_unsent();
            assert!((1..=N as u64).contains(&n), "{n}");
            assert!(
                unsent[0].contains(&format!("with {n} accepted")),
                "{errors:?}"
            );
        }
    }
}
