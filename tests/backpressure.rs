//! A send that meets a full socket is queued exactly once, goes out by itself when the socket
//! drains, and is never duplicated; the queue is bounded and "full" is a clear error.

mod util;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use syncws::{Config, Error, TimeoutKind};
use tungstenite::Message;
use util::*;

const BIG: usize = 4 << 20;
const COUNT: usize = 8;

/// Message `i`: its index in every byte, so a lost, duplicated or reordered message shows.
fn big(i: usize) -> Vec<u8> {
    vec![i as u8; BIG]
}

/// Socket buffers pinned on both ends, so what the tests send (32 MiB) cannot fit in the
/// kernel and sends really do meet a full socket.
const SOCKET_BUFFER: usize = 256 << 10;

fn config() -> syncws::ConfigBuilder {
    Config::builder().send_buffer_size(Some(SOCKET_BUFFER))
}

/// A server that reads nothing until `go`, then reads until the client's Close and returns the
/// index byte of each message it got.
fn stalled_server(go: Receiver<()>) -> (String, std::thread::JoinHandle<Vec<u8>>) {
    ws_server_small_rcvbuf(SOCKET_BUFFER, move |mut ws| {
        go.recv_timeout(TEST_DEADLINE).expect("go signal");
        let (got, _) = read_until_close(&mut ws);
        while ws.read().is_ok() {}
        got.into_iter()
            .map(|m| match m {
                Message::Binary(b) => {
                    assert_eq!(b.len(), BIG, "message intact");
                    assert!(b.iter().all(|&x| x == b[0]), "message not corrupted");
                    b[0]
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    })
}

/// What each send returned, shared with the test.
type SendResults = Arc<Mutex<Vec<Result<(), String>>>>;

/// Send `COUNT` big messages while the server is not reading, stop at the first refusal, then
/// let the server read, and close. Returns what each send returned.
fn send_all_then_release(go: Sender<()>) -> (Script, SendResults) {
    let results = Arc::new(Mutex::new(Vec::new()));
    let r = results.clone();
    let script: Script = Box::new(move |rec, act| {
        if let Rec::Activated(_) = rec {
            let mut r = r.lock().unwrap();
            for i in 0..COUNT {
                // Never waiting: the server reads nothing until all were offered.
                let result = act.try_binary(&big(i));
                let refused = result.is_err();
                r.push(result);
                if refused {
                    break;
                }
            }
            go.send(()).unwrap();
            act.close(1000, "sent").unwrap();
        }
    });
    (script, results)
}

#[test]
fn sends_into_a_full_socket_go_out_once_when_it_drains() {
    for mode in MODES {
        let (go_tx, go_rx) = bounded(1);
        let (url, server) = stalled_server(go_rx);
        let (script, results) = send_all_then_release(go_tx);
        let out = drive(mode, &url, config(), script);
        assert!(
            results.lock().unwrap().iter().all(Result::is_ok),
            "{mode:?}: the default queue takes them all"
        );
        let got = server.join().unwrap();
        let expected: Vec<u8> = (0..COUNT as u8).collect();
        assert_eq!(
            got, expected,
            "{mode:?}: each message exactly once, in order"
        );
        assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
        assert!(out.closed().is_some(), "{mode:?}: closed after draining");
    }
}

#[test]
fn a_full_queue_is_a_clear_error_and_nothing_accepted_is_lost() {
    for mode in MODES {
        let (go_tx, go_rx) = bounded(1);
        let (url, server) = stalled_server(go_rx);
        let (script, results) = send_all_then_release(go_tx);
        let out = drive(mode, &url, config().max_queued_bytes(10 << 20), script);
        let results = results.lock().unwrap().clone();
        let got = server.join().unwrap();
        let accepted = results.iter().filter(|r| r.is_ok()).count();
        let refusal = results.last().unwrap().as_ref().unwrap_err();
        // A hook's send meets the full outbox; a command sender's meets its channel, bounded
        // in bytes as the outbox is (max_queued_bytes by default).
        let expected = if mode == Mode::Threaded {
            "sending on a full channel"
        } else {
            "send queue full"
        };
        assert!(
            refusal.starts_with(expected),
            "{mode:?}: clear error, got {refusal}"
        );
        assert!(
            (2..COUNT).contains(&accepted),
            "{mode:?}: accepted {accepted}"
        );
        assert_eq!(
            got,
            (0..accepted as u8).collect::<Vec<_>>(),
            "{mode:?}: exactly the accepted messages, once each"
        );
        assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
    }
}

#[test]
fn a_message_larger_than_the_whole_queue_is_refused_not_stalled() {
    for mode in MODES {
        let (url, server) = ws_server(|mut ws| read_until_close(&mut ws).0.len());
        let first = Arc::new(Mutex::new(None));
        let f = first.clone();
        let out = drive(
            mode,
            &url,
            Config::builder().max_queued_bytes(1 << 20),
            Box::new(move |rec, act| {
                if let Rec::Activated(_) = rec {
                    *f.lock().unwrap() = Some(act.binary(&vec![0u8; 2 << 20]));
                    act.text("small").unwrap();
                    act.close(1000, "").unwrap();
                }
            }),
        );
        assert_eq!(
            server.join().unwrap(),
            1,
            "{mode:?}: only the small message"
        );
        let first = first.lock().unwrap().clone().unwrap();
        if mode == Mode::Threaded {
            // The command was taken; the worker reports that it could never fit.
            assert!(first.is_ok());
            assert!(
                matches!(out.errors.as_slice(), [Error::QueueFull { .. }]),
                "threaded: {:?}",
                out.recs
            );
        } else {
            let e = first.unwrap_err();
            assert!(e.starts_with("send queue full"), "{mode:?}: {e}");
            assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
        }
    }
}

#[test]
fn queued_output_that_stops_moving_hits_the_write_timeout() {
    for mode in MODES {
        let (done_tx, done_rx) = bounded::<()>(1);
        let (url, server) = ws_server_small_rcvbuf(SOCKET_BUFFER, move |ws| {
            // Never read; hold the socket open until the test is over.
            let _ = done_rx.recv_timeout(TEST_DEADLINE);
            drop(ws);
        });
        let out = drive(
            mode,
            &url,
            config().write_timeout(Some(Duration::from_millis(300))),
            Box::new(|rec, act| {
                if let Rec::Activated(_) = rec {
                    for i in 0..COUNT {
                        act.binary(&big(i)).unwrap();
                    }
                }
            }),
        );
        done_tx.send(()).unwrap();
        server.join().unwrap();
        // The timeout, then what it left in the queue, counted: sent, as far as anyone knows,
        // are only the messages the socket took.
        match out.errors.as_slice() {
            [Error::Timeout(TimeoutKind::Write), unsent] => {
                let text = unsent.to_string();
                // (The harness carries errors it cannot clone as their text.)
                let n: usize = text
                    .split_once("the connection ended with ")
                    .and_then(|(_, t)| t.split(' ').next()?.parse().ok())
                    .unwrap_or_else(|| panic!("{mode:?}: {text}"));
                assert!((1..=COUNT).contains(&n), "{mode:?}: {text}");
            }
            other => panic!("{mode:?}: {other:?}"),
        }
    }
}
