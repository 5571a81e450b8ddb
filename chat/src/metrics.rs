//! The server's counters, readable from every thread, rendered for `GET /metrics` in the
//! Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

macro_rules! counters {
    ($($name:ident: $kind:literal, $help:literal;)*) => {
        /// Every counter and gauge the server keeps.
        #[derive(Debug)]
        pub struct Metrics {
            started: Instant,
            $(pub $name: AtomicU64,)*
            /// Connections closed, by close code.
            closes: Mutex<Vec<(u16, u64)>>,
        }

        impl Default for Metrics {
            fn default() -> Self {
                Metrics {
                    started: Instant::now(),
                    $($name: AtomicU64::new(0),)*
                    closes: Mutex::new(Vec::new()),
                }
            }
        }

        impl Metrics {
            /// The Prometheus text exposition of every metric.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP chat_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE chat_{} {}", stringify!($name), $kind);
                    let _ = writeln!(out, "chat_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )*
                let _ = writeln!(out, "# HELP chat_closes_total Connections ended, by close code (0: without a close frame).");
                let _ = writeln!(out, "# TYPE chat_closes_total counter");
                for (code, n) in self.closes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    let _ = writeln!(out, "chat_closes_total{{code=\"{code}\"}} {n}");
                }
                let _ = writeln!(out, "# HELP chat_uptime_seconds Seconds since the server started.");
                let _ = writeln!(out, "# TYPE chat_uptime_seconds gauge");
                let _ = writeln!(out, "chat_uptime_seconds {}", self.started.elapsed().as_secs());
                if let Some((rss, threads)) = process_status() {
                    let _ = writeln!(out, "# HELP chat_resident_bytes Resident memory of the process.");
                    let _ = writeln!(out, "# TYPE chat_resident_bytes gauge");
                    let _ = writeln!(out, "chat_resident_bytes {rss}");
                    let _ = writeln!(out, "# HELP chat_threads Threads of the process.");
                    let _ = writeln!(out, "# TYPE chat_threads gauge");
                    let _ = writeln!(out, "chat_threads {threads}");
                }
                out
            }
        }
    };
}

counters! {
    connections: "gauge", "WebSocket connections open now.";
    connections_total: "counter", "WebSocket connections accepted.";
    connections_refused_total: "counter", "Upgrades refused by the connection limits (HTTP 503).";
    handshake_failures_total: "counter", "Connections that failed before the upgrade (timeout, bad request, TLS).";
    messages_total: "counter", "Chat messages stored and broadcast.";
    deliveries_total: "counter", "Chat messages handed to recipients' connections.";
    bytes_in_total: "counter", "Payload bytes received from clients.";
    bytes_out_total: "counter", "Payload bytes of chat messages delivered.";
    slow_consumer_closes_total: "counter", "Connections closed with 4008: their outbox would overflow.";
    rate_limited_total: "counter", "Messages refused by the per-connection rate limit.";
    rate_limit_closes_total: "counter", "Connections closed with 1008 for sustained rate-limit abuse.";
    too_big_closes_total: "counter", "Connections closed with 1009: a message over the size limit.";
    protocol_errors_total: "counter", "Frames answered with an error event (bad JSON, unknown op, bad field).";
    idle_closes_total: "counter", "Connections closed after the idle timeout.";
    dead_peers_total: "counter", "Connections ended by the heartbeat: no pong in time.";
    matches_total: "counter", "Pairs made by matchmaking.";
    joins_total: "counter", "Room joins.";
    recoveries_total: "counter", "Joins with `since` that replayed every missed message.";
    recoveries_failed_total: "counter", "Joins with `since` whose range is no longer kept.";
    commits_total: "counter", "Store transactions committed.";
    store_errors_total: "counter", "Store operations that failed (the messages were refused).";
    http_requests_total: "counter", "Plain HTTP requests answered.";
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Count a connection's end under its close code (0: none).
    pub fn closed(&self, code: u16) {
        let mut closes = self.closes.lock().unwrap_or_else(|e| e.into_inner());
        match closes.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => {
                closes.push((code, 1));
                closes.sort_unstable();
            }
        }
    }
}

/// The process's resident bytes and thread count, from /proc.
fn process_status() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some((field("VmRSS:")? * 1024, field("Threads:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_and_the_close_codes() {
        let m = Metrics::default();
        Metrics::add(&m.deliveries_total, 5);
        m.closed(4008);
        m.closed(1000);
        m.closed(4008);
        let text = m.render();
        assert!(text.contains("chat_deliveries_total 5\n"), "{text}");
        assert!(
            text.contains("chat_closes_total{code=\"4008\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE chat_connections gauge\n"));
        assert!(text.contains("chat_resident_bytes "));
    }
}
