//! Inflating incoming messages below tungstenite.
//!
//! [`Inbound`] sits between the transport and tungstenite's frame reader and rewrites the byte
//! stream as it goes, one frame at a time, without ever holding a whole frame:
//!
//! - A Text or Binary frame with RSV1 set starts a compressed message. Its payload, and that of
//!   its continuation frames, is inflated and re-emitted as plain frames of at most `chunk`
//!   bytes; the message's last frame gets the RFC 7692 tail (`00 00 ff ff`) before inflating.
//!   A fragmented compressed message announces itself at once with an empty first frame, so
//!   tungstenite's fragmentation checks see what the wire said.
//! - Every other frame (control frames, uncompressed messages, and anything malformed: RSV1 on
//!   a control or continuation frame, RSV2/3, the wrong masking, oversized frames) passes
//!   through byte for byte, and tungstenite judges it exactly as it would without compression.
//!
//! The inflated size of a message is counted as it grows; passing the message size limit is an
//! error before the output is ever buffered, so a small message cannot inflate into an
//! allocation failure. Data that is not valid deflate is an error too. Both reach tungstenite as
//! an I/O error carrying a [`Failure`], which `error::classify` turns into the right error and
//! close code.

use std::fmt;
use std::io::{self, Read};

use flate2::{Decompress, FlushDecompress, Status};
use tungstenite::protocol::Role;

use crate::Config;

/// Appended to the last frame of a compressed message before inflating (RFC 7692 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Largest payload of a frame we emit (tungstenite joins them into the message).
const CHUNK: usize = 16 << 10;
/// Smallest buffer we read the transport into.
const MIN_READ: usize = 4096;

/// Why a compressed message could not be delivered.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The payload is not valid deflate data.
    Corrupt(String),
    /// The message inflated past the limit.
    TooLarge { size: usize, max: usize },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Corrupt(why) => write!(f, "invalid compressed data: {why}"),
            Failure::TooLarge { size, max } => {
                write!(
                    f,
                    "message inflated past {size} bytes, over the {max} limit"
                )
            }
        }
    }
}

impl std::error::Error for Failure {}

/// A frame header as it came off the wire.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    rsv1: bool,
    rsv23: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
    /// Bytes the header takes.
    size: usize,
}

fn parse_header(b: &[u8]) -> Option<Header> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    let (len, mut size) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(b.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?), 10),
        l => (u64::from(l), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let m: [u8; 4] = b.get(size..size + 4)?.try_into().ok()?;
        size += 4;
        Some(m)
    } else {
        None
    };
    Some(Header {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        rsv23: b0 & 0x30 != 0,
        opcode: b0 & 0x0f,
        mask,
        len,
        size,
    })
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Between frames.
    Header,
    /// Copying a frame we do not touch.
    Pass { left: u64 },
    /// Inflating a frame of a compressed message.
    Inflate {
        left: u64,
        fin: bool,
        mask: Option<[u8; 4]>,
        /// Payload bytes of this frame consumed so far (the masking key's phase).
        offset: usize,
    },
    /// The message's frames are in; inflating the tail.
    Tail { fed: usize },
}

/// The compressed message being inflated.
#[derive(Debug)]
struct Msg {
    opcode: u8,
    /// A frame of it has been emitted already: the rest are continuations.
    emitted: bool,
    /// Bytes inflated so far.
    total: usize,
    /// The sender ended its deflate stream (BFINAL): ignore the rest, reset at the end.
    ended: bool,
}

/// The incoming half of permessage-deflate for one connection.
pub(crate) struct Inbound {
    role: Role,
    max_message: usize,
    max_frame: u64,
    raw: Box<[u8]>,
    lo: usize,
    hi: usize,
    /// Bytes at `raw[lo..]` already unmasked (a frame being inflated in place).
    unmasked: usize,
    state: State,
    msg: Option<Msg>,
    inflate: Decompress,
    /// Inflated bytes not yet emitted; its capacity is the emitted frame size. Allocated at
    /// the first compressed message.
    staging: Vec<u8>,
    chunk: usize,
    /// Emitted bytes that did not fit the caller's buffer.
    spill: Vec<u8>,
    spill_pos: usize,
    /// A failure found after some bytes were already handed out.
    pending: Option<Failure>,
    /// After a failure the connection is ending: bytes pass through untouched.
    failed: bool,
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("state", &self.state)
            .field("msg", &self.msg)
            .field("buffered", &(self.hi - self.lo))
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// Limits and read size come from `config`; `leftover` is what arrived after the
    /// handshake's head: the start of the frame stream.
    pub(crate) fn new(role: Role, config: &Config, leftover: &[u8]) -> Self {
        let (max_message, max_frame) = (config.max_message_size(), config.max_frame_size());
        let read_size = config.read_buffer_size();
        let chunk = CHUNK.min(max_frame.unwrap_or(CHUNK)).max(1);
        let size = read_size.max(MIN_READ).max(leftover.len());
        let mut raw = vec![0u8; size].into_boxed_slice();
        raw[..leftover.len()].copy_from_slice(leftover);
        Inbound {
            role,
            max_message: max_message.unwrap_or(usize::MAX),
            max_frame: max_frame.map_or(u64::MAX, |m| m as u64),
            raw,
            lo: 0,
            hi: leftover.len(),
            unmasked: 0,
            state: State::Header,
            msg: None,
            inflate: Decompress::new(false),
            staging: Vec::new(),
            chunk,
            spill: Vec::new(),
            spill_pos: 0,
            pending: None,
            failed: false,
        }
    }

    /// Fill `buf` with the rewritten stream, reading `src` only when nothing is ready.
    pub(crate) fn read(&mut self, src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            // The session is ending the connection; only the end of the stream matters now.
            return src.read(buf);
        }
        if let Some(f) = self.pending.take() {
            self.failed = true;
            return Err(io::Error::new(io::ErrorKind::InvalidData, f));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let mut n = self.drain_spill(buf);
        if n == buf.len() {
            return Ok(n);
        }
        loop {
            if let Err(f) = self.process(buf, &mut n) {
                if n > 0 {
                    self.pending = Some(f);
                    return Ok(n);
                }
                self.failed = true;
                return Err(io::Error::new(io::ErrorKind::InvalidData, f));
            }
            if n > 0 {
                return Ok(n);
            }
            // Nothing to hand out: the next frame (or the rest of this one) is still on its way.
            if self.lo > 0 {
                self.raw.copy_within(self.lo..self.hi, 0);
                self.hi -= self.lo;
                self.lo = 0;
            }
            let got = src.read(&mut self.raw[self.hi..])?;
            if got == 0 {
                return Ok(0);
            }
            self.hi += got;
        }
    }

    /// The largest frame payload it emits, and the bytes it holds for the caller (the fuzz
    /// target checks both bounds).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn chunk_and_spill(&self) -> (usize, usize) {
        (self.chunk, self.spill.len() - self.spill_pos)
    }

    fn drain_spill(&mut self, buf: &mut [u8]) -> usize {
        let rest = &self.spill[self.spill_pos..];
        let k = rest.len().min(buf.len());
        buf[..k].copy_from_slice(&rest[..k]);
        self.spill_pos += k;
        if self.spill_pos == self.spill.len() {
            self.spill.clear();
            self.spill_pos = 0;
        }
        k
    }

    /// Advance through buffered input until `buf` is full or more input is needed.
    fn process(&mut self, buf: &mut [u8], n: &mut usize) -> Result<(), Failure> {
        while *n < buf.len() {
            match self.state {
                State::Header => {
                    let Some(h) = parse_header(&self.raw[self.lo..self.hi]) else {
                        return Ok(());
                    };
                    self.start_frame(h, buf, n);
                }
                State::Pass { left } => {
                    let k = (left.min((self.hi - self.lo) as u64) as usize).min(buf.len() - *n);
                    if k == 0 {
                        return Ok(());
                    }
                    buf[*n..*n + k].copy_from_slice(&self.raw[self.lo..self.lo + k]);
                    *n += k;
                    self.lo += k;
                    let left = left - k as u64;
                    self.state = if left == 0 {
                        State::Header
                    } else {
                        State::Pass { left }
                    };
                }
                State::Inflate {
                    left,
                    fin,
                    mask,
                    offset,
                } => {
                    let k = left.min((self.hi - self.lo) as u64) as usize;
                    if let Some(m) = mask {
                        let from = self.lo + self.unmasked;
                        for (i, b) in self.raw[from..self.lo + k].iter_mut().enumerate() {
                            *b ^= m[(offset + self.unmasked + i) % 4];
                        }
                        self.unmasked = k;
                    }
                    let input = &self.raw[self.lo..self.lo + k];
                    let (used, full) = inflate(
                        &mut self.inflate,
                        self.msg.as_mut(),
                        &mut self.staging,
                        self.max_message,
                        input,
                    )?;
                    self.lo += used;
                    if mask.is_some() {
                        self.unmasked -= used;
                    }
                    let left = left - used as u64;
                    if full {
                        self.emit(false, buf, n);
                    }
                    self.state = if left == 0 && !full {
                        if fin {
                            State::Tail { fed: 0 }
                        } else {
                            State::Header
                        }
                    } else {
                        State::Inflate {
                            left,
                            fin,
                            mask,
                            offset: offset + used,
                        }
                    };
                    if used == 0 && !full && left > 0 {
                        return Ok(());
                    }
                }
                State::Tail { fed } => {
                    let (used, full) = inflate(
                        &mut self.inflate,
                        self.msg.as_mut(),
                        &mut self.staging,
                        self.max_message,
                        &TAIL[fed..],
                    )?;
                    let fed = fed + used;
                    if full {
                        self.emit(false, buf, n);
                        self.state = State::Tail { fed };
                    } else if fed == TAIL.len() {
                        self.emit(true, buf, n);
                        if self.msg.take().is_some_and(|m| m.ended) {
                            self.inflate.reset(false);
                        }
                        self.state = State::Header;
                    } else {
                        self.state = State::Tail { fed };
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole header is buffered: decide whether the frame is ours to inflate.
    fn start_frame(&mut self, h: Header, buf: &mut [u8], n: &mut usize) {
        let masked_as_expected = h.mask.is_some() == (self.role == Role::Server);
        let plain = !h.rsv23 && masked_as_expected && h.len <= self.max_frame;
        let starts = plain && h.rsv1 && matches!(h.opcode, 1 | 2) && self.msg.is_none();
        let continues = plain && !h.rsv1 && h.opcode == 0 && self.msg.is_some();
        if starts || continues {
            self.lo += h.size;
            self.unmasked = 0;
            if starts {
                if self.staging.capacity() < self.chunk {
                    self.staging.reserve_exact(self.chunk);
                }
                self.msg = Some(Msg {
                    opcode: h.opcode,
                    emitted: false,
                    total: 0,
                    ended: false,
                });
                if !h.fin {
                    // Fragmented: from now on tungstenite expects continuations, and so refuses
                    // a new message interleaved here just as it would uncompressed.
                    self.emit(false, buf, n);
                }
            }
            self.state = State::Inflate {
                left: h.len,
                fin: h.fin,
                mask: h.mask,
                offset: 0,
            };
        } else {
            let mut header = [0u8; 14];
            header[..h.size].copy_from_slice(&self.raw[self.lo..self.lo + h.size]);
            self.lo += h.size;
            put(buf, n, &mut self.spill, &header[..h.size]);
            self.state = if h.len == 0 {
                State::Header
            } else {
                State::Pass { left: h.len }
            };
        }
    }

    /// Emit the staged output as one plain frame of the current message.
    fn emit(&mut self, fin: bool, buf: &mut [u8], n: &mut usize) {
        let Some(msg) = self.msg.as_mut() else {
            return;
        };
        let opcode = if msg.emitted { 0 } else { msg.opcode };
        msg.emitted = true;
        let len = self.staging.len();
        let mut h = [0u8; 14];
        h[0] = if fin { 0x80 } else { 0 } | opcode;
        // A server reads masked frames only: mask with a zero key (a no-op to unmask).
        let mask_bit = if self.role == Role::Server { 0x80 } else { 0 };
        let mut size = 2;
        if len < 126 {
            h[1] = mask_bit | len as u8;
        } else if let Ok(l) = u16::try_from(len) {
            h[1] = mask_bit | 126;
            h[2..4].copy_from_slice(&l.to_be_bytes());
            size = 4;
        } else {
            h[1] = mask_bit | 127;
            h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            size = 10;
        }
        if mask_bit != 0 {
            size += 4;
        }
        put(buf, n, &mut self.spill, &h[..size]);
        put(buf, n, &mut self.spill, &self.staging);
        self.staging.clear();
    }
}

/// Copy into the caller's buffer, and what does not fit into the spill (in order).
fn put(buf: &mut [u8], n: &mut usize, spill: &mut Vec<u8>, bytes: &[u8]) {
    let k = if spill.is_empty() {
        bytes.len().min(buf.len() - *n)
    } else {
        0
    };
    buf[*n..*n + k].copy_from_slice(&bytes[..k]);
    *n += k;
    spill.extend_from_slice(&bytes[k..]);
}

/// Inflate some of `input` into the spare room of `staging`. Returns the input bytes used and
/// whether the output filled `staging` (more may be waiting inside the inflater).
fn inflate(
    d: &mut Decompress,
    msg: Option<&mut Msg>,
    staging: &mut Vec<u8>,
    max: usize,
    input: &[u8],
) -> Result<(usize, bool), Failure> {
    let Some(msg) = msg else {
        return Ok((input.len(), false));
    };
    if msg.ended {
        return Ok((input.len(), false));
    }
    let (in0, out0) = (d.total_in(), d.total_out());
    let status = d
        .decompress_vec(input, staging, FlushDecompress::None)
        .map_err(|e| Failure::Corrupt(e.to_string()))?;
    let used = (d.total_in() - in0) as usize;
    let produced = (d.total_out() - out0) as usize;
    msg.total += produced;
    if msg.total > max {
        return Err(Failure::TooLarge {
            size: msg.total,
            max,
        });
    }
    let full = staging.len() == staging.capacity();
    if status == Status::StreamEnd {
        msg.ended = true;
        return Ok((input.len(), full));
    }
    if used == 0 && produced == 0 && !input.is_empty() && !full {
        return Err(Failure::Corrupt("the inflater made no progress".into()));
    }
    Ok((used, full))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// Deflate one message the way a peer would (sync flush, tail removed).
    fn deflate(c: &mut Compress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 64);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        // An empty message right after a flush compresses to nothing at all.
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - 4);
        }
        out
    }

    fn frame(fin: bool, rsv1: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            l if l < 126 => f.push(m | l as u8),
            l if l < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(l as u16).to_be_bytes());
            }
            l => {
                f.push(m | 127);
                f.extend_from_slice(&(l as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                f.extend_from_slice(&k);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    /// A source that hands out its bytes in pieces of `step`, then the end of the stream.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let k = self.step.min(buf.len()).min(self.data.len() - self.pos);
            buf[..k].copy_from_slice(&self.data[self.pos..self.pos + k]);
            self.pos += k;
            Ok(k)
        }
    }

    /// Run `wire` through an Inbound (source pieces of `step`, reads of `read`) and parse what
    /// comes out into (fin, opcode, payload) frames.
    fn rewrite(
        role: Role,
        wire: &[u8],
        step: usize,
        read: usize,
        max: Option<usize>,
    ) -> Result<Vec<(bool, u8, Vec<u8>)>, Failure> {
        let out = run_raw(role, wire, step, read, max)?;
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let h = parse_header(rest).expect("whole frames out");
            let len = h.len as usize;
            let mut payload = rest[h.size..h.size + len].to_vec();
            if let Some(k) = h.mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= k[i % 4];
                }
            }
            assert!(!h.rsv1, "no RSV1 reaches tungstenite for a valid message");
            frames.push((h.fin, h.opcode, payload));
            rest = &rest[h.size + len..];
        }
        Ok(frames)
    }

    /// Run `wire` through an Inbound and return the bytes it hands out, or its failure.
    fn run_raw(
        role: Role,
        wire: &[u8],
        step: usize,
        read: usize,
        max: Option<usize>,
    ) -> Result<Vec<u8>, Failure> {
        let config = Config::builder().max_message_size(max).build().unwrap();
        let mut inbound = Inbound::new(role, &config, &[]);
        let mut src = Trickle {
            data: wire.to_vec(),
            pos: 0,
            step,
        };
        let mut out = Vec::new();
        let mut buf = vec![0u8; read];
        loop {
            match inbound.read(&mut src, &mut buf) {
                Ok(0) => break,
                Ok(k) => out.extend_from_slice(&buf[..k]),
                Err(e) => {
                    let f = e.into_inner().unwrap().downcast::<Failure>().unwrap();
                    return Err(*f);
                }
            }
        }
        Ok(out)
    }

    /// Join emitted frames into messages (control frames kept as they are).
    fn messages(frames: Vec<(bool, u8, Vec<u8>)>) -> Vec<(u8, Vec<u8>)> {
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut open: Option<(u8, Vec<u8>)> = None;
        for (fin, op, payload) in frames {
            if op >= 8 {
                out.push((op, payload));
                continue;
            }
            let m = open.get_or_insert_with(|| (op, Vec::new()));
            m.1.extend_from_slice(&payload);
            if fin {
                out.push(open.take().unwrap());
            }
        }
        out
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| b"lorem ipsum dolor sit amet, "[i % 28] ^ (i / 1000) as u8)
            .collect()
    }

    #[test]
    fn compressed_messages_come_out_plain_in_every_split() {
        let mut c = Compress::new(Compression::default(), false);
        let a = text(100);
        let b = text(300_000);
        let mut wire = frame(true, true, 1, None, &deflate(&mut c, &a));
        // Fragmented in three, with a ping between fragments and context kept from `a`.
        let z = deflate(&mut c, &b);
        let (p1, rest) = z.split_at(z.len() / 3);
        let (p2, p3) = rest.split_at(rest.len() / 2);
        wire.extend(frame(false, true, 2, None, p1));
        wire.extend(frame(true, false, 9, None, b"ping"));
        wire.extend(frame(false, false, 0, None, p2));
        wire.extend(frame(true, false, 0, None, p3));
        // An uncompressed message passes through.
        wire.extend(frame(true, false, 1, None, b"plain"));
        // An empty compressed message.
        wire.extend(frame(true, true, 2, None, &deflate(&mut c, b"")));
        for (step, read) in [(1, 7), (3, 1), (5000, 16384), (1 << 20, 1 << 20)] {
            let got = messages(rewrite(Role::Client, &wire, step, read, None).unwrap());
            assert_eq!(got.len(), 5, "step {step} read {read}");
            assert_eq!(got[0], (1, a.clone()));
            assert_eq!(got[1], (9, b"ping".to_vec()));
            assert_eq!(got[2].0, 2);
            assert!(got[2].1 == b, "step {step} read {read}");
            assert_eq!(got[3], (1, b"plain".to_vec()));
            assert_eq!(got[4], (2, Vec::new()));
        }
    }

    /// No message limit (frames keep the default one: `build` refuses `None` for both).
    fn unlimited() -> Config {
        Config::builder().max_message_size(None).build().unwrap()
    }

    /// xorshift32: reproducible randomness without a dependency.
    fn rng(mut x: u32) -> impl FnMut(u32) -> u32 {
        move |n| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % n.max(1)
        }
    }

    #[test]
    fn random_messages_fragments_pings_and_splits_come_out_exactly() {
        for seed in 1..=150u32 {
            let mut r = rng(seed * 7919);
            let role = if seed % 2 == 0 {
                Role::Client
            } else {
                Role::Server
            };
            let mut c = Compress::new(Compression::new(r(10)), false);
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..1 + r(6) {
                let len = [0, 1, 10, 200, 5000, 70_000][r(6) as usize] + r(50) as usize;
                let data: Vec<u8> = (0..len)
                    .map(|i| b"abcdefgh"[(i + r(3) as usize) % 8])
                    .collect();
                let compressed = r(4) != 0;
                let opcode = 1 + r(2) as u8;
                let payload = if compressed {
                    deflate(&mut c, &data)
                } else {
                    data.clone()
                };
                let pieces = 1 + r(5) as usize;
                let step = payload.len() / pieces + 1;
                let chunks: Vec<&[u8]> = if payload.is_empty() {
                    vec![&[]]
                } else {
                    payload.chunks(step).collect()
                };
                for (i, chunk) in chunks.iter().enumerate() {
                    let mask = (role == Role::Server).then(|| [r(256) as u8, 1, 2, r(256) as u8]);
                    let op = if i == 0 { opcode } else { 0 };
                    let fin = i == chunks.len() - 1;
                    wire.extend(frame(fin, compressed && i == 0, op, mask, chunk));
                    if !fin && r(2) == 0 {
                        wire.extend(frame(true, false, 9, mask, b"p"));
                        expected.push((9, b"p".to_vec()));
                    }
                }
                expected.push((opcode, data));
            }
            let step = 1 + r(3000) as usize;
            let read = 1 + r(20_000) as usize;
            let got = messages(rewrite(role, &wire, step, read, None).unwrap());
            // Pings come out where they were; messages whole and in order.
            assert!(got == expected, "seed {seed}: step {step} read {read}");
        }
    }

    #[test]
    fn random_garbage_in_compressed_frames_never_panics() {
        for seed in 1..=300u32 {
            let mut r = rng(seed * 104_729);
            let mut wire = Vec::new();
            for _ in 0..1 + r(4) {
                let junk: Vec<u8> = (0..r(300)).map(|_| r(256) as u8).collect();
                let fin = r(3) != 0;
                wire.extend(frame(
                    fin,
                    r(4) != 0,
                    [0, 1, 2, 9][r(4) as usize],
                    None,
                    &junk,
                ));
            }
            // Whatever the verdict, it is a value, not a panic; errors are typed.
            let _ = run_raw(
                Role::Client,
                &wire,
                1 + r(64) as usize,
                1 + r(512) as usize,
                Some(4096),
            );
        }
    }

    #[test]
    fn a_server_unmasks_and_emits_frames_it_will_accept() {
        let mut c = Compress::new(Compression::default(), false);
        let a = text(70_000);
        let wire = frame(true, true, 1, Some([1, 2, 3, 4]), &deflate(&mut c, &a));
        for step in [1, 13, 1 << 20] {
            let frames = rewrite(Role::Server, &wire, step, 4096, None).unwrap();
            assert!(frames.len() > 1, "large output is emitted in chunks");
            assert_eq!(messages(frames), [(1, a.clone())]);
        }
    }

    #[test]
    fn bombs_stop_at_the_size_limit() {
        let mut c = Compress::new(Compression::best(), false);
        let zeros = vec![0u8; 8 << 20];
        let z = deflate(&mut c, &zeros);
        assert!(z.len() < 16 << 10, "{}", z.len());
        let wire = frame(true, true, 2, None, &z);
        let err = rewrite(Role::Client, &wire, 1 << 20, 1 << 16, Some(1 << 20)).unwrap_err();
        match err {
            Failure::TooLarge { size, max } => {
                assert_eq!(max, 1 << 20);
                assert!(size > max && size <= max + CHUNK, "{size}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let wire = frame(true, true, 1, None, &[0xff; 40]);
        assert!(matches!(
            rewrite(Role::Client, &wire, 1 << 20, 4096, None),
            Err(Failure::Corrupt(_))
        ));
    }

    #[test]
    fn frames_tungstenite_must_judge_pass_through_untouched() {
        let mut c = Compress::new(Compression::default(), false);
        let z = deflate(&mut c, b"hello hello hello");
        for wire in [
            frame(true, true, 9, None, b"rsv1 ping"),
            frame(true, true, 0, None, &z),
            // RSV1 with RSV2.
            {
                let mut f = frame(true, true, 1, None, &z);
                f[0] |= 0x20;
                f
            },
            // Masked frame to a client.
            frame(true, true, 1, Some([9, 9, 9, 9]), &z),
            frame(true, true, 3, None, &z),
        ] {
            let mut inbound = Inbound::new(Role::Client, &unlimited(), &[]);
            let mut src = Trickle {
                data: wire.clone(),
                pos: 0,
                step: 1 << 20,
            };
            let mut buf = vec![0u8; 1 << 16];
            let k = inbound.read(&mut src, &mut buf).unwrap();
            assert_eq!(&buf[..k], &wire[..], "{wire:?}");
        }
    }

    #[test]
    fn leftover_from_the_handshake_is_rewritten_too() {
        let mut c = Compress::new(Compression::default(), false);
        let wire = frame(true, true, 1, None, &deflate(&mut c, b"early bird"));
        let mut inbound = Inbound::new(Role::Client, &unlimited(), &wire);
        let mut buf = [0u8; 64];
        let k = inbound.read(&mut io::empty(), &mut buf).unwrap();
        assert_eq!(&buf[..k], b"\x81\x0aearly bird");
    }

    #[test]
    fn a_final_block_resets_the_inflater_for_the_next_message() {
        // A sender without context takeover may end each message with BFINAL set.
        let mut wire = Vec::new();
        for word in [&b"first message"[..], b"second message"] {
            let mut c = Compress::new(Compression::default(), false);
            let mut out = Vec::with_capacity(256);
            c.compress_vec(word, &mut out, FlushCompress::Finish)
                .unwrap();
            wire.extend(frame(true, true, 1, None, &out));
        }
        let got = messages(rewrite(Role::Client, &wire, 1 << 20, 4096, None).unwrap());
        assert_eq!(
            got,
            [
                (1, b"first message".to_vec()),
                (1, b"second message".to_vec())
            ]
        );
    }
}
