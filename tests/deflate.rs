//! permessage-deflate (RFC 7692) in every client mode, against an independent peer written
//! from scratch on raw TCP with flate2 (tests/util/deflate_peer.rs), and between the client and
//! the library's own server side over TLS.

mod util;

use std::net::TcpStream;

use syncws::{
    BlockingClient, CloseInfo, Config, Context, DeflateConfig, Error, Handler, ServerConnection,
};
use tungstenite::error::ProtocolError;
use util::deflate_peer::{frame, DeflatePeer};
use util::*;

/// A chat message as a JSON client would send it.
fn json(i: usize) -> String {
    format!(
        r#"{{"type":"message","room":"general","user":"user{}","text":"message {i} to everyone in the room","ts":{}}}"#,
        i % 7,
        1_700_000_000 + i
    )
}

/// Text that compresses, but whose repeats lie more than 512 bytes apart.
fn long_text(n: usize) -> String {
    (0..)
        .map(|i| {
            format!(
                "line {i}: the quick brown fox jumps over the lazy dog {}\n",
                i % 13
            )
        })
        .take_while({
            let mut len = 0;
            move |l: &String| {
                len += l.len();
                len <= n
            }
        })
        .collect()
}

/// 2000 random letters four times over: the only matches are 2000 bytes back, which a
/// compressor held to a 512-byte window must not use.
fn far_repeats() -> String {
    let mut x: u32 = 7;
    let block: String = (0..2000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            b"acgt"[(x % 4) as usize] as char
        })
        .collect();
    block.repeat(4)
}

/// Accept one connection with `answer` as the extension answer, and run `f` on the peer.
fn peer<R: Send + 'static>(
    answer: Option<&'static str>,
    inflate_bits: u8,
    f: impl FnOnce(&mut DeflatePeer<TcpStream>) -> R + Send + 'static,
) -> (String, std::thread::JoinHandle<(Option<String>, R)>) {
    let (addr, handle) = raw_server(move |tcp| {
        let mut p = DeflatePeer::accept(tcp, answer, inflate_bits);
        let r = f(&mut p);
        (p.offer().map(str::to_owned), r)
    });
    (format!("ws://{addr}/"), handle)
}

fn deflate_on() -> syncws::ConfigBuilder {
    Config::builder().deflate(Some(DeflateConfig::new()))
}

/// The script every echo test runs: echo each data message, close after `n`.
fn echo_then_close(n: usize) -> Script {
    let mut seen = 0;
    Box::new(move |rec, act| {
        match rec {
            Rec::Text(t) => act.text(t).unwrap(),
            Rec::Binary(b) => act.binary(b).unwrap(),
            _ => return,
        }
        seen += 1;
        if seen == n {
            act.close(1000, "done").unwrap();
        }
    })
}

#[test]
fn compressed_messages_round_trip_in_every_mode() {
    let big = long_text(300_000);
    for mode in MODES {
        let big2 = big.clone();
        let (url, server) = peer(Some("permessage-deflate"), 15, move |p| {
            // Small, single frame.
            p.send(1, json(1).as_bytes(), true, usize::MAX, false);
            // Large, in 1000-byte fragments with a ping between each two.
            p.send(1, big2.as_bytes(), true, 1000, true);
            // And again in 7-byte fragments, without pings (the context makes it tiny).
            p.send(1, big2.as_bytes(), true, 7, false);
            // Uncompressed binary below the client's threshold, then an empty compressed one.
            p.send(2, b"0123456789", false, usize::MAX, false);
            p.send(2, b"", true, usize::MAX, false);
            let mut got = Vec::new();
            while got.len() < 5 {
                let r = p.read().expect("the client's echo");
                if matches!(r.opcode, 1 | 2) {
                    got.push(r);
                }
            }
            (got, p.close_code())
        });
        let out = drive(mode, &url, deflate_on(), echo_then_close(5));
        assert_eq!(out.texts(), [json(1), big.clone(), big.clone()], "{mode:?}");
        assert!(
            out.recs
                .iter()
                .filter(|r| matches!(r, Rec::Ping(_)))
                .count()
                >= 3,
            "{mode:?}: pings between fragments are delivered"
        );
        assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
        let (offer, (echoes, code)) = server.join().unwrap();
        assert_eq!(
            offer.as_deref(),
            Some("permessage-deflate; client_max_window_bits")
        );
        let summary: Vec<(u8, bool, usize)> = echoes
            .iter()
            .map(|r| (r.opcode, r.compressed, r.payload.len()))
            .collect();
        assert_eq!(
            summary,
            [
                (1, true, json(1).len()),
                (1, true, big.len()),
                (1, true, big.len()),
                (2, false, 10),
                (2, false, 0)
            ],
            "{mode:?}: at or above the threshold compressed, below it not"
        );
        assert_eq!(echoes[1].payload, big.as_bytes(), "{mode:?}");
        assert_eq!(code, Some(1000), "{mode:?}");
    }
}

/// Echoes the handshake's agreed parameters and sends; closes when told.
struct Sender {
    messages: Vec<String>,
    closed: Option<CloseInfo>,
    errors: Vec<String>,
}

impl Handler for Sender {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        for m in &self.messages {
            ctx.send_text(m).unwrap();
        }
        ctx.close(1000, "sent").unwrap();
    }
    fn on_connection_closed(&mut self, _ctx: &mut Context<'_>, close: &CloseInfo) {
        self.closed = Some(close.clone());
    }
    fn on_error(&mut self, _ctx: &mut Context<'_>, error: &Error) {
        self.errors.push(error.to_string());
    }
}

#[test]
fn agreed_parameters_are_reported_and_obeyed() {
    // The peer inflates with a fresh inflater per message: a client that kept context would send
    // data it cannot inflate.
    let (url, server) = peer(
        Some(
            "permessage-deflate; client_no_context_takeover; client_max_window_bits=9; \
             server_max_window_bits=10",
        ),
        9,
        |p| {
            p.reset_each_message = true;
            let mut got = Vec::new();
            while let Some(r) = p.read() {
                if r.opcode == 8 {
                    p.write_raw(&frame(true, false, 8, &r.payload));
                    break;
                }
                got.push(r.wire);
                got.push(r.payload.len());
                assert!(r.compressed);
            }
            got
        },
    );
    let text = far_repeats();
    let client = BlockingClient::connect(&url, &deflate_on().build().unwrap()).unwrap();
    let agreed = *client.handshake().deflate().expect("deflate agreed");
    assert!(agreed.client_no_context_takeover);
    assert!(!agreed.server_no_context_takeover);
    assert_eq!(agreed.client_max_window_bits, 9);
    assert_eq!(agreed.server_max_window_bits, 10);
    let metrics = client.metrics();
    let mut sender = Sender {
        messages: vec![text.clone(); 3],
        closed: None,
        errors: Vec::new(),
    };
    let sender = within_deadline(move || {
        client.run(&mut sender);
        sender
    });
    assert!(sender.errors.is_empty(), "{:?}", sender.errors);
    let (_, sizes) = server.join().unwrap();
    // (wire, inflated) per message: all inflate whole, and without context each costs the same.
    assert_eq!(sizes.len(), 6, "{sizes:?}");
    assert_eq!(sizes[1], text.len());
    assert_eq!(sizes[0], sizes[2]);
    assert_eq!(sizes[2], sizes[4]);
    assert!(sizes[0] < text.len() / 2, "{sizes:?}");
    // zlib's inflater does not police the window, so the size does: within 512 bytes the
    // repeats 2000 bytes back are out of reach (~2.5 KB; a 32 KiB window makes it ~0.8 KB).
    assert!(
        sizes[0] > 2000,
        "compressed with a window over 512 bytes: {sizes:?}"
    );
    assert_eq!(metrics.compression_input_bytes(), 3 * text.len() as u64);
    assert_eq!(metrics.compression_output_bytes(), 3 * sizes[0] as u64);
}

#[test]
fn answers_that_do_not_fit_the_offer_fail_the_handshake() {
    for answer in [
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; server_no_context_takeover=yes",
        "permessage-deflate; x-unknown",
        "x-webkit-deflate-frame",
        "permessage-deflate, permessage-deflate",
    ] {
        let (url, server) = peer(Some(answer), 15, |_| ());
        let e = BlockingClient::connect(&url, &deflate_on().build().unwrap()).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidHandshake(m) if m.contains("Sec-WebSocket-Extensions")),
            "{answer}: {e:?}"
        );
        server.join().unwrap();
    }
    // Asking for something the server then leaves out is refused too.
    let (url, server) = peer(Some("permessage-deflate"), 15, |_| ());
    let config = Config::builder()
        .deflate(Some(DeflateConfig::new().server_no_context_takeover(true)))
        .build()
        .unwrap();
    let e = BlockingClient::connect(&url, &config).unwrap_err();
    assert!(e.to_string().contains("server_no_context_takeover"), "{e}");
    let (offer, ()) = server.join().unwrap();
    assert_eq!(
        offer.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_max_window_bits")
    );
}

#[test]
fn a_server_that_declines_gets_plain_frames_in_every_mode() {
    // tungstenite's server knows no extensions: it ignores the offer and would fail on RSV1.
    for mode in MODES {
        let (url, server) = ws_server(echo);
        let text = long_text(5_000);
        let t = text.clone();
        let out = drive(
            mode,
            &url,
            deflate_on(),
            Box::new(move |rec, act| match rec {
                Rec::Activated(_) => act.text(&t).unwrap(),
                Rec::Text(_) => act.close(1000, "").unwrap(),
                _ => {}
            }),
        );
        assert_eq!(out.texts(), [text], "{mode:?}");
        assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
        assert_eq!(server.join().unwrap(), 1);
    }
    let (url, server) = ws_server(echo);
    let client = BlockingClient::connect(&url, &deflate_on().build().unwrap()).unwrap();
    assert!(client.handshake().deflate().is_none());
    drop(client);
    server.join().unwrap();
}

/// The peer sends a valid compressed message, then `bad` raw bytes, and reports the client's
/// close code. Checks the typed error in every mode.
fn check_bad(bad: Vec<u8>, max: usize, code: u16, is: fn(&Error) -> bool) {
    for mode in MODES {
        let bad = bad.clone();
        let (url, server) = peer(Some("permessage-deflate"), 15, move |p| {
            p.send(1, b"before, compressed and intact", true, usize::MAX, false);
            p.write_raw(&bad);
            p.close_code()
        });
        let out = drive(
            mode,
            &url,
            deflate_on().max_message_size(Some(max)),
            passive(),
        );
        assert_eq!(out.texts(), ["before, compressed and intact"], "{mode:?}");
        assert!(
            out.errors.len() == 1 && is(&out.errors[0]),
            "{mode:?}: {:?}",
            out.recs
        );
        assert_eq!(server.join().unwrap().1, Some(code), "{mode:?}");
    }
}

#[test]
fn a_decompression_bomb_ends_with_the_size_error_and_1009() {
    // 16 MiB of zeros is 16 KiB compressed; the limit is 1 MiB. A fresh compressor, so it does
    // not depend on the peer's context.
    let mut peer = flate2::Compress::new(flate2::Compression::best(), false);
    let mut z = Vec::with_capacity(64 << 10);
    peer.compress_vec(&vec![0u8; 16 << 20], &mut z, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(z.len() < 64 << 10);
    let bomb = frame(true, true, 2, &z[..z.len() - 4]);
    check_bad(
        bomb,
        1 << 20,
        1009,
        |e| matches!(e, Error::MessageTooLarge { size, max: 1_048_576 } if *size > 1 << 20),
    );
}

#[test]
fn a_message_of_exactly_the_limit_inflates() {
    let limit = 100_000;
    let text = "x".repeat(limit);
    let t = text.clone();
    let (url, server) = peer(Some("permessage-deflate"), 15, move |p| {
        p.send(1, t.as_bytes(), true, 777, false);
        p.close_code()
    });
    let out = drive(
        Mode::Blocking,
        &url,
        deflate_on().max_message_size(Some(limit)),
        Box::new(|rec, act| {
            if let Rec::Text(_) = rec {
                act.close(1000, "").unwrap();
            }
        }),
    );
    assert_eq!(out.texts(), [text]);
    assert_eq!(server.join().unwrap().1, Some(1000));
}

#[test]
fn corrupt_compressed_data_ends_with_1007() {
    check_bad(frame(true, true, 1, &[0xff; 32]), 1 << 20, 1007, |e| {
        matches!(e, Error::InvalidCompressedData(_))
    });
}

#[test]
fn rsv1_where_the_rfc_forbids_it_is_a_protocol_error() {
    let reserved = |e: &Error| matches!(e, Error::Protocol(ProtocolError::NonZeroReservedBits));
    // On a control frame.
    check_bad(frame(true, true, 9, b"ping"), 1 << 20, 1002, reserved);
    // On a continuation frame of a compressed message.
    let mut bad = frame(false, true, 1, &[]);
    bad.extend(frame(true, true, 0, &[0x00]));
    check_bad(bad, 1 << 20, 1002, reserved);
    // A new message in the middle of a fragmented compressed one.
    let mut bad = frame(false, true, 1, &[]);
    bad.extend(frame(true, false, 1, b"interloper"));
    check_bad(bad, 1 << 20, 1002, |e| {
        matches!(e, Error::Protocol(ProtocolError::ExpectedFragment(_)))
    });
}

#[test]
fn client_and_server_compress_through_tls_in_every_mode() {
    let pki = TestPki::new();
    let (cert, key) = pki.issue(&["localhost"]);
    let messages: Vec<String> = (0..200)
        .map(json)
        .chain([long_text(200_000), "tiny".into()])
        .collect();
    // Every client mode against each way of running the server connection.
    for (side, mode) in SIDES
        .into_iter()
        .flat_map(|side| MODES.map(|mode| (side, mode)))
    {
        let identity = native_tls::Identity::from_pkcs8(cert.as_bytes(), key.as_bytes()).unwrap();
        let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
        let (addr, server) = raw_server(move |tcp| {
            let config = Config::builder()
                .deflate(Some(DeflateConfig::new().server_no_context_takeover(true)))
                .build()
                .unwrap();
            let conn = ServerConnection::accept(tcp, Some(&acceptor), &config).unwrap();
            let agreed = conn.deflate().copied();
            let metrics = conn.metrics();
            let mut echo = Echo::default();
            serve(side, conn, &mut echo);
            (agreed, echo.errors, metrics.compression_input_bytes())
        });
        let to_send = messages.clone();
        let n = to_send.len();
        let out = drive(
            mode,
            &format!("wss://localhost:{}/", addr.port()),
            deflate_on().root_certificate_pem(pki.ca_pem.as_bytes()),
            close_after(
                n,
                Box::new(move |rec: &Rec, act: &mut dyn Actions| {
                    if let Rec::Activated(_) = rec {
                        for m in &to_send {
                            act.text(m).unwrap();
                        }
                    }
                }),
            ),
        );
        assert_eq!(out.texts(), messages, "{side:?}/{mode:?}");
        assert!(out.errors.is_empty(), "{side:?}/{mode:?}: {:?}", out.errors);
        let (agreed, errors, compressed) = server.join().unwrap();
        let agreed = agreed.expect("the server agreed");
        assert!(agreed.server_no_context_takeover && !agreed.client_no_context_takeover);
        assert!(errors.is_empty(), "{side:?}/{mode:?}: {errors:?}");
        // Everything but "tiny" went out compressed, both ways: the server would take plain
        // frames too, so each side's own counters say whether it compressed.
        let expected: usize = messages
            .iter()
            .filter(|m| m.len() >= 64)
            .map(String::len)
            .sum();
        assert_eq!(compressed, expected as u64, "{side:?}/{mode:?}: the server");
        assert_eq!(
            out.metrics.compression_input_bytes, expected as u64,
            "{side:?}/{mode:?}: the client"
        );
        assert!(
            out.metrics.compression_output_bytes < expected as u64 / 2,
            "{side:?}/{mode:?}: the client's messages shrank: {:?}",
            out.metrics
        );
    }
}

/// `script`, then a close once `n` text messages have arrived.
fn close_after(n: usize, mut script: Script) -> Script {
    let mut seen = 0;
    Box::new(move |rec, act| {
        script(rec, act);
        if let Rec::Text(_) = rec {
            seen += 1;
            if seen == n {
                act.close(1000, "").unwrap();
            }
        }
    })
}

#[test]
fn bad_deflate_settings_are_config_errors_from_build() {
    for (deflate, expected) in [
        (
            DeflateConfig::new().level(10),
            "deflate level must be from 0 to 9, not 10",
        ),
        (
            DeflateConfig::new().client_max_window_bits(Some(16)),
            "deflate client_max_window_bits must be from 8 to 15, not 16",
        ),
        (
            DeflateConfig::new().server_max_window_bits(Some(7)),
            "deflate server_max_window_bits must be from 8 to 15, not 7",
        ),
    ] {
        let e = Config::builder()
            .deflate(Some(deflate))
            .build()
            .unwrap_err();
        assert!(matches!(&e, Error::Config(m) if m == expected), "{e:?}");
        println!("{e}");
    }
}
