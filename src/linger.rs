//! Following frame boundaries in bytes that are read only to be thrown away.
//!
//! After a failure the session sends a Close and lingers, reading and dropping raw bytes (never
//! frames: a huge announced frame must not be buffered) until the peer hangs up. A client
//! answers our Close with its own and then waits for the server to end TCP (RFC 6455 7.1.1), so
//! a server that only waits for the end of the stream waits for its whole `close_timeout`.
//! [`FrameSkipper`] watches the dropped bytes for that Close, in constant memory: it keeps at
//! most one frame header and counts payload bytes off without keeping them.
//!
//! The bytes may not start at a frame boundary (tungstenite may hold bytes it read ahead), so a
//! header that no peer may send (a reserved opcode, a fragmented or long control frame, a
//! 64-bit length with its top bit set) means the skipper has lost the boundaries: it stops
//! looking, and lingering ends as before, at the end of the stream or the deadline.

/// The longest frame header: 2 bytes, a 64-bit length, a masking key.
const MAX_HEADER: usize = 14;

const OP_CLOSE: u8 = 0x8;

/// Walks frames in a byte stream, keeping none of their payload, until a Close has gone by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameSkipper {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a header: its first `have` bytes are in `bytes`.
    Header { bytes: [u8; MAX_HEADER], have: u8 },
    /// Counting off a frame's payload.
    Payload { left: u64, close: bool },
    /// A whole Close frame went by.
    CloseSeen,
    /// The bytes are not a frame stream we can follow.
    Lost,
}

impl Default for FrameSkipper {
    fn default() -> Self {
        FrameSkipper {
            state: State::Header {
                bytes: [0; MAX_HEADER],
                have: 0,
            },
        }
    }
}

impl FrameSkipper {
    /// Take the next bytes of the stream. Returns true once a complete Close frame has been
    /// seen (and from then on).
    pub(crate) fn feed(&mut self, mut input: &[u8]) -> bool {
        loop {
            match &mut self.state {
                State::CloseSeen => return true,
                State::Lost => return false,
                State::Payload { left, close } => {
                    // Payload bytes are only counted; `take` fits in usize as it is at most
                    // `input.len()`.
                    let take = (*left).min(input.len() as u64) as usize;
                    *left -= take as u64;
                    input = &input[take..];
                    if *left > 0 {
                        return false;
                    }
                    let close = *close;
                    self.frame_done(close);
                }
                State::Header { bytes, have } => {
                    let need = header_len(&bytes[..usize::from(*have)]);
                    let have_now = usize::from(*have);
                    let take = (need - have_now).min(input.len());
                    bytes[have_now..have_now + take].copy_from_slice(&input[..take]);
                    // At most MAX_HEADER.
                    *have += take as u8;
                    input = &input[take..];
                    let have_now = usize::from(*have);
                    if have_now < header_len(&bytes[..have_now]) {
                        if input.is_empty() {
                            return false;
                        }
                        // The length byte just arrived and announced a longer header.
                        continue;
                    }
                    match parse(&bytes[..have_now]) {
                        None => self.state = State::Lost,
                        Some((opcode, 0)) => self.frame_done(opcode == OP_CLOSE),
                        Some((opcode, len)) => {
                            self.state = State::Payload {
                                left: len,
                                close: opcode == OP_CLOSE,
                            }
                        }
                    }
                }
            }
        }
    }

    fn frame_done(&mut self, close: bool) {
        *self = if close {
            FrameSkipper {
                state: State::CloseSeen,
            }
        } else {
            FrameSkipper::default()
        };
    }
}

/// How long the header starting with `start` is (2 until its second byte is known).
fn header_len(start: &[u8]) -> usize {
    let Some(&b1) = start.get(1) else {
        return 2;
    };
    let length = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + length + mask
}

/// A complete header: its opcode and payload length, or None when no peer may send it.
fn parse(header: &[u8]) -> Option<(u8, u64)> {
    let (b0, b1) = (header[0], header[1]);
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    let len = match b1 & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(be)
        }
        short => u64::from(short),
    };
    let valid = match opcode {
        0x0..=0x2 => len >> 63 == 0,
        0x8..=0xA => fin && len <= 125,
        _ => false,
    };
    valid.then_some((opcode, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame with any length encoding, masked or not (the payload's bytes do not matter).
    fn frame(b0: u8, len: u64, long: bool, masked: bool) -> Vec<u8> {
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut f = vec![b0];
        if long {
            f.push(mask_bit | 127);
            f.extend(len.to_be_bytes());
        } else if len >= 126 {
            f.push(mask_bit | 126);
            f.extend((len as u16).to_be_bytes());
        } else {
            f.push(mask_bit | len as u8);
        }
        if masked {
            f.extend([0x11, 0x22, 0x33, 0x44]);
        }
        // Payload bytes that look like headers, so a skipper that reads them would notice.
        f.extend(std::iter::repeat_n(0x88, len as usize));
        f
    }

    /// Frames of every header shape, ending with a Close.
    fn stream(close_masked: bool) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(frame(0x81, 5, false, true)); // text, 7-bit length, masked
        s.extend(frame(0x02, 300, false, false)); // binary fragment, 16-bit length
        s.extend(frame(0x89, 0, false, true)); // empty ping between fragments
        s.extend(frame(0x80, 70_000, true, true)); // last fragment, 64-bit length
        s.extend(frame(0x82, 3, true, false)); // 64-bit encoding of a short length
        s.extend(frame(0xC1, 2, false, true)); // RSV1 (permessage-deflate)
        s.extend(frame(0x8A, 125, false, false)); // longest pong
        s.extend(frame(0x88, 2, false, close_masked)); // the Close
        s
    }

    #[test]
    fn a_close_is_seen_at_its_last_byte_whatever_the_split() {
        for masked in [true, false] {
            let s = stream(masked);
            for at in 0..=s.len() {
                let mut skipper = FrameSkipper::default();
                assert_eq!(skipper.feed(&s[..at]), at == s.len(), "split at {at}");
                assert!(skipper.feed(&s[at..]), "split at {at}");
            }
        }
    }

    #[test]
    fn a_close_is_seen_when_fed_byte_by_byte() {
        let s = stream(true);
        let mut skipper = FrameSkipper::default();
        for (i, b) in s.iter().enumerate() {
            assert_eq!(skipper.feed(&[*b]), i == s.len() - 1, "byte {i}");
        }
        assert!(skipper.feed(b"anything after"), "stays seen");
    }

    #[test]
    fn every_pair_of_split_points_in_short_frames() {
        // Every header shape with short payloads, so three reads can split each header twice.
        let mut s = frame(0x82, 3, true, true);
        s.extend(frame(0x01, 126, false, true));
        s.extend(frame(0x80, 1, false, false));
        s.extend(frame(0x88, 2, false, true));
        for a in 0..=s.len() {
            for b in a..=s.len() {
                let mut skipper = FrameSkipper::default();
                assert_eq!(skipper.feed(&s[..a]), a == s.len(), "{a}..{b}");
                assert_eq!(skipper.feed(&s[a..b]), b == s.len(), "{a}..{b}");
                assert!(skipper.feed(&s[b..]), "{a}..{b}");
            }
        }
    }

    #[test]
    fn an_empty_close_completes_with_its_header() {
        let mut skipper = FrameSkipper::default();
        assert!(!skipper.feed(&[0x88]));
        assert!(skipper.feed(&[0x00]));
        let mut skipper = FrameSkipper::default();
        assert!(skipper.feed(&[0x88, 0x80, 1, 2, 3, 4]), "masked, empty");
    }

    #[test]
    fn a_huge_announced_frame_is_counted_not_kept() {
        let mut s = frame(0x82, 0, true, false);
        s[2..10].copy_from_slice(&(1u64 << 40).to_be_bytes());
        s.extend(frame(0x88, 2, false, false));
        let mut skipper = FrameSkipper::default();
        assert!(
            !skipper.feed(&s),
            "the Close is inside the announced payload"
        );
        assert_eq!(
            skipper.state,
            State::Payload {
                left: (1 << 40) - 4,
                close: false
            }
        );
    }

    #[test]
    fn headers_no_peer_may_send_stop_the_search() {
        let close = frame(0x88, 2, false, false);
        for bad in [
            frame(0x83, 1, false, false),   // reserved data opcode
            frame(0x8B, 1, false, false),   // reserved control opcode
            frame(0x09, 1, false, false),   // fragmented ping
            frame(0x88, 126, false, false), // control frame over 125 bytes
        ] {
            let mut skipper = FrameSkipper::default();
            assert!(!skipper.feed(&bad));
            assert!(!skipper.feed(&close), "lost: {bad:02x?}");
            assert_eq!(skipper.state, State::Lost);
        }
        let mut top_bit = frame(0x82, 0, true, false);
        top_bit[2] = 0x80;
        let mut skipper = FrameSkipper::default();
        assert!(!skipper.feed(&top_bit));
        assert_eq!(skipper.state, State::Lost);
    }
}
