//! The Linux waker: an eventfd that other threads write to and the waiter drains. One
//! descriptor, shared by a connection's senders and its waiter.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{eventfd, EventfdFlags};
use rustix::io::Errno;

use super::BorrowedSocket;

#[derive(Debug)]
pub(crate) struct Waker(OwnedFd);

impl Waker {
    /// The descriptors a waker holds.
    pub(crate) const DESCRIPTORS: usize = 1;

    pub(crate) fn new() -> io::Result<Self> {
        Ok(Waker(eventfd(
            0,
            EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
        )?))
    }

    /// End the waiter's next (or current) wait.
    pub(crate) fn wake(&self) -> io::Result<()> {
        match rustix::io::write(&self.0, &1u64.to_ne_bytes()) {
            // The counter is already far from zero: the waiter will wake anyway.
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Take the wake-ups that ended a wait, so the next wait blocks again: one read resets
    /// the counter, however many wakes it holds.
    pub(crate) fn drain(&self) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut count);
    }

    /// The descriptor a wait watches (readable while a wake is pending).
    pub(crate) fn fd(&self) -> BorrowedSocket<'_> {
        self.0.as_fd()
    }
}
