//! `GET /report`: the operator's page, drawn by the server from the stats samples (no script,
//! no chart library): totals that continue across restarts, the newest gauges, and a chart per
//! quantity over the chosen window.

use std::fmt::Write as _;

use crate::stats::{Sample, StatsDb};

/// The windows the page offers: name, label, length in ms (`None`: everything).
const WINDOWS: [(&str, &str, Option<i64>); 4] = [
    ("hour", "last hour", Some(3_600_000)),
    ("day", "last day", Some(86_400_000)),
    ("week", "last week", Some(7 * 86_400_000)),
    ("all", "all", None),
];

/// Points per chart, at most.
const POINTS: i64 = 300;

/// Escape text for HTML (element content and quoted attributes).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `target` (a path, perhaps with a query) with `&token=` / `?token=` appended when the page
/// was opened with one: links between the operator's pages keep working from hosts that need
/// the token. Not escaped for HTML: the caller escapes the whole link.
pub fn link(target: &str, token: Option<&str>) -> String {
    match token {
        Some(token) => {
            let sep = if target.contains('?') { '&' } else { '?' };
            let token: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
            format!("{target}{sep}token={token}")
        }
        None => target.to_owned(),
    }
}

/// The page for `window` (`hour`, `day`, `week`, `all`; anything else is `hour`), with the
/// time it took to read the samples. `token`: the `?token=` it was opened with, carried by its
/// links.
pub fn page(
    db: &StatsDb,
    window: &str,
    now_ms: i64,
    token: Option<&str>,
) -> rusqlite::Result<String> {
    let (name, label, length) = WINDOWS
        .iter()
        .copied()
        .find(|(n, _, _)| *n == window)
        .unwrap_or(WINDOWS[0]);
    let started = std::time::Instant::now();
    let from = length.map_or(0, |l| now_ms - l);
    let samples = db.range(from, POINTS)?;
    let last = db.last()?;
    let read_ms = started.elapsed().as_secs_f64() * 1000.0;

    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\"><title>chat server report</title>\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><link rel=\"stylesheet\" href=\"/pages.css\"></head><body>\
         <header><h1>Chat server report</h1><nav class=\"windows\">"
    );
    for (n, l, _) in WINDOWS {
        let class = if n == name { " class=\"current\"" } else { "" };
        let href = escape(&link(&format!("/report?window={n}"), token));
        let _ = write!(html, "<a href=\"{href}\"{class}>{l}</a>");
    }
    let _ = write!(
        html,
        "</nav><a href=\"/\">chat</a><a href=\"{}\">logs</a><a href=\"{}\">metrics</a></header><main>",
        escape(&link("/logs", token)),
        escape(&link("/metrics", token))
    );
    let Some(last) = last else {
        html.push_str(
            "<p>No samples yet: the server stores one every few seconds.</p></main></body></html>",
        );
        return Ok(html);
    };
    let _ = write!(
        html,
        "<p class=\"muted\" id=\"as-of\" data-ts=\"{}\">As of {} UTC (charts from {} stored samples; read in {:.1} ms). Totals include earlier runs of the server.</p>",
        last.ts,
        clock(last.ts, true),
        samples.len(),
        read_ms
    );
    html.push_str("<h2>Totals</h2><table id=\"totals\"><tr>");
    let totals = [
        ("connections_total", "connections"),
        ("matches_total", "matches"),
        ("messages_total", "messages"),
        ("deliveries_total", "deliveries"),
        ("bytes_in_total", "bytes in"),
        ("bytes_out_total", "bytes out"),
        ("slow_consumer_closes_total", "slow-consumer closes (4008)"),
        ("rate_limit_closes_total", "rate-limit closes (1008)"),
        ("rate_limited_total", "messages rate-limited"),
        ("connections_refused_total", "connections refused (503)"),
    ];
    for (_, label) in totals {
        let _ = write!(html, "<th>{label}</th>");
    }
    html.push_str("</tr><tr>");
    for (metric, _) in totals {
        let _ = write!(
            html,
            "<td data-metric=\"chat_{metric}\">{}</td>",
            last.total(metric)
        );
    }
    html.push_str("</tr></table><h2>Now</h2><table id=\"now\"><tr><th>connections</th><th>delivery latency p50</th><th>p99</th><th>RSS</th><th>CPU</th><th>threads</th><th>uptime</th></tr><tr>");
    let _ = write!(
        html,
        "<td data-metric=\"chat_connections\">{}</td><td>{}</td><td>{}</td><td data-metric=\"chat_resident_bytes\" data-value=\"{}\">{:.1} MiB</td><td>{:.1}%</td><td data-metric=\"chat_threads\">{}</td><td>{}</td></tr></table>",
        last.connections,
        latency(last.latency_p50_us),
        latency(last.latency_p99_us),
        last.rss_bytes,
        last.rss_bytes as f64 / 1048576.0,
        last.cpu_pct,
        last.threads,
        duration(last.uptime_s)
    );
    html.push_str("<h2>Disconnects by close code</h2><p class=\"muted\">The code the client's Close frame carried (0: none, the connection was lost or never answered the server's Close).</p><table id=\"closes\"><tr><th>code</th><th>meaning</th><th>connections</th></tr>");
    for (code, n) in &last.closes {
        let _ = write!(
            html,
            "<tr><td>{code}</td><td class=\"l\">{}</td><td data-code=\"{code}\">{n}</td></tr>",
            close_meaning(*code)
        );
    }
    if last.closes.is_empty() {
        html.push_str("<tr><td colspan=\"3\" class=\"muted\">none yet</td></tr>");
    }
    let over = if length.is_some() {
        format!("Over the {label}")
    } else {
        "Over the whole history".to_owned()
    };
    let _ = write!(html, "</table><h2>{over}</h2><div class=\"charts\">");
    let t: Vec<i64> = samples.iter().map(|s| s.ts).collect();
    let gauge = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
    let rate = |metric: &str| rates(&samples, metric);
    let ms = |v: Option<u64>| v.map_or(f64::NAN, |us| us as f64 / 1000.0);
    let charts: [Chart; 7] = [
        (
            "connections",
            "Connections",
            "",
            vec![("open", "#2563eb", gauge(&|s| s.connections as f64))],
        ),
        (
            "messages",
            "Messages and deliveries",
            "/s",
            vec![
                ("messages", "#16a34a", rate("messages_total")),
                ("deliveries", "#2563eb", rate("deliveries_total")),
            ],
        ),
        (
            "bytes",
            "Bytes in and out",
            "B/s",
            vec![
                ("in", "#9333ea", rate("bytes_in_total")),
                ("out", "#ea580c", rate("bytes_out_total")),
            ],
        ),
        (
            "latency",
            "Delivery latency",
            "ms",
            vec![
                ("p50", "#16a34a", gauge(&|s| ms(s.latency_p50_us))),
                ("p99", "#dc2626", gauge(&|s| ms(s.latency_p99_us))),
            ],
        ),
        (
            "rss",
            "Resident memory",
            "MiB",
            vec![("RSS", "#0891b2", gauge(&|s| s.rss_bytes as f64 / 1048576.0))],
        ),
        (
            "cpu",
            "CPU",
            "% of a core",
            vec![("CPU", "#ca8a04", gauge(&|s| s.cpu_pct))],
        ),
        (
            "threads",
            "Threads",
            "",
            vec![("threads", "#4b5563", gauge(&|s| s.threads as f64))],
        ),
    ];
    for (id, title, unit, series) in &charts {
        chart(&mut html, id, title, unit, &t, series);
    }
    html.push_str("</div></main></body></html>");
    Ok(html)
}

/// A chart: its id, title, unit, and its series (name, colour, a value per sample).
type Chart<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str, Vec<f64>)>);

/// Per-second rates of a running total between consecutive samples (NaN for the first, and
/// where the total went down: a store reset).
fn rates(samples: &[Sample], metric: &str) -> Vec<f64> {
    let mut out = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let v = match i.checked_sub(1).map(|p| &samples[p]) {
            Some(prev) if s.ts > prev.ts && s.total(metric) >= prev.total(metric) => {
                (s.total(metric) - prev.total(metric)) as f64 * 1000.0 / (s.ts - prev.ts) as f64
            }
            _ => f64::NAN,
        };
        out.push(v);
    }
    out
}

fn chart(
    html: &mut String,
    id: &str,
    title: &str,
    unit: &str,
    t: &[i64],
    series: &[(&str, &str, Vec<f64>)],
) {
    const W: f64 = 360.0;
    const H: f64 = 150.0;
    const LEFT: f64 = 46.0;
    const BOTTOM: f64 = 18.0;
    let max = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let top = nice_ceiling(max);
    let (t0, t1) = (
        t.first().copied().unwrap_or(0),
        t.last().copied().unwrap_or(0),
    );
    let span = (t1 - t0).max(1) as f64;
    let x = |ts: i64| LEFT + (ts - t0) as f64 / span * (W - LEFT - 4.0);
    let y = |v: f64| 4.0 + (H - BOTTOM - 4.0) * (1.0 - v / top);
    let last_values: Vec<String> = series
        .iter()
        .map(|(name, _, v)| {
            let last = v.iter().rev().find(|v| v.is_finite());
            format!("{name} {}", last.map_or("-".into(), |v| number(*v)))
        })
        .collect();
    let _ = write!(
        html,
        "<figure><figcaption>{} <span class=\"muted\">{}</span></figcaption>\
         <svg class=\"chart\" id=\"chart-{id}\" data-points=\"{}\" data-max=\"{}\" viewBox=\"0 0 {W} {H}\" width=\"100%\" role=\"img\" aria-label=\"{}\">",
        escape(title),
        escape(unit),
        t.len(),
        number(max),
        escape(title)
    );
    let _ = write!(
        html,
        "<line x1=\"{LEFT}\" y1=\"{}\" x2=\"{W}\" y2=\"{}\" stroke=\"#cbd2dc\"/><line x1=\"{LEFT}\" y1=\"4\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"#cbd2dc\"/>\
         <text x=\"{}\" y=\"12\" text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\
         <text x=\"{LEFT}\" y=\"{}\">{}</text><text x=\"{W}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        H - BOTTOM,
        H - BOTTOM,
        H - BOTTOM,
        LEFT - 4.0,
        number(top),
        LEFT - 4.0,
        H - BOTTOM,
        H - 4.0,
        clock(t0, span > 86_400_000.0),
        H - 4.0,
        clock(t1, span > 86_400_000.0)
    );
    for (_, color, values) in series {
        // A line per run of known values (gaps where a rate or latency is unknown).
        let mut runs: Vec<String> = Vec::new();
        let mut current = String::new();
        for (ts, v) in t.iter().zip(values) {
            if v.is_finite() {
                let _ = write!(current, "{:.1},{:.1} ", x(*ts), y(*v));
            } else if !current.is_empty() {
                runs.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            runs.push(current);
        }
        for points in runs {
            let points = points.trim_end();
            match points.split_once(',') {
                // A lone point is a dot, not an invisible line.
                Some((cx, cy)) if !points.contains(' ') => {
                    let _ = write!(
                        html,
                        "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"2.5\" fill=\"{color}\"/>"
                    );
                }
                _ => {
                    let _ = write!(
                        html,
                        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{points}\"/>"
                    );
                }
            }
        }
    }
    html.push_str("</svg><div class=\"legend\">");
    for ((_, color, _), text) in series.iter().zip(&last_values) {
        let _ = write!(
            html,
            "<span><svg width=\"10\" height=\"3\" aria-hidden=\"true\"><rect width=\"10\" height=\"3\" fill=\"{color}\"/></svg>{}</span>",
            escape(text)
        );
    }
    html.push_str("</div></figure>");
}

/// 1, 2, 5 times a power of ten, at least `v` (1 for nothing).
fn nice_ceiling(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn number(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn latency(us: Option<u64>) -> String {
    match us {
        None => "-".into(),
        Some(u64::MAX) => "> 10 s".into(),
        Some(us) if us >= 1000 => format!("<= {} ms", us / 1000),
        Some(us) => format!("<= {us} us"),
    }
}

fn duration(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// `HH:MM` UTC, with the date when `with_date`.
fn clock(ms: i64, with_date: bool) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(ms / 1000) else {
        return "?".into();
    };
    if with_date {
        format!(
            "{}-{:02}-{:02} {:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        )
    } else {
        format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
    }
}

fn close_meaning(code: u16) -> &'static str {
    match code {
        0 => "no close frame (connection lost)",
        1000 => "normal (or idle timeout)",
        1001 => "going away (server shutdown, page closed)",
        1002 => "protocol error",
        1006 => "abnormal",
        1007 => "invalid data",
        1008 => "policy (rate-limit abuse)",
        1009 => "message too big",
        1011 => "server error",
        4008 => "slow consumer",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_totals_charts_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let db = StatsDb::open(&dir.path().join("s.db")).unwrap();
        let empty = page(&db, "hour", 10_000_000, None).unwrap();
        assert!(empty.contains("No samples yet"));
        for i in 0..10u64 {
            let mut s = Sample {
                ts: 10_000_000 + i as i64 * 5000,
                connections: i,
                rss_bytes: 10 << 20,
                latency_p50_us: Some(200),
                latency_p99_us: Some(5000),
                closes: vec![(1000, i), (4008, 1)],
                ..Sample::default()
            };
            s.totals[2] = i * 100;
            db.insert(&s).unwrap();
        }
        let html = page(&db, "all", 10_100_000, Some("a&b")).unwrap();
        assert!(
            html.contains("<td data-metric=\"chat_messages_total\">900</td>"),
            "{html}"
        );
        assert!(
            html.contains("id=\"chart-messages\" data-points=\"10\""),
            "{html}"
        );
        // 100 messages per 5 s.
        assert!(html.contains("data-max=\"20\""), "{html}");
        assert!(html.contains("<td data-code=\"4008\">1</td>"));
        // Links carry the token, encoded for the query and escaped for the attribute.
        assert!(
            html.contains("href=\"/report?window=day&amp;token=a%26b\""),
            "{html}"
        );
        assert!(html.contains("href=\"/logs?token=a%26b\""), "{html}");
        // Nothing inline for the policy to refuse.
        for inline in ["<script", "<style", " style="] {
            assert!(!html.contains(inline), "{inline} in {html}");
        }
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
