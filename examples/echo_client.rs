//! Sends N messages, checks every echo comes back intact and in order, closes gracefully.
//!
//! ```text
//! echo_client --mode blocking|nonblocking|threaded --url URL [--count N] [--size BYTES]
//!             [--binary] [--deflate] [--ca PEM] [--header 'K: V']...
//!             [--wait readiness|spin|sleep:MS]
//! ```
//! The last line is `ok mode=M sent=N received=N close=CODE`, or `error: ...` with a non-zero
//! exit status.

#[path = "support/echo.rs"]
mod echo;

use std::time::Duration;

use syncws::{Config, DeflateConfig, WaitStrategy};

fn main() {
    let mode_name = std::env::args()
        .skip_while(|a| a != "--mode")
        .nth(1)
        .unwrap_or_default();
    match run() {
        Ok(report) => {
            print!(
                "ok mode={} sent={} received={} close={}",
                mode_name, report.sent, report.received, report.close_code
            );
            match report.compressed {
                (0, _) => println!(),
                (before, after) => println!(
                    " compressed={before}->{after} bytes (ratio {:.2})",
                    before as f64 / after.max(1) as f64
                ),
            }
        }
        Err(e) => {
            println!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<echo::Report, String> {
    let mut mode = None;
    let mut url = None;
    let mut plan = echo::Plan {
        count: 100,
        size: 32,
        binary: false,
    };
    let mut builder = Config::builder()
        .max_message_size(Some(echo::MAX_MESSAGE))
        .max_frame_size(Some(echo::MAX_MESSAGE));
    let mut args = std::env::args().skip(1);
    let value = |args: &mut dyn Iterator<Item = String>, flag: &str| {
        args.next().ok_or_else(|| format!("{flag} needs a value"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mode" => {
                let m = value(&mut args, "--mode")?;
                mode = Some(echo::Mode::parse(&m).ok_or_else(|| {
                    format!("unknown mode {m:?}: expected blocking, nonblocking or threaded")
                })?);
            }
            "--url" => url = Some(value(&mut args, "--url")?),
            "--count" => {
                plan.count = value(&mut args, "--count")?
                    .parse()
                    .map_err(|e| format!("--count: {e}"))?
            }
            "--size" => {
                plan.size = value(&mut args, "--size")?
                    .parse()
                    .map_err(|e| format!("--size: {e}"))?
            }
            "--binary" => plan.binary = true,
            "--deflate" => builder = builder.deflate(Some(DeflateConfig::new())),
            "--ca" => {
                let path = value(&mut args, "--ca")?;
                let pem = std::fs::read(&path).map_err(|e| format!("read {path}: {e}"))?;
                builder = builder.root_certificate_pem(&pem);
            }
            "--header" => {
                let h = value(&mut args, "--header")?;
                let (k, v) = h
                    .split_once(':')
                    .ok_or_else(|| format!("--header {h:?}: expected 'Name: value'"))?;
                builder = builder.header(k.trim(), v.trim());
            }
            "--wait" => {
                let w = value(&mut args, "--wait")?;
                let strategy = match w.as_str() {
                    "readiness" => WaitStrategy::Readiness,
                    "spin" => WaitStrategy::BusySpin,
                    s => match s.strip_prefix("sleep:").and_then(|ms| ms.parse().ok()) {
                        Some(ms) => WaitStrategy::Sleep(Duration::from_millis(ms)),
                        None => {
                            return Err(format!(
                                "--wait {w:?}: expected readiness, spin or sleep:MS"
                            ))
                        }
                    },
                };
                builder = builder.wait_strategy(strategy);
            }
            "-h" | "--help" => {
                return Err(
                    "usage: echo_client --mode blocking|nonblocking|threaded --url URL \
                     [--count N] [--size BYTES] [--binary] [--deflate] [--ca PEM] \
                     [--header 'K: V']... [--wait readiness|spin|sleep:MS]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mode = mode.ok_or("--mode is required (blocking, nonblocking or threaded)")?;
    let url = url.ok_or("--url is required")?;
    let config = builder.build().map_err(|e| e.to_string())?;
    echo::run(mode, &url, &config, plan)
}
