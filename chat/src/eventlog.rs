//! The append-only event log: one JSON object per line, with an ISO-8601 UTC time and a kind,
//! in files named by day (`events-2026-12-02.jsonl`), a new file (`.1`, `.2`, ...) when one
//! passes its size limit. Written by a thread of its own, so recording costs a channel send
//! (the line itself, its time included, is made and written by that thread); the hub holds a
//! batch's events and sends them as one ([`Held`]).
//!
//! A line cut short by a crash is closed with a newline when the file is opened again, and
//! [`read`] skips lines that do not parse (with a warning), so one bad line never costs the
//! rest.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

enum Entry {
    Line(Line),
    Lines(Vec<Line>),
    /// Answered once everything before it is written.
    Flush(Sender<()>),
}

/// An event as recorded: when, its kind, its fields (made into a JSON line by the writer).
struct Line {
    at: OffsetDateTime,
    kind: String,
    fields: Value,
}

impl Line {
    fn new(kind: &str, fields: Value) -> Line {
        Line {
            at: OffsetDateTime::now_utc(),
            kind: kind.into(),
            fields,
        }
    }

    /// `{"ts": ISO-8601, "kind": ..., fields...}` (an object's fields; anything else as `data`).
    fn into_value(self) -> Value {
        let mut line = Map::new();
        line.insert("ts".into(), Value::String(iso(self.at)));
        line.insert("kind".into(), Value::String(self.kind));
        match self.fields {
            Value::Object(map) => line.extend(map),
            Value::Null => {}
            other => {
                line.insert("data".into(), other);
            }
        }
        Value::Object(line)
    }
}

/// A handle to the log; cloneable.
#[derive(Clone)]
pub struct EventLog {
    tx: Sender<Entry>,
}

impl EventLog {
    /// Open the log in `dir` (created if missing), starting a new file when the current one
    /// passes `max_bytes`. The writer thread ends with the last handle; [`EventLog::flush`]
    /// waits until what was recorded is in the file.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<EventLog> {
        // Clients' addresses and nicks: readable by the server's user alone.
        crate::private::create_dir(dir)?;
        let (tx, rx) = bounded(65_536);
        let mut files = Files {
            dir: dir.to_owned(),
            max_bytes,
            day: String::new(),
            current: None,
        };
        // Find today's file now, so a directory we cannot write fails at start.
        files.file_for(&today())?;
        std::thread::Builder::new()
            .name("chat-eventlog".into())
            .spawn(move || write_loop(&rx, &mut files))?;
        Ok(EventLog { tx })
    }

    /// Record an event of `kind` with `fields` (an object; other values go under `data`).
    pub fn record(&self, kind: &str, fields: Value) {
        let _ = self.tx.send(Entry::Line(Line::new(kind, fields)));
    }

    /// A recorder that holds what it is given until [`Held::send`]: one channel send (and at
    /// most one wake of the writer) for many events.
    pub fn held(&self) -> Held {
        Held {
            log: self.clone(),
            lines: Vec::new(),
        }
    }

    /// Wait until everything recorded so far is written to the file.
    pub fn flush(&self) {
        let (tx, rx) = bounded(1);
        if self.tx.send(Entry::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

/// Events recorded now and written together later (the hub: a batch's events), each with the
/// time it was recorded.
pub struct Held {
    log: EventLog,
    lines: Vec<Line>,
}

impl Held {
    /// Record an event of `kind` with `fields`, as [`EventLog::record`] does, once sent.
    pub fn record(&mut self, kind: &str, fields: Value) {
        self.lines.push(Line::new(kind, fields));
    }

    /// Hand what was recorded to the writer.
    pub fn send(&mut self) {
        if !self.lines.is_empty() {
            let lines = std::mem::take(&mut self.lines);
            let _ = self.log.tx.send(Entry::Lines(lines));
        }
    }

    /// Send, and wait until everything recorded so far is written to the file.
    pub fn flush(&mut self) {
        self.send();
        self.log.flush();
    }
}

struct Files {
    dir: PathBuf,
    max_bytes: u64,
    day: String,
    current: Option<(BufWriter<File>, u64)>,
}

impl Files {
    /// The file to append to on `day`: the last of that day's files, or a new one past the size
    /// limit.
    fn file_for(&mut self, day: &str) -> io::Result<&mut (BufWriter<File>, u64)> {
        let full = self
            .current
            .as_ref()
            .is_some_and(|(_, size)| *size >= self.max_bytes);
        if self.day != day || self.current.is_none() || full {
            if let Some((mut w, _)) = self.current.take() {
                w.flush()?;
            }
            let mut part = 0;
            while path_of(&self.dir, day, part + 1).exists() {
                part += 1;
            }
            let mut path = path_of(&self.dir, day, part);
            if std::fs::metadata(&path).is_ok_and(|m| m.len() >= self.max_bytes) {
                path = path_of(&self.dir, day, part + 1);
            }
            let mut file = crate::private::append(&path)?;
            let mut size = file.metadata()?.len();
            if size > 0 && !ends_with_newline(&mut file)? {
                tracing::warn!(path = %path.display(), "event log ended mid-line (a crash?): closing that line");
                file.write_all(b"\n")?;
                size += 1;
            }
            self.day = day.to_owned();
            self.current = Some((BufWriter::new(file), size));
        }
        Ok(self.current.as_mut().expect("just opened"))
    }
}

fn ends_with_newline(file: &mut File) -> io::Result<bool> {
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

fn path_of(dir: &Path, day: &str, part: u32) -> PathBuf {
    if part == 0 {
        dir.join(format!("events-{day}.jsonl"))
    } else {
        dir.join(format!("events-{day}.{part}.jsonl"))
    }
}

fn write_loop(rx: &Receiver<Entry>, files: &mut Files) {
    let mut failed = false;
    while let Ok(entry) = rx.recv() {
        let mut entries = vec![entry];
        entries.extend(rx.try_iter().take(4096));
        for entry in entries {
            match entry {
                Entry::Line(line) => write_line(files, line, &mut failed),
                Entry::Lines(lines) => {
                    for line in lines {
                        write_line(files, line, &mut failed);
                    }
                }
                Entry::Flush(done) => {
                    if let Some((w, _)) = &mut files.current {
                        let _ = w.flush();
                    }
                    let _ = done.send(());
                }
            }
        }
        if let Some((w, _)) = &mut files.current {
            let _ = w.flush();
        }
    }
}

/// Write one event as a line of its day's file; the first failure is said, once.
fn write_line(files: &mut Files, line: Line, failed: &mut bool) {
    let v = line.into_value();
    let day = v["ts"].as_str().map_or_else(today, |t| t[..10].to_owned());
    let r = files.file_for(&day).and_then(|(w, size)| {
        let mut line = v.to_string();
        line.push('\n');
        w.write_all(line.as_bytes())?;
        *size += line.len() as u64;
        Ok(())
    });
    if let Err(e) = r {
        if !*failed {
            tracing::error!(error = %e, "event log: cannot write");
        }
        *failed = true;
    }
}

fn iso(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn today() -> String {
    iso(OffsetDateTime::now_utc())[..10].to_owned()
}

/// The log files in `dir`, oldest first.
pub fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("events-") && n.ends_with(".jsonl"))
        })
        .collect();
    // Day, then part number (`events-DAY.jsonl` before `events-DAY.N.jsonl`).
    paths.sort_by_key(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let day = name.get(7..17).unwrap_or_default().to_owned();
        let part: u32 = name
            .get(17..)
            .and_then(|rest| rest.strip_prefix('.')?.strip_suffix(".jsonl")?.parse().ok())
            .unwrap_or(0);
        (day, part)
    });
    Ok(paths)
}

/// Every event in `dir`'s log files, oldest file first; lines that do not parse are skipped
/// with a warning.
pub fn read(dir: &Path) -> io::Result<Vec<Value>> {
    let mut out = Vec::new();
    for path in files(dir)? {
        for (i, line) in BufReader::new(File::open(&path)?).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::warn!(path = %path.display(), line = i + 1, error = %e, "skipping a bad event log line");
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_lines_with_time_and_kind_and_files_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EventLog::open(dir.path(), 200).unwrap();
            for i in 0..10 {
                log.record("msg", json!({"room": "lobby", "seq": i}));
            }
            log.flush();
        }
        let events = read(dir.path()).unwrap();
        assert_eq!(events.len(), 10);
        assert_eq!(events[3]["seq"], 3, "in order across files");
        assert_eq!(events[0]["kind"], "msg");
        let ts = events[0]["ts"].as_str().unwrap();
        // 2026-12-02T17:29:00.123456789Z
        assert!(
            ts.len() >= 20 && ts.ends_with('Z') && &ts[10..11] == "T",
            "{ts}"
        );
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files > 1, "rotated by size: {files} file(s)");
    }

    #[test]
    fn held_events_are_written_when_sent_in_order_with_their_own_times() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), 1 << 20).unwrap();
        let mut held = log.held();
        for i in 0..3 {
            held.record("msg", json!({"seq": i}));
        }
        log.record("connect", json!({"id": 1}));
        log.flush();
        let kinds: Vec<_> = read(dir.path())
            .unwrap()
            .iter()
            .map(|e| e["kind"].clone())
            .collect();
        assert_eq!(
            kinds,
            [json!("connect")],
            "nothing held is written before it is sent"
        );
        held.send();
        held.record("msg", json!({"seq": 3}));
        held.flush();
        let events = read(dir.path()).unwrap();
        let seqs: Vec<_> = events[1..].iter().map(|e| e["seq"].clone()).collect();
        assert_eq!(seqs, [json!(0), json!(1), json!(2), json!(3)]);
        // Each keeps the time it was recorded at, not the time it was sent:
        // "2026-12-07T23:20:01.123456789Z" as (seconds, fraction).
        let at = |i: usize| {
            let ts = events[i]["ts"].as_str().unwrap().trim_end_matches('Z');
            let (secs, frac) = ts.split_once('.').unwrap_or((ts, "0"));
            (secs.to_owned(), format!("0.{frac}").parse::<f64>().unwrap())
        };
        assert!(at(1) <= at(0), "held before the connect was recorded");
        assert!(at(3) <= at(4));
    }

    #[test]
    fn a_truncated_last_line_is_skipped_and_logging_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_of(dir.path(), &today(), 0);
        std::fs::write(&path, "{\"kind\":\"connect\",\"id\":1}\n{\"kind\":\"disc").unwrap();
        {
            let log = EventLog::open(dir.path(), 1 << 20).unwrap();
            log.record("connect", json!({"id": 2}));
            log.flush();
        }
        let events = read(dir.path()).unwrap();
        let ids: Vec<_> = events.iter().map(|e| e["id"].clone()).collect();
        assert_eq!(ids, [json!(1), json!(2)]);
    }
}
