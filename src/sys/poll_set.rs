//! The portable set (macOS, the BSDs, Windows; Linux under `--cfg syncws_portable`): one
//! `poll(2)` (`WSAPoll` on Windows) per wait over the set's waker and every member that waits
//! for its socket, each for what it waits for now. Level-triggered, so nothing is registered:
//! a member that waits for room asks for writing, one that does not must not (or every wait
//! would end at once), and a paused member does not ask for reading. O(members) per wait,
//! like `poll` itself; kqueue would avoid that on macOS and the BSDs, but could not be run
//! in CI here.

use std::io;
use std::time::Duration;

use rustix::event::{poll as os_poll, PollFd, PollFlags};
use rustix::io::Errno;

use super::poll::{flags, woke};
use super::{timespec, BorrowedSocket, Interest, Waker, Woke, WAKER_KEY};

/// What a member waits for on its socket after its last pass (set in every `watch`; read
/// only while the member is not on the run list).
#[derive(Debug, Default)]
pub(crate) struct Watch(Option<Interest>);

impl Watch {
    /// What the member asked for at its last wait.
    pub(crate) fn interest(&self) -> Option<Interest> {
        self.0
    }
}

/// Where one wait's events land: member id ([`WAKER_KEY`] for the waker) and what ended its
/// wait.
pub(crate) struct Events(Vec<(u64, Woke)>);

impl Events {
    pub(crate) fn new() -> Self {
        Events(Vec::new())
    }

    /// Each event's member id ([`WAKER_KEY`] for the set's waker) and what it says.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (u64, Woke)> + '_ {
        self.0.drain(..)
    }
}

/// The OS wait of a client set.
#[derive(Debug, Default)]
pub(crate) struct SetPoller {
    /// The member id of each entry of the last wait after the waker's (kept for its
    /// allocation).
    ids: Vec<u64>,
}

impl SetPoller {
    /// Nothing to open: every wait names its sockets.
    pub(crate) fn new(_waker: &Waker) -> io::Result<Self> {
        Ok(SetPoller::default())
    }

    /// Member `id` waits on `socket` for `interest`: noted for the next wait. (No socket is
    /// registered, so a new one needs nothing more.)
    pub(crate) fn watch(
        &self,
        watch: &mut Watch,
        _id: u64,
        _socket: BorrowedSocket<'_>,
        _epoch: u64,
        _moved: bool,
        interest: Interest,
    ) -> io::Result<()> {
        watch.0 = Some(interest);
        Ok(())
    }

    /// Wait until one of `waiting` (member id, socket, what it waits for) is ready, `waker`
    /// is woken, or `timeout` passes, and put what happened in `events`.
    pub(crate) fn wait<'a>(
        &mut self,
        events: &mut Events,
        waker: &Waker,
        waiting: impl Iterator<Item = (u64, BorrowedSocket<'a>, Interest)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.ids.clear();
        events.0.clear();
        // Built per wait, as the entries borrow the members' sockets (one allocation, sized
        // by the last wait).
        let mut entries: Vec<PollFd<'_>> = Vec::with_capacity(self.ids.capacity() + 1);
        let waker_fd = waker.fd();
        entries.push(PollFd::from_borrowed_fd(waker_fd, PollFlags::IN));
        for (id, socket, interest) in waiting {
            // A member that waits for neither (paused, nothing to write) has only its waker
            // and its deadline to wait for; `WSAPoll` would refuse an entry that asks nothing.
            if interest == Interest::default() {
                continue;
            }
            self.ids.push(id);
            entries.push(PollFd::from_borrowed_fd(socket, flags(interest)));
        }
        match os_poll(&mut entries, timeout.map(timespec).as_ref()) {
            Ok(0) | Err(Errno::INTR) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let mut entries = entries.iter().map(PollFd::revents);
        if entries.next().is_some_and(|ready| !ready.is_empty()) {
            events.0.push((WAKER_KEY, Woke::Command));
        }
        for (&id, ready) in self.ids.iter().zip(entries) {
            if !ready.is_empty() {
                events.0.push((id, woke(ready)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::AsFd;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// No test waits longer than this.
    const PATIENCE: Duration = Duration::from_secs(60);

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    const READ: Interest = Interest {
        read: true,
        write: false,
    };
    const WRITE: Interest = Interest {
        read: false,
        write: true,
    };
    const NOTHING: Interest = Interest {
        read: false,
        write: false,
    };

    /// One wait of `poller` over `members` (id, socket, interest); what it reported, sorted.
    fn wait_once(
        poller: &mut SetPoller,
        waker: &Waker,
        members: &[(u64, &TcpStream, Interest)],
        timeout: Duration,
    ) -> Vec<(u64, Woke)> {
        let mut events = Events::new();
        let waiting = members.iter().map(|(id, s, i)| (*id, s.as_fd(), *i));
        poller
            .wait(&mut events, waker, waiting, Some(timeout))
            .unwrap();
        let mut got: Vec<_> = events.drain().collect();
        got.sort_by_key(|(id, _)| *id);
        got
    }

    #[test]
    fn each_member_is_woken_for_what_it_waits_for_and_nothing_else() {
        let waker = Waker::new().unwrap();
        let mut poller = SetPoller::new(&waker).unwrap();
        let (a, mut a_peer) = pair();
        let (b, _b_peer) = pair();
        let (c, mut c_peer) = pair();
        // a reads (nothing there), b writes (room), c is paused (data there, not asked for).
        c_peer.write_all(b"unread").unwrap();
        let members = [(0, &a, READ), (1, &b, WRITE), (2, &c, NOTHING)];
        assert_eq!(
            wait_once(&mut poller, &waker, &members, PATIENCE),
            [(1, Woke::Activity)]
        );
        // Data for a: a and b now.
        a_peer.write_all(b"x").unwrap();
        let members = [(0, &a, READ), (2, &c, NOTHING)];
        assert_eq!(
            wait_once(&mut poller, &waker, &members, PATIENCE),
            [(0, Woke::Activity)]
        );
        // Level-triggered: unread data is reported at every wait, until it is read.
        assert_eq!(
            wait_once(&mut poller, &waker, &members, Duration::ZERO),
            [(0, Woke::Activity)]
        );
        let mut byte = [0u8; 1];
        (&a).read_exact(&mut byte).unwrap();
        assert_eq!(wait_once(&mut poller, &waker, &members, Duration::ZERO), []);
        // c, reading again, is woken for what waited meanwhile.
        let members = [(0, &a, READ), (2, &c, READ)];
        assert_eq!(
            wait_once(&mut poller, &waker, &members, PATIENCE),
            [(2, Woke::Activity)]
        );
    }

    #[test]
    fn the_waker_ends_the_wait_under_its_own_key_and_is_not_reported_twice() {
        let waker = Waker::new().unwrap();
        let mut poller = SetPoller::new(&waker).unwrap();
        let (a, _a_peer) = pair();
        let members = [(0, &a, READ)];
        waker.wake().unwrap();
        waker.wake().unwrap();
        assert_eq!(
            wait_once(&mut poller, &waker, &members, PATIENCE),
            [(WAKER_KEY, Woke::Command)]
        );
        // The set drains its waker when it sees the key.
        waker.drain();
        assert_eq!(wait_once(&mut poller, &waker, &members, Duration::ZERO), []);
    }

    #[test]
    fn a_reader_is_woken_when_its_peer_hangs_up() {
        let waker = Waker::new().unwrap();
        let mut poller = SetPoller::new(&waker).unwrap();
        let (a, a_peer) = pair();
        drop(a_peer);
        let got = wait_once(&mut poller, &waker, &[(0, &a, READ)], PATIENCE);
        // Without POLLRDHUP the FIN is something to read (the end of the stream); HUP or ERR
        // when the socket is gone both ways.
        assert!(
            matches!(got[..], [(0, Woke::Activity | Woke::PeerClosed)]),
            "{got:?}"
        );
        assert_eq!((&a).read(&mut [0u8; 1]).unwrap(), 0);
    }

    #[test]
    fn watch_notes_what_the_member_waits_for() {
        let waker = Waker::new().unwrap();
        let poller = SetPoller::new(&waker).unwrap();
        let (a, _a_peer) = pair();
        let mut watch = Watch::default();
        assert_eq!(watch.interest(), None);
        poller
            .watch(&mut watch, 0, a.as_fd(), 1, true, WRITE)
            .unwrap();
        assert_eq!(watch.interest(), Some(WRITE));
        poller
            .watch(&mut watch, 0, a.as_fd(), 1, false, READ)
            .unwrap();
        assert_eq!(watch.interest(), Some(READ));
    }
}
