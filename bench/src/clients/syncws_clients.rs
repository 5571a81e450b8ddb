//! syncws in every configuration: blocking, the three wait strategies, threaded, and one
//! connection of a `ClientSet`, with the default `Config` apart from the wait strategy
//! and a `read_timeout` (our stall limit, or the idle time) so that every wait is bounded.
//!
//! The callback clients send from the hooks (`on_activated`, `on_*_message`); the library writes
//! everything a pass queued in one system call before it waits. The threaded client sends with
//! `control_tx.send(Command::..)` and reads `event_rx` on this (the application) thread.

use std::time::{Duration, Instant};

use syncws::{
    BlockingClient, Bytes, ClientSet, Command, Config, Context, Event, Handler, Message,
    NonBlockingClient, ThreadedClient, Utf8Bytes, WaitStrategy,
};

use super::Client;
use crate::job::{bin64k, Job, Params, Test, TEXT32};

fn message(test: Test) -> Message {
    if test.binary() {
        Message::Binary(Bytes::from(bin64k()))
    } else {
        Message::Text(Utf8Bytes::from_static(TEXT32))
    }
}

fn config(p: &Params, test: Test, strategy: WaitStrategy) -> Result<Config, String> {
    let timeout = if test == Test::Idle { p.idle } else { p.stall };
    let mut b = Config::builder()
        .wait_strategy(strategy)
        .read_timeout(Some(timeout));
    if let Some(n) = p.syncws_read_buf {
        b = b.read_buffer_size(n);
    }
    b.build().map_err(|e| e.to_string())
}

struct Bench {
    job: Job,
    msg: Message,
    stall: Duration,
    /// Echoes so far, and when `on_idle` last saw the count move (for the stall limit).
    echoes: u64,
    seen: (u64, Instant),
    closing: bool,
}

impl Bench {
    fn send(&mut self, ctx: &mut Context<'_>, k: usize) {
        for _ in 0..k {
            if let Err(e) = ctx.send(self.msg.clone()) {
                self.job.fail(format!("send: {e}"));
                ctx.force_quit();
                return;
            }
        }
    }

    fn echo(&mut self, ctx: &mut Context<'_>, len: usize) {
        if self.closing {
            return;
        }
        self.echoes += 1;
        let k = self.job.on_echo(len);
        if self.job.is_done() {
            self.closing = true;
            let _ = ctx.close(1000, "done");
        } else {
            self.send(ctx, k);
        }
    }
}

impl Handler for Bench {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        let k = self.job.start();
        self.seen = (0, Instant::now());
        self.send(ctx, k);
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        self.echo(ctx, text.len());
    }
    fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        self.echo(ctx, data.len());
    }
    fn on_idle(&mut self, ctx: &mut Context<'_>) {
        // Spin and sleep call this after every empty poll; blocking and readiness after
        // `read_timeout` without input.
        if self.job.test() == Test::Idle {
            if !self.closing && self.job.idle_check() {
                self.closing = true;
                let _ = ctx.close(1000, "done");
            }
            return;
        }
        if self.closing {
            return;
        }
        let now = Instant::now();
        if self.echoes != self.seen.0 {
            self.seen = (self.echoes, now);
        } else if now - self.seen.1 > self.stall {
            self.job.fail("stalled");
            ctx.force_quit();
        }
    }
    fn on_error(&mut self, _ctx: &mut Context<'_>, error: &syncws::Error) {
        if !self.closing {
            self.job.fail(error.to_string());
        }
    }
}

/// Blocking and the three non-blocking wait strategies.
pub fn callbacks(client: Client, job: &mut Job, url: &str, p: &Params) -> Result<(), String> {
    let strategy = match client {
        Client::SyncwsSpin => WaitStrategy::BusySpin,
        Client::SyncwsSleep => WaitStrategy::Sleep(p.sleep),
        _ => WaitStrategy::Readiness,
    };
    let config = config(p, job.test(), strategy)?;
    let mut bench = Bench {
        job: std::mem::replace(job, Job::new(job.test(), p)),
        msg: message(job.test()),
        stall: p.stall,
        echoes: 0,
        seen: (0, Instant::now()),
        closing: false,
    };
    let r = match client {
        Client::SyncwsBlocking => BlockingClient::connect(url, &config).map(|c| c.run(&mut bench)),
        // One connection in a many-connections set: the set's own cost per pass and wait.
        Client::SyncwsSet => ClientSet::new()
            .map_err(syncws::Error::from)
            .and_then(|mut set| {
                set.add(url, &config, &mut bench)?;
                set.run();
                Ok(())
            }),
        _ => NonBlockingClient::connect(url, &config).map(|c| c.run(&mut bench)),
    };
    *job = bench.job;
    r.map_err(|e| format!("connect: {e}"))
}

pub fn threaded(job: &mut Job, url: &str, p: &Params) -> Result<(), String> {
    let config = config(p, job.test(), WaitStrategy::Readiness)?;
    let client = ThreadedClient::connect(url, &config).map_err(|e| format!("connect: {e}"))?;
    let result = drive(&client, job, p);
    // Close and wait (bounded) for Quit, then stop the worker.
    let _ = client.control_tx.close(1000, "done");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.event_rx.recv_timeout(left) {
            Ok(Event::Quit) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = client.shutdown(Duration::from_secs(2));
    result
}

fn drive(client: &ThreadedClient, job: &mut Job, p: &Params) -> Result<(), String> {
    match client.event_rx.recv_timeout(p.stall) {
        Ok(Event::Activated(_)) => {}
        other => return Err(format!("expected Activated, got {other:?}")),
    }
    if job.test() == Test::Idle {
        return super::idle_on_channel(&client.event_rx, job, p);
    }
    let command = match message(job.test()) {
        Message::Binary(b) => Command::SendBinary(b),
        Message::Text(t) => Command::SendText(t),
        _ => unreachable!("message() makes text or binary"),
    };
    let mut k = job.start();
    loop {
        for _ in 0..k {
            client
                .control_tx
                .send(command.clone())
                .map_err(|_| "worker gone".to_string())?;
        }
        if job.is_done() {
            return Ok(());
        }
        // try_recv first: recv_timeout reads the clock on every call.
        let event = match client.event_rx.try_recv() {
            Ok(e) => Ok(e),
            Err(_) => client.event_rx.recv_timeout(p.stall),
        };
        k = match event {
            Ok(Event::TextMessage(t)) => job.on_echo(t.len()),
            Ok(Event::BinaryMessage(b)) => job.on_echo(b.len()),
            Ok(Event::Error(e)) => return Err(e.to_string()),
            Ok(Event::Quit) | Ok(Event::ConnectionClosed(_)) => {
                return Err("connection ended".into())
            }
            Ok(_) => 0,
            Err(_) => return Err("stalled".into()),
        };
    }
}
