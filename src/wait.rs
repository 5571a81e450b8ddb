//! How a connection passes time between passes: busy spin, sleep, or OS readiness.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::command::Inbox;
use crate::dial;
use crate::waker::Waker;
use crate::WaitStrategy;

/// How long the sleep strategy keeps polling without sleeping after a pass that read or wrote.
const HOT_AFTER_ACTIVITY: Duration = Duration::from_micros(100);

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

/// What to wait for on a socket. `poll(2)` is level-triggered: ask for writing only while
/// something waits for room, or every wait would end at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interest {
    pub(crate) read: bool,
    pub(crate) write: bool,
}

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
    /// `poll(2)` on the socket of the moment and the waker: two descriptors per connection,
    /// nothing registered between waits.
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
        socket: Option<(BorrowedFd<'_>, Interest)>,
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
                let woke = wait_ready(socket, waker.as_deref(), timeout);
                if let Some(inbox) = &inbox {
                    inbox.shared().set_parked(false);
                }
                woke
            }
        }
    }
}

/// One `poll(2)` on the socket (for `interest`) and the waker, until `timeout`.
fn wait_ready(
    socket: Option<(BorrowedFd<'_>, Interest)>,
    waker: Option<&Waker>,
    timeout: Option<Duration>,
) -> io::Result<Woke> {
    let timeout = timeout.map(|d| Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    let socket_flags = |interest: Interest| {
        let mut flags = PollFlags::empty();
        if interest.read {
            // The peer's FIN matters only to a reader (and, level-triggered, would end every
            // wait of one that is not reading).
            flags |= PollFlags::IN | PollFlags::RDHUP;
        }
        if interest.write {
            flags |= PollFlags::OUT;
        }
        flags
    };
    let waker_fd = waker.map(AsFd::as_fd);
    let socket_entry = socket
        .as_ref()
        .map(|(fd, interest)| PollFd::new(fd, socket_flags(*interest)));
    let waker_entry = waker_fd.as_ref().map(|fd| PollFd::new(fd, PollFlags::IN));
    // The socket's entry first, then the waker's; on the stack, as this runs before every park.
    let (mut both, mut one);
    let set: &mut [PollFd<'_>] = match (socket_entry, waker_entry) {
        (Some(s), Some(w)) => {
            both = [s, w];
            &mut both
        }
        (Some(only), None) | (None, Some(only)) => {
            one = [only];
            &mut one
        }
        (None, None) => &mut [],
    };
    match poll(set, timeout.as_ref()) {
        Err(Errno::INTR) => return Ok(Woke::Activity),
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    let mut ready = set.iter().map(PollFd::revents);
    let socket_ready = socket.map(|_| ready.next().unwrap_or_else(PollFlags::empty));
    let woken = waker.map(|_| ready.next().unwrap_or_else(PollFlags::empty));
    if woken.is_some_and(|r| r.contains(PollFlags::IN)) {
        if let Some(w) = waker {
            w.drain();
        }
    }
    Ok(match (socket_ready, woken) {
        (Some(r), _) if r.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::RDHUP) => {
            Woke::PeerClosed
        }
        (Some(r), _) if !r.is_empty() => Woke::Activity,
        (_, Some(w)) if !w.is_empty() => Woke::Command,
        _ => Woke::Deadline,
    })
}
