//! The readiness layer: how a thread waits for sockets and is woken by other threads. One
//! backend per platform family, chosen here by `cfg` and nowhere else; the rest of the crate
//! sees the same few names on every platform ([`Waker`], [`wait`], [`SetPoller`], [`Watch`],
//! [`Events`], [`BorrowedSocket`]).
//!
//! | backend | platforms | one connection waits in | its waker | a set waits in |
//! |---|---|---|---|---|
//! | `linux` | Linux, Android | `poll(2)`, with `POLLRDHUP` | eventfd (1 descriptor) | epoll, edge-triggered |
//! | `unix` | macOS, the BSDs, other Unix; Linux with `--cfg syncws_portable` | `poll(2)` | pipe (2 descriptors) | `poll(2)`, level-triggered |
//! | `windows` | Windows | `WSAPoll` | loopback TCP pair (2 sockets) | `WSAPoll`, level-triggered |
//!
//! Every backend goes through `rustix`, so none needs unsafe code of ours. The `unix` backend
//! also runs on Linux under `RUSTFLAGS="--cfg syncws_portable"`, which is how CI runs the whole
//! test suite on the code macOS and the BSDs run (pipe waker, no `POLLRDHUP`, the poll set).
//! Windows shares the single-connection wait and the poll set with it (`rustix::event::poll`
//! is `WSAPoll` there); only its waker is its own. kqueue (an edge-triggered set on macOS and
//! the BSDs, like epoll) is a possible later optimisation, but it could only be compiled here,
//! never run, so the set there is the poll set that CI does run.

use std::time::Duration;

use rustix::event::{Nsecs, Timespec};

// Each backend's cfg, written once: these wrap the items of a backend (here and in poll.rs).

/// Items of the Linux backend (Linux and Android, unless `--cfg syncws_portable`).
macro_rules! linux_backend {
    ($($item:item)*) => {$(
        #[cfg(all(any(target_os = "linux", target_os = "android"), not(syncws_portable)))]
        $item
    )*};
}

/// Items of every other backend: the portable Unix one and Windows (they share `poll_set`).
macro_rules! poll_backends {
    ($($item:item)*) => {$(
        #[cfg(not(all(any(target_os = "linux", target_os = "android"), not(syncws_portable))))]
        $item
    )*};
}

/// Items of the portable Unix backend (every Unix but Linux and Android, and those too under
/// `--cfg syncws_portable`).
macro_rules! unix_backend {
    ($($item:item)*) => {$(
        #[cfg(all(
            unix,
            not(all(any(target_os = "linux", target_os = "android"), not(syncws_portable)))
        ))]
        $item
    )*};
}

mod poll;
pub(crate) use poll::wait;

linux_backend! {
    mod epoll_set;
    mod eventfd;
    pub(crate) use epoll_set::{Events, SetPoller, Watch};
    pub(crate) use eventfd::Waker;
}

unix_backend! {
    mod pipe;
    pub(crate) use pipe::Waker;
}

#[cfg(windows)]
mod socket_pair;
#[cfg(windows)]
pub(crate) use socket_pair::Waker;

poll_backends! {
    mod poll_set;
    pub(crate) use poll_set::{Events, SetPoller, Watch};
}

#[cfg(not(any(unix, windows)))]
compile_error!("syncws waits for sockets with poll(2) or WSAPoll: it needs Unix or Windows");

/// A socket borrowed for a wait: a file descriptor on Unix, a `SOCKET` on Windows (rustix's
/// `BorrowedFd` is `std`'s `BorrowedSocket` there).
pub(crate) type BorrowedSocket<'a> = rustix::fd::BorrowedFd<'a>;

/// Borrowing a [`BorrowedSocket`] from a socket: `std`'s `AsFd` on Unix; on Windows, rustix's
/// trait of that name, implemented for everything that is `std`'s `AsSocket` (`TcpStream`,
/// `socket2::Socket`), so call sites read the same on every platform.
pub(crate) use rustix::fd::AsFd;

/// The key a set's own waker has among its members' ids (which count up from 0).
pub(crate) const WAKER_KEY: u64 = u64::MAX;

/// The descriptors (sockets, on Windows) one connection holds in readiness mode: its socket
/// and its waker's. A set shares one waker between all its connections, so there each costs
/// only its socket.
pub(crate) const DESCRIPTORS_PER_CONNECTION: usize = 1 + Waker::DESCRIPTORS;

/// What to wait for on a socket. `poll(2)` is level-triggered: ask for writing only while
/// something waits for room, or every wait would end at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Interest {
    pub(crate) read: bool,
    pub(crate) write: bool,
}

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

/// `d` as the OS's timeout. Where `poll` takes milliseconds in an `int` (macOS, the BSDs
/// without `ppoll`, `WSAPoll`), a timeout past 24.8 days is an error (EINVAL), so waits are
/// capped: a later deadline is simply waited for again.
fn timespec(d: Duration) -> Timespec {
    const LONGEST_WAIT: Duration = Duration::from_secs(24 * 3600);
    let d = d.min(LONGEST_WAIT);
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Under a billion: fits every platform's type (i32 on Windows).
        tv_nsec: d.subsec_nanos() as Nsecs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// No test waits longer than this.
    const PATIENCE: Duration = Duration::from_secs(60);

    #[test]
    fn a_waker_takes_any_number_of_wakes_without_blocking_and_drains_to_empty() {
        let waker = Waker::new().unwrap();
        // Far more than a pipe holds (64 KiB on Linux, 16 KiB to 64 KiB on macOS): a full
        // waker must not block its waker, nor fail.
        for _ in 0..200_000 {
            waker.wake().unwrap();
        }
        // The wait sees the wakes and drains them all: the next wait finds nothing.
        assert_eq!(
            wait(None, Some(&waker), Some(PATIENCE)).unwrap(),
            Woke::Command
        );
        assert_eq!(
            wait(None, Some(&waker), Some(Duration::ZERO)).unwrap(),
            Woke::Deadline
        );
        // And it still wakes after being full.
        waker.wake().unwrap();
        assert_eq!(
            wait(None, Some(&waker), Some(PATIENCE)).unwrap(),
            Woke::Command
        );
    }

    #[test]
    fn a_wake_from_another_thread_ends_a_wait() {
        let waker = Arc::new(Waker::new().unwrap());
        let waiter = {
            let waker = waker.clone();
            // Whether the wake comes before or during the wait, the wait ends with it.
            std::thread::spawn(move || wait(None, Some(&waker), Some(PATIENCE)).unwrap())
        };
        waker.wake().unwrap();
        assert_eq!(waiter.join().unwrap(), Woke::Command);
    }

    #[test]
    fn a_socket_wait_says_what_the_socket_has() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let waker = Waker::new().unwrap();
        let reading = Interest {
            read: true,
            write: false,
        };
        let socket = Some((client.as_fd(), reading));
        // Nothing to read yet.
        assert_eq!(
            wait(socket, Some(&waker), Some(Duration::ZERO)).unwrap(),
            Woke::Deadline
        );
        // Room to write, asked for.
        let writing = Interest {
            read: false,
            write: true,
        };
        assert_eq!(
            wait(Some((client.as_fd(), writing)), None, Some(PATIENCE)).unwrap(),
            Woke::Activity
        );
        server.write_all(b"x").unwrap();
        assert_eq!(
            wait(socket, Some(&waker), Some(PATIENCE)).unwrap(),
            Woke::Activity
        );
        // The peer's FIN ends a reader's wait: on Linux as such (POLLRDHUP), elsewhere as
        // something to read (the end of the stream), which the read that follows finds.
        drop(server);
        let woke = wait(socket, Some(&waker), Some(PATIENCE)).unwrap();
        assert!(
            matches!(woke, Woke::Activity | Woke::PeerClosed),
            "{woke:?}"
        );
    }
}
