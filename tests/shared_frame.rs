//! A message framed once and sent to many connections (a server's broadcast) arrives intact at
//! every one: as the same bytes where the connection neither masks nor compresses, framed again
//! where it compresses (its own context) or masks (a client).

mod util;

use crossbeam_channel::bounded;
use syncws::{
    BlockingClient, CloseInfo, Command, Config, Context, DeflateConfig, Handler, ServerConnection,
    SharedFrame,
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
            threads.push(std::thread::spawn(move || conn.run(&mut Echo::default())));
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
        assert_eq!(got, expected, "plain client");
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    }
    assert_eq!(
        done_rx.recv_timeout(TEST_DEADLINE).unwrap(),
        expected,
        "compressing client"
    );
    server.join().unwrap();
}

#[test]
fn a_hook_broadcasts_a_shared_frame_and_a_client_can_send_one() {
    // The client masks, so it frames the payload itself; the server (tungstenite) checks the
    // masking and echoes.
    let (url, server) = ws_server(echo);
    struct Shared(usize);
    impl Handler for Shared {
        fn on_activated(&mut self, ctx: &mut Context<'_>) {
            ctx.send_shared(&SharedFrame::text("text once")).unwrap();
            ctx.send_shared(&SharedFrame::binary(vec![1u8, 2, 3]))
                .unwrap();
        }
        fn on_text_message(&mut self, _: &mut Context<'_>, text: &str) {
            assert_eq!(text, "text once");
            self.0 += 1;
        }
        fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
            assert_eq!(data, [1, 2, 3]);
            self.0 += 1;
            ctx.close(1000, "").unwrap();
        }
        fn on_connection_closed(&mut self, _: &mut Context<'_>, close: &CloseInfo) {
            assert_eq!(u16::from(close.code), 1000);
        }
    }
    let client = BlockingClient::connect(&url, &Config::default()).unwrap();
    let mut handler = Shared(0);
    client.run(&mut handler);
    assert_eq!(handler.0, 2, "both echoed");
    assert_eq!(server.join().unwrap(), 2);
}
