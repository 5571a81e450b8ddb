//! s9_websocket 0.0.2 (on tungstenite 0.27, default `WebSocketConfig`), driven as its source
//! intends:
//!
//! - blocking: `run(handler)`; sends from the hooks with `send_text_message(&str)` /
//!   `send_binary_message(Vec<u8>)`, each a tungstenite `send` (write + flush). Its socket read
//!   timeout (our stall limit, or the idle time) makes `on_idle` run.
//! - non-blocking: the same hooks on a non-blocking socket, no spin wait (`spin_wait_duration`
//!   None, its fastest setting; the loop calls `read` and then `on_idle` again at once).
//! - threaded ("async"): `run()` spawns a worker that busy-polls (no spin wait) one command and
//!   one read per iteration; `control_tx.send(ControlMessage::SendText(String))` in,
//!   `event_rx` out.
//!
//! One thing the harness must do for it: on a non-blocking socket a send whose write meets a
//! full socket returns `Err(Io(WouldBlock))` while tungstenite keeps the rest of the frame
//! queued, and s9 never flushes it on its own (`read` does not write). A client that then waits
//! for echoes would wait forever. So the non-blocking handler flushes in `on_idle` while a send
//! is pending, and the threaded driver sends an empty ping (whose send flushes the queue) after
//! 100 µs without events while one is pending.

use std::io;
use std::time::{Duration, Instant};

use s9_websocket::{
    BlockingOptions, ControlMessage, NonBlockingOptions, S9AsyncNonBlockingWebSocketClient,
    S9BlockingWebSocketClient, S9NonBlockingWebSocketClient, S9Result, S9WebSocketClientHandler,
    S9WebSocketError, WebSocketEvent,
};

use crate::job::{bin64k, Job, Params, Test, TEXT32};

/// What the handler needs from either callback client. (The large error type is s9's.)
#[allow(clippy::result_large_err)]
trait S9Client {
    fn send_text(&mut self, text: &str) -> S9Result<()>;
    fn send_bin(&mut self, data: Vec<u8>) -> S9Result<()>;
    fn close(&mut self);
    fn force_quit(&mut self);
    /// Push out what a WouldBlock left queued. Ok(true) when nothing is left.
    fn flush(&mut self) -> Result<bool, String>;
}

macro_rules! impl_s9_client {
    ($t:ty) => {
        impl S9Client for $t {
            fn send_text(&mut self, text: &str) -> S9Result<()> {
                self.send_text_message(text)
            }
            fn send_bin(&mut self, data: Vec<u8>) -> S9Result<()> {
                self.send_binary_message(data)
            }
            fn close(&mut self) {
                <$t>::close(self)
            }
            fn force_quit(&mut self) {
                <$t>::force_quit(self)
            }
            fn flush(&mut self) -> Result<bool, String> {
                // The error is s9's tungstenite (0.27); s9 converts it.
                match self
                    .get_socket_mut()
                    .flush()
                    .map_err(S9WebSocketError::from)
                {
                    Ok(()) => Ok(true),
                    Err(e) if would_block(&e) => Ok(false),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    };
}

impl_s9_client!(S9BlockingWebSocketClient);
impl_s9_client!(S9NonBlockingWebSocketClient);

fn would_block(e: &S9WebSocketError) -> bool {
    matches!(e, S9WebSocketError::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

struct Handler {
    job: Job,
    bin: Vec<u8>,
    /// A send met a full socket: part of it is still queued in tungstenite.
    pending: bool,
    /// Echoes so far, and when `on_idle` last saw the count move (for the stall limit).
    echoes: u64,
    seen: (u64, Instant),
    stall: Duration,
    closing: Option<Instant>,
}

impl Handler {
    fn new(job: Job, p: &Params) -> Handler {
        let bin = if job.test().binary() {
            bin64k()
        } else {
            Vec::new()
        };
        Handler {
            job,
            bin,
            pending: false,
            echoes: 0,
            seen: (0, Instant::now()),
            stall: p.stall,
            closing: None,
        }
    }

    fn send<C: S9Client>(&mut self, c: &mut C, k: usize) {
        for _ in 0..k {
            let r = if self.job.test().binary() {
                c.send_bin(self.bin.clone())
            } else {
                c.send_text(TEXT32)
            };
            match r {
                Ok(()) => self.pending = false,
                Err(e) if would_block(&e) => self.pending = true,
                Err(e) => {
                    self.job.fail(format!("send: {e}"));
                    c.force_quit();
                    return;
                }
            }
        }
    }

    fn echo<C: S9Client>(&mut self, c: &mut C, len: usize) {
        if self.closing.is_some() {
            return;
        }
        self.echoes += 1;
        let k = self.job.on_echo(len);
        if self.job.is_done() {
            self.close(c);
        } else {
            self.send(c, k);
        }
    }

    fn close<C: S9Client>(&mut self, c: &mut C) {
        if self.closing.is_none() {
            self.closing = Some(Instant::now());
            c.close();
            self.pending = true;
        }
    }

    fn idle<C: S9Client>(&mut self, c: &mut C) {
        if self.job.test() == Test::Idle {
            if self.job.idle_check() {
                c.force_quit();
            }
            return;
        }
        if self.pending {
            match c.flush() {
                Ok(done) => self.pending = !done,
                Err(e) => {
                    self.job.fail(format!("flush: {e}"));
                    c.force_quit();
                }
            }
        }
        let now = Instant::now();
        if let Some(t) = self.closing {
            if now - t > Duration::from_secs(5) {
                c.force_quit();
            }
        } else if self.echoes != self.seen.0 {
            self.seen = (self.echoes, now);
        } else if now - self.seen.1 > self.stall {
            self.job.fail("stalled");
            c.force_quit();
        }
    }
}

impl<C: S9Client> S9WebSocketClientHandler<C> for Handler {
    fn on_activated(&mut self, client: &mut C) {
        let k = self.job.start();
        self.seen = (0, Instant::now());
        self.send(client, k);
    }
    fn on_idle(&mut self, client: &mut C) {
        self.idle(client);
    }
    fn on_text_message(&mut self, client: &mut C, data: &[u8]) {
        self.echo(client, data.len());
    }
    fn on_binary_message(&mut self, client: &mut C, data: &[u8]) {
        self.echo(client, data.len());
    }
    fn on_error(&mut self, _client: &mut C, error: String) {
        if self.closing.is_none() && !self.job.is_done() {
            self.job.fail(error);
        }
    }
}

fn take(job: &mut Job, h: Handler) {
    *job = h.job;
}

pub fn blocking(job: &mut Job, url: &str, p: &Params) -> Result<(), String> {
    let timeout = if job.test() == Test::Idle {
        p.idle
    } else {
        p.stall
    };
    let options = BlockingOptions::new()
        .nodelay(true)
        .read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut client =
        S9BlockingWebSocketClient::connect(url, options).map_err(|e| format!("connect: {e}"))?;
    let mut h = Handler::new(std::mem::replace(job, Job::new(job.test(), p)), p);
    client.run(&mut h);
    take(job, h);
    Ok(())
}

pub fn nonblocking(job: &mut Job, url: &str, p: &Params) -> Result<(), String> {
    let options = NonBlockingOptions::new()
        .nodelay(true)
        .spin_wait_duration(None)
        .map_err(|e| e.to_string())?;
    let mut client =
        S9NonBlockingWebSocketClient::connect(url, options).map_err(|e| format!("connect: {e}"))?;
    let mut h = Handler::new(std::mem::replace(job, Job::new(job.test(), p)), p);
    client.run(&mut h);
    take(job, h);
    Ok(())
}

fn is_would_block_text(e: &str) -> bool {
    e.contains("os error 11") || e.contains("WouldBlock") || e.contains("would block")
}

pub fn threaded(job: &mut Job, url: &str, p: &Params) -> Result<(), String> {
    let options = NonBlockingOptions::new()
        .nodelay(true)
        .spin_wait_duration(None)
        .map_err(|e| e.to_string())?;
    let mut client = S9AsyncNonBlockingWebSocketClient::connect(url, options)
        .map_err(|e| format!("connect: {e}"))?;
    let worker = client.run().map_err(|e| format!("run: {e}"))?;
    let result = drive_threaded(&mut client, job, p);
    // Close and wait (bounded) for the worker's Quit; force it if the close does not finish.
    let _ = client.control_tx.send(ControlMessage::Close());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut quit = false;
    let mut forced = false;
    while !quit {
        let left = deadline.saturating_duration_since(Instant::now());
        match client
            .event_rx
            .recv_timeout(left.max(Duration::from_millis(1)))
        {
            Ok(WebSocketEvent::Quit) => quit = true,
            Ok(_) => {}
            Err(_) if !forced => {
                forced = true;
                let _ = client.control_tx.send(ControlMessage::ForceQuit());
            }
            Err(_) => break,
        }
        if Instant::now() > deadline + Duration::from_secs(2) {
            break;
        }
    }
    if quit {
        let _ = worker.join();
    }
    result
}

fn drive_threaded(
    client: &mut S9AsyncNonBlockingWebSocketClient,
    job: &mut Job,
    p: &Params,
) -> Result<(), String> {
    match client.event_rx.recv_timeout(p.stall) {
        Ok(WebSocketEvent::Activated) => {}
        other => return Err(format!("expected Activated, got {other:?}")),
    }
    if job.test() == Test::Idle {
        return super::idle_on_channel(&client.event_rx, job, p);
    }
    let bin = bin64k();
    let binary = job.test().binary();
    let send = |k: usize| -> Result<(), String> {
        for _ in 0..k {
            let m = if binary {
                ControlMessage::SendBinary(bin.clone())
            } else {
                ControlMessage::SendText(TEXT32.to_string())
            };
            client
                .control_tx
                .send(m)
                .map_err(|_| "worker gone".to_string())?;
        }
        Ok(())
    };
    let mut k = job.start();
    let mut pending = false;
    // 1 ms kicks since the last echo (bounded by the stall limit).
    let mut kicks = 0u64;
    loop {
        send(k)?;
        k = 0;
        if job.is_done() {
            return Ok(());
        }
        let wait = if pending {
            Duration::from_micros(100)
        } else {
            p.stall
        };
        // try_recv first: recv_timeout reads the clock on every call.
        let event = match client.event_rx.try_recv() {
            Ok(e) => Ok(e),
            Err(_) => client.event_rx.recv_timeout(wait),
        };
        match event {
            Ok(WebSocketEvent::TextMessage(v)) | Ok(WebSocketEvent::BinaryMessage(v)) => {
                kicks = 0;
                k = job.on_echo(v.len());
            }
            Ok(WebSocketEvent::Error(e)) if is_would_block_text(&e) => pending = true,
            Ok(WebSocketEvent::Error(e)) => return Err(e),
            Ok(WebSocketEvent::Quit) | Ok(WebSocketEvent::ConnectionClosed(_)) => {
                return Err("connection ended".into())
            }
            Ok(_) => {}
            Err(_) if pending => {
                kicks += 1;
                if kicks > 1 + p.stall.as_millis() as u64 {
                    return Err("stalled".into());
                }
                // Kick the worker: sending anything flushes its queue.
                pending = false;
                client
                    .control_tx
                    .send(ControlMessage::SendPing(Vec::new()))
                    .map_err(|_| "worker gone".to_string())?;
            }
            Err(_) => return Err("stalled".into()),
        }
    }
}
