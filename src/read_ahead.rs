//! Reading ahead while bulk data arrives. tungstenite reads at most `read_buffer_size` (16 KiB)
//! per call, which keeps small messages cheap but costs a 64 KiB message five system calls. When
//! a read fills the whole request (the socket had at least that much), the stream switches to
//! reading up to [`BULK`] at a time into a buffer of its own, allocated and zeroed once, and
//! serves tungstenite's reads from it. Once reads come back small again, the buffer is freed,
//! so idle connections stay small.

use std::io::{self, Read};

/// Largest read while bulk data flows.
const BULK: usize = 128 << 10;
/// Reads this short (of [`BULK`]) in a row mean the bulk has passed.
const SHORT: usize = BULK / 8;
const SHORT_READS_TO_STOP: u32 = 8;

#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    /// Empty while not in bulk mode; `buf[start..end]` is read but not yet handed on.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    short_reads: u32,
}

impl ReadAhead {
    /// Read from `source` into `out`, through the bulk buffer when bulk data is flowing.
    pub(crate) fn read(&mut self, source: &mut impl Read, out: &mut [u8]) -> io::Result<usize> {
        if self.start < self.end {
            return Ok(self.hand_on(out));
        }
        if self.buf.is_empty() {
            let n = source.read(out)?;
            if n == out.len() && n >= 4096 {
                self.buf = vec![0; BULK];
            }
            return Ok(n);
        }
        let n = source.read(&mut self.buf)?;
        if n < SHORT {
            self.short_reads += 1;
        } else {
            self.short_reads = 0;
        }
        self.start = 0;
        self.end = n;
        let handed = self.hand_on(out);
        if self.short_reads >= SHORT_READS_TO_STOP && self.start == self.end {
            *self = ReadAhead::default();
        }
        Ok(handed)
    }

    fn hand_on(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        n
    }

    /// Bytes read from the socket that the reader has not taken yet.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.end - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out `data` in reads of at most `chunk` bytes, then "would block".
    struct Source {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
        calls: usize,
    }

    impl Read for Source {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.at == self.data.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn drain(ahead: &mut ReadAhead, source: &mut Source, ask: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0; ask];
        loop {
            match ahead.read(source, &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[test]
    fn bulk_data_is_read_ahead_in_few_calls_and_handed_on_in_order() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut source = Source {
            data: data.clone(),
            at: 0,
            chunk: usize::MAX,
            calls: 0,
        };
        let mut ahead = ReadAhead::default();
        assert_eq!(drain(&mut ahead, &mut source, 16 << 10), data);
        // 16 KiB requests would take 62 calls; reading ahead takes about 1 MB / 128 KiB.
        assert!(source.calls < 15, "{} calls", source.calls);
        assert_eq!(ahead.buffered(), 0);
    }

    #[test]
    fn small_reads_never_allocate_and_bulk_ends_when_traffic_turns_small() {
        let mut source = Source {
            data: vec![1; 100],
            at: 0,
            chunk: 10,
            calls: 0,
        };
        let mut ahead = ReadAhead::default();
        assert_eq!(drain(&mut ahead, &mut source, 16 << 10).len(), 100);
        assert!(ahead.buf.is_empty(), "no buffer for small reads");
        // Bulk, then small reads: the buffer goes away.
        let mut bulk = Source {
            data: vec![2; 300_000],
            at: 0,
            chunk: usize::MAX,
            calls: 0,
        };
        drain(&mut ahead, &mut bulk, 16 << 10);
        assert!(!ahead.buf.is_empty());
        let mut trickle = Source {
            data: vec![3; 100],
            at: 0,
            chunk: 10,
            calls: 0,
        };
        assert_eq!(drain(&mut ahead, &mut trickle, 16 << 10), vec![3; 100]);
        assert!(ahead.buf.is_empty(), "freed after short reads");
    }
}
