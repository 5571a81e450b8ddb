//! The chat server under load: one we start (this binary again, `--serve-chat`, so its CPU and
//! memory are its own process's) or one given with `--url`; and the sampler that reads its CPU,
//! RSS and threads from /proc while a scenario runs.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use syncws_chat::{Options, Server};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the server is, and how to watch it.
pub struct Target {
    pub ws: String,
    pub wss: Option<String>,
    /// The server's certificate (PEM), to trust for `wss://`.
    pub cert_pem: Option<Vec<u8>>,
    pub pid: Option<u32>,
    /// The flags it was started with (for the report).
    pub flags: Vec<String>,
    /// `--nodes`: every node's ws:// URL (clients are spread over them); empty: `ws` alone.
    pub nodes: Vec<String>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

/// Limits of the server we start: per-connection rate limits off (a load generator is one
/// client sending for many users), room for 10,000 connections and more, all from 127.0.0.1 and
/// arriving at once.
const OUR_FLAGS: &[&str] = &[
    "--rate",
    "1000000000",
    "--burst",
    "1000000000",
    "--rate-abuse",
    "4294967295",
    "--max-connections",
    "30000",
    "--max-per-ip",
    "30000",
    "--max-handshakes",
    "30000",
];

impl Target {
    /// Start a chat server in a child process on free ports, with a fresh data directory.
    pub fn start(extra: &[String]) -> Result<Target, BoxError> {
        let dir = tempfile::Builder::new().prefix("chat-load-").tempdir()?;
        let mut flags: Vec<String> = OUR_FLAGS.iter().map(|s| s.to_string()).collect();
        flags.extend(extra.iter().cloned());
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("--serve-chat")
            .args(["--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(&flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("server said {line:?}: {e}"))?;
        let cert_pem = match v["cert"].as_str() {
            Some(path) => Some(std::fs::read(path)?),
            None => None,
        };
        Ok(Target {
            ws: v["ws"].as_str().ok_or("no ws address")?.to_owned(),
            wss: v["wss"].as_str().map(str::to_owned),
            cert_pem,
            pid: Some(child.id()),
            flags,
            nodes: Vec::new(),
            child: Some(child),
            _dir: Some(dir),
        })
    }

    /// A server someone else started.
    pub fn external(url: &str, pid: Option<u32>) -> Target {
        Target {
            ws: url.to_owned(),
            wss: None,
            cert_pem: None,
            pid,
            flags: Vec::new(),
            nodes: Vec::new(),
            child: None,
            _dir: None,
        }
    }

    pub fn with_nodes(mut self, nodes: &[String]) -> Target {
        self.nodes = nodes.to_vec();
        if !nodes.is_empty() {
            self.flags.push(format!("--nodes {}", nodes.join(",")));
        }
        self
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Closing its stdin asks for the graceful shutdown (1001 to all, last commit).
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

/// The child: the chat server from the library, until stdin closes.
pub fn serve_chat(args: &[String]) -> ! {
    let mut argv = vec!["chat-server".to_owned()];
    argv.extend(args.iter().cloned());
    let options = Options::parse_from(argv);
    let server = match Server::start(&options) {
        Ok(s) => s,
        Err(e) => {
            println!("{}", json!({ "error": e.to_string() }));
            std::process::exit(1);
        }
    };
    let cert = server
        .tls_files
        .as_ref()
        .map(|f| f.cert.display().to_string());
    println!(
        "{}",
        json!({
            "ws": server.ws_addr.map(|a| format!("ws://{a}/")),
            "wss": server.wss_addr.map(|a| format!("wss://localhost:{}/", a.port())),
            "cert": cert,
        })
    );
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    server.shutdown(Duration::from_secs(5));
    std::process::exit(0)
}

// ----- /proc ------------------------------------------------------------------------------------

/// CPU time (user + system) of a process, in seconds; `None` for `self`. Read from /proc, so
/// Linux only: elsewhere there is no figure.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux for every architecture we run on.
    Some(ticks / 100.0)
}

/// (RSS in KiB, threads) of a process. Read from /proc, so Linux only: elsewhere there is no
/// figure.
pub fn rss_and_threads(pid: Option<u32>) -> Option<(u64, u64)> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("Threads:")?))
}

/// One sample of the server and of us.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Seconds since the scenario began.
    #[allow(dead_code)]
    pub at: f64,
    pub server_cpu_pct: f64,
    pub server_rss_kib: u64,
    pub server_threads: u64,
    pub client_cpu_pct: f64,
}

/// Samples every 250 ms until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: Option<u32>, start: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let mut last = (Instant::now(), cpu_seconds(pid), cpu_seconds(None));
            let mut first = true;
            loop {
                // The first sample at once (memory and threads; no CPU yet), then every 250 ms
                // and a last one when stopped.
                if !first {
                    let stopping = s.load(Ordering::Relaxed);
                    if !stopping {
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
                let stopping = s.load(Ordering::Relaxed);
                let now = Instant::now();
                let (server, client) = (cpu_seconds(pid), cpu_seconds(None));
                let dt = now.duration_since(last.0).as_secs_f64();
                let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
                    (Some(a), Some(b)) if dt > 0.0 => (b - a) / dt * 100.0,
                    _ => 0.0,
                };
                let (rss, threads) = pid.and_then(|p| rss_and_threads(Some(p))).unwrap_or((0, 0));
                out.lock().unwrap_or_else(|e| e.into_inner()).push(Sample {
                    at: now.duration_since(start).as_secs_f64(),
                    server_cpu_pct: pct(last.1, server),
                    server_rss_kib: rss,
                    server_threads: threads,
                    client_cpu_pct: pct(last.2, client),
                });
                last = (now, server, client);
                if stopping && !first {
                    break;
                }
                first = false;
            }
        });
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
