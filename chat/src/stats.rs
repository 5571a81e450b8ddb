//! The server's history of itself: a thread samples the counters, latency and the process
//! (RSS, CPU, threads) every few seconds into `stats.db` (SQLite, beside the chat store but a
//! file and connection of its own, so the hub never waits for it). `/report` reads only these
//! samples, so it answers in milliseconds however long the event log has grown.
//!
//! Totals continue across restarts: a sample stores what this process counted plus what the
//! last sample of the previous run had reached.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use rusqlite::{Connection, OptionalExtension};

use crate::metrics::{process_cpu, process_status, quantile_us, Metrics};
use crate::now_ms;

/// The counters kept as running totals, by column name (and `/metrics` name, with `chat_`).
pub const TOTALS: [&str; 10] = [
    "connections_total",
    "matches_total",
    "messages_total",
    "deliveries_total",
    "bytes_in_total",
    "bytes_out_total",
    "slow_consumer_closes_total",
    "rate_limit_closes_total",
    "rate_limited_total",
    "connections_refused_total",
];

/// One row of `samples`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    pub uptime_s: u64,
    pub connections: u64,
    pub threads: u64,
    pub rss_bytes: u64,
    /// Percent of one core over the interval before this sample.
    pub cpu_pct: f64,
    /// Delivery latency over the interval before this sample (bucket bounds, us).
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    /// Running totals, in the order of [`TOTALS`].
    pub totals: [u64; TOTALS.len()],
    /// Connections ended by close code, running totals.
    pub closes: Vec<(u16, u64)>,
}

impl Sample {
    pub fn total(&self, name: &str) -> u64 {
        TOTALS
            .iter()
            .position(|t| *t == name)
            .map_or(0, |i| self.totals[i])
    }
}

fn counter(metrics: &Metrics, name: &str) -> u64 {
    let c = match name {
        "connections_total" => &metrics.connections_total,
        "matches_total" => &metrics.matches_total,
        "messages_total" => &metrics.messages_total,
        "deliveries_total" => &metrics.deliveries_total,
        "bytes_in_total" => &metrics.bytes_in_total,
        "bytes_out_total" => &metrics.bytes_out_total,
        "slow_consumer_closes_total" => &metrics.slow_consumer_closes_total,
        "rate_limit_closes_total" => &metrics.rate_limit_closes_total,
        "rate_limited_total" => &metrics.rate_limited_total,
        "connections_refused_total" => &metrics.connections_refused_total,
        _ => return 0,
    };
    Metrics::get(c)
}

/// The samples database.
pub struct StatsDb {
    conn: Connection,
}

impl StatsDb {
    pub fn open(path: &Path) -> rusqlite::Result<StatsDb> {
        crate::private::database(path)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let totals: String = TOTALS
            .iter()
            .map(|t| format!(", {t} INTEGER NOT NULL"))
            .collect();
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS samples (
                 ts INTEGER PRIMARY KEY, uptime_s INTEGER NOT NULL, connections INTEGER NOT NULL,
                 threads INTEGER NOT NULL, rss_bytes INTEGER NOT NULL, cpu_pct REAL NOT NULL,
                 latency_p50_us INTEGER, latency_p99_us INTEGER, closes TEXT NOT NULL{totals});"
        ))?;
        Ok(StatsDb { conn })
    }

    pub fn insert(&self, s: &Sample) -> rusqlite::Result<()> {
        let columns = TOTALS.join(", ");
        let marks: String = (10..10 + TOTALS.len()).map(|i| format!(", ?{i}")).collect();
        let closes = serde_json::to_string(&s.closes).unwrap_or_else(|_| "[]".into());
        let mut stmt = self.conn.prepare_cached(&format!(
            "INSERT OR REPLACE INTO samples (ts, uptime_s, connections, threads, rss_bytes, cpu_pct,
                 latency_p50_us, latency_p99_us, closes, {columns})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9{marks})"
        ))?;
        let mut values: Vec<Box<dyn rusqlite::ToSql>> = vec![
            Box::new(s.ts),
            Box::new(s.uptime_s),
            Box::new(s.connections),
            Box::new(s.threads),
            Box::new(s.rss_bytes),
            Box::new(s.cpu_pct),
            Box::new(s.latency_p50_us),
            Box::new(s.latency_p99_us),
            Box::new(closes),
        ];
        values.extend(
            s.totals
                .iter()
                .map(|t| Box::new(*t) as Box<dyn rusqlite::ToSql>),
        );
        stmt.execute(rusqlite::params_from_iter(values.iter()))?;
        Ok(())
    }

    /// Group the inserts that follow in one transaction (bulk loads), until [`StatsDb::commit`].
    pub fn begin(&self) -> rusqlite::Result<()> {
        self.conn.execute_batch("BEGIN")
    }

    pub fn commit(&self) -> rusqlite::Result<()> {
        self.conn.execute_batch("COMMIT")
    }

    /// The newest sample.
    pub fn last(&self) -> rusqlite::Result<Option<Sample>> {
        let sql = format!("{} ORDER BY ts DESC LIMIT 1", select());
        self.conn.query_row(&sql, [], row_to_sample).optional()
    }

    /// Samples since `from_ms`, oldest first, at most about `points` of them: when there are
    /// more, the first sample at or after the start of each of `points` equal slices of the
    /// window, each found by a seek on the time key, so a chart of months costs what a chart of
    /// an hour does. Totals (and so the rates between points) stay exact; a gauge's peak
    /// between two points is not shown.
    pub fn range(&self, from_ms: i64, points: i64) -> rusqlite::Result<Vec<Sample>> {
        // Two queries: SQLite answers a lone MIN or MAX of the key with one seek, both in one
        // query with a scan of the window.
        let first: Option<i64> = self.conn.query_row(
            "SELECT MIN(ts) FROM samples WHERE ts >= ?1",
            [from_ms],
            |r| r.get(0),
        )?;
        let last: Option<i64> = self
            .conn
            .query_row("SELECT MAX(ts) FROM samples", [], |r| r.get(0))?;
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(Vec::new());
        };
        let step = ((last - first) / points.max(1)).max(1);
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{} WHERE ts >= ?1 ORDER BY ts LIMIT 1", select()))?;
        let mut out: Vec<Sample> = Vec::new();
        let mut at = first;
        while at <= last {
            let Some(s) = stmt.query_row([at], row_to_sample).optional()? else {
                break;
            };
            at = (s.ts + 1).max(at + step);
            out.push(s);
        }
        if out.last().is_some_and(|s| s.ts != last) {
            if let Some(s) = stmt.query_row([last], row_to_sample).optional()? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Samples stored since `from_ms`.
    pub fn count_since(&self, from_ms: i64) -> rusqlite::Result<u64> {
        self.conn.query_row(
            "SELECT COUNT(*) FROM samples WHERE ts >= ?1",
            [from_ms],
            |r| r.get(0),
        )
    }
}

fn select() -> String {
    format!(
        "SELECT ts, uptime_s, connections, threads, rss_bytes, cpu_pct, latency_p50_us,
             latency_p99_us, closes, {} FROM samples",
        TOTALS.join(", ")
    )
}

fn row_to_sample(r: &rusqlite::Row<'_>) -> rusqlite::Result<Sample> {
    let closes: String = r.get(8)?;
    let mut totals = [0u64; TOTALS.len()];
    for (i, t) in totals.iter_mut().enumerate() {
        *t = r.get(9 + i)?;
    }
    Ok(Sample {
        ts: r.get(0)?,
        uptime_s: r.get(1)?,
        connections: r.get(2)?,
        threads: r.get(3)?,
        rss_bytes: r.get(4)?,
        cpu_pct: r.get(5)?,
        latency_p50_us: r.get(6)?,
        latency_p99_us: r.get(7)?,
        totals,
        closes: serde_json::from_str(&closes).unwrap_or_default(),
    })
}

/// The sampling thread; a last sample is taken when it is dropped (a clean shutdown).
pub struct Sampler {
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub path: PathBuf,
}

impl Sampler {
    /// Start sampling `metrics` into `path` every `every`. The first sample is taken at once.
    pub fn start(path: PathBuf, metrics: Arc<Metrics>, every: Duration) -> rusqlite::Result<Self> {
        let db = StatsDb::open(&path)?;
        let base = db.last()?.unwrap_or_default();
        let (stop, stopped) = bounded(0);
        let thread = std::thread::Builder::new()
            .name("chat-stats".into())
            .spawn(move || sample_loop(&db, &metrics, &base, every, &stopped))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Sampler {
            stop: Some(stop),
            thread: Some(thread),
            path,
        })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sample_loop(
    db: &StatsDb,
    metrics: &Metrics,
    base: &Sample,
    every: Duration,
    stopped: &Receiver<()>,
) {
    let mut taker = Taker {
        last_cpu: process_cpu().unwrap_or_default(),
        last_at: Instant::now(),
        last_latency: metrics.delivery_latency.counts(),
        // Never at or before the last sample of an earlier run (the time is the key).
        last_ts: base.ts,
    };
    loop {
        let sample = taker.take(metrics, base);
        if let Err(e) = db.insert(&sample) {
            tracing::warn!(error = %e, "stats: cannot store a sample");
        }
        if !matches!(stopped.recv_timeout(every), Err(RecvTimeoutError::Timeout)) {
            // Stopping: one more, so the totals of a clean stop are kept.
            if let Err(e) = db.insert(&taker.take(metrics, base)) {
                tracing::warn!(error = %e, "stats: cannot store the last sample");
            }
            return;
        }
    }
}

/// What a sample is measured against: the previous one.
struct Taker {
    last_cpu: Duration,
    last_at: Instant,
    last_latency: Vec<u64>,
    last_ts: i64,
}

impl Taker {
    fn take(&mut self, metrics: &Metrics, base: &Sample) -> Sample {
        let now = Instant::now();
        let cpu = process_cpu().unwrap_or_default();
        let wall = now.duration_since(self.last_at).as_secs_f64();
        let cpu_pct = if wall > 0.0 {
            cpu.saturating_sub(self.last_cpu).as_secs_f64() / wall * 100.0
        } else {
            0.0
        };
        let latency = metrics.delivery_latency.counts();
        let window: Vec<u64> = latency
            .iter()
            .zip(&self.last_latency)
            .map(|(a, b)| a - b)
            .collect();
        let (rss_bytes, threads) = process_status().unwrap_or((0, 0));
        let mut closes = base.closes.clone();
        for (code, n) in metrics.closes() {
            match closes.iter_mut().find(|(c, _)| *c == code) {
                Some((_, total)) => *total += n,
                None => closes.push((code, n)),
            }
        }
        closes.sort_unstable();
        let mut totals = base.totals;
        for (i, name) in TOTALS.iter().enumerate() {
            totals[i] += counter(metrics, name);
        }
        // The time is the key: one sample per millisecond, never older than the last.
        let ts = now_ms().max(self.last_ts + 1);
        self.last_cpu = cpu;
        self.last_at = now;
        self.last_latency = latency;
        self.last_ts = ts;
        Sample {
            ts,
            uptime_s: metrics.uptime().as_secs(),
            connections: Metrics::get(&metrics.connections),
            threads,
            rss_bytes,
            cpu_pct,
            latency_p50_us: quantile_us(&window, 0.5),
            latency_p99_us: quantile_us(&window, 0.99),
            totals,
            closes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_continue_across_restarts_and_ranges_are_bucketed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.db");
        for run in 1..=2u64 {
            let metrics = Arc::new(Metrics::default());
            Metrics::add(&metrics.messages_total, 10);
            metrics.closed(4008);
            let sampler = Sampler::start(path.clone(), metrics, Duration::from_secs(60)).unwrap();
            drop(sampler);
            let db = StatsDb::open(&path).unwrap();
            let last = db.last().unwrap().unwrap();
            assert_eq!(last.total("messages_total"), 10 * run, "run {run}");
            assert_eq!(last.closes, [(4008, run)]);
        }
        let n = StatsDb::open(&path).unwrap().count_since(0).unwrap();
        assert!(n >= 4, "a sample at start and at stop, each run: {n}");
        let db = StatsDb::open(&dir.path().join("range.db")).unwrap();
        for i in 0..1000 {
            db.insert(&Sample {
                ts: 1_000_000 + i * 5_000,
                ..Sample::default()
            })
            .unwrap();
        }
        let points = db.range(0, 100).unwrap();
        assert!(
            (90..=110).contains(&points.len()),
            "{} points",
            points.len()
        );
        assert!(points.windows(2).all(|w| w[0].ts < w[1].ts));
    }
}
