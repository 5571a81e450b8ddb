//! Figures for the chat server on this machine (printed, not asserted):
//! - broadcast: 1 sender -> 100 receivers in one room, deliveries per second (the sender keeps
//!   a window of messages in flight and counts its own copies as acknowledgements);
//! - idle: the server's resident memory per idle connection, with 1,000 connections (the
//!   `chat-server` binary in its own process, measured from /proc).
//!
//! ```text
//! cargo build --release -p syncws-chat --bins --examples && target/release/examples/chat_bench
//! ```

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use syncws::{Config, Event, ThreadedClient};
use syncws_chat::{Options, Server};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    broadcast(100, 20_000, 100)?;
    idle(1000)?;
    Ok(())
}

fn next_msg(c: &ThreadedClient) -> Result<Value, BoxError> {
    loop {
        match c.event_rx.recv_timeout(Duration::from_secs(30))? {
            Event::TextMessage(t) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["ev"] == "msg" {
                    return Ok(v);
                }
            }
            Event::Quit => return Err("connection ended".into()),
            _ => {}
        }
    }
}

fn broadcast(receivers: usize, messages: usize, size: usize) -> Result<(), BoxError> {
    let dir = std::env::temp_dir().join(format!("chat-bench-{}", std::process::id()));
    let options = Options::parse_from([
        "chat-server",
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "off",
        "--rate",
        "1000000",
        "--burst",
        "1000000",
        // Every client of a benchmark comes from 127.0.0.1.
        "--max-per-ip",
        "1000000",
        "--data-dir",
        dir.to_str().ok_or("path")?,
    ]);
    let server = Server::start(&options)?;
    let url = format!("ws://{}/", server.ws_addr.ok_or("no listener")?);
    let join = |c: &ThreadedClient| -> Result<(), BoxError> {
        c.control_tx
            .send_text(json!({"op": "join", "room": "bench"}).to_string())
            .map_err(|_| "send")?;
        loop {
            if let Event::TextMessage(t) = c.event_rx.recv_timeout(Duration::from_secs(30))? {
                if t.as_str().contains("\"joined\"") && t.as_str().contains("\"bench\"") {
                    return Ok(());
                }
            }
        }
    };
    let sender = ThreadedClient::connect(&url, &Config::default())?;
    join(&sender)?;
    let mut readers = Vec::new();
    for _ in 0..receivers {
        let c = ThreadedClient::connect(&url, &Config::default())?;
        join(&c)?;
        readers.push(c);
    }
    let started = Instant::now();
    let threads: Vec<_> = readers
        .into_iter()
        .map(|c| {
            std::thread::spawn(move || -> Result<(), String> {
                for _ in 0..messages {
                    next_msg(&c).map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    let text = "x".repeat(size);
    const WINDOW: usize = 100;
    let mut sent = 0;
    let mut acked = 0;
    while acked < messages {
        while sent < messages && sent - acked < WINDOW {
            sender
                .control_tx
                .send_text(json!({"op": "say", "room": "bench", "text": text}).to_string())
                .map_err(|_| "send")?;
            sent += 1;
        }
        next_msg(&sender)?;
        acked += 1;
    }
    for t in threads {
        t.join().map_err(|_| "reader panicked")??;
    }
    let elapsed = started.elapsed();
    let deliveries = (receivers + 1) * messages;
    let commits = syncws_chat::metrics::Metrics::get(&server.metrics().commits_total);
    println!(
        "broadcast: 1 sender -> {receivers} receivers (+ its own copy), {messages} x {size} B: \
         {deliveries} deliveries in {:.2} s = {:.0} deliveries/s ({:.0} messages/s stored, {commits} commits)",
        elapsed.as_secs_f64(),
        deliveries as f64 / elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
    );
    server.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

fn idle(connections: usize) -> Result<(), BoxError> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .ok_or("no target dir")?
        .join("chat-server");
    let dir = std::env::temp_dir().join(format!("chat-bench-idle-{}", std::process::id()));
    let mut child = Process::new(&bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "off",
            // Every client of a benchmark comes from 127.0.0.1, all at once.
            "--max-per-ip",
            "1000000",
            "--max-handshakes",
            "100000",
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "{}: {e} (build it: cargo build --release -p syncws-chat --bins)",
                bin.display()
            )
        })?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
    let addr = loop {
        let line = lines.next().ok_or("no URL printed")??;
        if let Some(rest) = line.strip_prefix("chat-server listening on ws://") {
            break rest.split('/').next().ok_or("url")?.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let url = format!("ws://{addr}/");
    // One connection first, so the baseline includes what any first connection brings.
    let mut clients = Vec::new();
    let open = |clients: &mut Vec<_>| -> Result<(), BoxError> {
        let tcp = TcpStream::connect(&addr)?;
        let (mut ws, _) = tungstenite::client(url.as_str(), tcp)?;
        // welcome, then joined lobby: the connection is registered everywhere.
        for _ in 0..2 {
            ws.read()?;
        }
        clients.push(ws);
        Ok(())
    };
    open(&mut clients)?;
    let before = rss_kib(child.id())?;
    for _ in 1..connections {
        open(&mut clients)?;
    }
    let after = rss_kib(child.id())?;
    let per = (after - before) as f64 / (connections - 1) as f64;
    println!(
        "idle: {connections} connections: server RSS {before} KiB with one, {after} KiB with all = {per:.1} KiB per idle connection (thread, stack in use, buffers, channel)"
    );
    drop(clients);
    let _ = Process::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
