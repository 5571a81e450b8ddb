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

use crate::cluster::{Change, Cluster, Heard};
use crate::eventlog::EventLog;
use crate::matchmaking::{Matched, Peer, Seeker, Sought};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::protocol::{check_room, Msg, Refusal, MAX_HISTORY_PAGE, PAIR_PREFIX};
use crate::store::{Log, Recovery, Store};

pub use crate::protocol::LOBBY;
/// Close code for a connection that fell behind by a whole outbox.
pub const SLOW_CONSUMER: u16 = 4008;
/// Requests carried out per transaction, at most.
const BATCH: usize = 4096;
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
    Join {
        id: u64,
        room: String,
        since: Option<u64>,
        epoch: Option<String>,
    },
    Leave {
        id: u64,
        room: String,
    },
    /// `room: None`: the connection's current room (a plain-text frame).
    Say {
        id: u64,
        room: Option<String>,
        text: String,
        cid: Option<Value>,
        /// When its connection read it: delivery latency is measured from here.
        at: Instant,
    },
    History {
        id: u64,
        room: String,
        before: Option<u64>,
        limit: Option<usize>,
    },
    Rooms {
        id: u64,
    },
    Who {
        id: u64,
        room: String,
    },
    Match {
        id: u64,
    },
    Next {
        id: u64,
    },
    Unmatch {
        id: u64,
    },
    Typing {
        id: u64,
        room: String,
    },
    /// Cluster mode: what the node's subscriber heard from Redis.
    Heard(Heard),
    /// The connection ended (`code`: its close code, if any).
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
    /// Bytes that may wait for one connection (its outbox plus what the hub holds for it)
    /// before it is closed as a slow consumer.
    pub outbox_bytes: usize,
    /// Rooms one connection may be in at once (matchmaking's pair room included).
    pub max_rooms: usize,
    /// Largest replay frame, in bytes (a quarter of a connection's outbox).
    pub replay_bytes: usize,
}

impl HubOptions {
    /// The hub's part of the server's flags.
    pub fn from_options(options: &crate::Options) -> HubOptions {
        HubOptions {
            idle_timeout: crate::Options::opt_secs(options.idle_timeout),
            outbox_bytes: options.outbox_bytes,
            max_rooms: options.max_rooms.max(1),
            replay_bytes: (options.outbox_bytes / 4).max(4096),
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
    /// The partner of its last pair, not to be matched with it again at once (cluster mode:
    /// `last_peer_key`, its `NODE:ID`).
    last_peer: Option<u64>,
    last_peer_key: Option<String>,
    /// Rooms in the order joined; the last is the current room.
    rooms: Vec<String>,
    pair: Option<String>,
    /// Its last pair room that ended: a message to it is refused with `peer_left` (the room
    /// itself is gone from the hub).
    ended_pair: Option<String>,
    queued: bool,
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
    Frame(SharedFrame),
}

/// Rooms, members and the queue: everything but the store, which the batch borrows.
struct State {
    /// Cluster mode: this batch's changes for the other nodes (see `cluster`); None on one
    /// node.
    changes: Option<Vec<Change>>,
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
    log: EventLog,
    options: HubOptions,
    /// Frames to hand out after the commit, in order.
    out: Vec<(u64, Out)>,
    /// Senders of this batch's messages, told if the commit fails, and when each was read.
    said: Vec<(u64, Option<Value>, Instant)>,
    /// Members whose backlog is not empty: `deliver` visits these, not every member (with
    /// thousands of connections, a scan of all of them per batch was most of the hub's time).
    backlogged: std::collections::BTreeSet<u64>,
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
    // Cluster mode: rooms and their seqs are Redis's; this node learns them as members join.
    let local = if cluster.is_some() {
        Ok(HashMap::new())
    } else {
        store.last_seqs()
    };
    let rooms = match local {
        Ok(seqs) => seqs
            .into_iter()
            // A pair room cannot be joined again: its seq is never needed.
            .filter(|(name, _)| !name.starts_with(PAIR_PREFIX))
            .map(|(name, last_seq)| {
                (
                    name,
                    Room {
                        last_seq,
                        ..Room::default()
                    },
                )
            })
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "store: cannot read the rooms");
            HashMap::new()
        }
    };
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
            .map_or_else(|| store.epoch().to_owned(), |c| c.epoch().to_owned()),
        metrics,
        log,
        options,
        out: Vec::new(),
        said: Vec::new(),
        backlogged: std::collections::BTreeSet::new(),
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
            if let Some(cluster) = cluster.as_mut() {
                cluster.heartbeat(state.rooms.get(LOBBY).map_or(0, |r| r.members.len()));
            }
            next_sweep = Instant::now() + Duration::from_secs(1);
        }
        let Some(first) = first else {
            state.deliver();
            continue;
        };
        let requests: Vec<Request> = std::iter::once(first)
            .chain(rx.try_iter().take(BATCH - 1))
            .collect();
        if let Some(cluster) = cluster.as_mut() {
            // Cluster mode: Redis numbers, stores and publishes; the frames come back through
            // the subscription (Remote), to this node's members as to everyone's.
            let mut batch = cluster.begin();
            state.handle_all(&mut batch, requests, &mut shutdown);
            let results = batch.commit();
            state.refuse_unpublished(&results);
            state.unfollow_unused();
            if let Some(changes) = state.changes.as_mut().filter(|c| !c.is_empty()) {
                cluster.share(std::mem::take(changes));
            }
            state.deliver();
            continue;
        }
        let committed = match store.begin() {
            Ok(mut batch) => {
                state.handle_all(&mut batch, requests, &mut shutdown);
                batch.commit(now_ms())
            }
            Err(e) => {
                for request in requests {
                    if let Request::Shutdown(done) = request {
                        state.close_all();
                        shutdown = Some(done);
                    } else if let Request::Disconnect { id } = request {
                        state.disconnect_without_store(id);
                    }
                }
                Err(e)
            }
        };
        match committed {
            Ok(()) => Metrics::inc(&state.metrics.commits_total),
            Err(e) => {
                tracing::error!(error = %e, "store: commit failed; this batch's messages are refused");
                Metrics::inc(&state.metrics.store_errors_total);
                state.refuse_batch(&store);
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
    /// Carry out a batch's requests in order; a shutdown closes everyone and is answered
    /// once they are gone.
    fn handle_all(
        &mut self,
        batch: &mut dyn Log,
        requests: Vec<Request>,
        shutdown: &mut Option<Sender<()>>,
    ) {
        for request in requests {
            if let Request::Shutdown(done) = request {
                self.close_all();
                *shutdown = Some(done);
                continue;
            }
            self.handle(batch, request);
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
                        last_peer: None,
                        last_peer_key: None,
                        rooms: Vec::new(),
                        pair: None,
                        ended_pair: None,
                        queued: false,
                        closing: false,
                        last_active,
                    },
                );
                self.join(batch, id, LOBBY, None, None);
            }
            Request::Hello { id, nick } => {
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
                // Members of its rooms see the new name (not the lobby: everyone is there).
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
            Request::Join {
                id,
                room,
                since,
                epoch,
            } => {
                if let Err(r) = check_room(&room) {
                    return self.refuse(id, r.with_room(&room));
                }
                if room.starts_with(PAIR_PREFIX) && !self.is_member(id, &room) {
                    return self.refuse(
                        id,
                        Refusal::new("private_room", "pair rooms are made by matchmaking")
                            .with_room(&room),
                    );
                }
                let in_rooms = self.members.get(&id).map_or(0, |m| m.rooms.len());
                if in_rooms >= self.options.max_rooms && !self.is_member(id, &room) {
                    return self.refuse(
                        id,
                        Refusal::new(
                            "too_many_rooms",
                            format!(
                                "at most {} rooms at once; leave one first",
                                self.options.max_rooms
                            ),
                        )
                        .with_room(&room),
                    );
                }
                self.join(batch, id, &room, since, epoch.as_deref());
            }
            Request::Leave { id, room } => {
                if !self.is_member(id, &room) {
                    return self.refuse(id, not_member(&room));
                }
                if room.starts_with(PAIR_PREFIX) {
                    self.end_pair(id, true);
                } else {
                    self.leave(id, &room);
                }
            }
            Request::Say {
                id,
                room,
                text,
                cid,
                at,
            } => self.say(batch, id, room, text, cid, at),
            Request::History {
                id,
                room,
                before,
                limit,
            } => {
                if room.starts_with(PAIR_PREFIX) && !self.is_member(id, &room) {
                    return self.refuse(id, not_member(&room));
                }
                let limit = limit.unwrap_or(50).clamp(1, MAX_HISTORY_PAGE);
                match batch.page_before(&room, before, limit) {
                    Ok((msgs, more)) => {
                        let msgs: Vec<Value> = msgs.iter().map(Msg::to_value).collect();
                        self.send(
                            id,
                            json!({"ev": "history", "room": room, "msgs": msgs, "more": more}),
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store: history");
                        Metrics::inc(&self.metrics.store_errors_total);
                        self.refuse(id, Refusal::new("store_failed", "history is unavailable"));
                    }
                }
            }
            Request::Rooms { id } => {
                let mut rooms: Vec<(&String, &Room)> = self
                    .rooms
                    .iter()
                    .filter(|(name, _)| !name.starts_with(PAIR_PREFIX))
                    .collect();
                rooms.sort_by(|a, b| b.1.members.len().cmp(&a.1.members.len()).then(a.0.cmp(b.0)));
                let list: Vec<Value> = rooms
                    .iter()
                    .take(1000)
                    .map(|(name, r)| json!({"room": name, "members": r.members.len(), "seq": r.last_seq}))
                    .collect();
                self.send(id, json!({"ev": "rooms", "rooms": list}));
            }
            Request::Who { id, room } => {
                if room.starts_with(PAIR_PREFIX) && !self.is_member(id, &room) {
                    return self.refuse(id, not_member(&room));
                }
                let mut members = self.nicks(&room);
                members.extend(batch.remote_members(&room));
                self.send(id, json!({"ev": "who", "room": room, "members": members}));
            }
            Request::Match { id } => {
                let Some(m) = self.members.get(&id) else {
                    return;
                };
                if let Some(room) = &m.pair {
                    let room = room.clone();
                    return self.refuse(
                        id,
                        Refusal::new(
                            "already_matched",
                            format!("you are matched in {room}; send next or unmatch"),
                        ),
                    );
                }
                self.seek_stranger(batch, id);
            }
            Request::Next { id } => {
                self.end_pair(id, true);
                self.seek_stranger(batch, id);
            }
            Request::Unmatch { id } => {
                self.end_pair(id, true);
                self.unqueue(id);
                self.send(id, json!({"ev": "unmatched"}));
            }
            Request::Typing { id, room } => {
                if !self.is_member(id, &room) {
                    return self.refuse(id, not_member(&room));
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
            Request::Disconnect { id } => self.disconnect(id),
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
                let frames = match self.rooms.get(&room) {
                    Some(r) if !r.members.is_empty() => batch.frames_after(&room, r.last_seq),
                    _ => Vec::new(),
                };
                for (seq, frame) in frames {
                    self.remote(batch, &room, seq, frame);
                }
                // A pair whose other side ended before this node listened: `L<node>` was
                // missed, the mark in Redis was not.
                let waiting_pair = room.starts_with(PAIR_PREFIX)
                    && self.rooms.get(&room).is_some_and(|r| !r.members.is_empty());
                if waiting_pair && batch.pair_ended(&room) {
                    self.partner_left(&room);
                }
            }
            Request::Heard(Heard::PeerLeft { room }) => self.partner_left(&room),
            Request::Heard(Heard::Matched) => {
                let matched = batch.matchmaker().map(|q| q.matched()).unwrap_or_default();
                for m in matched {
                    self.matched_elsewhere(batch, m);
                }
            }
            Request::Shutdown(_) => unreachable!("handled by the loop"),
        }
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
        self.out.push((id, Out::Frame(frame(event))));
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

    /// `send`, in `room`'s order: held with the room's frames while its subscription is not
    /// confirmed (cluster mode), so it does not overtake the `joined` before it.
    fn send_in(&mut self, room: &str, id: u64, event: Value) {
        let out_start = self.out.len();
        self.send(id, event);
        self.hold_if_awaited(room, out_start);
    }

    fn refuse(&mut self, id: u64, refusal: Refusal) {
        Metrics::inc(&self.metrics.protocol_errors_total);
        self.out
            .push((id, Out::Frame(SharedFrame::text(refusal.to_json()))));
    }
}

fn frame(event: Value) -> SharedFrame {
    SharedFrame::text(event.to_string())
}

fn not_member(room: &str) -> Refusal {
    Refusal::new("not_member", format!("join {room} first"))
}
