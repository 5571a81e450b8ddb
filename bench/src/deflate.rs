//! `--deflate`: JSON chat messages echoed through a syncws `ServerConnection`, with
//! permessage-deflate off and on. Reports the compression ratio, the payload bytes per message
//! on the wire, messages per second, and CPU per message on the client's thread and on the
//! server's connection thread (each measured on its own thread, so neither counts the other).
//!
//! The client is a `BlockingClient` keeping a window of messages in flight; every echo is
//! checked against what was sent. Everything binds 127.0.0.1 and ends by itself.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};
use serde_json::json;
use syncws::{BlockingClient, Config, Context, DeflateConfig, Error, Handler, ServerConnection};

use crate::sys::thread_cpu_ns;

/// Messages in flight.
const WINDOW: usize = 100;
/// Echoes before the measured window starts.
const WARMUP: usize = 5_000;

/// One configuration of the client.
#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    /// (level, no context takeover, threshold)
    deflate: Option<(u32, bool, usize)>,
    /// Talk to the server that agrees but never compresses (the layers' own cost).
    plain_server: bool,
}

const VARIANTS: [Variant; 5] = [
    Variant {
        name: "off",
        deflate: None,
        plain_server: false,
    },
    Variant {
        name: "agreed, nothing compressed (layer cost)",
        deflate: Some((6, false, usize::MAX)),
        plain_server: true,
    },
    Variant {
        name: "deflate (default: level 6, context kept)",
        deflate: Some((6, false, 64)),
        plain_server: false,
    },
    Variant {
        name: "deflate level 1",
        deflate: Some((1, false, 64)),
        plain_server: false,
    },
    Variant {
        name: "deflate no context takeover",
        deflate: Some((6, true, 64)),
        plain_server: false,
    },
];

/// A day of chat: rooms, users and sentences from a small vocabulary, as JSON.
pub fn corpus() -> Vec<String> {
    const WORDS: [&str; 48] = [
        "the", "a", "meeting", "is", "at", "noon", "can", "you", "send", "me", "report", "thanks",
        "deploy", "failed", "again", "on", "staging", "looks", "good", "to", "ship", "lunch",
        "anyone", "coffee", "build", "green", "now", "please", "review", "my", "pull", "request",
        "ticket", "closed", "customer", "called", "about", "invoice", "tomorrow", "morning",
        "standup", "moved", "server", "latency", "spiked", "fixed", "it", "ok",
    ];
    const ROOMS: [&str; 5] = ["general", "engineering", "support", "random", "ops"];
    const USERS: [&str; 8] = [
        "ada", "grace", "linus", "margaret", "ken", "barbara", "dennis", "frances",
    ];
    let mut x: u32 = 2463534242;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as usize
    };
    (0..4096)
        .map(|i| {
            let words = 4 + next() % 14;
            let text: Vec<&str> = (0..words).map(|_| WORDS[next() % WORDS.len()]).collect();
            json!({
                "type": "message",
                "id": 100_000 + i,
                "room": ROOMS[next() % ROOMS.len()],
                "user": USERS[next() % USERS.len()],
                "ts": 1_763_800_000_000u64 + (i as u64) * 1_337,
                "text": text.join(" "),
            })
            .to_string()
        })
        .collect()
}

/// The server side: one echoing `ServerConnection` per client, reporting its thread's CPU
/// time and message count when the connection ends. It agrees permessage-deflate when offered
/// and compresses messages of 64 bytes and more (none with `threshold` usize::MAX).
fn server(listener: TcpListener, threshold: usize, stats: crossbeam_channel::Sender<(u64, u64)>) {
    struct Echo;
    impl Handler for Echo {
        fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
            let _ = ctx.send_text(text);
        }
    }
    let config = Config::builder()
        .deflate(Some(DeflateConfig::new().threshold(threshold)))
        .build()
        .expect("server config");
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { continue };
        let config = config.clone();
        let stats = stats.clone();
        std::thread::spawn(move || {
            let Ok(conn) = ServerConnection::accept(tcp, None, &config) else {
                return;
            };
            let metrics = conn.metrics();
            let cpu0 = thread_cpu_ns();
            conn.run(&mut Echo);
            let _ = stats.send((thread_cpu_ns() - cpu0, metrics.messages_received()));
        });
    }
}

/// The client's measurement of one run.
struct Run {
    msgs: u64,
    wall: Duration,
    cpu_ns: u64,
    server_cpu_ns: u64,
    server_msgs: u64,
    ratio: f64,
    wire_per_msg: f64,
}

struct Client<'a> {
    corpus: &'a [String],
    next: usize,
    /// Sent and not yet echoed, oldest first (indexes into the corpus).
    in_flight: std::collections::VecDeque<usize>,
    echoed: usize,
    start: Option<(Instant, u64, usize)>,
    time: Duration,
    result: Option<(u64, Duration, u64)>,
    error: Option<String>,
}

impl Client<'_> {
    fn send_next(&mut self, ctx: &mut Context<'_>) {
        let i = self.next % self.corpus.len();
        self.next += 1;
        if let Err(e) = ctx.send_text(&self.corpus[i]) {
            self.error.get_or_insert(format!("send: {e}"));
            ctx.force_quit();
        }
        self.in_flight.push_back(i);
    }
}

impl Handler for Client<'_> {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        for _ in 0..WINDOW {
            self.send_next(ctx);
        }
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        let Some(i) = self.in_flight.pop_front() else {
            return;
        };
        if text != self.corpus[i] {
            self.error
                .get_or_insert("an echo differs from what was sent".into());
            ctx.force_quit();
            return;
        }
        self.echoed += 1;
        if self.result.is_some() {
            return;
        }
        match self.start {
            None if self.echoed == WARMUP => {
                self.start = Some((Instant::now(), thread_cpu_ns(), self.echoed));
            }
            Some((t0, cpu0, n0)) if t0.elapsed() >= self.time => {
                self.result = Some((
                    (self.echoed - n0) as u64,
                    t0.elapsed(),
                    thread_cpu_ns() - cpu0,
                ));
                let _ = ctx.close(1000, "done");
                return;
            }
            _ => {}
        }
        self.send_next(ctx);
    }
    fn on_error(&mut self, _ctx: &mut Context<'_>, error: &Error) {
        self.error.get_or_insert(error.to_string());
    }
}

fn run_once(
    urls: &[String; 2],
    v: Variant,
    corpus: &[String],
    time: Duration,
    stats: &Receiver<(u64, u64)>,
) -> Result<Run, String> {
    let mut builder = Config::builder();
    if let Some((level, no_context, threshold)) = v.deflate {
        builder = builder.deflate(Some(
            DeflateConfig::new()
                .level(level)
                .threshold(threshold)
                .client_no_context_takeover(no_context)
                .server_no_context_takeover(no_context),
        ));
    }
    let config = builder.build().map_err(|e| e.to_string())?;
    let url = &urls[usize::from(v.plain_server)];
    let client = BlockingClient::connect(url, &config).map_err(|e| e.to_string())?;
    if v.deflate.is_some() != client.handshake().deflate().is_some() {
        return Err("permessage-deflate was not agreed as configured".into());
    }
    let metrics = client.metrics();
    let mut c = Client {
        corpus,
        next: 0,
        in_flight: Default::default(),
        echoed: 0,
        start: None,
        time,
        result: None,
        error: None,
    };
    client.run(&mut c);
    if let Some(e) = c.error {
        return Err(e);
    }
    let (msgs, wall, cpu_ns) = c.result.ok_or("the run ended early")?;
    let (server_cpu_ns, server_msgs) = stats
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "no report from the server")?;
    let sent = metrics.messages_sent().max(1) as f64;
    let (input, output) = (
        metrics.compression_input_bytes(),
        metrics.compression_output_bytes(),
    );
    let (ratio, wire_per_msg) = if input == 0 {
        (1.0, metrics.bytes_sent() as f64 / sent)
    } else {
        (input as f64 / output as f64, output as f64 / sent)
    };
    Ok(Run {
        msgs,
        wall,
        cpu_ns,
        server_cpu_ns,
        server_msgs,
        ratio,
        wire_per_msg,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Run every variant `rounds` times (interleaved) and print medians.
pub fn run(rounds: usize, time: Duration, as_json: bool) -> Result<(), String> {
    let corpus = corpus();
    let avg = corpus.iter().map(String::len).sum::<usize>() / corpus.len();
    let (tx, stats) = bounded(16);
    let mut urls = [String::new(), String::new()];
    for (url, threshold) in urls.iter_mut().zip([64, usize::MAX]) {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        *url = format!(
            "ws://{}/",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let tx = tx.clone();
        std::thread::spawn(move || server(listener, threshold, tx));
    }
    let mut runs: Vec<Vec<Run>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds.max(1) {
        for (i, v) in VARIANTS.iter().enumerate() {
            runs[i].push(run_once(&urls, *v, &corpus, time, &stats)?);
        }
    }
    if !as_json {
        println!(
            "\nJSON chat messages ({} distinct, {avg} B on average), {WINDOW} in flight, echoed by a \
             syncws ServerConnection; medians of {rounds} round(s) of {:.1} s",
            corpus.len(),
            time.as_secs_f64()
        );
        println!(
            "{:<42} {:>6} {:>11} {:>10} {:>14} {:>14}",
            "client", "ratio", "wire B/msg", "msg/s", "client us/msg", "server us/msg"
        );
    }
    for (v, rs) in VARIANTS.iter().zip(&runs) {
        let rate = median(
            rs.iter()
                .map(|r| r.msgs as f64 / r.wall.as_secs_f64())
                .collect(),
        );
        let cpu = median(
            rs.iter()
                .map(|r| r.cpu_ns as f64 / r.msgs as f64 / 1e3)
                .collect(),
        );
        // The server's thread ran for the whole connection (warm-up included).
        let server = median(
            rs.iter()
                .map(|r| r.server_cpu_ns as f64 / r.server_msgs.max(1) as f64 / 1e3)
                .collect(),
        );
        let ratio = median(rs.iter().map(|r| r.ratio).collect());
        let wire = median(rs.iter().map(|r| r.wire_per_msg).collect());
        if as_json {
            println!(
                "{}",
                json!({
                    "test": "deflate-json", "client": v.name, "avg_message_bytes": avg,
                    "ratio": (ratio * 100.0).round() / 100.0,
                    "wire_bytes_per_msg": wire.round(), "msgs_per_sec": rate.round(),
                    "client_us_per_msg": (cpu * 1000.0).round() / 1000.0,
                    "server_us_per_msg": (server * 1000.0).round() / 1000.0,
                })
            );
        } else {
            println!(
                "{:<42} {:>6.2} {:>11.0} {:>10.0} {:>14.2} {:>14.2}",
                v.name, ratio, wire, rate, cpu, server
            );
        }
    }
    Ok(())
}
