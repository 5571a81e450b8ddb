//! The inflating layer (`deflate::inbound::Inbound`), against a reference that walks the same
//! frames and inflates compressed messages with flate2 directly.

use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tungstenite::protocol::Role;

use super::input::{End, Input, Rng, Wire};
use crate::deflate::inbound::{Failure, Inbound};
use crate::io_outcome::{io_outcome, IoOutcome};
use crate::Config;

/// Appended to a compressed message before inflating (RFC 7692 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Choices: the role (which masking is expected), whether the rest is raw wire bytes or a
/// description of messages to compress and frame, the message and frame size limits, how the
/// transport's bytes are cut, and how large the reads asking for the output are.
///
/// Checks: the output is, frame for frame, what the reference says: every frame the layer must
/// not touch passes byte for byte, in order; every compressed message comes out as plain frames
/// (the first with its opcode, the rest continuations, none larger than the chunk) whose
/// payloads join into exactly what flate2 inflates from the message's payloads and the tail; a
/// message that inflates past `max_message_size` fails with `Failure::TooLarge` (having emitted
/// no more than the limit) and invalid deflate data with `Failure::Corrupt`, both inside an
/// `InvalidData` I/O error; the bytes held for the caller stay within one frame.
pub fn inflate(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.byte();
    let limits = input.byte();
    let cuts = input.byte();
    let reads = input.byte();
    let role = if choice & 1 == 0 {
        Role::Client
    } else {
        Role::Server
    };
    let max_message = match limits & 0x0f {
        0 => None,
        k => Some(usize::from(k) * usize::from(k) * 256),
    };
    let max_frame = match limits >> 4 {
        0 => 16 << 20,
        k => usize::from(k) * usize::from(k) * 128,
    };
    let config = Config::builder()
        .max_message_size(max_message)
        .max_frame_size(Some(max_frame))
        .read_buffer_size(1 + usize::from(reads) * 64)
        .build()
        .expect("valid limits");
    let wire = if choice & 2 == 0 {
        input.rest().to_vec()
    } else {
        build(role, choice, input.rest())
    };
    let max = max_message.unwrap_or(usize::MAX);

    // The layer, fed through a socket that cuts and stalls, read in varying sizes.
    let mut inbound = Inbound::new(role, &config, &[]);
    let (chunk, _) = inbound.chunk_and_spill();
    assert_eq!(chunk, (16 << 10).min(max_frame).max(1));
    let mut src = Wire::new(&wire, End::Closed, cuts, 0);
    let mut sizes = Rng::new(reads);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 15];
    let failure = loop {
        let want = 1 + sizes.below(if reads & 1 == 0 { 64 } else { buf.len() });
        match inbound.read(&mut src, &mut buf[..want]) {
            Ok(0) => break None,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // The socket's, passed on: the caller tries again.
            Err(e)
                if matches!(
                    io_outcome(&e),
                    IoOutcome::WouldBlock | IoOutcome::Interrupted
                ) => {}
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                let inner = e.into_inner().expect("a failure inside");
                break Some(*inner.downcast::<Failure>().expect("an inbound::Failure"));
            }
        }
        let (_, held) = inbound.chunk_and_spill();
        assert!(held <= chunk + 2 * 14, "holds {held} bytes for the caller");
    };
    if let Some(Failure::TooLarge { size, max: said }) = &failure {
        assert_eq!(*said, max);
        assert!(*size > max && *size <= max + chunk, "{size} for {max}");
    }

    let (passes, messages) = reference(&wire, role, max_frame, max.saturating_add(chunk));
    compare(&out, failure.as_ref(), &passes, &messages, role, chunk, max);
}

/// A frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    rsv1: bool,
    rsv23: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
    size: usize,
}

/// RFC 6455 5.2, the header at the start of `b` if it is all there.
fn header(b: &[u8]) -> Option<Header> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    let (len, mut size) = match b1 & 0x7f {
        126 => (u64::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(b.get(2..10)?);
            (u64::from_be_bytes(be), 10)
        }
        l => (u64::from(l), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let mut m = [0u8; 4];
        m.copy_from_slice(b.get(size..size + 4)?);
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

fn unmask(payload: &mut [u8], mask: Option<[u8; 4]>, offset: usize) {
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[(offset + i) % 4];
        }
    }
}

/// A frame the layer must pass untouched: its bytes (as far as the input has them), and how
/// many compressed messages were complete before it.
#[derive(Debug)]
struct Pass {
    bytes: Vec<u8>,
    done_before: usize,
}

/// A compressed message as the reference inflates it.
#[derive(Debug)]
struct Message {
    opcode: u8,
    /// What flate2 inflated (up to the cap).
    data: Vec<u8>,
    /// The last frame and the tail went in.
    complete: bool,
    /// flate2 refused the data (or made no progress on it).
    corrupt: bool,
    /// The sender ended its deflate stream: the rest is ignored.
    ended: bool,
}

/// Walk `wire` frame by frame as RFC 7692 and the layer's contract say: a Text or Binary frame
/// with RSV1 (and nothing else odd: no RSV2/3, the masking the role expects, a length within
/// the frame limit) starts a compressed message when none is open, a plain continuation
/// continues one; everything else passes. Stops where the input ends or a message fails.
fn reference(wire: &[u8], role: Role, max_frame: usize, cap: usize) -> (Vec<Pass>, Vec<Message>) {
    let mut passes = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    let mut inflater = Decompress::new(false);
    let mut open = false;
    let mut at = 0;
    while let Some(h) = header(&wire[at..]) {
        let body = at + h.size;
        let have = (wire.len() - body).min(usize::try_from(h.len).unwrap_or(usize::MAX));
        let plain =
            !h.rsv23 && h.mask.is_some() == (role == Role::Server) && h.len <= max_frame as u64;
        let starts = plain && h.rsv1 && matches!(h.opcode, 1 | 2) && !open;
        let continues = plain && !h.rsv1 && h.opcode == 0 && open;
        if starts || continues {
            if starts {
                messages.push(Message {
                    opcode: h.opcode,
                    data: Vec::new(),
                    complete: false,
                    corrupt: false,
                    ended: false,
                });
                open = true;
            }
            let m = messages.last_mut().expect("a message is open");
            let mut payload = wire[body..body + have].to_vec();
            unmask(&mut payload, h.mask, 0);
            feed(&mut inflater, m, &payload, cap);
            if m.corrupt || m.data.len() > cap || (have as u64) < h.len {
                break;
            }
            if h.fin {
                feed(&mut inflater, m, &TAIL, cap);
                if m.corrupt || m.data.len() > cap {
                    break;
                }
                if m.ended {
                    inflater.reset(false);
                }
                m.complete = true;
                open = false;
            }
        } else {
            passes.push(Pass {
                bytes: wire[at..body + have].to_vec(),
                done_before: messages.iter().filter(|m| m.complete).count(),
            });
            if (have as u64) < h.len {
                break;
            }
        }
        at = body + have;
    }
    (passes, messages)
}

/// Inflate `input` into the message with flate2, until it is used, the stream ends, the data
/// turns out invalid, or the output passes `cap`.
fn feed(d: &mut Decompress, m: &mut Message, mut input: &[u8], cap: usize) {
    while !m.ended && !m.corrupt && m.data.len() <= cap {
        m.data.reserve(32 << 10);
        let (in0, out0) = (d.total_in(), d.total_out());
        let status = d.decompress_vec(input, &mut m.data, FlushDecompress::None);
        let used = (d.total_in() - in0) as usize;
        let produced = (d.total_out() - out0) as usize;
        match status {
            Err(_) => m.corrupt = true,
            Ok(Status::StreamEnd) => m.ended = true,
            Ok(_) if used == 0 && produced == 0 => {
                m.corrupt = !input.is_empty();
                return;
            }
            Ok(_) => input = &input[used..],
        }
    }
}

/// The layer's output against the reference, frame by frame (see [`inflate`]).
fn compare(
    out: &[u8],
    failure: Option<&Failure>,
    passes: &[Pass],
    messages: &[Message],
    role: Role,
    chunk: usize,
    max: usize,
) {
    let (mut p, mut i) = (0, 0);
    let mut joined: Vec<u8> = Vec::new();
    let mut started = false;
    let mut rest = out;
    while !rest.is_empty() {
        // The next frame to pass, once every message before it is out.
        if let Some(pass) = passes.get(p).filter(|pass| pass.done_before == i) {
            if rest.starts_with(&pass.bytes) || pass.bytes.starts_with(rest) {
                rest = &rest[pass.bytes.len().min(rest.len())..];
                p += 1;
                continue;
            }
        }
        // Otherwise an emitted frame of message `i`.
        let Some(m) = messages.get(i) else {
            panic!(
                "output no frame accounts for: {:02x?}",
                &rest[..rest.len().min(32)]
            );
        };
        let h = header(rest).expect("whole headers out");
        assert!(!h.rsv1 && !h.rsv23, "{h:?}");
        let opcode = if started { 0 } else { m.opcode };
        assert_eq!(h.opcode, opcode, "{h:?}");
        match role {
            // A server reads masked frames: a zero key.
            Role::Server => assert_eq!(h.mask, Some([0; 4])),
            Role::Client => assert_eq!(h.mask, None),
        }
        assert!(
            h.len as usize <= chunk,
            "a frame of {} for chunks of {chunk}",
            h.len
        );
        let end = h.size + h.len as usize;
        assert!(rest.len() >= end, "an emitted frame is whole");
        joined.extend_from_slice(&rest[h.size..end]);
        assert!(
            joined.len() <= max,
            "emitted {} past the limit {max}",
            joined.len()
        );
        assert!(
            m.data.starts_with(&joined),
            "message {i}: emitted bytes differ from flate2's"
        );
        started = true;
        rest = &rest[end..];
        if h.fin {
            assert!(
                m.complete && !m.corrupt && m.data.len() <= max,
                "{i}: {m:?}"
            );
            assert_eq!(joined.len(), m.data.len(), "message {i} whole");
            joined.clear();
            started = false;
            i += 1;
        }
    }
    // Nothing left out: every frame passed, every message either whole, cut off by the end of
    // the input, or failed as the reference says.
    let failing = messages
        .iter()
        .position(|m| m.corrupt || m.data.len() > max);
    match (failure, failing) {
        (None, None) => {
            assert_eq!(p, passes.len(), "frames held back");
            let whole = messages.iter().filter(|m| m.complete).count();
            assert_eq!(i, whole, "messages held back");
        }
        (Some(f), Some(k)) => {
            assert_eq!(i, k, "failed at message {i}, the reference at {k}");
            let m = &messages[k];
            let near = m.data.len().abs_diff(max) <= chunk;
            match f {
                Failure::TooLarge { .. } => assert!(
                    m.data.len() > max || (m.corrupt && near),
                    "too large: {} for {max}",
                    m.data.len()
                ),
                Failure::Corrupt(_) => assert!(m.corrupt && (m.data.len() <= max || near)),
            }
        }
        (f, k) => panic!("layer failed with {f:?}, reference at message {k:?}"),
    }
}

/// Messages to frame, from the fuzz input: per message a kind byte (compressed or plain or a
/// ping, opcode, how many fragments, whether pings go between them, whether the sender ends
/// its deflate stream), a length byte, then its bytes (repeated to the length). Compressed with
/// context takeover, as a peer does, at a level from `choice`.
fn build(role: Role, choice: u8, mut rest: &[u8]) -> Vec<u8> {
    let level = u32::from(choice >> 4) % 10;
    let mut compress = Compress::new(Compression::new(level), false);
    let mut rng = Rng::new(choice);
    let mut wire = Vec::new();
    while let [kind, len, tail @ ..] = rest {
        let kind = *kind;
        let len = usize::from(*len) * if kind & 0x80 != 0 { 64 } else { 1 };
        let (data, after) = tail.split_at(len.min(tail.len()));
        rest = after;
        let data: Vec<u8> = data.iter().copied().cycle().take(len).collect();
        let mut mask =
            || (role == Role::Server).then(|| [0, 1, 2, 3].map(|_| rng.below(256) as u8));
        let opcode = 1 + (kind >> 2 & 1);
        let pieces = 1 + usize::from(kind >> 3 & 3);
        let pings = kind & 0x40 != 0;
        match kind & 3 {
            3 => {
                let m = mask();
                wire.extend(frame(true, false, 9, m, &data[..data.len().min(125)]));
            }
            2 => push_message(&mut wire, &data, false, opcode, pieces, pings, &mut mask),
            _ => {
                // A sender may end its deflate stream (BFINAL) and start afresh next message.
                let ending = kind & 0x20 != 0;
                let z = if ending {
                    let z = deflate(&mut compress, &data, FlushCompress::Finish);
                    compress.reset();
                    z
                } else {
                    let mut z = deflate(&mut compress, &data, FlushCompress::Sync);
                    if z.ends_with(&TAIL) {
                        z.truncate(z.len() - TAIL.len());
                    }
                    z
                };
                push_message(&mut wire, &z, true, opcode, pieces, pings, &mut mask);
            }
        }
    }
    wire
}

/// All of `data` through the compressor, ending with `flush`.
fn deflate(c: &mut Compress, data: &[u8], flush: FlushCompress) -> Vec<u8> {
    let start = c.total_in();
    let mut out = Vec::new();
    loop {
        out.reserve(data.len() + 1024);
        let used = (c.total_in() - start) as usize;
        let status = c
            .compress_vec(&data[used..], &mut out, flush)
            .expect("compressing cannot fail");
        let used = (c.total_in() - start) as usize;
        // Done when the input is in and the flush left room to spare (nothing pending).
        if status == Status::StreamEnd || (used == data.len() && out.len() < out.capacity()) {
            return out;
        }
    }
}

/// One message in `pieces` fragments (the first with RSV1 when `compressed`), with a ping
/// between fragments when `pings`.
fn push_message(
    wire: &mut Vec<u8>,
    payload: &[u8],
    compressed: bool,
    opcode: u8,
    pieces: usize,
    pings: bool,
    mask: &mut impl FnMut() -> Option<[u8; 4]>,
) {
    let step = payload.len() / pieces + 1;
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[]]
    } else {
        payload.chunks(step).collect()
    };
    for (k, c) in chunks.iter().enumerate() {
        let fin = k == chunks.len() - 1;
        let op = if k == 0 { opcode } else { 0 };
        wire.extend(frame(fin, compressed && k == 0, op, mask(), c));
        if pings && !fin {
            wire.extend(frame(true, false, 9, mask(), b"ping"));
        }
    }
}

/// A frame with the shortest length encoding.
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
    if let Some(k) = mask {
        f.extend_from_slice(&k);
    }
    let body = f.len();
    f.extend_from_slice(payload);
    unmask(&mut f[body..], mask, 0);
    f
}
