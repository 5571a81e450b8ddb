//! One connection's wait, on every platform: one `poll(2)` (`WSAPoll` on Windows) on the
//! socket of the moment and the waker. Nothing is registered between waits, so a connection
//! costs its socket and its waker in descriptors. Also the flags the poll set uses.

use std::io;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;

use super::{timespec, BorrowedSocket, Interest, Waker, Woke};

linux_backend! {
    /// What a reader asks of the socket. Linux also reports the peer's FIN on its own
    /// (`POLLRDHUP`), which turns off the drained-read hint at once; elsewhere the FIN shows as
    /// readable and the read that follows finds the end of the stream, which the wait's
    /// `Activity` already leads to.
    const READ: PollFlags = PollFlags::IN.union(PollFlags::RDHUP);
    /// What says the peer has gone or the socket failed.
    const PEER_CLOSED: PollFlags = PollFlags::HUP
        .union(PollFlags::ERR)
        .union(PollFlags::RDHUP);
}

poll_backends! {
    /// What a reader asks of the socket (no `POLLRDHUP` here: the FIN shows as readable).
    const READ: PollFlags = PollFlags::IN;
    /// What says the peer has gone or the socket failed.
    const PEER_CLOSED: PollFlags = PollFlags::HUP.union(PollFlags::ERR);
}

/// The poll flags for `interest`.
pub(super) fn flags(interest: Interest) -> PollFlags {
    let mut flags = PollFlags::empty();
    if interest.read {
        // The peer's FIN matters only to a reader (and, level-triggered, would end every
        // wait of one that is not reading).
        flags |= READ;
    }
    if interest.write {
        flags |= PollFlags::OUT;
    }
    flags
}

/// What a socket's poll result says.
pub(super) fn woke(ready: PollFlags) -> Woke {
    if ready.intersects(PEER_CLOSED) {
        Woke::PeerClosed
    } else {
        Woke::Activity
    }
}

/// One poll on `socket` (for its interest) and `waker`, until `timeout`.
pub(crate) fn wait(
    socket: Option<(BorrowedSocket<'_>, Interest)>,
    waker: Option<&Waker>,
    timeout: Option<Duration>,
) -> io::Result<Woke> {
    let socket_entry = socket
        .as_ref()
        .map(|(fd, interest)| PollFd::from_borrowed_fd(*fd, flags(*interest)));
    let waker_entry = waker.map(|w| PollFd::from_borrowed_fd(w.fd(), PollFlags::IN));
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
    #[cfg(windows)]
    if set.is_empty() {
        return Ok(sleep_instead(timeout));
    }
    match poll(set, timeout.map(timespec).as_ref()) {
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
        (Some(r), _) if !r.is_empty() => woke(r),
        (_, Some(w)) if !w.is_empty() => Woke::Command,
        _ => Woke::Deadline,
    })
}

/// A wait with neither a socket nor a waker (no caller asks for one today: a dial always has
/// its socket, and a driver that waits between connections has a waker). `poll(2)` with no
/// entries sleeps until the timeout; `WSAPoll` refuses an empty set, so sleep instead.
#[cfg(windows)]
fn sleep_instead(timeout: Option<Duration>) -> Woke {
    let Some(t) = timeout else {
        // Nothing can end this wait, as with poll(2).
        loop {
            std::thread::park();
        }
    };
    std::thread::sleep(t);
    Woke::Deadline
}
