//! How a fuzz input drives a check: a few leading bytes are choices (limits, roles, how the
//! bytes arrive), the rest is what the peer sends. The choices are ordinary input bytes, so the
//! fuzzer mutates them like the rest, and every input means something (missing bytes read as 0).
//!
//! [`Wire`] is the socket: it hands out the peer's bytes in pieces of varying size, with
//! "would block" (and the odd "interrupted") between them, as a non-blocking socket does, and
//! takes writes in pieces the same way. The resumable readers (the head reader, the proxy
//! exchanges, the client's upgrade) are only right if they give the same answer however the
//! bytes are cut, so the cuts are part of what is fuzzed.

use std::io::{self, Read, Write};

/// Leading choice bytes, then the rest.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// The next choice byte (0 once the input is used up).
    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// Whatever is left: the bytes under test.
    pub(crate) fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// xorshift32: how the cuts fall, reproducible from one seed byte and cheap.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u32);

impl Rng {
    pub(crate) fn new(seed: u8) -> Self {
        Rng((0x9E37_79B9 ^ u32::from(seed).wrapping_mul(0x0101_0101)) | 1)
    }

    /// A number below `n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        if n == 0 {
            0
        } else {
            self.0 as usize % n
        }
    }
}

/// How the pieces are cut, from one choice byte: the low 4 bits bound a piece (1 byte up to
/// everything at once), the high bits seed where they fall and where the socket says "would
/// block" between them.
#[derive(Debug, Clone)]
pub(crate) struct Cuts {
    rng: Rng,
    /// Largest piece.
    max: usize,
    /// One in `stall` calls says "would block" (0: never).
    stall: usize,
}

impl Cuts {
    pub(crate) fn new(choice: u8) -> Self {
        let max = match choice & 0x0f {
            0 => usize::MAX,
            k => 1 << (k - 1),
        };
        Cuts {
            rng: Rng::new(choice),
            max,
            stall: [0, 2, 3, 8][usize::from(choice >> 6)],
        }
    }

    /// The size of the next piece, at most `wanted` (and at least 1 when `wanted` is not 0).
    fn piece(&mut self, wanted: usize) -> usize {
        let max = self.max.min(wanted);
        if max <= 1 {
            return max;
        }
        1 + self.rng.below(max)
    }

    /// Whether this call should find the socket not ready.
    fn stalls(&mut self) -> bool {
        self.stall != 0 && self.rng.below(self.stall) == 0
    }
}

/// What the socket does once the peer's bytes are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The peer closed: reads return 0.
    Closed,
    /// The peer went quiet: reads say "would block" forever.
    Quiet,
}

/// An in-memory non-blocking socket (see the module docs).
#[derive(Debug)]
pub(crate) struct Wire<'a> {
    input: &'a [u8],
    /// Bytes of `input` handed out so far.
    pub(crate) pos: usize,
    end: End,
    read_cuts: Cuts,
    write_cuts: Cuts,
    /// Everything written, in order.
    pub(crate) written: Vec<u8>,
    /// The last read said "would block" (so the next one will not, unless the input is done).
    stalled: bool,
    /// The same for writes.
    write_stalled: bool,
}

impl<'a> Wire<'a> {
    pub(crate) fn new(input: &'a [u8], end: End, read_cuts: u8, write_cuts: u8) -> Self {
        Wire {
            input,
            pos: 0,
            end,
            read_cuts: Cuts::new(read_cuts),
            write_cuts: Cuts::new(write_cuts),
            written: Vec::new(),
            stalled: false,
            write_stalled: false,
        }
    }

    /// Every byte has been handed out and nothing more will come: a reader that says "would
    /// block" now would wait forever.
    pub(crate) fn drained(&self) -> bool {
        self.pos == self.input.len() && self.end == End::Quiet
    }

    /// The bytes handed out so far.
    pub(crate) fn consumed(&self) -> &'a [u8] {
        &self.input[..self.pos]
    }
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos == self.input.len() {
            return match self.end {
                End::Closed => Ok(0),
                End::Quiet => Err(would_block()),
            };
        }
        // Never two stalls in a row, so every read that follows one makes progress.
        if !self.stalled && self.read_cuts.stalls() {
            self.stalled = true;
            // Now and then a signal instead: readers must simply try again.
            return Err(if self.read_cuts.rng.below(4) == 0 {
                io::ErrorKind::Interrupted.into()
            } else {
                would_block()
            });
        }
        self.stalled = false;
        let n = self
            .read_cuts
            .piece(buf.len().min(self.input.len() - self.pos));
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.write_stalled && self.write_cuts.stalls() {
            self.write_stalled = true;
            return Err(would_block());
        }
        self.write_stalled = false;
        let n = self.write_cuts.piece(buf.len());
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where an HTTP head in `bytes` ends, as a reference for the reader: just past the first
/// blank line, its lines ended by CRLF or by a bare LF (RFC 9112 2.2 lets a recipient take LF).
pub(crate) fn blank_line_end(bytes: &[u8]) -> Option<usize> {
    [
        find(bytes, b"\n\n").map(|at| at + 2),
        find(bytes, b"\n\r\n").map(|at| at + 3),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// Where `needle` first occurs in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
