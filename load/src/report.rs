//! What a scenario measured: the delivery account, latency percentiles, rates, server and
//! client CPU and memory; as a table, a JSON line and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::load::{Bucket, Track};
use crate::server::Sample;

/// The delivery account of a run: every expected delivery is delivered, missing, duplicated
/// or out of order; never rounded.
#[derive(Debug, Default, Clone)]
pub struct Account {
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub seq_gaps: u64,
    /// A few of the gaps, as "receiver<-sender: from..to".
    pub gaps: Vec<String>,
}

impl Account {
    /// Add what `receiver` got from `sender`, who sent `sent` messages.
    pub fn add(&mut self, receiver: usize, sender: usize, sent: u64, track: Option<&Track>) {
        self.expected += sent;
        let (unique, mut missing): (u64, Vec<u64>) = match track {
            Some(t) => (t.unique, t.missing.iter().copied().collect()),
            None => (0, Vec::new()),
        };
        let next = track.map_or(0, |t| t.next);
        missing.extend(next..sent);
        self.delivered += unique.min(sent);
        let lost = sent.saturating_sub(unique);
        self.missing += lost;
        if lost > 0 && self.gaps.len() < 10 {
            let (first, last) = (missing.first().copied(), missing.last().copied());
            if let (Some(a), Some(b)) = (first, last) {
                self.gaps.push(format!(
                    "client {receiver} <- client {sender}: {lost} missing in {a}..={b}"
                ));
            }
        }
    }

    /// Add what `receiver` got from `sender` when exactly the numbers `expected` were due.
    pub fn add_exact(
        &mut self,
        receiver: usize,
        sender: usize,
        expected: &[u64],
        track: Option<&Track>,
    ) {
        self.expected += expected.len() as u64;
        let missing: Vec<u64> = expected
            .iter()
            .copied()
            .filter(|k| !track.is_some_and(|t| t.has(*k)))
            .collect();
        self.delivered += (expected.len() - missing.len()) as u64;
        self.missing += missing.len() as u64;
        if let (Some(a), Some(b), true) = (missing.first(), missing.last(), self.gaps.len() < 10) {
            self.gaps.push(format!(
                "client {receiver} <- client {sender}: {} missing in {a}..={b}",
                missing.len()
            ));
        }
    }

    /// What in this account a run must fail for: a message missing, delivered twice, out of
    /// its room's order, or a seq skipped (the server's "grows by exactly 1").
    pub fn problem(&self) -> Option<String> {
        let bad = self.missing + self.duplicates + self.out_of_order + self.seq_gaps;
        (bad > 0).then(|| {
            format!(
                "{} missing, {} duplicated, {} out of order, {} seqs skipped",
                self.missing, self.duplicates, self.out_of_order, self.seq_gaps
            )
        })
    }

    pub fn ratio(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            self.delivered as f64 / self.expected as f64
        }
    }
}

/// Everything one scenario reports.
#[derive(Debug, Default)]
pub struct Outcome {
    pub scenario: String,
    pub workload: BTreeMap<String, Value>,
    pub account: Account,
    /// Extra facts: closes seen, admissions, anything the scenario checks.
    pub facts: BTreeMap<String, Value>,
    pub sent: u64,
    pub send_secs: f64,
    pub delivery_secs: f64,
    pub latency: Option<Histogram<u64>>,
    /// Due -> the server's stamp, and stamp -> delivery (ms resolution of the stamp).
    pub to_server: Option<Histogram<u64>>,
    pub from_server: Option<Histogram<u64>>,
    pub connect: Option<Histogram<u64>>,
    pub matching: Option<Histogram<u64>>,
    pub series: Vec<Bucket>,
    pub samples: Vec<Sample>,
    /// What this scenario tolerates (e.g. the slow reader's own loss); anything else fails.
    pub problems: Vec<String>,
    /// The anchor's published figure, for the table.
    pub anchor: Option<String>,
}

fn pct(h: &Option<Histogram<u64>>, q: f64) -> Value {
    match h {
        Some(h) if !h.is_empty() => json!((h.value_at_quantile(q) as f64 / 10.0).round() / 100.0),
        _ => Value::Null,
    }
}

impl Outcome {
    pub fn deliveries_per_sec(&self) -> f64 {
        if self.delivery_secs > 0.0 {
            self.account.delivered as f64 / self.delivery_secs
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> Value {
        let peak_rss = self.samples.iter().map(|s| s.server_rss_kib).max();
        let avg = |f: fn(&Sample) -> f64| {
            if self.samples.is_empty() {
                Value::Null
            } else {
                let v = self.samples.iter().map(f).sum::<f64>() / self.samples.len() as f64;
                json!((v * 10.0).round() / 10.0)
            }
        };
        json!({
            "scenario": self.scenario,
            "workload": self.workload,
            "expected": self.account.expected,
            "delivered": self.account.delivered,
            "missing": self.account.missing,
            "duplicates": self.account.duplicates,
            "out_of_order": self.account.out_of_order,
            "seq_gaps": self.account.seq_gaps,
            "delivery_ratio": self.account.ratio(),
            "gaps": self.account.gaps,
            "published": self.sent,
            "publishes_per_s": if self.send_secs > 0.0 { (self.sent as f64 / self.send_secs).round() } else { 0.0 },
            "deliveries_per_s": self.deliveries_per_sec().round(),
            "latency_ms": {
                "p50": pct(&self.latency, 0.5), "p90": pct(&self.latency, 0.9),
                "p99": pct(&self.latency, 0.99), "p99_9": pct(&self.latency, 0.999),
                "max": pct(&self.latency, 1.0),
            },
            "latency_split_ms": {
                "to_server_p50": pct(&self.to_server, 0.5), "to_server_p99": pct(&self.to_server, 0.99),
                "from_server_p50": pct(&self.from_server, 0.5), "from_server_p99": pct(&self.from_server, 0.99),
            },
            "connect_ms": { "p50": pct(&self.connect, 0.5), "p99": pct(&self.connect, 0.99), "max": pct(&self.connect, 1.0) },
            "match_ms": { "p50": pct(&self.matching, 0.5), "p99": pct(&self.matching, 0.99) },
            "server": {
                "cpu_pct_avg": avg(|s| s.server_cpu_pct),
                "rss_peak_kib": peak_rss,
                "threads_peak": self.samples.iter().map(|s| s.server_threads).max(),
            },
            "client_cpu_pct_avg": avg(|s| s.client_cpu_pct),
            "facts": self.facts,
            "problems": self.problems,
        })
    }

    /// The human summary: a few lines.
    pub fn print(&self) {
        let j = self.to_json();
        let w: Vec<String> = self
            .workload
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("== {} ({})", self.scenario, w.join(" "));
        println!(
            "   delivery {}/{} = {:.4}%  missing {}  duplicates {}  out-of-order {}  seq gaps {}",
            self.account.delivered,
            self.account.expected,
            self.account.ratio() * 100.0,
            self.account.missing,
            self.account.duplicates,
            self.account.out_of_order,
            self.account.seq_gaps
        );
        for g in &self.account.gaps {
            println!("   gap: {g}");
        }
        println!(
            "   {} deliveries/s, {} publishes/s{}",
            j["deliveries_per_s"],
            j["publishes_per_s"],
            self.anchor
                .as_ref()
                .map(|a| format!("  (anchor: {a})"))
                .unwrap_or_default()
        );
        let l = &j["latency_ms"];
        println!(
            "   latency ms p50 {} p90 {} p99 {} p99.9 {} max {}   connect ms p50 {} p99 {}{}",
            l["p50"],
            l["p90"],
            l["p99"],
            l["p99_9"],
            l["max"],
            j["connect_ms"]["p50"],
            j["connect_ms"]["p99"],
            if self.matching.is_some() {
                format!(
                    "   match ms p50 {} p99 {}",
                    j["match_ms"]["p50"], j["match_ms"]["p99"]
                )
            } else {
                String::new()
            }
        );
        let split = &j["latency_split_ms"];
        if !split["to_server_p50"].is_null() {
            println!(
                "   where: due -> server stamp p50 {} p99 {}; stamp -> delivered p50 {} p99 {} (ms)",
                split["to_server_p50"],
                split["to_server_p99"],
                split["from_server_p50"],
                split["from_server_p99"]
            );
        }
        println!(
            "   server cpu avg {}% rss peak {} KiB threads {}   client cpu avg {}%",
            j["server"]["cpu_pct_avg"],
            j["server"]["rss_peak_kib"],
            j["server"]["threads_peak"],
            j["client_cpu_pct_avg"]
        );
        if !self.facts.is_empty() {
            let f: Vec<String> = self.facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("   {}", f.join("  "));
        }
        for p in &self.problems {
            println!("   PROBLEM: {p}");
        }
    }

    /// Deliveries per second and latency percentiles over time, as an SVG chart.
    pub fn write_svg(&self, path: &Path) -> std::io::Result<()> {
        let (w, h, pad) = (720.0, 320.0, 48.0);
        let n = self.series.len().max(1);
        let max_rate = self
            .series
            .iter()
            .map(|b| b.deliveries)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let lat = |b: &Bucket, q: f64| {
            if b.latency.is_empty() {
                0.0
            } else {
                b.latency.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let max_lat = self.series.iter().map(|b| lat(b, 0.99)).fold(1.0, f64::max);
        let x = |i: usize| pad + (w - 2.0 * pad) * (i as f64 + 0.5) / n as f64;
        let y = |v: f64, max: f64| h - pad - (h - 2.0 * pad) * v / max;
        let line = |f: &dyn Fn(&Bucket) -> f64, max: f64| {
            let mut d = String::new();
            for (i, b) in self.series.iter().enumerate() {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1} ",
                    if i == 0 { "M" } else { "L" },
                    x(i),
                    y(f(b), max)
                );
            }
            d
        };
        let mut svg = String::new();
        let _ = write!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20" font-weight="bold">{} - deliveries/s (blue, left) and latency p50/p99 ms (orange/red, right), per second</text>
<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>
<text x="4" y="{}">{max_rate:.0}</text><text x="{}" y="{}">{max_lat:.1} ms</text>
<text x="{}" y="{}">{n} s</text>
<path d="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>
<path d="{}" fill="none" stroke="#ff7f0e" stroke-width="1.5"/>
<path d="{}" fill="none" stroke="#d62728" stroke-width="1.5"/>
</svg>
"##,
            self.scenario,
            h - pad,
            w - pad,
            h - pad,
            h - pad,
            pad + 4.0,
            w - pad - 10.0,
            pad + 4.0,
            w - pad - 20.0,
            h - pad + 16.0,
            line(&|b| b.deliveries as f64, max_rate),
            line(&|b| lat(b, 0.5), max_lat),
            line(&|b| lat(b, 0.99), max_lat),
        );
        std::fs::write(path, svg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Totals;

    fn track(received: &[u64]) -> (Track, Totals) {
        let mut t = Track::default();
        let mut totals = Totals::new(std::time::Instant::now());
        for k in received {
            t.saw(*k, &mut totals);
        }
        (t, totals)
    }

    #[test]
    fn every_expected_message_is_delivered_missing_duplicated_or_late() {
        // 0..6 sent; 2 lost, 4 late, 1 twice.
        let (t, totals) = track(&[0, 1, 3, 5, 1, 4]);
        assert_eq!((totals.duplicates, totals.out_of_order), (1, 1));
        assert!(t.has(4) && !t.has(2) && !t.has(6));
        let mut a = Account::default();
        a.add(1, 2, 7, Some(&t));
        // Delivered 0 1 3 4 5; missing 2 and 6 (never came).
        assert_eq!((a.expected, a.delivered, a.missing), (7, 5, 2));
        assert_eq!(a.gaps, ["client 1 <- client 2: 2 missing in 2..=6"]);
        assert!(a.problem().is_some());
        // Nothing from a sender: all of it missing.
        let mut a = Account::default();
        a.add(1, 3, 4, None);
        assert_eq!((a.delivered, a.missing), (0, 4));
        // All there, once, in order: no problem.
        let (t, totals) = track(&[0, 1, 2]);
        let mut a = Account::default();
        a.add(1, 2, 3, Some(&t));
        a.duplicates = totals.duplicates;
        a.out_of_order = totals.out_of_order;
        assert_eq!(a.problem(), None);
        // A seq skipped fails a run even when every message came.
        a.seq_gaps = 1;
        assert!(a.problem().unwrap().contains("1 seqs skipped"));
    }

    #[test]
    fn an_exact_account_counts_only_what_was_due() {
        let (t, _) = track(&[0, 1, 2, 5]);
        let mut a = Account::default();
        a.add_exact(1, 2, &[1, 2, 3, 5], Some(&t));
        assert_eq!((a.expected, a.delivered, a.missing), (4, 3, 1));
        assert_eq!(a.gaps, ["client 1 <- client 2: 1 missing in 3..=3"]);
    }
}
