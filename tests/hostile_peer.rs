//! Peers that do what no well-behaved peer does: ping as fast as they can and never read.
//! Whatever the core writes on its own (pongs, the close reply) counts against the queue
//! bound: the connection waits within it or ends in a typed error; memory never grows.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use syncws::{Config, Error, ServerConnection, TimeoutKind};
use util::*;

/// A masked client Ping frame with a 125-byte payload.
fn ping_frame() -> Vec<u8> {
    let mut f = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    f.extend((0..125u8).map(|i| i ^ [1, 2, 3, 4][usize::from(i % 4)]));
    f
}

/// A raw client: it upgrades, then writes pings as fast as the server takes them and never
/// reads (its receive buffer is 4 KiB), until `stop`.
fn ping_flooder(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&addr.into()).unwrap();
        let mut tcp: TcpStream = socket.into();
        write!(
            tcp,
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        tcp.set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let burst: Vec<u8> = std::iter::repeat_n(ping_frame(), 64).flatten().collect();
        let mut pings = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match tcp.write_all(&burst) {
                Ok(()) => pings += 64,
                // The server stopped reading (its queue is full): we keep trying until told.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        pings
    })
}

/// Review scenario A: a `server_defaults()` connection's queue reached 259 MB against its
/// 1 MiB bound in 8 s. Now it stays within the bound (plus one pong), and a peer that never
/// reads ends in `Timeout(Write)`: on a thread of its own and in a set alike.
#[test]
fn a_peer_that_pings_and_never_reads_stays_within_the_queue_bound() {
    for side in SIDES {
        const BOUND: usize = 64 << 10;
        let (listener, addr) = bind();
        let stop = Arc::new(AtomicBool::new(false));
        let flooder = ping_flooder(addr, stop.clone());
        let (tcp, _) = listener.accept().unwrap();
        let config = Config::server_builder()
            .max_queued_bytes(BOUND)
            .write_timeout(Some(Duration::from_secs(1)))
            .build()
            .unwrap();
        let conn = ServerConnection::accept(tcp, None, &config).unwrap();
        let metrics = conn.metrics();
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let watching = Arc::new(AtomicBool::new(true));
        let watcher = {
            let (metrics, peak, watching) = (metrics.clone(), peak.clone(), watching.clone());
            std::thread::spawn(move || {
                while watching.load(Ordering::Relaxed) {
                    peak.fetch_max(metrics.queued_bytes(), Ordering::Relaxed);
                    std::thread::yield_now();
                }
            })
        };
        struct Errors(Vec<Error>);
        impl syncws::Handler for Errors {
            fn on_error(&mut self, _: &mut syncws::Context<'_>, e: &Error) {
                self.0.push(match e {
                    Error::Timeout(k) => Error::Timeout(*k),
                    other => Error::Io(std::io::Error::other(other.to_string())),
                });
            }
        }
        let mut errors = Errors(Vec::new());
        let started = std::time::Instant::now();
        let run = std::thread::spawn(move || {
            serve(side, conn, &mut errors);
            errors
        });
        let errors = run.join().unwrap();
        watching.store(false, Ordering::Relaxed);
        watcher.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        let pings = flooder.join().unwrap();
        let peak = peak.load(Ordering::Relaxed);
        eprintln!(
        "{side:?}: pong flood: {pings} pings in {:?}; peak queued {peak} bytes against a bound \
         of {BOUND}",
        started.elapsed()
    );
        assert!(
            peak <= (BOUND + 131) as u64,
            "{side:?}: peak queued {peak} bytes"
        );
        assert!(
            errors
                .0
                .iter()
                .any(|e| matches!(e, Error::Timeout(TimeoutKind::Write))),
            "{side:?}: {:?}",
            errors.0.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
    }
}
