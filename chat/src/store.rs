//! The durable store: rooms, their last sequence numbers and their history, in SQLite (WAL),
//! written by one thread (the hub) in grouped transactions.
//!
//! A room's last seq is the larger of its newest message kept and the `last_seq` of its row in
//! the rooms table, which is brought up to date in the same transaction that deletes a room's
//! newest message (pruning by age; pruning by count keeps the newest ones). So pruning old
//! history never lets a sequence number be used twice, a commit writes nothing per room but its
//! messages, and a crash loses nothing that was committed (and nothing is delivered before its
//! commit).
//!
//! Messages are rows in the order they arrive (an integer key), found by room through an index
//! on (room's id, seq). A commit then appends its messages to the table's last pages whatever
//! rooms they belong to, and adds a small entry per message to the index. With rows kept in
//! room order (the first layout) every busy room's new row landed on a page of its own, large
//! rows split pages, and each commit moved every room's `last_seq` too: with 1,500 busy rooms
//! a 500-byte message cost 2-5x the CPU and 2-8x the bytes written (`examples/store_bench`).
//! Age pruning follows the arrival order: the oldest rows go first, whatever their room.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value;

use crate::matchmaking::Matchmaker;
use crate::protocol::Msg;

pub type Result<T> = rusqlite::Result<T>;

/// The layout this code reads and writes (`PRAGMA user_version`). 0 is the first layout,
/// from before layouts were numbered: messages kept in (room name, seq) order, a
/// `WITHOUT ROWID` table; it is moved to this one when the store is opened.
const LAYOUT: i64 = 2;

const SCHEMA: &str = "
    CREATE TABLE rooms (
        id INTEGER PRIMARY KEY, room TEXT NOT NULL UNIQUE, last_seq INTEGER NOT NULL);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY, room INTEGER NOT NULL, seq INTEGER NOT NULL,
        sender TEXT NOT NULL, text TEXT NOT NULL, ts INTEGER NOT NULL, cid TEXT);
    CREATE UNIQUE INDEX messages_by_room ON messages (room, seq);";

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
    /// Rooms' ids in the store, as the hub writes to them (forgotten past `ROOM_IDS`).
    ids: HashMap<String, i64>,
    _checkpointer: Checkpointer,
}

/// Moves what the write-ahead log holds into the database once a second, off the hub's thread
/// (the checkpoint's fsync of the database can take 100 ms on a virtual disk). Stopped, with a
/// last checkpoint, when the store is dropped.
#[derive(Debug)]
struct Checkpointer {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// While the other connection (the hub's, or the checkpointer's) holds the lock, wait in 1 ms
/// naps, 5 s in all: SQLite's own busy timeout sleeps up to 100 ms at a time, which the hub
/// would pay in latency after a short checkpoint.
fn nap_while_busy(conn: &Connection) -> Result<()> {
    conn.busy_handler(Some(|n| {
        std::thread::sleep(Duration::from_millis(1));
        n < 5_000
    }))
}

impl Checkpointer {
    const EVERY: Duration = Duration::from_secs(1);
    /// The log's length (in 4 KiB pages) past which a checkpoint makes the next commit start
    /// it again: 64 MiB (a busy hub writes that in a few seconds).
    const RESTART_PAGES: i64 = if cfg!(test) { 64 } else { 16384 };

    fn start(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        nap_while_busy(&conn)?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("chat-checkpoint".into())
            .spawn(move || loop {
                let last = !matches!(
                    stopped.recv_timeout(Self::EVERY),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout)
                );
                // PASSIVE copies what it can without waiting for the writer. The log starts
                // again from its beginning only when a commit finds all of it copied, which a
                // writer that commits during every checkpoint never does: past RESTART_PAGES
                // a RESTART holds the writer (15-20 ms here) while it copies the little the
                // passive pass left and makes the next commit start the log again. The hub
                // waits for it in 1 ms naps (its busy handler), not SQLite's growing sleeps.
                let checkpoint = |mode: &str| {
                    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                        r.get::<_, i64>(1)
                    })
                };
                let done = match checkpoint("PASSIVE") {
                    Ok(frames) if frames > Self::RESTART_PAGES || last => checkpoint("RESTART"),
                    other => other,
                };
                if let Err(e) = done {
                    tracing::warn!(error = %e, "store: checkpoint failed; the write-ahead log grows until one succeeds");
                }
                if last {
                    return;
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Room ids remembered at most: past it they are forgotten (and read again as needed), so
/// writing to many rooms cannot grow the server.
const ROOM_IDS: usize = 65_536;

/// Messages `age_out` deletes per call (once a second) at most: a store that was stopped for
/// longer than it keeps history is pruned over the seconds after its start, not in one stall.
const AGE_OUT_ROWS: i64 = 10_000;

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
    /// Open (or create) the store at `path`, moving a store of the first layout to this one.
    /// `durable`: every commit reaches the disk before it returns (survives power loss);
    /// otherwise commits survive a crash of the process, and the last ones may be lost with the
    /// machine's power.
    pub fn open(path: &Path, retention: Retention, durable: bool) -> Result<Store> {
        // Conversations: readable by the server's user alone.
        crate::private::database(path)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
        nap_while_busy(&conn)?;
        // Thousands of busy rooms touch pages all over the index: 2 MiB of page cache (the
        // default) made every commit read pages back from the OS and spill dirty ones
        // mid-transaction.
        conn.pragma_update(None, "cache_size", -32768)?;
        // A checkpoint ends in an fsync of the database, inside whichever commit set it off:
        // at the default (every 1,000 pages) a busy hub stalled on the disk many times a
        // second (node-pairs, 2,000 clients on a virtual disk: p99 1.9 s), and every 16,384
        // pages still for 70-150 ms (p99 over 100 ms at 1,000 clients). The hub's commits never
        // checkpoint: a thread of the store's own does, on a connection of its own, once a
        // second (the writer appends to the log meanwhile; WAL lets both run); see Checkpointer.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )?;
        lay_out(&mut conn)?;
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
        let checkpointer = Checkpointer::start(path)?;
        Ok(Store {
            conn,
            epoch,
            retention,
            ids: HashMap::new(),
            _checkpointer: checkpointer,
        })
    }

    /// Identifies this store: a client whose `epoch` differs saw another store's sequence
    /// numbers (the data directory was reset).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// A room's last sequence number (0 for a room never written to).
    pub fn last_seq(&self, room: &str) -> Result<u64> {
        Ok(room_row(&self.conn, room)?.map_or(0, |(_, last)| last))
    }

    /// Start a transaction: appends within it are committed together.
    pub fn begin(&mut self) -> Result<Batch<'_>> {
        if self.ids.len() > ROOM_IDS {
            self.ids.clear();
        }
        Ok(Batch {
            tx: self.conn.transaction()?,
            retention: self.retention,
            touched: HashMap::new(),
            ids: NewIds {
                ids: &mut self.ids,
                created: Vec::new(),
                kept: false,
            },
        })
    }

    /// Prune history by age: the oldest messages, whatever their room, while older than the
    /// retention allows (at most `AGE_OUT_ROWS` a call), so `--history-hours` holds in quiet
    /// rooms too. A room whose newest message goes keeps its seq in its row.
    pub fn age_out(&mut self, now_ms: i64) -> Result<()> {
        let max_age_ms = i64::try_from(self.retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(max_age_ms);
        let tx = self.conn.transaction()?;
        // Rows are in arrival order, and so (clock jumps aside) in time order: the first row
        // young enough is where pruning stops. Finding it reads only the rows about to go.
        let until: Option<i64> = tx
            .prepare_cached(
                "SELECT MIN(
                     COALESCE(
                         (SELECT id FROM messages WHERE ts >= ?1 ORDER BY id LIMIT 1),
                         (SELECT MAX(id) + 1 FROM messages)),
                     (SELECT MIN(id) FROM messages) + ?2)",
            )?
            .query_row(params![cutoff, AGE_OUT_ROWS], |r| r.get(0))?;
        if let Some(until) = until {
            tx.prepare_cached(
                "UPDATE rooms SET last_seq = gone.seq
                 FROM (SELECT room, MAX(seq) AS seq FROM messages WHERE id < ?1 GROUP BY room)
                     AS gone
                 WHERE rooms.id = gone.room AND rooms.last_seq < gone.seq",
            )?
            .execute([until])?;
            tx.prepare_cached("DELETE FROM messages WHERE id < ?1")?
                .execute([until])?;
        }
        tx.commit()
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
        match room_row(&self.conn, room)? {
            Some((id, _)) => page_before(&self.conn, room, id, before, limit, max_bytes),
            None => Ok((Vec::new(), false)),
        }
    }
}

/// Bring the store to `LAYOUT`: a new store gets the tables, one of the first layout is moved
/// (in one transaction: a crash midway leaves it as it was). A store of a later layout, written
/// by a newer server, is refused rather than misread.
fn lay_out(conn: &mut Connection) -> Result<()> {
    let layout: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if layout == LAYOUT {
        return Ok(());
    }
    if layout > LAYOUT {
        return Err(rusqlite::Error::ToSqlConversionFailure(Box::new(
            std::io::Error::other(format!(
                "the store's layout is {layout}, newer than this server's ({LAYOUT}): written by a newer version"
            )),
        )));
    }
    let tx = conn.transaction()?;
    let first_layout: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages')",
        [],
        |r| r.get(0),
    )?;
    if first_layout {
        tracing::info!("store: moving history to the arrival-order layout (once)");
        tx.execute_batch(
            "ALTER TABLE rooms RENAME TO rooms_v1; ALTER TABLE messages RENAME TO messages_v1;",
        )?;
    }
    tx.execute_batch(SCHEMA)?;
    if first_layout {
        // Every room with history had its row (its last_seq moved in the messages'
        // transaction); a room's last seq is at least its newest message's all the same.
        tx.execute_batch(
            "INSERT INTO rooms (room, last_seq)
                 SELECT room, MAX(last_seq, COALESCE(
                     (SELECT MAX(seq) FROM messages_v1 m WHERE m.room = r.room), 0))
                 FROM rooms_v1 r ORDER BY room;
             INSERT INTO rooms (room, last_seq)
                 SELECT room, MAX(seq) FROM messages_v1
                 WHERE room NOT IN (SELECT room FROM rooms) GROUP BY room;
             INSERT INTO messages (room, seq, sender, text, ts, cid)
                 SELECT r.id, m.seq, m.sender, m.text, m.ts, m.cid
                 FROM messages_v1 m JOIN rooms r ON r.room = m.room
                 ORDER BY m.ts, r.id, m.seq;
             DROP TABLE messages_v1;
             DROP TABLE rooms_v1;",
        )?;
    }
    tx.pragma_update(None, "user_version", LAYOUT)?;
    tx.commit()
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
        match self.room_id(room)? {
            Some(id) => page_before(&self.tx, room, id, before, limit, max_bytes),
            None => Ok((Vec::new(), false)),
        }
    }
    fn open_room(&mut self, room: &str) -> Result<u64> {
        // Read inside the transaction: what this batch wrote counts.
        match room_row(&self.tx, room)? {
            Some((id, last)) => {
                self.ids.ids.insert(room.to_owned(), id);
                Ok(last)
            }
            None => Ok(0),
        }
    }
    fn drop_room(&mut self, room: &str) -> Result<()> {
        let Some(id) = self.room_id(room)? else {
            return Ok(());
        };
        self.touched.remove(&id);
        self.ids.ids.remove(room);
        self.tx
            .prepare_cached("DELETE FROM messages WHERE room = ?1")?
            .execute([id])?;
        self.tx
            .prepare_cached("DELETE FROM rooms WHERE id = ?1")?
            .execute([id])?;
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
    tx: Transaction<'a>,
    retention: Retention,
    /// Rooms written to in this batch (by id), with their last seq now.
    touched: HashMap<i64, u64>,
    ids: NewIds<'a>,
}

/// The store's room ids, and those this transaction made: if it does not commit, they were
/// never made, and are forgotten (the next room made may get the same id).
struct NewIds<'a> {
    ids: &'a mut HashMap<String, i64>,
    created: Vec<String>,
    kept: bool,
}

impl Drop for NewIds<'_> {
    fn drop(&mut self) {
        if !self.kept {
            for room in self.created.drain(..) {
                self.ids.remove(&room);
            }
        }
    }
}

impl Batch<'_> {
    /// Store `msg` (its seq already the room's next: the room's last seq from now on).
    pub fn append(&mut self, msg: &Msg) -> Result<()> {
        let id = match self.room_id(&msg.room)? {
            Some(id) => id,
            None => {
                self.tx
                    .prepare_cached("INSERT INTO rooms (room, last_seq) VALUES (?1, 0)")?
                    .execute([&msg.room])?;
                let id = self.tx.last_insert_rowid();
                self.ids.ids.insert(msg.room.clone(), id);
                self.ids.created.push(msg.room.clone());
                id
            }
        };
        let cid = msg.cid.as_ref().map(Value::to_string);
        self.tx
            .prepare_cached(
                "INSERT INTO messages (room, seq, sender, text, ts, cid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![id, msg.seq, msg.from, msg.text, msg.ts, cid])?;
        let last = self.touched.entry(id).or_insert(msg.seq);
        *last = (*last).max(msg.seq);
        Ok(())
    }

    /// The room's id in the store, if it has one.
    fn room_id(&mut self, room: &str) -> Result<Option<i64>> {
        if let Some(id) = self.ids.ids.get(room) {
            return Ok(Some(*id));
        }
        let id = room_row(&self.tx, room)?.map(|(id, _)| id);
        if let Some(id) = id {
            self.ids.ids.insert(room.to_owned(), id);
        }
        Ok(id)
    }

    /// What `join{room, since}` replays, `last` being the room's last seq: all of
    /// `since+1..=last`; `Gone` when part of it was pruned; `TooMuch` past `max_bytes` of text
    /// (read no further than that).
    pub fn recover(
        &mut self,
        room: &str,
        since: u64,
        last: u64,
        max_bytes: usize,
    ) -> Result<Recovery> {
        if since >= last {
            return Ok(Recovery::Complete(Vec::new()));
        }
        let Some(id) = self.room_id(room)? else {
            return Ok(Recovery::Gone { first_kept: None });
        };
        let first_kept = first_kept(&self.tx, id)?;
        match first_kept {
            Some(first) if first <= since + 1 => {
                let mut stmt = self.tx.prepare_cached(
                    "SELECT seq, sender, text, ts, cid FROM messages
                     WHERE room = ?1 AND seq > ?2 ORDER BY seq",
                )?;
                let mut rows = stmt.query_map(params![id, since], |r| row_to_msg(room, r))?;
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
    pub fn first_kept(&mut self, room: &str) -> Result<Option<u64>> {
        match self.room_id(room)? {
            Some(id) => first_kept(&self.tx, id),
            None => Ok(None),
        }
    }

    /// Prune the rooms written to by count (never their newest message, which holds their
    /// last seq), then commit. The prune walks the index from the room's oldest message, so
    /// it costs a seek when nothing is due. (Pruning by age is `Store::age_out`'s, once a
    /// second.)
    pub fn commit(mut self) -> Result<()> {
        for (id, last) in &self.touched {
            let keep_from = last.saturating_sub(self.retention.max_messages);
            if keep_from > 0 {
                self.tx
                    .prepare_cached("DELETE FROM messages WHERE room = ?1 AND seq <= ?2")?
                    .execute(params![id, keep_from])?;
            }
        }
        self.tx.commit()?;
        self.ids.kept = true;
        Ok(())
    }
}

/// A room's id and last seq (its newest message's, or its row's if that is later), if it has
/// a row.
fn room_row(conn: &Connection, room: &str) -> Result<Option<(i64, u64)>> {
    conn.prepare_cached(
        "SELECT id, MAX(last_seq, COALESCE(
             (SELECT MAX(seq) FROM messages WHERE messages.room = rooms.id), 0))
         FROM rooms WHERE room = ?1",
    )?
    .query_row([room], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
}

fn first_kept(conn: &Connection, room: i64) -> Result<Option<u64>> {
    conn.prepare_cached("SELECT MIN(seq) FROM messages WHERE room = ?1")?
        .query_row([room], |r| r.get(0))
}

fn page_before(
    conn: &Connection,
    room: &str,
    id: i64,
    before: Option<u64>,
    limit: usize,
    max_bytes: usize,
) -> Result<(Vec<Msg>, bool)> {
    let before = before.unwrap_or(i64::MAX as u64).min(i64::MAX as u64);
    let mut stmt = conn.prepare_cached(
        "SELECT seq, sender, text, ts, cid FROM messages
         WHERE room = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![id, before, limit as u64 + 1], |r| {
        row_to_msg(room, r)
    })?;
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

fn row_to_msg(room: &str, r: &rusqlite::Row<'_>) -> Result<Msg> {
    let cid: Option<String> = r.get(4)?;
    Ok(Msg {
        room: room.to_owned(),
        seq: r.get(0)?,
        from: r.get(1)?,
        text: r.get(2)?,
        ts: r.get(3)?,
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
            // A room written to in this batch, opened again in it (its members left and one
            // came back): its seq is what the batch wrote.
            assert_eq!(b.open_room("a").unwrap(), 5);
            b.commit().unwrap();
        }
        let mut store = Store::open(&path, retention(3), false).unwrap();
        assert_eq!(store.epoch(), epoch);
        assert_eq!(store.last_seq("a").unwrap(), 5);
        assert_eq!(store.last_seq("never").unwrap(), 0);
        let (page, more) = store.page_before("a", None, 10, 1 << 20).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(!more);
        assert_eq!(page[0].cid, Some(serde_json::json!({"n": 3})));
        let mut b = store.begin().unwrap();
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
    fn the_write_ahead_log_is_checkpointed_off_the_writers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut store = Store::open(&path, retention(1 << 20), false).unwrap();
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let before = size(&path);
        let mut b = store.begin().unwrap();
        for seq in 1..=2_000 {
            b.append(&msg("r", seq, 0)).unwrap();
        }
        b.commit().unwrap();
        // The commit never checkpoints (the log holds it all); the store's own thread moves
        // it into the database within about a second.
        let start = std::time::Instant::now();
        while size(&path) <= before {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nothing checkpointed: database {} bytes, log {} bytes",
                size(&path),
                size(&dir.path().join("c.db-wal"))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(store);
        let store = Store::open(&path, retention(1 << 20), false).unwrap();
        assert_eq!(store.last_seq("r").unwrap(), 2_000);
    }

    #[test]
    fn a_writer_that_commits_all_the_time_still_finds_the_log_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("c.db-wal");
        let mut store = Store::open(&dir.path().join("c.db"), retention(1 << 20), false).unwrap();
        // Commits for 4 s, a millisecond apart as a busy hub's batches are. A passive
        // checkpoint alone never sees the whole log copied, and the log file would grow with
        // everything written (4 s of it at the end against 1.5 s at 1.5 s); started again
        // each second, it holds about a second's worth throughout.
        let start = std::time::Instant::now();
        let (mut seq, mut at_1_5, mut largest) = (0, None, 0);
        while start.elapsed() < Duration::from_secs(4) {
            let mut b = store.begin().unwrap();
            for _ in 0..20 {
                seq += 1;
                b.append(&msg("r", seq, 0)).unwrap();
            }
            b.commit().unwrap();
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            if at_1_5.is_none() && start.elapsed() >= Duration::from_millis(1_500) {
                at_1_5 = Some(largest);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let at_1_5 = at_1_5.unwrap();
        assert!(
            largest < 2 * at_1_5,
            "the log grew from {at_1_5} bytes at 1.5 s to {largest} at 4 s: never started again"
        );
        assert_eq!(store.last_seq("r").unwrap(), seq);
    }

    #[test]
    fn pages_go_backwards_and_old_messages_age_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("c.db"), retention(100), false).unwrap();
        let mut b = store.begin().unwrap();
        for seq in 1..=10 {
            b.append(&msg("r", seq, 0)).unwrap();
        }
        b.commit().unwrap();
        let (page, more) = store.page_before("r", Some(8), 3, 1 << 20).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 6, 7]);
        assert!(more);
        // A byte budget cuts a page short (but never below one message).
        let (page, more) = store.page_before("r", Some(8), 3, 4).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [6, 7]);
        assert!(more);
        let (page, _) = store.page_before("r", None, 3, 0).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [10]);
        // An hour and more later, the old ones age out, and the new one stays.
        let mut b = store.begin().unwrap();
        b.append(&msg("r", 11, 4_000_000)).unwrap();
        b.commit().unwrap();
        store.age_out(4_000_000).unwrap();
        let (page, _) = store.page_before("r", None, 50, 1 << 20).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [11]);
        assert_eq!(store.last_seq("r").unwrap(), 11);
    }

    #[test]
    fn aging_out_goes_oldest_first_in_bounded_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("c.db"), retention(1 << 20), false).unwrap();
        let old = AGE_OUT_ROWS as u64 + 5;
        let mut b = store.begin().unwrap();
        for seq in 1..=old {
            b.append(&msg(if seq % 2 == 0 { "a" } else { "b" }, seq, 0))
                .unwrap();
        }
        b.append(&msg("a", old + 1, 4_000_000)).unwrap();
        b.commit().unwrap();
        let kept = |store: &Store| {
            let (a, _) = store.page_before("a", None, 200, 1 << 30).unwrap();
            let (b, _) = store.page_before("b", None, 200, 1 << 30).unwrap();
            a.len() + b.len()
        };
        // One call deletes at most AGE_OUT_ROWS, the oldest; the next one the rest.
        store.age_out(4_000_000).unwrap();
        assert_eq!(kept(&store), 6);
        store.age_out(4_000_000).unwrap();
        assert_eq!(kept(&store), 1);
        store.age_out(4_000_000).unwrap();
        assert_eq!(kept(&store), 1, "the young one stays");
        assert_eq!(store.last_seq("b").unwrap(), old);
    }

    #[test]
    fn a_transaction_that_does_not_commit_forgets_the_room_ids_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("c.db"), retention(100), false).unwrap();
        {
            let mut b = store.begin().unwrap();
            b.append(&msg("x", 1, 0)).unwrap();
            // Dropped: rolled back, "x" never had an id.
        }
        let mut b = store.begin().unwrap();
        b.append(&msg("y", 1, 0)).unwrap();
        b.commit().unwrap();
        let mut b = store.begin().unwrap();
        b.append(&msg("x", 1, 0)).unwrap();
        b.append(&msg("x", 2, 0)).unwrap();
        b.commit().unwrap();
        let seqs = |room| {
            let (page, _) = store.page_before(room, None, 10, 1 << 20).unwrap();
            page.iter().map(|m| m.seq).collect::<Vec<_>>()
        };
        assert_eq!(seqs("y"), [1]);
        assert_eq!(seqs("x"), [1, 2]);
        assert_eq!(store.last_seq("x").unwrap(), 2);
        assert_eq!(store.last_seq("y").unwrap(), 1);
    }

    /// A data directory written before layouts were numbered: rooms by name, messages in
    /// (room, seq) order, `user_version` 0.
    fn first_layout(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            r#"PRAGMA journal_mode = WAL;
             CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE rooms (room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
             CREATE TABLE messages (
                 room TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
                 text TEXT NOT NULL, ts INTEGER NOT NULL, cid TEXT,
                 PRIMARY KEY (room, seq)) WITHOUT ROWID;
             INSERT INTO meta VALUES ('epoch', '00000000feedf00d');
             -- 'lobby': 1 and 2 pruned by count; 'quiet': everything aged out, seq 7 kept.
             INSERT INTO rooms VALUES ('lobby', 5), ('quiet', 7), ('r', 2);
             INSERT INTO messages VALUES
                 ('lobby', 3, 'ann', 'three', 30, '"c3"'),
                 ('lobby', 4, 'bob', 'fo"ur', 40, NULL),
                 ('r', 1, 'ann', 'r one', 35, '7'),
                 ('r', 2, 'bob', 'r two', 45, NULL),
                 ('lobby', 5, 'ann', 'five', 50, NULL);"#,
        )
        .unwrap();
    }

    #[test]
    fn a_store_of_the_first_layout_keeps_its_history_seqs_and_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        first_layout(&path);
        for _ in 0..2 {
            // Opened twice: moved once, then found as it is.
            let store = Store::open(&path, retention(100), false).unwrap();
            assert_eq!(store.epoch(), "00000000feedf00d");
            assert_eq!(store.last_seq("lobby").unwrap(), 5);
            assert_eq!(store.last_seq("quiet").unwrap(), 7);
            assert_eq!(store.last_seq("r").unwrap(), 2);
            let (page, more) = store.page_before("lobby", None, 10, 1 << 20).unwrap();
            let got: Vec<_> = page
                .iter()
                .map(|m| (m.seq, m.from.as_str(), m.text.as_str(), m.ts, m.cid.clone()))
                .collect();
            assert_eq!(
                got,
                [
                    (3, "ann", "three", 30, Some(serde_json::json!("c3"))),
                    (4, "bob", "fo\"ur", 40, None),
                    (5, "ann", "five", 50, None),
                ]
            );
            assert!(!more);
            let (page, _) = store.page_before("r", None, 10, 1 << 20).unwrap();
            assert_eq!(page[0].cid, Some(serde_json::json!(7)));
            assert!(store
                .page_before("quiet", None, 10, 1 << 20)
                .unwrap()
                .0
                .is_empty());
        }
        let mut store = Store::open(&path, retention(100), false).unwrap();
        let layout: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(layout, LAYOUT);
        // Rows moved in time order: the oldest age out first.
        store.age_out(3_600_000 + 36).unwrap();
        let (page, _) = store.page_before("r", None, 10, 1 << 20).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [2]);
        let (page, _) = store.page_before("lobby", None, 10, 1 << 20).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5]);
        // Seqs go on from where they were.
        let mut b = store.begin().unwrap();
        assert_eq!(b.open_room("quiet").unwrap(), 7);
        b.append(&msg("quiet", 8, 4_000_000)).unwrap();
        b.commit().unwrap();
        assert_eq!(store.last_seq("quiet").unwrap(), 8);
    }

    #[test]
    fn a_store_of_a_later_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", LAYOUT + 1)
            .unwrap();
        let e = Store::open(&path, retention(100), false).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
    }

    #[test]
    fn quiet_rooms_age_out_and_ended_rooms_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("c.db"), retention(100), false).unwrap();
        let mut b = store.begin().unwrap();
        for room in ["quiet", "pair:x"] {
            b.append(&msg(room, 1, 0)).unwrap();
        }
        b.commit().unwrap();
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
        b.commit().unwrap();
        assert_eq!(store.last_seq("pair:x").unwrap(), 0);
    }
}
