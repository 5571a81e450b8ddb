//! The one loop every mode runs: commands, reads, deadlines, flush, then wait; and, for a
//! reconnecting client, backoff and redial as states of the same pass.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocket;

use crate::command::{CommandSender, Inbox, Shared};
use crate::dial::{Dial, Interest, Progress};
use crate::reconnect::jitter_random;
use crate::resolver::Wake;
use crate::session::{Dispatch, Session};
use crate::stream::Stream;
use crate::sys::{AsFd, BorrowedSocket};
use crate::wait::{Interest as SocketInterest, Waiter, Woke};
use crate::waker::SetWaker;
use crate::{Config, Error, Handshake, Reconnect, ReconnectAttempt, WaitStrategy};

/// Where to dial again after a connection ends (clients with a reconnect policy).
#[derive(Debug)]
struct Redial {
    url: String,
    config: Config,
}

/// A reconnecting client between connections, or a client opening its first connection
/// without waiting for it (the many-connections front-end).
#[derive(Debug)]
struct Reconnecting {
    policy: Reconnect,
    /// The attempt under way (counting from 1).
    attempt: u32,
    stage: Stage,
    /// Opening the first connection: one attempt, as `connect` is in the other modes; a
    /// failure ends the client, and the policy applies only once a connection has been open.
    first: bool,
}

#[derive(Debug)]
enum Stage {
    /// Waiting out the attempt's delay.
    Backoff { until: Instant },
    /// The attempt's connection being opened.
    Dialing(Box<Dial>),
}

/// What one pass found the connection needs next. Waiting is the caller's business: each
/// front-end passes, then waits its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Work is left that no event will announce (a spent budget, ready commands): pass again
    /// without waiting.
    Again,
    /// Wait for the socket, a command, or `deadline`. `active`: the pass read or wrote;
    /// `delivered`: it dispatched messages; `read`: the socket is watched for reading (not
    /// while our queue is at its bound: reading waits for the peer to take what we owe it).
    Wait {
        deadline: Option<Instant>,
        active: bool,
        delivered: bool,
        read: bool,
    },
    /// The dispatcher has no room (its application fell behind): wait for room, a command, a
    /// stop or `deadline`; reading stays paused until then.
    Paused { deadline: Option<Instant> },
    /// Between connections (a reconnecting client): wait for a command, a stop or `deadline`,
    /// and, when there is a `socket` interest, for the dial's socket to be ready that way.
    /// Without one (a backoff, or a dial whose name is being looked up) nothing but the
    /// connection's waker ends the wait before the deadline: a command, a stop, or the
    /// resolver's answer (`Shared::wake_now`). The last connection's socket is no longer
    /// watched.
    Reconnecting {
        socket: Option<Interest>,
        deadline: Option<Instant>,
    },
    /// The connection is over, for good.
    Done,
}

/// What a dial of this connection calls when its name lookup answers: the connection's own
/// wake, as a stop's (in a set it names the member, which the set then passes; alone it ends
/// the wait in the OS poll or the park).
fn resolver_wake(session: &Session) -> Wake {
    match session.inbox() {
        Some(inbox) => {
            let shared = inbox.shared().clone();
            Wake::new(move || shared.wake_now())
        }
        // Every driver has an inbox (`with_inbox`); without one, the dial's deadline ends
        // each wait instead.
        None => Wake::new(|| {}),
    }
}

/// Whether a connection's end keeps what it left unsent for the next connection.
fn keeps_unsent(config: &Config) -> bool {
    config.reconnect().is_some()
        && matches!(
            config.while_disconnected(),
            crate::WhileDisconnected::Queue { .. }
        )
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
    /// Boxed: a Config is 600 bytes, and most drivers never redial.
    redial: Option<Box<Redial>>,
    /// Between connections: the attempt under way.
    reconnecting: Option<Reconnecting>,
    /// The session has not been announced (`Dispatch::activated`) yet.
    fresh: bool,
    /// The pass said `Done`: nothing follows.
    over: bool,
    /// What ended the last connection or failed the last attempt, for `ReconnectAttempt`.
    last_error: Option<String>,
    /// When the connection opened by a reconnect did, and the attempt that opened it: a
    /// connection that ends before the policy's `min_uptime` goes on from that attempt.
    reopened: Option<(Instant, u32)>,
    /// The set could not watch the dial's socket (or wait at all): the attempt under way fails
    /// with this on the next pass; `true`: and no other attempt follows.
    dial_failure: Option<(Error, bool)>,
    /// When a message last arrived (for `read_timeout`).
    last_input: Instant,
    /// Whether the socket may have data the session has not seen (see `TcpConn::rearm`).
    rearm: bool,
    /// Counts the sockets this driver has waited on (see [`Driver::socket`]).
    socket_epoch: u64,
}

impl Driver {
    /// A driver that takes commands from other threads (every front-end has a handle), with
    /// the sender for them and what wakes the loop. `nudge`: also poked on every wake, for a
    /// dispatcher that sometimes waits on channels instead of the OS poll (threaded).
    pub(crate) fn new(
        session: Session,
        strategy: WaitStrategy,
        config: &Config,
        nudge: Option<crossbeam_channel::Sender<()>>,
    ) -> io::Result<(Box<Self>, CommandSender, Arc<Shared>)> {
        let (waiter, waker) = Waiter::new(strategy, true)?;
        let shared = Shared::new(waker, nudge);
        let (driver, sender) = Driver::with_inbox(session, waiter, config, shared.clone());
        Ok((driver, sender, shared))
    }

    /// The one place a driver is put together: `session` takes commands through a new
    /// channel woken by `shared`, and starts as a connection to announce. Boxed (about 2 KiB):
    /// front-ends move their driver around (into a thread, into a set, out of a server's
    /// upgrade), and a copy in every frame it passes through costs stack that a long-lived
    /// thread keeps in its RSS.
    fn with_inbox(
        mut session: Session,
        waiter: Waiter,
        config: &Config,
        shared: Arc<Shared>,
    ) -> (Box<Self>, CommandSender) {
        let (sender, inbox) =
            Inbox::channel(config.control_capacity(), config.control_bytes(), shared);
        session.set_inbox(inbox);
        let driver = Box::new(Driver {
            session,
            waiter,
            read_timeout: config.read_timeout(),
            redial: None,
            reconnecting: None,
            fresh: true,
            over: false,
            last_error: None,
            reopened: None,
            dial_failure: None,
            last_input: Instant::now(),
            rearm: true,
            socket_epoch: 0,
        });
        (driver, sender)
    }

    /// An accepted server connection, not running yet: nothing can wake it, so it holds no
    /// waker (its socket is its only descriptor) until it is run on a thread of its own
    /// ([`Driver::wake_by_readiness`]) or joins a set ([`Driver::join_set`]).
    pub(crate) fn accepted(session: Session, config: &Config) -> (Box<Self>, CommandSender) {
        // Replaced by whichever runs it.
        Driver::with_inbox(session, Waiter::Spin, config, Shared::unwoken())
    }

    /// An accepted connection runs on its own thread: it waits in the OS poll on its socket
    /// and a waker of its own, which its senders now use.
    /// Without a waker (the process is out of descriptors) it still waits in the OS poll, on
    /// its socket only.
    pub(crate) fn wake_by_readiness(&mut self) -> io::Result<()> {
        let (waiter, waker) = match Waiter::new(WaitStrategy::Readiness, true) {
            Ok(made) => made,
            Err(e) => {
                self.waiter = Waiter::new(WaitStrategy::Readiness, false)?.0;
                return Err(e);
            }
        };
        if let (Some(inbox), Some(waker)) = (self.session.inbox(), waker) {
            if !inbox.shared().wake_by(waker) {
                // Built with a wake of its own (not `accepted`): keep it, and its waiter.
                return Ok(());
            }
        }
        self.waiter = waiter;
        Ok(())
    }

    /// An accepted connection becomes member `id` of a set: the set waits for it, and its
    /// senders wake the set. Returns what it shares with them, or `None` if it had a wake
    /// already (a driver not made by `accepted`).
    pub(crate) fn join_set(&mut self, set: Arc<SetWaker>, id: u64) -> Option<Arc<Shared>> {
        let shared = self.session.inbox()?.shared().clone();
        shared.wake_in_set(set, id).then_some(shared)
    }

    /// A client that has not connected yet: its first pass starts opening `url` (the name
    /// looked up in the resolver pool, then TCP, TLS and the upgrade as the socket allows),
    /// and a later pass announces the connection. For a front-end that waits for many
    /// drivers at once: it calls [`Driver::pass`], waits on [`Driver::socket`] itself and
    /// reports what ended the wait with [`Driver::woke`]; this driver's own waiter is never
    /// used.
    pub(crate) fn dialing(
        url: &str,
        config: &Config,
        shared: Arc<Shared>,
    ) -> (Box<Self>, CommandSender) {
        // The set waits for all its drivers; this one's own waiter is never used.
        let (mut driver, sender) =
            Driver::with_inbox(Session::detached(config), Waiter::Spin, config, shared);
        driver.session.keep_unsent(keeps_unsent(config));
        driver.redial = Some(Box::new(Redial {
            url: url.to_owned(),
            config: config.clone(),
        }));
        driver.reconnecting = Some(Reconnecting {
            policy: config.reconnect().cloned().unwrap_or_default(),
            attempt: 1,
            stage: Stage::Backoff {
                until: Instant::now(),
            },
            first: true,
        });
        // Announced once the first connection is open (`reconnected`).
        driver.fresh = false;
        (driver, sender)
    }

    /// Whether the next pass has work that no socket event will announce (checked after
    /// parking, see `Shared::notify`): a stop, or new commands, except while opening the
    /// first connection, when sends wait in the channel for it and only a stop counts.
    pub(crate) fn has_work(&self) -> bool {
        let Some(inbox) = self.session.inbox() else {
            return false;
        };
        match &self.reconnecting {
            Some(r) if r.first => inbox.shared().stop_waiting(),
            _ => inbox.has_work(),
        }
    }

    /// The socket to wait on now (the session's, or the dial's between connections), and a
    /// number that changes whenever that may be a different socket than before (a new
    /// connection, a dial under way), so a front-end that registers sockets with the OS
    /// knows when to register again.
    pub(crate) fn socket(&self) -> Option<(BorrowedSocket<'_>, u64)> {
        match &self.reconnecting {
            Some(Reconnecting {
                stage: Stage::Dialing(dial),
                ..
            }) => dial.fd().map(|fd| (fd, self.socket_epoch)),
            Some(_) => None,
            None => self
                .session
                .stream()
                .tcp_conn()
                .map(|c| (c.tcp().as_fd(), self.socket_epoch)),
        }
    }

    /// Reconnect to `url` when a connection ends without the user asking, if the config has a
    /// policy.
    pub(crate) fn redial_to(mut self: Box<Self>, url: &str, config: &Config) -> Box<Self> {
        self.session.keep_unsent(keeps_unsent(config));
        if config.reconnect().is_some() {
            self.redial = Some(Box::new(Redial {
                url: url.to_owned(),
                config: config.clone(),
            }));
        }
        self
    }

    /// See [`Waiter::set_command_spin`].
    pub(crate) fn set_command_spin(&mut self, spin: Duration) {
        self.waiter.set_command_spin(spin);
    }

    /// Drive the connection (and its successors, when reconnecting) until it ends for good:
    /// pass, then wait as the step says. `on_quit` is the last call, exactly once.
    pub(crate) fn run<D: Dispatch + ?Sized>(mut self, d: &mut D) {
        let span = tracing::debug_span!("session");
        let _enter = span.enter();
        loop {
            match self.pass(d) {
                Step::Done => break,
                Step::Again => {}
                Step::Wait {
                    deadline,
                    active,
                    delivered,
                    read,
                } => self.wait(d, read, deadline, active, delivered),
                Step::Paused { deadline } => self.wait_paused(d, deadline),
                Step::Reconnecting { socket, deadline } => {
                    if let Err(e) = self.wait_reconnecting(d, socket, deadline) {
                        tracing::warn!(error = %e, "wait failed while reconnecting");
                        self.stop_reconnecting();
                    }
                }
            }
        }
        self.finish(d);
    }

    /// The owner dropped its client without running it, so there is no handler to report to:
    /// a best-effort Close 1001 goes out now, the gate closes (later sends fail), and what was
    /// accepted but never sent is counted in the log.
    pub(crate) fn drop_unrun(&mut self) {
        self.session.abandon();
        self.session.refuse_remaining_commands();
        let mut unsent = 0;
        while self.session.take_error().is_some() {
            unsent += 1;
        }
        if unsent > 0 {
            tracing::warn!(
                commands = unsent,
                "client dropped without run: commands accepted by its handle were not sent"
            );
        }
    }

    /// The connection is over for good (`pass` said `Done`): report the commands that will
    /// never be carried out, then `on_quit`, the last call.
    pub(crate) fn finish<D: Dispatch + ?Sized>(&mut self, d: &mut D) {
        self.finish_reports(d);
        d.quit();
    }

    /// [`finish`](Self::finish) without `on_quit`, for a front-end that calls it itself (a
    /// set, which calls it however the reports went: see `connection_set`).
    pub(crate) fn finish_reports<D: Dispatch + ?Sized>(&mut self, d: &mut D) {
        self.session.refuse_remaining_commands();
        self.report(d);
    }

    /// A pass panicked (a set caught it): the connection ends, reporting `error` first. An
    /// open one closes with 1011 (see `Session::panicked`); one between connections stops
    /// reconnecting; none reconnects, since its handler can no longer be trusted with a new
    /// connection.
    pub(crate) fn panicked(&mut self, error: Error) {
        self.redial = None;
        self.dial_failure = None;
        if self.reconnecting.is_some() {
            self.session.report_later(error);
            self.stop_reconnecting();
        } else {
            self.session.panicked(error);
        }
    }

    /// One pass over whatever the connection is doing: a session ([`Driver::session_pass`]),
    /// or, between connections, a backoff or a dial ([`Driver::reconnect_pass`]). Never waits
    /// (a dial's name lookup runs in the resolver pool, which wakes the connection).
    pub(crate) fn pass<D: Dispatch + ?Sized>(&mut self, d: &mut D) -> Step {
        if self.over {
            return Step::Done;
        }
        if self.reconnecting.is_some() {
            return self.reconnect_pass(d);
        }
        if self.fresh {
            self.fresh = false;
            d.activated(&mut self.session);
            self.last_error = None;
            self.last_input = Instant::now();
            self.rearm = true;
        }
        match self.session_pass(d) {
            Step::Done if self.start_reconnecting(d) => self.reconnect_pass(d),
            Step::Done => {
                self.over = true;
                Step::Done
            }
            step => step,
        }
    }

    /// The dispatcher has no room: wait for it (or for the socket, when it is full too).
    fn wait_paused<D: Dispatch + ?Sized>(&mut self, d: &mut D, deadline: Option<Instant>) {
        if self.session.write_blocked() {
            // Both the application and the peer are behind: watch the socket, and look for
            // room again soon.
            let soon = Instant::now() + PAUSED_AND_BLOCKED_POLL;
            let deadline = Some(deadline.map_or(soon, |t| t.min(soon)));
            // Not for reading: what the socket holds waits for room (poll is level-triggered).
            self.wait(d, false, deadline, false, false);
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

    /// One pass over the session: stop requests, room made by the socket, commands, reads,
    /// deadlines, one flush. Returns what the session needs next; never waits.
    fn session_pass<D: Dispatch + ?Sized>(&mut self, d: &mut D) -> Step {
        if d.stop_requested() {
            self.session.abandon();
        }
        self.report(d);
        if self.session.is_done() {
            return Step::Done;
        }
        // The application had no room at the last pass; if it has now, the clocks that measure
        // the peer go on from where they stood.
        if self.session.is_paused() && d.make_room() {
            let held = self.session.resume(Instant::now());
            self.last_input = crate::deadline::after(self.last_input, held);
        }
        let written = self.session.stream().bytes_written();
        // Room the socket made goes to a held send before new commands and reads.
        if self.session.write_blocked() {
            self.session.flush();
        }
        let takes = d.takes_commands();
        let more_commands = self.session.apply_commands(takes);
        if self.rearm {
            self.session.rearm_reads();
        }
        let pass = self.session.read_pass(d);
        let now = Instant::now();
        if pass.messages > 0 {
            self.last_input = now;
        }
        self.session.check_settled(d.drained(), now);
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
        // A read that stopped for room left messages in our buffers, where no readiness will
        // announce them: room now (after handing on what waits) means read on at once; no room
        // means pause until there is.
        let room = d.make_room();
        let resume = pass.stopped_for_room && room;
        if pass.more || more_commands || resume || self.session.commands_ready(takes) {
            return Step::Again;
        }
        if !room {
            // The peer is not measured on the application's time: no idle deadline, and the
            // session's own clocks stand still until there is room.
            self.session.pause(now);
            return Step::Paused {
                deadline: self.session.next_deadline(),
            };
        }
        let idle_at = self
            .read_timeout
            .map(|t| crate::deadline::after(self.last_input, t));
        let deadline = match (self.session.next_deadline(), idle_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let active = pass.messages > 0 || self.session.stream().bytes_written() != written;
        Step::Wait {
            deadline,
            active,
            delivered: pass.messages > 0,
            read: !self.session.reads_held(),
        }
    }

    /// Wait as the waiter does (for the socket: reading when `read`, writing while the outbox
    /// waits for room), then note what the wait says about the socket, and call `on_idle` when
    /// it is due.
    fn wait<D: Dispatch + ?Sized>(
        &mut self,
        d: &mut D,
        read: bool,
        deadline: Option<Instant>,
        active: bool,
        delivered: bool,
    ) {
        let interest = SocketInterest {
            read,
            write: self.session.write_blocked(),
        };
        let socket = self
            .session
            .stream()
            .tcp_conn()
            .map(|c| (c.tcp().as_fd(), interest));
        let woke = self
            .waiter
            .wait(socket, deadline, self.session.inbox(), active, delivered);
        match woke {
            Ok(woke) => self.woke(d, woke, delivered),
            Err(e) => self.session.fail(e.into(), None),
        }
    }

    /// What ended a wait after a `Wait` step (ours, or a front-end's that waits for many
    /// drivers): note what it says about the socket, and call `on_idle` when it is due.
    /// `delivered`: the pass before the wait dispatched messages.
    pub(crate) fn woke<D: Dispatch + ?Sized>(&mut self, d: &mut D, woke: Woke, delivered: bool) {
        // Readiness reports what the socket holds, so after a wait that only a command or the
        // deadline ended, the socket has nothing new.
        self.rearm = !matches!(woke, Woke::Command | Woke::Deadline);
        if woke == Woke::PeerClosed {
            // A short read no longer means "nothing more": the end of the stream is.
            self.session.stop_read_hints();
        }
        if woke == Woke::Poll && !delivered && self.waiter.idles_every_pass() {
            d.idle(&mut self.session);
        }
        let idle_at = self
            .read_timeout
            .map(|t| crate::deadline::after(self.last_input, t));
        if idle_at.is_some_and(|t| Instant::now() >= t) {
            self.last_input = Instant::now();
            d.idle(&mut self.session);
        }
    }

    /// Wait as a reconnecting client does: for the dial's socket (if it has one), a command, a
    /// stop, the resolver's answer (through the waker, as a command), or `deadline`.
    fn wait_reconnecting<D: Dispatch + ?Sized>(
        &mut self,
        d: &mut D,
        socket: Option<Interest>,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        let socket = match (socket, &self.reconnecting) {
            (
                Some(interest),
                Some(Reconnecting {
                    stage: Stage::Dialing(dial),
                    ..
                }),
            ) => dial.fd().map(|fd| (fd, interest.into())),
            _ => None,
        };
        // Commands end the wait only if the next pass takes them (a stop wakes it anyway).
        let inbox = self.session.inbox().filter(|_| d.takes_commands());
        self.waiter
            .wait(socket, deadline, inbox, false, false)
            .map(|_| ())
    }

    /// The connection ended: reconnect if there is a policy and the user did not end it (or
    /// drop the client). Returns whether the first attempt is under way.
    fn start_reconnecting<D: Dispatch + ?Sized>(&mut self, d: &mut D) -> bool {
        let Some(redial) = &self.redial else {
            return false;
        };
        let Some(policy) = redial.config.reconnect().cloned() else {
            return false;
        };
        if self.session.user_ended() || d.stop_requested() {
            return false;
        }
        self.session
            .enter_reconnect(redial.config.while_disconnected());
        // A connection that did not last is one more failed attempt, not a fresh start.
        let attempt = match self.reopened.take() {
            Some((at, attempt)) if at.elapsed() < policy.min_uptime => attempt,
            _ => 0,
        };
        self.reconnecting = Some(Reconnecting {
            policy,
            attempt,
            stage: Stage::Backoff {
                until: Instant::now(),
            },
            first: false,
        });
        self.next_attempt(d);
        true
    }

    /// Between connections: take commands (sends are held or refused; a close, a force-quit
    /// or the owner's drop ends reconnecting at once), wait out the backoff, then dial as far
    /// as the socket allows. A failed attempt leads to the next one's backoff, until the policy
    /// gives up.
    fn reconnect_pass<D: Dispatch + ?Sized>(&mut self, d: &mut D) -> Step {
        loop {
            if self.reconnecting.is_none() {
                // The policy gave up (see `next_attempt`).
                return self.stop_reconnecting();
            }
            // Sends are held or refused here, each refusal a report: a dispatcher far behind
            // (see `takes_commands`) takes none until it catches up, as while connected.
            self.session.apply_commands(d.takes_commands());
            self.report(d);
            if self.session.user_ended() || d.stop_requested() {
                return self.stop_reconnecting();
            }
            let (Some(reconnecting), Some(redial)) = (&mut self.reconnecting, &self.redial) else {
                return self.stop_reconnecting();
            };
            let failure = self.dial_failure.take();
            let end = failure.as_ref().is_some_and(|(_, end)| *end);
            let outcome = match (failure, &mut reconnecting.stage) {
                (Some((e, _)), _) => Err(e),
                (None, Stage::Backoff { until }) if Instant::now() < *until => {
                    return Step::Reconnecting {
                        socket: None,
                        deadline: Some(*until),
                    }
                }
                (None, Stage::Backoff { .. }) => {
                    match Dial::start(&redial.url, &redial.config, resolver_wake(&self.session)) {
                        Ok(dial) => {
                            reconnecting.stage = Stage::Dialing(Box::new(dial));
                            self.socket_epoch += 1;
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
                (None, Stage::Dialing(dial)) => dial.advance(Instant::now()),
            };
            match outcome {
                Ok(Progress::Pending { interest, deadline }) => {
                    return Step::Reconnecting {
                        socket: interest,
                        deadline,
                    }
                }
                Ok(Progress::Done(open)) => {
                    self.reconnected(*open);
                    return Step::Again;
                }
                Err(e) => {
                    let permanent = e.is_permanent() || end;
                    let first = reconnecting.first;
                    self.last_error = Some(e.to_string());
                    d.error(&mut self.session, e);
                    if first {
                        return self.stop_reconnecting();
                    }
                    if permanent {
                        tracing::warn!("giving up reconnecting: retrying cannot help");
                        return self.stop_reconnecting();
                    }
                    self.next_attempt(d);
                }
            }
        }
    }

    /// The loop could not watch this connection's socket, or could not wait at all (`end`):
    /// the connection fails with `e`, or, between connections, the attempt under way does
    /// (and with `end`, reconnecting stops). Either way the next pass reports it.
    pub(crate) fn socket_failed(&mut self, e: Error, end: bool) {
        if self.reconnecting.is_some() {
            self.dial_failure = Some((e, end));
        } else {
            self.session.fail(e, None);
        }
    }

    /// On to the next attempt: announce it and start its backoff, or, past the policy's
    /// `max_attempts`, give up (`reconnecting` is then `None`).
    fn next_attempt<D: Dispatch + ?Sized>(&mut self, d: &mut D) {
        let Some(reconnecting) = &mut self.reconnecting else {
            return;
        };
        reconnecting.attempt += 1;
        let attempt = reconnecting.attempt;
        if reconnecting
            .policy
            .max_attempts
            .is_some_and(|max| attempt > max)
        {
            tracing::warn!(attempts = attempt - 1, "giving up reconnecting");
            self.reconnecting = None;
            return;
        }
        let delay = reconnecting.policy.delay(attempt, jitter_random());
        tracing::info!(attempt, ?delay, "reconnecting");
        d.reconnecting(
            &mut self.session,
            ReconnectAttempt {
                attempt,
                delay,
                last_error: self.last_error.clone(),
            },
        );
        if let Some(reconnecting) = &mut self.reconnecting {
            reconnecting.stage = Stage::Backoff {
                until: crate::deadline::after(Instant::now(), delay),
            };
        }
    }

    /// Reconnecting is over without a connection: messages held meanwhile are reported lost.
    fn stop_reconnecting(&mut self) -> Step {
        self.reconnecting = None;
        self.session.drop_held();
        self.over = true;
        Step::Done
    }

    /// A dial succeeded: the new session adopts the old one's inbox, counters and held
    /// messages, and is announced by the next pass.
    fn reconnected(&mut self, (ws, handshake): (WebSocket<Stream>, Handshake)) {
        let done = self.reconnecting.take();
        let first = done.as_ref().is_some_and(|r| r.first);
        self.reopened = done
            .filter(|r| !r.first)
            .map(|r| (Instant::now(), r.attempt));
        let Some(redial) = &self.redial else {
            return;
        };
        let mut session = Session::new(ws, Some(handshake), &redial.config);
        session.adopt(&mut self.session);
        self.session = session;
        self.socket_epoch += 1;
        if !first {
            self.session.metrics().reconnected();
        }
        self.last_error = None;
        self.fresh = true;
    }

    /// Hand queued errors to the dispatcher, remembering the last for `ReconnectAttempt`.
    fn report<D: Dispatch + ?Sized>(&mut self, d: &mut D) {
        while let Some(error) = self.session.take_error() {
            self.last_error = Some(error.to_string());
            d.error(&mut self.session, error);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::command::Shared;
    use crate::handler::Callbacks;
    use crate::{Context, Handler};

    #[derive(Default)]
    struct Log {
        errors: Vec<String>,
        attempts: Vec<u32>,
    }

    impl Handler for Log {
        fn on_error(&mut self, _: &mut Context<'_>, error: &Error) {
            self.errors.push(error.to_string());
        }
        fn on_reconnecting(&mut self, _: &mut Context<'_>, attempt: &ReconnectAttempt) {
            self.attempts.push(attempt.attempt);
        }
    }

    /// A set's driver whose dial is under way: its TCP connect done (the listener's backlog
    /// took it), the upgrade waiting for an answer that never comes.
    fn dialing(listener: &TcpListener, policy: Reconnect) -> Box<Driver> {
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let config = Config::builder().reconnect(Some(policy)).build().unwrap();
        let (mut driver, _sender) = Driver::dialing(&url, &config, Shared::new(None, None));
        let mut log = Log::default();
        // Until the dial has a socket to watch.
        for _ in 0..100 {
            if driver.socket().is_some() {
                break;
            }
            let _ = driver.pass(&mut Callbacks(&mut log, None));
        }
        assert!(driver.socket().is_some(), "the dial has a socket");
        driver
    }

    #[test]
    fn a_dial_whose_socket_cannot_be_watched_fails_that_attempt_and_backs_off() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let policy = Reconnect::new()
            .min_delay(Duration::from_secs(60))
            .max_delay(Duration::from_secs(120));
        let mut driver = dialing(&listener, policy);
        // Before: the failure went to the detached session, which ignored it, and the set ran
        // the member again at once, for ever (the review's busy loop).
        let mut log = Log::default();
        // A later attempt: the first connection of a set is one attempt, and its failure ends it.
        driver.reconnecting.as_mut().unwrap().first = false;
        driver.socket_failed(io::Error::other("no room for another watch").into(), false);
        let step = driver.pass(&mut Callbacks(&mut log, None));
        assert_eq!(log.errors.len(), 1, "reported: {:?}", log.errors);
        assert!(log.errors[0].contains("no room"), "{:?}", log.errors);
        assert_eq!(log.attempts, [2], "the next attempt is announced");
        match step {
            Step::Reconnecting {
                socket: None,
                deadline: Some(at),
            } => assert!(
                at > Instant::now() + Duration::from_secs(29),
                "it backs off"
            ),
            other => panic!("expected a backoff, got {other:?}"),
        }
    }

    #[test]
    fn a_set_that_cannot_wait_ends_its_dialing_members() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut driver = dialing(&listener, Reconnect::new());
        driver.reconnecting.as_mut().unwrap().first = false;
        let mut log = Log::default();
        driver.socket_failed(io::Error::other("the poll is broken").into(), true);
        let step = driver.pass(&mut Callbacks(&mut log, None));
        assert!(matches!(step, Step::Done), "{step:?}");
        assert_eq!(log.errors.len(), 1, "{:?}", log.errors);
        assert!(log.attempts.is_empty(), "no attempt after the set broke");
    }
}
