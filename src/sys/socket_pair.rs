//! The Windows waker: a connected pair of loopback TCP sockets; other threads write a byte to
//! one end, and the waiter polls and drains the other. Windows has no pipe that `WSAPoll`
//! can watch (it takes sockets only), and a socket pair keeps the single-connection wait and
//! the poll set the same code as on Unix. Two sockets, the ends of the pair.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};

use super::{AsFd, BorrowedSocket};

#[derive(Debug)]
pub(crate) struct Waker {
    /// The end the waiter polls and drains.
    read: TcpStream,
    /// The end wakers write to.
    write: TcpStream,
}

impl Waker {
    /// The sockets a waker holds.
    pub(crate) const DESCRIPTORS: usize = 2;

    pub(crate) fn new() -> io::Result<Self> {
        // A listener only for this pair, on loopback, closed once the pair is made.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let write = TcpStream::connect(listener.local_addr()?)?;
        let mine = write.local_addr()?;
        let read = loop {
            // Another local process may connect to the listener first: only our own
            // connection (already queued, so accept does not wait for it) is the pair.
            let (read, from) = listener.accept()?;
            if from == mine {
                break read;
            }
        };
        // A wake is one byte that must go out at once, not wait for more to coalesce.
        write.set_nodelay(true)?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        Ok(Waker { read, write })
    }

    /// End the waiter's next (or current) wait.
    pub(crate) fn wake(&self) -> io::Result<()> {
        loop {
            return match (&self.write).write(&[1]) {
                Ok(_) => Ok(()),
                // A full send buffer holds wakes the waiter has not drained: it will wake
                // anyway.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Take the wake-ups that ended a wait, so the next wait blocks again: one byte per wake,
    /// read until none is left.
    pub(crate) fn drain(&self) {
        let mut bytes = [0u8; 64];
        loop {
            match (&self.read).read(&mut bytes) {
                // A full buffer may have left more behind.
                Ok(n) if n == bytes.len() => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Short (every byte there was is taken), empty (would block), or failed: a wake
                // that comes after this writes a new byte, which the next wait sees.
                Ok(_) | Err(_) => return,
            }
        }
    }

    /// The socket a wait watches (readable while a wake is pending).
    pub(crate) fn fd(&self) -> BorrowedSocket<'_> {
        self.read.as_fd()
    }
}
