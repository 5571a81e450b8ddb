//! Commands from other threads: the sender half users hold, the inbox a session drains.
//!
//! Sends travel in order through a channel bounded by `control_capacity` commands and
//! `control_bytes` of payload. The channel itself is
//! crossbeam's unbounded (list) flavour, whose memory comes in small blocks as commands arrive
//! and goes as they are taken, and the bound is a count kept under the gate: a bounded (array)
//! channel would allocate and touch every slot up front, 48 KiB per connection at the default
//! capacity, which an idle connection of a thousand-connection client or server would pay
//! for nothing. A stop (`Close`, `ForceQuit`) does not: it
//! is a request beside the channel that the connection sees at its next pass, so no queued
//! data can hold it up. A gate closes the channel when the connection ends, so every send that
//! returned `Ok` was taken by the connection, which carries it out or reports it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendError, SendTimeoutError, Sender, TrySendError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Utf8Bytes};

use crate::close::check_close;
use crate::waker::{SetWaker, Waker};
use crate::Error;
use crate::SharedFrame;

/// What another thread can ask a connection to do, through a [`CommandSender`]
/// ([`ThreadedClient::control_tx`](crate::ThreadedClient::control_tx) or
/// [`NonBlockingClient::handle`](crate::NonBlockingClient::handle)).
///
/// Payloads are reference-counted buffers: `String` and `Vec<u8>` convert without copying
/// (`Command::SendText(s.into())`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Send a text message.
    SendText(Utf8Bytes),
    /// Send a binary message.
    SendBinary(Bytes),
    /// Send a ping.
    SendPing(Bytes),
    /// Send a pong.
    SendPong(Bytes),
    /// Send a message framed once for many connections (a broadcast).
    SendShared(SharedFrame),
    /// Start the close handshake with this code and reason, after the sends accepted before it.
    /// Out of band: queued data cannot hold it up. Its `close_timeout` runs from the request,
    /// and later sends are refused.
    Close(CloseCode, String),
    /// Drop the connection at once, whatever is queued. Out of band, like `Close`.
    ForceQuit,
}

/// A stop asked for from another thread, waiting for the connection's next pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    Close(CloseCode, String),
    ForceQuit,
}

/// What senders and the connection agree on under one lock: whether the connection still takes
/// commands, and a stop waiting to be seen.
#[derive(Debug, Default)]
struct Gate {
    /// The connection has ended: the channel takes nothing more.
    ended: bool,
    /// A close or force-quit was asked for: sends are refused from now on.
    stopping: bool,
    stop: Option<Stop>,
}

/// How a parked connection is woken.
#[derive(Debug)]
enum Wake {
    /// The OS poll's waker (readiness).
    Poll(Arc<Waker>),
    /// The thread sleeping in `park_timeout` (the sleep strategy), recorded as it parks.
    Thread(Mutex<Option<Thread>>),
    /// The thread of the client set this connection belongs to, as connection `id`.
    Set(Arc<SetWaker>, u64),
}

/// What a connection shares with its senders: the gate, the stop request, and the way to wake
/// it, which costs senders a system call only when the connection is actually parked.
#[derive(Debug)]
pub(crate) struct Shared {
    parked: AtomicBool,
    /// A stop is waiting in the gate (checked every pass without taking the lock).
    stop_waiting: AtomicBool,
    /// Chosen once, before the connection first parks: at once in most modes; for a server
    /// connection when it starts running, on its own thread or in a set (see
    /// [`Shared::unwoken`]). Until then nothing needs waking: whatever senders do meanwhile
    /// is seen by its first pass.
    wake: OnceLock<Wake>,
    /// Also poked on every wake, for a threaded worker that waits on channels instead of the
    /// OS poll (while its application is behind on events).
    nudge: Option<Sender<()>>,
    gate: Mutex<Gate>,
    /// Commands in the channel, and their payload bytes (the bounds are checked against them
    /// under the gate).
    queued: AtomicUsize,
    queued_bytes: AtomicUsize,
    /// Senders waiting for room, on `room`, with the gate.
    waiting: AtomicUsize,
    room: Condvar,
}

impl Shared {
    pub(crate) fn new(waker: Option<Arc<Waker>>, nudge: Option<Sender<()>>) -> Arc<Self> {
        let wake = match waker {
            Some(w) => Wake::Poll(w),
            None => Wake::Thread(Mutex::new(None)),
        };
        Arc::new(Shared::with_wake(OnceLock::from(wake), nudge))
    }

    /// What an accepted server connection shares before it is run: nothing wakes it yet, so
    /// it holds no waker of its own until [`run`](crate::ServerConnection::run) makes one
    /// ([`Shared::wake_by`]) or a set adopts it ([`Shared::wake_in_set`]).
    pub(crate) fn unwoken() -> Arc<Self> {
        Arc::new(Shared::with_wake(OnceLock::new(), None))
    }

    /// What a member of a client set shares: wakes go to the set's thread, naming `id`.
    pub(crate) fn in_set(set: Arc<SetWaker>, id: u64) -> Arc<Self> {
        Arc::new(Shared::with_wake(OnceLock::from(Wake::Set(set, id)), None))
    }

    fn with_wake(wake: OnceLock<Wake>, nudge: Option<Sender<()>>) -> Self {
        Shared {
            parked: AtomicBool::new(false),
            stop_waiting: AtomicBool::new(false),
            wake,
            nudge,
            gate: Mutex::new(Gate::default()),
            queued: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            room: Condvar::new(),
        }
    }

    /// An unwoken connection (see [`Shared::unwoken`]) is woken through `waker` from now on
    /// (it runs on its own thread, waiting in the OS poll). False if it had a wake already.
    pub(crate) fn wake_by(&self, waker: Arc<Waker>) -> bool {
        self.wake.set(Wake::Poll(waker)).is_ok()
    }

    /// An unwoken connection (see [`Shared::unwoken`]) is member `id` of the set `set` wakes
    /// from now on. False if it had a wake already.
    pub(crate) fn wake_in_set(&self, set: Arc<SetWaker>, id: u64) -> bool {
        self.wake.set(Wake::Set(set, id)).is_ok()
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        // The lock guards plain flags; a panic while holding it cannot leave them torn.
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a send: wake the connection if it is parked (or about to park).
    fn notify(&self) {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            self.wake_now();
        }
    }

    /// The connection took a command of `bytes` off the channel: room for a sender.
    fn taken(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
        self.queued.fetch_sub(1, Ordering::SeqCst);
        // A sender counts itself as waiting before it looks at `queued` (under the gate), so
        // either it sees the room made here, or we see it waiting and wake it, after it has
        // released the gate in its wait.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _gate = self.gate();
            self.room.notify_all();
        }
    }

    /// Wake whatever the state (stops, shutdown).
    pub(crate) fn wake_now(&self) {
        match self.wake.get() {
            // Not running yet: its first pass will see what there is.
            None => {}
            Some(Wake::Poll(w)) => {
                if let Err(e) = w.wake() {
                    tracing::warn!(error = %e, "waker failed");
                }
            }
            Some(Wake::Thread(t)) => {
                if let Some(t) = t.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    t.unpark();
                }
            }
            Some(Wake::Set(set, id)) => {
                if let Err(e) = set.wake(*id) {
                    tracing::warn!(error = %e, "waker failed");
                }
            }
        }
        if let Some(n) = &self.nudge {
            let _ = n.try_send(());
        }
    }

    pub(crate) fn set_parked(&self, parked: bool) {
        if parked {
            // The sleep strategy's thread is known before it says it parks: a sender that sees
            // the flag must find someone to unpark (or the stop waits out a whole sleep).
            if let Some(Wake::Thread(t)) = self.wake.get() {
                let mut slot = t.lock().unwrap_or_else(|e| e.into_inner());
                let me = std::thread::current();
                if slot.as_ref().is_none_or(|t| t.id() != me.id()) {
                    *slot = Some(me);
                }
            }
        }
        self.parked.store(parked, Ordering::SeqCst);
    }

    /// The sleep strategy's wait: until `timeout` passes or a sender wakes this thread
    /// (recorded by `set_parked`).
    pub(crate) fn park(&self, timeout: Duration) {
        std::thread::park_timeout(timeout);
    }

    /// Whether a stop is waiting (one relaxed load; the pass looks every time).
    pub(crate) fn stop_waiting(&self) -> bool {
        self.stop_waiting.load(Ordering::Relaxed)
    }

    pub(crate) fn request(&self, stop: Stop) -> Result<(), Stop> {
        let mut gate = self.gate();
        if gate.ended {
            return Err(stop);
        }
        gate.stopping = true;
        // A force-quit overrides a close; a second close changes nothing.
        if gate.stop.is_none() || stop == Stop::ForceQuit {
            gate.stop = Some(stop);
        }
        // Woken once per waiting stop: a stop asked for again and again must not wake (or, in
        // a set, list) the connection again and again.
        let first = !self.stop_waiting.swap(true, Ordering::SeqCst);
        drop(gate);
        if first {
            self.wake_now();
        }
        Ok(())
    }
}

/// A cloneable, thread-safe way to send [`Command`]s to a running connection; it wakes the
/// connection's loop. Its methods mirror crossbeam-channel's `Sender`: `send` blocks while the
/// channel is full, `try_send` does not, and all hand the command back once the connection
/// has ended.
///
/// Sends are carried out in order. `Close` and `ForceQuit` are not queued behind them: they
/// reach the connection at once, however much data waits for a slow peer (a `Close` still goes
/// on the wire after the sends accepted before it, within its `close_timeout`). Once either has
/// been asked for, further sends are refused with the command handed back.
///
/// Every send that returns `Ok` is either carried out or reported to the connection's
/// [`Handler::on_error`](crate::Handler::on_error) (or as an
/// [`Event::Error`](crate::Event::Error)) as [`Error::Closed`](crate::Error::Closed).
///
/// ```no_run
/// use std::time::Duration;
/// use syncws::{BlockingClient, Config, Handler};
///
/// struct Quiet;
/// impl Handler for Quiet {}
///
/// let client = BlockingClient::connect("ws://127.0.0.1:9001", &Config::default())?;
/// let sender = client.handle();
/// std::thread::spawn(move || {
///     for n in 0..10 {
///         // Waits while the connection's queue is full; Err once the connection has ended.
///         if sender.send_text(format!("tick {n}")).is_err() {
///             return;
///         }
///         std::thread::sleep(Duration::from_secs(1));
///     }
///     // Goes out after the ten ticks; its close_timeout runs from now.
///     let _ = sender.close(1000, "done");
/// });
/// client.run(&mut Quiet);
/// # Ok::<(), syncws::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CommandSender {
    tx: Sender<Command>,
    shared: Arc<Shared>,
    capacity: usize,
    byte_capacity: usize,
}

impl CommandSender {
    /// Send a command, blocking while the channel is full.
    ///
    /// # Errors
    ///
    /// The command back, once the connection has ended or a close or force-quit was asked for.
    pub fn send(&self, command: Command) -> Result<(), SendError<Command>> {
        self.send_until(command, None).map_err(|e| match e {
            SendTimeoutError::Timeout(c) | SendTimeoutError::Disconnected(c) => SendError(c),
        })
    }

    /// Send a command if there is room now.
    ///
    /// # Errors
    ///
    /// `Full` with the command when the channel is full, `Disconnected` once the connection has
    /// ended or a close or force-quit was asked for.
    pub fn try_send(&self, command: Command) -> Result<(), TrySendError<Command>> {
        let command = match self.offer(command) {
            Offer::Taken => return Ok(()),
            Offer::Full(c) => c,
            Offer::Refused(c) => return Err(TrySendError::Disconnected(c)),
        };
        Err(TrySendError::Full(command))
    }

    /// Send a command, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// `Timeout` or `Disconnected`, with the command.
    pub fn send_timeout(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<Command>> {
        // As crossbeam's: a timeout past what an `Instant` holds is a send that waits for room.
        self.send_until(command, Instant::now().checked_add(timeout))
    }

    fn send_until(
        &self,
        command: Command,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError<Command>> {
        let send = match self.stop_or_send(command) {
            Ok(taken) => return taken.map_err(SendTimeoutError::Disconnected),
            Err(send) => send,
        };
        let mut gate = self.shared.gate();
        // Counted before looking at the room (see `Shared::taken`).
        self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        let refused: Option<fn(Command) -> SendTimeoutError<Command>> = loop {
            if gate.ended || gate.stopping {
                break Some(SendTimeoutError::Disconnected);
            }
            if self.has_room(&send) {
                break None;
            }
            gate = match deadline {
                None => self
                    .shared
                    .room
                    .wait(gate)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break Some(SendTimeoutError::Timeout);
                    }
                    self.shared
                        .room
                        .wait_timeout(gate, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        };
        self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        match refused {
            Some(error) => Err(error(send)),
            None => self
                .push(send, gate)
                .map_err(SendTimeoutError::Disconnected),
        }
    }

    /// A stop goes beside the channel: `Ok` with its outcome. A send comes back as `Err`.
    fn stop_or_send(&self, command: Command) -> Result<Result<(), Command>, Command> {
        let stop = match command {
            // A close the session would refuse goes in order with the sends, to be reported
            // as an error where the others are.
            Command::Close(code, reason) if check_close(code, &reason).is_ok() => {
                Stop::Close(code, reason)
            }
            Command::ForceQuit => Stop::ForceQuit,
            send => return Err(send),
        };
        Ok(match self.shared.request(stop) {
            Ok(()) => Ok(()),
            Err(Stop::Close(code, reason)) => Err(Command::Close(code, reason)),
            Err(Stop::ForceQuit) => Err(Command::ForceQuit),
        })
    }

    /// Whether the channel has room for `send` (with the gate held): under both bounds, or
    /// empty (one command always fits, however large).
    fn has_room(&self, send: &Command) -> bool {
        let queued = self.shared.queued.load(Ordering::SeqCst);
        let bytes = self.shared.queued_bytes.load(Ordering::SeqCst);
        queued == 0
            || (queued < self.capacity
                && bytes.saturating_add(send.payload_len()) <= self.byte_capacity)
    }

    /// Payload bytes of the commands waiting in the channel (not yet taken by the connection).
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Relaxed)
    }

    /// Put a send in the channel, with the gate held and room checked.
    fn push(&self, send: Command, gate: MutexGuard<'_, Gate>) -> Result<(), Command> {
        let bytes = send.payload_len();
        self.tx.send(send).map_err(|e| e.into_inner())?;
        self.shared.queued_bytes.fetch_add(bytes, Ordering::SeqCst);
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        drop(gate);
        self.shared.notify();
        Ok(())
    }

    /// One attempt: stops go beside the channel, sends into it while the gate is open and
    /// there is room.
    fn offer(&self, command: Command) -> Offer {
        let send = match self.stop_or_send(command) {
            Ok(Ok(())) => return Offer::Taken,
            Ok(Err(refused)) => return Offer::Refused(refused),
            Err(send) => send,
        };
        let gate = self.shared.gate();
        if gate.ended || gate.stopping {
            return Offer::Refused(send);
        }
        if !self.has_room(&send) {
            return Offer::Full(send);
        }
        match self.push(send, gate) {
            Ok(()) => Offer::Taken,
            Err(send) => Offer::Refused(send),
        }
    }

    /// Shorthand for `send(Command::SendText(..))`.
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    pub fn send_text(&self, text: impl Into<Utf8Bytes>) -> Result<(), SendError<Command>> {
        self.send(Command::SendText(text.into()))
    }

    /// Shorthand for `send(Command::SendBinary(..))`.
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    pub fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), SendError<Command>> {
        self.send(Command::SendBinary(data.into()))
    }

    /// Start the close handshake (see [`Command::Close`]): never blocks, however full the
    /// channel is.
    ///
    /// # Errors
    ///
    /// At once, with nothing sent: [`Error::InvalidCloseCode`] for a code that may not be sent
    /// (1005, 1006, 1015, out of range), [`Error::CloseReasonTooLong`] past 123 bytes, and
    /// [`Error::Closed`] once the connection has ended.
    pub fn close(
        &self,
        code: impl Into<CloseCode>,
        reason: impl Into<String>,
    ) -> Result<(), Error> {
        let (code, reason) = (code.into(), reason.into());
        check_close(code, &reason)?;
        self.shared
            .request(Stop::Close(code, reason))
            .map_err(|_| Error::Closed)
    }

    /// Drop the connection at once (see [`Command::ForceQuit`]): never blocks.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the connection has ended.
    pub fn force_quit(&self) -> Result<(), Error> {
        self.shared
            .request(Stop::ForceQuit)
            .map_err(|_| Error::Closed)
    }
}

impl Command {
    /// The bytes this command holds while it waits in the channel.
    fn payload_len(&self) -> usize {
        match self {
            Command::SendText(t) => t.len(),
            Command::SendBinary(b) | Command::SendPing(b) | Command::SendPong(b) => b.len(),
            Command::SendShared(f) => f.len(),
            Command::Close(_, reason) => reason.len(),
            Command::ForceQuit => 0,
        }
    }
}

enum Offer {
    Taken,
    Full(Command),
    Refused(Command),
}

/// The receiving side, owned by a session.
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: Receiver<Command>,
    shared: Arc<Shared>,
    /// Taken off the channel but not yet carried out, in order: a send that met a full queue
    /// (at most one from the channel), and messages held across a reconnect (bounded by
    /// `WhileDisconnected::Queue`). Nothing more is taken from the channel while it holds any.
    front: VecDeque<Command>,
}

impl Inbox {
    pub(crate) fn channel(
        capacity: usize,
        byte_capacity: usize,
        shared: Arc<Shared>,
    ) -> (CommandSender, Inbox) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            CommandSender {
                tx,
                shared: shared.clone(),
                capacity,
                byte_capacity,
            },
            Inbox {
                rx,
                shared,
                front: VecDeque::new(),
            },
        )
    }

    pub(crate) fn next(&mut self) -> Option<Command> {
        if let Some(held) = self.front.pop_front() {
            return Some(held);
        }
        let command = self.rx.try_recv().ok()?;
        self.shared.taken(command.payload_len());
        Some(command)
    }

    /// Put back a send that met a full queue; it goes first once the socket drains.
    pub(crate) fn hold(&mut self, command: Command) {
        self.front.push_front(command);
    }

    /// Put commands, in their order, before everything waiting (messages held while a
    /// reconnecting client was disconnected: older than anything still here).
    pub(crate) fn hold_first(&mut self, commands: impl IntoIterator<Item = Command>) {
        let older: Vec<Command> = commands.into_iter().collect();
        for command in older.into_iter().rev() {
            self.front.push_front(command);
        }
    }

    /// From now on every send is refused (a close from a hook: it goes out after what was
    /// accepted before it, so nothing more may be accepted).
    pub(crate) fn refuse_sends(&self) {
        let mut gate = self.shared.gate();
        gate.stopping = true;
        // Senders waiting for room learn that there will be none.
        self.shared.room.notify_all();
    }

    /// Some send is waiting for the socket to drain.
    pub(crate) fn is_held(&self) -> bool {
        !self.front.is_empty()
    }

    /// Commands are waiting (held, or in the channel).
    pub(crate) fn has_pending(&self) -> bool {
        !self.front.is_empty() || !self.rx.is_empty()
    }

    /// The next pass has something to do that no socket event will announce: a stop, or new
    /// commands while none is held back by a full queue.
    pub(crate) fn has_work(&self) -> bool {
        self.shared.stop_waiting() || (self.front.is_empty() && !self.rx.is_empty())
    }

    /// Take the stop asked for, if any.
    pub(crate) fn take_stop(&mut self) -> Option<Stop> {
        if !self.shared.stop_waiting() {
            return None;
        }
        let mut gate = self.shared.gate();
        self.shared.stop_waiting.store(false, Ordering::SeqCst);
        gate.stop.take()
    }

    pub(crate) fn receiver(&self) -> &Receiver<Command> {
        &self.rx
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The connection has ended for good: close the gate so no sender can succeed any more,
    /// and hand back every command still waiting, to be reported.
    pub(crate) fn end(&mut self) -> Vec<Command> {
        let mut gate = self.shared.gate();
        gate.ended = true;
        let mut left: Vec<Command> = self.front.drain(..).collect();
        left.extend(self.rx.try_iter());
        // Senders waiting for room learn that there will be none.
        self.shared.room.notify_all();
        drop(gate);
        left
    }
}

impl Drop for Inbox {
    /// A connection dropped without ending (its owner dropped it unrun): senders waiting for
    /// room must not wait for ever.
    fn drop(&mut self) {
        let mut gate = self.shared.gate();
        gate.ended = true;
        self.shared.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_stays_small() {
        // Commands sit in the channel's blocks while they wait: each byte here is a KiB of a
        // full default channel (1024 commands).
        assert!(
            std::mem::size_of::<Command>() <= 40,
            "{}",
            std::mem::size_of::<Command>()
        );
    }

    fn channel(capacity: usize) -> (CommandSender, Inbox) {
        Inbox::channel(capacity, usize::MAX, Shared::new(None, None))
    }

    fn text(n: usize) -> Command {
        Command::SendText(n.to_string().into())
    }

    /// Wait (bounded, without sleeping a fixed time) until a sender is blocked for room.
    fn until_waiting(sender: &CommandSender) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sender.shared.waiting.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the sender never waited");
            std::thread::yield_now();
        }
    }

    #[test]
    fn the_channel_holds_capacity_commands_and_makes_room_as_they_are_taken() {
        let (sender, mut inbox) = channel(3);
        for n in 0..3 {
            sender.try_send(text(n)).unwrap();
        }
        assert!(matches!(
            sender.try_send(text(3)),
            Err(TrySendError::Full(_))
        ));
        assert!(matches!(
            sender.send_timeout(text(3), Duration::from_millis(1)),
            Err(SendTimeoutError::Timeout(_))
        ));
        assert_eq!(inbox.next(), Some(text(0)));
        sender.try_send(text(3)).unwrap();
        let taken: Vec<Command> = std::iter::from_fn(|| inbox.next()).collect();
        assert_eq!(taken, [text(1), text(2), text(3)], "in order, each once");
        // Stops never wait for room.
        for n in 0..3 {
            sender.try_send(text(n)).unwrap();
        }
        sender.force_quit().unwrap();
        assert_eq!(inbox.take_stop(), Some(Stop::ForceQuit));
    }

    #[test]
    fn the_channel_is_bounded_in_bytes_too_and_always_takes_one_command() {
        let (sender, mut inbox) = Inbox::channel(100, 10, Shared::new(None, None));
        // One command always fits into an empty channel, however large.
        sender
            .try_send(Command::SendText("x".repeat(50).into()))
            .unwrap();
        assert_eq!(sender.queued_bytes(), 50);
        assert!(matches!(
            sender.try_send(text(1)),
            Err(TrySendError::Full(_))
        ));
        assert!(inbox.next().is_some());
        assert_eq!(sender.queued_bytes(), 0);
        // Small ones up to the byte bound, whatever the count bound.
        for n in 0..5 {
            sender
                .try_send(Command::SendText("ab".into()))
                .unwrap_or_else(|_| panic!("{n}"));
        }
        assert!(matches!(
            sender.try_send(text(1)),
            Err(TrySendError::Full(_))
        ));
        // A blocked sender goes on once bytes are taken.
        let blocked = sender.clone();
        let t = std::thread::spawn(move || blocked.send(text(7)));
        until_waiting(&sender);
        assert!(inbox.next().is_some());
        t.join().unwrap().unwrap();
        assert_eq!(sender.queued_bytes(), 4 * 2 + 1);
        // Stops carry no payload and never wait.
        sender.close(1000, "").unwrap();
    }

    #[test]
    fn a_stop_asked_for_again_and_again_wakes_a_set_once() {
        let set = Arc::new(SetWaker::new().unwrap());
        set.set_parked(true);
        let shared = Shared::in_set(set.clone(), 7);
        for _ in 0..1000 {
            shared
                .request(Stop::Close(CloseCode::Normal, String::new()))
                .unwrap();
        }
        shared.request(Stop::ForceQuit).unwrap();
        let mut woken = Vec::new();
        set.take_woken(&mut woken);
        assert_eq!(woken, [7], "listed once, not once per request");
        // The strongest stop asked for is the one taken.
        let (_, mut inbox) = Inbox::channel(1, usize::MAX, shared);
        assert_eq!(inbox.take_stop(), Some(Stop::ForceQuit));
    }

    #[test]
    fn a_sender_blocked_on_a_full_channel_goes_on_when_a_command_is_taken() {
        let (sender, mut inbox) = channel(1);
        sender.send(text(0)).unwrap();
        let blocked = sender.clone();
        let t = std::thread::spawn(move || blocked.send(text(1)));
        until_waiting(&sender);
        assert_eq!(inbox.next(), Some(text(0)));
        t.join().unwrap().unwrap();
        assert_eq!(inbox.next(), Some(text(1)));
    }

    #[test]
    fn a_sender_blocked_on_a_full_channel_is_refused_when_the_connection_ends_or_drops() {
        for drop_it in [false, true] {
            let (sender, mut inbox) = channel(1);
            sender.send(text(0)).unwrap();
            let blocked = sender.clone();
            let t = std::thread::spawn(move || blocked.send(text(1)));
            until_waiting(&sender);
            if drop_it {
                drop(inbox);
            } else {
                assert_eq!(inbox.end(), [text(0)]);
            }
            assert_eq!(t.join().unwrap(), Err(SendError(text(1))), "handed back");
        }
    }
}
