//! `GET /logs`: the event log, newest first, paged, filtered by kind, HTML-escaped; the first
//! page follows the log live (`/logs.js`, a file of `chat/web/`, asks for `?format=json` every
//! two seconds).
//!
//! It reads the files backwards from their ends, so a page costs what it shows, not the size of
//! the log; a filter for a rare kind reads at most [`SCAN_BYTES`] per request and offers to go on.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::{json, Value};

use crate::eventlog;
use crate::report::{escape, link};

/// Bytes read per request at most when a filter skips most lines.
pub const SCAN_BYTES: u64 = 16 << 20;
const CHUNK: u64 = 64 << 10;

/// What the request asks for.
#[derive(Debug, Default)]
pub struct Query {
    pub kind: Option<String>,
    /// `FILE:OFFSET`: lines that start before this.
    pub before: Option<String>,
    pub limit: usize,
    pub json: bool,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let mut q = Query {
            limit: 100,
            ..Query::default()
        };
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*k {
                "kind" if !v.is_empty() => q.kind = Some(v.into_owned()),
                "before" if !v.is_empty() => q.before = Some(v.into_owned()),
                "limit" => q.limit = v.parse().unwrap_or(100),
                "format" => q.json = v == "json",
                _ => {}
            }
        }
        q.limit = q.limit.clamp(1, 500);
        q
    }
}

/// One line of the log and where it starts.
#[derive(Debug)]
pub struct Line {
    /// `FILE:OFFSET`.
    pub id: String,
    pub event: Value,
}

/// Lines before `query.before` (or from the end), newest first, and the cursor for older ones.
pub fn read(dir: &Path, query: &Query) -> std::io::Result<(Vec<Line>, Option<String>)> {
    let files = eventlog::files(dir)?;
    let (mut index, mut end) = match query.before.as_deref().and_then(parse_cursor) {
        Some((name, offset)) => match files.iter().position(|p| file_name(p) == name) {
            Some(i) => (i, offset),
            None => return Ok((Vec::new(), None)),
        },
        None => match files.len().checked_sub(1) {
            Some(last) => (last, u64::MAX),
            None => return Ok((Vec::new(), None)),
        },
    };
    let needle = query
        .kind
        .as_ref()
        .map(|k| format!("\"kind\":{}", json!(k)));
    let finder = needle
        .as_ref()
        .map(|n| memchr::memmem::Finder::new(n.as_bytes()));
    let mut lines = Vec::new();
    let mut scanned = 0u64;
    loop {
        let path = &files[index];
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        end = end.min(len);
        // Walk back chunk by chunk; `tail` holds the end of a line cut by the chunk's start.
        let mut tail: Vec<u8> = Vec::new();
        let mut pos = end;
        while pos > 0 {
            let start = pos.saturating_sub(CHUNK);
            let mut data = vec![0u8; (pos - start) as usize];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut data)?;
            scanned += data.len() as u64;
            data.extend_from_slice(&tail);
            // Lines wholly in `data`: all of them at the file's start, else those after the
            // first newline (the part before it belongs to a line that starts earlier).
            let first = if start == 0 {
                0
            } else {
                match data.iter().position(|b| *b == b'\n') {
                    Some(nl) => nl + 1,
                    None => {
                        tail = data;
                        pos = start;
                        continue;
                    }
                }
            };
            let mut line_end = data.len();
            while line_end > first {
                let line_start = data[first..line_end - 1]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(first, |nl| first + nl + 1);
                let text = &data[line_start..line_end];
                let offset = start + line_start as u64;
                line_end = line_start;
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if finder.as_ref().is_some_and(|f| f.find(text).is_none()) {
                    continue;
                }
                // A line still being written does not parse yet: left for the next look.
                if let Ok(event) = serde_json::from_slice::<Value>(text) {
                    let id = format!("{}:{offset}", file_name(path));
                    lines.push(Line {
                        id: id.clone(),
                        event,
                    });
                    if lines.len() == query.limit {
                        return Ok((lines, Some(id)));
                    }
                }
            }
            data.truncate(first);
            tail = data;
            pos = start;
            if scanned >= SCAN_BYTES && pos > 0 {
                // Enough for one request; the cursor resumes with the line cut here.
                let resume = start + tail.len() as u64;
                return Ok((lines, Some(format!("{}:{resume}", file_name(path)))));
            }
        }
        if index == 0 {
            return Ok((lines, None));
        }
        index -= 1;
        end = u64::MAX;
    }
}

fn parse_cursor(c: &str) -> Option<(&str, u64)> {
    let (name, offset) = c.rsplit_once(':')?;
    Some((name, offset.parse().ok()?))
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

/// The answer to `GET /logs`: whether the request made sense (a `before` that is no cursor
/// does not), content type and body. `token`: the `?token=` the page was opened with, carried
/// by its links (its script reads it from the address).
pub fn answer(dir: &Path, query: &Query, token: Option<&str>) -> (bool, &'static str, String) {
    if query
        .before
        .as_deref()
        .is_some_and(|c| parse_cursor(c).is_none())
    {
        return (
            false,
            "text/plain; charset=utf-8",
            "before: not a cursor (FILE:OFFSET, as the older link gives)\n".into(),
        );
    }
    let (lines, older) = match read(dir, query) {
        Ok(r) => r,
        Err(e) => {
            return (
                true,
                "text/plain; charset=utf-8",
                format!("cannot read the event log: {e}\n"),
            )
        }
    };
    if query.json {
        let lines: Vec<Value> = lines
            .iter()
            .map(|l| json!({"id": l.id, "event": l.event}))
            .collect();
        return (
            true,
            "application/json",
            json!({"lines": lines, "older": older}).to_string(),
        );
    }
    (
        true,
        "text/html; charset=utf-8",
        html(query, &lines, older, token),
    )
}

/// The page: no inline script or style (its policy allows none). What `/logs.js` needs is in
/// escaped `data-` attributes; everything from the log or the request is escaped for where it
/// goes.
fn html(query: &Query, lines: &[Line], older: Option<String>, token: Option<&str>) -> String {
    let kind = query.kind.as_deref().unwrap_or_default();
    let live = query.before.is_none();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\"><title>chat server logs</title>\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><link rel=\"stylesheet\" href=\"/pages.css\">\
         <script src=\"/logs.js\" defer></script></head><body>\
         <header><h1>Event log</h1><a href=\"/\">chat</a><a href=\"{}\">report</a><a href=\"{}\">metrics</a></header><main>\
         <form method=\"get\" action=\"/logs\">kind <input name=\"kind\" id=\"kind\" value=\"{}\" list=\"kinds\" placeholder=\"any\"> <button>filter</button>",
        escape(&link("/report", token)),
        escape(&link("/metrics", token)),
        escape(kind)
    );
    if let Some(token) = token {
        let _ = write!(
            html,
            "<input type=\"hidden\" name=\"token\" value=\"{}\">",
            escape(token)
        );
    }
    html.push_str("<datalist id=\"kinds\">");
    for k in [
        "start",
        "stop",
        "connect",
        "hello",
        "disconnect",
        "join",
        "msg",
        "match",
        "unpair",
        "refused",
        "unauthorized",
        "rate_limited",
        "slow_consumer",
        "idle_close",
        "handshake_failed",
    ] {
        let _ = write!(html, "<option value=\"{k}\">");
    }
    let _ = write!(
        html,
        "</datalist></form><p class=\"muted\" id=\"live\">{}</p>\
         <table id=\"log\" data-live=\"{}\" data-kind=\"{}\"><thead><tr><th>time (UTC)</th><th>kind</th><th>fields</th></tr></thead><tbody>",
        if live {
            "Newest first; new lines appear at the top as they are logged."
        } else {
            "Older lines, newest first."
        },
        u8::from(live),
        escape(kind)
    );
    for line in lines {
        row(&mut html, line);
    }
    html.push_str("</tbody></table>");
    if let Some(older) = older {
        let mut target = format!("/logs?before={}", urlencode(&older));
        if !kind.is_empty() {
            target.push_str("&kind=");
            target.push_str(&urlencode(kind));
        }
        let _ = write!(
            html,
            "<p><a id=\"older\" href=\"{}\">older</a></p>",
            escape(&link(&target, token))
        );
    } else {
        html.push_str("<p class=\"muted\">Start of the log.</p>");
    }
    html.push_str("</main></body></html>");
    html
}

fn row(html: &mut String, line: &Line) {
    let mut fields = line.event.clone();
    let (ts, kind) = match fields.as_object_mut() {
        Some(map) => (
            map.remove("ts").and_then(|v| v.as_str().map(str::to_owned)),
            map.remove("kind")
                .and_then(|v| v.as_str().map(str::to_owned)),
        ),
        None => (None, None),
    };
    let _ = write!(
        html,
        "<tr data-id=\"{}\"><td>{}</td><td>{}</td><td class=\"f\">{}</td></tr>",
        escape(&line.id),
        escape(ts.as_deref().unwrap_or_default()),
        escape(kind.as_deref().unwrap_or_default()),
        escape(&fields.to_string())
    );
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::EventLog;

    #[test]
    fn pages_go_backwards_across_files_filtered_and_escaped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EventLog::open(dir.path(), 2_000).unwrap();
            for i in 0..200 {
                let kind = if i % 10 == 0 { "join" } else { "msg" };
                log.record(kind, json!({"n": i, "room": "<b>x</b>"}));
            }
            log.flush();
        }
        assert!(eventlog::files(dir.path()).unwrap().len() > 3, "rotated");
        // Every line once, newest first, across pages and files.
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let q = Query {
                before: before.clone(),
                limit: 7,
                ..Query::default()
            };
            let (lines, older) = read(dir.path(), &q).unwrap();
            seen.extend(lines.iter().map(|l| l.event["n"].as_u64().unwrap()));
            match older {
                Some(c) if !lines.is_empty() => before = Some(c),
                _ => break,
            }
        }
        assert_eq!(seen, (0..200).rev().collect::<Vec<u64>>());
        let q = Query {
            kind: Some("join".into()),
            limit: 500,
            ..Query::default()
        };
        let (lines, older) = read(dir.path(), &q).unwrap();
        let ns: Vec<u64> = lines
            .iter()
            .map(|l| l.event["n"].as_u64().unwrap())
            .collect();
        assert_eq!(
            ns,
            (0..200).rev().filter(|n| n % 10 == 0).collect::<Vec<u64>>()
        );
        assert_eq!(older, None);
        let (_, _, body) = answer(dir.path(), &Query::parse(Some("kind=join&limit=5")), None);
        assert!(!answer(dir.path(), &Query::parse(Some("before=nonsense")), None).0);
        assert!(body.contains("&lt;b&gt;x&lt;/b&gt;"), "{body}");
        assert!(!body.contains("<b>x</b>"));
        // What the request brings reaches the page as escaped attributes only; the one script
        // is the page's own file.
        let (_, _, body) = answer(
            dir.path(),
            &Query::parse(Some("kind=%3C%2Fscript%3E%22&limit=1")),
            Some("t&\"<k"),
        );
        assert!(
            body.contains("data-kind=\"&lt;/script&gt;&quot;\""),
            "{body}"
        );
        assert!(body.contains("value=\"&lt;/script&gt;&quot;\""), "{body}");
        assert!(
            body.contains("<input type=\"hidden\" name=\"token\" value=\"t&amp;&quot;&lt;k\">"),
            "{body}"
        );
        assert!(
            body.contains("href=\"/report?token=t%26%22%3Ck\""),
            "{body}"
        );
        assert_eq!(body.matches("<script").count(), 1, "{body}");
        assert!(body.contains("<script src=\"/logs.js\" defer></script>"));
    }
}
