//! Bad input from the network ends that connection with the right close code and a typed error;
//! no panic, and other connections carry on.

mod util;

use syncws::{Config, Error, Event, ThreadedClient};
use tungstenite::error::ProtocolError;
use tungstenite::Message;
use util::*;

/// The server sends `before` (valid), then `bad` raw bytes, and reports the close code the
/// client answers with.
fn bad_frame_server(bad: Vec<u8>) -> (String, std::thread::JoinHandle<Option<u16>>) {
    ws_server(move |mut ws| {
        ws.send(Message::text("before")).unwrap();
        write_raw(&mut ws, &bad);
        close_code_from_client(&mut ws)
    })
}

fn check(bad: Vec<u8>, builder: fn() -> syncws::ConfigBuilder, code: u16, is: fn(&Error) -> bool) {
    for mode in MODES {
        let (url, server) = bad_frame_server(bad.clone());
        let out = drive(mode, &url, builder(), passive());
        assert_eq!(
            out.texts(),
            ["before"],
            "{mode:?}: valid input before is delivered"
        );
        assert!(
            out.errors.len() == 1 && is(&out.errors[0]),
            "{mode:?}: typed error expected, got {:?}",
            out.recs
        );
        assert!(
            out.closed().is_none(),
            "{mode:?}: a failure is not a normal close"
        );
        assert_eq!(
            server.join().unwrap(),
            Some(code),
            "{mode:?}: close code on the wire"
        );
    }
}

#[test]
fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    // FIN + text, 2 bytes: 0xC3 0x28 is not UTF-8.
    check(vec![0x81, 0x02, 0xC3, 0x28], Config::builder, 1007, |e| {
        matches!(e, Error::InvalidUtf8)
    });
}

#[test]
fn invalid_utf8_across_fragments_closes_with_1007() {
    // Text fragment "a\xC3", then continuation "\x28" + FIN.
    check(
        vec![0x01, 0x02, b'a', 0xC3, 0x80, 0x01, 0x28],
        Config::builder,
        1007,
        |e| matches!(e, Error::InvalidUtf8),
    );
}

#[test]
fn an_oversize_message_closes_with_1009() {
    let mut frame = vec![0x82, 126, 0x08, 0x00]; // binary, 2048 bytes
    frame.extend(std::iter::repeat_n(7u8, 2048));
    check(
        frame,
        || Config::builder().max_message_size(Some(1024)),
        1009,
        |e| {
            matches!(
                e,
                Error::MessageTooLarge {
                    size: 2048,
                    max: 1024
                }
            )
        },
    );
}

#[test]
fn an_oversize_fragmented_message_closes_with_1009() {
    // Two 800-byte fragments: each frame fits, the message does not.
    let mut bytes = vec![0x02, 126, 0x03, 0x20];
    bytes.extend(std::iter::repeat_n(1u8, 800));
    bytes.extend([0x80, 126, 0x03, 0x20]);
    bytes.extend(std::iter::repeat_n(2u8, 800));
    check(
        bytes,
        || Config::builder().max_message_size(Some(1024)),
        1009,
        |e| matches!(e, Error::MessageTooLarge { max: 1024, .. }),
    );
}

#[test]
fn a_huge_announced_frame_is_refused_before_it_is_read() {
    // A header announcing 2^40 bytes, then nothing: refused on the header, no allocation.
    let frame = vec![0x82, 127, 0, 0, 1, 0, 0, 0, 0, 0];
    check(frame, Config::builder, 1009, |e| {
        matches!(e, Error::MessageTooLarge { .. })
    });
}

#[test]
fn reserved_bits_close_with_1002() {
    // FIN + RSV1 + text "hi", without a negotiated extension.
    check(vec![0xC1, 0x02, b'h', b'i'], Config::builder, 1002, |e| {
        matches!(e, Error::Protocol(ProtocolError::NonZeroReservedBits))
    });
}

#[test]
fn a_masked_frame_from_the_server_closes_with_1002() {
    check(
        vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2],
        Config::builder,
        1002,
        |e| matches!(e, Error::Protocol(ProtocolError::MaskedFrameFromServer)),
    );
}

#[test]
fn a_bad_peer_does_not_touch_other_connections() {
    let (bad_url, bad_server) = bad_frame_server(vec![0x81, 0x02, 0xC3, 0x28]);
    let (good_url, good_server) = ws_server(echo);
    let good = ThreadedClient::connect(&good_url, &Config::default()).unwrap();
    let bad = ThreadedClient::connect(&bad_url, &Config::default()).unwrap();
    // The bad connection fails and ends...
    let bad_events: Vec<Event> = events(&bad.event_rx).collect();
    assert!(bad_events
        .iter()
        .any(|e| matches!(e, Event::Error(Error::InvalidUtf8))));
    assert_eq!(bad_server.join().unwrap(), Some(1007));
    // ...while the good one keeps echoing.
    for i in 0..100 {
        good.control_tx
            .send_text(format!("still here {i}"))
            .unwrap();
    }
    let mut echoed = 0;
    for event in events(&good.event_rx) {
        match event {
            Event::TextMessage(t) => {
                assert_eq!(t.as_str(), format!("still here {echoed}"));
                echoed += 1;
                if echoed == 100 {
                    good.control_tx.close(1000, "").unwrap();
                }
            }
            Event::Error(e) => panic!("good connection failed: {e}"),
            _ => {}
        }
    }
    assert_eq!(echoed, 100);
    assert_eq!(good_server.join().unwrap(), 100);
}

#[test]
fn a_huge_announced_frame_without_a_frame_limit_is_refused_not_allocated() {
    // A 2^40-byte binary frame announced, then nothing. tungstenite reserves a frame's announced
    // length before reading it, so "no frame limit" must not mean "allocate what the peer
    // claims": that aborts the process.
    let header = [0x82, 127, 0, 0, 1, 0, 0, 0, 0, 0];
    for mode in MODES {
        let (addr, server) = raw_server(move |tcp| {
            let (_, mut ws) = accept_by_hand(tcp, "");
            write_raw(&mut ws, &header);
            close_code_from_client(&mut ws)
        });
        let out = drive(
            mode,
            &format!("ws://{addr}/"),
            Config::builder().max_frame_size(None),
            passive(),
        );
        assert!(
            matches!(
                out.errors[..],
                [Error::MessageTooLarge {
                    size: 0x100_0000_0000,
                    ..
                }]
            ),
            "{mode:?}: {:?}",
            out.recs
        );
        assert_eq!(server.join().unwrap(), Some(1009), "{mode:?}");
    }
    // With no message limit either nothing would bound a frame: that is a configuration error.
    let err = Config::builder()
        .max_message_size(None)
        .max_frame_size(None)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}
