//! The hub: one thread that owns every room, member, sequence number and the matchmaking
//! queue, and the store's writer. Connections send it [`Request`]s; it answers through their
//! [`CommandSender`]s.
//!
//! It works in batches: it takes every request waiting (up to a bound), carries them out in
//! order inside one store transaction, commits, and only then hands the batch's frames to the
//! connections, in order. So a message reaches no one before it is durable, one commit carries
//! many messages, and every member of a room sees the room's messages in one order.
//!
//! A connection whose command channel is full when the hub hands it a frame has fallen behind
//! by its whole outbox (`--outbox-bytes`) plus its channel: it is closed with 4008 ("slow
//! consumer"), counted and logged, and nothing else waits for it.

mod delivery;
mod history;
mod messages;
mod pairs;
mod rooms;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde_json::{json, Value};
use syncws::{Command, CommandSender, SharedFrame};

use crate::cluster::{Change, Cluster, Heard, Unpublished};
use crate::eventlog::{EventLog, Held};
use crate::matchmaking::{Matched, Peer, Seeker, Sought};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::protocol::{
    self, check_room, Msg, Op, Refusal, DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE, MAX_LISTED,
    PAIR_PREFIX,
};
use crate::store::{self, Log, Recovery, Store};

pub use crate::protocol::LOBBY;
/// Close code for a connection that fell behind by a whole outbox.
pub const SLOW_CONSUMER: u16 = 4008;
/// Requests carried out per transaction, at most.
const BATCH: usize = 4096;
/// Bytes of answers built per transaction, at most: a batch ends early past it (its frames all
/// wait in memory until the commit), so expensive requests cannot pile up in one batch.
const BATCH_BYTES: usize = 8 << 20;
/// Messages replayed per `history` frame on a recovering join.
const REPLAY_PAGE: usize = 100;

/// What a connection asks of the hub.
#[derive(Debug)]
pub enum Request {
    Connect {
        id: u64,
        nick: String,
        tx: CommandSender,
        /// The connection's counters: its outbox's queued bytes, for the slow-consumer check.
        metrics: Arc<syncws::Metrics>,
        last_active: Arc<AtomicI64>,
    },
    Hello {
        id: u64,
        nick: String,
    },
    /// A client's op (not `hello` or `ping`, which its connection answers), with its `cid`.
    Op {
        id: u64,
        op: Op,
        cid: Option<Value>,
        /// When its connection read it: a message's delivery latency is measured from here.
        at: Instant,
    },
    /// A plain-text frame: said in the connection's current room.
    Plain {
        id: u64,
        text: String,
        at: Instant,
    },
    /// Cluster mode: what the node's subscriber heard from Redis.
    Heard(Heard),
    /// The connection ended.
    Disconnect {
        id: u64,
    },
    /// Close every connection with 1001; answered once they are all gone and the last commit
    /// is done.
    Shutdown(Sender<()>),
}

/// The hub's settings.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub idle_timeout: Option<Duration>,
    /// Bytes that may wait for one connection (its outbox, its command channel and what the
    /// hub holds for it) before it is closed as a slow consumer.
    pub outbox_bytes: usize,
    /// Rooms one connection may be in at once (matchmaking's pair room included).
    pub max_rooms: usize,
    /// Largest answer frame built for one request, in bytes (a quarter of a connection's
    /// outbox): a history page or a replay frame stops there (at least one message each).
    pub reply_bytes: usize,
    /// Largest replay of a recovering join, in text bytes (half an outbox): a member that
    /// missed more is told `recovered: false` and pages history itself, as it would after a
    /// longer absence, instead of being closed as a slow consumer by its own replay.
    pub replay_bytes: usize,
}

impl HubOptions {
    /// The hub's part of the server's flags.
    pub fn from_options(options: &crate::Options) -> HubOptions {
        HubOptions {
            idle_timeout: crate::Options::opt_secs(options.idle_timeout),
            outbox_bytes: options.outbox_bytes,
            max_rooms: options.max_rooms.max(1),
            reply_bytes: (options.outbox_bytes / 4).max(4096),
            replay_bytes: (options.outbox_bytes / 2).max(8192),
        }
    }
}

struct Member {
    nick: String,
    tx: CommandSender,
    metrics: Arc<syncws::Metrics>,
    /// Frames its command channel had no room for yet, oldest first, and their bytes.
    backlog: VecDeque<(SharedFrame, bool)>,
    backlog_bytes: usize,
    /// In `State::backlogged`.
    listed: bool,
    /// The partner of its last pair, not to be matched with it again at once (cluster mode:
    /// `last_peer_key`, its `NODE:ID`).
    last_peer: Option<u64>,
    last_peer_key: Option<String>,
    /// Rooms in the order joined.
    rooms: Vec<String>,
    /// Where its plain text goes: the room it last joined, or the pair it asked for. Only its
    /// own acts move it; a room it left, or a pair that ended, is not replaced by another
    /// (plain text meant for one person must never reach others).
    current: Option<String>,
    pair: Option<String>,
    /// Its last pair room that ended: a message to it is refused with `peer_left` (the room
    /// itself is gone from the hub).
    ended_pair: Option<String>,
    queued: bool,
    /// It asked for a stranger (`match`, `next`): the pair found becomes its current room. A
    /// member put back in the queue because its partner left did not.
    asked: bool,
    /// The `cid` of that request, for its first answer (`queued` or `matched`).
    seek_cid: Option<Value>,
    /// Closed by the hub (slow consumer, idle, shutdown): nothing more is sent to it.
    closing: bool,
    last_active: Arc<AtomicI64>,
}

#[derive(Default)]
struct Room {
    /// Cluster mode: this node's subscription to the room is not confirmed yet; what is
    /// handed out for the room waits here (in order) until it is, so a member that was told
    /// `joined` misses nothing published on other nodes.
    held: Option<Vec<(u64, Out)>>,
    last_seq: u64,
    /// In the order they joined.
    members: Vec<u64>,
}

enum Out {
    /// A chat message (counted as a delivery; dropped if the commit fails).
    Msg(SharedFrame),
    /// An answer read from the batch's transaction (`joined`, a replay, a history page): it
    /// may show what the batch wrote, so it is dropped if the commit fails (and the request
    /// answered again, see `Reread`).
    Read(SharedFrame),
    Frame(SharedFrame),
}

/// A request whose answer read the batch's transaction: if the commit fails, its `Read`
/// frames are dropped and it is answered again from what is committed.
enum Reread {
    Join {
        id: u64,
        room: String,
        since: Option<u64>,
        cid: Option<Value>,
    },
    History {
        id: u64,
        room: String,
        cid: Option<Value>,
    },
}

/// Rooms, members and the queue: everything but the store, which the batch borrows.
struct State {
    /// Cluster mode: this batch's changes for the other nodes (see `cluster`); None on one
    /// node.
    changes: Option<Vec<Change>>,
    /// Rooms with members here (and, on one node, the lobby always): a room nobody is in
    /// leaves memory, and is loaded again when someone joins.
    rooms: HashMap<String, Room>,
    members: HashMap<u64, Member>,
    queue: VecDeque<u64>,
    pairs_made: u64,
    /// Makes pair room names unique across nodes (cluster mode: `-NODE`).
    pair_tag: String,
    /// Cluster mode: rooms whose last member here left in this batch, to stop following.
    unfollow: Vec<String>,
    epoch: String,
    metrics: Arc<Metrics>,
    /// The event log, sent to its writer once per batch.
    log: Held,
    options: HubOptions,
    /// Frames to hand out after the commit, in order, and the bytes built for them.
    out: Vec<(u64, Out)>,
    out_bytes: usize,
    /// Senders of this batch's messages, with the room, told if the commit fails, and when
    /// each was read.
    said: Vec<(u64, String, Option<Value>, Instant)>,
    /// Cluster mode: per room, messages of this node's members that Redis stored and that
    /// have not come back through the subscription yet: (seq, sender, cid). The sender's copy
    /// alone carries the cid.
    own_acks: HashMap<String, Vec<(u64, u64, Value)>>,
    /// Rooms this batch wrote to, with their last seq before it (restored if the commit
    /// fails: the seqs it handed out were never shown to anyone).
    seqs_before: HashMap<String, u64>,
    /// Requests answered from the batch's transaction.
    reads: Vec<Reread>,
    /// Members whose backlog is not empty (each once: `Member::listed`): `deliver` visits
    /// these, not every member (with thousands of connections, a scan of all of them per batch
    /// was most of the hub's time).
    backlogged: Vec<u64>,
}

/// Start the hub thread.
pub fn spawn(
    store: Store,
    cluster: Option<Cluster>,
    metrics: Arc<Metrics>,
    log: EventLog,
    options: HubOptions,
    rx: Receiver<Request>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("chat-hub".into())
        .spawn(move || run(store, cluster, metrics, log, options, &rx))
}

fn run(
    mut store: Store,
    mut cluster: Option<Cluster>,
    metrics: Arc<Metrics>,
    log: EventLog,
    options: HubOptions,
    rx: &Receiver<Request>,
) {
    // Rooms are loaded as members join. The lobby, which everyone joins, is loaded now (one
    // node; in cluster mode its seq is Redis's and comes with its first member).
    let mut rooms = HashMap::new();
    if cluster.is_none() {
        let last_seq = store.last_seq(LOBBY).unwrap_or_else(|e| {
            tracing::error!(error = %e, "store: cannot read the lobby's seq");
            0
        });
        rooms.insert(
            LOBBY.to_owned(),
            Room {
                last_seq,
                ..Room::default()
            },
        );
    }
    let mut state = State {
        changes: cluster.as_ref().map(|_| Vec::new()),
        rooms,
        members: HashMap::new(),
        queue: VecDeque::new(),
        pairs_made: 0,
        pair_tag: cluster
            .as_ref()
            .map_or_else(String::new, |c| format!("-{}", c.node())),
        unfollow: Vec::new(),
        epoch: cluster
            .as_ref()
            .map_or_else(|| store.epoch().to_owned(), Cluster::epoch),
        metrics,
        log: log.held(),
        options,
        out: Vec::new(),
        out_bytes: 0,
        said: Vec::new(),
        own_acks: HashMap::new(),
        seqs_before: HashMap::new(),
        reads: Vec::new(),
        backlogged: Vec::new(),
    };
    let mut shutdown: Option<Sender<()>> = None;
    let mut next_sweep = Instant::now() + Duration::from_secs(1);
    loop {
        if shutdown.is_some() && state.members.is_empty() {
            break;
        }
        // While a connection's channel is full, look again every millisecond; otherwise wait for
        // a request or the next idle sweep.
        let wait = if state.backlogged() {
            Duration::from_millis(1)
        } else {
            next_sweep.saturating_duration_since(Instant::now())
        };
        let first = match rx.recv_timeout(wait) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if Instant::now() >= next_sweep {
            state.sweep_idle();
            match cluster.as_mut() {
                // Its heartbeat (a thread of its own) tells the other nodes.
                Some(cluster) => {
                    cluster.lobby_here.store(
                        state.rooms.get(LOBBY).map_or(0, |r| r.members.len()),
                        Ordering::Relaxed,
                    );
                    cluster.probe();
                }
                // History ages out in quiet rooms too, a few rooms a second.
                None => {
                    if let Err(e) = store.age_out(now_ms()) {
                        tracing::warn!(error = %e, "store: aging history out");
                    }
                }
            }
            next_sweep = Instant::now() + Duration::from_secs(1);
        }
        let Some(first) = first else {
            state.deliver();
            continue;
        };
        if let Some(cluster) = cluster.as_mut() {
            // Cluster mode: Redis numbers, stores and publishes; the frames come back through
            // the subscription (Remote), to this node's members as to everyone's.
            let mut batch = cluster.begin();
            state.take_batch(&mut batch, first, rx, &mut shutdown);
            let results = batch.commit();
            if state.refuse_unpublished(&results) {
                // A seq Redis handed out was one this node had passed: Redis lost its data.
                let epoch = cluster.reset_epoch();
                state.reset(epoch);
            }
            state.unfollow_unused();
            if let Some(changes) = state.changes.as_mut().filter(|c| !c.is_empty()) {
                cluster.share(std::mem::take(changes));
            }
            state.deliver();
            continue;
        }
        match store.begin() {
            Ok(mut batch) => {
                state.take_batch(&mut batch, first, rx, &mut shutdown);
                match batch.commit() {
                    Ok(()) => {
                        Metrics::inc(&state.metrics.commits_total);
                        state.committed();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store: commit failed; this batch's messages are refused");
                        Metrics::inc(&state.metrics.store_errors_total);
                        state.refuse_batch();
                    }
                }
            }
            Err(e) => {
                // No transaction at all: every request is still answered (a message is
                // refused, a join gets no replay), and connections come and go as usual.
                tracing::error!(error = %e, "store: cannot start a transaction; this batch is answered without it");
                Metrics::inc(&state.metrics.store_errors_total);
                let mut none = store::Unavailable;
                state.take_batch(&mut none, first, rx, &mut shutdown);
                state.committed();
            }
        }
        state.deliver();
    }
    state.log.flush();
    if let Some(done) = shutdown {
        let _ = done.send(());
    }
}

impl State {
    /// Carry out `first` and whatever else waits, in order, up to `BATCH` requests or
    /// `BATCH_BYTES` of answers; a shutdown closes everyone and is answered once they are
    /// gone.
    fn take_batch(
        &mut self,
        batch: &mut dyn Log,
        first: Request,
        rx: &Receiver<Request>,
        shutdown: &mut Option<Sender<()>>,
    ) {
        self.out_bytes = 0;
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(request) = next {
            if let Request::Shutdown(done) = request {
                self.close_all();
                *shutdown = Some(done);
            } else {
                self.handle(batch, request);
            }
            taken += 1;
            if taken >= BATCH || self.out_bytes >= BATCH_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        // Strangers put back in the queue by a partner's leaving are matched again now.
        self.make_pairs(batch);
    }

    fn handle(&mut self, batch: &mut dyn Log, request: Request) {
        match request {
            Request::Connect {
                id,
                nick,
                tx,
                metrics,
                last_active,
            } => {
                if self.members.contains_key(&id) {
                    // Ids are unique in the process; a second member under one id would get the
                    // first one's rooms and frames. Refuse it, loudly, and keep the first.
                    tracing::error!(id, "a connection id already in use: the new one is closed");
                    self.log.record("duplicate_id", json!({"id": id}));
                    let _ = tx.close(1011, "internal error: duplicate connection id");
                    return;
                }
                self.members.insert(
                    id,
                    Member {
                        nick,
                        tx,
                        metrics,
                        backlog: VecDeque::new(),
                        backlog_bytes: 0,
                        listed: false,
                        last_peer: None,
                        last_peer_key: None,
                        rooms: Vec::new(),
                        current: Some(LOBBY.to_owned()),
                        pair: None,
                        ended_pair: None,
                        queued: false,
                        asked: false,
                        seek_cid: None,
                        closing: false,
                        last_active,
                    },
                );
                self.join(batch, id, LOBBY, None, None, None);
            }
            Request::Hello { id, nick } => self.rename(id, nick),
            Request::Op { id, op, cid, at } => self.op(batch, id, op, cid, at),
            Request::Plain { id, text, at } => self.say_here(batch, id, text, at),
            Request::Disconnect { id } => self.disconnect(batch, id),
            Request::Heard(Heard::Message { room, seq, frame }) => {
                self.remote(batch, &room, seq, frame)
            }
            Request::Heard(Heard::Event { room, frame }) => {
                if let Some(r) = self.rooms.get(&room) {
                    let frame = SharedFrame::text(frame);
                    let out_start = self.out.len();
                    for m in r.members.clone() {
                        self.out.push((m, Out::Frame(frame.clone())));
                    }
                    self.hold_if_awaited(&room, out_start);
                }
            }
            Request::Heard(Heard::Subscribed { room }) => {
                // Subscribed: what waited goes out, then what was published meanwhile.
                if let Some(held) = self.rooms.get_mut(&room).and_then(|r| r.held.take()) {
                    self.out.extend(held);
                }
                if let Some(last) = self
                    .rooms
                    .get(&room)
                    .filter(|r| !r.members.is_empty())
                    .map(|r| r.last_seq)
                {
                    match batch.frames_after(&room, last) {
                        Ok(frames) => {
                            for (seq, frame) in frames {
                                self.published(&room, seq, frame);
                            }
                        }
                        // The next message tells the members what could not be read.
                        Err(e) => {
                            tracing::warn!(error = %e, room, "redis: cannot read the room's log")
                        }
                    }
                }
                // A pair whose other side ended before this node listened: `L<node>` was
                // missed, the mark in Redis was not.
                let waiting_pair = room.starts_with(PAIR_PREFIX)
                    && self.rooms.get(&room).is_some_and(|r| !r.members.is_empty());
                if waiting_pair && batch.pair_ended(&room) {
                    self.partner_left(batch, &room);
                }
            }
            Request::Heard(Heard::PeerLeft { room }) => self.partner_left(batch, &room),
            Request::Heard(Heard::Reaped) => self.register_again(batch),
            Request::Heard(Heard::Reset { epoch }) => self.reset(epoch),
            Request::Heard(Heard::Matched) => {
                let matched = batch.matchmaker().map(|q| q.matched()).unwrap_or_default();
                for m in matched {
                    self.matched_elsewhere(batch, m);
                }
            }
            Request::Shutdown(_) => unreachable!("handled by the loop"),
        }
    }

    /// A client's op; every answer and error carries its `cid`.
    fn op(&mut self, batch: &mut dyn Log, id: u64, op: Op, cid: Option<Value>, at: Instant) {
        if !self.members.contains_key(&id) {
            return;
        }
        match op {
            Op::Join { room, since, epoch } => {
                let refusal = if let Err(r) = check_room(&room) {
                    Some(r)
                } else if room.starts_with(PAIR_PREFIX) && !self.is_member(id, &room) {
                    Some(Refusal::new(
                        "private_room",
                        "pair rooms are made by matchmaking",
                    ))
                } else if !self.is_member(id, &room) && self.rooms_full(id) {
                    Some(self.too_many_rooms())
                } else {
                    None
                };
                if let Some(r) = refusal {
                    return self.refuse(id, r.with_room(&room).with_cid(cid));
                }
                if self.join(batch, id, &room, since, epoch.as_deref(), cid) {
                    if let Some(m) = self.members.get_mut(&id) {
                        m.current = Some(room);
                    }
                }
            }
            Op::Leave { room } => {
                if !self.is_member(id, &room) {
                    return self.refuse(id, not_member(&room).with_cid(cid));
                }
                if room.starts_with(PAIR_PREFIX) {
                    self.end_pair(batch, id, true, cid);
                } else {
                    self.leave(id, &room, cid);
                }
            }
            Op::Say { room, text } => self.say(batch, id, room, text, cid, at),
            Op::History {
                room,
                before,
                limit,
            } => self.history(batch, id, room, before, limit, cid),
            Op::Rooms {} => self.list_rooms(batch, id, cid),
            Op::Who { room } => {
                if room.starts_with(PAIR_PREFIX) && !self.is_member(id, &room) {
                    return self.refuse(id, not_member(&room).with_cid(cid));
                }
                let mut members = self.nicks(&room);
                members.extend(batch.remote_members(&room));
                let count = members.len();
                members.truncate(MAX_LISTED);
                self.reply(
                    id,
                    cid,
                    json!({"ev": "who", "room": room, "members": members, "count": count}),
                );
            }
            Op::Match {} => {
                if let Some(room) = self.members.get(&id).and_then(|m| m.pair.clone()) {
                    return self.refuse(
                        id,
                        Refusal::new(
                            "already_matched",
                            format!("you are matched in {room}; send next or unmatch"),
                        )
                        .with_cid(cid),
                    );
                }
                self.seek_stranger(batch, id, cid);
            }
            Op::Next {} => {
                self.end_pair(batch, id, true, None);
                self.seek_stranger(batch, id, cid);
            }
            Op::Unmatch {} => {
                self.end_pair(batch, id, true, None);
                self.unqueue(id);
                self.reply(id, cid, json!({"ev": "unmatched"}));
            }
            Op::Typing { room } => {
                if !self.is_member(id, &room) {
                    return self.refuse(id, not_member(&room).with_cid(cid));
                }
                if room == LOBBY {
                    // Everyone is in the lobby: a typing indicator there would go to every
                    // connection, many times a second per typist.
                    return self.refuse(
                        id,
                        Refusal::new("bad_request", "no typing indicator in the lobby")
                            .with_room(&room)
                            .with_cid(cid),
                    );
                }
                let nick = self.nick(id);
                let frame = frame(json!({"ev": "typing", "room": room, "nick": nick}));
                let others: Vec<u64> = self.rooms[&room]
                    .members
                    .iter()
                    .copied()
                    .filter(|m| *m != id)
                    .collect();
                for m in others {
                    self.out.push((m, Out::Frame(frame.clone())));
                }
            }
            // Answered by the connection itself.
            Op::Hello { .. } | Op::Ping {} => {}
        }
    }

    /// A new nick for member `id`, announced in its rooms (not the lobby: everyone is there).
    fn rename(&mut self, id: u64, nick: String) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut m.nick, nick.clone());
        if old == nick {
            return;
        }
        let in_rooms = m.rooms.clone();
        for room in &in_rooms {
            self.share(Change::Renamed {
                room: room.clone(),
                id,
                nick: nick.clone(),
                old: old.clone(),
            });
        }
        for room in in_rooms.into_iter().filter(|r| r != LOBBY) {
            let members = self
                .rooms
                .get(&room)
                .map(|r| r.members.clone())
                .unwrap_or_default();
            let renamed = frame(
                json!({"ev": "presence", "room": room, "state": "renamed", "nick": nick, "old": old}),
            );
            for m in members {
                self.out.push((m, Out::Frame(renamed.clone())));
            }
        }
    }

    /// Whether member `id` is in as many rooms as it may be.
    fn rooms_full(&self, id: u64) -> bool {
        self.members
            .get(&id)
            .is_some_and(|m| m.rooms.len() >= self.options.max_rooms)
    }

    fn too_many_rooms(&self) -> Refusal {
        Refusal::new(
            "too_many_rooms",
            format!(
                "at most {} rooms at once; leave one first",
                self.options.max_rooms
            ),
        )
    }

    fn is_member(&self, id: u64, room: &str) -> bool {
        self.members
            .get(&id)
            .is_some_and(|m| m.rooms.iter().any(|r| r == room))
    }

    fn nick(&self, id: u64) -> String {
        self.members
            .get(&id)
            .map(|m| m.nick.clone())
            .unwrap_or_default()
    }

    fn nicks(&self, room: &str) -> Vec<String> {
        self.rooms
            .get(room)
            .map(|r| r.members.iter().map(|m| self.nick(*m)).collect())
            .unwrap_or_default()
    }

    fn send(&mut self, id: u64, event: Value) {
        let frame = frame(event);
        self.out_bytes += frame.len();
        self.out.push((id, Out::Frame(frame)));
    }

    /// `send`, with the `cid` of the request it answers.
    fn reply(&mut self, id: u64, cid: Option<Value>, mut event: Value) {
        if let Some(cid) = cid {
            event["cid"] = cid;
        }
        self.send(id, event);
    }

    /// Cluster mode: note a change for the other nodes (shared after the batch).
    fn share(&mut self, change: Change) {
        if let Some(changes) = self.changes.as_mut() {
            changes.push(change);
        }
    }

    fn clustered(&self) -> bool {
        self.changes.is_some()
    }

    fn refuse(&mut self, id: u64, refusal: Refusal) {
        Metrics::inc(&self.metrics.protocol_errors_total);
        let frame = SharedFrame::text(refusal.to_json());
        self.out_bytes += frame.len();
        self.out.push((id, Out::Frame(frame)));
    }

    /// The store could not do what a request needed: said, with the request's `cid`.
    fn unavailable(&mut self, id: u64, what: &str, room: &str, cid: Option<Value>) {
        Metrics::inc(&self.metrics.store_errors_total);
        self.refuse(
            id,
            Refusal::new(
                "unavailable",
                format!("{what} is unavailable right now (the store failed); try again"),
            )
            .with_room(room)
            .with_cid(cid),
        );
    }
}

fn frame(event: Value) -> SharedFrame {
    SharedFrame::text(event.to_string())
}

fn not_member(room: &str) -> Refusal {
    Refusal::new("not_member", format!("join {room} first")).with_room(room)
}
