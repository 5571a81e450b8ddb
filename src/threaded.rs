//! The threaded client: the same core on a worker thread, commands in, events out.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};
use tungstenite::Message;

use crate::command::{CommandSender, Signal};
use crate::connect::connect;
use crate::driver::Driver;
use crate::handler::{CloseInfo, Context, Dispatch};
use crate::session::Session;
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
/// wait of the worker is bounded and interruptible except a reconnect attempt's connect (DNS,
/// TCP, TLS, upgrade), which the OS cannot interrupt; if the drop lands there, the worker is
/// left to end by itself within `handshake_timeout`.
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
    signal: Arc<Signal>,
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
        let (driver, control_tx, signal) =
            Driver::with_commands(session, WaitStrategy::Readiness, config)?;
        let mut driver = driver.redial_to(url, config);
        driver.set_command_spin(config.worker_spin);
        let control_rx = driver.commands().clone();
        let (event_tx, event_rx) = crossbeam_channel::bounded(config.event_capacity);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let worker = std::thread::Builder::new()
            .name("syncws-worker".into())
            .spawn(move || {
                let mut forward = Forward {
                    events: event_tx,
                    control: control_rx,
                    stop: stop_rx,
                    gone: false,
                };
                driver.run(&mut forward);
                // Commands first, so that once `event_rx` reports disconnection, `control_tx`
                // already does too; `done` last, so a joining owner sees both.
                let Forward {
                    events,
                    control,
                    stop,
                    ..
                } = forward;
                drop((control, stop));
                drop(events);
                drop(done_tx);
            })?;
        Ok(ThreadedClient {
            control_tx,
            event_rx,
            handshake,
            metrics,
            stop_tx: Some(stop_tx),
            signal,
            done_rx,
            worker: Some(worker),
            shutdown_timeout: config.shutdown_timeout,
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
    /// worker did not end within `timeout` (it is then left to finish on its own, within
    /// `handshake_timeout`).
    pub fn shutdown(mut self, timeout: Duration) -> Result<(), Error> {
        self.stop(timeout)
    }

    fn stop(&mut self, timeout: Duration) -> Result<(), Error> {
        let Some(worker) = self.worker.take() else {
            return Ok(());
        };
        drop(self.stop_tx.take());
        self.signal.wake_now();
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

/// Turns the session's reports into [`Event`]s. When `event_rx` is full it waits, while still
/// taking commands (a `ForceQuit` gets through) and watching for the owner's drop.
struct Forward {
    events: Sender<Event>,
    control: Receiver<crate::Command>,
    stop: Receiver<()>,
    /// The application dropped `event_rx` or the client: nothing more can be delivered.
    gone: bool,
}

impl Forward {
    fn emit(&mut self, ctx: Option<&mut Context<'_>>, event: Event) {
        if self.gone {
            return;
        }
        let mut event = match self.events.try_send(event) {
            Ok(()) => return,
            Err(TrySendError::Full(e)) => e,
            Err(TrySendError::Disconnected(_)) => return self.lost(ctx),
        };
        let mut ctx = ctx;
        loop {
            let mut select = Select::new();
            let send = select.send(&self.events);
            let stop = select.recv(&self.stop);
            let stalled = ctx.as_ref().is_none_or(|c| c.session.commands_stalled());
            let control = (!stalled).then(|| select.recv(&self.control));
            let ready = select.ready();
            if ready == send {
                event = match self.events.try_send(event) {
                    Ok(()) => return,
                    Err(TrySendError::Full(e)) => e,
                    Err(TrySendError::Disconnected(_)) => return self.lost(ctx),
                };
            } else if ready == stop {
                if let Err(TryRecvError::Disconnected) = self.stop.try_recv() {
                    return self.lost(ctx);
                }
            } else if Some(ready) == control {
                if let Some(c) = ctx.as_deref_mut() {
                    c.session.apply_commands();
                }
            }
        }
    }

    fn lost(&mut self, ctx: Option<&mut Context<'_>>) {
        self.gone = true;
        if let Some(c) = ctx {
            c.session.abandon();
        }
    }
}

impl Dispatch for Forward {
    fn activated(&mut self, ctx: &mut Context<'_>) {
        let handshake = ctx.handshake().cloned();
        if let Some(h) = handshake {
            self.emit(Some(ctx), Event::Activated(Box::new(h)));
        }
    }
    fn message(&mut self, ctx: &mut Context<'_>, message: Message) {
        let event = match message {
            Message::Text(t) => Event::TextMessage(t),
            Message::Binary(b) => Event::BinaryMessage(b),
            Message::Ping(p) => Event::Ping(p),
            Message::Pong(p) => Event::Pong(p),
            Message::Close(_) | Message::Frame(_) => return,
        };
        self.emit(Some(ctx), event);
    }
    fn closed(&mut self, ctx: &mut Context<'_>, close: CloseInfo) {
        self.emit(Some(ctx), Event::ConnectionClosed(close));
    }
    fn error(&mut self, ctx: &mut Context<'_>, error: Error) {
        self.emit(Some(ctx), Event::Error(error));
    }
    fn idle(&mut self, _ctx: &mut Context<'_>) {}
    fn reconnecting(&mut self, ctx: &mut Context<'_>, attempt: ReconnectAttempt) {
        self.emit(Some(ctx), Event::Reconnecting(attempt));
    }
    fn quit(&mut self) {
        self.emit(None, Event::Quit);
    }
    fn stop_requested(&mut self) -> bool {
        !self.gone && matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected))
    }
}
