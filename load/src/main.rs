//! `chat-load`: drives the chat server with the library's own clients (one `ClientSet` thread)
//! in the scenarios the seeds published, and tells the truth about it: the delivery ratio from
//! sequence numbers (every expected delivery is delivered, missing, duplicated or out of order),
//! latency from when each message was due (open loop), server and client CPU and memory.
//!
//! ```text
//! cargo run --release -p syncws-chat-load -- tokio-fanout        # starts its own server
//! cargo run --release -p syncws-chat-load -- all --quick         # every scenario, seconds each
//! cargo run --release -p syncws-chat-load -- node-pairs --clients 3000 --duration 20 --json
//! cargo run --release -p syncws-chat-load -- tokio-fanout --url ws://127.0.0.1:8080/ --server-pid 1234
//! ```

mod load;
mod report;
mod scenarios;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::scenarios::{Ctx, NAMES};
use crate::server::Target;

/// Load generator for the chat server: true delivery ratio, open-loop latency, server CPU and
/// memory. Every scenario runs against a server it starts itself unless --url is given.
#[derive(Parser, Debug)]
#[command(name = "chat-load")]
struct Args {
    /// Scenarios to run, or "all": tokio-1to1 tokio-all-to-all tokio-fanout tokio-burst
    /// tokio-multi tokio-tls node-pairs slow-reader idle-10k recovery
    #[arg(required = true)]
    scenarios: Vec<String>,
    /// Seconds instead of minutes: smaller counts (CI runs every scenario this way).
    #[arg(long)]
    quick: bool,
    /// A JSON line per scenario on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// A running server (ws://...) instead of one started here.
    #[arg(long)]
    url: Option<String>,
    /// Several running nodes of one cluster (chat-server --redis), comma-separated: clients
    /// are spread over them in turn (client i connects to node i mod N).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Its process id, to sample its CPU and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// node-pairs / idle-10k: how many clients.
    #[arg(long)]
    clients: Option<usize>,
    /// node-pairs: how long each pair talks, in seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Where the JSON and SVG of each scenario go.
    #[arg(long, default_value = "target/chat-load")]
    out: PathBuf,
    /// Extra flags for the server it starts (e.g. --server-flag=--outbox-bytes=2097152).
    #[arg(long = "server-flag")]
    server_flags: Vec<String>,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--serve-chat") {
        server::serve_chat(&argv[2..]);
    }
    let args = Args::parse();
    let names: Vec<String> = if args.scenarios.iter().any(|s| s == "all") {
        NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    if let Some(bad) = names.iter().find(|n| !NAMES.contains(&n.as_str())) {
        eprintln!(
            "chat-load: unknown scenario {bad:?}; known: all, {}",
            NAMES.join(", ")
        );
        return ExitCode::from(2);
    }
    let _ = std::fs::create_dir_all(&args.out);
    let mut failed = false;
    for name in &names {
        // A fresh server per scenario, so each one's memory and history are its own.
        let external = args.url.clone().or_else(|| args.nodes.first().cloned());
        let target = match &external {
            Some(url) => Target::external(url, args.server_pid).with_nodes(&args.nodes),
            None => match Target::start(&args.server_flags) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("chat-load: starting the server: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let ctx = Ctx {
            target: &target,
            name,
            quick: args.quick,
            clients: args.clients,
            duration: args.duration.map(Duration::from_secs_f64),
        };
        eprintln!("chat-load: {name} (a progress line every second on stderr)");
        match scenarios::run(name, &ctx) {
            Ok(mut outcome) => {
                outcome.workload.insert(
                    "server_flags".into(),
                    serde_json::json!(target.flags.join(" ")),
                );
                let json = outcome.to_json();
                if args.json {
                    println!("{json}");
                } else {
                    outcome.print();
                }
                let _ = std::fs::write(args.out.join(format!("{name}.json")), format!("{json}\n"));
                let svg = args.out.join(format!("{name}.svg"));
                if let Err(e) = outcome.write_svg(&svg) {
                    eprintln!("chat-load: {}: {e}", svg.display());
                }
                if !outcome.problems.is_empty() {
                    failed = true;
                }
            }
            Err(e) => {
                eprintln!("chat-load: {name} failed: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
