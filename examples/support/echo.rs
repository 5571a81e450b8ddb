//! Shared by the examples: a local echo server on the library's own server-side core, a
//! development certificate, and the echo check that `echo_client` and `demo` run.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use syncws::{
    BlockingClient, CloseInfo, Command, Config, Context, DeflateConfig, Error, Event, Handler,
    NonBlockingClient, ServerConnection, ThreadedClient,
};

/// The largest message the echo server and client take. A message goes out as one frame, so
/// frames get the same limit. Finite on purpose: a frame's announced length is allocated when
/// its header arrives, so "no limit" would let a peer claim any size.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Echoes every text and binary message; answers pings (the core does) and closes.
struct Echo;

impl Handler for Echo {
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        let _ = ctx.send_text(text);
    }
    fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        let _ = ctx.send_binary(data);
    }
}

/// Start an echo server on `addr` (port 0 picks one), thread per connection, compressing with
/// clients that offer permessage-deflate. Returns the bound
/// address; the server runs until the process exits.
pub fn spawn_echo_server(
    addr: &str,
    tls: Option<native_tls::TlsAcceptor>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let tls = tls.map(Arc::new);
    std::thread::Builder::new()
        .name("echo-accept".into())
        .spawn(move || {
            // Server defaults (a small queue and command channel per connection, write and
            // handshake timeouts); compresses (permessage-deflate) with clients that offer it.
            let config = Config::server_builder()
                .max_message_size(Some(MAX_MESSAGE))
                .max_frame_size(Some(MAX_MESSAGE))
                // An echo must be able to queue the largest message it accepts (the memory is
                // taken only while such a message waits for the socket).
                .max_queued_bytes(2 * MAX_MESSAGE)
                .deflate(Some(DeflateConfig::new()))
                .build()
                .expect("static config is valid");
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let tls = tls.clone();
                let config = config.clone();
                std::thread::spawn(move || {
                    match ServerConnection::accept(tcp, tls.as_deref(), &config) {
                        Ok(conn) => conn.run(&mut Echo),
                        Err(e) => eprintln!("echo server: {e}"),
                    }
                });
            }
        })?;
    Ok(local)
}

/// A self-signed development certificate for `localhost` and 127.0.0.1: the acceptor for the
/// server and the PEM a client must trust.
pub fn dev_tls() -> Result<(native_tls::TlsAcceptor, String), Box<dyn std::error::Error>> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)?;
    let cert_pem = cert.pem();
    let identity = native_tls::Identity::from_pkcs8(
        cert_pem.as_bytes(),
        signing_key.serialize_pem().as_bytes(),
    )?;
    Ok((native_tls::TlsAcceptor::new(identity)?, cert_pem))
}

/// Which client to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Blocking,
    NonBlocking,
    Threaded,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "blocking" => Some(Mode::Blocking),
            "nonblocking" => Some(Mode::NonBlocking),
            "threaded" => Some(Mode::Threaded),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Blocking => "blocking",
            Mode::NonBlocking => "nonblocking",
            Mode::Threaded => "threaded",
        }
    }
}

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub count: usize,
    pub size: usize,
    pub binary: bool,
}

/// What came back.
#[derive(Debug)]
pub struct Report {
    pub sent: usize,
    pub received: usize,
    pub close_code: u16,
    pub elapsed: Duration,
    /// Payload bytes sent compressed (permessage-deflate), before and after.
    pub compressed: (u64, u64),
}

/// Messages in flight at once: enough to pipeline, bounded so large messages stay in memory.
fn window(plan: &Plan) -> usize {
    (8 << 20) / plan.size.max(1)
}

/// The payload of message `i`: deterministic, so an echo can be checked for corruption and
/// order. Text payloads are ASCII.
pub fn payload(i: usize, size: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..size)
        .map(|j| b'a' + ((i * 31 + j) % 26) as u8)
        .collect();
    let tag = format!("{i}:");
    if tag.len() <= size {
        p[..tag.len()].copy_from_slice(tag.as_bytes());
    }
    p
}

/// Checks echoes in order; decides what to send next.
struct Checker {
    plan: Plan,
    sent: usize,
    received: usize,
    close_code: Option<u16>,
    error: Option<String>,
}

impl Checker {
    fn new(plan: Plan) -> Self {
        Checker {
            plan,
            sent: 0,
            received: 0,
            close_code: None,
            error: None,
        }
    }

    /// Payloads to send now to keep the window full.
    fn next_batch(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while self.sent < self.plan.count && self.sent - self.received < window(&self.plan).max(1) {
            out.push(payload(self.sent, self.plan.size));
            self.sent += 1;
        }
        out
    }

    /// Check one echo; returns true when it is the last.
    fn check(&mut self, data: &[u8], is_text: bool) -> Result<bool, String> {
        if is_text == self.plan.binary {
            return Err(format!(
                "echo {} came back as the wrong type",
                self.received
            ));
        }
        if data != payload(self.received, self.plan.size).as_slice() {
            return Err(format!(
                "echo {} is corrupted or out of order",
                self.received
            ));
        }
        self.received += 1;
        Ok(self.received == self.plan.count)
    }

    fn fail(&mut self, e: String) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

/// The callback modes share one handler.
impl Handler for Checker {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        if self.plan.count == 0 {
            let _ = ctx.close(1000, "done");
        }
        self.pump(ctx);
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        self.echo(ctx, text.as_bytes(), true);
    }
    fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        self.echo(ctx, data, false);
    }
    fn on_connection_closed(&mut self, _ctx: &mut Context<'_>, close: &CloseInfo) {
        self.close_code = Some(close.code.into());
    }
    fn on_error(&mut self, _ctx: &mut Context<'_>, error: &Error) {
        self.fail(error.to_string());
    }
}

impl Checker {
    fn pump(&mut self, ctx: &mut Context<'_>) {
        for p in self.next_batch() {
            let r = if self.plan.binary {
                ctx.send_binary(&p)
            } else {
                // payload() is ASCII.
                ctx.send_text(std::str::from_utf8(&p).expect("ascii payload"))
            };
            if let Err(e) = r {
                self.fail(format!("send: {e}"));
                ctx.force_quit();
            }
        }
    }

    fn echo(&mut self, ctx: &mut Context<'_>, data: &[u8], is_text: bool) {
        match self.check(data, is_text) {
            Ok(true) => {
                let _ = ctx.close(1000, "done");
            }
            Ok(false) => self.pump(ctx),
            Err(e) => {
                self.fail(e);
                let _ = ctx.close(1002, "bad echo");
            }
        }
    }
}

/// Connect in `mode`, run the plan, and report; any mismatch or error is an `Err`.
pub fn run(mode: Mode, url: &str, config: &Config, plan: Plan) -> Result<Report, String> {
    let started = Instant::now();
    let mut checker = Checker::new(plan);
    let metrics = match mode {
        Mode::Blocking => {
            let client = BlockingClient::connect(url, config).map_err(|e| e.to_string())?;
            let metrics = client.metrics();
            client.run(&mut checker);
            metrics
        }
        Mode::NonBlocking => {
            let client = NonBlockingClient::connect(url, config).map_err(|e| e.to_string())?;
            let metrics = client.metrics();
            client.run(&mut checker);
            metrics
        }
        Mode::Threaded => run_threaded(url, config, &mut checker)?,
    };
    if let Some(e) = checker.error {
        return Err(e);
    }
    if checker.received != plan.count {
        return Err(format!(
            "received {} of {} echoes",
            checker.received, plan.count
        ));
    }
    Ok(Report {
        sent: checker.sent,
        received: checker.received,
        close_code: checker.close_code.ok_or("no close handshake")?,
        elapsed: started.elapsed(),
        compressed: (
            metrics.compression_input_bytes(),
            metrics.compression_output_bytes(),
        ),
    })
}

fn run_threaded(
    url: &str,
    config: &Config,
    checker: &mut Checker,
) -> Result<std::sync::Arc<syncws::Metrics>, String> {
    let client = ThreadedClient::connect(url, config).map_err(|e| e.to_string())?;
    let metrics = client.metrics();
    let send = |checker: &mut Checker| {
        for p in checker.next_batch() {
            let cmd = if checker.plan.binary {
                Command::SendBinary(p.into())
            } else {
                // payload() is ASCII.
                Command::SendText(String::from_utf8(p).expect("ascii payload").into())
            };
            client
                .control_tx
                .send(cmd)
                .map_err(|_| "worker ended".to_string())?;
        }
        Ok::<(), String>(())
    };
    for event in client.event_rx.iter() {
        let result = match event {
            Event::Activated(_) if checker.plan.count == 0 => {
                let _ = client.control_tx.close(1000, "done");
                Ok(false)
            }
            Event::Activated(_) => send(checker).map(|()| false),
            Event::TextMessage(t) => checker.check(t.as_bytes(), true),
            Event::BinaryMessage(b) => checker.check(&b, false),
            Event::ConnectionClosed(c) => {
                checker.close_code = Some(c.code.into());
                Ok(false)
            }
            Event::Error(e) => Err(e.to_string()),
            Event::Quit => break,
            _ => Ok(false),
        };
        match result {
            Ok(true) => {
                let _ = client.control_tx.close(1000, "done");
            }
            Ok(false) if checker.received > 0 => send(checker)?,
            Ok(false) => {}
            Err(e) => {
                checker.fail(e);
                let _ = client.control_tx.force_quit();
            }
        }
    }
    Ok(metrics)
}
