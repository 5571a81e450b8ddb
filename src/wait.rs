//! How a connection passes time between passes: busy spin, sleep, or OS readiness.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::command::Inbox;
use crate::dial;
use crate::io_outcome::{io_outcome, IoOutcome};
use crate::session::Session;
use crate::WaitStrategy;

/// How long the sleep strategy keeps polling without sleeping after a pass that read or wrote.
const HOT_AFTER_ACTIVITY: Duration = Duration::from_micros(100);

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// The socket may have something: run a pass.
    Activity,
    /// Only a command (or the waker) ended the wait; the socket has nothing new.
    Command,
    /// The peer closed its side (or the socket failed): reads must reach the kernel from now
    /// on, to see the end of the stream (see `TcpConn::rearm`).
    PeerClosed,
    /// The deadline passed with nothing.
    Deadline,
    /// A spin or sleep ended; nothing is known.
    Poll,
}

/// The waiting half of a driver.
#[derive(Debug)]
pub(crate) enum Waiter {
    Spin,
    Sleep {
        sleep: Duration,
        /// Poll without sleeping until then (set after a pass that read or wrote).
        hot_until: Option<Instant>,
    },
    Readiness {
        poll: Poll,
        events: Events,
        /// After delivering messages, look for a command this long before parking (the
        /// threaded worker: the application's reply is usually microseconds away).
        command_spin: Duration,
    },
}

impl Waiter {
    /// Build the waiter for `strategy`; it watches no socket yet ([`Waiter::bind`],
    /// [`Waiter::watch`]). For readiness, also return a waker that other threads can use to end
    /// a wait.
    pub(crate) fn new(
        strategy: WaitStrategy,
        with_waker: bool,
    ) -> io::Result<(Waiter, Option<Waker>)> {
        match strategy {
            WaitStrategy::BusySpin => Ok((Waiter::Spin, None)),
            WaitStrategy::Sleep(d) => Ok((
                Waiter::Sleep {
                    sleep: d,
                    hot_until: None,
                },
                None,
            )),
            WaitStrategy::Readiness => {
                let poll = Poll::new()?;
                let waker = if with_waker {
                    Some(Waker::new(poll.registry(), WAKER)?)
                } else {
                    None
                };
                Ok((
                    Waiter::Readiness {
                        poll,
                        events: Events::with_capacity(4),
                        command_spin: Duration::ZERO,
                    },
                    waker,
                ))
            }
        }
    }

    /// Look for a command for up to `spin` after a pass that delivered messages, before parking
    /// in the OS poll (readiness only).
    pub(crate) fn set_command_spin(&mut self, spin: Duration) {
        if let Waiter::Readiness { command_spin, .. } = self {
            *command_spin = spin;
        }
    }

    /// Watch `session`'s socket from now on, for reading and writing, edge-triggered (the
    /// session reads until "would block" before each wait). Its socket may be a dial's that
    /// [`Waiter::watch`] had.
    pub(crate) fn bind(&mut self, session: &Session) -> io::Result<()> {
        self.register(fd(session)?, Interest::READABLE | Interest::WRITABLE)
    }

    /// Stop watching a dead connection's socket (so a backoff wait sleeps until its deadline
    /// or a command). Call it while the socket is still open: a new one may get its number.
    pub(crate) fn unbind(&mut self, old: &Session) {
        if let (Waiter::Readiness { poll, .. }, Ok(fd)) = (self, fd(old)) {
            let _ = poll.registry().deregister(&mut SourceFd(&fd));
        }
    }

    /// Watch a dial's socket `fd` for `interest` only, until the next `watch` or `bind`. Each
    /// call registers afresh, so readiness that is already there is reported (a dial may stop
    /// short of "would block" when it changes phase or interest); the sockets of failed
    /// attempts left the poll when they were closed.
    pub(crate) fn watch(&mut self, fd: RawFd, interest: dial::Interest) -> io::Result<()> {
        let interest = match interest {
            dial::Interest::Readable => Interest::READABLE,
            dial::Interest::Writable => Interest::WRITABLE,
        };
        self.register(fd, interest)
    }

    fn register(&mut self, fd: RawFd, interest: Interest) -> io::Result<()> {
        if let Waiter::Readiness { poll, .. } = self {
            // Whatever watched this number before (the dial's interest), this replaces it.
            let _ = poll.registry().deregister(&mut SourceFd(&fd));
            poll.registry()
                .register(&mut SourceFd(&fd), SOCKET, interest)?;
        }
        Ok(())
    }

    /// Whether each empty pass counts as idle (spin and sleep call `on_idle` every time).
    pub(crate) fn idles_every_pass(&self) -> bool {
        !matches!(self, Waiter::Readiness { .. })
    }

    /// Wait until something may have happened or `deadline` passes. `active`: the pass before
    /// this wait read or wrote something; `delivered`: it dispatched messages.
    pub(crate) fn wait(
        &mut self,
        deadline: Option<Instant>,
        inbox: Option<&Inbox>,
        active: bool,
        delivered: bool,
    ) -> io::Result<Woke> {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match self {
            Waiter::Spin => {
                std::hint::spin_loop();
                Ok(Woke::Poll)
            }
            Waiter::Sleep { sleep, hot_until } => {
                // After activity an answer is often microseconds away: poll without sleeping for
                // a moment, so a request/response exchange does not wait out a whole sleep.
                let now = Instant::now();
                if active {
                    *hot_until = Some(now + (*sleep).min(HOT_AFTER_ACTIVITY));
                }
                if hot_until.is_some_and(|t| now < t) {
                    std::hint::spin_loop();
                    return Ok(Woke::Poll);
                }
                let d = timeout.map_or(*sleep, |t| t.min(*sleep));
                match inbox {
                    // Park first, then look: a sender that pushes after the look sees the flag
                    // and unparks us. Commands stay in the bounded channel meanwhile.
                    Some(inbox) => {
                        inbox.shared().set_parked(true);
                        if !inbox.has_work() {
                            inbox.shared().park(d);
                        }
                        inbox.shared().set_parked(false);
                    }
                    None => std::thread::sleep(d),
                }
                Ok(Woke::Poll)
            }
            Waiter::Readiness {
                poll,
                events,
                command_spin,
            } => {
                // A reply to what we just delivered is usually microseconds away: picking it up
                // here saves the waker's system call and the wake-up from the OS poll.
                if let (true, Some(inbox)) = (delivered && !command_spin.is_zero(), &inbox) {
                    let until = Instant::now() + *command_spin;
                    let until = deadline.map_or(until, |d| d.min(until));
                    while Instant::now() < until {
                        if inbox.has_work() {
                            return Ok(Woke::Command);
                        }
                        std::hint::spin_loop();
                    }
                }
                if let Some(inbox) = &inbox {
                    // Park first, then look: a sender that pushes after the look sees the flag
                    // and wakes us (see `Signal::notify`).
                    inbox.shared().set_parked(true);
                    if inbox.has_work() {
                        inbox.shared().set_parked(false);
                        return Ok(Woke::Command);
                    }
                }
                let r = poll.poll(events, timeout);
                if let Some(inbox) = &inbox {
                    inbox.shared().set_parked(false);
                }
                match r {
                    Ok(()) if events.is_empty() => Ok(Woke::Deadline),
                    Ok(())
                        if events.iter().any(|e| {
                            e.token() == SOCKET && (e.is_read_closed() || e.is_error())
                        }) =>
                    {
                        Ok(Woke::PeerClosed)
                    }
                    Ok(()) if events.iter().all(|e| e.token() == WAKER) => Ok(Woke::Command),
                    Ok(()) => Ok(Woke::Activity),
                    Err(e) if io_outcome(&e) == IoOutcome::Interrupted => Ok(Woke::Activity),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

fn fd(session: &Session) -> io::Result<RawFd> {
    Ok(session
        .stream()
        .tcp_conn()
        .ok_or_else(|| io::Error::other("readiness needs a socket"))?
        .tcp()
        .as_raw_fd())
}
