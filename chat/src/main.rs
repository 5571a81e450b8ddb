//! `chat-server`: see `--help`.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use syncws_chat::{Options, Server};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in journald or a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let options = Options::parse();
    // Before the server starts, so a signal during start-up is not lost.
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chat-server: cannot watch for signals: {e}");
            std::process::exit(1);
        }
    };
    let server = match Server::start(&options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chat-server: {e}");
            std::process::exit(1);
        }
    };
    if let Some(addr) = server.ws_addr {
        let operator = if server.admin_addr.is_some() {
            ""
        } else {
            "; /report, /logs, /metrics for this host"
        };
        println!("chat-server listening on ws://{addr}/ (the chat page: http://{addr}/{operator})");
    }
    if let Some(addr) = server.wss_addr {
        println!("chat-server listening on wss://{addr}/ (the chat page: https://{addr}/)");
    }
    if let Some(addr) = server.admin_addr {
        println!("admin pages on http://{addr}/report, /logs, /metrics (no token: anyone who reaches this address)");
    }
    if let Some(files) = &server.tls_files {
        println!(
            "TLS certificate: {}{}",
            files.cert.display(),
            if files.generated {
                " (self-signed development certificate, generated now)"
            } else {
                ""
            }
        );
    }
    println!("data directory: {}", options.data_dir.display());
    let signal = signals.forever().next();
    tracing::info!(?signal, "shutting down");
    server.shutdown(Duration::from_secs(5));
    println!("chat-server stopped");
}
