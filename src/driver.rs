//! The one loop every mode runs: commands, reads, deadlines, flush, then wait; and, for a
//! reconnecting client, backoff and redial around it.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::command::{CommandSender, Inbox, Shared};

use crate::reconnect::jitter_random;
use crate::session::{Dispatch, Session};
use crate::wait::{Waiter, Woke};
use crate::{Config, ReconnectAttempt, WaitStrategy};

/// Where to dial again after a connection ends (clients with a reconnect policy).
#[derive(Debug)]
struct Dial {
    url: String,
    config: Config,
}

/// What one pass over a session found it needs next. Waiting is the caller's business: each
/// front-end passes, then waits its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Work is left that no event will announce (a spent budget, ready commands): pass again
    /// without waiting.
    Again,
    /// Wait for the socket, a command, or `deadline`. `active`: the pass read or wrote;
    /// `delivered`: it dispatched messages.
    Wait {
        deadline: Option<Instant>,
        active: bool,
        delivered: bool,
    },
    /// The dispatcher has no room (its application fell behind): wait for room, a command, a
    /// stop or `deadline`; reading stays paused until then.
    Paused { deadline: Option<Instant> },
    /// The connection is over.
    Done,
}

/// How long a paused worker whose socket is also full waits in the OS poll before it looks for
/// room in the event channel again (the one wait that cannot watch both at once).
const PAUSED_AND_BLOCKED_POLL: Duration = Duration::from_millis(1);

/// A session plus the way it waits. The front-ends build one and call [`Driver::run`].
#[derive(Debug)]
pub(crate) struct Driver {
    pub(crate) session: Session,
    pub(crate) waiter: Waiter,
    pub(crate) read_timeout: Option<Duration>,
    dial: Option<Dial>,
    /// What ended the last connection or failed the last attempt, for `ReconnectAttempt`.
    last_error: Option<String>,
    /// When a message last arrived (for `read_timeout`).
    last_input: Instant,
    /// Whether the socket may have data the session has not seen (see `TcpConn::rearm`).
    rearm: bool,
}

impl Driver {
    /// A driver that takes commands from other threads (every front-end has a handle), with
    /// the sender for them and what wakes the loop. `nudge`: also poked on every wake, for a
    /// dispatcher that sometimes waits on channels instead of the OS poll (threaded).
    pub(crate) fn new(
        mut session: Session,
        strategy: WaitStrategy,
        config: &Config,
        nudge: Option<crossbeam_channel::Sender<()>>,
    ) -> io::Result<(Self, CommandSender, Arc<Shared>)> {
        let (mut waiter, waker) = Waiter::new(strategy, true)?;
        waiter.bind(&session)?;
        let shared = Shared::new(waker, nudge);
        let (sender, inbox) = Inbox::channel(config.control_capacity(), shared.clone());
        session.set_inbox(inbox);
        let driver = Driver {
            session,
            waiter,
            read_timeout: config.read_timeout(),
            dial: None,
            last_error: None,
            last_input: Instant::now(),
            rearm: true,
        };
        Ok((driver, sender, shared))
    }

    /// Reconnect to `url` when a connection ends without the user asking, if the config has a
    /// policy.
    pub(crate) fn redial_to(mut self, url: &str, config: &Config) -> Self {
        if config.reconnect().is_some() {
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

    /// Drive the connection (and its successors, when reconnecting) until it ends for good.
    /// `on_quit` is the last call, exactly once.
    pub(crate) fn run<D: Dispatch + ?Sized>(mut self, d: &mut D) {
        let span = tracing::debug_span!("session");
        let _enter = span.enter();
        loop {
            d.activated(&mut self.session);
            self.pump(d);
            if !self.redial(d) {
                break;
            }
        }
        self.session.refuse_remaining_commands();
        self.report(d);
        d.quit();
    }

    /// Pass, then wait, until the connection ends.
    fn pump<D: Dispatch + ?Sized>(&mut self, d: &mut D) {
        self.last_error = None;
        self.last_input = Instant::now();
        self.rearm = true;
        loop {
            match self.pass(d) {
                Step::Done => return,
                Step::Again => {}
                Step::Wait {
                    deadline,
                    active,
                    delivered,
                } => self.wait(d, deadline, active, delivered),
                Step::Paused { deadline } => {
                    if self.session.write_blocked() {
                        // Both the application and the peer are behind: watch the socket, and
                        // look for room again soon.
                        let soon = Instant::now() + PAUSED_AND_BLOCKED_POLL;
                        let deadline = Some(deadline.map_or(soon, |t| t.min(soon)));
                        self.wait(d, deadline, false, false);
                    } else {
                        let commands = self
                            .session
                            .inbox()
                            .filter(|i| !i.is_held())
                            .map(|i| i.receiver());
                        d.wait_for_room(deadline, commands);
                    }
                    // Reading stopped short of "would block": look at the socket again.
                    self.rearm = true;
                }
            }
        }
    }

    /// One pass: stop requests, room made by the socket, commands, reads, deadlines, one
    /// flush. Returns what the session needs next; never waits.
    pub(crate) fn pass<D: Dispatch + ?Sized>(&mut self, d: &mut D) -> Step {
        if d.stop_requested() {
            self.session.abandon();
        }
        self.report(d);
        if self.session.is_done() {
            return Step::Done;
        }
        let written = self.session.stream().bytes_written();
        // Room the socket made goes to a held send before new commands and reads.
        if self.session.write_blocked() {
            self.session.flush();
        }
        let more_commands = self.session.apply_commands(d.takes_commands());
        if self.rearm {
            self.session.rearm_reads();
        }
        let pass = self.session.read_pass(d);
        let now = Instant::now();
        if pass.messages > 0 {
            self.last_input = now;
        }
        // Deadlines may queue a heartbeat ping; it goes out with the rest.
        self.session.check_deadlines(now);
        // Everything the hooks queued while reading goes out in one write.
        self.session.flush();
        self.report(d);
        if self.session.is_done() {
            return Step::Done;
        }
        if self.session.take_writable() {
            d.writable(&mut self.session);
        }
        self.rearm = true;
        if pass.more || more_commands || self.session.commands_ready() {
            return Step::Again;
        }
        let idle_at = self.read_timeout.map(|t| self.last_input + t);
        let deadline = match (self.session.next_deadline(), idle_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if !d.accepting() {
            return Step::Paused { deadline };
        }
        let active = pass.messages > 0 || self.session.stream().bytes_written() != written;
        Step::Wait {
            deadline,
            active,
            delivered: pass.messages > 0,
        }
    }

    /// Wait as the waiter does, then note what the wait says about the socket, and call
    /// `on_idle` when it is due.
    fn wait<D: Dispatch + ?Sized>(
        &mut self,
        d: &mut D,
        deadline: Option<Instant>,
        active: bool,
        delivered: bool,
    ) {
        let woke = self
            .waiter
            .wait(deadline, self.session.inbox(), active, delivered);
        // Edge-triggered readiness reports every arrival, so after a wait that only a command
        // or the deadline ended, the socket has nothing new.
        self.rearm = !matches!(woke, Ok(Woke::Command | Woke::Deadline));
        if matches!(woke, Ok(Woke::PeerClosed)) {
            // A short read no longer means "nothing more": the end of the stream is.
            self.session.stop_read_hints();
        }
        match woke {
            Ok(Woke::Poll) if !delivered && self.waiter.idles_every_pass() => {
                d.idle(&mut self.session);
            }
            Ok(_) => {}
            Err(e) => self.session.fail(e.into(), None),
        }
        let idle_at = self.read_timeout.map(|t| self.last_input + t);
        if idle_at.is_some_and(|t| Instant::now() >= t) {
            self.last_input = Instant::now();
            d.idle(&mut self.session);
        }
    }

    /// After a connection ended: back off and dial again until it works, the policy gives up,
    /// or the user stops it. Returns whether a new session is in place (it has adopted the
    /// messages held meanwhile).
    fn redial<D: Dispatch + ?Sized>(&mut self, d: &mut D) -> bool {
        let Some(dial) = self.dial.as_ref() else {
            return false;
        };
        let Some(policy) = dial.config.reconnect().cloned() else {
            return false;
        };
        if self.session.user_ended() || d.stop_requested() {
            return false;
        }
        self.waiter.unbind(&self.session);
        self.session
            .enter_reconnect(dial.config.while_disconnected());
        for attempt in 1.. {
            if policy.max_attempts.is_some_and(|max| attempt > max) {
                tracing::warn!(attempts = attempt - 1, "giving up reconnecting");
                self.session.drop_held();
                return false;
            }
            let delay = policy.delay(attempt, jitter_random());
            tracing::info!(attempt, ?delay, "reconnecting");
            d.reconnecting(
                &mut self.session,
                ReconnectAttempt {
                    attempt,
                    delay,
                    last_error: self.last_error.clone(),
                },
            );
            if !self.backoff(delay, d) {
                self.session.drop_held();
                return false;
            }
            // Borrow the dial target afresh: `backoff` needed `self` mutably.
            let Some(dial) = self.dial.as_ref() else {
                return false;
            };
            match crate::connect::connect(&dial.url, &dial.config) {
                Ok((ws, handshake)) => {
                    let mut session = Session::new(ws, Some(handshake), &dial.config);
                    session.adopt(&mut self.session);
                    if let Err(e) = self.waiter.bind(&session) {
                        session.fail(e.into(), None);
                    }
                    self.session = session;
                    self.session.metrics().reconnected();
                    self.last_error = None;
                    return true;
                }
                Err(e) => {
                    let permanent = e.is_permanent();
                    self.last_error = Some(e.to_string());
                    d.error(&mut self.session, e);
                    if permanent {
                        tracing::warn!("giving up reconnecting: retrying cannot help");
                        self.session.drop_held();
                        return false;
                    }
                }
            }
        }
        false
    }

    /// Wait `delay`, still taking commands: a close or force-quit (or the owner's drop) ends
    /// the wait and the reconnecting at once. Returns whether to go on.
    fn backoff<D: Dispatch + ?Sized>(&mut self, delay: Duration, d: &mut D) -> bool {
        let until = Instant::now() + delay;
        loop {
            self.session.apply_commands(true);
            self.report(d);
            if self.session.user_ended() || d.stop_requested() {
                return false;
            }
            if Instant::now() >= until {
                return true;
            }
            if let Err(e) = self
                .waiter
                .wait(Some(until), self.session.inbox(), false, false)
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
            d.error(&mut self.session, error);
        }
    }
}
