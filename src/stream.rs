//! The byte stream under a session: plain TCP or TLS over TCP.

use std::io::{self, Read, Write};
use std::time::Instant;

use crate::deflate::inbound::Inbound;
use crate::outbox::Outbox;
use crate::read_ahead::ReadAhead;
use crate::tcp::TcpConn;
use crate::tls::TlsConn;

/// What a session reads and writes: the transport, and when permessage-deflate was agreed, the
/// layer that inflates compressed messages on their way up to tungstenite (see
/// `deflate::inbound`). Without it a read goes straight to the transport.
#[derive(Debug)]
pub(crate) struct Stream {
    transport: Transport,
    inbound: Option<Box<Inbound>>,
    /// After the handshake, every write is queued here and goes to the socket on `flush`.
    outbox: Option<Outbox>,
    /// After the handshake, bulk input is read ahead (see [`ReadAhead`]).
    ahead: Option<ReadAhead>,
}

/// Plain TCP, or TLS over TCP (and, in unit tests, a scripted in-memory stream that says "would
/// block" when its script says so).
#[derive(Debug)]
pub(crate) enum Transport {
    Plain(TcpConn),
    Tls(TlsConn),
    /// No connection yet: under the session of a client still opening its first connection,
    /// which holds only its inbox and counters until then. Reads and writes fail.
    Detached,
    #[cfg(test)]
    Scripted(scripted::Scripted),
}

impl Transport {
    /// The TCP connection under the stream (None only for scripted test streams).
    pub(crate) fn tcp_conn(&self) -> Option<&TcpConn> {
        match self {
            Transport::Plain(c) => Some(c),
            Transport::Tls(t) => Some(t.tcp_conn()),
            Transport::Detached => None,
            #[cfg(test)]
            Transport::Scripted(_) => None,
        }
    }

    fn tcp_conn_mut(&mut self) -> Option<&mut TcpConn> {
        match self {
            Transport::Plain(c) => Some(c),
            Transport::Tls(t) => Some(t.tcp_conn_mut()),
            Transport::Detached => None,
            #[cfg(test)]
            Transport::Scripted(_) => None,
        }
    }

    /// See [`TcpConn::rearm`].
    pub(crate) fn rearm(&mut self) {
        if let Some(c) = self.tcp_conn_mut() {
            c.rearm();
        }
    }

    /// See [`TcpConn::stop_read_hints`].
    pub(crate) fn stop_read_hints(&mut self) {
        if let Some(c) = self.tcp_conn_mut() {
            c.stop_read_hints();
        }
    }

    /// Leave handshake mode: no deadline, non-blocking from now on.
    pub(crate) fn make_nonblocking(&mut self) -> io::Result<()> {
        match self.tcp_conn_mut() {
            Some(c) => c.make_nonblocking(),
            None => Ok(()),
        }
    }

    /// Bytes written to the transport so far (after TLS).
    pub(crate) fn bytes_written(&self) -> u64 {
        match self {
            #[cfg(test)]
            Transport::Scripted(s) => s.written.len() as u64,
            _ => self.tcp_conn().map_or(0, TcpConn::bytes_written),
        }
    }

    /// Bytes read from the transport so far (before TLS): any of them shows the peer is alive.
    pub(crate) fn bytes_read(&self) -> u64 {
        match self {
            #[cfg(test)]
            Transport::Scripted(s) => s.read_total,
            _ => self.tcp_conn().map_or(0, TcpConn::bytes_read),
        }
    }

    /// Best effort: end the TCP connection in both directions now.
    pub(crate) fn shutdown(&self) {
        if let Some(c) = self.tcp_conn() {
            let _ = c.tcp().shutdown(std::net::Shutdown::Both);
        }
    }

    /// Best effort: say we are done writing (TLS close_notify, then FIN) while still reading,
    /// so the peer reads everything we sent before it sees the end.
    pub(crate) fn shutdown_write(&mut self) {
        if let Transport::Tls(t) = self {
            t.close_notify();
        }
        if let Some(c) = self.tcp_conn() {
            let _ = c.tcp().shutdown(std::net::Shutdown::Write);
        }
    }

    /// See [`TcpConn::set_deadline`].
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        match self.tcp_conn_mut() {
            Some(c) => c.set_deadline(deadline),
            None => Ok(()),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(c) => c.read(buf),
            Transport::Tls(t) => t.read(buf),
            Transport::Detached => Err(io::ErrorKind::NotConnected.into()),
            #[cfg(test)]
            Transport::Scripted(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(c) => c.write(buf),
            Transport::Tls(t) => t.write(buf),
            Transport::Detached => Err(io::ErrorKind::NotConnected.into()),
            #[cfg(test)]
            Transport::Scripted(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(c) => c.flush(),
            Transport::Tls(t) => t.flush(),
            Transport::Detached => Ok(()),
            #[cfg(test)]
            Transport::Scripted(_) => Ok(()),
        }
    }
}

impl From<Transport> for Stream {
    fn from(transport: Transport) -> Self {
        Stream {
            transport,
            inbound: None,
            outbox: None,
            ahead: None,
        }
    }
}

impl Stream {
    /// Inflate compressed messages from now on (permessage-deflate was agreed). Bytes read
    /// past the handshake must already be in `inbound`, never handed to tungstenite directly.
    pub(crate) fn set_inbound(&mut self, inbound: Inbound) {
        self.inbound = Some(Box::new(inbound));
    }

    /// The TCP connection under the stream (None only for scripted test streams).
    pub(crate) fn tcp_conn(&self) -> Option<&TcpConn> {
        self.transport.tcp_conn()
    }

    /// The handshake is over: queue every write from now on (see [`Outbox`]; `flush` writes
    /// the queue to the socket), and read ahead while bulk data arrives (see [`ReadAhead`]).
    pub(crate) fn start_session(&mut self) {
        self.outbox.get_or_insert_with(Outbox::default);
        self.ahead.get_or_insert_with(ReadAhead::default);
    }

    /// The queue of bytes for the socket (after `start_queueing`).
    pub(crate) fn outbox(&self) -> Option<&Outbox> {
        self.outbox.as_ref()
    }

    pub(crate) fn outbox_mut(&mut self) -> Option<&mut Outbox> {
        self.outbox.as_mut()
    }

    #[cfg(test)]
    pub(crate) fn transport_mut(&mut self) -> &mut Transport {
        &mut self.transport
    }

    /// See [`TcpConn::rearm`].
    pub(crate) fn rearm(&mut self) {
        self.transport.rearm();
    }

    /// See [`TcpConn::stop_read_hints`].
    pub(crate) fn stop_read_hints(&mut self) {
        self.transport.stop_read_hints();
    }

    /// Leave handshake mode: no deadline, non-blocking from now on.
    pub(crate) fn make_nonblocking(&mut self) -> io::Result<()> {
        self.transport.make_nonblocking()
    }

    /// Bytes written to the transport so far (after TLS).
    pub(crate) fn bytes_written(&self) -> u64 {
        self.transport.bytes_written()
    }

    /// Bytes read from the transport so far (before TLS and inflating).
    pub(crate) fn bytes_read(&self) -> u64 {
        self.transport.bytes_read()
    }

    /// Best effort: end the TCP connection in both directions now.
    pub(crate) fn shutdown(&self) {
        self.transport.shutdown();
    }

    /// See [`Transport::shutdown_write`].
    pub(crate) fn shutdown_write(&mut self) {
        self.transport.shutdown_write();
    }

    /// See [`TcpConn::set_deadline`].
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        self.transport.set_deadline(deadline)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut source = Source {
            transport: &mut self.transport,
            ahead: self.ahead.as_mut(),
        };
        match &mut self.inbound {
            None => source.read(buf),
            Some(inbound) => inbound.read(&mut source, buf),
        }
    }
}

/// The transport, read through the read-ahead buffer once the session has started.
struct Source<'a> {
    transport: &'a mut Transport,
    ahead: Option<&'a mut ReadAhead>,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.ahead {
            None => self.transport.read(buf),
            Some(ahead) => ahead.read(self.transport, buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.outbox {
            None => self.transport.write(buf),
            // Taken whole: tungstenite's frames join ours in the order written.
            Some(outbox) => {
                outbox.tail(buf.len()).extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(outbox) = &mut self.outbox {
            outbox.write_to(&mut self.transport)?;
        }
        self.transport.flush()
    }
}

/// An in-memory stream driven by a script, for testing the non-blocking paths byte by byte.
#[cfg(test)]
pub(crate) mod scripted {
    use std::collections::VecDeque;
    use std::io::{self, Read, Write};

    /// One step of what reads return.
    #[derive(Debug)]
    pub(crate) enum ReadStep {
        Data(Vec<u8>),
        WouldBlock,
        Eof,
    }

    #[derive(Debug, Default)]
    pub(crate) struct Scripted {
        /// What reads return, in order; an empty script says "would block".
        pub(crate) reads: VecDeque<ReadStep>,
        /// Bytes writes may still take before they say "would block".
        pub(crate) write_budget: usize,
        /// Everything written.
        pub(crate) written: Vec<u8>,
        /// Bytes handed out by reads.
        pub(crate) read_total: u64,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.reads.pop_front() {
                None | Some(ReadStep::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
                Some(ReadStep::Eof) => Ok(0),
                Some(ReadStep::Data(mut d)) => {
                    let n = d.len().min(buf.len());
                    buf[..n].copy_from_slice(&d[..n]);
                    if n < d.len() {
                        self.reads.push_front(ReadStep::Data(d.split_off(n)));
                    }
                    self.read_total += n as u64;
                    Ok(n)
                }
            }
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.write_budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.write_budget);
            self.write_budget -= n;
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
