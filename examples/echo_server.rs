//! A local echo server (plain `ws://` or `wss://` with a generated development certificate),
//! built on the library's own server-side core, so every example works offline.
//!
//! ```text
//! cargo run --example echo_server -- [--addr 127.0.0.1:9001] [--tls] [--cert-out PATH]
//! ```
//! With `--tls`, the certificate a client must trust is written to `--cert-out`
//! (default `target/echo-server-cert.pem`); pass it to `echo_client --ca`.

#[path = "support/echo.rs"]
mod echo;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut tls = false;
    let mut cert_out = "target/echo-server-cert.pem".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs a value")?,
            "--tls" => tls = true,
            "--cert-out" => cert_out = args.next().ok_or("--cert-out needs a value")?,
            "-h" | "--help" => {
                println!("usage: echo_server [--addr HOST:PORT] [--tls] [--cert-out PATH]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let acceptor = if tls {
        let (acceptor, pem) = echo::dev_tls()?;
        if let Some(dir) = std::path::Path::new(&cert_out).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&cert_out, pem)?;
        println!("development certificate written to {cert_out}");
        Some(acceptor)
    } else {
        None
    };
    let bound = echo::spawn_echo_server(&addr, acceptor)?;
    let scheme = if tls { "wss" } else { "ws" };
    println!("echo server listening on {scheme}://{bound}/ (ctrl-c to stop)");
    loop {
        std::thread::park();
    }
}
