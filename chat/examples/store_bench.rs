//! The store's cost per message (printed, not asserted), in node-pairs' shape: 500-byte
//! messages spread over 1,500 rooms, committed in batches as the hub does. For each batch
//! size: this thread's CPU per message (`/proc/thread-self/schedstat`) and the bytes it writes
//! (`/proc/thread-self/io`: WAL frames, and pages copied back at checkpoints), for `Store` and
//! for the first layout (rows kept in (room name,
//! seq) order, `WITHOUT ROWID`: the same statements the store ran before it moved to arrival
//! order), in one run.
//!
//! ```text
//! cargo run --release -p syncws-chat --example store_bench [MESSAGES] [ROOMS]
//! ```

use std::time::Duration;

use rusqlite::{params, Connection};
use syncws_chat::protocol::Msg;
use syncws_chat::store::{Retention, Store};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Nanoseconds this thread has run.
fn thread_cpu_ns() -> Result<u64, BoxError> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    Ok(s.split_whitespace().next().ok_or("schedstat")?.parse()?)
}

/// Bytes this thread has written (WAL frames, and the database's pages at checkpoints).
fn thread_written() -> Result<u64, BoxError> {
    let io = std::fs::read_to_string("/proc/thread-self/io")?;
    let line = io
        .lines()
        .find(|l| l.starts_with("wchar:"))
        .ok_or("wchar")?;
    Ok(line[6..].trim().parse()?)
}

/// (CPU us, KiB written) per message since `start`.
fn per_message(start: (u64, u64), messages: usize) -> Result<(f64, f64), BoxError> {
    let cpu = (thread_cpu_ns()? - start.0) as f64 / 1e3 / messages as f64;
    let written = (thread_written()? - start.1) as f64 / 1024.0 / messages as f64;
    Ok((cpu, written))
}

/// The rooms of a batch: a random spread, as pairs talk independently.
struct Dice(u64);

impl Dice {
    fn room(&mut self, rooms: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % rooms as u64) as usize
    }
}

fn names(rooms: usize) -> Vec<String> {
    (0..rooms)
        .map(|i| format!("pair:19af3c{:05x}-{}", i * 7919, i + 1))
        .collect()
}

fn msg(room: &str, seq: u64, text: &str) -> Msg {
    Msg {
        room: room.to_owned(),
        seq,
        from: format!("guest-{seq}"),
        text: text.to_owned(),
        ts: syncws_chat::now_ms(),
        cid: Some(serde_json::json!(seq)),
    }
}

/// (us of CPU, KiB written) per message through `Store`.
fn store(messages: usize, rooms: usize, batch: usize) -> Result<(f64, f64), BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("chat.db");
    let retention = Retention {
        max_messages: 1000,
        max_age: Duration::from_secs(3600),
    };
    let mut store = Store::open(&path, retention, false)?;
    let names = names(rooms);
    let text = "x".repeat(500);
    let mut seqs = vec![0u64; rooms];
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let start = (thread_cpu_ns()?, thread_written()?);
    let mut done = 0;
    while done < messages {
        let mut b = store.begin()?;
        for _ in 0..batch {
            let r = dice.room(rooms);
            seqs[r] += 1;
            b.append(&msg(&names[r], seqs[r], &text))?;
        }
        b.commit()?;
        done += batch;
    }
    per_message(start, done)
}

/// The same through the first layout's schema and statements.
fn first_layout(messages: usize, rooms: usize, batch: usize) -> Result<(f64, f64), BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("chat.db");
    let mut conn = Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -32768)?;
    conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
    conn.execute_batch(
        "CREATE TABLE rooms (room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
         CREATE TABLE messages (
             room TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
             text TEXT NOT NULL, ts INTEGER NOT NULL, cid TEXT,
             PRIMARY KEY (room, seq)) WITHOUT ROWID;",
    )?;
    let names = names(rooms);
    let text = "x".repeat(500);
    let mut seqs = vec![0u64; rooms];
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let start = (thread_cpu_ns()?, thread_written()?);
    let mut done = 0;
    while done < messages {
        let tx = conn.transaction()?;
        let mut touched = std::collections::HashMap::new();
        for _ in 0..batch {
            let r = dice.room(rooms);
            seqs[r] += 1;
            let m = msg(&names[r], seqs[r], &text);
            let cid = m.cid.as_ref().map(|c| c.to_string());
            tx.prepare_cached(
                "INSERT INTO messages (room, seq, sender, text, ts, cid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![m.room, m.seq, m.from, m.text, m.ts, cid])?;
            touched.insert(m.room, m.seq);
        }
        for (room, last) in &touched {
            tx.prepare_cached(
                "INSERT INTO rooms (room, last_seq) VALUES (?1, ?2)
                 ON CONFLICT(room) DO UPDATE SET last_seq = excluded.last_seq",
            )?
            .execute(params![room, last])?;
            let keep_from = last.saturating_sub(1000);
            if keep_from > 0 {
                tx.prepare_cached("DELETE FROM messages WHERE room = ?1 AND seq <= ?2")?
                    .execute(params![room, keep_from])?;
            }
        }
        tx.commit()?;
        done += batch;
    }
    per_message(start, done)
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let messages: usize = args.get(1).map_or(Ok(30_000), |a| a.parse())?;
    let rooms: usize = args.get(2).map_or(Ok(1_500), |a| a.parse())?;
    println!(
        "{messages} messages of 500 B over {rooms} rooms; CPU and bytes written by this thread"
    );
    println!("batch | first layout: per message | arrival order: per message");
    for batch in [8, 32, 128, 512] {
        let (old_us, old_kib) = first_layout(messages, rooms, batch)?;
        let (us, kib) = store(messages, rooms, batch)?;
        println!(
            "{batch:>5} | {old_us:>6.2} us, {old_kib:>5.1} KiB | {us:>6.2} us, {kib:>5.1} KiB | {:.1}x less CPU, {:.1}x fewer bytes",
            old_us / us,
            old_kib / kib
        );
    }
    Ok(())
}
