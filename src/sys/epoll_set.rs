//! The Linux set: one epoll instance for every socket of a client set, edge-triggered, each
//! socket registered once (per socket epoch, see `Driver::socket`) for reading, writing and
//! the peer's FIN, never modified: each pass reads and writes until the socket would block,
//! so an edge is all it needs. A socket leaves the instance when it closes.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use rustix::io::Errno;

use super::{timespec, BorrowedSocket, Interest, Waker, Woke, WAKER_KEY};

/// Events taken from the OS per wait.
const EVENTS_PER_WAIT: usize = 1024;

/// What a member of the set has registered: its socket (descriptor and epoch), if any.
#[derive(Debug, Default)]
pub(crate) struct Watch(Option<(RawFd, u64)>);

impl Watch {
    /// Only the poll set asks what a member waits for (epoll was told at registration).
    pub(crate) fn interest(&self) -> Option<Interest> {
        None
    }
}

/// Where one wait's events land. Kept by the set's thread, not in the set: an epoll event
/// holds a pointer-sized union, which would make the set impossible to move to another
/// thread.
pub(crate) struct Events(Vec<epoll::Event>);

impl Events {
    pub(crate) fn new() -> Self {
        Events(Vec::with_capacity(EVENTS_PER_WAIT))
    }

    /// Each event's member id ([`WAKER_KEY`] for the set's waker) and what it says.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (u64, Woke)> + '_ {
        self.0.drain(..).map(|event| {
            let flags = event.flags;
            let woke = if flags.intersects(
                epoll::EventFlags::HUP | epoll::EventFlags::ERR | epoll::EventFlags::RDHUP,
            ) {
                Woke::PeerClosed
            } else {
                Woke::Activity
            };
            (event.data.u64(), woke)
        })
    }
}

/// The OS wait of a client set.
#[derive(Debug)]
pub(crate) struct SetPoller {
    epoll: OwnedFd,
}

impl SetPoller {
    /// An epoll instance watching `waker` (under [`WAKER_KEY`]).
    pub(crate) fn new(waker: &Waker) -> io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            waker.fd(),
            epoll::EventData::new_u64(WAKER_KEY),
            epoll::EventFlags::IN,
        )?;
        Ok(SetPoller { epoll })
    }

    /// Member `id` waits on `socket` (of `epoch`): register it unless it is registered already.
    /// `moved`: a dial may have moved to another socket with the same number, so register
    /// again whatever `watch` says. `interest` is not needed: the registration covers both
    /// ways, edge-triggered.
    pub(crate) fn watch(
        &self,
        watch: &mut Watch,
        id: u64,
        socket: BorrowedSocket<'_>,
        epoch: u64,
        moved: bool,
        _interest: Interest,
    ) -> io::Result<()> {
        let key = (socket.as_raw_fd(), epoch);
        if moved || watch.0 != Some(key) {
            let flags = epoll::EventFlags::IN
                | epoll::EventFlags::OUT
                | epoll::EventFlags::RDHUP
                | epoll::EventFlags::ET;
            match epoll::add(&self.epoll, socket, epoll::EventData::new_u64(id), flags) {
                Ok(()) | Err(Errno::EXIST) => watch.0 = Some(key),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Wait until a registered socket is ready, the waker is woken, or `timeout` passes, and
    /// put what happened in `events`. The registrations are in the kernel, so `_waiting` (the
    /// members and what they wait for, which the poll set needs) is never walked.
    pub(crate) fn wait<'a>(
        &mut self,
        events: &mut Events,
        _waker: &Waker,
        _waiting: impl Iterator<Item = (u64, BorrowedSocket<'a>, Interest)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let timeout = timeout.map(timespec);
        events.0.clear();
        match epoll::wait(&self.epoll, spare_capacity(&mut events.0), timeout.as_ref()) {
            Ok(_) | Err(Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
