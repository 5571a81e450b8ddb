//! The TCP connection under every stream: a socket with a deadline while it blocks (the opening
//! handshake, a server's plain HTTP), byte counters, and the drained-read hint once it is
//! non-blocking.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use crate::io_outcome::{deadline_passed, io_outcome, IoOutcome};

/// A TCP socket that can hold a deadline (used during the opening handshake, when it is in
/// blocking mode) and counts the bytes it moves (so a write timeout can tell "no progress" from
/// "slow progress", and a heartbeat can see life).
///
/// In non-blocking mode a read that comes back short proves the socket was empty, so the next
/// read says "would block" without asking the kernel, until [`TcpConn::rearm`]: the driver
/// re-arms when the socket may have new data (readiness waits are edge-triggered, so data that
/// arrives later wakes the loop). That saves the `read(2)` returning EAGAIN at the end of every
/// read pass.
#[derive(Debug)]
pub(crate) struct TcpConn {
    tcp: TcpStream,
    deadline: Option<Instant>,
    written: u64,
    read: u64,
    nonblocking: bool,
    /// Whether a short read may stand for "would block" (off once the peer has closed).
    hints: bool,
    /// The last read was short: the socket is empty until re-armed.
    drained: bool,
    /// The last "would block" came from a write (else from a read): what a non-blocking
    /// handshake waits for, whichever layer (TLS, HTTP) hit it.
    blocked_writing: bool,
}

impl TcpConn {
    /// A connection in handshake mode: blocking reads and writes bounded by `deadline`, or,
    /// without one, `tcp` as it is (the dial's socket is non-blocking already, and "would
    /// block" comes back as such). Read hints start with [`TcpConn::make_nonblocking`].
    pub(crate) fn new(tcp: TcpStream, deadline: Option<Instant>) -> Self {
        TcpConn {
            tcp,
            deadline,
            written: 0,
            read: 0,
            nonblocking: false,
            hints: true,
            drained: false,
            blocked_writing: false,
        }
    }

    /// Leave handshake mode: no deadline, non-blocking from now on.
    pub(crate) fn make_nonblocking(&mut self) -> io::Result<()> {
        self.deadline = None;
        self.tcp.set_read_timeout(None)?;
        self.tcp.set_write_timeout(None)?;
        self.tcp.set_nonblocking(true)?;
        self.nonblocking = true;
        Ok(())
    }

    /// Bound blocking reads and writes by `deadline` from now on (`None`: no bound). Only for a
    /// socket still in blocking (handshake) mode, such as a server's plain HTTP exchange.
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        self.deadline = deadline;
        if deadline.is_none() {
            // `arm` leaves the socket's timeouts alone without a deadline: clear the last ones.
            self.tcp.set_read_timeout(None)?;
            self.tcp.set_write_timeout(None)?;
        }
        Ok(())
    }

    /// The socket may have new data: the next read asks the kernel.
    pub(crate) fn rearm(&mut self) {
        self.drained = false;
    }

    /// The peer closed its side: its data and the end of the stream may have come with one
    /// readiness event, so a short read no longer proves there is nothing more to read.
    pub(crate) fn stop_read_hints(&mut self) {
        self.hints = false;
        self.drained = false;
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether the last "would block" came from a write rather than a read: what to wait for
    /// when a layer above (TLS, an HTTP exchange) stopped at it.
    pub(crate) fn blocked_writing(&self) -> bool {
        self.blocked_writing
    }

    /// Bytes written to the socket so far.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Bytes read from the socket so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Before each blocking call in handshake mode, shrink the socket timeout to what is left, so
    /// a peer that trickles bytes cannot stretch the handshake past its deadline.
    fn arm(&self, read: bool) -> io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(deadline_passed());
        }
        if read {
            self.tcp.set_read_timeout(Some(left))
        } else {
            self.tcp.set_write_timeout(Some(left))
        }
    }

    /// A socket timeout shows up as WouldBlock on Unix; in handshake mode that means the deadline.
    fn timed_out(&self, r: io::Result<usize>) -> io::Result<usize> {
        match r {
            Err(e) if self.deadline.is_some() && io_outcome(&e) == IoOutcome::WouldBlock => {
                Err(deadline_passed())
            }
            r => r,
        }
    }
}

impl Read for TcpConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.arm(true)?;
        let r = self.tcp.read(buf);
        let r = self.timed_out(r);
        match &r {
            Ok(n) => {
                self.read += *n as u64;
                self.drained = self.nonblocking && self.hints && *n > 0 && *n < buf.len();
            }
            Err(e) if io_outcome(e) == IoOutcome::WouldBlock => {
                self.drained = self.nonblocking && self.hints;
                self.blocked_writing = false;
            }
            Err(_) => {}
        }
        r
    }
}

impl Write for TcpConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(false)?;
        let r = self.tcp.write(buf);
        let r = self.timed_out(r);
        match &r {
            Ok(n) => self.written += *n as u64,
            Err(e) if io_outcome(e) == IoOutcome::WouldBlock => self.blocked_writing = true,
            Err(_) => {}
        }
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    /// A connected pair on 127.0.0.1: ours, and the peer's end (kept open, silent).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        (ours, theirs)
    }

    #[test]
    fn a_passed_deadline_is_reported_as_ours() {
        let (tcp, _peer) = pair();
        let mut conn = TcpConn::new(tcp, Some(Instant::now()));
        let e = conn.read(&mut [0; 16]).unwrap_err();
        assert_eq!(io_outcome(&e), IoOutcome::Deadline, "{e:?}");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let e = conn.write(b"x").unwrap_err();
        assert_eq!(io_outcome(&e), IoOutcome::Deadline, "{e:?}");
    }

    #[test]
    fn the_socket_timeout_of_a_silent_peer_is_our_deadline() {
        let (tcp, _peer) = pair();
        let mut conn = TcpConn::new(tcp, Some(Instant::now() + Duration::from_millis(20)));
        let e = conn.read(&mut [0; 16]).unwrap_err();
        assert_eq!(io_outcome(&e), IoOutcome::Deadline, "{e:?}");
    }

    #[test]
    fn nonblocking_nothing_to_read_would_block_and_is_no_deadline() {
        let (tcp, _peer) = pair();
        let mut conn = TcpConn::new(tcp, Some(Instant::now()));
        conn.make_nonblocking().unwrap();
        let e = conn.read(&mut [0; 16]).unwrap_err();
        assert_eq!(io_outcome(&e), IoOutcome::WouldBlock, "{e:?}");
        assert!(conn.drained, "the next read is skipped until re-armed");
    }
}
