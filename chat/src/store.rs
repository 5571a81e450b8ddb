//! The durable store: rooms, their last sequence numbers and their history, in SQLite (WAL),
//! written by one thread (the hub) in grouped transactions.
//!
//! A room's `last_seq` is kept in its own table and moves forward in the same transaction as the
//! messages it numbers, so pruning old history never lets a sequence number be used twice, and a
//! crash loses nothing that was committed (and nothing is delivered before its commit).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use crate::matchmaking::Matchmaker;
use crate::protocol::Msg;

pub type Result<T> = rusqlite::Result<T>;

/// How much history each room keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Messages kept per room, newest first.
    pub max_messages: u64,
    /// Messages older than this are dropped.
    pub max_age: Duration,
}

#[derive(Debug)]
pub struct Store {
    conn: Connection,
    epoch: String,
    retention: Retention,
    /// Rooms written to since their history was last pruned by age, and when that is due
    /// (ms since the epoch): once a second, not on every commit.
    aging: HashSet<String>,
    next_age_prune_ms: i64,
    /// Where `age_out` goes on in the rooms table (the last room it visited; "" from the start).
    age_cursor: String,
}

/// Rooms `age_out` visits per call (once a second): a table of a million rooms is gone
/// through in under three hours, a seek each.
const AGE_OUT_ROOMS: usize = 100;

/// How often rooms written to are pruned by age, in ms.
const AGE_PRUNE_EVERY_MS: i64 = 1_000;

/// What a `join{since}` can replay.
#[derive(Debug, PartialEq)]
pub enum Recovery {
    /// Every message after `since`, in order (empty when nothing was missed).
    Complete(Vec<Msg>),
    /// Part of the range is no longer kept: the first seq still there (`None`: nothing kept).
    Gone { first_kept: Option<u64> },
    /// Everything is kept, but more text than one replay may carry: the client pages history
    /// instead (`first_kept` as for `Gone`).
    TooMuch { first_kept: Option<u64> },
}

impl Store {
    /// Open (or create) the store at `path`. `durable`: every commit reaches the disk before it
    /// returns (survives power loss); otherwise commits survive a crash of the process, and the
    /// last ones may be lost with the machine's power.
    pub fn open(path: &Path, retention: Retention, durable: bool) -> Result<Store> {
        // Conversations: readable by the server's user alone.
        crate::private::database(path)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // Thousands of busy rooms touch pages all over the messages table: 2 MiB of page
        // cache (the default) made every commit read pages back from the OS and spill dirty
        // ones mid-transaction.
        conn.pragma_update(None, "cache_size", -32768)?;
        // A checkpoint ends in an fsync of the database, inside whichever commit set it off;
        // at the default (every 1,000 pages) a busy hub stalled on the disk many times a
        // second (node-pairs, 2,000 clients on a virtual disk: p99 1.9 s, 0.35 s with this).
        conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS messages (
                 room TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
                 text TEXT NOT NULL, ts INTEGER NOT NULL, cid TEXT,
                 PRIMARY KEY (room, seq)) WITHOUT ROWID;",
        )?;
        let epoch = match conn
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
            .optional()?
        {
            Some(e) => e,
            None => {
                let e = format!("{:016x}", rand::random::<u64>());
                conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?1)", [&e])?;
                e
            }
        };
        Ok(Store {
            conn,
            epoch,
            retention,
            aging: HashSet::new(),
            next_age_prune_ms: 0,
            age_cursor: String::new(),
        })
    }

    /// Identifies this store: a client whose `epoch` differs saw another store's sequence
    /// numbers (the data directory was reset).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// A room's last sequence number (0 for a room never written to).
    pub fn last_seq(&self, room: &str) -> Result<u64> {
        last_seq(&self.conn, room)
    }

    /// Start a transaction: appends within it are committed together.
    pub fn begin(&mut self) -> Result<Batch<'_>> {
        Ok(Batch {
            tx: self.conn.transaction()?,
            retention: self.retention,
            touched: HashMap::new(),
            aging: &mut self.aging,
            next_age_prune_ms: &mut self.next_age_prune_ms,
        })
    }

    /// Prune by age the history of the next few rooms of the table, whether or not anyone
    /// writes to them, so `--history-hours` holds in quiet rooms too (rooms written to are
    /// pruned at their commits as well).
    pub fn age_out(&mut self, now_ms: i64) -> Result<()> {
        let max_age_ms = i64::try_from(self.retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(max_age_ms);
        let tx = self.conn.transaction()?;
        let rooms: Vec<String> = {
            let mut stmt =
                tx.prepare_cached("SELECT room FROM rooms WHERE room > ?1 ORDER BY room LIMIT ?2")?;
            let rows =
                stmt.query_map(params![self.age_cursor, AGE_OUT_ROOMS as u64], |r| r.get(0))?;
            rows.collect::<Result<_>>()?
        };
        for room in &rooms {
            prune_by_age(&tx, room, cutoff)?;
        }
        tx.commit()?;
        self.age_cursor = if rooms.len() < AGE_OUT_ROOMS {
            String::new()
        } else {
            rooms.last().cloned().unwrap_or_default()
        };
        Ok(())
    }

    /// Messages of `room` before `before` (all when `None`), at most `limit` and about
    /// `max_bytes` of text, oldest first, and whether older ones are kept.
    pub fn page_before(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Msg>, bool)> {
        page_before(&self.conn, room, before, limit, max_bytes)
    }
}

/// Where the hub's batch writes messages and reads history: the embedded store's transaction
/// ([`Batch`]), Redis in cluster mode (`crate::cluster::ClusterBatch`), or nothing when the
/// store cannot even start a transaction ([`Unavailable`]).
pub trait Log {
    /// Store `msg`. Here its seq is already the room's next; in cluster mode the seq is given
    /// by Redis when the batch is published, and `msg.seq` is ignored.
    fn append(&mut self, msg: &Msg) -> Result<()>;
    /// What `join{room, since}` replays, `last` being the room's last seq: everything after
    /// `since` if it is kept and comes to at most `max_bytes` of text.
    fn recover(&mut self, room: &str, since: u64, last: u64, max_bytes: usize) -> Result<Recovery>;
    /// The oldest seq of `room` still kept.
    fn first_kept(&mut self, room: &str) -> Result<Option<u64>>;
    /// Messages of `room` before `before`, at most `limit` and about `max_bytes` of text,
    /// oldest first, and whether older ones are kept.
    fn page_before(
        &mut self,
        room: &str,
        before: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Msg>, bool)>;
    /// A room this node has no members in is joined: its last seq (cluster mode: the node
    /// starts following it).
    fn open_room(&mut self, room: &str) -> Result<u64>;
    /// An ended pair's room: nobody can join it again, so its history goes.
    fn drop_room(&mut self, _room: &str) -> Result<()> {
        Ok(())
    }
    /// Whether the room's seq comes from elsewhere (cluster mode): messages are then numbered
    /// and delivered by the log, not by the hub.
    fn shared(&self) -> bool {
        false
    }
    /// Cluster mode: the nicks in `room` on other nodes.
    fn remote_members(&mut self, _room: &str) -> Vec<String> {
        Vec::new()
    }
    /// Cluster mode: the framed messages of `room` after seq `after` still in its log, oldest
    /// first.
    fn frames_after(&mut self, _room: &str, _after: u64) -> Result<Vec<(u64, String)>> {
        Ok(Vec::new())
    }
    /// Cluster mode: members of the lobby on other nodes.
    fn lobby_elsewhere(&self) -> usize {
        0
    }
    /// Cluster mode: whether the pair `room` was ended by the partner's node.
    fn pair_ended(&mut self, _room: &str) -> bool {
        false
    }
    /// Cluster mode: the queue of strangers the nodes share. None: the hub pairs its own.
    fn matchmaker(&mut self) -> Option<&mut dyn Matchmaker> {
        None
    }
}

impl Log for Batch<'_> {
    fn append(&mut self, msg: &Msg) -> Result<()> {
        Batch::append(self, msg)
    }
    fn recover(&mut self, room: &str, since: u64, last: u64, max_bytes: usize) -> Result<Recovery> {
        Batch::recover(self, room, since, last, max_bytes)
    }
    fn first_kept(&mut self, room: &str) -> Result<Option<u64>> {
        Batch::first_kept(self, room)
    }
    fn page_before(
        &mut self,
        room: &str,
        before: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Msg>, bool)> {
        page_before(&self.tx, room, before, limit, max_bytes)
    }
    fn open_room(&mut self, room: &str) -> Result<u64> {
        // Written in this batch already (and left since): its seq is not in the table yet.
        match self.touched.get(room) {
            Some(last) => Ok(*last),
            None => last_seq(&self.tx, room),
        }
    }
    fn drop_room(&mut self, room: &str) -> Result<()> {
        self.touched.remove(room);
        self.aging.remove(room);
        self.tx
            .prepare_cached("DELETE FROM messages WHERE room = ?1")?
            .execute([room])?;
        self.tx
            .prepare_cached("DELETE FROM rooms WHERE room = ?1")?
            .execute([room])?;
        Ok(())
    }
}

/// The store when it cannot start a transaction: every read and write fails, so each request
/// is answered (`unavailable`) instead of dropped, and connections still come and go.
pub struct Unavailable;

/// The error `Unavailable` gives.
fn unavailable() -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(
        "the store is unavailable",
    )))
}

impl Log for Unavailable {
    fn append(&mut self, _msg: &Msg) -> Result<()> {
        Err(unavailable())
    }
    fn recover(&mut self, _: &str, _: u64, _: u64, _: usize) -> Result<Recovery> {
        Err(unavailable())
    }
    fn first_kept(&mut self, _room: &str) -> Result<Option<u64>> {
        Err(unavailable())
    }
    fn page_before(
        &mut self,
        _: &str,
        _: Option<u64>,
        _: usize,
        _: usize,
    ) -> Result<(Vec<Msg>, bool)> {
        Err(unavailable())
    }
    fn open_room(&mut self, _room: &str) -> Result<u64> {
        Err(unavailable())
    }
}

/// Messages appended in one transaction.
pub struct Batch<'a> {
    tx: rusqlite::Transaction<'a>,
    retention: Retention,
    /// Rooms written to in this batch, with their last seq now.
    touched: HashMap<String, u64>,
    aging: &'a mut HashSet<String>,
    next_age_prune_ms: &'a mut i64,
}

impl Batch<'_> {
    /// Store `msg` (its seq already the room's next); the room's last seq moves at commit.
    pub fn append(&mut self, msg: &Msg) -> Result<()> {
        let cid = msg.cid.as_ref().map(Value::to_string);
        self.tx
            .prepare_cached(
                "INSERT INTO messages (room, seq, sender, text, ts, cid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![msg.room, msg.seq, msg.from, msg.text, msg.ts, cid])?;
        match self.touched.get_mut(msg.room.as_str()) {
            Some(last) => *last = (*last).max(msg.seq),
            None => {
                self.touched.insert(msg.room.clone(), msg.seq);
            }
        }
        Ok(())
    }

    /// What `join{room, since}` replays, `last` being the room's last seq: all of
    /// `since+1..=last`; `Gone` when part of it was pruned; `TooMuch` past `max_bytes` of text
    /// (read no further than that).
    pub fn recover(&self, room: &str, since: u64, last: u64, max_bytes: usize) -> Result<Recovery> {
        if since >= last {
            return Ok(Recovery::Complete(Vec::new()));
        }
        let first_kept = first_kept(&self.tx, room)?;
        match first_kept {
            Some(first) if first <= since + 1 => {
                let mut stmt = self.tx.prepare_cached(
                    "SELECT room, seq, sender, text, ts, cid FROM messages
                     WHERE room = ?1 AND seq > ?2 ORDER BY seq",
                )?;
                let mut rows = stmt.query_map(params![room, since], row_to_msg)?;
                let mut msgs = Vec::new();
                let mut bytes = 0usize;
                for msg in rows.by_ref() {
                    let msg = msg?;
                    bytes += msg.text.len();
                    if bytes > max_bytes {
                        return Ok(Recovery::TooMuch { first_kept });
                    }
                    msgs.push(msg);
                }
                Ok(Recovery::Complete(msgs))
            }
            first_kept => Ok(Recovery::Gone { first_kept }),
        }
    }

    /// The oldest seq of `room` still kept.
    pub fn first_kept(&self, room: &str) -> Result<Option<u64>> {
        first_kept(&self.tx, room)
    }

    /// Move the last seq of each room written to (once per room, not per message), prune
    /// them by count, and by age when that is due, then commit. Both prunes walk the room's
    /// primary key from its oldest message, so they cost a seek when nothing is due, not a
    /// scan of the room's history (a `seq <= .. OR ts < ..` condition scanned every row of
    /// every room written to, on every commit: most of the hub's time with a thousand busy
    /// rooms).
    pub fn commit(self, now_ms: i64) -> Result<()> {
        for (room, last) in &self.touched {
            self.tx
                .prepare_cached(
                    "INSERT INTO rooms (room, last_seq) VALUES (?1, ?2)
                     ON CONFLICT(room) DO UPDATE SET last_seq = excluded.last_seq",
                )?
                .execute(params![room, last])?;
            let keep_from = last.saturating_sub(self.retention.max_messages);
            if keep_from > 0 {
                self.tx
                    .prepare_cached("DELETE FROM messages WHERE room = ?1 AND seq <= ?2")?
                    .execute(params![room, keep_from])?;
            }
        }
        self.aging.extend(self.touched.into_keys());
        if now_ms >= *self.next_age_prune_ms {
            let max_age_ms = i64::try_from(self.retention.max_age.as_millis()).unwrap_or(i64::MAX);
            let cutoff = now_ms.saturating_sub(max_age_ms);
            for room in self.aging.iter() {
                prune_by_age(&self.tx, room, cutoff)?;
            }
            self.aging.clear();
            *self.next_age_prune_ms = now_ms.saturating_add(AGE_PRUNE_EVERY_MS);
        }
        self.tx.commit()
    }
}

/// Times grow with seq in a room: delete from the oldest while older than `cutoff`.
fn prune_by_age(conn: &Connection, room: &str, cutoff: i64) -> Result<()> {
    let oldest: Option<i64> = conn
        .prepare_cached("SELECT ts FROM messages WHERE room = ?1 ORDER BY seq LIMIT 1")?
        .query_row([room], |r| r.get(0))
        .optional()?;
    if oldest.is_some_and(|ts| ts < cutoff) {
        conn.prepare_cached(
            "DELETE FROM messages WHERE room = ?1 AND seq <= (
                 SELECT MAX(seq) FROM messages WHERE room = ?1 AND ts < ?2)",
        )?
        .execute(params![room, cutoff])?;
    }
    Ok(())
}

fn first_kept(conn: &Connection, room: &str) -> Result<Option<u64>> {
    conn.prepare_cached("SELECT MIN(seq) FROM messages WHERE room = ?1")?
        .query_row([room], |r| r.get(0))
}

fn last_seq(conn: &Connection, room: &str) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT last_seq FROM rooms WHERE room = ?1")?
        .query_row([room], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

fn page_before(
    conn: &Connection,
    room: &str,
    before: Option<u64>,
    limit: usize,
    max_bytes: usize,
) -> Result<(Vec<Msg>, bool)> {
    let before = before.unwrap_or(i64::MAX as u64).min(i64::MAX as u64);
    let mut stmt = conn.prepare_cached(
        "SELECT room, seq, sender, text, ts, cid FROM messages
         WHERE room = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![room, before, limit as u64 + 1], row_to_msg)?;
    // Newest first, until `limit` or `max_bytes` (at least one); one more row says whether
    // older ones are kept.
    let mut msgs = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    for msg in rows {
        let msg = msg?;
        if msgs.len() == limit || (!msgs.is_empty() && bytes + msg.text.len() > max_bytes) {
            more = true;
            break;
        }
        bytes += msg.text.len();
        msgs.push(msg);
    }
    msgs.reverse();
    Ok((msgs, more))
}

fn row_to_msg(r: &rusqlite::Row<'_>) -> Result<Msg> {
    let cid: Option<String> = r.get(5)?;
    Ok(Msg {
        room: r.get(0)?,
        seq: r.get(1)?,
        from: r.get(2)?,
        text: r.get(3)?,
        ts: r.get(4)?,
        cid: cid.and_then(|c| serde_json::from_str(&c).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(room: &str, seq: u64, ts: i64) -> Msg {
        Msg {
            room: room.into(),
            seq,
            from: "ann".into(),
            text: format!("m{seq}"),
            ts,
            cid: Some(serde_json::json!({"n": seq})),
        }
    }

    fn retention(max: u64) -> Retention {
        Retention {
            max_messages: max,
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn seqs_survive_reopening_and_pruning_never_frees_a_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let epoch;
        {
            let mut store = Store::open(&path, retention(3), false).unwrap();
            epoch = store.epoch().to_owned();
            let mut b = store.begin().unwrap();
            for seq in 1..=5 {
                b.append(&msg("a", seq, 1_000)).unwrap();
            }
            b.commit(1_000).unwrap();
        }
        let mut store = Store::open(&path, retention(3), false).unwrap();
        assert_eq!(store.epoch(), epoch);
        assert_eq!(store.last_seq("a").unwrap(), 5);
        assert_eq!(store.last_seq("never").unwrap(), 0);
        let (page, more) = store.page_before("a", None, 10, 1 << 20).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(!more);
        assert_eq!(page[0].cid, Some(serde_json::json!({"n": 3})));
        let b = store.begin().unwrap();
        assert_eq!(
            b.recover("a", 1, 5, 1 << 20).unwrap(),
            Recovery::Gone {
                first_kept: Some(3)
            }
        );
        match b.recover("a", 2, 5, 1 << 20).unwrap() {
            Recovery::Complete(m) => assert_eq!(m.len(), 3),
            other => panic!("{other:?}"),
        }
        // "m3" "m4" "m5": 6 bytes of text; 5 is too little for one replay.
        assert_eq!(
            b.recover("a", 2, 5, 5).unwrap(),
            Recovery::TooMuch {
                first_kept: Some(3)
            }
        );
        assert_eq!(b.recover("a", 5, 5, 0).unwrap(), Recovery::Complete(vec![]));
    }

    #[test]
    fn pages_go_backwards_and_old_messages_age_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("c.db"), retention(100), false).unwrap();
        let mut b = store.begin().unwrap();
        for seq in 1..=10 {
            b.append(&msg("r", seq, 0)).unwrap();
        }
        b.commit(1_000).unwrap();
        let (page, more) = store.page_before("r", Some(8), 3, 1 << 20).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 6, 7]);
        assert!(more);
        // A byte budget cuts a page short (but never below one message).
        let (page, more) = store.page_before("r", Some(8), 3, 4).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [6, 7]);
        assert!(more);
        let (page, _) = store.page_before("r", None, 3, 0).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [10]);
        // An hour and more later, a new message prunes the old ones.
        let mut b = store.begin().unwrap();
        b.append(&msg("r", 11, 4_000_000)).unwrap();
        b.commit(4_000_000).unwrap();
        let (page, _) = store.page_before("r", None, 50, 1 << 20).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [11]);
    }

    #[test]
    fn quiet_rooms_age_out_and_ended_rooms_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("c.db"), retention(100), false).unwrap();
        let mut b = store.begin().unwrap();
        for room in ["quiet", "pair:x"] {
            b.append(&msg(room, 1, 0)).unwrap();
        }
        b.commit(0).unwrap();
        // Nobody writes to "quiet" again: an hour and more later it is pruned all the same,
        // and its seq stays.
        store.age_out(4_000_000).unwrap();
        assert!(store
            .page_before("quiet", None, 10, 1 << 20)
            .unwrap()
            .0
            .is_empty());
        assert_eq!(store.last_seq("quiet").unwrap(), 1);
        let mut b = store.begin().unwrap();
        b.drop_room("pair:x").unwrap();
        b.commit(0).unwrap();
        assert_eq!(store.last_seq("pair:x").unwrap(), 0);
    }
}
