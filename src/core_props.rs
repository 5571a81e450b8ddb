//! The core (`Driver` + `Session`) under random interleavings, against a scripted peer: frames
//! arriving in pieces, reads and writes that would block, write room given and withheld, sends,
//! closes and force-quits from another thread, pings, the peer's close, its reset, and a frame
//! that breaks the protocol; with each dispatcher the front-ends use (hooks, as the blocking,
//! non-blocking and set modes run them, and the threaded worker's channel with an application
//! that reads late). Whatever happens:
//!
//! - nothing we sent is on the wire twice, and what is there is in the order it was sent;
//! - every send that was accepted is on the wire or reported (`Closed`, `Unsent`, `QueueFull`),
//!   never both;
//! - the peer's messages reach the application once each, in order, with no gap;
//! - `on_quit` / `Event::Quit` comes once, last;
//! - the queue stays within its bound (plus the few control frames the core owes the peer).

use std::time::Instant;

use crossbeam_channel::Receiver;
use proptest::prelude::*;
use tungstenite::protocol::{Role, WebSocket};

use crate::driver::{Driver, Step};
use crate::handler::Callbacks;
use crate::session::Session;
use crate::stream::scripted::{ReadStep, Scripted};
use crate::stream::{Stream, Transport};
use crate::threaded::Forward;
use crate::{CloseInfo, Command, Config, Context, Error, Event, Handler, WaitStrategy};

/// What happens next.
#[derive(Debug, Clone)]
enum Act {
    /// The peer sends text message `n`, cut into `pieces` reads.
    PeerText {
        pieces: u8,
    },
    PeerPing,
    /// The peer starts the closing handshake.
    PeerClose,
    /// A frame with a reserved opcode: a protocol error (1002).
    PeerGarbage,
    /// The peer's connection ends without a Close (a reset).
    PeerGone,
    /// A read that would block, between the peer's bytes.
    WouldBlock,
    /// The socket takes this many more bytes.
    Room(u16),
    /// Another thread sends a message of this many bytes (never blocking).
    Send(u16),
    Close,
    ForceQuit,
    /// One pass of the loop.
    Pass,
    /// The threaded application reads up to this many events.
    AppReads(u8),
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => (1u8..4).prop_map(|pieces| Act::PeerText { pieces }),
        1 => Just(Act::PeerPing),
        1 => Just(Act::PeerClose),
        1 => Just(Act::PeerGarbage),
        1 => Just(Act::PeerGone),
        2 => Just(Act::WouldBlock),
        4 => (0u16..3000).prop_map(Act::Room),
        6 => (1u16..1500).prop_map(Act::Send),
        1 => Just(Act::Close),
        1 => Just(Act::ForceQuit),
        8 => Just(Act::Pass),
        3 => (0u8..4).prop_map(Act::AppReads),
    ]
}

/// The queue's bound in these runs: a few messages, so that it fills.
const QUEUE: usize = 4096;
/// What the core may queue past the bound on its own: a pong and a close reply.
const CONTROL_SLACK: usize = 2 * 131;

fn config() -> Config {
    Config::builder()
        .write_buffer_size(1024)
        .max_queued_bytes(QUEUE)
        .control_capacity(4)
        .control_bytes(8192)
        .build()
        .expect("a valid config")
}

/// An unmasked frame from the server.
fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    if payload.len() < 126 {
        f.push(payload.len() as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// Our complete frames in `bytes` (a frame cut short at the end is left out), fragments joined:
/// (opcode, payload).
fn client_messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut open: Option<(u8, Vec<u8>)> = None;
    while bytes.len() >= 2 {
        let fin = bytes[0] & 0x80 != 0;
        let opcode = bytes[0] & 0x0f;
        assert!(bytes[1] & 0x80 != 0, "client frames are masked");
        let (len, mut at) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => (
                u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if bytes.len() < at + 4 + len {
            break;
        }
        let key = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        at += 4;
        let payload: Vec<u8> = bytes[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        bytes = &bytes[at + len..];
        match (opcode, open.as_mut()) {
            (0, Some((_, data))) => data.extend_from_slice(&payload),
            (0, None) => panic!("a continuation with no message open"),
            (op, _) if op >= 8 => out.push((op, payload)),
            (op, _) => open = Some((op, payload)),
        }
        if fin && opcode < 8 {
            if let Some(m) = open.take() {
                out.push(m);
            }
        }
    }
    out
}

/// What the application saw, whichever way it was told.
#[derive(Debug, Default)]
struct Seen {
    texts: Vec<String>,
    closed: usize,
    unsent: usize,
    queue_full: usize,
    errors: Vec<String>,
    quits: usize,
    after_quit: usize,
}

impl Seen {
    fn error(&mut self, e: &Error) {
        match e {
            Error::Closed => self.closed += 1,
            Error::Unsent { messages } => self.unsent += messages,
            Error::QueueFull { .. } => self.queue_full += 1,
            _ => {}
        }
        self.errors.push(e.to_string());
    }
    fn any(&mut self) {
        if self.quits > 0 {
            self.after_quit += 1;
        }
    }
}

impl Handler for Seen {
    fn on_text_message(&mut self, _: &mut Context<'_>, text: &str) {
        self.any();
        self.texts.push(text.to_owned());
    }
    fn on_connection_closed(&mut self, _: &mut Context<'_>, _: &CloseInfo) {
        self.any();
    }
    fn on_error(&mut self, _: &mut Context<'_>, error: &Error) {
        self.any();
        self.error(error);
    }
    fn on_quit(&mut self) {
        self.any();
        self.quits += 1;
    }
}

impl Seen {
    fn event(&mut self, event: Event) {
        match event {
            Event::TextMessage(t) => {
                self.any();
                self.texts.push(t.as_str().to_owned());
            }
            Event::Error(e) => {
                self.any();
                self.error(&e);
            }
            Event::Quit => {
                self.any();
                self.quits += 1;
            }
            _ => self.any(),
        }
    }
}

/// The two ways the core reports: hooks, or the threaded worker's channel.
enum Mode {
    Hooks(Seen),
    Threaded {
        forward: Forward,
        events: Receiver<Event>,
        seen: Seen,
        /// The owner's stop and the nudge: alive while the worker runs.
        _alive: [crossbeam_channel::Sender<()>; 2],
    },
}

impl Mode {
    fn pass(&mut self, driver: &mut Driver) -> Step {
        match self {
            Mode::Hooks(seen) => driver.pass(&mut Callbacks(seen, None)),
            Mode::Threaded { forward, .. } => driver.pass(forward),
        }
    }

    fn app_reads(&mut self, n: usize) {
        if let Mode::Threaded { events, seen, .. } = self {
            for _ in 0..n {
                match events.try_recv() {
                    Ok(e) => seen.event(e),
                    Err(_) => break,
                }
            }
        }
    }

    /// The loop's end, as `Driver::run` does it; the application reads everything that is left
    /// (on another thread, as a real one would, since `quit` waits for room).
    fn finish(self, mut driver: Box<Driver>) -> Seen {
        match self {
            Mode::Hooks(mut seen) => {
                driver.finish(&mut Callbacks(&mut seen, None));
                seen
            }
            Mode::Threaded {
                mut forward,
                events,
                mut seen,
                _alive,
            } => {
                let reader = std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        match events.recv() {
                            Ok(e) => got.push(e),
                            Err(_) => return got,
                        }
                    }
                });
                driver.finish(&mut forward);
                drop(forward);
                for e in reader.join().expect("the reader") {
                    seen.event(e);
                }
                seen
            }
        }
    }
}

fn run(acts: Vec<Act>, threaded: bool) -> Result<(), TestCaseError> {
    let config = config();
    let stream = Stream::from(Transport::Scripted(Scripted::default()));
    let ws = WebSocket::from_raw_socket(stream, Role::Client, Some(config.websocket_config()));
    let session = Session::new(ws, None, &config);
    let (mut driver, sender, _shared) =
        Driver::new(session, WaitStrategy::BusySpin, &config, None).expect("a driver");
    let mut mode = if threaded {
        let (forward, events, alive) = Forward::for_test(2);
        Mode::Threaded {
            forward,
            events,
            seen: Seen::default(),
            _alive: alive,
        }
    } else {
        Mode::Hooks(Seen::default())
    };

    let mut peer_texts: Vec<String> = Vec::new();
    let mut accepted: Vec<String> = Vec::new();
    let mut done = false;
    let mut peer_closed = false;
    let mut peer_gone = false;
    let check_queue = |driver: &Driver| -> Result<(), TestCaseError> {
        let queued = driver.session.metrics().queued_bytes() as usize;
        prop_assert!(
            queued <= QUEUE + CONTROL_SLACK,
            "queued {queued} bytes against a bound of {QUEUE}"
        );
        Ok(())
    };

    let step = |driver: &mut Driver, mode: &mut Mode, done: &mut bool| {
        if !*done && matches!(mode.pass(driver), Step::Done) {
            *done = true;
        }
    };

    for act in acts {
        let script = driver.session.scripted();
        match act {
            Act::PeerText { pieces } if !peer_closed && !peer_gone => {
                let text = format!("p{:05}", peer_texts.len());
                let frame = server_frame(1, text.as_bytes());
                let cut = frame.len().div_ceil(usize::from(pieces));
                for piece in frame.chunks(cut) {
                    script.reads.push_back(ReadStep::Data(piece.to_vec()));
                    script.reads.push_back(ReadStep::WouldBlock);
                }
                peer_texts.push(text);
            }
            Act::PeerPing if !peer_closed && !peer_gone => {
                script
                    .reads
                    .push_back(ReadStep::Data(server_frame(9, b"hb")));
            }
            Act::PeerClose if !peer_closed && !peer_gone => {
                script
                    .reads
                    .push_back(ReadStep::Data(server_frame(8, &[0x03, 0xe8])));
                peer_closed = true;
            }
            Act::PeerGarbage if !peer_closed && !peer_gone => {
                script
                    .reads
                    .push_back(ReadStep::Data(server_frame(3, b"?")));
                peer_closed = true;
            }
            Act::PeerGone if !peer_gone => {
                script.reads.push_back(ReadStep::Eof);
                peer_gone = true;
            }
            Act::WouldBlock => script.reads.push_back(ReadStep::WouldBlock),
            Act::Room(n) => script.write_budget += usize::from(n),
            Act::Send(size) => {
                let mut text = format!("m{:05}", accepted.len());
                text.extend(std::iter::repeat_n('.', usize::from(size)));
                if sender
                    .try_send(Command::SendText(text.clone().into()))
                    .is_ok()
                {
                    accepted.push(text);
                }
            }
            Act::Close => {
                let _ = sender.close(1000, "bye");
            }
            Act::ForceQuit => {
                let _ = sender.force_quit();
            }
            Act::Pass => {
                step(&mut driver, &mut mode, &mut done);
                check_queue(&driver)?;
            }
            Act::AppReads(n) => mode.app_reads(usize::from(n)),
            _ => {}
        }
    }

    // The end: the application closes and reads what it is given, the socket takes what it
    // is handed, and the peer answers a Close with its own and hangs up.
    let _ = sender.close(1000, "end");
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while !done {
        prop_assert!(Instant::now() < deadline, "the connection never ended");
        let script = driver.session.scripted();
        script.write_budget += 1 << 16;
        let ours_closed = client_messages(&script.written)
            .iter()
            .any(|(op, _)| *op == 8);
        if ours_closed && !peer_closed && !peer_gone {
            script
                .reads
                .push_back(ReadStep::Data(server_frame(8, &[0x03, 0xe8])));
            peer_closed = true;
        } else if ours_closed && !peer_gone && script.reads.is_empty() {
            script.reads.push_back(ReadStep::Eof);
            peer_gone = true;
        }
        mode.app_reads(8);
        step(&mut driver, &mut mode, &mut done);
        check_queue(&driver)?;
    }
    let written = std::mem::take(&mut driver.session.scripted().written);
    let seen = mode.finish(driver);

    // Ours on the wire: each once, in order, and only what was accepted.
    let wire: Vec<String> = client_messages(&written)
        .into_iter()
        .filter(|(op, _)| *op == 1)
        .map(|(_, p)| String::from_utf8(p).expect("UTF-8 on the wire"))
        .collect();
    prop_assert!(
        accepted.starts_with(&wire),
        "the wire holds the accepted sends in order, each once: {} on the wire of {} accepted",
        wire.len(),
        accepted.len()
    );
    let reported = seen.closed + seen.unsent + seen.queue_full;
    prop_assert_eq!(
        wire.len() + reported,
        accepted.len(),
        "every accepted send on the wire or reported, not both: {} on the wire, {} closed, {} \
         unsent, {} too big; errors {:?}",
        wire.len(),
        seen.closed,
        seen.unsent,
        seen.queue_full,
        seen.errors
    );
    // Theirs to the application: once each, in order, no gap.
    prop_assert!(
        peer_texts.starts_with(&seen.texts),
        "the peer's messages delivered once each in order: {:?} of {:?}",
        seen.texts,
        peer_texts
    );
    prop_assert_eq!(seen.quits, 1, "on_quit once");
    prop_assert_eq!(seen.after_quit, 0, "nothing after on_quit");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_core_keeps_its_promises_with_hooks(acts in prop::collection::vec(act(), 0..120)) {
        run(acts, false)?;
    }

    #[test]
    fn the_core_keeps_its_promises_with_the_threaded_worker(
        acts in prop::collection::vec(act(), 0..120)
    ) {
        run(acts, true)?;
    }
}
