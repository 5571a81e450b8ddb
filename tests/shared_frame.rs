//! A message framed once and sent to many connections (a server's broadcast) arrives intact at
//! every one: as the same bytes where the connection neither masks nor compresses, framed again
//! where it compresses (its own context) or masks (a client). The server connections run both
//! ways (`util::SIDES`): each on a thread of its own, and adopted by a `ConnectionSet`.

mod util;

use crossbeam_channel::bounded;
use syncws::{
    BlockingClient, Command, CommandSender, Config, Context, DeflateConfig, Handler,
    ServerConnection, SharedFrame,
};
use util::*;

/// Collects text messages; closes after `want`.
struct Collect {
    want: usize,
    got: Vec<String>,
}

impl Handler for Collect {
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        self.got.push(text.to_owned());
        if self.got.len() == self.want {
            ctx.close(1000, "").unwrap();
        }
    }
}

#[test]
fn one_frame_reaches_every_server_connection_compressed_or_not() {
    for side in SIDES {
        const CLIENTS: usize = 3;
        let (listener, addr) = bind();
        let (handles_tx, handles_rx) = bounded(CLIENTS);
        let server = std::thread::spawn(move || {
            let config = Config::builder()
                .deflate(Some(DeflateConfig::new().threshold(0)))
                .build()
                .unwrap();
            let mut threads = Vec::new();
            for _ in 0..CLIENTS {
                let (tcp, _) = listener.accept().unwrap();
                let conn = ServerConnection::accept(tcp, None, &config).unwrap();
                handles_tx
                    .send((conn.handle(), conn.deflate().is_some()))
                    .unwrap();
                threads.push(std::thread::spawn(move || {
                    serve(side, conn, &mut Echo::default())
                }));
            }
            for t in threads {
                t.join().unwrap();
            }
        });
        let url = format!("ws://{addr}/");
        // Two plain clients (tungstenite, no compression) and one that compresses.
        let plain: Vec<_> = (0..2)
            .map(|_| connect_timed(url.as_str()).unwrap().0)
            .collect();
        let compressing = BlockingClient::connect(
            &url,
            &Config::builder()
                .deflate(Some(DeflateConfig::new()))
                .build()
                .unwrap(),
        )
        .unwrap();
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| handles_rx.recv_timeout(TEST_DEADLINE).unwrap())
            .collect();
        assert_eq!(
            handles.iter().filter(|(_, deflate)| *deflate).count(),
            1,
            "exactly one connection agreed compression"
        );
        let frames: Vec<SharedFrame> = (0..50)
            .map(|i| SharedFrame::text(format!(r#"{{"ev":"msg","seq":{i},"text":"hello, room"}}"#)))
            .collect();
        for frame in &frames {
            for (handle, _) in &handles {
                handle.send(Command::SendShared(frame.clone())).unwrap();
            }
        }
        let expected: Vec<String> = (0..50)
            .map(|i| format!(r#"{{"ev":"msg","seq":{i},"text":"hello, room"}}"#))
            .collect();
        let (done_tx, done_rx) = bounded(1);
        std::thread::spawn(move || {
            let mut collect = Collect {
                want: 50,
                got: Vec::new(),
            };
            compressing.run(&mut collect);
            let _ = done_tx.send(collect.got);
        });
        for mut ws in plain {
            let got: Vec<String> = (0..50)
                .map(|_| ws.read().unwrap().into_text().unwrap().to_string())
                .collect();
            assert_eq!(got, expected, "{side:?}: plain client");
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        }
        assert_eq!(
            done_rx.recv_timeout(TEST_DEADLINE).unwrap(),
            expected,
            "{side:?}: compressing client"
        );
        server.join().unwrap();
    }
}

/// A server connection's handler that hands every data message it gets to every connection
/// (itself included) as one shared frame: a chat room's broadcast, from a hook.
struct Broadcast {
    me: usize,
    room: std::sync::Arc<std::sync::Mutex<Vec<CommandSender>>>,
    errors: Vec<String>,
}

impl Broadcast {
    fn broadcast(&mut self, ctx: &mut Context<'_>, frame: SharedFrame) {
        ctx.send_shared(&frame).unwrap();
        for (i, member) in self.room.lock().unwrap().iter().enumerate() {
            if i != self.me {
                member.send(Command::SendShared(frame.clone())).unwrap();
            }
        }
    }
}

impl Handler for Broadcast {
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        self.broadcast(ctx, SharedFrame::text(text.to_owned()));
    }
    fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        self.broadcast(ctx, SharedFrame::binary(data.to_vec()));
    }
    fn on_error(&mut self, _: &mut Context<'_>, error: &syncws::Error) {
        self.errors.push(error.to_string());
    }
}

#[test]
fn a_hook_broadcasts_a_shared_frame_to_every_connection_and_a_client_can_send_one() {
    for side in SIDES {
        const MEMBERS: usize = 3;
        let (listener, addr) = bind();
        let (ready_tx, ready_rx) = bounded(1);
        let server = std::thread::spawn(move || {
            let room = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut threads = Vec::new();
            for me in 0..MEMBERS {
                let (tcp, _) = listener.accept().unwrap();
                let conn = ServerConnection::accept(tcp, None, &Config::default()).unwrap();
                room.lock().unwrap().push(conn.handle());
                let mut member = Broadcast {
                    me,
                    room: room.clone(),
                    errors: Vec::new(),
                };
                threads.push(std::thread::spawn(move || {
                    serve(side, conn, &mut member);
                    member.errors
                }));
            }
            ready_tx.send(()).unwrap();
            let errors: Vec<Vec<String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            // The room outlives its members' connections: drop it last.
            drop(room);
            errors
        });
        let url = format!("ws://{addr}/");
        // Two listeners (tungstenite) and the speaker (ours, which masks, so it frames a shared
        // frame's payload itself).
        let listeners: Vec<_> = (0..MEMBERS - 1)
            .map(|_| connect_timed(url.as_str()).unwrap().0)
            .collect();
        let speaker = BlockingClient::connect(&url, &Config::default()).unwrap();
        ready_rx
            .recv_timeout(TEST_DEADLINE)
            .expect("every member is in the room");
        struct Speaker(Vec<tungstenite::Message>);
        impl Handler for Speaker {
            fn on_activated(&mut self, ctx: &mut Context<'_>) {
                ctx.send_shared(&SharedFrame::text("to everyone")).unwrap();
                ctx.send_shared(&SharedFrame::binary(vec![1u8, 2, 3]))
                    .unwrap();
            }
            fn on_text_message(&mut self, _: &mut Context<'_>, text: &str) {
                self.0.push(tungstenite::Message::text(text));
            }
            fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
                self.0.push(tungstenite::Message::binary(data.to_vec()));
                ctx.close(1000, "").unwrap();
            }
        }
        let heard = within_deadline(move || {
            let mut me = Speaker(Vec::new());
            speaker.run(&mut me);
            me.0
        });
        let expected = [
            tungstenite::Message::text("to everyone"),
            tungstenite::Message::binary(vec![1u8, 2, 3]),
        ];
        assert_eq!(heard, expected, "the speaker hears its own broadcast");
        for (i, mut ws) in listeners.into_iter().enumerate() {
            let got: Vec<_> = (0..2).map(|_| ws.read().unwrap()).collect();
            assert_eq!(got, expected, "{side:?}: listener {i}");
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        }
        let errors = server.join().unwrap();
        assert!(errors.iter().all(Vec::is_empty), "{errors:?}");
    }
}
