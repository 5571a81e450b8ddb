//! The frame walker used while lingering (`linger::FrameSkipper`), against a reference parse
//! of the same bytes.

use super::input::{Input, Rng};
use crate::linger::FrameSkipper;

/// Choices: whether the rest is raw bytes or a description of frames to write, and how the
/// bytes are cut into reads. The rest is the bytes read while lingering.
///
/// Checks: the skipper says "Close seen" for the first time exactly at the read that brings the
/// last byte of the first Close frame, and from then on, as a reference walk of the frames
/// finds it; it never does when the reference finds no Close, or finds a header no peer may
/// send (a reserved opcode, a fragmented or long control frame, a 64-bit length with its top
/// bit set) before it.
pub fn frame_skipper(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.byte();
    let cuts = input.byte();
    let bytes = if choice & 1 == 0 {
        input.rest().to_vec()
    } else {
        build(input.rest())
    };
    let close_end = reference(&bytes);

    let mut skipper = FrameSkipper::default();
    let mut rng = Rng::new(cuts);
    // Reads of up to 1 byte .. 64 KiB.
    let max = 1usize << (cuts % 17);
    let mut at = 0;
    loop {
        let n = rng.below(max + 1).min(bytes.len() - at);
        let seen = skipper.feed(&bytes[at..at + n]);
        at += n;
        let expected = close_end.is_some_and(|end| end <= at);
        assert_eq!(
            seen,
            expected,
            "after {at} of {} bytes, Close ends at {close_end:?}",
            bytes.len()
        );
        if at == bytes.len() {
            break;
        }
    }
    if close_end.is_some() {
        assert!(skipper.feed(b"\x01"), "seen stays seen");
    }
}

/// Where the first Close frame ends, walking frames from the start; None when the bytes end
/// first or a header no peer may send comes first (RFC 6455 5.2 and 5.5: opcodes 3-7 and
/// 11-15 are reserved, control frames are final and at most 125 bytes, a 64-bit length has
/// its top bit clear).
fn reference(bytes: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    loop {
        let b0 = *bytes.get(at)?;
        let b1 = *bytes.get(at + 1)?;
        let opcode = b0 & 0x0f;
        let fin = b0 & 0x80 != 0;
        let (len, mut header) = match b1 & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes(
                    bytes.get(at + 2..at + 4)?.try_into().ok()?,
                )),
                4,
            ),
            127 => (
                u64::from_be_bytes(bytes.get(at + 2..at + 10)?.try_into().ok()?),
                10,
            ),
            l => (u64::from(l), 2),
        };
        if b1 & 0x80 != 0 {
            header += 4;
        }
        let control = opcode >= 8;
        let reserved = matches!(opcode, 3..=7 | 11..=15);
        if reserved || (control && (!fin || len > 125)) || len >> 63 != 0 {
            return None;
        }
        let end = (at + header).checked_add(usize::try_from(len).ok()?)?;
        if end > bytes.len() {
            return None;
        }
        if opcode == 8 {
            return Some(end);
        }
        at = end;
    }
}

/// Frames from the fuzz input: per frame a first byte (as sent), a length-shape byte (7-bit,
/// 16-bit or 64-bit encoding, masked or not) and a length byte; payload bytes are 0x88 (which
/// look like Close headers, so a skipper that read payloads would notice).
fn build(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // At most a few frames of the longest kind: the skipper counts payloads off in constant
    // time, but the test has to write them.
    while let ([b0, shape, len, tail @ ..], true) = (rest, out.len() < 1 << 18) {
        rest = tail;
        let len = u64::from(*len) * if shape & 0x10 != 0 { 300 } else { 1 };
        out.push(*b0);
        let mask = if shape & 0x80 != 0 { 0x80 } else { 0 };
        match shape & 3 {
            0 if len < 126 => out.push(mask | len as u8),
            0 | 1 if len < 65536 => {
                out.push(mask | 126);
                out.extend((len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask | 127);
                out.extend(len.to_be_bytes());
            }
        }
        if mask != 0 {
            out.extend([0x11, 0x22, 0x33, 0x44]);
        }
        out.extend(std::iter::repeat_n(0x88, len as usize));
    }
    out
}
