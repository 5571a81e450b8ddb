//! The portable Unix waker: a pipe (the self-pipe trick) that other threads write a byte to
//! and the waiter drains. Two descriptors, the ends of the pipe.
//!
//! Made with `pipe()` and then `fcntl`, because Apple has no `pipe2`; the same calls run
//! everywhere this backend does (the BSDs, and Linux under `--cfg syncws_portable`), so the
//! path macOS takes is the one CI runs. The cost: between `pipe()` and `fcntl(FD_CLOEXEC)` a
//! `fork` + `exec` on another thread could inherit the two ends (harmless to us; the child
//! holds a pipe it never uses).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
use rustix::io::{fcntl_getfd, fcntl_setfd, Errno, FdFlags};

use super::BorrowedSocket;

#[derive(Debug)]
pub(crate) struct Waker {
    /// The end the waiter polls and drains.
    read: OwnedFd,
    /// The end wakers write to.
    write: OwnedFd,
}

impl Waker {
    /// The descriptors a waker holds.
    pub(crate) const DESCRIPTORS: usize = 2;

    pub(crate) fn new() -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe()?;
        for end in [&read, &write] {
            // Non-blocking on both ends: a waker never blocks on a full pipe, and draining
            // stops at an empty one.
            fcntl_setfl(end, fcntl_getfl(end)? | OFlags::NONBLOCK)?;
            fcntl_setfd(end, fcntl_getfd(end)? | FdFlags::CLOEXEC)?;
        }
        Ok(Waker { read, write })
    }

    /// End the waiter's next (or current) wait.
    pub(crate) fn wake(&self) -> io::Result<()> {
        loop {
            return match rustix::io::write(&self.write, &[1]) {
                // A full pipe holds wakes the waiter has not drained: it will wake anyway.
                Ok(_) | Err(Errno::AGAIN) => Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => Err(e.into()),
            };
        }
    }

    /// Take the wake-ups that ended a wait, so the next wait blocks again. Unlike an eventfd,
    /// a pipe holds one byte per wake: read until it is empty, or the next wait would end at
    /// once for a wake already seen.
    pub(crate) fn drain(&self) {
        let mut bytes = [0u8; 64];
        loop {
            match rustix::io::read(&self.read, &mut bytes) {
                // A full buffer may have left more behind.
                Ok(n) if n == bytes.len() => {}
                Err(Errno::INTR) => {}
                // Short (every byte there was is taken), empty (EAGAIN), or failed: a wake that
                // comes after this writes a new byte, which the next wait sees.
                Ok(_) | Err(_) => return,
            }
        }
    }

    /// The descriptor a wait watches (readable while a wake is pending).
    pub(crate) fn fd(&self) -> BorrowedSocket<'_> {
        self.read.as_fd()
    }
}
