//! The byte stream under a session: plain TCP or TLS over TCP.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// A TCP socket that can hold a deadline (used during the opening handshake, when it is in
/// blocking mode) and counts the bytes it writes (so a write timeout can tell "no progress" from
/// "slow progress").
#[derive(Debug)]
pub(crate) struct TcpConn {
    tcp: TcpStream,
    deadline: Option<Instant>,
    written: u64,
}

impl TcpConn {
    pub(crate) fn new(tcp: TcpStream, deadline: Option<Instant>) -> Self {
        TcpConn {
            tcp,
            deadline,
            written: 0,
        }
    }

    /// Leave handshake mode: no deadline, non-blocking from now on.
    pub(crate) fn make_nonblocking(&mut self) -> io::Result<()> {
        self.deadline = None;
        self.tcp.set_read_timeout(None)?;
        self.tcp.set_write_timeout(None)?;
        self.tcp.set_nonblocking(true)
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Before each blocking call in handshake mode, shrink the socket timeout to what is left, so
    /// a peer that trickles bytes cannot stretch the handshake past its deadline.
    fn arm(&self, read: bool) -> io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
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
            Err(e) if self.deadline.is_some() && e.kind() == io::ErrorKind::WouldBlock => {
                Err(io::ErrorKind::TimedOut.into())
            }
            r => r,
        }
    }
}

impl Read for TcpConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(true)?;
        let r = self.tcp.read(buf);
        self.timed_out(r)
    }
}

impl Write for TcpConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(false)?;
        let r = self.tcp.write(buf);
        let r = self.timed_out(r);
        if let Ok(n) = r {
            self.written += n as u64;
        }
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a session reads and writes: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpConn),
    Tls(Box<native_tls::TlsStream<TcpConn>>),
}

impl Stream {
    pub(crate) fn conn(&self) -> &TcpConn {
        match self {
            Stream::Plain(c) => c,
            Stream::Tls(t) => t.get_ref(),
        }
    }

    pub(crate) fn conn_mut(&mut self) -> &mut TcpConn {
        match self {
            Stream::Plain(c) => c,
            Stream::Tls(t) => t.get_mut(),
        }
    }

    /// Raw bytes written to the socket so far (after TLS).
    pub(crate) fn bytes_written(&self) -> u64 {
        self.conn().written
    }

    /// Best effort: end the TCP connection in both directions now.
    pub(crate) fn shutdown(&self) {
        let _ = self.conn().tcp.shutdown(std::net::Shutdown::Both);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(c) => c.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(c) => c.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(c) => c.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}
