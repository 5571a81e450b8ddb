//! Commands from other threads: the sender half users hold, the inbox a session drains.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, SendError, SendTimeoutError, Sender, TrySendError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Utf8Bytes};

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
    /// Start the close handshake with this code and reason.
    Close(CloseCode, String),
    /// Drop the connection at once.
    ForceQuit,
}

/// Wakes a connection that waits in the OS poll, only when it is actually parked, so a busy
/// connection costs senders no system call.
#[derive(Debug)]
pub(crate) struct Signal {
    parked: AtomicBool,
    waker: Option<mio::Waker>,
}

impl Signal {
    pub(crate) fn new(waker: Option<mio::Waker>) -> Arc<Self> {
        Arc::new(Signal {
            parked: AtomicBool::new(false),
            waker,
        })
    }

    /// After a send: wake the loop if it is parked (or about to park).
    pub(crate) fn notify(&self) {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            self.wake_now();
        }
    }

    /// Wake whatever the state (for shutdown).
    pub(crate) fn wake_now(&self) {
        if let Some(w) = &self.waker {
            if let Err(e) = w.wake() {
                tracing::warn!(error = %e, "waker failed");
            }
        }
    }

    pub(crate) fn set_parked(&self, parked: bool) {
        self.parked.store(parked, Ordering::SeqCst);
    }
}

/// A cloneable, thread-safe way to send [`Command`]s to a running connection; it wakes the
/// connection's loop. Its methods mirror crossbeam-channel's `Sender`: `send` blocks while the
/// channel is full, `try_send` does not, and both hand the command back once the connection has
/// ended.
#[derive(Debug, Clone)]
pub struct CommandSender {
    tx: Sender<Command>,
    signal: Arc<Signal>,
}

impl CommandSender {
    /// Send a command, blocking while the channel is full.
    ///
    /// # Errors
    ///
    /// The command back, once the connection has ended.
    pub fn send(&self, command: Command) -> Result<(), SendError<Command>> {
        self.tx.send(command)?;
        self.signal.notify();
        Ok(())
    }

    /// Send a command if there is room now.
    ///
    /// # Errors
    ///
    /// `Full` with the command when the channel is full, `Disconnected` once the connection has
    /// ended.
    pub fn try_send(&self, command: Command) -> Result<(), TrySendError<Command>> {
        self.tx.try_send(command)?;
        self.signal.notify();
        Ok(())
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
        self.tx.send_timeout(command, timeout)?;
        self.signal.notify();
        Ok(())
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

    /// Shorthand for `send(Command::Close(..))`.
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    pub fn close(
        &self,
        code: impl Into<CloseCode>,
        reason: impl Into<String>,
    ) -> Result<(), SendError<Command>> {
        self.send(Command::Close(code.into(), reason.into()))
    }

    /// Shorthand for `send(Command::ForceQuit)`.
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    pub fn force_quit(&self) -> Result<(), SendError<Command>> {
        self.send(Command::ForceQuit)
    }
}

/// The receiving side, owned by a session.
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: Receiver<Command>,
    signal: Arc<Signal>,
    /// Commands taken off the channel but not yet carried out (a send that met a full queue
    /// waits here, in order, until the socket drains).
    front: VecDeque<Command>,
    /// The head of `front` met a full queue: nothing moves until the socket drains.
    stalled: bool,
}

impl Inbox {
    pub(crate) fn channel(capacity: usize, signal: Arc<Signal>) -> (CommandSender, Inbox) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        (
            CommandSender {
                tx,
                signal: signal.clone(),
            },
            Inbox {
                rx,
                signal,
                front: VecDeque::new(),
                stalled: false,
            },
        )
    }

    pub(crate) fn next(&mut self) -> Option<Command> {
        self.stalled = false;
        self.front.pop_front().or_else(|| self.rx.try_recv().ok())
    }

    /// Put back a send that met a full queue; it goes first once the socket drains.
    pub(crate) fn stall(&mut self, command: Command) {
        self.front.push_front(command);
        self.stalled = true;
    }

    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// Commands are waiting and can be carried out now.
    pub(crate) fn has_pending(&self) -> bool {
        !self.stalled && (!self.front.is_empty() || !self.rx.is_empty())
    }

    pub(crate) fn receiver(&self) -> &Receiver<Command> {
        &self.rx
    }

    pub(crate) fn signal(&self) -> &Signal {
        &self.signal
    }

    /// Wait up to `timeout` for a command, keeping it for the next pass (the sleep strategy's
    /// sleep, cut short by a command).
    pub(crate) fn wait_for_command(&mut self, timeout: Duration) {
        match self.rx.recv_timeout(timeout) {
            Ok(command) => self.front.push_back(command),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            // Every sender is gone: nothing can cut the sleep short any more.
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => std::thread::sleep(timeout),
        }
    }
}
