//! A server's connection taken for plain HTTP ([`Incoming::into_http`](crate::Incoming::into_http)).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use crate::stream::Stream;

/// The connection of a request answered as plain HTTP, over TCP or TLS: reads return first what
/// the client sent after its request head (a body) and then the socket's bytes; writes go to
/// the socket. Blocking, and bounded by the handshake deadline until
/// [`set_deadline`](Self::set_deadline) says otherwise: a read or write past it fails with
/// [`io::ErrorKind::TimedOut`].
///
/// Writes are not buffered: write the answer in one `write_all`, or through a
/// [`BufWriter`](std::io::BufWriter). Finish with [`close`](Self::close), so that the client
/// reads the whole answer even if it sent more than was read.
pub struct HttpStream {
    stream: Stream,
    /// Bytes read past the request head, handed out before the socket's.
    buffered: Vec<u8>,
    pos: usize,
    peer: SocketAddr,
}

impl fmt::Debug for HttpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStream")
            .field("peer", &self.peer)
            .field("buffered", &(self.buffered.len() - self.pos))
            .finish_non_exhaustive()
    }
}

impl HttpStream {
    pub(crate) fn new(stream: Stream, buffered: Vec<u8>, peer: SocketAddr) -> Self {
        HttpStream {
            stream,
            buffered,
            pos: 0,
            peer,
        }
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Bound every read and write from now on by `deadline`, or by nothing with `None` (for an
    /// answer that streams for as long as the client listens). Until this is called the
    /// handshake deadline applies.
    ///
    /// # Errors
    ///
    /// The socket's, when its timeouts cannot be cleared.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        self.stream.set_deadline(deadline)
    }

    /// End the answer: flush, tell the client we are done (TLS close_notify, then FIN), and read
    /// and drop what it still sends for a moment (at most a second, 64 KiB), so that closing
    /// does not reset the connection and destroy the answer before the client reads it.
    ///
    /// # Errors
    ///
    /// The flush's.
    pub fn close(mut self) -> io::Result<()> {
        self.stream.flush()?;
        crate::incoming::close_gracefully(&mut self.stream);
        Ok(())
    }
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.buffered.len() {
            let n = buf.len().min(self.buffered.len() - self.pos);
            buf[..n].copy_from_slice(&self.buffered[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.buffered.len() {
                self.buffered = Vec::new();
                self.pos = 0;
            }
            return Ok(n);
        }
        self.stream.read(buf)
    }
}

impl Write for HttpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}
