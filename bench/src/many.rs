//! `syncws-bench --many`: one thread driving many connections (`ClientSet`), against an echo
//! server in a child process (tokio-tungstenite on a current-thread runtime: one core for the
//! server, one for the client, on these 2-core machines).
//!
//! ```text
//! cargo run --release -p syncws-bench -- --many                    # 10,000 / 1,000 connections
//! cargo run --release -p syncws-bench -- --many --quick            # 1,000 / 200, short windows
//! cargo run --release -p syncws-bench -- --many --conns N --echo-conns M --secs S --json
//! ```
//!
//! 1. **scale**: one connection, then `--conns` - 1 more added at once to one set: time until
//!    all are open (and each one's connect time), client RSS per connection beyond the first
//!    (VmRSS of this process), CPU while all sit idle (`getrusage`, % of one core), and the
//!    time `close_all` takes to close them all with a handshake. Run twice, each in a process
//!    of its own: with the default `Config`, and with `read_buffer_size` 4 KiB.
//! 2. **echo**: `--echo-conns` connections, each with one 32-byte message in flight (send, wait
//!    for the echo, send again) for `--secs`: messages per second and round-trip p50/p99/max,
//!    for a `ClientSet` (one thread), as many `ThreadedClient`s (a worker and an application
//!    thread each) and tokio-tungstenite tasks on one current-thread runtime.
//!
//! Every wait is bounded; the server child ends when our stdin closes.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use syncws::{ClientSet, CloseCode, Config, Context, Event, Handler, ThreadedClient};

use crate::sys;

const TEXT: &str = "0123456789abcdef0123456789abcdef";
/// Longest any phase may wait for its connections.
const PATIENCE: Duration = Duration::from_secs(120);

struct Opts {
    conns: usize,
    echo_conns: usize,
    secs: f64,
    idle_secs: f64,
    json: bool,
}

pub fn main(args: &[String]) -> ExitCode {
    let mut o = Opts {
        conns: 10_000,
        echo_conns: 1_000,
        secs: 3.0,
        idle_secs: 5.0,
        json: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().and_then(|v| v.parse::<f64>().ok());
        match a.as_str() {
            "--quick" => {
                o.conns = 1_000;
                o.echo_conns = 200;
                o.secs = 1.0;
                o.idle_secs = 1.0;
            }
            "--json" => o.json = true,
            "--conns" => o.conns = val().unwrap_or(10_000.0).max(2.0) as usize,
            "--echo-conns" => o.echo_conns = val().unwrap_or(1_000.0).max(1.0) as usize,
            "--secs" => o.secs = val().unwrap_or(3.0).max(0.1),
            "--idle-secs" => o.idle_secs = val().unwrap_or(5.0).max(0.1),
            other => {
                eprintln!("syncws-bench --many: unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    match run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncws-bench --many: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: &Opts) -> Result<(), String> {
    let server = Server::start()?;
    let url = format!("ws://{}/", server.addr);
    for name in ["default", "read-buffer-4k"] {
        let r = scale_in_child(name, &url, o)?;
        report(o, &format!("scale/{name}"), &r);
    }
    let set = echo_set(&url, o)?;
    report(o, "echo/syncws-set", &set);
    let threaded = echo_threaded(&url, o)?;
    report(o, "echo/syncws-threaded", &threaded);
    let tokio = echo_tokio(&url, o)?;
    report(o, "echo/tokio-tungstenite", &tokio);
    drop(server);
    Ok(())
}

fn report(o: &Opts, name: &str, fields: &serde_json::Value) {
    if o.json {
        let mut v = fields.clone();
        v["scenario"] = json!(name);
        println!("{v}");
    } else {
        let mut line = format!("{name:<26}");
        if let Some(map) = fields.as_object() {
            for (k, v) in map {
                line.push_str(&format!(" {k}={v}"));
            }
        }
        println!("{line}");
    }
}

// ----- the server child ---------------------------------------------------------------------

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start() -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("--serve-many")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn server: {e}"))?;
        let stdout = child.stdout.take().ok_or("no server stdout")?;
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .map_err(|e| e.to_string())?;
        let addr = first
            .trim()
            .parse()
            .map_err(|_| format!("server said {first:?}"))?;
        Ok(Server { child, addr })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The child: a tokio-tungstenite echo server on one thread, until stdin closes.
pub fn serve() -> ! {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("reuseaddr");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    socket.bind(&any.into()).expect("bind");
    // A deep backlog: thousands of connections arrive at once.
    socket.listen(16_384).expect("listen");
    socket.set_nonblocking(true).expect("nonblocking");
    let std_listener: std::net::TcpListener = socket.into();
    let addr = std_listener.local_addr().expect("addr");
    println!("{addr}");
    let _ = std::io::stdout().flush();
    std::thread::spawn(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
        std::process::exit(0);
    });
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    std::process::exit(0)
}

// ----- figures ------------------------------------------------------------------------------

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

// ----- scale --------------------------------------------------------------------------------

/// The configs the scale phase compares: the default, and a 4 KiB read buffer (tungstenite
/// keeps its read buffer, touched, for the life of a connection: 16 KiB by default).
fn scale_config(name: &str) -> Result<Config, String> {
    match name {
        "default" => Ok(Config::default()),
        "read-buffer-4k" => Config::builder()
            .read_buffer_size(4 << 10)
            .build()
            .map_err(|e| e.to_string()),
        other => Err(format!("unknown config {other:?}")),
    }
}

/// Each scale run in a process of its own, so that RSS counts only its connections (memory
/// freed by an earlier run would be reused and hide the cost).
fn scale_in_child(name: &str, url: &str, o: &Opts) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args([
            "--many-scale",
            name,
            url,
            &o.conns.to_string(),
            &o.idle_secs.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("scale child: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    if !out.status.success() {
        return Err(format!("scale child failed: {line}"));
    }
    serde_json::from_str(line).map_err(|e| format!("scale child said {line:?}: {e}"))
}

/// `--many-scale NAME URL N IDLE_SECS`: one scale run, one JSON line.
pub fn scale_child(args: &[String]) -> ExitCode {
    let run = || -> Result<serde_json::Value, String> {
        let [name, url, n, idle] = args else {
            return Err("usage: --many-scale NAME URL N IDLE_SECS".into());
        };
        let o = Opts {
            conns: n.parse().map_err(|_| "bad N")?,
            echo_conns: 0,
            secs: 0.0,
            idle_secs: idle.parse().map_err(|_| "bad IDLE_SECS")?,
            json: true,
        };
        scale(url, &scale_config(name)?, &o)
    };
    match run() {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Reports its connect time once open; records nothing else.
struct Opening {
    added: Instant,
    open: Sender<u64>,
    quit: Sender<bool>,
    closed_cleanly: bool,
}

impl Handler for Opening {
    fn on_activated(&mut self, _ctx: &mut Context<'_>) {
        let _ = self.open.send(self.added.elapsed().as_micros() as u64);
    }
    fn on_connection_closed(&mut self, _ctx: &mut Context<'_>, close: &syncws::CloseInfo) {
        self.closed_cleanly = close.code == CloseCode::Normal;
    }
    fn on_error(&mut self, _ctx: &mut Context<'_>, error: &syncws::Error) {
        eprintln!("scale: {error}");
    }
    fn on_quit(&mut self) {
        let _ = self.quit.send(self.closed_cleanly);
    }
}

fn scale(url: &str, config: &Config, o: &Opts) -> Result<serde_json::Value, String> {
    let n = o.conns;
    let (open_tx, open_rx) = bounded(n);
    let (quit_tx, quit_rx) = bounded(n);
    let opening = |open: &Sender<u64>, quit: &Sender<bool>| Opening {
        added: Instant::now(),
        open: open.clone(),
        quit: quit.clone(),
        closed_cleanly: false,
    };
    let rss_empty = rss_kib();
    let mut set = ClientSet::new().map_err(|e| e.to_string())?;
    set.add(url, config, opening(&open_tx, &quit_tx))
        .map_err(|e| e.to_string())?;
    let handle = set.handle();
    let runner = std::thread::spawn(move || set.run());
    open_rx
        .recv_timeout(PATIENCE)
        .map_err(|_| "the first connection did not open")?;
    let rss_one = rss_kib();

    let started = Instant::now();
    for _ in 1..n {
        handle
            .add(url, config, opening(&open_tx, &quit_tx))
            .map_err(|e| e.to_string())?;
    }
    let mut connect_us = Vec::with_capacity(n);
    for _ in 1..n {
        connect_us.push(
            open_rx
                .recv_timeout(PATIENCE)
                .map_err(|_| format!("only {} of {n} connections opened", connect_us.len() + 1))?,
        );
    }
    let all_open = started.elapsed();
    connect_us.sort_unstable();
    let rss_all = rss_kib();

    let cpu0 = sys::process_cpu_ns();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(o.idle_secs));
    let idle_cpu = (sys::process_cpu_ns() - cpu0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;

    let closing = Instant::now();
    handle
        .close_all(CloseCode::Normal, "done")
        .map_err(|e| e.to_string())?;
    let mut clean = 0;
    for _ in 0..n {
        if quit_rx
            .recv_timeout(PATIENCE)
            .map_err(|_| "a connection never quit")?
        {
            clean += 1;
        }
    }
    let close_time = closing.elapsed();
    runner.join().map_err(|_| "the set's thread panicked")?;
    let per_conn = (rss_all.saturating_sub(rss_one)) as f64 / (n - 1) as f64;
    Ok(json!({
        "conns": n,
        "open_all_s": (all_open.as_secs_f64() * 1000.0).round() / 1000.0,
        "connect_p50_ms": ms(percentile(&connect_us, 0.5)),
        "connect_p99_ms": ms(percentile(&connect_us, 0.99)),
        "connect_max_ms": ms(*connect_us.last().unwrap_or(&0)),
        "rss_empty_kib": rss_empty,
        "rss_one_kib": rss_one,
        "rss_all_kib": rss_all,
        "rss_per_conn_kib": (per_conn * 10.0).round() / 10.0,
        "idle_cpu_pct": (idle_cpu * 100.0).round() / 100.0,
        "close_all_s": (close_time.as_secs_f64() * 1000.0).round() / 1000.0,
        "clean_closes": clean,
    }))
}

// ----- echo ---------------------------------------------------------------------------------

/// What the echo phase shares with every connection: measuring (count and time round trips)
/// and stopping (close after the next echo).
#[derive(Default)]
struct Phase {
    measuring: AtomicBool,
    stop: AtomicBool,
    echoes: AtomicU64,
}

/// The run of an echo phase, whatever drives the connections: wait until all are open, warm up,
/// measure for `secs`, stop, collect the round trips.
fn measure(
    o: &Opts,
    phase: &Phase,
    opened: &Receiver<()>,
    samples: &Receiver<Vec<u32>>,
    n: usize,
) -> Result<serde_json::Value, String> {
    for i in 0..n {
        opened
            .recv_timeout(PATIENCE)
            .map_err(|_| format!("only {i} of {n} connections opened"))?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = sys::process_cpu_ns();
    let t0 = Instant::now();
    phase.measuring.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs_f64(o.secs));
    phase.measuring.store(false, Ordering::SeqCst);
    let window = t0.elapsed();
    let cpu = sys::process_cpu_ns() - cpu0;
    let echoes = phase.echoes.load(Ordering::SeqCst);
    phase.stop.store(true, Ordering::SeqCst);
    let mut rtts: Vec<u64> = Vec::new();
    for _ in 0..n {
        let s = samples
            .recv_timeout(PATIENCE)
            .map_err(|_| "a connection never reported")?;
        rtts.extend(s.into_iter().map(u64::from));
    }
    rtts.sort_unstable();
    Ok(json!({
        "conns": n,
        "msgs_per_s": (echoes as f64 / window.as_secs_f64()).round(),
        "rtt_p50_ms": ms(percentile(&rtts, 0.5)),
        "rtt_p99_ms": ms(percentile(&rtts, 0.99)),
        "rtt_max_ms": ms(*rtts.last().unwrap_or(&0)),
        "client_cpu_pct": ((cpu as f64 / window.as_nanos() as f64) * 10_000.0).round() / 100.0,
    }))
}

/// One message in flight: send, wait for the echo, send again; round trips recorded while
/// the phase measures.
struct Pinger {
    phase: Arc<Phase>,
    sent: Instant,
    rtts: Vec<u32>,
    opened: Sender<()>,
    samples: Sender<Vec<u32>>,
}

impl Pinger {
    fn echoed(&mut self) -> bool {
        if self.phase.measuring.load(Ordering::Relaxed) {
            self.rtts.push(self.sent.elapsed().as_micros() as u32);
            self.phase.echoes.fetch_add(1, Ordering::Relaxed);
        }
        !self.phase.stop.load(Ordering::Relaxed)
    }
    fn report(&mut self) {
        let _ = self.samples.send(std::mem::take(&mut self.rtts));
    }
}

impl Handler for Pinger {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        let _ = self.opened.send(());
        self.sent = Instant::now();
        let _ = ctx.send_text(TEXT);
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, _text: &str) {
        if self.echoed() {
            self.sent = Instant::now();
            let _ = ctx.send_text(TEXT);
        } else if ctx.is_open() {
            let _ = ctx.close(1000, "done");
        }
    }
    fn on_error(&mut self, _ctx: &mut Context<'_>, error: &syncws::Error) {
        eprintln!("echo: {error}");
    }
    fn on_quit(&mut self) {
        self.report();
    }
}

fn echo_set(url: &str, o: &Opts) -> Result<serde_json::Value, String> {
    let n = o.echo_conns;
    let phase = Arc::new(Phase::default());
    let (opened_tx, opened) = bounded(n);
    let (samples_tx, samples) = bounded(n);
    let mut set = ClientSet::new().map_err(|e| e.to_string())?;
    for _ in 0..n {
        let pinger = Pinger {
            phase: phase.clone(),
            sent: Instant::now(),
            rtts: Vec::new(),
            opened: opened_tx.clone(),
            samples: samples_tx.clone(),
        };
        set.add(url, &Config::default(), pinger)
            .map_err(|e| e.to_string())?;
    }
    let runner = std::thread::spawn(move || set.run());
    let r = measure(o, &phase, &opened, &samples, n);
    runner.join().map_err(|_| "the set's thread panicked")?;
    r
}

fn echo_threaded(url: &str, o: &Opts) -> Result<serde_json::Value, String> {
    let n = o.echo_conns;
    let phase = Arc::new(Phase::default());
    let (opened_tx, opened) = bounded(n);
    let (samples_tx, samples) = bounded(n);
    let mut apps = Vec::with_capacity(n);
    for _ in 0..n {
        let client = ThreadedClient::connect(url, &Config::default()).map_err(|e| e.to_string())?;
        let (phase, opened, samples_tx) = (phase.clone(), opened_tx.clone(), samples_tx.clone());
        let app = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                let mut rtts = Vec::new();
                let mut sent = Instant::now();
                loop {
                    match client.event_rx.recv_timeout(PATIENCE) {
                        Ok(Event::Activated(_)) => {
                            let _ = opened.send(());
                            sent = Instant::now();
                            let _ = client.control_tx.send_text(TEXT);
                        }
                        Ok(Event::TextMessage(_)) => {
                            if phase.measuring.load(Ordering::Relaxed) {
                                rtts.push(sent.elapsed().as_micros() as u32);
                                phase.echoes.fetch_add(1, Ordering::Relaxed);
                            }
                            if phase.stop.load(Ordering::Relaxed) {
                                let _ = client.control_tx.close(1000, "done");
                            } else {
                                sent = Instant::now();
                                let _ = client.control_tx.send_text(TEXT);
                            }
                        }
                        Ok(Event::Quit) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = samples_tx.send(rtts);
            })
            .map_err(|e| e.to_string())?;
        apps.push(app);
    }
    let r = measure(o, &phase, &opened, &samples, n);
    for app in apps {
        let _ = app.join();
    }
    r
}

fn echo_tokio(url: &str, o: &Opts) -> Result<serde_json::Value, String> {
    let n = o.echo_conns;
    let phase = Arc::new(Phase::default());
    let (opened_tx, opened) = bounded(n);
    let (samples_tx, samples) = bounded(n);
    let url = url.to_owned();
    let runner_phase = phase.clone();
    let runner = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let mut tasks = Vec::new();
            for _ in 0..n {
                let (phase, opened, samples) =
                    (runner_phase.clone(), opened_tx.clone(), samples_tx.clone());
                let url = url.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    let Ok((mut ws, _)) =
                        tokio_tungstenite::connect_async_with_config(&url, None, true).await
                    else {
                        let _ = samples.send(Vec::new());
                        return;
                    };
                    let _ = opened.send(());
                    let mut rtts = Vec::new();
                    loop {
                        let sent = Instant::now();
                        if ws.send(tungstenite::Message::text(TEXT)).await.is_err() {
                            break;
                        }
                        match tokio::time::timeout(PATIENCE, ws.next()).await {
                            Ok(Some(Ok(_))) => {}
                            _ => break,
                        }
                        if phase.measuring.load(Ordering::Relaxed) {
                            rtts.push(sent.elapsed().as_micros() as u32);
                            phase.echoes.fetch_add(1, Ordering::Relaxed);
                        }
                        if phase.stop.load(Ordering::Relaxed) {
                            let _ = ws.close(None).await;
                            break;
                        }
                    }
                    let _ = samples.send(rtts);
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    });
    let r = measure(o, &phase, &opened, &samples, n);
    runner.join().map_err(|_| "the tokio thread panicked")?;
    r
}
