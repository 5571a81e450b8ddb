//! Compressing outgoing messages: the payload is deflated here and the session writes it in a
//! frame with RSV1 set.

use flate2::{Compress, Compression, FlushCompress, Status};
use tungstenite::protocol::Role;

use super::{DeflateConfig, DeflateParams};

/// What every sync-flushed block ends with; RFC 7692 7.2.1 has the sender drop it.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The compressing side of one connection.
#[derive(Debug)]
pub(crate) struct Outbound {
    /// Created at the first compressed message: a connection that only receives never pays for
    /// a compressor's ~256 KiB.
    compress: Option<Compress>,
    window_bits: u8,
    no_context_takeover: bool,
    level: Compression,
    threshold: usize,
}

impl Outbound {
    /// The compressor for our direction of the agreed parameters, or None when we may not
    /// compress at all (held to an 8-bit window, which zlib cannot produce).
    pub(crate) fn new(params: &DeflateParams, role: Role, config: &DeflateConfig) -> Option<Self> {
        let (window_bits, no_context_takeover) = match role {
            Role::Client => (
                params.client_max_window_bits,
                params.client_no_context_takeover,
            ),
            Role::Server => (
                params.server_max_window_bits,
                params.server_no_context_takeover,
            ),
        };
        if window_bits < 9 {
            tracing::debug!("deflate window of 8 bits agreed: sending uncompressed");
            return None;
        }
        Some(Outbound {
            compress: None,
            window_bits,
            no_context_takeover,
            level: Compression::new(config.level),
            threshold: config.threshold,
        })
    }

    /// The payload of a data message as it should be written: compressed (to go in a frame
    /// with RSV1 set) when it is at or above the threshold and compressing pays; None to send
    /// it as it is.
    pub(crate) fn encode(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        if payload.len() < self.threshold {
            return None;
        }
        let compressed = self.compress(payload);
        if self.no_context_takeover && compressed.len() >= payload.len() {
            // Nothing gained, and with no context kept the peer's window does not need it.
            return None;
        }
        Some(compressed)
    }

    /// A compressed frame was not queued after all (the send queue was full). Its bytes are in
    /// our window but will never reach the peer's, so later messages must not refer to them:
    /// start a fresh window. A deflate stream that refers to nothing before its own start is
    /// valid for any receiver, so nothing needs to be said to the peer.
    pub(crate) fn rejected(&mut self) {
        if let Some(c) = &mut self.compress {
            c.reset();
        }
    }

    fn compress(&mut self, input: &[u8]) -> Vec<u8> {
        let (level, bits) = (self.level, self.window_bits);
        let c = self
            .compress
            .get_or_insert_with(|| Compress::new_with_window_bits(level, false, bits));
        // Deflate can grow incompressible data slightly; the loop below grows the buffer when
        // that happens.
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let mut rest = input;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = c.total_in();
            // Compressing into a Vec with spare room cannot fail: the only errors zlib reports
            // are for misuse (a stream already finished), which this code never does.
            let status = c
                .compress_vec(rest, &mut out, FlushCompress::Sync)
                .unwrap_or(Status::StreamEnd);
            rest = &rest[(c.total_in() - before) as usize..];
            // Done when all input is in and zlib did not stop for lack of room.
            if rest.is_empty() && out.len() < out.capacity() || status == Status::StreamEnd {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if self.no_context_takeover {
            c.reset();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    fn params(no_context: bool, bits: u8) -> DeflateParams {
        DeflateParams {
            client_no_context_takeover: no_context,
            server_no_context_takeover: false,
            client_max_window_bits: bits,
            server_max_window_bits: 15,
        }
    }

    fn inflate(d: &mut Decompress, payload: &[u8]) -> Vec<u8> {
        let mut input = payload.to_vec();
        input.extend_from_slice(&TAIL);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    /// (compressed, the payload as it would be sent)
    fn payload(out: &mut Outbound, data: &[u8]) -> (bool, Vec<u8>) {
        match out.encode(data) {
            Some(c) => (true, c),
            None => (false, data.to_vec()),
        }
    }

    #[test]
    fn messages_round_trip_with_and_without_context() {
        for no_context in [false, true] {
            let config = DeflateConfig::new().threshold(10);
            let mut out = Outbound::new(&params(no_context, 15), Role::Client, &config).unwrap();
            let mut d = Decompress::new(false);
            let text = r#"{"user":"ada","room":"general","text":"hello there, everyone"}"#;
            let mut sizes = Vec::new();
            for _ in 0..3 {
                let (rsv1, p) = payload(&mut out, text.as_bytes());
                assert!(rsv1);
                assert_eq!(inflate(&mut d, &p), text.as_bytes());
                sizes.push(p.len());
            }
            // With context kept, a repeated message costs a few bytes.
            if no_context {
                assert_eq!(sizes[0], sizes[2]);
            } else {
                assert!(sizes[2] < sizes[0] / 4, "{sizes:?}");
            }
            // Below the threshold: unchanged.
            assert!(!payload(&mut out, b"short").0);
        }
    }

    #[test]
    fn incompressible_data_grows_the_buffer_and_round_trips() {
        let mut out =
            Outbound::new(&params(false, 9), Role::Client, &DeflateConfig::new()).unwrap();
        let mut x: u32 = 1;
        let data: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let (_, p) = payload(&mut out, &data);
        assert!(p.len() > data.len());
        assert_eq!(inflate(&mut Decompress::new(false), &p), data);
    }

    #[test]
    fn a_rejected_frame_leaves_no_reference_behind() {
        let config = DeflateConfig::new().threshold(0);
        let mut out = Outbound::new(&params(false, 15), Role::Client, &config).unwrap();
        let mut d = Decompress::new(false);
        let a = "the same words, again and again and again";
        let b = "0123456789 quite different, 0123456789 quite different";
        let (_, first) = payload(&mut out, a.as_bytes());
        assert_eq!(inflate(&mut d, &first), a.as_bytes());
        // The second never reaches the peer; without a fresh window the third would refer to it.
        let _ = out.encode(b.as_bytes());
        out.rejected();
        let (_, third) = payload(&mut out, b.as_bytes());
        assert_eq!(inflate(&mut d, &third), b.as_bytes());
    }

    #[test]
    fn an_eight_bit_window_means_no_compression() {
        assert!(Outbound::new(&params(false, 8), Role::Client, &DeflateConfig::new()).is_none());
    }
}
