//! The README's first command: starts a local echo server (plain and TLS) in this process and
//! runs all three client modes against it, checking every echo.
//!
//! ```text
//! cargo run --release --example demo
//! ```

#[path = "support/echo.rs"]
mod echo;

use syncws::{Config, DeflateConfig};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let plain = echo::spawn_echo_server("127.0.0.1:0", None)?;
    let (acceptor, cert_pem) = echo::dev_tls()?;
    let tls = echo::spawn_echo_server("127.0.0.1:0", Some(acceptor))?;
    println!(
        "local echo servers: ws://{plain}/ and wss://localhost:{}/",
        tls.port()
    );

    let plain_config = Config::default();
    let tls_config = Config::builder()
        .root_certificate_pem(cert_pem.as_bytes())
        .build()?;
    // The same over wss://, with permessage-deflate (the 32 B messages are below the threshold
    // and go out plain; the 1 MiB ones are compressed).
    let deflate_config = Config::builder()
        .root_certificate_pem(cert_pem.as_bytes())
        .deflate(Some(DeflateConfig::new()))
        .build()?;
    let runs = [
        (
            "text 10000 x 32 B",
            echo::Plan {
                count: 10_000,
                size: 32,
                binary: false,
            },
        ),
        (
            "binary 64 x 1 MiB",
            echo::Plan {
                count: 64,
                size: 1 << 20,
                binary: true,
            },
        ),
    ];
    let mut failures = 0;
    for (scheme, url, config) in [
        ("ws", format!("ws://{plain}/"), &plain_config),
        (
            "wss",
            format!("wss://localhost:{}/", tls.port()),
            &tls_config,
        ),
        (
            "wss+deflate",
            format!("wss://localhost:{}/", tls.port()),
            &deflate_config,
        ),
    ] {
        for mode in [
            echo::Mode::Blocking,
            echo::Mode::NonBlocking,
            echo::Mode::Threaded,
        ] {
            for (what, plan) in runs {
                let outcome = echo::run(mode, &url, config, plan).and_then(|r| {
                    // What the line below claims is checked, not only printed: a clean close,
                    // and compression exactly where it was asked for and pays.
                    let deflate = scheme == "wss+deflate";
                    let (before, after) = r.compressed;
                    if r.close_code != 1000 {
                        Err(format!("closed with {} instead of 1000", r.close_code))
                    } else if deflate && plan.size > 1024 && !(before > 0 && after < before / 2) {
                        Err(format!("not compressed: {before} B in, {after} B out"))
                    } else if (!deflate || plan.size <= 1024) && before != 0 {
                        Err(format!("compressed {before} B without reason"))
                    } else {
                        Ok(r)
                    }
                });
                match outcome {
                    Ok(r) => println!(
                        "ok   {scheme:11} {:11} {what:18} sent={} received={} close={} in {:.1} ms{}",
                        mode.name(),
                        r.sent,
                        r.received,
                        r.close_code,
                        r.elapsed.as_secs_f64() * 1e3,
                        match r.compressed {
                            (0, _) => String::new(),
                            (before, after) => format!(
                                ", compressed {:.1}x",
                                before as f64 / after.max(1) as f64
                            ),
                        }
                    ),
                    Err(e) => {
                        failures += 1;
                        println!("FAIL {scheme:11} {:11} {what:18} {e}", mode.name());
                    }
                }
            }
        }
    }
    if failures > 0 {
        return Err(format!("{failures} run(s) failed").into());
    }
    println!("all three modes work, over ws:// and wss://, with and without compression");
    Ok(())
}
