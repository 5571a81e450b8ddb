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
use crate::protocol::{self, check_nick, check_room, Frame, Op, Refusal};

/// Close code for sustained rate-limit abuse.
pub const POLICY_VIOLATION: u16 = 1008;

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

    /// Take a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
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
    last_active: Arc<AtomicI64>,
    registered: bool,
    close_code: Option<u16>,
    ended_by: Option<&'static str>,
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
            last_active: Arc::new(AtomicI64::new(now_ms())),
            registered: false,
            close_code: None,
            ended_by: None,
        }
    }

    /// The nick comes from the connection's token and stays.
    pub fn fix_nick(mut self) -> Self {
        self.nick_fixed = true;
        self
    }

    fn welcome(&self, ctx: &mut Context<'_>) {
        let _ = ctx.send_text(
            &json!({"ev": "welcome", "id": self.id, "nick": self.nick, "limits": self.shared.limits})
                .to_string(),
        );
    }

    fn refuse(&self, ctx: &mut Context<'_>, refusal: &Refusal) {
        Metrics::inc(&self.shared.metrics.protocol_errors_total);
        let _ = ctx.send_text(&refusal.to_json());
    }

    fn to_hub(&self, request: Request) {
        // Blocks while the hub is behind: this connection then stops reading, which is the
        // backpressure a sender should feel. Fails only once the hub has stopped (shutdown).
        let _ = self.shared.hub.send(request);
    }

    fn op(&mut self, ctx: &mut Context<'_>, op: Op) {
        let id = self.id;
        let request = match op {
            Op::Ping => {
                let _ = ctx.send_text(r#"{"ev":"pong"}"#);
                return;
            }
            Op::Hello { nick } => {
                if let Err(r) = check_nick(&nick) {
                    return self.refuse(ctx, &r);
                }
                if self.nick_fixed && nick != self.nick {
                    return self.refuse(
                        ctx,
                        &Refusal::new("nick_fixed", "your nick is set by your token"),
                    );
                }
                self.nick = nick.clone();
                self.shared
                    .log
                    .record("hello", json!({"id": id, "nick": nick}));
                self.to_hub(Request::Hello { id, nick });
                self.welcome(ctx);
                return;
            }
            Op::Join { room, since, epoch } => Request::Join {
                id,
                room,
                since,
                epoch,
            },
            Op::Leave { room } => Request::Leave { id, room },
            Op::Say { room, text, cid } => {
                if let Err(r) = check_room(&room) {
                    return self.refuse(ctx, &r.with_cid(cid));
                }
                Request::Say {
                    id,
                    room: Some(room),
                    text,
                    cid,
                    at: std::time::Instant::now(),
                }
            }
            Op::History {
                room,
                before,
                limit,
            } => Request::History {
                id,
                room,
                before,
                limit,
            },
            Op::Rooms => Request::Rooms { id },
            Op::Who { room } => Request::Who { id, room },
            Op::Match => Request::Match { id },
            Op::Next => Request::Next { id },
            Op::Unmatch => Request::Unmatch { id },
            Op::Typing { room } => Request::Typing { id, room },
        };
        self.to_hub(request);
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
        self.welcome(ctx);
    }

    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        if self.ended_by.is_some() {
            // Closing for abuse: what the client sent meanwhile is dropped, as the close says.
            return;
        }
        self.last_active.store(now_ms(), Ordering::Relaxed);
        Metrics::add(&self.shared.metrics.bytes_in_total, text.len() as u64);
        let frame = protocol::parse(text);
        if !self.bucket.take(Instant::now()) {
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
                return;
            }
            let cid = match &frame {
                Ok(Frame::Op(Op::Say { cid, .. })) => cid.clone(),
                Err(r) => r.cid.clone(),
                _ => None,
            };
            let refusal = Refusal::new(
                "rate_limited",
                format!(
                    "more than {} messages a second; this one was not delivered",
                    self.shared.rate
                ),
            )
            .with_cid(cid);
            if self.strikes == 1 {
                self.shared
                    .log
                    .record("rate_limited", json!({"id": self.id, "peer": self.peer}));
            }
            return self.refuse(ctx, &refusal);
        }
        self.strikes = 0;
        match frame {
            Ok(Frame::Plain(text)) => self.to_hub(Request::Say {
                id: self.id,
                room: None,
                text,
                cid: None,
                at: std::time::Instant::now(),
            }),
            Ok(Frame::Op(op)) => self.op(ctx, op),
            Err(refusal) => self.refuse(ctx, &refusal),
        }
    }

    fn on_binary_message(&mut self, ctx: &mut Context<'_>, _data: &[u8]) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
        self.refuse(
            ctx,
            &Refusal::new(
                "binary_unsupported",
                "the chat protocol is JSON text frames",
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
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }
}
