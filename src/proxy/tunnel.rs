//! The tunnel: the exchange with the proxy that makes a connection to it carry bytes to and from
//! the target. [`tunnel`] runs it on a blocking stream; [`Exchange`] on a non-blocking one, as
//! far as the socket allows per call.

use std::io::{self, Read, Write};

use super::{http, socks5, Proxy, ProxyKind, Target};
use crate::error::Error;
use crate::io_outcome::{io_outcome, IoOutcome};

/// Ask `proxy`, connected on `stream` (blocking, under the handshake deadline), for a tunnel to
/// `target:port`. When this returns `Ok`, `stream` carries bytes to and from the target.
pub(crate) fn tunnel<S: Read + Write>(
    stream: &mut S,
    proxy: &Proxy,
    target: Target<'_>,
    port: u16,
) -> Result<(), Error> {
    match proxy.kind {
        ProxyKind::HttpConnect => http::connect(stream, proxy, target, port),
        ProxyKind::Socks5 | ProxyKind::Socks5h => socks5::connect(stream, proxy, target, port),
    }
}

/// The tunnel exchange on a non-blocking socket, without a second implementation of either
/// protocol: each [`Exchange::advance`] runs [`tunnel`] again from the start over a [`Replay`]
/// of the connection, which hands back what the proxy has sent so far, skips what was written
/// already, and meets everything new with the socket. When the socket would block, the run
/// stops there; the next one, once the socket is ready, gets one step further. The exchanges
/// are a function of the bytes received (and the proxy and target), so every run repeats the
/// last one exactly up to where it stopped.
///
/// A run costs a few microseconds and an exchange waits a handful of times (SOCKS5: at most
/// four answers), so replaying is cheaper than it sounds. Reads from the socket ask for no more
/// than the exchange asks for, exactly as the blocking exchange does: nothing the target sends
/// later is taken from the socket.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    /// Everything the proxy has sent so far.
    received: Vec<u8>,
    /// Everything written to the proxy so far.
    sent: Vec<u8>,
}

/// Where an [`Exchange`] stands after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// The tunnel is open.
    Open,
    /// The socket would block: wait until it can be read from, or (`writing`) written to.
    Blocked { writing: bool },
}

impl Exchange {
    /// Go on with the exchange with `proxy` over `socket` (non-blocking) as far as it allows.
    pub(crate) fn advance<S: Read + Write>(
        &mut self,
        socket: &mut S,
        proxy: &Proxy,
        target: Target<'_>,
        port: u16,
    ) -> Result<Progress, Error> {
        let mut replay = Replay {
            socket,
            exchange: self,
            read: 0,
            written: 0,
            blocked: None,
        };
        let result = tunnel(&mut replay, proxy, target, port);
        match (replay.blocked, result) {
            // The error the exchange made of "would block" is only where the run stopped.
            (Some(writing), _) => Ok(Progress::Blocked { writing }),
            (None, Ok(())) => Ok(Progress::Open),
            (None, Err(e)) => Err(e),
        }
    }
}

/// One run of the exchange over the socket (see [`Exchange`]).
struct Replay<'a, S> {
    socket: &'a mut S,
    exchange: &'a mut Exchange,
    /// How far this run has read into `exchange.received`.
    read: usize,
    /// How far this run has written into `exchange.sent`.
    written: usize,
    /// The socket would block: writing (true) or reading (false).
    blocked: Option<bool>,
}

impl<S: Read> Read for Replay<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let received = &mut self.exchange.received;
        if self.read < received.len() {
            let n = buf.len().min(received.len() - self.read);
            buf[..n].copy_from_slice(&received[self.read..self.read + n]);
            self.read += n;
            return Ok(n);
        }
        let r = self.socket.read(buf);
        match &r {
            Ok(n) => {
                received.extend_from_slice(&buf[..*n]);
                self.read += n;
            }
            Err(e) if io_outcome(e) == IoOutcome::WouldBlock => self.blocked = Some(false),
            Err(_) => {}
        }
        r
    }
}

impl<S: Write> Write for Replay<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let sent = &mut self.exchange.sent;
        // Written by an earlier run: the same bytes, since the run is the same so far.
        let old = buf.len().min(sent.len() - self.written);
        debug_assert_eq!(buf[..old], sent[self.written..self.written + old]);
        if old > 0 {
            self.written += old;
            return Ok(old);
        }
        let r = self.socket.write(buf);
        match &r {
            Ok(n) => {
                sent.extend_from_slice(&buf[..*n]);
                self.written += n;
            }
            Err(e) if io_outcome(e) == IoOutcome::WouldBlock => self.blocked = Some(true),
            Err(_) => {}
        }
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TimeoutKind;
    use std::io;

    /// A socket that takes and gives only what the test allows, and says "would block"
    /// otherwise.
    #[derive(Default)]
    struct Stingy {
        input: Vec<u8>,
        /// Bytes of `input` that may be read now.
        readable: usize,
        output: Vec<u8>,
        /// Bytes that may be written now.
        room: usize,
    }

    impl Read for Stingy {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.readable == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.readable);
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input.drain(..n);
            self.readable -= n;
            Ok(n)
        }
    }

    impl Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.output.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_byte_at_a_time_the_exchange_sends_and_reads_exactly_what_the_blocking_one_does() {
        let socks_reply: &[u8] = &[
            5, 2, 1, 0, 5, 0, 0, 3, 5, b'r', b'e', b'l', b'a', b'y', 0, 80,
        ];
        for (proxy, reply) in [
            (
                "http://u:p@p:3128",
                &b"HTTP/1.1 200 Connection established\r\n\r\n"[..],
            ),
            ("socks5h://us:pw@p", socks_reply),
        ] {
            let proxy = Proxy::parse(proxy).unwrap();
            let mut blocking = crate::proxy::duplex::Duplex::new(reply);
            tunnel(&mut blocking, &proxy, Target::Name("ws.example"), 443).unwrap();

            let mut input = reply.to_vec();
            input.extend_from_slice(b"the target's");
            let mut socket = Stingy {
                input,
                ..Stingy::default()
            };
            let mut exchange = Exchange::default();
            let mut waits = 0;
            loop {
                match exchange.advance(&mut socket, &proxy, Target::Name("ws.example"), 443) {
                    Ok(Progress::Open) => break,
                    Ok(Progress::Blocked { writing: true }) => socket.room += 1,
                    Ok(Progress::Blocked { writing: false }) => socket.readable += 1,
                    Err(e) => panic!("{proxy}: {e}"),
                }
                waits += 1;
                assert!(waits < 1000, "{proxy}: no progress");
            }
            assert_eq!(socket.output, blocking.output, "{proxy}");
            assert_eq!(socket.input, b"the target's", "{proxy}: the reply, no more");
        }
    }

    #[test]
    fn a_refusal_that_arrives_in_pieces_is_the_same_typed_error() {
        let proxy = Proxy::parse("socks5h://p").unwrap();
        let mut socket = Stingy {
            input: vec![5, 0, 5, 2],
            room: 1 << 10,
            ..Stingy::default()
        };
        let mut exchange = Exchange::default();
        let e = loop {
            match exchange.advance(&mut socket, &proxy, Target::Name("t"), 80) {
                Ok(Progress::Blocked { writing: false }) => socket.readable += 1,
                other => break other.unwrap_err(),
            }
        };
        assert!(
            matches!(
                e,
                Error::ProxyRefused {
                    status: crate::error::ProxyStatus::Socks5(2),
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn a_socket_timeout_during_the_exchange_is_the_handshake_timeout() {
        struct Stalled;
        impl Read for Stalled {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::TimedOut.into())
            }
        }
        impl Write for Stalled {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        for proxy in ["http://p", "socks5h://p"] {
            let r = tunnel(
                &mut Stalled,
                &Proxy::parse(proxy).unwrap(),
                Target::Name("t"),
                80,
            );
            assert!(
                matches!(r, Err(Error::Timeout(TimeoutKind::Handshake))),
                "{r:?}"
            );
        }
    }
}
