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
            /// From a message read by its connection to its hand-out to the room, stored.
            pub delivery_latency: Histogram,
        }

        impl Default for Metrics {
            fn default() -> Self {
                Metrics {
                    started: Instant::now(),
                    $($name: AtomicU64::new(0),)*
                    closes: Mutex::new(Vec::new()),
                    delivery_latency: Histogram::default(),
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
                self.delivery_latency.render(
                    &mut out,
                    "chat_delivery_latency_seconds",
                    "From a chat message read by its connection to its hand-out to the room's members, stored.",
                );
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
    rooms: "gauge", "Rooms the hub holds (cluster mode: those with members on this node).";
    connections_total: "counter", "WebSocket connections accepted.";
    connections_refused_total: "counter", "Sockets and upgrades refused by the connection limits (HTTP 503).";
    connections_unauthorized_total: "counter", "Upgrades refused for a missing or bad token (HTTP 401, --jwt-secret).";
    handshake_failures_total: "counter", "Connections that failed before the upgrade (timeout, bad request, TLS).";
    first_byte_timeouts_total: "counter", "Sockets closed for saying nothing within --first-byte-timeout.";
    messages_total: "counter", "Chat messages stored and broadcast.";
    deliveries_total: "counter", "Chat messages handed to recipients' connections.";
    bytes_in_total: "counter", "Payload bytes received from clients.";
    bytes_out_total: "counter", "Payload bytes of chat messages delivered.";
    slow_consumer_closes_total: "counter", "Connections closed with 4008: their outbox would overflow.";
    rate_limited_total: "counter", "Messages refused by the per-connection rate limit.";
    rate_limit_closes_total: "counter", "Connections closed with 1008 for sustained rate-limit abuse.";
    too_big_closes_total: "counter", "Connections closed with 1009: a message over the size limit.";
    frames_too_large_total: "counter", "Frames never sent: larger than the connection's whole queue (a bug if not 0).";
    protocol_errors_total: "counter", "Frames answered with an error event (bad JSON, unknown op, bad field).";
    idle_closes_total: "counter", "Connections closed after the idle timeout.";
    dead_peers_total: "counter", "Connections ended by the heartbeat: no pong in time.";
    matches_total: "counter", "Pairs made by matchmaking.";
    joins_total: "counter", "Room joins.";
    recoveries_total: "counter", "Joins with `since` that replayed every missed message.";
    recoveries_failed_total: "counter", "Joins with `since` whose range is no longer kept.";
    commits_total: "counter", "Store transactions committed.";
    gaps_total: "counter", "Cluster mode: runs of messages a room's log no longer had for this node (members told with `gap`).";
    store_resets_total: "counter", "Cluster mode: times Redis was found to have lost its data (members closed with 1012).";
    store_errors_total: "counter", "Store operations that failed (the messages were refused).";
    http_requests_total: "counter", "Plain HTTP requests answered.";
}

impl Metrics {
    /// Seconds since the server started.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Connections closed so far, by close code, lowest code first.
    pub fn closes(&self) -> Vec<(u16, u64)> {
        self.closes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

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

/// Upper bounds of the latency buckets, in microseconds (1-2-5 steps, 10 us to 10 s).
pub const LATENCY_BOUNDS_US: [u64; 19] = [
    10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
    500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets, recorded from any thread without a lock.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One more than the bounds: the last counts what is over 10 s.
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The count in each bucket so far.
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let counts = self.counts();
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BOUNDS_US.iter().zip(&counts) {
            cumulative += n;
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += counts.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The `q` quantile (0..=1) of the observations counted in `counts` (bucket counts as from
/// [`Histogram::counts`], or a difference of two), as its bucket's upper bound in
/// microseconds; `None` when there are none.
pub fn quantile_us(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(LATENCY_BOUNDS_US.get(i).copied().unwrap_or(u64::MAX));
        }
    }
    None
}

/// The process's resident bytes and thread count, from /proc: Linux only (elsewhere no figure,
/// and /metrics leaves the two gauges out).
pub fn process_status() -> Option<(u64, u64)> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some((field("VmRSS:")? * 1024, field("Threads:")?))
}

/// CPU time the process has used (user + system), from /proc/self/stat: Linux only (elsewhere
/// no figure; the samples say 0%).
pub fn process_cpu() -> Option<std::time::Duration> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which ends at the last ')') start at field 3; utime and
    // stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(std::time::Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_come_from_the_buckets() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.observe(std::time::Duration::from_micros(150));
        }
        h.observe(std::time::Duration::from_millis(30));
        h.observe(std::time::Duration::from_secs(60));
        let counts = h.counts();
        assert_eq!(quantile_us(&counts, 0.5), Some(200));
        assert_eq!(quantile_us(&counts, 0.99), Some(50_000));
        assert_eq!(quantile_us(&counts, 1.0), Some(u64::MAX));
        assert_eq!(quantile_us(&[0; 20], 0.5), None);
        let mut text = String::new();
        h.render(&mut text, "x", "help");
        assert!(text.contains("x_bucket{le=\"0.0002\"} 98\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"+Inf\"} 100\n"), "{text}");
        assert!(text.contains("x_count 100\n"), "{text}");
    }

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
