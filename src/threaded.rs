//! The threaded client: the same core on a worker thread, commands in, events out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};
use tungstenite::Message;

use crate::close::CloseInfo;
use crate::command::{CommandSender, Shared};
use crate::connect::connect;
use crate::driver::Driver;
use crate::session::{Dispatch, Session};
use crate::{Config, Error, Event, Handshake, Metrics, ReconnectAttempt, WaitStrategy};

/// A client whose connection runs on its own worker thread. The application sends
/// [`Command`](crate::Command)s on [`control_tx`](Self::control_tx) and receives [`Event`]s on
/// [`event_rx`](Self::event_rx).
///
/// The worker waits in the OS poll on its socket plus a waker, so it uses no CPU when idle and
/// reacts to a command at once. When the application falls behind on `event_rx` (it is bounded
/// by [`ConfigBuilder::event_capacity`](crate::ConfigBuilder::event_capacity)), the worker stops
/// reading the socket until it catches up: nothing is dropped.
///
/// When the worker ends, `event_rx` reports disconnection after [`Event::Quit`] and sends on
/// `control_tx` fail. Dropping the client stops the worker (a best-effort Close 1001) and joins
/// it within [`ConfigBuilder::shutdown_timeout`](crate::ConfigBuilder::shutdown_timeout). Every
/// wait of the worker is bounded and interruptible, a reconnect attempt's included: its name
/// lookup (in a small pool of threads shared by the process), TCP connect, proxy exchange, TLS
/// handshake and upgrade are states of the worker's loop, which takes a stop while it waits.
///
/// ```no_run
/// use syncws::{Config, Event, ThreadedClient};
///
/// let client = ThreadedClient::connect("ws://127.0.0.1:9001", &Config::default())?;
/// client.control_tx.send_text("hello").unwrap();
/// for event in client.event_rx.iter() {
///     match event {
///         Event::TextMessage(text) => {
///             println!("{}", text.as_str());
///             client.control_tx.close(1000, "done").unwrap();
///         }
///         Event::Quit => break,
///         _ => {}
///     }
/// }
/// # Ok::<(), syncws::Error>(())
/// ```
#[derive(Debug)]
pub struct ThreadedClient {
    /// Commands to the worker. Cloneable; `send` blocks while the channel is full.
    pub control_tx: CommandSender,
    /// Events from the worker, in order; disconnected after [`Event::Quit`].
    pub event_rx: Receiver<Event>,
    handshake: Handshake,
    metrics: Arc<Metrics>,
    stop_tx: Option<Sender<()>>,
    shared: Arc<Shared>,
    done_rx: Receiver<()>,
    worker: Option<JoinHandle<()>>,
    shutdown_timeout: Duration,
}

impl ThreadedClient {
    /// Open a connection on the calling thread (so connect errors come back here), then hand it
    /// to a new worker thread.
    ///
    /// # Errors
    ///
    /// Connect-time [`Error`]s, as for [`BlockingClient::connect`](crate::BlockingClient::connect),
    /// or [`Error::Io`] if the thread cannot be spawned.
    pub fn connect(url: &str, config: &Config) -> Result<Self, Error> {
        let (ws, handshake) = connect(url, config)?;
        let session = Session::new(ws, Some(handshake.clone()), config);
        let metrics = session.metrics().clone();
        let (nudge_tx, nudge_rx) = crossbeam_channel::bounded(1);
        let (driver, control_tx, shared) =
            Driver::new(session, WaitStrategy::Readiness, config, Some(nudge_tx))?;
        let mut driver = driver.redial_to(url, config);
        driver.set_command_spin(config.worker_spin());
        let (event_tx, event_rx) = crossbeam_channel::bounded(config.event_capacity());
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let worker = std::thread::Builder::new()
            .name("syncws-worker".into())
            .spawn(move || {
                let mut forward = Forward {
                    events: event_tx,
                    stop: stop_rx,
                    nudge: nudge_rx,
                    backlog: VecDeque::new(),
                    gone: false,
                };
                // The run closes the command gate before `Quit`, so once `event_rx` reports
                // disconnection, `control_tx` already does too.
                driver.run(&mut forward);
                drop(forward);
                // Last, so a joining owner sees both.
                drop(done_tx);
            })?;
        Ok(ThreadedClient {
            control_tx,
            event_rx,
            handshake,
            metrics,
            stop_tx: Some(stop_tx),
            shared,
            done_rx,
            worker: Some(worker),
            shutdown_timeout: config.shutdown_timeout(),
        })
    }

    /// The server's handshake response.
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// This connection's counters, readable from any thread while the worker runs.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Whether the worker thread has ended.
    pub fn is_finished(&self) -> bool {
        self.worker.as_ref().is_none_or(|w| w.is_finished())
    }

    /// Stop the worker now (a best-effort Close 1001, no waiting for the answer) and join it.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] with [`TimeoutKind::Shutdown`](crate::TimeoutKind::Shutdown) if the
    /// worker did not end within `timeout` (every wait of the worker takes the stop, so only a
    /// machine that gives it no time gets here); it is left to finish on its own.
    pub fn shutdown(mut self, timeout: Duration) -> Result<(), Error> {
        self.stop(timeout)
    }

    fn stop(&mut self, timeout: Duration) -> Result<(), Error> {
        let Some(worker) = self.worker.take() else {
            return Ok(());
        };
        drop(self.stop_tx.take());
        self.shared.wake_now();
        match self.done_rx.recv_timeout(timeout) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                tracing::error!("worker did not stop within {timeout:?}");
                Err(Error::Timeout(crate::TimeoutKind::Shutdown))
            }
            _ => {
                if worker.join().is_err() {
                    tracing::error!("worker panicked");
                }
                Ok(())
            }
        }
    }
}

impl Drop for ThreadedClient {
    fn drop(&mut self) {
        let _ = self.stop(self.shutdown_timeout);
    }
}

/// Turns the session's reports into [`Event`]s, and never blocks while the connection lives:
/// when `event_rx` is full, events wait in a short backlog and the core stops reading until the
/// application catches up (still flushing, taking commands and checking deadlines).
pub(crate) struct Forward {
    events: Sender<Event>,
    /// Disconnected when the owner stops the worker (drop or `shutdown`).
    stop: Receiver<()>,
    /// Poked by every wake of the connection (stops from `control_tx`).
    nudge: Receiver<()>,
    /// Events the full channel has not taken yet, oldest first.
    backlog: VecDeque<Event>,
    /// The application dropped `event_rx`: nothing more can be delivered.
    gone: bool,
}

/// A backlog this long (error reports from commands) stops the worker taking more commands.
const MAX_BACKLOG: usize = 64;

impl Forward {
    /// A worker's dispatcher on its own, for the core's property tests: the event channel
    /// (`capacity`) and what must be kept alive while it runs (the owner's stop, the nudge).
    #[cfg(test)]
    pub(crate) fn for_test(capacity: usize) -> (Forward, Receiver<Event>, [Sender<()>; 2]) {
        let (events, events_rx) = crossbeam_channel::bounded(capacity);
        let (stop_tx, stop) = crossbeam_channel::bounded(1);
        let (nudge_tx, nudge) = crossbeam_channel::bounded(1);
        let forward = Forward {
            events,
            stop,
            nudge,
            backlog: VecDeque::new(),
            gone: false,
        };
        (forward, events_rx, [stop_tx, nudge_tx])
    }

    fn emit(&mut self, event: Event) {
        if self.gone {
            return;
        }
        if !self.backlog.is_empty() {
            return self.backlog.push_back(event);
        }
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(e)) => self.backlog.push_back(e),
            Err(TrySendError::Disconnected(_)) => self.gone = true,
        }
    }

    /// Hand on what the channel takes now; true when nothing is left waiting.
    fn deliver(&mut self) -> bool {
        while let Some(event) = self.backlog.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(e)) => {
                    self.backlog.push_front(e);
                    return false;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.gone = true;
                    self.backlog.clear();
                }
            }
        }
        true
    }

    fn owner_stopped(&self) -> bool {
        matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected))
    }
}

impl Dispatch for Forward {
    fn activated(&mut self, session: &mut Session) {
        if let Some(h) = session.handshake() {
            self.emit(Event::Activated(Box::new(h.clone())));
        }
    }
    fn message(&mut self, _session: &mut Session, message: Message) {
        let event = match message {
            Message::Text(t) => Event::TextMessage(t),
            Message::Binary(b) => Event::BinaryMessage(b),
            Message::Ping(p) => Event::Ping(p),
            Message::Pong(p) => Event::Pong(p),
            Message::Close(_) | Message::Frame(_) => return,
        };
        self.emit(event);
    }
    fn closed(&mut self, _session: &mut Session, close: CloseInfo) {
        self.emit(Event::ConnectionClosed(close));
    }
    fn error(&mut self, _session: &mut Session, error: Error) {
        self.emit(Event::Error(error));
    }
    fn idle(&mut self, _session: &mut Session) {}
    fn reconnecting(&mut self, _session: &mut Session, attempt: ReconnectAttempt) {
        self.emit(Event::Reconnecting(attempt));
    }
    /// The connection is over and its commands are closed: now waiting is harmless, so the
    /// backlog and `Quit` are delivered even to an application that reads slowly, unless the
    /// owner stops the worker meanwhile.
    fn quit(&mut self) {
        self.emit(Event::Quit);
        while !self.gone && !self.deliver() {
            let mut select = Select::new();
            select.send(&self.events);
            select.recv(&self.stop);
            select.ready();
            if self.owner_stopped() {
                return;
            }
        }
    }
    /// The owner stopped the worker, or the application dropped `event_rx`.
    fn stop_requested(&mut self) -> bool {
        self.gone || self.owner_stopped()
    }
    fn make_room(&mut self) -> bool {
        self.deliver()
    }
    fn has_room(&self) -> bool {
        self.backlog.is_empty()
    }
    fn answers_later(&self) -> bool {
        true
    }
    fn drained(&self) -> bool {
        self.gone || (self.backlog.is_empty() && self.events.is_empty())
    }
    fn takes_commands(&mut self) -> bool {
        self.backlog.len() < MAX_BACKLOG
    }
    fn wait_for_room(
        &mut self,
        deadline: Option<Instant>,
        commands: Option<&Receiver<crate::Command>>,
    ) {
        let mut select = Select::new();
        select.send(&self.events);
        select.recv(&self.stop);
        select.recv(&self.nudge);
        if let (Some(commands), true) = (commands, self.backlog.len() < MAX_BACKLOG) {
            select.recv(commands);
        }
        match deadline {
            Some(d) => {
                let _ = select.ready_deadline(d);
            }
            None => {
                select.ready();
            }
        }
        // A nudge has done its job by ending this wait.
        while self.nudge.try_recv().is_ok() {}
    }
}
