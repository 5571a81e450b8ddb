//! Close handshake invariants, in every mode: nothing is lost in either direction, the close
//! code and reason arrive as values, deadlines hold, `on_quit` comes last exactly once.

mod util;

use std::time::{Duration, Instant};

use syncws::{Config, Error, Initiator, TimeoutKind};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;
use util::*;

const N: usize = 500;

#[test]
fn server_close_arrives_after_every_message_it_sent() {
    for mode in MODES {
        let (url, server) = ws_server(|mut ws| {
            for i in 0..N {
                ws.write(Message::text(format!("m{i}"))).unwrap();
            }
            // The Close goes out in the same flush as the data, so they arrive together.
            ws.close(Some(CloseFrame {
                code: CloseCode::Library(4001),
                reason: "bye".into(),
            }))
            .unwrap();
            let mut answered = false;
            loop {
                match ws.read() {
                    Ok(Message::Close(_)) => answered = true,
                    Ok(_) => {}
                    Err(_) => return answered,
                }
            }
        });
        let out = drive(mode, &url, Config::builder(), passive());
        let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
        assert_eq!(out.texts(), expected, "{mode:?}: every message, in order");
        let close = out
            .closed()
            .unwrap_or_else(|| panic!("{mode:?}: no close: {:?}", out.recs));
        assert_eq!(u16::from(close.code), 4001, "{mode:?}");
        assert_eq!(close.reason, "bye", "{mode:?}");
        assert_eq!(close.initiator, Initiator::Remote, "{mode:?}");
        let closed_at = out.position(|r| matches!(r, Rec::Closed(_))).unwrap();
        let last_text = out
            .position(|r| *r == Rec::Text(format!("m{}", N - 1)))
            .unwrap();
        assert!(
            last_text < closed_at,
            "{mode:?}: close before the last message"
        );
        assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
        assert!(
            server.join().unwrap(),
            "{mode:?}: the client must answer the Close"
        );
    }
}

#[test]
fn everything_sent_before_close_reaches_the_server_before_our_close() {
    for mode in MODES {
        let (url, server) = ws_server(|mut ws| {
            let (got, frame) = read_until_close(&mut ws);
            // Let tungstenite send its answer and finish.
            while ws.read().is_ok() {}
            (got, frame)
        });
        let out = drive(
            mode,
            &url,
            Config::builder(),
            Box::new(|rec, act| {
                if let Rec::Activated(_) = rec {
                    for i in 0..N {
                        act.text(&format!("c{i}")).unwrap();
                    }
                    act.close(1000, "done").unwrap();
                }
            }),
        );
        let (got, frame) = server.join().unwrap();
        let got: Vec<String> = got
            .into_iter()
            .map(|m| m.into_text().unwrap().to_string())
            .collect();
        let expected: Vec<String> = (0..N).map(|i| format!("c{i}")).collect();
        assert_eq!(
            got, expected,
            "{mode:?}: the server got every message before the Close"
        );
        let frame = frame.expect("close frame with a code");
        assert_eq!(frame.code, CloseCode::Normal, "{mode:?}");
        assert_eq!(frame.reason.as_str(), "done", "{mode:?}");
        let close = out
            .closed()
            .unwrap_or_else(|| panic!("{mode:?}: {:?}", out.recs));
        assert_eq!(close.initiator, Initiator::Local, "{mode:?}");
        assert_eq!(close.code, CloseCode::Normal, "{mode:?}");
        assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
    }
}

#[test]
fn a_server_that_never_answers_close_cannot_hold_the_client() {
    for mode in MODES {
        let (url, server) = ws_server(|mut ws| {
            // Swallow everything, answer nothing, until the client gives up and hangs up.
            read_to_end(ws.get_mut())
        });
        let started = Instant::now();
        let out = drive(
            mode,
            &url,
            Config::builder().close_timeout(Duration::from_millis(300)),
            Box::new(|rec, act| {
                if let Rec::Activated(_) = rec {
                    act.close(1000, "bye").unwrap();
                }
            }),
        );
        assert!(
            matches!(out.errors.as_slice(), [Error::Timeout(TimeoutKind::Close)]),
            "{mode:?}: {:?}",
            out.recs
        );
        assert!(
            out.closed().is_none(),
            "{mode:?}: no close handshake happened"
        );
        // The deadline is what ended it, not the test's own limit.
        assert!(started.elapsed() < TEST_DEADLINE / 2, "{mode:?}");
        // Our Close went out, whole, with its code and reason, and nothing after it.
        assert_eq!(
            client_frames(&server.join().unwrap()),
            [(0x88, close_payload(1000, "bye"))],
            "{mode:?}: our Close was sent"
        );
    }
}

#[test]
fn close_arguments_are_checked_and_the_connection_stays_usable() {
    for mode in MODES {
        let (url, server) = ws_server(|mut ws| read_until_close(&mut ws).1.map(|f| f.code));
        let refused = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = refused.clone();
        let out = drive(
            mode,
            &url,
            Config::builder(),
            Box::new(move |rec, act| {
                if let Rec::Activated(_) = rec {
                    // Refused at once, with nothing sent, in every mode (a hook's context and
                    // a command sender alike).
                    let mut r = r.lock().unwrap();
                    r.extend(act.close(1005, "reserved code").err());
                    r.extend(act.close(1000, &"x".repeat(124)).err());
                    act.close(4000, "real close").unwrap();
                }
            }),
        );
        let reported: Vec<String> = refused.lock().unwrap().clone();
        assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
        assert_eq!(
            reported,
            [
                "close code 1005 may not be sent",
                "close reason of 124 bytes is longer than 123 bytes"
            ],
            "{mode:?}"
        );
        assert_eq!(
            server.join().unwrap(),
            Some(CloseCode::Library(4000)),
            "{mode:?}: only the valid close reached the wire"
        );
        assert_eq!(
            out.closed().map(|c| c.code),
            Some(CloseCode::Library(4000)),
            "{mode:?}"
        );
    }
}

#[test]
fn force_quit_drops_the_connection_at_once() {
    // The default close timeout: a force-quit that waited for a close handshake, or held the
    // socket until some deadline, would show the server nothing for this long.
    const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
    for mode in MODES {
        let (addr, server) = raw_server(|tcp| {
            // The server's read timeout (SERVER_IO_TIMEOUT, 30 s) is far past anything this
            // test waits for, so the end it sees cannot be its own timeout.
            let (_, ws) = accept_by_hand(tcp, "");
            let mut tcp = ws.into_inner();
            let mut buf = [0u8; 256];
            let read = std::io::Read::read(&mut tcp, &mut buf);
            (read.map_err(|e| e.kind()), Instant::now())
        });
        let (quit_tx, quit_rx) = crossbeam_channel::bounded(1);
        let out = drive(
            mode,
            &format!("ws://{addr}/"),
            Config::builder().close_timeout(CLOSE_TIMEOUT),
            Box::new(move |rec, act| {
                if let Rec::Activated(_) = rec {
                    let _ = quit_tx.try_send(Instant::now());
                    act.quit();
                }
            }),
        );
        assert!(out.closed().is_none(), "{mode:?}: not a close handshake");
        assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
        let quit_at = quit_rx.try_recv().expect("the script quit");
        let (read, ended_at) = server.join().unwrap();
        // A force-quit is not a close handshake: not a byte (no Close frame), only the end of
        // the TCP connection (FIN, or RST where unread data was dropped).
        assert!(
            matches!(read, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
            "{mode:?}: the server read {read:?} instead of the end of the connection"
        );
        // At once: long before the close timeout could have passed.
        let took = ended_at.saturating_duration_since(quit_at);
        assert!(
            took < CLOSE_TIMEOUT / 5,
            "{mode:?}: the server saw the end {took:?} after the force-quit"
        );
    }
}

#[test]
fn data_after_the_peers_close_is_discarded_not_an_error() {
    // Autobahn 7.1.2-7.1.6: Close, then a Ping and a Text. RFC 6455 1.4: discarded.
    for mode in MODES {
        let (url, server) = ws_server(|mut ws| {
            // Close 1000, then a ping and a text, in one write (server frames are unmasked).
            write_raw(
                &mut ws,
                &[0x88, 0x02, 0x03, 0xe8, 0x89, 0x00, 0x81, 0x01, b'x'],
            );
            close_code_from_client(&mut ws)
        });
        let out = drive(mode, &url, Config::builder(), passive());
        let close = out
            .closed()
            .unwrap_or_else(|| panic!("{mode:?}: no close: {:?}", out.recs));
        assert_eq!(u16::from(close.code), 1000, "{mode:?}");
        assert!(out.texts().is_empty(), "{mode:?}: {:?}", out.texts());
        assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
        assert_eq!(server.join().unwrap(), Some(1000), "{mode:?}: the answer");
    }
}

#[test]
fn the_servers_close_answer_and_its_fin_arriving_together_end_the_connection_at_once() {
    // We close; the server answers and drops TCP at once, so its Close and its FIN usually reach
    // us in one readiness event. The end of the stream must be seen now, not when
    // `close_timeout` passes.
    for mode in MODES {
        for _ in 0..5 {
            let (url, server) = ws_server(|mut ws| loop {
                match ws.read() {
                    Ok(Message::Close(_)) => {
                        let _ = ws.flush();
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            });
            // Far longer than the bound below: waiting for it cannot pass for "at once".
            const CLOSE_TIMEOUT: Duration = Duration::from_secs(20);
            let (closing_tx, closing_rx) = crossbeam_channel::bounded(1);
            let out = drive(
                mode,
                &url,
                Config::builder().close_timeout(CLOSE_TIMEOUT),
                Box::new(move |rec, act| {
                    if let Rec::Activated(_) = rec {
                        let _ = closing_tx.try_send(Instant::now());
                        act.close(1000, "bye").unwrap();
                    }
                }),
            );
            // From our close to the client's end (connecting does not count).
            let took = closing_rx.try_recv().expect("the script closed").elapsed();
            server.join().unwrap();
            assert!(out.closed().is_some(), "{mode:?}: {:?}", out.recs);
            assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
            assert!(
                took < CLOSE_TIMEOUT / 4,
                "{mode:?}: took {took:?} (waited for the close timeout?)"
            );
        }
    }
}

/// Sends raw frames (which would break the protocol or the close handshake behind the session's
/// back) between two valid messages, and records what each raw send returned.
#[derive(Default)]
struct RawFrames {
    refused: Vec<String>,
}

impl syncws::Handler for RawFrames {
    fn on_activated(&mut self, ctx: &mut syncws::Context<'_>) {
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        use tungstenite::protocol::frame::Frame;
        ctx.send_text("before").unwrap();
        let mut reserved_bits = Frame::message("rsv1", OpCode::Data(Data::Text), true);
        reserved_bits.header_mut().rsv1 = true;
        let raw = [
            Frame::ping(vec![0u8; 200]),
            reserved_bits,
            // Opens a fragmented message that "after" would then break into.
            Frame::message("fragment", OpCode::Data(Data::Text), false),
            Frame::close(None),
        ];
        for frame in raw {
            match ctx.send(Message::Frame(frame)) {
                Err(e @ Error::RawFrame) => self.refused.push(e.to_string()),
                other => panic!("a raw frame must be refused, got {other:?}"),
            }
        }
        ctx.send_text("after").unwrap();
        ctx.close(1000, "done").unwrap();
    }
}

#[test]
fn raw_frames_are_refused_and_only_valid_messages_reach_the_wire() {
    let (addr, server) = raw_server(|tcp| {
        let (_, mut ws) = accept_by_hand(tcp, "");
        let mut got = Vec::new();
        loop {
            match ws.read() {
                Ok(Message::Close(frame)) => {
                    let _ = ws.flush();
                    return Ok((got, frame.map(|f| f.code)));
                }
                Ok(m) => got.push(m),
                Err(e) => return Err(format!("after {got:?}: {e}")),
            }
        }
    });
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let client =
            syncws::BlockingClient::connect(&format!("ws://{addr}/"), &Config::default()).unwrap();
        let mut handler = RawFrames::default();
        client.run(&mut handler);
        let _ = tx.send(handler);
    });
    let handler = rx.recv_timeout(TEST_DEADLINE).expect("the client ends");
    assert_eq!(
        handler.refused,
        vec!["raw frames cannot be sent: use text, binary, ping, pong or close"; 4]
    );
    let (got, code) = server
        .join()
        .unwrap()
        .expect("only valid frames on the wire");
    assert_eq!(got, [Message::text("before"), Message::text("after")]);
    assert_eq!(code, Some(CloseCode::Normal));
}

#[test]
fn a_reset_by_the_peer_is_a_connection_reset_in_every_mode() {
    for mode in MODES {
        let (addr, server) = raw_server(|tcp| {
            let (_, mut ws) = accept_by_hand(tcp, "");
            ws.send(Message::text("one")).unwrap();
            // The client's answer proves "one" arrived before the reset.
            let answer = ws.read().unwrap();
            // Linger 0: close sends RST instead of FIN.
            socket2::SockRef::from(ws.get_ref())
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(ws);
            answer
        });
        let out = drive(
            mode,
            &format!("ws://{addr}/"),
            Config::builder(),
            Box::new(|rec, act| {
                if let Rec::Text(_) = rec {
                    act.text("got it").unwrap();
                }
            }),
        );
        assert_eq!(server.join().unwrap(), Message::text("got it"), "{mode:?}");
        assert_eq!(out.texts(), ["one"], "{mode:?}");
        assert!(
            matches!(out.errors[..], [Error::ConnectionReset]),
            "{mode:?}: {:?}",
            out.recs
        );
        assert!(out.closed().is_none(), "{mode:?}: not a normal close");
    }
}
