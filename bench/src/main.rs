//! `syncws-bench`: syncws against raw TCP, tungstenite, tokio-tungstenite and s9_websocket, on
//! one local echo server.
//!
//! ```text
//! cargo run --release -p syncws-bench                      # short default run, a table
//! cargo run --release -p syncws-bench -- --rounds 5        # medians of 5 rounds
//! cargo run --release -p syncws-bench -- --json            # one JSON object per line
//! cargo run --release -p syncws-bench -- --clients syncws-blocking,raw-tcp --tests rtt32
//! cargo run --release -p syncws-bench -- --deflate --rounds 3  # compression on and off
//! ```
//!
//! The echo server runs in a child process (`syncws-bench --serve`), so the client CPU time is
//! `getrusage(RUSAGE_SELF)` of this process over the measured window. Each round runs every
//! test in `--slices` interleaved parts (part 1 of every client, then part 2, ...) whose results
//! are pooled, because these VMs switch between a "busy" and an "idle" state (wake-ups of a few
//! us vs 25-30 us) and a switch in mid-run must not land on one client only. Idle tests run in child
//! processes of their own, in parallel (clients that spin are kept two at a time so that each
//! can have a core). Everything binds 127.0.0.1; every wait is bounded and the program ends by
//! itself (a watchdog ends it if a single test overruns by far).
//!
//! Tests: `rtt32` (one 32-byte text message, wait for its echo, repeat), `tput32` / `tput64k`
//! (pipelined: a bounded window of 32 B text / 64 KiB binary messages in flight; msg/s and MB/s
//! of echoed payload, 1 MB = 10^6 bytes), `idle` (connected, nothing arrives: CPU % of one
//! core).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};

mod clients;
mod deflate;
mod job;
mod many;
mod server;
mod sys;

use clients::{Addrs, Client};
use job::{Job, Outcome, Params, Test};

const HELP: &str = "\
syncws-bench: syncws vs raw TCP, tungstenite, tokio-tungstenite and s9_websocket

USAGE: syncws-bench [OPTIONS]

  --rounds N         run every test N times and report medians (default 1)
  --slices N         split each round of each test into N interleaved slices (default 4):
                     slice 1 of every client, then slice 2 of every client, ..., pooled, so
                     a change of host state mid-run hits every client alike
  --json             print one JSON object per (client, test) line instead of tables
  --clients a,b,..   only these clients (default: all)
  --tests x,y,..     only these tests: rtt32,tput32,tput64k,idle (default: all)
  --deflate          instead of the client matrix: JSON chat messages through a syncws echo
                     server with permessage-deflate off and on (ratio, msg/s, CPU per message;
                     2 s per run, 0.5 s with --quick; --rounds and --json apply)
  --many [--quick]   instead of the client matrix: one thread driving many connections
                     (ClientSet): 10,000 connections (connect time, RSS per connection, idle
                     CPU), then 1,000 x one message in flight vs ThreadedClients and
                     tokio-tungstenite (see bench/src/many.rs for its options)
  --quick            short run for development (10k round trips, 0.3 s windows, 1 s idle)
  --rtt-count N      timed round trips per client (default 100000)
  --rtt-warmup N     untimed round trips first (default 5000)
  --rtt-max-secs S   cap on the timed RTT part (default 8)
  --tput-secs S      throughput window (default 0.5, after 0.2 s of warm-up)
  --window32 N       32 B messages in flight (default 1000)
  --window64k N      64 KiB messages in flight (default 8)
  --idle-secs S      idle test length (default 5)
  --server-read-buf N  tungstenite read_buffer_size of the echo server (default 4096)
  --syncws-read-buf N  override syncws's read_buffer_size (experiments; default: library's)
  -h, --help

Clients: raw-tcp tungstenite tokio-tungstenite s9-blocking s9-nonblocking s9-threaded
         syncws-blocking syncws-nonblocking-spin syncws-nonblocking-sleep
         syncws-nonblocking-readiness syncws-threaded syncws-set
";

struct Opts {
    rounds: usize,
    slices: usize,
    json: bool,
    clients: Vec<Client>,
    tests: Vec<Test>,
    p: Params,
    server_read_buf: usize,
    serve: bool,
    idle_child: Option<Client>,
    ws: Option<String>,
    /// `--deflate`: the compression comparison instead of the client matrix.
    deflate: bool,
    quick: bool,
    tcp: Option<String>,
}

fn secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| *v >= 0.0 && *v < 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("bad duration {s:?}"))
}

fn num(s: &str) -> Result<usize, String> {
    s.parse().map_err(|_| format!("bad number {s:?}"))
}

fn parse_args(args: Vec<String>) -> Result<Opts, String> {
    let mut o = Opts {
        rounds: 1,
        slices: 4,
        json: false,
        clients: Client::ALL.to_vec(),
        tests: Test::ALL.to_vec(),
        p: Params {
            rtt_warmup: 5_000,
            rtt_count: 100_000,
            rtt_max: Duration::from_secs(8),
            tput_warmup: Duration::from_millis(200),
            tput_time: Duration::from_millis(500),
            window32: 1000,
            window64k: 8,
            idle: Duration::from_secs(5),
            stall: Duration::from_secs(10),
            sleep: Duration::from_millis(1),
            syncws_read_buf: None,
        },
        server_read_buf: 4 << 10,
        serve: false,
        idle_child: None,
        ws: None,
        deflate: false,
        quick: false,
        tcp: None,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--rounds" => o.rounds = num(&val()?)?.max(1),
            "--slices" => o.slices = num(&val()?)?.max(1),
            "--json" => o.json = true,
            "--deflate" => o.deflate = true,
            "--quick" => {
                o.p.rtt_warmup = 1_000;
                o.p.rtt_count = 10_000;
                o.p.rtt_max = Duration::from_secs(2);
                o.p.tput_warmup = Duration::from_millis(100);
                o.p.tput_time = Duration::from_millis(300);
                o.p.idle = Duration::from_secs(1);
                o.quick = true;
            }
            "--clients" => {
                o.clients = val()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| Client::parse(s).ok_or_else(|| format!("unknown client {s:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--tests" => {
                o.tests = val()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| Test::parse(s).ok_or_else(|| format!("unknown test {s:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--rtt-count" => o.p.rtt_count = num(&val()?)?.max(1),
            "--rtt-warmup" => o.p.rtt_warmup = num(&val()?)?,
            "--rtt-max-secs" => o.p.rtt_max = secs(&val()?)?,
            "--tput-secs" => o.p.tput_time = secs(&val()?)?,
            "--tput-warmup-secs" => o.p.tput_warmup = secs(&val()?)?,
            "--window32" => o.p.window32 = num(&val()?)?.max(1),
            "--window64k" => o.p.window64k = num(&val()?)?.max(1),
            "--idle-secs" => o.p.idle = secs(&val()?)?,
            "--stall-secs" => o.p.stall = secs(&val()?)?,
            "--sleep-ms" => o.p.sleep = secs(&val()?)? / 1000,
            "--server-read-buf" => o.server_read_buf = num(&val()?)?.max(64),
            "--syncws-read-buf" => o.p.syncws_read_buf = Some(num(&val()?)?.max(64)),
            // Internal: the echo server child and the idle-test children.
            "--serve" => o.serve = true,
            "--idle-child" => {
                let v = val()?;
                o.idle_child =
                    Some(Client::parse(&v).ok_or_else(|| format!("unknown client {v:?}"))?);
            }
            "--ws" => o.ws = Some(val()?),
            "--tcp" => o.tcp = Some(val()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    o.clients.sort();
    o.clients.dedup();
    o.tests.sort();
    o.tests.dedup();
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--many") => return many::main(&args[1..]),
        Some("--serve-many") => many::serve(),
        Some("--many-scale") => return many::scale_child(&args[1..]),
        _ => {}
    }
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("syncws-bench: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    if opts.serve {
        server::serve(opts.server_read_buf, Duration::from_secs(3600));
    }
    if let Some(client) = opts.idle_child {
        return idle_child(client, &opts);
    }
    if opts.deflate {
        let time = Duration::from_millis(if opts.quick { 500 } else { 2000 });
        return match deflate::run(opts.rounds, time, opts.json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("syncws-bench: deflate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match bench(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncws-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ----- the server child ---------------------------------------------------------------------

/// What the server did for one connection.
#[derive(Debug, Clone, Copy)]
struct ServerStats {
    /// Messages echoed (for raw TCP: bytes received / message size).
    msgs: u64,
    writes: u64,
    cpu_ns: u64,
    wall_ns: u64,
}

struct ServerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    addrs: Addrs,
}

impl ServerProc {
    fn start(read_buf: usize) -> Result<ServerProc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .args(["--serve", "--server-read-buf", &read_buf.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn server: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no server stdout")?;
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = ServerProc {
            child,
            stdin,
            lines: rx,
            addrs: Addrs {
                ws: String::new(),
                tcp: "127.0.0.1:0".parse().expect("literal address"),
            },
        };
        let first = server
            .lines
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "server did not start")?;
        let v: Value =
            serde_json::from_str(&first).map_err(|e| format!("server said {first:?}: {e}"))?;
        server.addrs.ws = v["ws"].as_str().ok_or("no ws address")?.to_string();
        server.addrs.tcp = v["tcp"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or("no tcp address")?;
        Ok(server)
    }

    fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// The report of the next connection to end.
    fn next_stats(&self, timeout: Duration, msg_size: usize) -> Option<ServerStats> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        let v: Value = serde_json::from_str(&line).ok()?;
        let msgs = match v["kind"].as_str()? {
            "tcp" => v["bytes_in"].as_u64()? / msg_size as u64,
            _ => v["msgs"].as_u64()?,
        };
        Some(ServerStats {
            msgs,
            writes: v["writes"].as_u64()?,
            cpu_ns: v["cpu_ns"].as_u64()?,
            wall_ns: v["wall_ns"].as_u64()?,
        })
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // Closing its stdin ends it; kill it (our own child, by its handle) if it lingers.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerStats {
    fn add(self, o: ServerStats) -> ServerStats {
        ServerStats {
            msgs: self.msgs + o.msgs,
            writes: self.writes + o.writes,
            cpu_ns: self.cpu_ns + o.cpu_ns,
            wall_ns: self.wall_ns + o.wall_ns,
        }
    }
}

// ----- watchdog -----------------------------------------------------------------------------

/// Ends the process if one test runs far past its bound (every client wait is bounded, so this
/// should never fire). The server child exits when our end of its stdin closes.
fn watchdog() -> Sender<Option<(Instant, String)>> {
    let (tx, rx) = crossbeam_channel::unbounded::<Option<(Instant, String)>>();
    std::thread::spawn(move || {
        let mut armed: Option<(Instant, String)> = None;
        loop {
            let r = match &armed {
                Some((deadline, _)) => {
                    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                }
                None => rx
                    .recv()
                    .map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected),
            };
            match r {
                Ok(next) => armed = next,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let what = armed.map(|a| a.1).unwrap_or_default();
                    eprintln!("syncws-bench: watchdog: {what} overran its time bound; exiting");
                    std::process::exit(3);
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        }
    });
    tx
}

// ----- running ------------------------------------------------------------------------------

struct Run {
    outcome: Result<Outcome, String>,
    server: Option<ServerStats>,
}

/// The share of a round that one slice runs.
fn slice_params(p: &Params, slices: usize) -> Params {
    let n = slices.max(1);
    let mut q = p.clone();
    q.rtt_count = p.rtt_count.div_ceil(n);
    q.rtt_warmup = (p.rtt_warmup / n).max(p.rtt_warmup.min(200));
    q.rtt_max = p.rtt_max / n as u32;
    q.tput_time = p.tput_time / n as u32;
    q.tput_warmup = (p.tput_warmup / n as u32).max(p.tput_warmup.min(Duration::from_millis(50)));
    q
}

fn bound(p: &Params, test: Test) -> Duration {
    let base = match test {
        Test::Rtt32 => p.rtt_max + p.tput_warmup,
        Test::Tput32 | Test::Tput64k => p.tput_warmup + p.tput_time,
        Test::Idle => p.idle,
    };
    base + p.stall * 3 + Duration::from_secs(10)
}

fn bench(o: &Opts) -> Result<(), String> {
    let server = ServerProc::start(o.server_read_buf)?;
    let addrs = server.addrs.clone();
    let dog = watchdog();
    let started = Instant::now();
    let mut runs: BTreeMap<(Client, Test), Vec<Run>> = BTreeMap::new();
    let sp = slice_params(&o.p, o.slices);
    for round in 0..o.rounds {
        // Slices of this round, pooled per (client, test).
        let mut pooled: BTreeMap<(Client, Test), Run> = BTreeMap::new();
        for slice in 0..o.slices {
            for &client in &o.clients {
                for &test in o.tests.iter().filter(|t| **t != Test::Idle) {
                    server.drain();
                    let what = format!("{} {}", client.name(), test.name());
                    let _ = dog.send(Some((Instant::now() + bound(&sp, test), what.clone())));
                    let t = Instant::now();
                    let mut job = Job::new(test, &sp);
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        clients::run(client, &mut job, &addrs, &sp)
                    }));
                    let outcome = match r {
                        Ok(()) => job.outcome(),
                        Err(_) => Err("panicked".into()),
                    };
                    let stats = server.next_stats(Duration::from_secs(3), test.size());
                    let _ = dog.send(None);
                    eprintln!(
                        "[{:5.1}s] round {}/{} slice {}/{} {what}: {} ({:.1}s)",
                        started.elapsed().as_secs_f64(),
                        round + 1,
                        o.rounds,
                        slice + 1,
                        o.slices,
                        brief(&outcome),
                        t.elapsed().as_secs_f64()
                    );
                    let run = Run {
                        outcome,
                        server: stats,
                    };
                    let merged = match pooled.remove(&(client, test)) {
                        None => run,
                        Some(acc) => Run {
                            outcome: match (acc.outcome, run.outcome) {
                                (Ok(a), Ok(b)) => Ok(a.merge(b)),
                                (Err(e), _) | (_, Err(e)) => Err(e),
                            },
                            server: match (acc.server, run.server) {
                                (Some(a), Some(b)) => Some(a.add(b)),
                                _ => None,
                            },
                        },
                    };
                    pooled.insert((client, test), merged);
                }
            }
        }
        for (key, run) in pooled {
            runs.entry(key).or_default().push(run);
        }
        if o.tests.contains(&Test::Idle) {
            for group in idle_groups(&o.clients) {
                let _ = dog.send(Some((
                    Instant::now() + bound(&o.p, Test::Idle) + Duration::from_secs(10),
                    "idle group".into(),
                )));
                let results = run_idle_group(&group, &addrs, &o.p);
                let _ = dog.send(None);
                for (client, outcome) in group.iter().zip(results) {
                    eprintln!(
                        "[{:5.1}s] round {}/{} {} idle: {}",
                        started.elapsed().as_secs_f64(),
                        round + 1,
                        o.rounds,
                        client.name(),
                        brief(&outcome),
                    );
                    runs.entry((*client, Test::Idle)).or_default().push(Run {
                        outcome,
                        server: None,
                    });
                }
            }
        }
    }
    let _ = dog.send(None);
    drop(dog);
    let aggs: BTreeMap<(Client, Test), Agg> =
        runs.iter().map(|(k, v)| (*k, aggregate(v))).collect();
    if o.json {
        print_json(o, &aggs);
    } else {
        print_tables(o, &aggs, started.elapsed());
    }
    drop(server);
    Ok(())
}

fn brief(o: &Result<Outcome, String>) -> String {
    match o {
        Err(e) => format!("ERROR {e}"),
        Ok(Outcome::Rtt { samples, .. }) => match job::percentiles(samples) {
            Some((p50, p99, p999)) => format!(
                "n={} p50={p50:.1}us p99={p99:.1}us p99.9={p999:.1}us",
                samples.len()
            ),
            None => "no samples".into(),
        },
        Ok(Outcome::Tput {
            msgs,
            bytes,
            secs,
            cpu_ns,
        }) => format!(
            "{:.0} msg/s {:.0} MB/s {:.0} ns CPU/msg",
            *msgs as f64 / secs,
            *bytes as f64 / secs / 1e6,
            *cpu_ns as f64 / (*msgs).max(1) as f64
        ),
        Ok(Outcome::Idle { cpu_ns, wall_ns }) => {
            format!(
                "{:.2}% CPU",
                *cpu_ns as f64 / (*wall_ns).max(1) as f64 * 100.0
            )
        }
    }
}

/// Idle tests in parallel child processes: every quiet client at once, plus the spinning ones
/// two at a time (2 cores).
fn idle_groups(clients: &[Client]) -> Vec<Vec<Client>> {
    let (spinners, quiet): (Vec<Client>, Vec<Client>) = clients.iter().partition(|c| c.spins());
    let mut groups = Vec::new();
    let mut first = quiet;
    let mut spinners = spinners.into_iter();
    first.extend(spinners.by_ref().take(2));
    if !first.is_empty() {
        groups.push(first);
    }
    let rest: Vec<Client> = spinners.collect();
    for pair in rest.chunks(2) {
        groups.push(pair.to_vec());
    }
    groups
}

fn run_idle_group(group: &[Client], addrs: &Addrs, p: &Params) -> Vec<Result<Outcome, String>> {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return group
                .iter()
                .map(|_| Err(format!("current_exe: {e}")))
                .collect()
        }
    };
    let mut children: Vec<Result<Child, String>> = group
        .iter()
        .map(|c| {
            Command::new(&exe)
                .args(["--idle-child", c.name(), "--ws", &addrs.ws, "--tcp"])
                .arg(addrs.tcp.to_string())
                .args(["--idle-secs", &p.idle.as_secs_f64().to_string()])
                .args(["--stall-secs", &p.stall.as_secs_f64().to_string()])
                .args(["--sleep-ms", &(p.sleep.as_secs_f64() * 1000.0).to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("spawn: {e}"))
        })
        .collect();
    let deadline = Instant::now() + p.idle + p.stall + Duration::from_secs(10);
    children
        .iter_mut()
        .map(|child| {
            let child = child.as_mut().map_err(|e| e.clone())?;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err("idle child overran; killed".into());
                    }
                }
            }
            let mut out = String::new();
            if let Some(mut s) = child.stdout.take() {
                let _ = std::io::Read::read_to_string(&mut s, &mut out);
            }
            let v: Value = serde_json::from_str(out.trim())
                .map_err(|e| format!("idle child said {out:?}: {e}"))?;
            if let Some(e) = v["error"].as_str() {
                return Err(e.to_string());
            }
            Ok(Outcome::Idle {
                cpu_ns: v["cpu_ns"].as_u64().ok_or("no cpu_ns")?,
                wall_ns: v["wall_ns"].as_u64().ok_or("no wall_ns")?,
            })
        })
        .collect()
}

/// `--idle-child NAME`: connect, wait idle, print `{"cpu_ns":..,"wall_ns":..}`.
fn idle_child(client: Client, o: &Opts) -> ExitCode {
    let (Some(ws), Some(tcp)) = (&o.ws, o.tcp.as_ref().and_then(|t| t.parse().ok())) else {
        println!("{}", json!({"error": "idle child needs --ws and --tcp"}));
        return ExitCode::FAILURE;
    };
    let addrs = Addrs {
        ws: ws.clone(),
        tcp,
    };
    let mut job = Job::new(Test::Idle, &o.p);
    clients::run(client, &mut job, &addrs, &o.p);
    let line = match job.outcome() {
        Ok(Outcome::Idle { cpu_ns, wall_ns }) => json!({"cpu_ns": cpu_ns, "wall_ns": wall_ns}),
        Ok(_) => json!({"error": "not an idle outcome"}),
        Err(e) => json!({"error": e}),
    };
    println!("{line}");
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

// ----- results ------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Agg {
    ok: usize,
    errors: Vec<String>,
    n: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    msgs_per_s: Option<f64>,
    mb_per_s: Option<f64>,
    cpu_ns_per_msg: Option<f64>,
    idle_cpu_pct: Option<f64>,
    srv_cpu_pct: Option<f64>,
    srv_writes_per_msg: Option<f64>,
    srv_cpu_ns_per_msg: Option<f64>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn aggregate(runs: &[Run]) -> Agg {
    let mut a = Agg::default();
    let mut cols: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut put = |k: &'static str, v: f64| cols.entry(k).or_default().push(v);
    for r in runs {
        match &r.outcome {
            Err(e) => a.errors.push(e.clone()),
            Ok(o) => {
                a.ok += 1;
                match *o {
                    Outcome::Rtt {
                        ref samples,
                        secs,
                        cpu_ns,
                    } => {
                        let n = samples.len().max(1) as f64;
                        if let Some((p50, p99, p999)) = job::percentiles(samples) {
                            put("p50", p50);
                            put("p99", p99);
                            put("p999", p999);
                        }
                        put("n", n);
                        put("mps", n / secs);
                        put("cpu", cpu_ns as f64 / n);
                    }
                    Outcome::Tput {
                        msgs,
                        bytes,
                        secs,
                        cpu_ns,
                    } => {
                        put("n", msgs as f64);
                        put("mps", msgs as f64 / secs);
                        put("mbps", bytes as f64 / secs / 1e6);
                        put("cpu", cpu_ns as f64 / msgs.max(1) as f64);
                    }
                    Outcome::Idle { cpu_ns, wall_ns } => {
                        put("idle", cpu_ns as f64 / wall_ns.max(1) as f64 * 100.0);
                    }
                }
                if let Some(s) = r.server {
                    put("scpu", s.cpu_ns as f64 / s.wall_ns.max(1) as f64 * 100.0);
                    put("swpm", s.writes as f64 / s.msgs.max(1) as f64);
                    put("snpm", s.cpu_ns as f64 / s.msgs.max(1) as f64);
                }
            }
        }
    }
    let mut take = |k: &str| cols.remove(k).and_then(median);
    a.n = take("n");
    a.p50 = take("p50");
    a.p99 = take("p99");
    a.p999 = take("p999");
    a.msgs_per_s = take("mps");
    a.mb_per_s = take("mbps");
    a.cpu_ns_per_msg = take("cpu");
    a.idle_cpu_pct = take("idle");
    a.srv_cpu_pct = take("scpu");
    a.srv_writes_per_msg = take("swpm");
    a.srv_cpu_ns_per_msg = take("snpm");
    a
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn round3(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |v| json!((v * 1000.0).round() / 1000.0))
}

fn print_json(o: &Opts, aggs: &BTreeMap<(Client, Test), Agg>) {
    let raw = |t: Test| aggs.get(&(Client::RawTcp, t));
    for &client in &o.clients {
        for &test in &o.tests {
            let Some(a) = aggs.get(&(client, test)) else {
                continue;
            };
            let vs_raw = match test {
                Test::Rtt32 => ratio(a.p50, raw(test).and_then(|r| r.p50)),
                Test::Tput32 | Test::Tput64k => {
                    ratio(a.mb_per_s, raw(test).and_then(|r| r.mb_per_s))
                }
                Test::Idle => None,
            };
            let line = json!({
                "client": client.name(),
                "test": test.name(),
                "rounds": o.rounds,
                "slices": o.slices,
                "ok_rounds": a.ok,
                "error": a.errors.first(),
                "n": a.n.map(|n| n.round() as u64),
                "p50_us": round3(a.p50),
                "p99_us": round3(a.p99),
                "p999_us": round3(a.p999),
                "msgs_per_s": round3(a.msgs_per_s),
                "mb_per_s": round3(a.mb_per_s),
                "cpu_ns_per_msg": round3(a.cpu_ns_per_msg),
                "idle_cpu_pct": round3(a.idle_cpu_pct),
                "vs_raw_tcp": round3(vs_raw),
                "server_cpu_pct": round3(a.srv_cpu_pct),
                "server_writes_per_msg": round3(a.srv_writes_per_msg),
                "server_cpu_ns_per_msg": round3(a.srv_cpu_ns_per_msg),
            });
            println!("{line}");
        }
    }
}

fn f(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn rate(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1e6 => format!("{:.2}M", v / 1e6),
        Some(v) => format!("{:.0}k", v / 1e3),
    }
}

fn print_tables(o: &Opts, aggs: &BTreeMap<(Client, Test), Agg>, took: Duration) {
    let get = |c: Client, t: Test| aggs.get(&(c, t)).cloned().unwrap_or_default();
    let raw_rtt = get(Client::RawTcp, Test::Rtt32);
    let raw_64k = get(Client::RawTcp, Test::Tput64k);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "syncws-bench: {} round(s){} of {} interleaved slices, {} CPUs, took {:.0} s. 32 B text / 64 KiB binary; windows {} / {} messages; sleep strategy {:?}.",
        o.rounds,
        if o.rounds > 1 { " (medians)" } else { "" },
        o.slices,
        cpus,
        took.as_secs_f64(),
        o.p.window32,
        o.p.window64k,
        o.p.sleep,
    );
    println!(
        "Echo server: separate process, thread per connection, poll(2), TCP_NODELAY; WebSocket = tungstenite 0.30 (read_buffer_size {} B), echoes flushed once per readable burst.",
        o.server_read_buf
    );
    println!();
    println!(
        "{:<29}| {:>7} {:>7} {:>7} {:>7} {:>6} {:>7} | {:>8} {:>6} {:>7} | {:>7} {:>6} {:>7} | {:>6}",
        "client", "p50 us", "p99 us", "p99.9", "RTTs", "/raw", "ns/RTT", "32B msg/s", "MB/s", "ns/msg",
        "64K MB/s", "/raw", "ns/msg", "idle %"
    );
    println!("{}", "-".repeat(150));
    for &c in &o.clients {
        let r = get(c, Test::Rtt32);
        let t32 = get(c, Test::Tput32);
        let t64 = get(c, Test::Tput64k);
        let idle = get(c, Test::Idle);
        println!(
            "{:<29}| {:>7} {:>7} {:>7} {:>7} {:>6} {:>7} | {:>9} {:>6} {:>7} | {:>8} {:>6} {:>7} | {:>6}",
            c.name(),
            f(r.p50, 1),
            f(r.p99, 1),
            f(r.p999, 1),
            r.n.map_or("-".into(), |n| if n >= 1e4 { format!("{:.0}k", n / 1e3) } else { format!("{n:.0}") }),
            f(ratio(r.p50, raw_rtt.p50), 2),
            f(r.cpu_ns_per_msg, 0),
            rate(t32.msgs_per_s),
            f(t32.mb_per_s, 0),
            f(t32.cpu_ns_per_msg, 0),
            f(t64.mb_per_s, 0),
            f(ratio(t64.mb_per_s, raw_64k.mb_per_s), 2),
            f(t64.cpu_ns_per_msg, 0),
            f(idle.idle_cpu_pct, 1),
        );
    }
    println!();
    println!("Columns: RTT percentiles over the timed round trips (RTTs = how many); /raw = ratio to raw-tcp");
    println!("(RTT p50: lower is better; 64K MB/s: higher is better); ns/RTT and ns/msg = client CPU time");
    println!("(user+sys, whole client process) per round trip / per echoed message; MB/s = echoed payload,");
    println!(
        "10^6 B/s; idle % = CPU of one core while connected and receiving nothing for {:?}.",
        o.p.idle
    );
    println!();
    println!("Server side (same server for every client): CPU % of one core over the connection, write(2) calls");
    println!("and CPU ns per echoed message.");
    println!(
        "{:<29}| {:>8} | {:>8} {:>9} {:>7} | {:>8} {:>9} {:>7}",
        "client",
        "rtt CPU%",
        "32B CPU%",
        "writes/msg",
        "ns/msg",
        "64K CPU%",
        "writes/msg",
        "ns/msg"
    );
    for &c in &o.clients {
        let r = get(c, Test::Rtt32);
        let t32 = get(c, Test::Tput32);
        let t64 = get(c, Test::Tput64k);
        println!(
            "{:<29}| {:>8} | {:>8} {:>10} {:>7} | {:>8} {:>10} {:>7}",
            c.name(),
            f(r.srv_cpu_pct, 0),
            f(t32.srv_cpu_pct, 0),
            f(t32.srv_writes_per_msg, 3),
            f(t32.srv_cpu_ns_per_msg, 0),
            f(t64.srv_cpu_pct, 0),
            f(t64.srv_writes_per_msg, 2),
            f(t64.srv_cpu_ns_per_msg, 0),
        );
    }
    let errors: Vec<String> = aggs
        .iter()
        .flat_map(|((c, t), a)| {
            a.errors
                .iter()
                .map(move |e| format!("  {} {}: {e}", c.name(), t.name()))
        })
        .collect();
    if !errors.is_empty() {
        println!();
        println!("Errors:");
        for e in errors {
            println!("{e}");
        }
    }
    // The syncws targets, as ratios within this run.
    let syncws: Vec<Client> = o
        .clients
        .iter()
        .copied()
        .filter(|c| c.is_syncws())
        .collect();
    if !syncws.is_empty() {
        println!();
        println!("syncws targets (this run):");
        for c in syncws {
            let r = get(c, Test::Rtt32);
            let t32 = get(c, Test::Tput32);
            let t64 = get(c, Test::Tput64k);
            let idle = get(c, Test::Idle);
            let mut parts = Vec::new();
            let mark = |ok: bool| if ok { "ok" } else { "MISS" };
            if let Some(x) = ratio(r.p50, raw_rtt.p50) {
                parts.push(format!("RTT p50 {x:.2}x raw (<=1.10) {}", mark(x <= 1.10)));
            }
            if c == Client::SyncwsThreaded {
                if let Some(v) = r.p999 {
                    parts.push(format!("p99.9 {v:.0} us (<250) {}", mark(v < 250.0)));
                }
            }
            if let Some(v) = t32.msgs_per_s {
                parts.push(format!(
                    "32B {:.2}M msg/s (>=3M) {}",
                    v / 1e6,
                    mark(v >= 3e6)
                ));
            }
            if let Some(x) = ratio(t64.mb_per_s, raw_64k.mb_per_s) {
                parts.push(format!("64K {x:.2}x raw (>=0.90) {}", mark(x >= 0.9)));
            }
            if c == Client::SyncwsReadiness || c == Client::SyncwsBlocking {
                if let Some(v) = idle.idle_cpu_pct {
                    parts.push(format!("idle {v:.2}% (~0) {}", mark(v < 1.0)));
                }
            }
            println!("  {:<29} {}", c.name(), parts.join("; "));
        }
    }
    if let Some(p50) = raw_rtt.p50 {
        println!();
        println!(
            "Host state: raw-tcp RTT p50 {p50:.1} us ({}; PERF-NOTES: ~15 us when the host is busy, ~70 us when idle). Compare ratios within one run.",
            if p50 < 40.0 { "busy-host state" } else { "idle-host state" }
        );
    }
}
