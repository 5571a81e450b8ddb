//! How a connection passes time between passes: busy spin, sleep, or OS readiness.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::command::Inbox;
use crate::dial;
use crate::sys::{self, BorrowedSocket};
pub(crate) use crate::sys::{Interest, Woke};
use crate::waker::Waker;
use crate::WaitStrategy;

/// How long the sleep strategy keeps polling without sleeping after a pass that read or wrote.
const HOT_AFTER_ACTIVITY: Duration = Duration::from_micros(100);

impl From<dial::Interest> for Interest {
    fn from(interest: dial::Interest) -> Self {
        Interest {
            read: interest == dial::Interest::Readable,
            write: interest == dial::Interest::Writable,
        }
    }
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
    /// The OS poll on the socket of the moment and the waker (see `sys`): the socket and
    /// the waker's descriptors, nothing registered between waits.
    Readiness {
        waker: Option<Arc<Waker>>,
        /// After delivering messages, look for a command this long before parking (the
        /// threaded worker: the application's reply is usually microseconds away).
        command_spin: Duration,
    },
}

impl Waiter {
    /// Build the waiter for `strategy`. For readiness, also return the waker that other threads
    /// use to end a wait.
    pub(crate) fn new(
        strategy: WaitStrategy,
        with_waker: bool,
    ) -> io::Result<(Waiter, Option<Arc<Waker>>)> {
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
                let waker = if with_waker {
                    Some(Arc::new(Waker::new()?))
                } else {
                    None
                };
                Ok((
                    Waiter::Readiness {
                        waker: waker.clone(),
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

    /// Whether each empty pass counts as idle (spin and sleep call `on_idle` every time).
    pub(crate) fn idles_every_pass(&self) -> bool {
        !matches!(self, Waiter::Readiness { .. })
    }

    /// Wait until something may have happened on `socket` (for its interest), a command comes,
    /// or `deadline` passes. `active`: the pass before this wait read or wrote something;
    /// `delivered`: it dispatched messages.
    pub(crate) fn wait(
        &mut self,
        socket: Option<(BorrowedSocket<'_>, Interest)>,
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
                waker,
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
                    // and wakes us (see `Shared::notify`).
                    inbox.shared().set_parked(true);
                    if inbox.has_work() {
                        inbox.shared().set_parked(false);
                        return Ok(Woke::Command);
                    }
                }
                let woke = sys::wait(socket, waker.as_deref(), timeout);
                if let Some(inbox) = &inbox {
                    inbox.shared().set_parked(false);
                }
                woke
            }
        }
    }
}
