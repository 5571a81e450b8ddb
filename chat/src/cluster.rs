//! Cluster mode (`--redis redis://HOST:PORT`): rooms shared by several nodes through Redis.
//!
//! - **Order and numbering**: one Lua script per message increments the room's seq, appends
//!   the framed message to the room's stream (ID `<seq>-1`, trimmed to about `--history-max`)
//!   and publishes it, atomically. Redis runs scripts one at a time, so a room's seqs are
//!   gap-free, never reused (with Redis's own persistence on), and published in seq order.
//! - **Batching**: the hub sends a batch's messages as one pipeline (one round trip per batch,
//!   not per message); nothing is acknowledged that the script did not store.
//! - **Delivery**: every member, on this node too, gets a room's messages from the room's
//!   channel, to which a node subscribes once (its subscriber thread), when its first member
//!   joins. A seq that skips ahead (a subscription or connection just made) is filled from the
//!   stream first, so nothing published while a node was not listening is lost.
//! - **History and recovery**: the stream; `join{since}` works on whichever node a client
//!   reconnects to, and `epoch` is Redis's (one per cluster).
//!
//! - **Presence**: a hash per room (`NODE:ID` -> nick) that every node writes when its
//!   connections join, leave or rename, and reads for `joined` and `who`; the change itself
//!   goes out on the room's channel (`P<node> <frame>`), delivered by the other nodes. Each
//!   node refreshes a key with a [`NODE_TTL`] every second; the first node to see another's
//!   key gone removes that node's members (one script, so once) and announces them as left.
//!
//! - **Matchmaking**: one queue for the cluster (a Redis list). A stranger asking for a match
//!   runs a script that takes the first fitting stranger waiting on any node, or queues the
//!   asker; a pair made with another node's member is put in that node's inbox (a list, so a
//!   node that was not listening still finds it) with a nudge on the node's channel. A pair
//!   ends across nodes with `L<node>` on the pair room's channel.
//! - **Following rooms**: a node subscribes to a room when its first member there joins and
//!   unsubscribes when its last leaves.
//!
//! Keys a script touches beyond its declared ones (a dead node's rooms, another node's
//! inbox) make this a single-instance (or primary/replica) design, not Redis Cluster's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use redis::{Commands, Connection, RedisResult, Script};

use crate::matchmaking::{Matched, Matchmaker, Peer, Seeker, Sought};
use crate::protocol::{Msg, LOBBY, PAIR_PREFIX};
use crate::store::{Log, Recovery, Result as StoreResult};

/// Number, store and publish one message (ARGV: 1 and 2 the frame around its seq, 3 the
/// stream's length, 4 the sender's cid as JSON or ''). The cid is kept beside the frame, for
/// its sender's history; the published frame, which every member gets, does not carry it.
const PUBLISH: &str = r"
local seq = redis.call('INCR', KEYS[1])
local frame = ARGV[1] .. seq .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'f', frame, 'c', ARGV[4])
redis.call('PUBLISH', KEYS[3], frame)
return seq
";

// `{room}` is a Redis Cluster hash tag: a room's keys live on one shard, so its script can
// touch both (room names cannot hold braces).
fn seq_key(room: &str) -> String {
    format!("chat:room:{{{room}}}:seq")
}
fn log_key(room: &str) -> String {
    format!("chat:room:{{{room}}}:log")
}
fn members_key(room: &str) -> String {
    format!("chat:room:{{{room}}}:members")
}
/// Set when a pair room ends (for an hour): a node that subscribes to the room after its
/// partner's `L<node>` went out still learns of it.
fn ended_key(room: &str) -> String {
    format!("chat:room:{{{room}}}:ended")
}
/// How long an ended pair room is remembered, in seconds.
const ENDED_TTL: u64 = 3600;
fn channel(room: &str) -> String {
    format!("chat:room:{room}")
}
fn room_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("chat:room:")
}

/// The seq in a framed message (`..."seq":N,...`; room names cannot hold that text).
pub fn seq_of(frame: &str) -> Option<u64> {
    let at = frame.find("\"seq\":")? + 6;
    let digits: &str = &frame[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Strangers waiting for a match, on every node: `NODE:ID|LAST_PEER|NICK`, oldest first.
const QUEUE: &str = "chat:match:queue";
/// Members of the lobby per node (`NODE` -> count), refreshed by each node's heartbeat.
const LOBBY_COUNTS: &str = "chat:lobby:counts";

/// Match the seeker (ARGV: 1 its key, 2 its last partner's key or '', 3 its nick, 4 the pair
/// room to make, 5 its node) with the first fitting stranger waiting, or queue it. Returns
/// `{partner key, partner nick}`, or `{'', position}`. A partner on another node is put in
/// that node's inbox (`room|id|seeker key|seeker nick`), and the node nudged.
const MATCH: &str = r"
local waiting = redis.call('LRANGE', KEYS[1], 0, 199)
for i, e in ipairs(waiting) do
  local key, last, nick = string.match(e, '^([^|]*)|([^|]*)|(.*)$')
  if key == ARGV[1] then return {'', tostring(i)} end
  if key and key ~= ARGV[2] and last ~= ARGV[1] then
    redis.call('LREM', KEYS[1], 1, e)
    local node, id = string.match(key, '^([^:]*):(.*)$')
    if node ~= ARGV[5] then
      redis.call('RPUSH', 'chat:node:' .. node .. ':matches',
        ARGV[4] .. '|' .. id .. '|' .. ARGV[1] .. '|' .. ARGV[3])
      redis.call('PUBLISH', 'chat:node:' .. node, 'M')
    end
    return {key, nick}
  end
end
redis.call('RPUSH', KEYS[1], ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3])
return {'', tostring(redis.call('LLEN', KEYS[1]))}
";

/// How long a node counts as alive after its last heartbeat (one a second).
pub const NODE_TTL: Duration = Duration::from_secs(5);

/// Remove a dead node (ARGV[1]) from the cluster, once: its members leave every room it had
/// members in, announced on each room's channel (a pair room's partner is told its partner
/// left), its strangers leave the queue, and the partners of pairs it never took up are told
/// too. Returns how many members it removed.
const REAP: &str = r"
if redis.call('SREM', 'chat:nodes', ARGV[1]) == 0 then return 0 end
local rooms = redis.call('SMEMBERS', 'chat:node:' .. ARGV[1] .. ':rooms')
local prefix = ARGV[1] .. ':'
local removed = 0
for _, room in ipairs(rooms) do
  local key = 'chat:room:{' .. room .. '}:members'
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, #prefix) == prefix then
      redis.call('HDEL', key, fields[i])
      removed = removed + 1
      if string.sub(room, 1, 5) == 'pair:' then
        redis.call('SET', 'chat:room:{' .. room .. '}:ended', 1, 'EX', 3600)
        redis.call('PUBLISH', 'chat:room:' .. room, 'L-')
      elseif room ~= 'lobby' then
        local frame = cjson.encode({ev = 'presence', room = room, state = 'left', nick = fields[i + 1]})
        redis.call('PUBLISH', 'chat:room:' .. room, 'P- ' .. frame)
      end
    end
  end
end
redis.call('DEL', 'chat:node:' .. ARGV[1] .. ':rooms')
for _, e in ipairs(redis.call('LRANGE', 'chat:match:queue', 0, -1)) do
  if string.sub(e, 1, #prefix) == prefix then redis.call('LREM', 'chat:match:queue', 0, e) end
end
local inbox = 'chat:node:' .. ARGV[1] .. ':matches'
for _, e in ipairs(redis.call('LRANGE', inbox, 0, -1)) do
  local room = string.match(e, '^([^|]*)')
  redis.call('SET', 'chat:room:{' .. room .. '}:ended', 1, 'EX', 3600)
  redis.call('PUBLISH', 'chat:room:' .. room, 'L-')
end
redis.call('DEL', inbox)
redis.call('HDEL', 'chat:lobby:counts', ARGV[1])
return removed
";

/// A change on this node the other nodes must learn of: presence, the shared queue, pairs.
#[derive(Debug)]
pub enum Change {
    Joined {
        room: String,
        id: u64,
        nick: String,
    },
    Left {
        room: String,
        id: u64,
        nick: String,
    },
    Renamed {
        room: String,
        id: u64,
        nick: String,
        old: String,
    },
    /// Member `id` left the matchmaking queue (unmatched or gone).
    Unqueued {
        id: u64,
    },
    /// This node's side of a pair with another node's member ended.
    PairEnded {
        room: String,
    },
    /// This node has no members in `room` any more: it stops following it.
    Unfollowed {
        room: String,
    },
}

/// What the subscriber thread hears, for the hub.
#[derive(Debug)]
pub enum Heard {
    /// A message of `room` published by some node (this one too), framed, with its seq.
    Message {
        room: String,
        seq: u64,
        frame: String,
    },
    /// Presence in `room` on another node (joined, left, renamed, or a dead node's members
    /// removed), framed.
    Event { room: String, frame: String },
    /// The subscription to `room` was (re)made: what was published before it is to be filled
    /// in from the room's log.
    Subscribed { room: String },
    /// The partner on another node left the pair `room` (or its node died).
    PeerLeft { room: String },
    /// Another node paired some of this node's members: see [`Matchmaker::matched`].
    Matched,
}

/// Where the subscriber hands what it hears; false once the hub is gone.
pub type Hear = Box<dyn Fn(Heard) -> bool + Send>;

/// What the hub tells the subscriber thread.
enum Order {
    Subscribe(String),
    Unsubscribe(String),
}

/// The hub's side of cluster mode: its command connection and the subscriber's orders.
pub struct Cluster {
    client: redis::Client,
    conn: Option<Connection>,
    script: Script,
    reap: Script,
    matcher: Script,
    /// This node's members waiting in the shared queue, and their entries there.
    queued: HashMap<u64, String>,
    /// Members of the lobby on the other nodes, as of the last heartbeat.
    lobby_elsewhere: usize,
    history_max: u64,
    epoch: String,
    orders: Sender<Order>,
    /// This node's name in Redis (random per start).
    node: String,
    /// Commands to Redis work (the hub's connection).
    pub commands_up: Arc<AtomicBool>,
    /// The subscriber is connected and subscribed.
    pub subscriber_up: Arc<AtomicBool>,
}

impl Cluster {
    /// Connect to Redis at `url` (failing now if it cannot be reached), read or make the
    /// cluster's epoch, and start the subscriber thread, which hands what it receives to the
    /// hub through `hub`.
    pub fn start(url: &str, history_max: u64, hub: Hear) -> std::result::Result<Cluster, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis {url}: {e}"))?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .map_err(|e| format!("redis {url}: {e}"))?;
        let fresh = format!("{:016x}", rand::random::<u64>());
        let _: bool = conn
            .set_nx("chat:epoch", &fresh)
            .map_err(|e| format!("redis {url}: {e}"))?;
        let epoch: String = conn
            .get("chat:epoch")
            .map_err(|e| format!("redis {url}: {e}"))?;
        let node = format!("{:012x}", rand::random::<u64>() >> 16);
        let (orders, orders_rx) = crossbeam_channel::unbounded();
        let subscriber_up = Arc::new(AtomicBool::new(false));
        let up = subscriber_up.clone();
        let sub_client = client.clone();
        let me = node.clone();
        std::thread::Builder::new()
            .name("chat-redis-sub".into())
            .spawn(move || subscriber(&sub_client, &me, &orders_rx, &hub, &up))
            .map_err(|e| e.to_string())?;
        let mut cluster = Cluster {
            client,
            conn: Some(conn),
            script: Script::new(PUBLISH),
            reap: Script::new(REAP),
            matcher: Script::new(MATCH),
            queued: HashMap::new(),
            lobby_elsewhere: 0,
            history_max: history_max.max(1),
            epoch,
            orders,
            node,
            commands_up: Arc::new(AtomicBool::new(true)),
            subscriber_up,
        };
        // Registered before it has members: a node that dies in its first second is still
        // found and its members removed.
        cluster.heartbeat(0);
        Ok(cluster)
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// This node's name in Redis.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Tell the other nodes what changed in this batch, in one pipeline: the rooms' member
    /// hashes, and the presence frames on the rooms' channels (not the lobby's: everyone is
    /// there; not a pair room's departures: the partner is told `peer_left` instead), the
    /// queue, ended pairs, rooms no longer followed.
    pub fn share(&mut self, ops: Vec<Change>) {
        let node = self.node.clone();
        let mut unqueued = Vec::new();
        for op in &ops {
            match op {
                Change::Unqueued { id } => unqueued.extend(self.queued.remove(id)),
                Change::Unfollowed { room } => {
                    let _ = self.orders.send(Order::Unsubscribe(room.clone()));
                }
                _ => {}
            }
        }
        let done: RedisResult<()> = self.with_conn(|c| {
            let mut pipe = redis::pipe();
            for entry in &unqueued {
                pipe.lrem(QUEUE, 1, entry).ignore();
            }
            for op in &ops {
                let (room, frame) = match op {
                    Change::Joined { room, id, nick } => {
                        pipe.hset(members_key(room), format!("{node}:{id}"), nick)
                            .ignore()
                            .sadd(format!("chat:node:{node}:rooms"), room)
                            .ignore();
                        (room, serde_json::json!({"ev": "presence", "room": room, "state": "joined", "nick": nick}))
                    }
                    Change::Left { room, id, nick } => {
                        pipe.hdel(members_key(room), format!("{node}:{id}")).ignore();
                        if room.starts_with(PAIR_PREFIX) {
                            continue;
                        }
                        (room, serde_json::json!({"ev": "presence", "room": room, "state": "left", "nick": nick}))
                    }
                    Change::Renamed { room, id, nick, old } => {
                        pipe.hset(members_key(room), format!("{node}:{id}"), nick).ignore();
                        (room, serde_json::json!({"ev": "presence", "room": room, "state": "renamed", "nick": nick, "old": old}))
                    }
                    Change::PairEnded { room } => {
                        // Set first: a node subscribing after the publish still sees it.
                        pipe.set_ex(ended_key(room), 1, ENDED_TTL)
                            .ignore()
                            .publish(channel(room), format!("L{node}"))
                            .ignore();
                        continue;
                    }
                    Change::Unfollowed { room } => {
                        pipe.srem(format!("chat:node:{node}:rooms"), room).ignore();
                        continue;
                    }
                    Change::Unqueued { .. } => continue,
                };
                if room != LOBBY {
                    pipe.publish(channel(room), format!("P{node} {frame}")).ignore();
                }
            }
            pipe.query(c)
        });
        if let Err(e) = done {
            tracing::warn!(error = %e, "redis: presence not shared");
        }
    }

    /// Once a second: say this node is alive and how many are in its lobby, learn the other
    /// nodes' lobbies, and remove nodes that are not alive.
    pub fn heartbeat(&mut self, lobby: usize) {
        let node = self.node.clone();
        let ttl = u64::try_from(NODE_TTL.as_millis()).unwrap_or(5000);
        let beat: RedisResult<(Vec<String>, HashMap<String, usize>)> = self.with_conn(|c| {
            redis::pipe()
                .cmd("SET")
                .arg(format!("chat:node:{node}"))
                .arg(1)
                .arg("PX")
                .arg(ttl)
                .ignore()
                .sadd("chat:nodes", &node)
                .ignore()
                .hset(LOBBY_COUNTS, &node, lobby)
                .ignore()
                .smembers("chat:nodes")
                .hgetall(LOBBY_COUNTS)
                .query(c)
        });
        let Ok((others, counts)) = beat else { return };
        self.lobby_elsewhere = counts
            .iter()
            .filter(|(n, _)| **n != node)
            .map(|(_, c)| c)
            .sum();
        for other in others.into_iter().filter(|n| *n != node) {
            let alive: RedisResult<bool> =
                self.with_conn(|c| c.exists(format!("chat:node:{other}")));
            if alive == Ok(false) {
                let reap = self.reap.clone();
                let removed: RedisResult<u64> = self.with_conn(|c| reap.arg(&other).invoke(c));
                match removed {
                    Ok(n) if n > 0 => tracing::info!(
                        node = other,
                        members = n,
                        "redis: a dead node's members removed"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "redis: removing a dead node"),
                }
            }
        }
    }

    /// Nicks in `room` on the other nodes.
    fn remote_members(&mut self, room: &str) -> Vec<String> {
        let key = members_key(room);
        let all: RedisResult<Vec<(String, String)>> = self.with_conn(|c| c.hgetall(&key));
        let mine = format!("{}:", self.node);
        all.map(|fields| {
            fields
                .into_iter()
                .filter(|(f, _)| !f.starts_with(&mine))
                .map(|(_, nick)| nick)
                .collect()
        })
        .unwrap_or_default()
    }

    pub fn begin(&mut self) -> ClusterBatch<'_> {
        ClusterBatch {
            cluster: self,
            queued: Vec::new(),
        }
    }

    /// Run `f` on the command connection, reconnecting once if it is gone or fails.
    fn with_conn<T>(&mut self, f: impl Fn(&mut Connection) -> RedisResult<T>) -> RedisResult<T> {
        for attempt in 0..2 {
            if self.conn.is_none() {
                match self
                    .client
                    .get_connection_with_timeout(Duration::from_millis(500))
                {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        self.commands_up.store(false, Ordering::SeqCst);
                        return Err(e);
                    }
                }
            }
            let conn = self.conn.as_mut().expect("connected above");
            match f(conn) {
                Ok(v) => {
                    self.commands_up.store(true, Ordering::SeqCst);
                    return Ok(v);
                }
                Err(e) if attempt == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                    self.conn = None;
                }
                Err(e) => {
                    if e.is_io_error() || e.is_connection_dropped() {
                        self.conn = None;
                        self.commands_up.store(false, Ordering::SeqCst);
                    }
                    return Err(e);
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    fn frames(
        &mut self,
        room: &str,
        after: u64,
        count: Option<usize>,
    ) -> RedisResult<Vec<(u64, String)>> {
        let key = log_key(room);
        let start = format!("{}-1", after + 1);
        let entries: Vec<(String, Vec<(String, String)>)> = self.with_conn(|c| {
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(&key).arg(&start).arg("+");
            if let Some(n) = count {
                cmd.arg("COUNT").arg(n);
            }
            cmd.query(c)
        })?;
        Ok(entries
            .into_iter()
            .filter_map(entry_frame)
            .map(|(seq, frame, _)| (seq, frame))
            .collect())
    }
}

impl Matchmaker for Cluster {
    fn seek(&mut self, who: &Seeker) -> Result<Sought, String> {
        let key = self.key(who.id);
        let last = who.last_peer.clone().unwrap_or_default();
        let matcher = self.matcher.clone();
        let node = self.node.clone();
        let (peer, nick): (String, String) = self
            .with_conn(|c| {
                matcher
                    .key(QUEUE)
                    .arg(&key)
                    .arg(&last)
                    .arg(&who.nick)
                    .arg(&who.room)
                    .arg(&node)
                    .invoke(c)
            })
            .map_err(|e| e.to_string())?;
        if peer.is_empty() {
            self.queued
                .insert(who.id, format!("{key}|{last}|{}", who.nick));
            return Ok(Sought::Queued(nick.parse().unwrap_or(1)));
        }
        let local = peer
            .strip_prefix(&format!("{node}:"))
            .and_then(|id| id.parse().ok());
        if let Some(id) = local {
            self.queued.remove(&id);
        }
        Ok(Sought::Paired(Peer {
            key: peer,
            nick,
            local,
        }))
    }

    fn position(&mut self, id: u64) -> Option<usize> {
        let entry = self.queued.get(&id)?.clone();
        let at: Option<usize> = self
            .with_conn(|c| redis::cmd("LPOS").arg(QUEUE).arg(&entry).query(c))
            .ok()?;
        at.map(|i| i + 1)
    }

    fn matched(&mut self) -> Vec<Matched> {
        let inbox = format!("chat:node:{}:matches", self.node);
        let taken: RedisResult<(Vec<String>,)> = self.with_conn(|c| {
            redis::pipe()
                .atomic()
                .lrange(&inbox, 0, -1)
                .del(&inbox)
                .ignore()
                .query(c)
        });
        let entries = match taken {
            Ok((entries,)) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "redis: cannot read this node's matches");
                return Vec::new();
            }
        };
        let matched: Vec<Matched> = entries
            .iter()
            .filter_map(|e| {
                let mut parts = e.splitn(4, '|');
                Some(Matched {
                    room: parts.next()?.to_owned(),
                    id: parts.next()?.parse().ok()?,
                    peer_key: parts.next()?.to_owned(),
                    peer_nick: parts.next()?.to_owned(),
                })
            })
            .collect();
        for m in &matched {
            self.queued.remove(&m.id);
        }
        matched
    }

    fn key(&self, id: u64) -> String {
        format!("{}:{id}", self.node)
    }
}

/// A stream entry `(ID, [("f", frame), ("c", cid)])` as `(seq, frame, cid)`.
fn entry_frame(
    (id, fields): (String, Vec<(String, String)>),
) -> Option<(u64, String, Option<serde_json::Value>)> {
    let seq = id.split('-').next()?.parse().ok()?;
    let mut frame = None;
    let mut cid = None;
    for (k, v) in fields {
        match k.as_str() {
            "f" => frame = Some(v),
            "c" if !v.is_empty() => cid = serde_json::from_str(&v).ok(),
            _ => {}
        }
    }
    Some((seq, frame?, cid))
}

fn to_msg(frame: &str, cid: Option<serde_json::Value>) -> Option<Msg> {
    let v: serde_json::Value = serde_json::from_str(frame).ok()?;
    Some(Msg {
        room: v["room"].as_str()?.to_owned(),
        seq: v["seq"].as_u64()?,
        from: v["from"].as_str()?.to_owned(),
        text: v["text"].as_str()?.to_owned(),
        ts: v["ts"].as_i64()?,
        cid,
    })
}

/// Stream entries as messages, in their order, while their text stays within `max_bytes` (at
/// least one); whether any was left out.
fn msgs_within(
    entries: impl Iterator<Item = (String, Vec<(String, String)>)>,
    max_bytes: usize,
) -> (Vec<Msg>, bool) {
    let mut msgs = Vec::new();
    let mut bytes = 0usize;
    for (_, frame, cid) in entries.filter_map(entry_frame) {
        let Some(msg) = to_msg(&frame, cid) else {
            continue;
        };
        if !msgs.is_empty() && bytes + msg.text.len() > max_bytes {
            return (msgs, true);
        }
        bytes += msg.text.len();
        msgs.push(msg);
    }
    (msgs, false)
}

fn store_error(e: &redis::RedisError) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(format!("redis: {e}"))))
}

/// One hub batch in cluster mode: messages queued by `append`, published by `commit`.
pub struct ClusterBatch<'a> {
    cluster: &'a mut Cluster,
    queued: Vec<Msg>,
}

impl ClusterBatch<'_> {
    /// Publish the queued messages in one pipeline: each one's seq, or why it was not stored
    /// (then it reached no one).
    pub fn commit(self) -> Vec<std::result::Result<u64, String>> {
        if self.queued.is_empty() {
            return Vec::new();
        }
        let history_max = self.cluster.history_max;
        let script = self.cluster.script.clone();
        let queued = &self.queued;
        let published: RedisResult<Vec<u64>> = self.cluster.with_conn(|c| {
            // SCRIPT LOAD leads the same pipeline (no round trip of its own), so EVALSHA finds
            // the script on a new connection or after a Redis restart.
            let mut pipe = redis::pipe();
            pipe.cmd("SCRIPT").arg("LOAD").arg(PUBLISH).ignore();
            for m in queued {
                let (prefix, suffix) = frame_parts(m);
                let cid = m.cid.as_ref().map(ToString::to_string).unwrap_or_default();
                pipe.cmd("EVALSHA")
                    .arg(script.get_hash())
                    .arg(3)
                    .arg(seq_key(&m.room))
                    .arg(log_key(&m.room))
                    .arg(channel(&m.room))
                    .arg(prefix)
                    .arg(suffix)
                    .arg(history_max)
                    .arg(cid);
            }
            pipe.query(c)
        });
        match published {
            Ok(seqs) => seqs.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "redis: a batch was not published");
                vec![Err(e.to_string()); self.queued.len()]
            }
        }
    }
}

/// A `msg` frame around its seq: `prefix + seq + suffix` (without the sender's cid).
fn frame_parts(m: &Msg) -> (String, String) {
    let mut v = m.to_value(false);
    let map = v.as_object_mut().expect("an object");
    map.remove("seq");
    map.remove("ev");
    map.remove("room");
    let rest = serde_json::Value::Object(std::mem::take(map)).to_string();
    let prefix = format!(
        "{{\"ev\":\"msg\",\"room\":{},\"seq\":",
        serde_json::Value::String(m.room.clone())
    );
    // `rest` is `{...}`: its fields follow the seq.
    let suffix = if rest == "{}" {
        "}".to_owned()
    } else {
        format!(",{}", &rest[1..])
    };
    (prefix, suffix)
}

impl Log for ClusterBatch<'_> {
    fn append(&mut self, msg: &Msg) -> StoreResult<()> {
        self.queued.push(msg.clone());
        Ok(())
    }

    fn recover(
        &mut self,
        room: &str,
        since: u64,
        last: u64,
        max_bytes: usize,
    ) -> StoreResult<Recovery> {
        if since >= last {
            return Ok(Recovery::Complete(Vec::new()));
        }
        match self.first_kept(room)? {
            Some(first) if first <= since + 1 => {
                let (from, to) = (format!("{}-1", since + 1), format!("{last}-1"));
                let key = log_key(room);
                let entries: Vec<(String, Vec<(String, String)>)> = self
                    .cluster
                    .with_conn(|c| redis::cmd("XRANGE").arg(&key).arg(&from).arg(&to).query(c))
                    .map_err(|e| store_error(&e))?;
                match msgs_within(entries.into_iter(), max_bytes) {
                    (msgs, false) => Ok(Recovery::Complete(msgs)),
                    (_, true) => Ok(Recovery::TooMuch {
                        first_kept: Some(first),
                    }),
                }
            }
            first_kept => Ok(Recovery::Gone { first_kept }),
        }
    }

    fn first_kept(&mut self, room: &str) -> StoreResult<Option<u64>> {
        self.cluster
            .with_conn(|c| first_kept_on(c, room))
            .map_err(|e| store_error(&e))
    }

    fn page_before(
        &mut self,
        room: &str,
        before: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<Msg>, bool)> {
        let end = match before {
            Some(0 | 1) => return Ok((Vec::new(), false)),
            Some(b) => format!("{}-1", b - 1),
            None => "+".to_owned(),
        };
        let key = log_key(room);
        let entries: Vec<(String, Vec<(String, String)>)> = self
            .cluster
            .with_conn(|c| {
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg(&end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit + 1)
                    .query(c)
            })
            .map_err(|e| store_error(&e))?;
        let fetched = entries.len();
        // Newest first, within the budget; then oldest first.
        let (mut msgs, cut) = msgs_within(entries.into_iter(), max_bytes);
        let more = cut || fetched > limit;
        msgs.truncate(limit);
        msgs.reverse();
        Ok((msgs, more))
    }

    fn shared(&self) -> bool {
        true
    }

    fn open_room(&mut self, room: &str) -> StoreResult<u64> {
        let key = seq_key(room);
        let last = self
            .cluster
            .with_conn(|c| c.get::<_, Option<u64>>(&key))
            .map_err(|e| store_error(&e))?
            .unwrap_or(0);
        let _ = self.cluster.orders.send(Order::Subscribe(room.to_owned()));
        Ok(last)
    }

    fn remote_members(&mut self, room: &str) -> Vec<String> {
        self.cluster.remote_members(room)
    }

    fn lobby_elsewhere(&self) -> usize {
        self.cluster.lobby_elsewhere
    }

    fn pair_ended(&mut self, room: &str) -> bool {
        let key = ended_key(room);
        self.cluster.with_conn(|c| c.exists(&key)).unwrap_or(false)
    }

    fn matchmaker(&mut self) -> Option<&mut dyn Matchmaker> {
        Some(&mut *self.cluster)
    }

    fn frames_after(&mut self, room: &str, after: u64) -> Vec<(u64, String)> {
        self.cluster.frames(room, after, None).unwrap_or_else(|e| {
            tracing::warn!(error = %e, room, "redis: cannot read the room's log");
            Vec::new()
        })
    }
}

fn first_kept_on(conn: &mut Connection, room: &str) -> RedisResult<Option<u64>> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(log_key(room))
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query(conn)?;
    Ok(entries
        .into_iter()
        .next()
        .and_then(entry_frame)
        .map(|(s, _, _)| s))
}

/// The subscriber thread: one connection, subscribed once per room this node has members in,
/// and to the node's own channel (nudges that another node paired its members). Each message
/// goes to the hub as [`Heard::Message`]; after each (re)subscription the hub is told to fill
/// in what was published meanwhile ([`Heard::Subscribed`]) and to look in its inbox.
fn subscriber(
    client: &redis::Client,
    me: &str,
    orders: &Receiver<Order>,
    hub: &Hear,
    up: &AtomicBool,
) {
    let mut rooms: HashSet<String> = HashSet::new();
    let mine = format!("chat:node:{me}");
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut conn = match client.get_connection_with_timeout(Duration::from_secs(1)) {
            Ok(c) => c,
            Err(e) => {
                up.store(false, Ordering::SeqCst);
                tracing::warn!(error = %e, "redis subscriber: cannot connect; retrying");
                // Orders keep coming meanwhile; take them so they are not lost.
                match orders.recv_timeout(backoff) {
                    Ok(order) => follow(&mut rooms, order),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                    Err(_) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if conn
            .set_read_timeout(Some(Duration::from_millis(20)))
            .is_err()
        {
            continue;
        }
        let mut pubsub = conn.as_pubsub();
        let subscribed = pubsub.subscribe(&mine).is_ok()
            && rooms
                .iter()
                .all(|room| pubsub.subscribe(channel(room)).is_ok());
        if !subscribed {
            continue;
        }
        up.store(true, Ordering::SeqCst);
        for room in &rooms {
            let _ = hub(Heard::Subscribed { room: room.clone() });
        }
        let _ = hub(Heard::Matched);
        loop {
            let mut failed = false;
            loop {
                match orders.try_recv() {
                    Ok(Order::Subscribe(room)) => {
                        if pubsub.subscribe(channel(&room)).is_err() {
                            failed = true;
                        }
                        let _ = hub(Heard::Subscribed { room: room.clone() });
                        rooms.insert(room);
                    }
                    Ok(Order::Unsubscribe(room)) => {
                        if pubsub.unsubscribe(channel(&room)).is_err() {
                            failed = true;
                        }
                        rooms.remove(&room);
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    // The hub is gone: so is this node.
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                }
            }
            if failed {
                break;
            }
            match pubsub.get_message() {
                Ok(msg) => {
                    let channel = msg.get_channel_name().to_owned();
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let heard = if channel == mine {
                        Some(Heard::Matched)
                    } else {
                        room_of_channel(&channel).and_then(|room| hearing(me, room, payload))
                    };
                    if heard.is_some_and(|h| !hub(h)) {
                        return;
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => {
                    tracing::warn!(error = %e, "redis subscriber: connection lost; reconnecting");
                    up.store(false, Ordering::SeqCst);
                    break;
                }
            }
        }
    }
}

/// Apply an order to the rooms followed while not connected.
fn follow(rooms: &mut HashSet<String>, order: Order) {
    match order {
        Order::Subscribe(room) => {
            rooms.insert(room);
        }
        Order::Unsubscribe(room) => {
            rooms.remove(&room);
        }
    }
}

/// What a payload on `room`'s channel means for this node (`me`): a message (`{...}`),
/// another node's presence (`P<node> <frame>`; this node's own were delivered here already),
/// or the end of a pair by the partner's node (`L<node>`).
fn hearing(me: &str, room: &str, payload: String) -> Option<Heard> {
    let room = room.to_owned();
    if let Some(rest) = payload.strip_prefix('P') {
        let (from, event) = rest.split_once(' ')?;
        return (from != me).then(|| Heard::Event {
            room,
            frame: event.to_owned(),
        });
    }
    if let Some(from) = payload.strip_prefix('L') {
        return (from != me).then_some(Heard::PeerLeft { room });
    }
    let seq = seq_of(&payload)?;
    Some(Heard::Message {
        room,
        seq,
        frame: payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_built_around_its_seq_and_read_back() {
        let m = Msg {
            room: "r".into(),
            seq: 0,
            from: "ann".into(),
            text: "hi \"there\"".into(),
            ts: 5,
            cid: Some(serde_json::json!("c1")),
        };
        let (prefix, suffix) = frame_parts(&m);
        let frame = format!("{prefix}42{suffix}");
        assert_eq!(seq_of(&frame), Some(42));
        assert!(
            !frame.contains("c1"),
            "members never see the sender's cid: {frame}"
        );
        let back = to_msg(&frame, m.cid.clone()).unwrap();
        assert_eq!(back, Msg { seq: 42, ..m });
    }
}
