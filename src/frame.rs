//! Writing frames: the header, then the payload, masked as it is copied (client role). The
//! session writes its data and control frames with this straight into the outbox; tungstenite
//! is left to read frames and to keep the close handshake's state.

/// Opcodes of the frames we write ourselves.
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;

/// Bytes a final frame of `payload` bytes takes on the wire.
pub(crate) fn wire_len(payload: usize, masked: bool) -> usize {
    let length = match payload {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    2 + length + if masked { 4 } else { 0 } + payload
}

/// How much is masked at a time: small enough that the bytes just copied are still in L1 when
/// they are masked, so the payload is read from memory once.
const MASK_CHUNK: usize = 4096;

/// Append one final frame to `out`.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    opcode: u8,
    rsv1: bool,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    out.reserve(wire_len(payload.len(), mask.is_some()));
    out.push(0x80 | if rsv1 { 0x40 } else { 0 } | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let Some(key) = mask else {
        out.extend_from_slice(payload);
        return;
    };
    out.extend_from_slice(&key);
    // Chunks are multiples of 8 bytes, so every chunk starts at mask offset 0.
    for chunk in payload.chunks(MASK_CHUNK) {
        let start = out.len();
        out.extend_from_slice(chunk);
        apply_mask(&mut out[start..], key);
    }
}

/// XOR `bytes` with the repeating 4-byte `key`, starting at key offset 0; eight bytes at a time.
fn apply_mask(bytes: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = bytes.chunks_exact_mut(8);
    for word in &mut words {
        // `chunks_exact_mut(8)` yields 8-byte slices only.
        let value = u64::from_ne_bytes(word.try_into().expect("8 bytes")) ^ wide;
        word.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Decode frames as a peer would see them: (first byte, masked, payload unmasked) each. For the
/// crate's unit tests.
#[cfg(test)]
pub(crate) fn decode(mut bytes: &[u8]) -> Vec<(u8, bool, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let masked = bytes[1] & 0x80 != 0;
        let (len, mut at) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let key = masked.then(|| {
            at += 4;
            [bytes[at - 4], bytes[at - 3], bytes[at - 2], bytes[at - 1]]
        });
        let payload = bytes[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, b)| key.map_or(*b, |k| b ^ k[i % 4]))
            .collect();
        out.push((bytes[0], masked, payload));
        bytes = &bytes[at + len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one frame in `bytes`: (first byte, payload).
    fn decode_one(bytes: &[u8]) -> (u8, Vec<u8>) {
        let mut frames = decode(bytes);
        assert_eq!(frames.len(), 1, "one frame, nothing more");
        let (first, _, payload) = frames.remove(0);
        (first, payload)
    }

    #[test]
    fn every_length_form_round_trips_masked_and_not() {
        for len in [
            0, 1, 7, 8, 9, 125, 126, 127, 4095, 4096, 4097, 65535, 65536, 100_003,
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            for mask in [None, Some([0x12, 0x34, 0x56, 0x78])] {
                let mut out = vec![0xEE]; // something already queued stays put
                encode(&mut out, BINARY, false, &payload, mask);
                assert_eq!(out.len(), 1 + wire_len(len, mask.is_some()), "{len}");
                assert_eq!(out[0], 0xEE);
                let (first, got) = decode_one(&out[1..]);
                assert_eq!(first, 0x80 | BINARY);
                assert_eq!(got, payload, "{len} {mask:?}");
            }
        }
    }

    #[test]
    fn rsv1_and_opcode_are_in_the_first_byte() {
        let mut out = Vec::new();
        encode(&mut out, TEXT, true, b"x", None);
        assert_eq!(out[0], 0x80 | 0x40 | TEXT);
        let mut out = Vec::new();
        encode(&mut out, PONG, false, b"", Some([1, 2, 3, 4]));
        assert_eq!(out, [0x80 | PONG, 0x80, 1, 2, 3, 4]);
    }

    #[test]
    fn tungstenite_reads_what_we_write() {
        use std::io::Cursor;
        use tungstenite::protocol::{Role, WebSocket};
        let mut wire = Vec::new();
        let big = vec![7u8; 70_000];
        encode(
            &mut wire,
            TEXT,
            false,
            "héllo".as_bytes(),
            Some([9, 8, 7, 6]),
        );
        encode(&mut wire, BINARY, false, &big, Some([1, 0, 0, 1]));
        encode(&mut wire, PING, false, b"p", Some([0, 0, 0, 0]));
        let mut ws = WebSocket::from_raw_socket(Cursor::new(wire), Role::Server, None);
        assert_eq!(ws.read().unwrap(), tungstenite::Message::text("héllo"));
        assert_eq!(ws.read().unwrap(), tungstenite::Message::binary(big));
        assert_eq!(ws.read().unwrap(), tungstenite::Message::Ping("p".into()));
    }
}
