//! How fast the operator's pages answer with a long history (printed, not asserted): fills a
//! data directory with EVENTS event-log lines (written by the server's own `EventLog`, the kinds
//! mixed as a busy server logs them) and DAYS days of stats samples (one per 5 s, as
//! `--stats-every 5` stores them), starts the server on it, and times `/report` for each window
//! and `/logs` (the newest page, and a filter for a rare kind that has to read back through
//! the files).
//!
//! ```text
//! cargo run --release -p syncws-chat --example pages_bench [EVENTS] [DAYS]   # 1000000 30
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use syncws_chat::eventlog::EventLog;
use syncws_chat::stats::{Sample, StatsDb, TOTALS};
use syncws_chat::{Options, Server};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let days: i64 = args.next().map_or(Ok(30), |a| a.parse())?;
    let dir = tempfile::Builder::new().prefix("pages-bench-").tempdir()?;

    let started = Instant::now();
    let log = EventLog::open(&dir.path().join("log"), 64 << 20)?;
    for i in 0..events {
        // One match in 10,000 lines: the rare kind the filter looks for.
        match i % 10_000 {
            0 => log.record(
                "match",
                json!({"room": format!("pair:{i:x}"), "ids": [i, i + 1]}),
            ),
            n if n % 50 == 1 => log.record(
                "connect",
                json!({"id": i, "peer": "127.0.0.1:50000", "tls": false}),
            ),
            n if n % 50 == 2 => log.record("join", json!({"id": i, "room": "lobby"})),
            _ => log.record(
                "msg",
                json!({"id": i % 3000, "room": "r", "seq": i, "bytes": 100}),
            ),
        }
    }
    log.flush();
    drop(log);
    let log_bytes: u64 = std::fs::read_dir(dir.path().join("log"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "event log: {events} lines, {:.1} MiB, written in {:.1} s",
        log_bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let samples = days * 86_400 / 5;
    {
        let db = StatsDb::open(&dir.path().join("stats.db"))?;
        let now = syncws_chat::now_ms();
        db.begin()?;
        for i in 0..samples {
            let mut s = Sample {
                ts: now - (samples - i) * 5_000,
                uptime_s: (i * 5) as u64,
                connections: (1000 + i % 500) as u64,
                threads: (1005 + i % 500) as u64,
                rss_bytes: 200 << 20,
                cpu_pct: 40.0 + (i % 20) as f64,
                latency_p50_us: Some(500),
                latency_p99_us: Some(5_000),
                closes: vec![(1000, i as u64), (4008, (i / 1000) as u64)],
                ..Sample::default()
            };
            for (k, t) in s.totals.iter_mut().enumerate() {
                *t = (i as u64) * (k as u64 + 1) * 10;
            }
            db.insert(&s)?;
        }
        db.commit()?;
    }
    println!(
        "stats: {samples} samples ({days} days at one per 5 s, {} totals each), stored in {:.1} s",
        TOTALS.len(),
        started.elapsed().as_secs_f64()
    );

    let options = Options::parse_from([
        "chat-server",
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "off",
        "--data-dir",
        dir.path().to_str().ok_or("path")?,
    ]);
    let server = Server::start(&options)?;
    let addr = server.ws_addr.ok_or("no listener")?;
    for path in [
        "/report?window=hour",
        "/report?window=day",
        "/report?window=week",
        "/report?window=all",
        "/logs",
        "/logs?kind=match",
        "/logs?kind=match&limit=500",
    ] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let (status, body) = get(addr, path)?;
            times.push(t.elapsed());
            if status != 200 {
                return Err(format!("{path}: HTTP {status}").into());
            }
            bytes = body.len();
        }
        times.sort();
        println!(
            "GET {path:<28} median {:>7.2} ms  max {:>7.2} ms  ({} KiB)",
            ms(times[2]),
            ms(times[4]),
            bytes / 1024
        );
    }
    server.shutdown(Duration::from_secs(5));
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), BoxError> {
    let mut tcp = TcpStream::connect(addr)?;
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)?;
    let status = answer.get(9..12).ok_or("short answer")?.parse()?;
    Ok((status, answer))
}
