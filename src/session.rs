//! The core: the only code that reads, writes and flushes the WebSocket and interprets its
//! errors. Every mode (and the server side) drives a `Session`; they differ only in how they
//! wait between steps (see `driver.rs` and `wait.rs`).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocket};
use tungstenite::{Bytes, Message};

use crate::close::{check_close, CloseInfo, Initiator};
use crate::command::{Command, Inbox, Stop};
use crate::deadline::after;
use crate::deflate::outbound::Outbound;
use crate::error::{classify, Classified, Error, TimeoutKind};
use crate::frame;
use crate::heartbeat::{Beat, Heartbeat};
use crate::io_outcome::{io_outcome, IoOutcome};
use crate::linger::FrameSkipper;
use crate::outbox::Outbox;
use crate::stream::{Stream, Transport};
use crate::{Config, Handshake, Metrics, ReconnectAttempt, SharedFrame};

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// We sent Close; waiting for the peer's Close (`acked`) and then the end of TCP.
    ClosingByUs {
        deadline: Instant,
        acked: bool,
    },
    /// The peer sent Close and we answered; waiting for the end of TCP.
    ClosingByPeer {
        deadline: Instant,
    },
    /// The connection failed and we sent a Close with the error's code; reading and discarding
    /// until the peer's Close has gone by or it closes TCP, so our Close is not lost to a reset.
    Lingering {
        deadline: Instant,
        frames: FrameSkipper,
    },
    Done,
}

/// Result of one pass over the readable input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadPass {
    /// Messages dispatched in this pass.
    pub(crate) messages: usize,
    /// The budget ran out before the socket said "would block": do not wait before the next
    /// pass (readiness waits are edge-triggered).
    pub(crate) more: bool,
    /// Reading stopped because the dispatcher had no room. What was read ahead is in user-space
    /// buffers that no socket readiness will announce: once there is room, pass again.
    pub(crate) stopped_for_room: bool,
}

/// Sends made while a reconnecting client is between connections.
#[derive(Debug)]
enum Disconnected {
    Refuse,
    Hold {
        queue: VecDeque<Message>,
        bytes: usize,
        max: usize,
    },
}

/// One WebSocket connection, in either role.
#[derive(Debug)]
pub(crate) struct Session {
    ws: WebSocket<Stream>,
    handshake: Option<Handshake>,
    /// Client frames are masked (RFC 6455 5.3); a server's are not.
    masked: bool,
    /// A failed server connection has said it is done writing (FIN after its Close).
    fin_sent: bool,
    /// Queued bytes past this are written at once instead of waiting for the pass's flush.
    write_buffer_size: usize,
    phase: Phase,
    close_timeout: Duration,
    write_timeout: Option<Duration>,
    queue_limit: usize,
    /// The last flush left data queued because the socket was full.
    write_blocked: bool,
    /// When the socket last took queued bytes, and its byte counter then (for `write_timeout`).
    write_progress: (Instant, u64),
    /// Errors found outside a dispatch (sends, flushes, deadlines), reported by the driver.
    errors: VecDeque<Error>,
    inbox: Option<Inbox>,
    metrics: Arc<Metrics>,
    heartbeat: Option<Heartbeat>,
    /// The last ping we sent (any ping), to time its pong.
    last_ping: Option<(Instant, Bytes)>,
    /// The user closed, force-quit or dropped: never reconnect.
    user_ended: bool,
    /// Set while a reconnecting client waits for its next connection.
    disconnected: Option<Disconnected>,
    /// Compresses outgoing messages when permessage-deflate was agreed (and our window allows).
    deflate: Option<Outbound>,
    /// A close asked for from another thread: sent once the sends accepted before it are
    /// queued, and the connection ends at the deadline whatever happens.
    close_request: Option<(CloseCode, String, Instant)>,
    /// A send from a hook met a full queue: call `on_writable` once the queue has drained.
    refused: bool,
    /// Since when reading has been held up because the application is behind (a threaded
    /// client's full event channel): the deadlines that measure the peer stand still.
    paused_since: Option<Instant>,
    /// The data messages in the outbox, in order: where each ends (in the outbox's `taken`
    /// count), and the message itself when a reconnect would send it again (`keep_unsent`).
    /// Entries leave as the socket takes them; what is left when the connection ends was not
    /// sent, and is reported (or kept).
    in_flight: VecDeque<(u64, Option<Message>)>,
    /// A reconnecting client with `WhileDisconnected::Queue`: what a connection's end leaves
    /// unsent goes to the next connection.
    keep_unsent: bool,
    /// What the end left unsent, for the next connection (see `enter_reconnect`).
    unsent: Vec<Message>,
    /// Bad input was read, and the dispatcher's application answers on its own time (see
    /// `Dispatch::answers_later`): the failure waits, reading nothing more, until the
    /// application has taken what it was given and its answers have gone out.
    settling: Option<Box<Settling>>,
}

/// A failure waiting for the application's answers to what it was given before it.
#[derive(Debug)]
struct Settling {
    error: Error,
    code: Option<CloseCode>,
    /// Fail once the application has taken everything and nothing more came until then.
    quiet_until: Instant,
    /// Fail at this point whatever the application does.
    latest: Instant,
}

/// How long the application must stay quiet (no answer, nothing left to take) before a
/// settling failure goes ahead: an answer is usually microseconds after its event is taken.
const SETTLE_QUIET: Duration = Duration::from_millis(20);

/// What the session reports to, with owned payloads. The core's own callback interface: user
/// `Handler`s are adapted by `handler::Callbacks` (which lends each hook a `Context`); the
/// threaded client forwards owned payloads to its channel without copying.
pub(crate) trait Dispatch {
    fn activated(&mut self, session: &mut Session);
    fn message(&mut self, session: &mut Session, message: Message);
    fn closed(&mut self, session: &mut Session, close: CloseInfo);
    fn error(&mut self, session: &mut Session, error: Error);
    fn idle(&mut self, session: &mut Session);
    fn reconnecting(&mut self, session: &mut Session, attempt: ReconnectAttempt);
    fn quit(&mut self);
    fn writable(&mut self, _session: &mut Session) {}
    /// The owner is gone and wants the connection dropped (the threaded client's drop).
    fn stop_requested(&mut self) -> bool {
        false
    }
    /// Hand on whatever reports wait for room, as far as the receiver takes them now; true
    /// if the dispatcher can take more. Called once per pass, at fixed points. A dispatcher
    /// that hands reports on to someone who fell behind (the threaded client's full event
    /// channel) says no, and the core stops reading, while it keeps flushing, taking commands
    /// and checking deadlines. Dispatch itself never blocks.
    fn make_room(&mut self) -> bool {
        true
    }
    /// Whether another message can be dispatched now, without handing anything on: asked
    /// before each message read.
    fn has_room(&self) -> bool {
        true
    }
    /// Whether commands may be carried out now (each failed command adds a report; a
    /// dispatcher far behind says no, so its reports stay bounded).
    fn takes_commands(&mut self) -> bool {
        true
    }
    /// Whether the reports handed on may still be answered later, on the application's own
    /// time (the threaded client's): a connection failed by bad input then lets those answers
    /// go out before its Close, as a hook's answer does in the callback modes (it runs before
    /// the next frame is read).
    fn answers_later(&self) -> bool {
        false
    }
    /// Whether the application has taken every report handed on to it.
    fn drained(&self) -> bool {
        true
    }
    /// While not `accepting`: wait until it may be again, a command arrives on `commands`, a
    /// stop is asked for, or `deadline` passes.
    fn wait_for_room(
        &mut self,
        _deadline: Option<std::time::Instant>,
        _commands: Option<&crossbeam_channel::Receiver<crate::Command>>,
    ) {
    }
}

/// The largest control frame on the wire: a masked one with a 125-byte payload.
const MAX_CONTROL_FRAME: usize = 2 + 4 + 125;
/// Messages read in one pass before commands and deadlines get a turn.
const READ_BUDGET: usize = 1024;
/// Commands carried out in one pass before reads get a turn.
const COMMAND_BUDGET: usize = 1024;

impl Session {
    /// A client connection whose handshake is done.
    pub(crate) fn new(
        mut ws: WebSocket<Stream>,
        handshake: Option<Handshake>,
        config: &Config,
    ) -> Self {
        // From here on every write goes through the outbox, ours and tungstenite's alike.
        ws.get_mut().start_session();
        let written = ws.get_ref().bytes_written();
        let heartbeat = Heartbeat::new(config, ws.get_ref().bytes_read());
        let deflate = match (
            handshake.as_ref().and_then(Handshake::deflate),
            config.deflate(),
        ) {
            (Some(agreed), Some(settings)) => Outbound::new(agreed, Role::Client, settings),
            _ => None,
        };
        Session {
            ws,
            handshake,
            masked: true,
            fin_sent: false,
            write_buffer_size: config.write_buffer_size(),
            phase: Phase::Open,
            close_timeout: config.close_timeout(),
            write_timeout: config.write_timeout(),
            queue_limit: config.max_queued_bytes(),
            write_blocked: false,
            write_progress: (Instant::now(), written),
            errors: VecDeque::new(),
            inbox: None,
            metrics: Arc::new(Metrics::default()),
            heartbeat,
            last_ping: None,
            user_ended: false,
            disconnected: None,
            deflate,
            close_request: None,
            refused: false,
            paused_since: None,
            in_flight: VecDeque::new(),
            keep_unsent: false,
            unsent: Vec::new(),
            settling: None,
        }
    }

    /// A client that has no connection yet (see `Transport::Detached`): over before it starts,
    /// so it reads and writes nothing; it holds the inbox and the counters that the first
    /// connection's session adopts.
    pub(crate) fn detached(config: &Config) -> Self {
        let stream = Stream::from(Transport::Detached);
        let ws = WebSocket::from_raw_socket(stream, Role::Client, Some(config.websocket_config()));
        let mut session = Session::new(ws, None, config);
        session.phase = Phase::Done;
        session
    }

    /// A server connection whose handshake is done: its frames are not masked, and it
    /// compresses with `outbound` when permessage-deflate was agreed.
    pub(crate) fn server(
        ws: WebSocket<Stream>,
        config: &Config,
        outbound: Option<Outbound>,
    ) -> Self {
        let mut session = Session::new(ws, None, config);
        session.masked = false;
        session.deflate = outbound;
        session
    }

    /// The scripted stream under a test session.
    #[cfg(test)]
    pub(crate) fn scripted(&mut self) -> &mut crate::stream::scripted::Scripted {
        match self.ws.get_mut().transport_mut() {
            crate::stream::Transport::Scripted(s) => s,
            _ => unreachable!("not a scripted session"),
        }
    }

    #[cfg(test)]
    pub(crate) fn set_outbound(&mut self, outbound: Option<Outbound>) {
        self.deflate = outbound;
    }

    /// The user ended the connection (close, force-quit, drop): it must not be reconnected.
    pub(crate) fn user_ended(&self) -> bool {
        self.user_ended
    }

    /// Messages a connection's end leaves unsent are sent again on the next connection (a
    /// reconnecting client with `WhileDisconnected::Queue`), not reported.
    pub(crate) fn keep_unsent(&mut self, keep: bool) {
        self.keep_unsent = keep;
    }

    /// This session is over and the client will reconnect: from now on sends are held or
    /// refused as `policy` says. What its end left unsent is held first, in order.
    pub(crate) fn enter_reconnect(&mut self, policy: crate::WhileDisconnected) {
        let unsent = std::mem::take(&mut self.unsent);
        self.disconnected = Some(match policy {
            crate::WhileDisconnected::Queue { max_bytes } => Disconnected::Hold {
                bytes: unsent.iter().map(Message::len).sum(),
                queue: unsent.into(),
                max: max_bytes,
            },
            _ => {
                self.report_unsent(unsent.len());
                Disconnected::Refuse
            }
        });
    }

    fn report_unsent(&mut self, messages: usize) {
        if messages > 0 {
            self.metrics.unsent(messages);
            self.errors.push_back(Error::Unsent { messages });
        }
    }

    /// Take over what outlives a connection: the command inbox, the counters, and messages
    /// held while disconnected, which go first in the inbox: they are sent by the passes after
    /// `on_activated` as the new socket takes them, like any other command.
    pub(crate) fn adopt(&mut self, old: &mut Session) {
        self.inbox = old.inbox.take();
        self.metrics = old.metrics.clone();
        self.keep_unsent = old.keep_unsent;
        if let (Some(Disconnected::Hold { queue, .. }), Some(inbox)) =
            (old.disconnected.take(), self.inbox.as_mut())
        {
            inbox.hold_first(queue.into_iter().filter_map(|m| match m {
                Message::Text(t) => Some(Command::SendText(t)),
                Message::Binary(b) => Some(Command::SendBinary(b)),
                Message::Ping(p) => Some(Command::SendPing(p)),
                Message::Pong(p) => Some(Command::SendPong(p)),
                // Only data and control payloads are ever held (closing ends reconnecting).
                Message::Close(_) | Message::Frame(_) => None,
            }));
        }
    }

    /// Messages held while disconnected, when reconnecting gives up: report them as not sent.
    pub(crate) fn drop_held(&mut self) {
        if let Some(Disconnected::Hold { queue, .. }) = &mut self.disconnected {
            if !queue.is_empty() {
                let n = queue.len();
                queue.clear();
                tracing::warn!(messages = n, "reconnecting gave up; held messages not sent");
                self.report_unsent(n);
            }
        }
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn set_inbox(&mut self, inbox: Inbox) {
        self.inbox = Some(inbox);
    }

    pub(crate) fn inbox(&self) -> Option<&Inbox> {
        self.inbox.as_ref()
    }

    /// The last flush left bytes queued because the socket was full.
    pub(crate) fn write_blocked(&self) -> bool {
        self.write_blocked
    }

    /// Commands can be carried out now, with no socket event to announce them: a stop, new
    /// commands (if the dispatcher `takes` them now), or a held send whose queue has drained.
    pub(crate) fn commands_ready(&self, takes: bool) -> bool {
        self.inbox.as_ref().is_some_and(|i| {
            i.shared().stop_waiting()
                || ((takes || self.close_request.is_some()) && i.has_work())
                || (i.is_held() && !self.write_blocked)
        })
    }

    /// A send from a hook was refused by a full queue, and the queue has drained since: time
    /// for `on_writable` (once).
    pub(crate) fn take_writable(&mut self) -> bool {
        let drained = self.refused && !self.write_blocked && self.phase == Phase::Open;
        if drained {
            self.refused = false;
        }
        drained
    }

    pub(crate) fn stream(&self) -> &Stream {
        self.ws.get_ref()
    }

    /// The socket may have new data (see `TcpConn::rearm`).
    pub(crate) fn rearm_reads(&mut self) {
        self.ws.get_mut().rearm();
    }

    /// The peer closed its side: every read goes to the kernel from now on.
    pub(crate) fn stop_read_hints(&mut self) {
        self.ws.get_mut().stop_read_hints();
    }

    pub(crate) fn handshake(&self) -> Option<&Handshake> {
        self.handshake.as_ref()
    }

    /// Our queue is at its bound (what is over it is the core's own frames: pongs, a close
    /// reply): reading waits for the peer to take what we owe it first, so a peer that sends
    /// and never reads cannot make us queue without end.
    pub(crate) fn reads_held(&self) -> bool {
        // tungstenite queues a pong as it reads a ping and writes it at its next read: stop
        // while two of them would still fit, so the bound holds (an empty queue always reads).
        let queued = self.queued();
        queued > 0 && queued + 2 * MAX_CONTROL_FRAME > self.queue_limit
    }

    /// A settling failure (see `settling`) goes ahead once the application has taken
    /// everything (`drained`) and stayed quiet, or at its latest.
    pub(crate) fn check_settled(&mut self, drained: bool, now: Instant) {
        let Some(s) = &mut self.settling else {
            return;
        };
        if !drained {
            s.quiet_until = after(now, SETTLE_QUIET).min(s.latest);
        }
        if now >= s.latest || (drained && now >= s.quiet_until) {
            let s = self.settling.take().expect("checked above");
            self.fail(s.error, s.code);
        }
    }

    /// Reading is held up for the application (see `paused_since`), from `now`.
    pub(crate) fn pause(&mut self, now: Instant) {
        self.paused_since.get_or_insert(now);
    }

    /// The application has room again: the deadlines that measure the peer move on by the
    /// time reading was held up, and that time is returned.
    pub(crate) fn resume(&mut self, now: Instant) -> Duration {
        let Some(since) = self.paused_since.take() else {
            return Duration::ZERO;
        };
        let by = now.saturating_duration_since(since);
        match &mut self.phase {
            Phase::ClosingByUs { deadline, .. }
            | Phase::ClosingByPeer { deadline }
            | Phase::Lingering { deadline, .. } => *deadline = after(*deadline, by),
            Phase::Open | Phase::Done => {}
        }
        if let Some(hb) = &mut self.heartbeat {
            hb.shift(by);
        }
        by
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused_since.is_some()
    }

    /// Open, and no close has been asked for.
    pub(crate) fn is_open(&self) -> bool {
        self.phase == Phase::Open && self.close_request.is_none()
    }

    pub(crate) fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub(crate) fn take_error(&mut self) -> Option<Error> {
        self.errors.pop_front()
    }

    // ----- sending --------------------------------------------------------------------------

    /// Queue a message from a hook. A refusal by the full queue earns an `on_writable` call
    /// once the queue drains.
    pub(crate) fn send(&mut self, message: Message) -> Result<(), Error> {
        self.send_outgoing(message, None)
    }

    /// Queue a shared frame from a hook (see [`send`](Self::send)).
    pub(crate) fn send_shared(&mut self, frame: &SharedFrame) -> Result<(), Error> {
        self.send_outgoing(frame.message().clone(), Some(frame.wire()))
    }

    fn send_outgoing(&mut self, message: Message, wire: Option<&Bytes>) -> Result<(), Error> {
        if self.close_request.is_some() {
            return Err(Error::Closed);
        }
        let result = self.queue_outgoing(message, wire);
        if let Err(Error::QueueFull { .. }) = result {
            self.refused = true;
        }
        result
    }

    fn queue(&mut self, message: Message) -> Result<(), Error> {
        self.queue_outgoing(message, None)
    }

    /// Queue a message (`wire`: its finished unmasked frame, when it has one). It is written
    /// when the loop next flushes (before it waits) or at once when `write_buffer_size` bytes
    /// are queued. A full socket keeps it queued, exactly once.
    fn queue_outgoing(&mut self, message: Message, wire: Option<&Bytes>) -> Result<(), Error> {
        if let Message::Ping(p) | Message::Pong(p) = &message {
            if p.len() > 125 {
                return Err(Error::ControlPayloadTooLong(p.len()));
            }
        }
        if self.phase != Phase::Open {
            return self.send_while_closed(message);
        }
        let data_len = match &message {
            Message::Text(t) => Some(t.len()),
            Message::Binary(b) => Some(b.len()),
            Message::Ping(p) => {
                self.last_ping = Some((Instant::now(), p.clone()));
                None
            }
            _ => None,
        };
        // Kept only when a reconnect would send it again (a cheap reference count).
        let keep = (self.keep_unsent && data_len.is_some()).then(|| message.clone());
        let result = match wire {
            // A finished frame fits a connection that neither masks nor compresses.
            Some(wire) if !self.masked && self.deflate.is_none() => self.write_wire(wire),
            _ => self.write(message),
        };
        if result.is_ok() {
            if let Some(len) = data_len {
                self.metrics.sent(len);
                if let Some(outbox) = self.stream().outbox() {
                    let end = outbox.taken() + outbox.len() as u64;
                    self.in_flight.push_back((end, keep));
                    self.sent_out();
                }
            }
            if self.write_blocked {
                self.metrics.queued();
            }
        }
        result
    }

    fn send_while_closed(&mut self, message: Message) -> Result<(), Error> {
        match &mut self.disconnected {
            None => Err(Error::Closed),
            Some(Disconnected::Refuse) => Err(Error::Disconnected),
            Some(Disconnected::Hold { queue, bytes, max }) => {
                let len = message.len();
                if *bytes + len > *max {
                    return Err(Error::QueueFull { len, limit: *max });
                }
                *bytes += len;
                queue.push_back(message);
                Ok(())
            }
        }
    }

    /// Encode `message` straight into the outbox (compressed when deflate says so), within the
    /// queue bound; write the outbox out at once past `write_buffer_size`.
    fn write(&mut self, message: Message) -> Result<(), Error> {
        let (opcode, payload): (u8, &[u8]) = match &message {
            Message::Text(t) => (frame::TEXT, t.as_bytes()),
            Message::Binary(b) => (frame::BINARY, b),
            Message::Ping(p) => (frame::PING, p),
            Message::Pong(p) => (frame::PONG, p),
            // Closes go through `close`; raw frames are refused before the session.
            Message::Close(_) | Message::Frame(_) => return Err(Error::RawFrame),
        };
        let compressed = match (&mut self.deflate, opcode) {
            (Some(d), frame::TEXT | frame::BINARY) => d.encode(payload),
            _ => None,
        };
        let body = compressed.as_deref().unwrap_or(payload);
        let len = frame::wire_len(body.len(), self.masked);
        if let Err(e) = self.make_room(len) {
            if compressed.is_some() {
                if let Some(d) = &mut self.deflate {
                    d.rejected();
                }
            }
            return Err(e);
        }
        let mask = self.masked.then(rand::random::<[u8; 4]>);
        frame::encode(
            self.outbox().tail(len),
            opcode,
            compressed.is_some(),
            body,
            mask,
        );
        if compressed.is_some() {
            self.metrics.compressed(payload.len(), body.len());
        }
        self.queued_more();
        Ok(())
    }

    /// Queue a finished frame as it is.
    fn write_wire(&mut self, wire: &[u8]) -> Result<(), Error> {
        self.make_room(wire.len())?;
        self.outbox().tail(wire.len()).extend_from_slice(wire);
        self.queued_more();
        Ok(())
    }

    /// Whether `len` more bytes fit under the queue bound. The bound counts what is queued;
    /// make room if the socket will take it now, so "full" means the socket really is behind
    /// (or the frame can never fit).
    fn make_room(&mut self, len: usize) -> Result<(), Error> {
        if self.queued() + len <= self.queue_limit
            || (!self.write_blocked && self.flush() && self.queued() + len <= self.queue_limit)
        {
            return Ok(());
        }
        Err(Error::QueueFull {
            len,
            limit: self.queue_limit,
        })
    }

    fn outbox(&mut self) -> &mut Outbox {
        match self.ws.get_mut().outbox_mut() {
            Some(outbox) => outbox,
            // `new` starts queueing before anything can be sent.
            None => unreachable!("a session's stream queues its writes"),
        }
    }

    /// After queueing: past `write_buffer_size`, write out at once.
    fn queued_more(&mut self) {
        if self.queued() >= self.write_buffer_size {
            self.flush();
        } else {
            self.metrics.set_queued_bytes(self.queued());
        }
    }

    /// Bytes waiting for the socket.
    pub(crate) fn queued(&self) -> usize {
        self.stream().outbox().map_or(0, |o| o.len())
    }

    fn after_write_error(&mut self, e: tungstenite::Error) -> Result<(), Error> {
        match classify(e) {
            // The frame is in tungstenite's buffer; the socket is full. Not an error.
            Classified::WouldBlock => {
                self.mark_blocked();
                Ok(())
            }
            Classified::Closed => {
                self.handshake_over();
                Err(Error::Closed)
            }
            Classified::Fatal(err, _) => {
                // The caller and `on_error` both see the failure; `Error` is not `Clone`.
                let returned = match &err {
                    Error::ConnectionReset => Error::ConnectionReset,
                    Error::Io(io) => Error::Io(io.kind().into()),
                    _ => Error::Io(io::ErrorKind::Other.into()),
                };
                self.fail(err, None);
                Err(returned)
            }
        }
    }

    /// Data messages the socket has taken leave `in_flight`.
    fn sent_out(&mut self) {
        let Some(taken) = self.stream().outbox().map(|o| o.taken()) else {
            return;
        };
        while self.in_flight.front().is_some_and(|(end, _)| *end <= taken) {
            self.in_flight.pop_front();
        }
    }

    /// Write out what is queued. Returns true when nothing is left queued.
    pub(crate) fn flush(&mut self) -> bool {
        if matches!(self.phase, Phase::Done) {
            return true;
        }
        let flushed = self.ws.flush();
        self.sent_out();
        self.metrics.set_queued_bytes(self.queued());
        match flushed {
            Ok(()) => {
                self.write_blocked = false;
                self.end_writing_if_failed();
                true
            }
            Err(e) => match classify(e) {
                Classified::WouldBlock => {
                    self.mark_blocked();
                    false
                }
                Classified::Closed => self.handshake_over(),
                Classified::Fatal(err, _) => {
                    self.fail(err, None);
                    true
                }
            },
        }
    }

    /// tungstenite says the close handshake is over (a server learns it right after handing
    /// over its Close reply, which is then still in the outbox): end TCP once everything queued
    /// is on the wire, or at the close deadline. Returns whether it ended.
    fn handshake_over(&mut self) -> bool {
        match self.ws.get_mut().flush() {
            Err(e) if io_outcome(&e) == IoOutcome::WouldBlock => {
                self.mark_blocked();
                false
            }
            _ => {
                tracing::debug!("connection closed");
                self.finish();
                true
            }
        }
    }

    /// A server that failed the connection closes TCP first (RFC 6455 7.1.1, 7.1.7): once its
    /// Close is on the wire it sends FIN, and keeps reading (so nothing the client still sends
    /// resets the connection) until the client hangs up or its Close goes by. A client that
    /// already sent its Close, or that waits for the server to end TCP, is not left waiting
    /// for the close timeout.
    fn end_writing_if_failed(&mut self) {
        if !self.masked
            && !self.fin_sent
            && matches!(self.phase, Phase::Lingering { .. })
            && self.queued() == 0
        {
            self.fin_sent = true;
            self.ws.get_mut().shutdown_write();
        }
    }

    fn mark_blocked(&mut self) {
        let written = self.stream().bytes_written();
        if !self.write_blocked || written != self.write_progress.1 {
            self.write_progress = (Instant::now(), written);
        }
        self.write_blocked = true;
    }

    /// Start the close handshake (see [`Context::close`]).
    pub(crate) fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        check_close(code, reason)?;
        if let Some(inbox) = self.inbox.as_ref().filter(|i| i.is_held()) {
            // Sends accepted before this close still wait for room: the Close follows them,
            // and no sender can add more (or they could hold it up until its deadline).
            inbox.refuse_sends();
            self.request_close(code, reason.to_owned());
        } else {
            self.user_ended = true;
            self.start_close(code, reason, after(Instant::now(), self.close_timeout));
        }
        Ok(())
    }

    /// Queue our Close (after everything queued before it) and wait for the answer until
    /// `deadline`.
    fn start_close(&mut self, code: CloseCode, reason: &str, deadline: Instant) {
        self.close_request = None;
        if self.phase != Phase::Open {
            return;
        }
        tracing::debug!(code = u16::from(code), reason, "closing");
        self.phase = Phase::ClosingByUs {
            deadline,
            acked: false,
        };
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        match self.ws.close(Some(frame)) {
            Ok(()) => self.write_blocked = false,
            Err(e) => {
                let _ = self.after_write_error(e);
            }
        }
    }

    /// Drop the connection now.
    pub(crate) fn force_quit(&mut self) {
        self.user_ended = true;
        if self.phase != Phase::Done {
            tracing::debug!("force quit");
            self.finish();
        }
    }

    /// Going away without waiting (a dropped client): a best-effort Close, then drop. The
    /// Close is queued now, behind whatever is queued, never deferred behind held sends (the
    /// connection is about to be dropped).
    pub(crate) fn abandon(&mut self) {
        self.user_ended = true;
        if self.phase == Phase::Open {
            let deadline = after(Instant::now(), self.close_timeout);
            // A server connection is dropped with its set.
            let reason = if self.masked {
                "client dropped"
            } else {
                "server going away"
            };
            self.start_close(CloseCode::Away, reason, deadline);
            self.flush();
        }
        self.finish();
    }

    fn finish(&mut self) {
        self.write_blocked = false;
        if self.phase != Phase::Done {
            self.phase = Phase::Done;
            self.stream().shutdown();
            // What is still queued will never be written: sent again on the next connection,
            // or reported.
            self.sent_out();
            let unsent = std::mem::take(&mut self.in_flight);
            if self.keep_unsent && !self.user_ended {
                self.unsent = unsent.into_iter().filter_map(|(_, m)| m).collect();
            } else {
                self.report_unsent(unsent.len());
            }
        }
    }

    /// The connection failed: report `err` and, if the protocol still allows it, send a Close
    /// with `code` and linger until the peer hangs up.
    pub(crate) fn fail(&mut self, err: Error, code: Option<CloseCode>) {
        if self.phase == Phase::Done {
            return;
        }
        // A client's failed connection is news to its operator; a server's client that
        // vanished is routine (the application hears of it through its handler either way).
        if self.masked {
            tracing::warn!(error = %err, "connection failed");
        } else {
            tracing::debug!(error = %err, "connection failed");
        }
        self.errors.push_back(err);
        let can_close = code.is_some() && self.ws.can_write();
        if let (true, Some(code)) = (can_close, code) {
            self.phase = Phase::Lingering {
                deadline: after(Instant::now(), self.close_timeout),
                frames: FrameSkipper::default(),
            };
            let frame = CloseFrame {
                code,
                reason: "".into(),
            };
            match self.ws.close(Some(frame)) {
                Ok(()) => {}
                Err(e) => match classify(e) {
                    Classified::WouldBlock => self.mark_blocked(),
                    _ => self.finish(),
                },
            }
        } else {
            self.finish();
        }
    }

    /// Report `error` with the others (from outside a dispatch).
    pub(crate) fn report_later(&mut self, error: Error) {
        self.errors.push_back(error);
    }

    /// The code driving this connection panicked (a set caught it): report `error` and end
    /// the connection as failed with 1011 (the Close goes out after what is queued, then the
    /// usual lingering), or drop it at once when no Close can be sent any more. It will not
    /// reconnect: what it leaves unsent is reported, not kept.
    pub(crate) fn panicked(&mut self, error: Error) {
        self.user_ended = true;
        self.keep_unsent = false;
        self.close_request = None;
        self.settling = None;
        let unsent = std::mem::take(&mut self.unsent);
        self.report_unsent(unsent.len());
        if self.phase == Phase::Done {
            self.errors.push_back(error);
        } else {
            self.fail(error, Some(CloseCode::Error));
        }
    }

    // ----- commands from other threads ------------------------------------------------------

    /// Carry out a stop asked for from another thread, then (when `sends`) queued commands in
    /// order. Returns true when more are waiting (budget spent).
    pub(crate) fn apply_commands(&mut self, sends: bool) -> bool {
        let Some(mut inbox) = self.inbox.take() else {
            return false;
        };
        // A close waits for the sends accepted before it; the gate is closed, so those are
        // few (at most the channel's capacity) and their reports bounded.
        let sends = sends || self.close_request.is_some();
        match inbox.take_stop() {
            Some(Stop::ForceQuit) => self.force_quit(),
            Some(Stop::Close(code, reason)) => self.request_close(code, reason),
            None => {}
        }
        let mut spent = sends;
        for _ in 0..if sends { COMMAND_BUDGET } else { 0 } {
            // Between connections commands still count: sends are held or refused.
            if self.phase == Phase::Done && self.disconnected.is_none() {
                spent = false;
                break;
            }
            let Some(command) = inbox.next() else {
                spent = false;
                break;
            };
            if let Err(held) = self.execute(command) {
                // Wait for the socket to drain; commands keep their order.
                inbox.hold(held);
                spent = false;
                break;
            }
            // An answer came: the application is still answering what it was given.
            if let Some(s) = &mut self.settling {
                s.quiet_until = after(Instant::now(), SETTLE_QUIET).min(s.latest);
            }
        }
        // A close from another thread goes out after every send accepted before it (the gate
        // refuses sends after it, so the inbox only empties).
        if !inbox.has_pending() {
            if let Some((code, reason, deadline)) = self.close_request.take() {
                self.start_close(code, &reason, deadline);
            }
        }
        // Only a spent budget can leave commands behind that deserve another pass at once.
        let more = spent && inbox.has_pending();
        self.inbox = Some(inbox);
        more
    }

    /// A close from another thread (checked by the sender): carried out after the sends before
    /// it, with its deadline running from now.
    fn request_close(&mut self, code: CloseCode, reason: String) {
        self.user_ended = true;
        if self.phase == Phase::Open && self.close_request.is_none() {
            self.close_request = Some((code, reason, after(Instant::now(), self.close_timeout)));
        }
    }

    /// The client is ending: no sender can succeed any more, and the commands still waiting
    /// will never be carried out. Each send among them is reported (as `Error::Closed`), so
    /// none is dropped silently.
    pub(crate) fn refuse_remaining_commands(&mut self) {
        let Some(mut inbox) = self.inbox.take() else {
            return;
        };
        for command in inbox.end() {
            if !matches!(command, Command::Close(..) | Command::ForceQuit) {
                self.errors.push_back(Error::Closed);
            }
        }
    }

    /// Carry out one command; a send that meets a full queue comes back to wait its turn.
    fn execute(&mut self, command: Command) -> Result<(), Command> {
        let (message, wire) = match &command {
            Command::SendText(t) => (Message::Text(t.clone()), None),
            Command::SendBinary(b) => (Message::Binary(b.clone()), None),
            Command::SendPing(b) => (Message::Ping(b.clone()), None),
            Command::SendPong(b) => (Message::Pong(b.clone()), None),
            Command::SendShared(f) => (f.message().clone(), Some(f.wire().clone())),
            // Stops travel beside the channel, but a `Command` can say them too.
            Command::Close(code, reason) => {
                if let Err(e) = self.close(*code, reason) {
                    self.errors.push_back(e);
                }
                return Ok(());
            }
            Command::ForceQuit => {
                self.force_quit();
                return Ok(());
            }
        };
        match self.queue_outgoing(message, wire.as_ref()) {
            Ok(()) => Ok(()),
            // Blocked: it will fit once the socket drains.
            Err(Error::QueueFull { .. }) if self.write_blocked => Err(command),
            Err(e) => {
                self.errors.push_back(e);
                Ok(())
            }
        }
    }

    // ----- receiving ------------------------------------------------------------------------

    /// Read and dispatch every message already readable, up to a budget.
    pub(crate) fn read_pass<D: Dispatch + ?Sized>(&mut self, d: &mut D) -> ReadPass {
        let mut pass = ReadPass {
            messages: 0,
            more: false,
            stopped_for_room: false,
        };
        for _ in 0..READ_BUDGET {
            // The dispatcher holds what it could not hand on (a full event channel): read no
            // more until it has room. Whatever the socket has waits there.
            if !d.has_room() {
                pass.stopped_for_room = true;
                return pass;
            }
            // Our queue is full (the peer does not read): pings it sends would each add a pong.
            // Read again once it has drained; the kernel holds the rest meanwhile.
            if self.reads_held() && matches!(self.phase, Phase::Open) {
                return pass;
            }
            match self.phase {
                Phase::Done => return pass,
                Phase::Lingering { .. } => {
                    self.discard_input();
                    return pass;
                }
                _ if self.settling.is_some() => return pass,
                _ => {}
            }
            match self.ws.read() {
                Ok(message) => {
                    pass.messages += 1;
                    self.on_message(message, d);
                }
                Err(e) => match classify(e) {
                    Classified::WouldBlock => return pass,
                    Classified::Closed => {
                        self.handshake_over();
                        return pass;
                    }
                    // The close handshake is done and the peer hung up (without TLS close_notify,
                    // which rustls reports): the normal end.
                    Classified::Fatal(Error::ConnectionReset, _) if self.close_received() => {
                        tracing::debug!("connection closed");
                        self.finish();
                        return pass;
                    }
                    // RFC 6455 1.4: after the peer's Close "a peer discards any further data
                    // received". The close handshake is done; wait for the end of TCP as before.
                    Classified::Fatal(Error::Protocol(ProtocolError::ReceivedAfterClosing), _)
                        if self.close_received() =>
                    {
                        tracing::debug!("discarding data sent after the peer's close");
                        if let Phase::ClosingByPeer { deadline }
                        | Phase::ClosingByUs { deadline, .. } = self.phase
                        {
                            self.phase = Phase::Lingering {
                                deadline,
                                frames: FrameSkipper::default(),
                            };
                        }
                        return pass;
                    }
                    // Bad input: the connection fails with the close code. A dispatcher whose
                    // application answers later gets its answers out first (bounded).
                    Classified::Fatal(err, Some(code))
                        if d.answers_later() && self.phase == Phase::Open =>
                    {
                        let now = Instant::now();
                        self.settling = Some(Box::new(Settling {
                            error: err,
                            code: Some(code),
                            quiet_until: after(now, SETTLE_QUIET),
                            latest: after(now, self.close_timeout),
                        }));
                        return pass;
                    }
                    Classified::Fatal(err, code) => {
                        self.fail(err, code);
                        // Lingering reads whatever the socket still holds: in a set, readiness
                        // is edge-triggered and announces nothing already there.
                        pass.more = matches!(self.phase, Phase::Lingering { .. });
                        return pass;
                    }
                },
            }
        }
        pass.more = true;
        pass
    }

    /// The peer's Close has arrived (whoever started the handshake).
    fn close_received(&self) -> bool {
        matches!(
            self.phase,
            Phase::ClosingByPeer { .. } | Phase::ClosingByUs { acked: true, .. }
        )
    }

    fn on_message<D: Dispatch + ?Sized>(&mut self, message: Message, d: &mut D) {
        let Message::Close(frame) = message else {
            match &message {
                Message::Text(t) => self.metrics.received(t.len()),
                Message::Binary(b) => self.metrics.received(b.len()),
                Message::Pong(p) => {
                    if let Some((sent, _)) = self.last_ping.take_if(|(_, payload)| payload == p) {
                        self.metrics.rtt(sent.elapsed());
                    }
                }
                _ => {}
            }
            d.message(self, message);
            return;
        };
        let (code, reason) = frame
            .map(|f| (f.code, f.reason.to_string()))
            .unwrap_or((CloseCode::Status, String::new()));
        let initiator = match self.phase {
            Phase::Open => {
                // tungstenite queued the answer; send it now.
                self.phase = Phase::ClosingByPeer {
                    deadline: after(Instant::now(), self.close_timeout),
                };
                self.flush();
                Initiator::Remote
            }
            Phase::ClosingByUs { deadline, .. } => {
                self.phase = Phase::ClosingByUs {
                    deadline,
                    acked: true,
                };
                Initiator::Local
            }
            _ => return,
        };
        if self.masked {
            tracing::info!(code = u16::from(code), %reason, ?initiator, "close handshake");
        } else {
            tracing::debug!(code = u16::from(code), %reason, ?initiator, "close handshake");
        }
        d.closed(
            self,
            CloseInfo {
                code,
                reason,
                initiator,
            },
        );
    }

    /// Any bytes from the peer prove it alive; silence past the interval earns a ping, and
    /// silence past the ping's timeout ends the connection.
    fn check_heartbeat(&mut self, now: Instant) {
        // Not while the application holds reading up: the peer's bytes wait unread.
        if self.phase != Phase::Open || self.paused_since.is_some() {
            return;
        }
        let read = self.stream().bytes_read();
        let Some(hb) = self.heartbeat.as_mut() else {
            return;
        };
        match hb.check(now, read) {
            Beat::Dead => {
                if self.masked {
                    tracing::warn!("no traffic after a heartbeat ping: peer is gone");
                } else {
                    tracing::debug!("no traffic after a heartbeat ping: peer is gone");
                }
                self.errors.push_back(Error::Timeout(TimeoutKind::Pong));
                self.finish();
            }
            Beat::Ping(payload) => {
                tracing::trace!("heartbeat ping");
                // Queued now, written by the flush that follows in the same pass.
                if let Err(e) = self.queue(Message::Ping(payload)) {
                    tracing::debug!(error = %e, "heartbeat ping not queued");
                }
            }
            Beat::Nothing => {}
        }
    }

    /// After a failure: read and drop whatever the peer still sends, until its Close has gone
    /// by (a client answers ours, then waits for us to end TCP) or it hangs up.
    fn discard_input(&mut self) {
        let mut scratch = [0u8; 4096];
        loop {
            let Phase::Lingering { frames, .. } = &mut self.phase else {
                return;
            };
            match self.ws.get_mut().read(&mut scratch) {
                Ok(0) => return self.finish(),
                // Done once the peer's Close has gone by and ours is out of our hands; a Close
                // still queued behind a full socket keeps us lingering as before.
                Ok(n) => {
                    if frames.feed(&scratch[..n]) && !self.write_blocked {
                        tracing::debug!("the peer's close arrived while lingering");
                        return self.finish();
                    }
                }
                Err(e) if io_outcome(&e) == IoOutcome::WouldBlock => return,
                Err(e) if io_outcome(&e) == IoOutcome::Interrupted => continue,
                Err(_) => return self.finish(),
            }
        }
    }

    // ----- time -----------------------------------------------------------------------------

    /// The earliest deadline the loop must wake for.
    /// While the application holds reading up, the deadlines that measure the peer's answers
    /// (the close handshake, the heartbeat) stand still; those that measure its reading of ours
    /// (the write timeout, a close still waiting behind held sends) do not.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let paused = self.paused_since.is_some();
        let close = match self.phase {
            Phase::ClosingByUs { deadline, .. }
            | Phase::ClosingByPeer { deadline }
            | Phase::Lingering { deadline, .. }
                if !paused =>
            {
                Some(deadline)
            }
            _ => None,
        };
        let write = match (self.write_blocked, self.write_timeout) {
            (true, Some(t)) => Some(after(self.write_progress.0, t)),
            _ => None,
        };
        let requested = self.close_request.as_ref().map(|(_, _, d)| *d);
        let heartbeat = match (&self.heartbeat, self.phase) {
            (Some(hb), Phase::Open) if !paused => Some(hb.deadline()),
            _ => None,
        };
        let settled = self.settling.as_ref().map(|s| s.quiet_until);
        [close, requested, write, heartbeat, settled]
            .into_iter()
            .flatten()
            .min()
    }

    /// Act on passed deadlines.
    pub(crate) fn check_deadlines(&mut self, now: Instant) {
        if self
            .close_request
            .as_ref()
            .is_some_and(|(_, _, d)| now >= *d)
        {
            // The sends before the close never got out: the peer is not reading.
            if self.masked {
                tracing::warn!("close handshake timed out before our close could be queued");
            } else {
                tracing::debug!("close handshake timed out before our close could be queued");
            }
            self.close_request = None;
            self.errors.push_back(Error::Timeout(TimeoutKind::Close));
            self.finish();
            return;
        }
        self.check_heartbeat(now);
        if let (true, Some(timeout)) = (self.write_blocked, self.write_timeout) {
            let written = self.stream().bytes_written();
            if written != self.write_progress.1 {
                self.write_progress = (now, written);
            } else if now >= after(self.write_progress.0, timeout) {
                self.errors.push_back(Error::Timeout(TimeoutKind::Write));
                self.finish();
                return;
            }
        }
        if self.paused_since.is_some() {
            return;
        }
        match self.phase {
            Phase::ClosingByUs { deadline, acked } if now >= deadline => {
                if !acked {
                    if self.masked {
                        tracing::warn!("close handshake timed out");
                    } else {
                        tracing::debug!("close handshake timed out");
                    }
                    self.errors.push_back(Error::Timeout(TimeoutKind::Close));
                }
                self.finish();
            }
            Phase::ClosingByPeer { deadline } | Phase::Lingering { deadline, .. }
                if now >= deadline =>
            {
                self.finish();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! The session over a scripted in-memory stream that says "would block" on cue: the
    //! non-blocking paths, byte by byte, without sockets or timing.

    use std::time::Duration;

    use tungstenite::protocol::Role;

    use super::*;
    use crate::handler::Callbacks;
    use crate::stream::scripted::{ReadStep, Scripted};
    use crate::stream::Transport;
    use crate::CloseInfo;
    use crate::{Context, Handler};

    fn session(config: &Config, reads: Vec<ReadStep>, write_budget: usize) -> Session {
        let stream = Stream::from(Transport::Scripted(Scripted {
            reads: reads.into(),
            write_budget,
            ..Scripted::default()
        }));
        let ws = WebSocket::from_raw_socket(stream, Role::Client, Some(config.websocket_config()));
        Session::new(ws, None, config)
    }

    fn scripted(s: &mut Session) -> &mut Scripted {
        match s.ws.get_mut().transport_mut() {
            Transport::Scripted(s) => s,
            _ => unreachable!("test sessions are scripted"),
        }
    }

    /// Decode the client's (masked) frames: (opcode, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        crate::frame::decode(bytes)
            .into_iter()
            .map(|(first, masked, payload)| {
                assert!(masked, "client frames are masked");
                (first & 0x0f, payload)
            })
            .collect()
    }

    /// An unmasked server frame.
    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut f = vec![0x80 | opcode, payload.len() as u8];
        f.extend_from_slice(payload);
        f
    }

    #[derive(Default)]
    struct Log(Vec<String>);

    impl Handler for Log {
        fn on_text_message(&mut self, _: &mut Context<'_>, text: &str) {
            self.0.push(format!("text {text}"));
        }
        fn on_connection_closed(&mut self, _: &mut Context<'_>, close: &CloseInfo) {
            self.0
                .push(format!("closed {} {:?}", close.code, close.initiator));
        }
    }

    #[test]
    fn a_send_that_meets_a_full_stream_is_queued_once_and_drains_later() {
        let mut s = session(&Config::default(), vec![], 10);
        s.send(Message::Binary(vec![7u8; 1000].into())).unwrap();
        assert!(!s.flush(), "the stream took 10 bytes, then would block");
        assert_eq!(scripted(&mut s).written.len(), 10);
        // Queued behind it, not retried, not lost.
        s.send(Message::text("second")).unwrap();
        assert_eq!(
            s.metrics().frames_queued(),
            1,
            "the second met a full stream"
        );
        assert!(!s.flush());
        scripted(&mut s).write_budget = usize::MAX;
        assert!(s.flush(), "drains once the stream takes bytes again");
        let written = std::mem::take(&mut scripted(&mut s).written);
        assert_eq!(
            frames(&written),
            [(0x2, vec![7u8; 1000]), (0x1, b"second".to_vec())],
            "each message exactly once, in order"
        );
    }

    #[test]
    fn a_full_queue_refuses_a_send_and_queues_nothing_of_it() {
        let config = Config::builder()
            .write_buffer_size(64)
            .max_queued_bytes(256)
            .build()
            .unwrap();
        let mut s = session(&config, vec![], 0);
        s.send(Message::Binary(vec![1u8; 150].into())).unwrap();
        let err = s.send(Message::Binary(vec![2u8; 150].into())).unwrap_err();
        assert!(
            matches!(err, Error::QueueFull { limit: 256, .. }),
            "{err:?}"
        );
        scripted(&mut s).write_budget = usize::MAX;
        assert!(s.flush());
        let written = std::mem::take(&mut scripted(&mut s).written);
        assert_eq!(frames(&written), [(0x2, vec![1u8; 150])]);
    }

    #[test]
    fn a_compressed_frame_the_full_queue_refuses_leaves_no_reference_behind() {
        use crate::deflate::{DeflateConfig, DeflateParams};
        use flate2::{Decompress, FlushDecompress};

        let config = Config::builder()
            .write_buffer_size(64)
            .max_queued_bytes(1024)
            .build()
            .unwrap();
        let mut s = session(&config, vec![], 0);
        let agreed = DeflateParams {
            client_no_context_takeover: false,
            server_no_context_takeover: false,
            client_max_window_bits: 15,
            server_max_window_bits: 15,
        };
        let settings = DeflateConfig::new().threshold(0);
        s.set_outbound(Outbound::new(&agreed, Role::Client, &settings));
        let letters = |n: usize, mut x: u32| -> String {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    b"acgt"[(x % 4) as usize] as char
                })
                .collect()
        };
        let a = letters(600, 1).repeat(2);
        let b = letters(3000, 2);
        s.send(Message::text(a.clone())).unwrap();
        // Compressed, B does not fit next to A: refused, so the peer never sees it...
        let err = s.send(Message::text(b.clone())).unwrap_err();
        assert!(matches!(err, Error::QueueFull { .. }), "{err:?}");
        scripted(&mut s).write_budget = usize::MAX;
        assert!(s.flush());
        // ...and the retry must not refer to the refused copy.
        s.send(Message::text(b.clone())).unwrap();
        assert!(s.flush());
        let written = std::mem::take(&mut scripted(&mut s).written);
        let mut inflate = Decompress::new(false);
        let got: Vec<String> = frames(&written)
            .into_iter()
            .map(|(opcode, mut payload)| {
                assert_eq!(opcode, 1);
                payload.extend_from_slice(&[0, 0, 0xff, 0xff]);
                let mut out = Vec::with_capacity(1 << 16);
                inflate
                    .decompress_vec(&payload, &mut out, FlushDecompress::Sync)
                    .unwrap();
                String::from_utf8(out).unwrap()
            })
            .collect();
        assert_eq!(got, [a, b]);
        assert_eq!(s.metrics.messages_sent(), 2);
    }

    #[test]
    fn a_message_split_by_would_block_is_assembled_across_passes() {
        let frame = server_frame(0x1, b"hello");
        let reads = vec![
            ReadStep::Data(frame[..3].to_vec()),
            ReadStep::WouldBlock,
            ReadStep::Data(frame[3..].to_vec()),
            ReadStep::WouldBlock,
        ];
        let mut s = session(&Config::default(), reads, usize::MAX);
        let mut log = Log::default();
        let pass = s.read_pass(&mut Callbacks(&mut log, None));
        assert_eq!(pass.messages, 0);
        assert!(log.0.is_empty());
        let pass = s.read_pass(&mut Callbacks(&mut log, None));
        assert_eq!(pass.messages, 1);
        assert_eq!(log.0, ["text hello"]);
    }

    #[test]
    fn a_peer_close_is_answered_even_if_the_stream_was_blocked() {
        let mut close = vec![0x03, 0xe8]; // 1000
        close.extend_from_slice(b"bye");
        let reads = vec![
            ReadStep::Data(server_frame(0x1, b"last")),
            ReadStep::Data(server_frame(0x8, &close)),
        ];
        let mut s = session(&Config::default(), reads, 0);
        let mut log = Log::default();
        s.read_pass(&mut Callbacks(&mut log, None));
        assert_eq!(log.0, ["text last", "closed 1000 Remote"]);
        assert!(!s.is_open());
        scripted(&mut s).write_budget = usize::MAX;
        assert!(s.flush());
        let written = std::mem::take(&mut scripted(&mut s).written);
        assert_eq!(
            frames(&written),
            [(0x8, vec![0x03, 0xe8, b'b', b'y', b'e'])]
        );
    }

    #[test]
    fn an_unanswered_close_ends_at_its_deadline_with_a_timeout() {
        let config = Config::builder()
            .close_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut s = session(&config, vec![], usize::MAX);
        s.close(CloseCode::Normal, "bye").unwrap();
        assert!(
            s.send(Message::text("late")).is_err(),
            "no sends after close"
        );
        let deadline = s.next_deadline().expect("close has a deadline");
        s.check_deadlines(deadline - Duration::from_millis(1));
        assert!(!s.is_done());
        s.check_deadlines(deadline);
        assert!(s.is_done());
        assert!(matches!(
            s.take_error(),
            Some(Error::Timeout(TimeoutKind::Close))
        ));
    }

    #[test]
    fn commands_left_when_a_client_ends_are_reported_not_dropped() {
        let mut s = session(&Config::default(), vec![], usize::MAX);
        let (sender, inbox) =
            crate::command::Inbox::channel(8, usize::MAX, crate::command::Shared::new(None, None));
        s.set_inbox(inbox);
        sender.send_text("a").unwrap();
        sender.send_binary(vec![1]).unwrap();
        sender.force_quit().unwrap();
        s.refuse_remaining_commands();
        assert!(matches!(s.take_error(), Some(Error::Closed)));
        assert!(matches!(s.take_error(), Some(Error::Closed)));
        assert!(s.take_error().is_none(), "one report per unsent message");
        assert!(sender.send_text("late").is_err(), "the channel is closed");
    }

    #[test]
    fn a_server_writes_a_shared_frame_as_it_is_and_a_client_frames_it_itself() {
        let frame = SharedFrame::text("broadcast");
        let stream = Stream::from(Transport::Scripted(Scripted {
            write_budget: usize::MAX,
            ..Scripted::default()
        }));
        let config = Config::default();
        let ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config.websocket_config()));
        let mut server = Session::server(ws, &config, None);
        server.send_shared(&frame).unwrap();
        assert!(server.flush());
        assert_eq!(scripted(&mut server).written, frame.wire()[..]);

        let mut client = session(&config, vec![], usize::MAX);
        client.send_shared(&frame).unwrap();
        assert!(client.flush());
        let written = std::mem::take(&mut scripted(&mut client).written);
        assert_eq!(frames(&written), [(0x1, b"broadcast".to_vec())], "masked");
    }

    #[test]
    fn an_oversized_ping_is_refused_before_it_reaches_the_wire() {
        let mut s = session(&Config::default(), vec![], usize::MAX);
        let err = s.send(Message::Ping(vec![0u8; 126].into())).unwrap_err();
        assert!(matches!(err, Error::ControlPayloadTooLong(126)), "{err:?}");
        s.send(Message::Pong(vec![0u8; 125].into())).unwrap();
        assert!(s.flush());
        let written = std::mem::take(&mut scripted(&mut s).written);
        assert_eq!(
            frames(&written),
            [(0xA, vec![0u8; 125])],
            "only the valid pong"
        );
    }

    #[test]
    fn the_end_of_the_stream_without_a_close_is_a_reset() {
        let reads = vec![ReadStep::Data(server_frame(0x1, b"only")), ReadStep::Eof];
        let mut s = session(&Config::default(), reads, usize::MAX);
        let mut log = Log::default();
        s.read_pass(&mut Callbacks(&mut log, None));
        assert_eq!(log.0, ["text only"]);
        assert!(s.is_done());
        assert!(matches!(s.take_error(), Some(Error::ConnectionReset)));
        assert!(s.take_error().is_none(), "reported once");
    }

    #[test]
    fn a_write_that_makes_no_progress_times_out_but_slow_progress_does_not() {
        let config = Config::builder()
            .write_timeout(Some(Duration::from_secs(1)))
            .build()
            .unwrap();
        let mut s = session(&config, vec![], 0);
        s.send(Message::Binary(vec![0u8; 100_000].into())).unwrap();
        assert!(!s.flush());
        let first = s.next_deadline().expect("a blocked write has a deadline");
        // Some progress just before the deadline moves it.
        scripted(&mut s).write_budget = 10;
        assert!(!s.flush());
        s.check_deadlines(first);
        assert!(!s.is_done(), "progress was made");
        let second = s.next_deadline().unwrap();
        assert!(second > first);
        s.check_deadlines(second);
        assert!(s.is_done());
        assert!(matches!(
            s.take_error(),
            Some(Error::Timeout(TimeoutKind::Write))
        ));
    }
}
