//! The bytes a connection has queued for its socket, in the order they were written: the
//! session's frames and tungstenite's (pongs, Close) alike. Owned by the stream after the
//! handshake; the session bounds it and reports its size.

use std::io::{self, Write};

use crate::io_outcome::{io_outcome, IoOutcome};

/// Capacity kept after a burst has drained; more is given back, so idle connections stay small.
const KEEP: usize = 64 << 10;

/// Queued bytes: `buf[start..]` is still to be written.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    buf: Vec<u8>,
    start: usize,
    /// Bytes the socket has taken since the outbox was made: a frame appended when
    /// `taken() + len()` was `end` is out once `taken()` reaches `end`.
    taken: u64,
}

impl Outbox {
    /// Bytes queued and not yet taken by the socket.
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes the socket has taken, ever.
    pub(crate) fn taken(&self) -> u64 {
        self.taken
    }

    /// Where to append `additional` bytes. What was written already is dropped first when the
    /// buffer would otherwise grow, so a partial write never costs a move of the whole queue.
    pub(crate) fn tail(&mut self, additional: usize) -> &mut Vec<u8> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.buf.len() + additional > self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        &mut self.buf
    }

    /// Write as much as `w` takes. `Ok` once everything is out; `WouldBlock` (or any other
    /// error) with the rest still queued.
    pub(crate) fn write_to(&mut self, w: &mut impl Write) -> io::Result<()> {
        while self.start < self.buf.len() {
            match w.write(&self.buf[self.start..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.start += n;
                    self.taken += n as u64;
                }
                Err(e) if io_outcome(&e) == IoOutcome::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        self.start = 0;
        if self.buf.capacity() > 4 * KEEP {
            self.buf.shrink_to(KEEP);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `budget` bytes, then says "would block".
    struct Budget {
        taken: Vec<u8>,
        budget: usize,
    }

    impl Write for Budget {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.budget);
            self.budget -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order_and_nothing_is_written_twice() {
        let mut outbox = Outbox::default();
        let mut sink = Budget {
            taken: Vec::new(),
            budget: 3,
        };
        outbox.tail(5).extend_from_slice(b"hello");
        let e = outbox.write_to(&mut sink).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(outbox.len(), 2);
        outbox.tail(6).extend_from_slice(b" world");
        assert_eq!(outbox.len(), 8);
        sink.budget = usize::MAX;
        outbox.write_to(&mut sink).unwrap();
        assert_eq!(outbox.len(), 0);
        assert_eq!(sink.taken, b"hello world");
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let mut outbox = Outbox::default();
        outbox.tail(1 << 20).extend_from_slice(&vec![0u8; 1 << 20]);
        let mut sink = Budget {
            taken: Vec::new(),
            budget: usize::MAX,
        };
        outbox.write_to(&mut sink).unwrap();
        assert!(outbox.buf.capacity() <= KEEP);
    }
}
