//! The one loop every mode runs: commands, reads, deadlines, flush, then wait; and, for a
//! reconnecting client, backoff and redial around it.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::Message;

use crate::command::{CommandSender, Inbox, Signal};
use crate::handler::{Context, Dispatch};
use crate::reconnect::jitter_random;
use crate::session::Session;
use crate::wait::{Waiter, Woke};
use crate::{Config, ReconnectAttempt, WaitStrategy};

/// Where to dial again after a connection ends (clients with a reconnect policy).
#[derive(Debug)]
struct Dial {
    url: String,
    config: Config,
}

/// A session plus the way it waits. The front-ends build one and call [`Driver::run`].
#[derive(Debug)]
pub(crate) struct Driver {
    pub(crate) session: Session,
    pub(crate) waiter: Waiter,
    pub(crate) read_timeout: Option<Duration>,
    dial: Option<Dial>,
    /// What ended the last connection or failed the last attempt, for `ReconnectAttempt`.
    last_error: Option<String>,
}

impl Driver {
    /// A driver whose only input is the socket (the blocking client).
    pub(crate) fn new(
        session: Session,
        strategy: WaitStrategy,
        config: &Config,
    ) -> io::Result<Self> {
        let (waiter, _) = Waiter::new(strategy, &session, false)?;
        Ok(Driver::assemble(session, waiter, config))
    }

    /// A driver that also takes commands from other threads, with the sender for them and the
    /// signal that wakes the loop.
    pub(crate) fn with_commands(
        mut session: Session,
        strategy: WaitStrategy,
        config: &Config,
    ) -> io::Result<(Self, CommandSender, Arc<Signal>)> {
        let (waiter, waker) = Waiter::new(strategy, &session, true)?;
        let signal = Signal::new(waker);
        let (sender, inbox) = Inbox::channel(config.control_capacity, signal.clone());
        session.set_inbox(inbox);
        Ok((Driver::assemble(session, waiter, config), sender, signal))
    }

    fn assemble(session: Session, waiter: Waiter, config: &Config) -> Self {
        Driver {
            session,
            waiter,
            read_timeout: config.read_timeout,
            dial: None,
            last_error: None,
        }
    }

    /// Reconnect to `url` when a connection ends without the user asking, if the config has a
    /// policy.
    pub(crate) fn redial_to(mut self, url: &str, config: &Config) -> Self {
        if config.reconnect.is_some() {
            self.dial = Some(Dial {
                url: url.to_owned(),
                config: config.clone(),
            });
        }
        self
    }

    /// See [`Waiter::set_command_spin`].
    pub(crate) fn set_command_spin(&mut self, spin: Duration) {
        self.waiter.set_command_spin(spin);
    }

    /// The receiving end of the command channel (drivers built `with_commands`).
    pub(crate) fn commands(&mut self) -> &crossbeam_channel::Receiver<crate::Command> {
        // `with_commands` always installs an inbox; `new` drivers never call this.
        self.session
            .inbox_mut()
            .expect("driver has commands")
            .receiver()
    }

    /// Drive the connection (and its successors, when reconnecting) until it ends for good.
    /// `on_quit` is the last call, exactly once.
    pub(crate) fn run<D: Dispatch + ?Sized>(mut self, d: &mut D) {
        let span = tracing::debug_span!("session");
        let _enter = span.enter();
        let mut held = VecDeque::new();
        loop {
            d.activated(&mut Context {
                session: &mut self.session,
            });
            for message in held.drain(..) {
                if let Err(e) = self.session.send(message) {
                    d.error(
                        &mut Context {
                            session: &mut self.session,
                        },
                        e,
                    );
                }
            }
            self.pump(d);
            match self.redial(d) {
                Some(h) => held = h,
                None => break,
            }
        }
        self.session.refuse_remaining_commands();
        self.report(d);
        d.quit();
    }

    /// Passes over one connection until it ends.
    fn pump<D: Dispatch + ?Sized>(&mut self, d: &mut D) {
        self.last_error = None;
        let mut last_input = Instant::now();
        // Whether the socket may have data the session has not seen (see `TcpConn::rearm`).
        let mut rearm = true;
        loop {
            if d.stop_requested() {
                self.session.abandon();
            }
            self.report(d);
            if self.session.is_done() {
                return;
            }
            let written = self.session.stream().bytes_written();
            let more_commands = self.session.apply_commands();
            if rearm {
                self.session.rearm_reads();
            }
            let pass = self.session.read_pass(d);
            let now = Instant::now();
            if pass.messages > 0 {
                last_input = now;
            }
            // Deadlines may queue a heartbeat ping; it goes out with the rest.
            self.session.check_deadlines(now);
            // Everything the hooks queued while reading goes out in one write.
            self.session.flush();
            self.report(d);
            if self.session.is_done() {
                return;
            }
            rearm = true;
            if pass.more || more_commands {
                continue;
            }
            let idle_at = self.read_timeout.map(|t| last_input + t);
            let deadline = match (self.session.next_deadline(), idle_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let active = pass.messages > 0 || self.session.stream().bytes_written() != written;
            let woke = self.waiter.wait(
                deadline,
                self.session.inbox_mut(),
                active,
                pass.messages > 0,
            );
            // Edge-triggered readiness reports every arrival, so after a wait that only a
            // command or the deadline ended, the socket has nothing new.
            rearm = !matches!(woke, Ok(Woke::Command | Woke::Deadline));
            if matches!(woke, Ok(Woke::PeerClosed)) {
                // A short read no longer means "nothing more": the end of the stream is.
                self.session.stop_read_hints();
            }
            match woke {
                Ok(Woke::Poll) if pass.messages == 0 && self.waiter.idles_every_pass() => {
                    d.idle(&mut Context {
                        session: &mut self.session,
                    });
                }
                Ok(_) => {}
                Err(e) => self.session.fail(e.into(), None),
            }
            if idle_at.is_some_and(|t| Instant::now() >= t) {
                last_input = Instant::now();
                d.idle(&mut Context {
                    session: &mut self.session,
                });
            }
        }
    }

    /// After a connection ended: back off and dial again until it works, the policy gives up,
    /// or the user stops it. Returns the messages held meanwhile, with a new session in place.
    fn redial<D: Dispatch + ?Sized>(&mut self, d: &mut D) -> Option<VecDeque<Message>> {
        let dial = self.dial.as_ref()?;
        let policy = dial.config.reconnect.clone()?;
        if self.session.user_ended() || d.stop_requested() {
            return None;
        }
        self.waiter.unbind(&self.session);
        self.session.enter_reconnect(dial.config.while_disconnected);
        for attempt in 1.. {
            if policy.max_attempts.is_some_and(|max| attempt > max) {
                tracing::warn!(attempts = attempt - 1, "giving up reconnecting");
                self.session.drop_held();
                return None;
            }
            let delay = policy.delay(attempt, jitter_random());
            tracing::info!(attempt, ?delay, "reconnecting");
            d.reconnecting(
                &mut Context {
                    session: &mut self.session,
                },
                ReconnectAttempt {
                    attempt,
                    delay,
                    last_error: self.last_error.clone(),
                },
            );
            if !self.backoff(delay, d) {
                self.session.drop_held();
                return None;
            }
            // Borrow the dial target afresh: `backoff` needed `self` mutably.
            let dial = self.dial.as_ref()?;
            match crate::connect::connect(&dial.url, &dial.config) {
                Ok((ws, handshake)) => {
                    let mut session = Session::new(ws, Some(handshake), &dial.config);
                    let held = session.adopt(&mut self.session);
                    if let Err(e) = self.waiter.rebind(&self.session, &session) {
                        session.fail(e.into(), None);
                    }
                    self.session = session;
                    self.session.metrics().reconnected();
                    self.last_error = None;
                    return Some(held);
                }
                Err(e) => {
                    let permanent = e.is_permanent();
                    self.last_error = Some(e.to_string());
                    d.error(
                        &mut Context {
                            session: &mut self.session,
                        },
                        e,
                    );
                    if permanent {
                        tracing::warn!("giving up reconnecting: retrying cannot help");
                        self.session.drop_held();
                        return None;
                    }
                }
            }
        }
        None
    }

    /// Wait `delay`, still taking commands: a close or force-quit (or the owner's drop) ends
    /// the wait and the reconnecting at once. Returns whether to go on.
    fn backoff<D: Dispatch + ?Sized>(&mut self, delay: Duration, d: &mut D) -> bool {
        let until = Instant::now() + delay;
        loop {
            self.session.apply_commands();
            self.report(d);
            if self.session.user_ended() || d.stop_requested() {
                return false;
            }
            if Instant::now() >= until {
                return true;
            }
            if let Err(e) = self
                .waiter
                .wait(Some(until), self.session.inbox_mut(), false, false)
            {
                tracing::warn!(error = %e, "wait failed during backoff");
                return false;
            }
        }
    }

    /// Hand queued errors to the dispatcher, remembering the last for `ReconnectAttempt`.
    fn report<D: Dispatch + ?Sized>(&mut self, d: &mut D) {
        while let Some(error) = self.session.take_error() {
            self.last_error = Some(error.to_string());
            d.error(
                &mut Context {
                    session: &mut self.session,
                },
                error,
            );
        }
    }
}
