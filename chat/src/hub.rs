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

    fn join(
        &mut self,
        batch: &mut dyn Log,
        id: u64,
        room: &str,
        since: Option<u64>,
        epoch: Option<&str>,
    ) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let rejoin = member.rooms.iter().any(|r| r == room);
        member.rooms.retain(|r| r != room);
        member.rooms.push(room.to_owned());
        let nick = member.nick.clone();
        let r = self.rooms.entry(room.to_owned()).or_default();
        let first_here = r.members.is_empty();
        if !rejoin {
            r.members.push(id);
        }
        // Cluster mode: a room with no members here until now starts at the cluster's last
        // seq, and the node follows it from there.
        if let Some(seq) = first_here.then(|| batch.open_room(room)).flatten() {
            r.last_seq = r.last_seq.max(seq);
            r.held = Some(Vec::new());
        }
        let out_start = self.out.len();
        let last = r.last_seq;
        if !rejoin {
            self.share(Change::Joined {
                room: room.to_owned(),
                id,
                nick: nick.clone(),
            });
        }
        Metrics::inc(&self.metrics.joins_total);
        // What to replay: everything after `since`, or nothing and `recovered: false`.
        let (recovered, replay, first_kept) = match since {
            None => (false, Vec::new(), None),
            // Another store's numbers (the data directory was reset): nothing here follows them.
            Some(since) if epoch.is_some_and(|e| e != self.epoch) || since > last => {
                (false, Vec::new(), batch.first_kept(room).ok().flatten())
            }
            Some(since) => match batch.recover(room, since, last) {
                Ok(Recovery::Complete(msgs)) => (true, msgs, None),
                Ok(Recovery::Gone { first_kept }) => (false, Vec::new(), first_kept),
                Err(e) => {
                    tracing::error!(error = %e, "store: recovery");
                    Metrics::inc(&self.metrics.store_errors_total);
                    (false, Vec::new(), None)
                }
            },
        };
        if since.is_some() {
            Metrics::inc(if recovered {
                &self.metrics.recoveries_total
            } else {
                &self.metrics.recoveries_failed_total
            });
        }
        // The lobby holds every connection: listing it in each `joined` would cost n^2 bytes
        // over a connect storm (500 MB for 10,000 arrivals). Its size is given instead, as its
        // arrivals are not announced either; `who{room: "lobby"}` still lists it on request.
        let (members, count) = if room == LOBBY {
            (
                Vec::new(),
                self.rooms.get(room).map_or(0, |r| r.members.len()) + batch.lobby_elsewhere(),
            )
        } else {
            let mut m = self.nicks(room);
            m.extend(batch.remote_members(room));
            let n = m.len();
            (m, n)
        };
        let mut joined = json!({
            "ev": "joined", "room": room, "seq": last, "epoch": self.epoch,
            "recovered": recovered, "members": members, "count": count,
        });
        if let Some(first) = first_kept {
            joined["first"] = json!(first);
        }
        self.send(id, joined);
        self.replay(id, room, &replay);
        self.hold_if_awaited(room, out_start);
        // No presence in the lobby: everyone is there, and announcing each arrival to every
        // member would cost n^2 frames when many connect at once (who{lobby} still answers).
        if !rejoin && room != LOBBY {
            let presence =
                frame(json!({"ev": "presence", "room": room, "state": "joined", "nick": nick}));
            let others: Vec<u64> = self.rooms[room]
                .members
                .iter()
                .copied()
                .filter(|m| *m != id)
                .collect();
            for m in others {
                self.out.push((m, Out::Frame(presence.clone())));
            }
        }
        self.log.record(
            "join",
            json!({"id": id, "room": room, "since": since, "recovered": recovered}),
        );
    }

    /// Replay `msgs` to `id` as `history` frames (`replay: true`), oldest first, each under the
    /// replay size.
    fn replay(&mut self, id: u64, room: &str, msgs: &[Msg]) {
        let mut page: Vec<Value> = Vec::new();
        let mut bytes = 0;
        let mut rest = msgs.len();
        for msg in msgs {
            let v = msg.to_value();
            let len = msg.text.len() + 128;
            if !page.is_empty()
                && (page.len() >= REPLAY_PAGE || bytes + len > self.options.replay_bytes)
            {
                let msgs = std::mem::take(&mut page);
                self.send(id, json!({"ev": "history", "room": room, "msgs": msgs, "more": rest > 0, "replay": true}));
                bytes = 0;
            }
            page.push(v);
            bytes += len;
            rest -= 1;
        }
        if !page.is_empty() {
            self.send(
                id,
                json!({"ev": "history", "room": room, "msgs": page, "more": false, "replay": true}),
            );
        }
    }

    fn say(
        &mut self,
        batch: &mut dyn Log,
        id: u64,
        room: Option<String>,
        text: String,
        cid: Option<Value>,
        at: Instant,
    ) {
        let Some(member) = self.members.get(&id) else {
            return;
        };
        let room = match room.or_else(|| member.rooms.last().cloned()) {
            Some(r) => r,
            None => {
                return self.refuse(
                    id,
                    Refusal::new("no_room", "join a room first").with_cid(cid),
                )
            }
        };
        if member.ended_pair.as_deref() == Some(room.as_str()) {
            return self.refuse(
                id,
                Refusal::new(
                    "peer_left",
                    format!("your partner has left {room}; nothing was sent"),
                )
                .with_cid(cid),
            );
        }
        if !self.is_member(id, &room) {
            return self.refuse(id, not_member(&room).with_cid(cid));
        }
        if text.is_empty() {
            return self.refuse(
                id,
                Refusal::new("bad_request", "empty message").with_cid(cid),
            );
        }
        let from = self.nick(id);
        let r = self.rooms.get_mut(&room).expect("a member's room exists");
        let msg = Msg {
            room: room.clone(),
            seq: r.last_seq + 1,
            from,
            text,
            ts: now_ms(),
            cid: cid.clone(),
        };
        if let Err(e) = batch.append(&msg) {
            tracing::error!(error = %e, "store: append");
            Metrics::inc(&self.metrics.store_errors_total);
            return self.refuse(
                id,
                Refusal::new(
                    "store_failed",
                    "the message could not be stored; nothing was sent",
                )
                .with_cid(cid),
            );
        }
        if batch.shared() {
            // Numbered and delivered by Redis (Remote); told to the sender if not stored.
            self.said.push((id, cid, at));
            Metrics::inc(&self.metrics.messages_total);
            self.log.record(
                "msg",
                json!({"id": id, "room": room, "bytes": msg.text.len()}),
            );
            return;
        }
        r.last_seq = msg.seq;
        let recipients = r.members.clone();
        let frame = frame(msg.to_value());
        for m in recipients {
            self.out.push((m, Out::Msg(frame.clone())));
        }
        self.said.push((id, cid, at));
        Metrics::inc(&self.metrics.messages_total);
        self.log.record(
            "msg",
            json!({"id": id, "room": room, "seq": msg.seq, "bytes": msg.text.len()}),
        );
    }

    /// Cluster mode: a published message of `room`. Each seq is delivered once, in order: one
    /// already handed out is skipped, and a gap (published while this node was not yet or no
    /// longer subscribed) is filled from the room's log first.
    fn remote(&mut self, batch: &mut dyn Log, room: &str, seq: u64, frame: String) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        if seq <= r.last_seq {
            return;
        }
        if seq > r.last_seq + 1 {
            let last = r.last_seq;
            for (s, f) in batch.frames_after(room, last) {
                if s >= seq {
                    break;
                }
                self.hand_out(room, s, f);
            }
        }
        self.hand_out(room, seq, frame);
    }

    fn hand_out(&mut self, room: &str, seq: u64, frame: String) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if seq <= r.last_seq {
            return;
        }
        r.last_seq = seq;
        let frame = SharedFrame::text(frame);
        let out_start = self.out.len();
        for m in r.members.clone() {
            self.out.push((m, Out::Msg(frame.clone())));
        }
        self.hold_if_awaited(room, out_start);
    }

    /// Cluster mode: frames pushed since `out_start` for a room whose subscription is not
    /// confirmed yet wait in the room instead.
    fn hold_if_awaited(&mut self, room: &str, out_start: usize) {
        if let Some(held) = self.rooms.get_mut(room).and_then(|r| r.held.as_mut()) {
            held.extend(self.out.drain(out_start..));
        }
    }

    /// Cluster mode: the batch's messages that Redis did not store reach no one; their
    /// senders are told.
    fn refuse_unpublished(&mut self, results: &[Result<u64, String>]) {
        let said = std::mem::take(&mut self.said);
        let now = Instant::now();
        for ((id, cid, at), result) in said.into_iter().zip(results) {
            match result {
                Ok(_) => self
                    .metrics
                    .delivery_latency
                    .observe(now.duration_since(at)),
                Err(why) => {
                    Metrics::inc(&self.metrics.store_errors_total);
                    Metrics::dec(&self.metrics.messages_total);
                    tracing::debug!(id, why, "redis: not published");
                    self.refuse(
                        id,
                        Refusal::new(
                            "unavailable",
                            "the message could not be stored (Redis unreachable); nothing was sent",
                        )
                        .with_cid(cid),
                    );
                }
            }
        }
    }

    /// Take `id` out of `room` (not a pair room: see `end_pair`), telling every member (the
    /// leaver too, as its acknowledgement).
    fn leave(&mut self, id: u64, room: &str) {
        let nick = self.nick(id);
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let presence =
            frame(json!({"ev": "presence", "room": room, "state": "left", "nick": nick}));
        let members = r.members.clone();
        r.members.retain(|m| *m != id);
        self.share(Change::Left {
            room: room.to_owned(),
            id,
            nick: nick.clone(),
        });
        self.forget_if_unused(room);
        for m in members {
            self.out.push((m, Out::Frame(presence.clone())));
        }
        if let Some(member) = self.members.get_mut(&id) {
            member.rooms.retain(|r| r != room);
        }
    }

    /// `id` leaves its pair, if it has one: the partner is told `peer_left`, leaves the room,
    /// and goes back in the queue (cluster mode: the partner's node is told if it is another).
    /// `tell_self`: `id` gets the room's `presence left` too.
    fn end_pair(&mut self, id: u64, tell_self: bool) {
        let Some(room) = self.members.get_mut(&id).and_then(|m| m.pair.take()) else {
            return;
        };
        if let Some(m) = self.members.get_mut(&id) {
            m.rooms.retain(|r| *r != room);
            m.ended_pair = Some(room.clone());
        }
        if !self.rooms.contains_key(&room) {
            return;
        }
        let partners: Vec<u64> = self
            .close_pair_room(&room)
            .into_iter()
            .filter(|m| *m != id)
            .collect();
        let nick = self.nick(id);
        if tell_self {
            self.send(
                id,
                json!({"ev": "presence", "room": room, "state": "left", "nick": nick}),
            );
        }
        self.share(Change::Left {
            room: room.clone(),
            id,
            nick,
        });
        if partners.is_empty() {
            // The partner is on another node (cluster mode), or already gone.
            self.share(Change::PairEnded { room: room.clone() });
        }
        self.log.record("unpair", json!({"id": id, "room": room}));
        self.release_partners(&room, partners);
    }

    /// The partners left behind in the ended pair `room`: told `peer_left`, out of the room,
    /// back in the queue.
    fn release_partners(&mut self, room: &str, partners: Vec<u64>) {
        for p in partners {
            self.send(p, json!({"ev": "peer_left", "room": room}));
            let nick = self.nick(p);
            if let Some(m) = self.members.get_mut(&p) {
                m.pair = None;
                m.rooms.retain(|r| r != room);
                m.ended_pair = Some(room.to_owned());
            }
            self.share(Change::Left {
                room: room.to_owned(),
                id: p,
                nick,
            });
            if self.members.get(&p).is_some_and(|m| !m.closing) {
                self.enqueue(p);
            }
        }
        if self.clustered() {
            self.unfollow.push(room.to_owned());
        }
    }

    /// An ended pair room leaves the hub (nobody can join it again, so its seq is never needed
    /// here; on one node its history stays in the store): what waited for its subscription
    /// goes out first. Returns its members.
    fn close_pair_room(&mut self, room: &str) -> Vec<u64> {
        let Some(r) = self.rooms.remove(room) else {
            return Vec::new();
        };
        self.out.extend(r.held.into_iter().flatten());
        r.members
    }

    /// `id` stops waiting for a stranger.
    fn unqueue(&mut self, id: u64) {
        let Some(m) = self.members.get_mut(&id).filter(|m| m.queued) else {
            return;
        };
        m.queued = false;
        self.queue.retain(|q| *q != id);
        self.share(Change::Unqueued { id });
    }

    fn enqueue(&mut self, id: u64) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if !m.queued {
            m.queued = true;
            self.queue.push_back(id);
        }
        // Cluster mode: the position is known once the shared queue has it (`make_pairs`).
        if !self.clustered() {
            self.tell_position(id);
        }
    }

    fn tell_position(&mut self, id: u64) {
        if let Some(pos) = self.queue.iter().position(|q| *q == id) {
            self.send(id, json!({"ev": "queued", "pos": pos + 1}));
        }
    }

    /// `id` asks for a stranger (`match`, or `next` once out of its pair): it is queued, or
    /// told its place if it waits already (in the shared queue, cluster mode); then the queue
    /// is paired.
    fn seek_stranger(&mut self, batch: &mut dyn Log, id: u64) {
        if !self.members.get(&id).is_some_and(|m| m.queued) {
            self.enqueue(id);
        } else if let Some(queue) = batch.matchmaker() {
            if let Some(pos) = queue.position(id) {
                self.send(id, json!({"ev": "queued", "pos": pos}));
            }
        } else {
            self.tell_position(id);
        }
        self.make_pairs(batch);
    }

    /// Cluster mode: the partner on another node left the pair `room` (or its node died).
    fn partner_left(&mut self, room: &str) {
        let partners = self.close_pair_room(room);
        self.release_partners(room, partners);
    }

    /// Pair queued members in order, never two who were just paired with each other.
    fn make_pairs(&mut self, batch: &mut dyn Log) {
        if batch.matchmaker().is_some() {
            return self.make_pairs_shared(batch);
        }
        let mut i = 0;
        while i < self.queue.len() {
            let a = self.queue[i];
            let a_last = self.members.get(&a).and_then(|m| m.last_peer);
            let partner = self.queue.iter().enumerate().skip(i + 1).find(|(_, b)| {
                a_last != Some(**b) && self.members.get(b).and_then(|m| m.last_peer) != Some(a)
            });
            let Some((j, &b)) = partner else {
                i += 1;
                continue;
            };
            self.queue.remove(j);
            self.queue.remove(i);
            let room = self.pair_room();
            self.pair(batch, a, b, room);
        }
        // Positions are told on entering the queue (and on asking again with `match`), not on
        // every move: telling the whole queue each time would cost n^2 frames when thousands
        // wait at once.
    }

    /// Cluster mode: each member waiting here is paired through the shared queue with the
    /// first fitting stranger on any node, or waits there.
    fn make_pairs_shared(&mut self, batch: &mut dyn Log) {
        while let Some(id) = self.queue.pop_front() {
            let Some(m) = self.members.get(&id).filter(|m| m.queued && !m.closing) else {
                continue;
            };
            let who = Seeker {
                id,
                nick: m.nick.clone(),
                last_peer: m.last_peer_key.clone(),
                room: self.pair_room(),
            };
            let Some(queue) = batch.matchmaker() else {
                return;
            };
            match queue.seek(&who) {
                Ok(Sought::Queued(pos)) => self.send(id, json!({"ev": "queued", "pos": pos})),
                Ok(Sought::Paired(Peer { local: Some(b), .. })) => {
                    self.pair(batch, id, b, who.room)
                }
                Ok(Sought::Paired(peer)) => {
                    self.pair_across(batch, id, &who.room, &peer.key, &peer.nick);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis: matchmaking");
                    if let Some(m) = self.members.get_mut(&id) {
                        m.queued = false;
                    }
                    self.refuse(
                        id,
                        Refusal::new(
                            "unavailable",
                            "matchmaking is out of reach (Redis unreachable); ask again",
                        ),
                    );
                }
            }
        }
    }

    /// A new pair room's name, unique across restarts (the time, and a counter for pairs made
    /// in one millisecond) and across nodes.
    fn pair_room(&mut self) -> String {
        self.pairs_made += 1;
        format!(
            "{PAIR_PREFIX}{:x}-{}{}",
            now_ms(),
            self.pairs_made,
            self.pair_tag
        )
    }

    fn pair(&mut self, batch: &mut dyn Log, a: u64, b: u64, room: String) {
        for (id, peer) in [(a, b), (b, a)] {
            let key = batch.matchmaker().map(|q| q.key(peer));
            if let Some(m) = self.members.get_mut(&id) {
                m.queued = false;
                m.pair = Some(room.clone());
                m.last_peer = Some(peer);
                m.last_peer_key = key;
            }
        }
        self.join(batch, a, &room, None, None);
        self.join(batch, b, &room, None, None);
        for (me, peer) in [(a, b), (b, a)] {
            let peer_nick = self.nick(peer);
            self.send_in(
                &room,
                me,
                json!({"ev": "matched", "room": room, "peer": peer_nick}),
            );
        }
        Metrics::inc(&self.metrics.matches_total);
        self.log
            .record("match", json!({"room": room, "ids": [a, b]}));
    }

    /// Cluster mode: `id` is paired in `room` with a member of another node. Each side joins
    /// the room on its own node's time, so the partner may have written already: `id` gets the
    /// room from its start (`joined{recovered: true}` and the replay).
    fn pair_across(
        &mut self,
        batch: &mut dyn Log,
        id: u64,
        room: &str,
        peer_key: &str,
        peer_nick: &str,
    ) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        m.queued = false;
        m.pair = Some(room.to_owned());
        m.last_peer = None;
        m.last_peer_key = Some(peer_key.to_owned());
        self.join(batch, id, room, Some(0), None);
        self.send_in(
            room,
            id,
            json!({"ev": "matched", "room": room, "peer": peer_nick}),
        );
        Metrics::inc(&self.metrics.matches_total);
        self.log.record(
            "match",
            json!({"room": room, "ids": [id], "peer": peer_key}),
        );
    }

    /// Cluster mode: another node paired this node's member `m.id`. If it is still waiting it
    /// joins the pair; if not (gone, unmatched, paired meanwhile) the partner is told it left.
    fn matched_elsewhere(&mut self, batch: &mut dyn Log, m: Matched) {
        let waiting = self
            .members
            .get(&m.id)
            .is_some_and(|member| member.queued && member.pair.is_none() && !member.closing);
        if !waiting {
            return self.share(Change::PairEnded { room: m.room });
        }
        self.queue.retain(|q| *q != m.id);
        self.pair_across(batch, m.id, &m.room, &m.peer_key, &m.peer_nick);
    }

    fn disconnect(&mut self, id: u64) {
        if !self.members.contains_key(&id) {
            return;
        }
        self.end_pair(id, false);
        self.unqueue(id);
        let rooms = self
            .members
            .get(&id)
            .map(|m| m.rooms.clone())
            .unwrap_or_default();
        for room in rooms {
            let nick = self.nick(id);
            let Some(r) = self.rooms.get_mut(&room) else {
                continue;
            };
            r.members.retain(|m| *m != id);
            // Nobody is told of a departure from the lobby: everyone is there.
            let told = if room == LOBBY {
                Vec::new()
            } else {
                r.members.clone()
            };
            self.share(Change::Left {
                room: room.clone(),
                id,
                nick: nick.clone(),
            });
            if room == LOBBY {
                continue;
            }
            self.forget_if_unused(&room);
            let presence =
                frame(json!({"ev": "presence", "room": room, "state": "left", "nick": nick}));
            for m in told {
                self.out.push((m, Out::Frame(presence.clone())));
            }
        }
        self.members.remove(&id);
    }

    /// When the store cannot even start a transaction, a disconnect still has to free the
    /// member (its frames are sent after this batch as usual).
    fn disconnect_without_store(&mut self, id: u64) {
        self.disconnect(id);
    }

    /// The commit failed: the batch's messages reach no one, their senders are told, and the
    /// rooms' sequence numbers go back to what the store holds.
    fn refuse_batch(&mut self, store: &Store) {
        self.out.retain(|(_, o)| !matches!(o, Out::Msg(_)));
        for (id, cid, _) in std::mem::take(&mut self.said) {
            self.refuse(
                id,
                Refusal::new(
                    "store_failed",
                    "the message could not be stored; nothing was sent",
                )
                .with_cid(cid),
            );
        }
        if let Ok(seqs) = store.last_seqs() {
            for (name, room) in &mut self.rooms {
                room.last_seq = seqs.get(name).copied().unwrap_or(0);
            }
        }
    }

    fn backlogged(&self) -> bool {
        !self.backlogged.is_empty()
    }

    /// Hand this batch's frames to their connections, in order, after what earlier batches
    /// left waiting for them. A frame the connection's channel has no room for waits in its
    /// backlog; once the backlog and the connection's outbox together pass `outbox_bytes`, the
    /// connection is a slow consumer: closed with 4008, counted, logged, and its backlog dropped.
    fn deliver(&mut self) {
        self.metrics
            .rooms
            .store(self.rooms.len() as u64, Ordering::Relaxed);
        // Stored: from here on each message of the batch is handed out.
        let now = Instant::now();
        for (_, _, at) in self.said.drain(..) {
            self.metrics
                .delivery_latency
                .observe(now.duration_since(at));
        }
        let limit = self.options.outbox_bytes;
        for (id, out) in std::mem::take(&mut self.out) {
            let Some(member) = self.members.get_mut(&id) else {
                continue;
            };
            if member.closing {
                continue;
            }
            let item = match out {
                Out::Msg(f) => (f, true),
                Out::Frame(f) => (f, false),
            };
            member.backlog_bytes += item.0.len();
            member.backlog.push_back(item);
            self.backlogged.insert(id);
        }
        let mut slow = Vec::new();
        let ids = std::mem::take(&mut self.backlogged);
        for id in ids {
            let Some(member) = self.members.get_mut(&id) else {
                continue;
            };
            if member.backlog.is_empty() {
                continue;
            }
            if member.closing {
                member.backlog.clear();
                member.backlog_bytes = 0;
                continue;
            }
            while let Some((frame, is_msg)) = member.backlog.pop_front() {
                let len = frame.len();
                match member.tx.try_send(Command::SendShared(frame)) {
                    Ok(()) => {
                        member.backlog_bytes -= len;
                        if is_msg {
                            Metrics::inc(&self.metrics.deliveries_total);
                            Metrics::add(&self.metrics.bytes_out_total, len as u64);
                        }
                    }
                    Err(TrySendError::Full(Command::SendShared(frame))) => {
                        member.backlog.push_front((frame, is_msg));
                        break;
                    }
                    // The connection is ending; its Disconnect is on the way.
                    Err(_) => {
                        member.closing = true;
                        break;
                    }
                }
            }
            let queued = usize::try_from(member.metrics.queued_bytes()).unwrap_or(usize::MAX);
            if !member.backlog.is_empty() {
                if member.backlog_bytes.saturating_add(queued) > limit {
                    slow.push(id);
                } else {
                    self.backlogged.insert(id);
                }
            }
        }
        for id in slow {
            let Some(member) = self.members.get_mut(&id) else {
                continue;
            };
            member.closing = true;
            member.backlog.clear();
            member.backlog_bytes = 0;
            let _ = member.tx.close(SLOW_CONSUMER, "slow consumer");
            Metrics::inc(&self.metrics.slow_consumer_closes_total);
            tracing::info!(id, "slow consumer: closed with 4008");
            self.log.record("slow_consumer", json!({"id": id}));
        }
    }

    fn sweep_idle(&mut self) {
        let Some(idle) = self.options.idle_timeout else {
            return;
        };
        let cutoff = now_ms() - i64::try_from(idle.as_millis()).unwrap_or(i64::MAX);
        for (id, m) in &mut self.members {
            if !m.closing && m.last_active.load(Ordering::Relaxed) < cutoff {
                m.closing = true;
                let _ = m.tx.close(1000, "idle timeout");
                Metrics::inc(&self.metrics.idle_closes_total);
                self.log.record("idle_close", json!({"id": id}));
            }
        }
    }

    fn close_all(&mut self) {
        for m in self.members.values_mut() {
            m.closing = true;
            let _ = m.tx.close(1001, "server shutting down");
        }
    }

    /// A room nobody is in and nobody ever wrote to holds nothing worth keeping: joining
    /// random names must not grow the server's memory.
    fn forget_if_unused(&mut self, room: &str) {
        let Some(r) = self.rooms.get(room).filter(|r| r.members.is_empty()) else {
            return;
        };
        if self.clustered() {
            // Cluster mode: the room lives in Redis; this node stops following it.
            self.unfollow.push(room.to_owned());
            self.rooms.remove(room);
        } else if r.last_seq == 0 {
            self.rooms.remove(room);
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

    /// Cluster mode: the rooms whose last member here left in this batch are no longer
    /// followed, unless one joined again since.
    fn unfollow_unused(&mut self) {
        let mut rooms = std::mem::take(&mut self.unfollow);
        rooms.sort_unstable();
        rooms.dedup();
        for room in rooms {
            if self.rooms.get(&room).is_none_or(|r| r.members.is_empty()) {
                self.share(Change::Unfollowed { room });
            }
        }
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
