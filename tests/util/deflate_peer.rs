//! A permessage-deflate server peer written from scratch for tests: its own handshake, its own
//! frame reader and writer, flate2 used directly. Independent of the library's deflate code, and
//! able to misbehave on purpose (bad answers, corrupt data, bombs, odd fragmentation).

use std::io::{Read, Write};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// One message (or control frame) as the peer received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub opcode: u8,
    /// RSV1 was set on its first frame.
    pub compressed: bool,
    /// The payload, inflated when it was compressed.
    pub payload: Vec<u8>,
    /// Payload bytes on the wire (compressed size).
    pub wire: usize,
}

pub struct DeflatePeer<S> {
    pub stream: S,
    /// The client's upgrade request head.
    pub request: String,
    inflate: Decompress,
    inflate_bits: u8,
    /// Reset the inflater after each message (the client promised no context takeover).
    pub reset_each_message: bool,
    deflate: Compress,
}

impl<S: Read + Write> DeflatePeer<S> {
    /// Read the upgrade request and answer 101, with `Sec-WebSocket-Extensions: answer` when
    /// given. `inflate_bits` is the window the peer inflates the client's messages with.
    pub fn accept(mut stream: S, answer: Option<&str>, inflate_bits: u8) -> Self {
        let extensions = answer
            .map(|a| format!("Sec-WebSocket-Extensions: {a}\r\n"))
            .unwrap_or_default();
        let request = super::upgrade_by_hand(&mut stream, &extensions);
        DeflatePeer {
            stream,
            request,
            inflate: Decompress::new_with_window_bits(false, inflate_bits),
            inflate_bits,
            reset_each_message: false,
            deflate: Compress::new(Compression::default(), false),
        }
    }

    /// The `Sec-WebSocket-Extensions` line of the request, if any.
    pub fn offer(&self) -> Option<&str> {
        self.request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
    }

    fn read_frame(&mut self) -> Option<(bool, bool, u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.stream.read_exact(&mut h).ok()?;
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).ok()?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).ok()?;
                u64::from_be_bytes(b)
            }
            l => u64::from(l),
        };
        assert!(h[1] & 0x80 != 0, "client frames are masked");
        let mut mask = [0u8; 4];
        self.stream.read_exact(&mut mask).ok()?;
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload).ok()?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        Some((h[0] & 0x80 != 0, h[0] & 0x40 != 0, h[0] & 0x0f, payload))
    }

    /// The next message or control frame; None when the connection ends.
    pub fn read(&mut self) -> Option<Received> {
        let (fin, rsv1, opcode, mut payload) = self.read_frame()?;
        if opcode >= 8 {
            assert!(!rsv1, "RSV1 on a control frame");
            return Some(Received {
                opcode,
                compressed: false,
                wire: payload.len(),
                payload,
            });
        }
        let mut finished = fin;
        while !finished {
            let (fin, rsv1_cont, op, more) = self.read_frame()?;
            assert!(!rsv1_cont, "RSV1 on a continuation frame");
            assert_eq!(op, 0, "continuation expected");
            payload.extend_from_slice(&more);
            finished = fin;
        }
        let wire = payload.len();
        if rsv1 {
            payload.extend_from_slice(&TAIL);
            let mut out = Vec::new();
            let mut piece = [0u8; 256];
            let mut rest = &payload[..];
            loop {
                let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
                self.inflate
                    .decompress(rest, &mut piece, FlushDecompress::Sync)
                    .expect("the client's compressed data inflates");
                rest = &rest[(self.inflate.total_in() - in0) as usize..];
                let produced = (self.inflate.total_out() - out0) as usize;
                out.extend_from_slice(&piece[..produced]);
                if rest.is_empty() && produced < piece.len() {
                    break;
                }
            }
            if self.reset_each_message {
                self.inflate = Decompress::new_with_window_bits(false, self.inflate_bits);
            }
            payload = out;
        }
        Some(Received {
            opcode,
            compressed: rsv1,
            payload,
            wire,
        })
    }

    /// Compress one message the RFC 7692 way (sync flush, tail removed), keeping context.
    pub fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 1024);
        let mut rest = data;
        loop {
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(rest, &mut out, FlushCompress::Sync)
                .unwrap();
            rest = &rest[(self.deflate.total_in() - before) as usize..];
            if rest.is_empty() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity());
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    }

    /// Send a message, compressed or not, in frames of at most `fragment` bytes, with a ping
    /// between every two frames when `pings` is set.
    pub fn send(&mut self, opcode: u8, data: &[u8], compress: bool, fragment: usize, pings: bool) {
        let payload = if compress {
            self.compress(data)
        } else {
            data.to_vec()
        };
        let mut chunks: Vec<&[u8]> = payload.chunks(fragment.max(1)).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.iter().enumerate() {
            let op = if i == 0 { opcode } else { 0 };
            self.write_frame(i == last, compress && i == 0, op, chunk);
            if pings && i != last {
                self.write_frame(true, false, 9, format!("ping {i}").as_bytes());
            }
        }
        self.stream.flush().unwrap();
    }

    /// Write raw bytes (hand-made frames).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    /// Write one unmasked frame as given.
    pub fn write_frame(&mut self, fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) {
        self.stream
            .write_all(&frame(fin, rsv1, opcode, payload))
            .unwrap();
    }

    /// Read until the client's Close and return its code (None if the connection ended first).
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
            let frame = self.read_frame()?;
            if frame.2 == 8 {
                let code = frame.3.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                // Answer, as a server does.
                let _ = self.stream.write_all(&self::frame(
                    true,
                    false,
                    8,
                    &frame.3[..2.min(frame.3.len())],
                ));
                let _ = self.stream.flush();
                return code;
            }
        }
    }
}

/// An unmasked frame (server to client).
pub fn frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode];
    match payload.len() {
        l if l < 126 => f.push(l as u8),
        l if l < 65536 => {
            f.push(126);
            f.extend_from_slice(&(l as u16).to_be_bytes());
        }
        l => {
            f.push(127);
            f.extend_from_slice(&(l as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}
