//! File descriptors are a budget (a server holds thousands of connections under a per-process
//! limit): a connection costs its socket and one waker, nothing more; in a set, its socket
//! alone. One test in its own
//! binary, so no other test opens descriptors while it counts. Linux only: it counts
//! /proc/self/fd.
#![cfg(target_os = "linux")]

mod util;

use crossbeam_channel::bounded;
use syncws::{
    BlockingClient, Config, ConnectionSet, Context, Handler, NonBlockingClient, ServerConnection,
    ThreadedClient,
};
use util::*;

/// The descriptors a waker holds: an eventfd on Linux; a pipe's two ends in the portable
/// backend (`--cfg syncws_portable`, what macOS and the BSDs run).
const WAKER_FDS: usize = if cfg!(syncws_portable) { 2 } else { 1 };

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Counts the descriptors the process holds beyond `before` when the connection starts
/// running (its first hook, on the thread that runs it).
struct CountAtStart {
    before: usize,
    counted: crossbeam_channel::Sender<usize>,
}

impl Handler for CountAtStart {
    fn on_activated(&mut self, _: &mut Context<'_>) {
        let _ = self.counted.send(open_fds() - self.before);
    }
}

#[test]
fn a_connection_costs_its_socket_and_one_waker() {
    // Server side, on its own thread: the accepted socket exists before; the handshake adds
    // nothing, and running adds the waker.
    let (listener, addr) = bind();
    let (counts_tx, counts_rx) = bounded(2);
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let before = open_fds();
        let conn = ServerConnection::accept(tcp, None, &Config::default()).unwrap();
        counts_tx.send(open_fds() - before).unwrap();
        conn.run(&mut CountAtStart {
            before,
            counted: counts_tx,
        });
    });
    let (mut ws, _) = connect_timed(format!("ws://{addr}/")).unwrap();
    let accepted = counts_rx.recv_timeout(TEST_DEADLINE).unwrap();
    let running = counts_rx.recv_timeout(TEST_DEADLINE).unwrap();
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    server.join().unwrap();
    assert_eq!(accepted, 0, "an accepted connection holds its socket only");
    assert_eq!(
        running, WAKER_FDS,
        "a server connection run on its own thread adds only its waker's descriptors"
    );
    assert_eq!(ServerConnection::DESCRIPTORS, 1 + WAKER_FDS);

    // Server side, in a set: a connection costs its socket alone, however many there are
    // (the set's own wait and waker are there before any).
    let mut set = ConnectionSet::new().unwrap();
    let handle = set.handle();
    let set_thread = std::thread::spawn(move || set.run_until_stopped());
    let (listener, addr) = bind();
    let (counts_tx, counts_rx) = bounded(1);
    let mut clients = Vec::new();
    let before = open_fds();
    for n in 1..=10 {
        let client = std::thread::spawn(move || connect_timed(format!("ws://{addr}/")).unwrap().0);
        let (tcp, _) = listener.accept().unwrap();
        let conn = ServerConnection::accept(tcp, None, &Config::server_defaults()).unwrap();
        clients.push(client.join().unwrap());
        handle
            .adopt(
                conn,
                CountAtStart {
                    before,
                    counted: counts_tx.clone(),
                },
            )
            .unwrap();
        // The client's socket and the server's: two per connection in this process.
        assert_eq!(
            counts_rx.recv_timeout(TEST_DEADLINE).unwrap(),
            2 * n,
            "connection {n} in a set: its socket alone (+ the client's, in this test)"
        );
    }
    handle.close_all(1001, "done").unwrap();
    handle.stop().unwrap();
    for mut ws in clients {
        while ws.read().is_ok() {}
    }
    set_thread.join().unwrap();

    // Clients: the socket and the waker. The test server runs in this process too, so its
    // accepted socket (there once the handshake is done) counts as well: 3 in all (4 with a
    // pipe waker).
    type Connect = fn(&str) -> Box<dyn std::any::Any>;
    let clients: [(&str, Connect); 3] = [
        ("blocking", |url| {
            Box::new(BlockingClient::connect(url, &Config::default()).unwrap())
        }),
        ("non-blocking", |url| {
            Box::new(NonBlockingClient::connect(url, &Config::default()).unwrap())
        }),
        ("threaded", |url| {
            Box::new(ThreadedClient::connect(url, &Config::default()).unwrap())
        }),
    ];
    for (mode, connect) in clients {
        let (url, server) = ws_server(echo);
        let before = open_fds();
        let client = connect(&url);
        assert_eq!(
            open_fds() - before,
            2 + WAKER_FDS,
            "{mode} client: socket + waker (+ the server's socket)"
        );
        drop(client);
        server.join().unwrap();
    }
}
