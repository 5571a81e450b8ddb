//! What an idle server connection costs in a `ConnectionSet`: this process accepts N
//! WebSocket connections (the handshake on the accept loop, then `SetHandle::adopt` into one
//! set running on its own thread) from a child process that opens them and keeps them idle,
//! then prints this process's RSS and open descriptors per connection (Linux: /proc/self).
//!
//! ```text
//! cargo run --release --example idle_server_set            # 10,000 connections
//! cargo run --release --example idle_server_set -- 2000    # 2,000
//! ```
//!
//! Both processes need a descriptor limit above N (`ulimit -n`). Figures are per connection
//! beyond the first 100 (warm-up: allocator arenas, code pages), with `Config::server_defaults()`
//! (4 KiB read buffer).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use syncws::{Config, ConnectionSet, Context, Handler, ServerConnection};

/// Connections opened before the first measurement.
const WARM_UP: usize = 100;
/// Longest wait for the set to start a batch of connections.
const PATIENCE: Duration = Duration::from_secs(120);

/// Echoes text; says when its connection has started (its first pass, which touches the
/// buffers an idle connection keeps).
struct Echo(crossbeam_channel::Sender<()>);
impl Handler for Echo {
    fn on_activated(&mut self, _: &mut Context<'_>) {
        let _ = self.0.send(());
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        let _ = ctx.send_text(text);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--clients") {
        return clients(args[2].parse()?, args[3].parse()?);
    }
    let n: usize = args.get(1).map_or(Ok(10_000), |a| a.parse())?;
    assert!(n > WARM_UP, "more than {WARM_UP} connections");

    let mut set = ConnectionSet::new()?;
    let handle = set.handle();
    let set_thread = std::thread::spawn(move || set.run_until_stopped());
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--clients", &addr.to_string(), &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let config = Config::server_defaults();
    let (started_tx, started_rx) = crossbeam_channel::unbounded();
    let started = Instant::now();
    let accept = |count: usize| -> Result<(), Box<dyn std::error::Error>> {
        for _ in 0..count {
            let (tcp, _) = listener.accept()?;
            let conn = ServerConnection::accept(tcp, None, &config)?;
            handle.adopt(conn, Echo(started_tx.clone()))?;
        }
        // Until the set has run each one's first pass.
        for _ in 0..count {
            started_rx.recv_timeout(PATIENCE)?;
        }
        Ok(())
    };
    accept(WARM_UP)?;
    let (rss_before, fds_before) = (rss_kib(), open_fds());
    accept(n - WARM_UP)?;
    let opened = started.elapsed();
    // The child says once every handshake is done on its side; all sit idle from then on.
    let mut ready = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut ready)?;
    let (rss_after, fds_after) = (rss_kib(), open_fds());
    let added = (n - WARM_UP) as f64;
    println!(
        "{n} idle server connections in one ConnectionSet (accepted and adopted in {:.2} s): \
         {:.1} KiB RSS and {:.2} descriptors per connection beyond the first {WARM_UP} \
         (RSS {rss_before} -> {rss_after} KiB, descriptors {fds_before} -> {fds_after})",
        opened.as_secs_f64(),
        (rss_after.saturating_sub(rss_before)) as f64 / added,
        (fds_after.saturating_sub(fds_before)) as f64 / added,
    );
    handle.close_all(1001, "done")?;
    handle.stop()?;
    drop(child.stdin.take());
    set_thread.join().expect("the set's thread");
    child.wait()?;
    Ok(())
}

/// The child: open `n` connections to `addr`, each upgraded, and keep them open (idle) until
/// stdin closes. Blocking tungstenite: a small client, outside the measured process.
fn clients(addr: SocketAddr, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = TcpStream::connect(addr)?;
        let (ws, _) = tungstenite::client(format!("ws://{addr}/"), tcp)?;
        open.push(ws);
    }
    println!("ready");
    std::io::stdout().flush()?;
    // Until the parent is done (its end of our stdin closes).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(open);
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}
