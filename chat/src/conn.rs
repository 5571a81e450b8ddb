//! One chat connection: the library's `ServerConnection` on its own thread, with this handler.
//! It reads the client's frames, answers what it can alone (`ping`, `hello`, refusals, the rate
//! limit) and hands the rest to the hub, which answers through the connection's handle.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use serde_json::{json, Value};
use syncws::{CloseInfo, CommandSender, Context, Error, Handler, TimeoutKind};

use crate::eventlog::EventLog;
use crate::hub::Request;
use crate::metrics::Metrics;
use crate::now_ms;
use crate::protocol::{self, check_nick, check_room, check_text, Frame, Op, Refusal};

/// Close code for sustained rate-limit abuse.
pub const POLICY_VIOLATION: u16 = 1008;
/// Close code for data the protocol does not take (binary frames, after a warning).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// The binary frame that closes the connection (the ones before get an error).
const BINARY_CLOSE: u32 = 3;

/// What every connection shares.
pub struct Shared {
    pub hub: Sender<Request>,
    pub metrics: Arc<Metrics>,
    pub log: EventLog,
    /// The `limits` object of `welcome`.
    pub limits: Value,
    pub rate: f64,
    pub burst: f64,
    pub rate_abuse: u32,
}

/// A token bucket: `rate` tokens a second, up to `burst`.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        Bucket {
            tokens: burst,
            rate,
            burst,
            at: Instant::now(),
        }
    }

    /// Take `cost` tokens if there are that many (a cost above the burst needs a full bucket).
    pub fn take(&mut self, now: Instant, cost: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let cost = cost.min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

pub struct ChatConn {
    id: u64,
    nick: String,
    /// Set by a token (`--jwt-secret`): `hello` cannot change it.
    nick_fixed: bool,
    peer: String,
    shared: Arc<Shared>,
    handle: CommandSender,
    conn_metrics: Arc<syncws::Metrics>,
    bucket: Bucket,
    /// Rate-limited messages in a row.
    strikes: u32,
    /// Binary frames received (the chat protocol has none).
    binary: u32,
    last_active: Arc<AtomicI64>,
    registered: bool,
    close_code: Option<u16>,
    ended_by: Option<&'static str>,
    /// What lives as long as the connection when no thread of its own holds it (in an event
    /// thread's set): its admission slot, the server's count of live connections.
    _held: Option<Box<dyn Send>>,
}

impl ChatConn {
    pub fn new(
        id: u64,
        nick: Option<String>,
        peer: String,
        handle: CommandSender,
        conn_metrics: Arc<syncws::Metrics>,
        shared: Arc<Shared>,
    ) -> Self {
        let bucket = Bucket::new(shared.rate, shared.burst);
        ChatConn {
            id,
            nick: nick.unwrap_or_else(|| format!("guest-{id}")),
            nick_fixed: false,
            peer,
            shared,
            handle,
            conn_metrics,
            bucket,
            strikes: 0,
            binary: 0,
            last_active: Arc::new(AtomicI64::new(now_ms())),
            registered: false,
            close_code: None,
            ended_by: None,
            _held: None,
        }
    }

    /// Keep `held` until this connection's handler is dropped (after `on_quit`).
    pub fn holding(mut self, held: Box<dyn Send>) -> Self {
        self._held = Some(held);
        self
    }

    /// The nick comes from the connection's token and stays.
    pub fn fix_nick(mut self) -> Self {
        self.nick_fixed = true;
        self
    }

    fn welcome(&self, ctx: &mut Context<'_>, cid: Option<Value>) {
        let mut welcome = json!({"ev": "welcome", "id": self.id, "nick": self.nick, "limits": self.shared.limits});
        if let Some(cid) = cid {
            welcome["cid"] = cid;
        }
        let _ = ctx.send_text(&welcome.to_string());
    }

    fn refuse(&self, ctx: &mut Context<'_>, refusal: &Refusal) {
        Metrics::inc(&self.shared.metrics.protocol_errors_total);
        let _ = ctx.send_text(&refusal.to_json());
    }

    fn to_hub(&self, request: Request) {
        // Blocks while the hub is behind: this connection then stops reading, which is the
        // backpressure a sender should feel (in an event thread, every connection of its set
        // waits with it: the hub is what they all wait for). Fails only once the hub has
        // stopped (shutdown). The hub never waits on a connection, so this cannot deadlock.
        let _ = self.shared.hub.send(request);
    }

    /// Charge `cost` tokens of the rate limit: true if there were enough. If not, the frame
    /// is refused (with its `cid`), and sustained abuse closes the connection with 1008.
    fn charge(&mut self, ctx: &mut Context<'_>, cost: f64, cid: Option<Value>) -> bool {
        if self.bucket.take(Instant::now(), cost) {
            self.strikes = 0;
            return true;
        }
        self.strikes += 1;
        Metrics::inc(&self.shared.metrics.rate_limited_total);
        if self.strikes >= self.shared.rate_abuse {
            Metrics::inc(&self.shared.metrics.rate_limit_closes_total);
            self.shared.log.record(
                "rate_limit_close",
                json!({"id": self.id, "peer": self.peer}),
            );
            self.ended_by = Some("rate_abuse");
            let _ = ctx.close(POLICY_VIOLATION, "rate limit exceeded");
            return false;
        }
        if self.strikes == 1 {
            self.shared
                .log
                .record("rate_limited", json!({"id": self.id, "peer": self.peer}));
        }
        let refusal = Refusal::new(
            "rate_limited",
            format!(
                "more than {} messages a second (expensive requests count for more); this one was not carried out",
                self.shared.rate
            ),
        )
        .with_cid(cid);
        self.refuse(ctx, &refusal);
        false
    }

    fn op(&mut self, ctx: &mut Context<'_>, op: Op, cid: Option<Value>) {
        let id = self.id;
        match op {
            Op::Ping {} => {
                let mut pong = json!({"ev": "pong"});
                if let Some(cid) = cid {
                    pong["cid"] = cid;
                }
                let _ = ctx.send_text(&pong.to_string());
                return;
            }
            Op::Hello { nick } => {
                if let Err(r) = check_nick(&nick) {
                    return self.refuse(ctx, &r.with_cid(cid));
                }
                if self.nick_fixed && nick != self.nick {
                    return self.refuse(
                        ctx,
                        &Refusal::new("nick_fixed", "your nick is set by your token").with_cid(cid),
                    );
                }
                self.nick = nick.clone();
                self.shared
                    .log
                    .record("hello", json!({"id": id, "nick": nick}));
                self.to_hub(Request::Hello { id, nick });
                self.welcome(ctx, cid);
                return;
            }
            Op::Say { ref room, ref text } => {
                if let Err(r) = check_room(room).and_then(|()| check_text(text)) {
                    return self.refuse(ctx, &r.with_room(room).with_cid(cid));
                }
            }
            _ => {}
        }
        self.to_hub(Request::Op {
            id,
            op,
            cid,
            at: Instant::now(),
        });
    }
}

impl Handler for ChatConn {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        let connect = Request::Connect {
            id: self.id,
            nick: self.nick.clone(),
            tx: self.handle.clone(),
            metrics: self.conn_metrics.clone(),
            last_active: self.last_active.clone(),
        };
        if self.shared.hub.send(connect).is_err() {
            // Upgraded while the server stopped: there are no rooms to serve it any more.
            self.ended_by = Some("shutdown");
            let _ = ctx.close(1001, "server shutting down");
            return;
        }
        self.registered = true;
        self.welcome(ctx, None);
    }

    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        if self.ended_by.is_some() {
            // Closing for abuse: what the client sent meanwhile is dropped, as the close says.
            return;
        }
        self.last_active.store(now_ms(), Ordering::Relaxed);
        Metrics::add(&self.shared.metrics.bytes_in_total, text.len() as u64);
        let frame = protocol::parse(text);
        let (cost, cid) = match &frame {
            Ok(Frame::Op { op, cid }) => (op.cost(), cid.clone()),
            Ok(Frame::Plain(_)) => (1.0, None),
            Err(r) => (1.0, r.cid.clone()),
        };
        if !self.charge(ctx, cost, cid) {
            return;
        }
        match frame {
            Ok(Frame::Plain(text)) => match check_text(&text) {
                Ok(()) => self.to_hub(Request::Plain {
                    id: self.id,
                    text,
                    at: Instant::now(),
                }),
                Err(r) => self.refuse(ctx, &r),
            },
            Ok(Frame::Op { op, cid }) => self.op(ctx, op, cid),
            Err(refusal) => self.refuse(ctx, &refusal),
        }
    }

    fn on_binary_message(&mut self, ctx: &mut Context<'_>, _data: &[u8]) {
        if self.ended_by.is_some() {
            return;
        }
        self.last_active.store(now_ms(), Ordering::Relaxed);
        self.binary += 1;
        // Binary frames pay the rate limit as text does, and the third closes: each would
        // otherwise earn an error frame fifteen times its size, and keep the connection from
        // idling out.
        if !self.charge(ctx, 1.0, None) {
            return;
        }
        if self.binary >= BINARY_CLOSE {
            self.ended_by = Some("binary");
            self.shared
                .log
                .record("binary_close", json!({"id": self.id, "peer": self.peer}));
            let _ = ctx.close(
                UNSUPPORTED_DATA,
                "binary frames are not part of the chat protocol",
            );
            return;
        }
        self.refuse(
            ctx,
            &Refusal::new(
                "binary_unsupported",
                format!(
                    "the chat protocol is JSON text frames; binary frame {BINARY_CLOSE} closes the connection (1003)"
                ),
            ),
        );
    }

    fn on_connection_closed(&mut self, _ctx: &mut Context<'_>, close: &CloseInfo) {
        self.close_code = Some(close.code.into());
    }

    fn on_error(&mut self, _ctx: &mut Context<'_>, error: &Error) {
        match error {
            Error::MessageTooLarge { .. } => {
                Metrics::inc(&self.shared.metrics.too_big_closes_total);
                self.close_code.get_or_insert(1009);
                self.ended_by = Some("too_big");
            }
            Error::Timeout(TimeoutKind::Pong) => {
                Metrics::inc(&self.shared.metrics.dead_peers_total);
                self.ended_by = Some("dead_peer");
            }
            // A frame larger than the whole queue: it could never be sent. The server's limits
            // rule this out (every answer is cut to a fraction of the queue); if it happens,
            // it is a bug, and it is said loudly.
            Error::QueueFull { len, limit } => {
                Metrics::inc(&self.shared.metrics.frames_too_large_total);
                tracing::error!(
                    id = self.id,
                    len,
                    limit,
                    "a frame larger than the connection's queue was not sent"
                );
                self.shared.log.record(
                    "frame_too_large",
                    json!({"id": self.id, "bytes": len, "limit": limit}),
                );
            }
            _ => {}
        }
        tracing::debug!(id = self.id, error = %error, "connection error");
    }

    fn on_quit(&mut self) {
        if self.registered {
            self.to_hub(Request::Disconnect { id: self.id });
        }
        let code = self.close_code.unwrap_or(0);
        self.shared.metrics.closed(code);
        Metrics::dec(&self.shared.metrics.connections);
        self.shared.log.record(
            "disconnect",
            json!({"id": self.id, "peer": self.peer, "code": code, "why": self.ended_by}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 3.0);
        assert!(b.take(t0, 1.0) && b.take(t0, 1.0) && b.take(t0, 1.0));
        assert!(!b.take(t0, 1.0));
        assert!(b.take(t0 + Duration::from_millis(100), 1.0));
        assert!(!b.take(t0 + Duration::from_millis(100), 1.0));
        // Costly requests take more; one costing more than the burst needs a full bucket.
        let mut b = Bucket::new(10.0, 3.0);
        assert!(b.take(t0, 5.0));
        assert!(!b.take(t0, 1.0));
        assert!(!b.take(t0 + Duration::from_millis(200), 5.0));
        assert!(b.take(t0 + Duration::from_millis(300), 2.0));
    }
}
