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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use redis::{Commands, Connection, RedisResult, Script};

use crate::matchmaking::{Matched, Matchmaker, Peer, Seeker, Sought};
use crate::protocol::{Msg, LOBBY, PAIR_PREFIX};
use crate::store::{Log, Recovery, Result as StoreResult};

/// Number, store and publish a batch of messages, once: KEYS[1] is the batch's own key. If it
/// ran already (a connection cut after Redis ran it, before the node read the answer), the
/// seqs it gave are returned again and nothing is stored twice. ARGV: 1 the count, 2 the
/// streams' length, then per message: its room, the frame around its seq (two parts), and the
/// sender's cid as JSON or ''. The cid is kept beside the frame, for its sender's history; the
/// published frame, which every member gets, does not carry it.
const PUBLISH: &str = r"
local done = redis.call('GET', KEYS[1])
if done then return cjson.decode(done) end
local seqs = {}
for i = 0, tonumber(ARGV[1]) - 1 do
  local room, prefix, suffix, cid = ARGV[3 + 4 * i], ARGV[4 + 4 * i], ARGV[5 + 4 * i], ARGV[6 + 4 * i]
  local seq = redis.call('INCR', 'chat:room:{' .. room .. '}:seq')
  local frame = prefix .. seq .. suffix
  redis.call('XADD', 'chat:room:{' .. room .. '}:log', 'MAXLEN', '~', ARGV[2], seq .. '-1', 'f', frame, 'c', cid)
  redis.call('PUBLISH', 'chat:room:' .. room, frame)
  seqs[#seqs + 1] = seq
end
redis.call('SET', KEYS[1], cjson.encode(seqs), 'EX', 60)
return seqs
";

/// Make the cluster's epoch `ARGV[2]` if it is `ARGV[1]` (or missing): every node that finds
/// the store reset agrees on one new epoch. Returns the epoch now.
const NEW_EPOCH: &str = r"
local now = redis.call('GET', 'chat:epoch')
if now == false or now == ARGV[1] then
  redis.call('SET', 'chat:epoch', ARGV[2])
  return ARGV[2]
end
return now
";

/// How long one command to Redis may take before the node gives up on it (and on the
/// connection): a hung Redis must not freeze the node's hub.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failure, how long commands fail at once before the node tries to connect again.
const BACK_OFF: Duration = Duration::from_secs(1);

/// A connection to Redis whose reads and writes time out (redis-rs clears the timeouts it
/// connects with).
fn connect(client: &redis::Client) -> RedisResult<Connection> {
    let conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
    conn.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    conn.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    Ok(conn)
}

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
/// that node's inbox (`room|id|seeker key|seeker nick`), and the node nudged. A pair made is
/// remembered for a minute under the room's name, so a seek run again (its answer lost with
/// a connection) gets the same partner instead of taking a second.
const MATCH: &str = r"
local made = redis.call('GET', 'chat:match:made:' .. ARGV[4])
if made then return cjson.decode(made) end
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
    redis.call('SET', 'chat:match:made:' .. ARGV[4], cjson.encode({key, nick}), 'EX', 60)
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
    /// The other nodes took this node for dead (it stopped answering for longer than
    /// [`NODE_TTL`]) and removed its members; it is alive, and registers them again.
    Reaped,
    /// Redis lost its data (a restart without persistence, a failover, a flush): the cluster
    /// has a new epoch, and every seq this node knew is void.
    Reset { epoch: String },
}

/// Where the subscriber hands what it hears; false once the hub is gone.
pub type Hear = Box<dyn Fn(Heard) -> bool + Send + Sync>;

/// What the hub tells the subscriber thread.
enum Order {
    Subscribe(String),
    Unsubscribe(String),
}

/// The hub's side of cluster mode: its command connection and the subscriber's orders. The
/// heartbeat runs on a thread of its own with its own connection, so a busy hub is never
/// taken for a dead node.
pub struct Cluster {
    client: redis::Client,
    conn: Option<Connection>,
    /// After a failure, commands fail at once until then (a hung Redis costs one timeout, not
    /// one per command).
    down_until: Option<Instant>,
    script: Script,
    matcher: Script,
    new_epoch: Script,
    /// This node's members waiting in the shared queue, and their entries there.
    queued: HashMap<u64, String>,
    /// Members of the lobby here (told to the heartbeat) and on the other nodes (as of the
    /// last heartbeat).
    pub lobby_here: Arc<AtomicUsize>,
    lobby_elsewhere: Arc<AtomicUsize>,
    history_max: u64,
    /// The cluster's epoch as this node knows it (shared with the heartbeat).
    epoch: Arc<Mutex<String>>,
    orders: Sender<Order>,
    /// This node's name in Redis (random per start).
    node: String,
    /// Makes each batch's key unique.
    batches: u64,
    /// The last failed `run` sent its commands before failing (a timeout, a connection cut
    /// while waiting for the answer): they may have run.
    may_have_run: bool,
    /// Commands to Redis work (the hub's connection).
    pub commands_up: Arc<AtomicBool>,
    /// The subscriber is connected and subscribed.
    pub subscriber_up: Arc<AtomicBool>,
}

impl Cluster {
    /// Connect to Redis at `url` (failing now if it cannot be reached), read or make the
    /// cluster's epoch, and start the subscriber and heartbeat threads, which hand what they
    /// learn to the hub through `hub`.
    pub fn start(url: &str, history_max: u64, hub: Hear) -> std::result::Result<Cluster, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis {url}: {e}"))?;
        let mut conn = connect(&client).map_err(|e| format!("redis {url}: {e}"))?;
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
        let hub = Arc::new(hub);
        let beat = Heartbeat {
            client: client.clone(),
            conn: None,
            node: node.clone(),
            reap: Script::new(REAP),
            new_epoch: Script::new(NEW_EPOCH),
            epoch: Arc::new(Mutex::new(epoch)),
            lobby_here: Arc::new(AtomicUsize::new(0)),
            lobby_elsewhere: Arc::new(AtomicUsize::new(0)),
            hub: hub.clone(),
            registered: false,
        };
        let cluster = Cluster {
            client: client.clone(),
            conn: Some(conn),
            down_until: None,
            script: Script::new(PUBLISH),
            matcher: Script::new(MATCH),
            new_epoch: Script::new(NEW_EPOCH),
            queued: HashMap::new(),
            lobby_here: beat.lobby_here.clone(),
            lobby_elsewhere: beat.lobby_elsewhere.clone(),
            history_max: history_max.max(1),
            epoch: beat.epoch.clone(),
            orders,
            node: node.clone(),
            batches: 0,
            may_have_run: false,
            commands_up: Arc::new(AtomicBool::new(true)),
            subscriber_up: subscriber_up.clone(),
        };
        // Registered before it has members: a node that dies in its first second is still
        // found and its members removed.
        let mut beat = beat;
        beat.beat();
        std::thread::Builder::new()
            .name("chat-redis-beat".into())
            .spawn(move || beat.run())
            .map_err(|e| e.to_string())?;
        let me = node;
        let up = subscriber_up;
        std::thread::Builder::new()
            .name("chat-redis-sub".into())
            .spawn(move || subscriber(&client, &me, &orders_rx, &hub, &up))
            .map_err(|e| e.to_string())?;
        cluster.lobby_here.store(0, Ordering::Relaxed);
        Ok(cluster)
    }

    /// The cluster's epoch, as this node knows it.
    pub fn epoch(&self) -> String {
        self.epoch.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Redis lost its data (a seq handed out again was found): agree on a new epoch with the
    /// other nodes (the first to find it makes it) and return it.
    pub fn reset_epoch(&mut self) -> String {
        let old = self.epoch();
        let fresh = format!("{:016x}", rand::random::<u64>());
        let script = self.new_epoch.clone();
        let now: RedisResult<String> = self.run(true, |c| script.arg(&old).arg(&fresh).invoke(c));
        let epoch = now.unwrap_or(fresh);
        *self.epoch.lock().unwrap_or_else(|e| e.into_inner()) = epoch.clone();
        epoch
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
        // Once: the pipeline publishes presence, which must not go out twice.
        let done: RedisResult<()> = self.run(false, |c| {
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

    /// While the hub's connection is down, try it once (from the hub's once-a-second sweep): a
    /// node with nothing to do must still find Redis back, and `/healthz` say so.
    pub fn probe(&mut self) {
        if !self.commands_up.load(Ordering::SeqCst) {
            let _: RedisResult<String> = self.run(true, |c| redis::cmd("PING").query(c));
        }
    }

    /// This node was taken for dead and its members removed (see [`Heard::Reaped`]): put its
    /// strangers back in the shared queue (the hub registers its members again through
    /// [`Change::Joined`]).
    pub fn requeue_all(&mut self) {
        let entries: Vec<String> = self.queued.values().cloned().collect();
        if entries.is_empty() {
            return;
        }
        let done: RedisResult<()> = self.run(true, |c| {
            let mut pipe = redis::pipe();
            for e in &entries {
                pipe.lrem(QUEUE, 0, e).ignore().rpush(QUEUE, e).ignore();
            }
            pipe.query(c)
        });
        if let Err(e) = done {
            tracing::warn!(error = %e, "redis: strangers not queued again");
        }
    }

    /// Nicks in `room` on the other nodes.
    fn remote_members(&mut self, room: &str) -> Vec<String> {
        let key = members_key(room);
        let all: RedisResult<Vec<(String, String)>> = self.run(true, |c| c.hgetall(&key));
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

    /// Run `f` on the command connection. A command that fails with the connection (cut,
    /// timed out) leaves the node without one for `BACK_OFF`, and `/healthz` fails meanwhile.
    /// `again`: `f` may run twice (it changes nothing, or is idempotent), so a connection found
    /// cut is made again and `f` run once more; otherwise a command that may have run is never
    /// sent again.
    fn run<T>(
        &mut self,
        again: bool,
        f: impl Fn(&mut Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        self.may_have_run = false;
        for attempt in 0..2 {
            if self.conn.is_none() {
                if self.down_until.is_some_and(|t| Instant::now() < t) {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "redis unreachable (backing off)",
                    )));
                }
                match connect(&self.client) {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        self.went_down();
                        return Err(e);
                    }
                }
            }
            let conn = self.conn.as_mut().expect("connected above");
            match f(conn) {
                Ok(v) => {
                    self.commands_up.store(true, Ordering::SeqCst);
                    self.down_until = None;
                    return Ok(v);
                }
                Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                    self.conn = None;
                    self.may_have_run = true;
                    // A timeout: Redis is there but not answering; asking again costs another.
                    if attempt == 0 && again && !e.is_timeout() {
                        continue;
                    }
                    self.went_down();
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the second attempt returns")
    }

    fn went_down(&mut self) {
        self.conn = None;
        self.commands_up.store(false, Ordering::SeqCst);
        self.down_until = Some(Instant::now() + BACK_OFF);
    }

    fn frames(
        &mut self,
        room: &str,
        after: u64,
        count: Option<usize>,
    ) -> RedisResult<Vec<(u64, String)>> {
        let key = log_key(room);
        let start = format!("{}-1", after + 1);
        let entries: Vec<(String, Vec<(String, String)>)> = self.run(true, |c| {
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
            .run(true, |c| {
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
            .run(true, |c| redis::cmd("LPOS").arg(QUEUE).arg(&entry).query(c))
            .ok()?;
        at.map(|i| i + 1)
    }

    fn matched(&mut self) -> Vec<Matched> {
        let inbox = format!("chat:node:{}:matches", self.node);
        // Read, then remove exactly what was read (each entry names its own room, so it is
        // unique): both may run twice without losing or taking anything more.
        let taken: RedisResult<Vec<String>> = self.run(true, |c| c.lrange(&inbox, 0, -1));
        let entries = match taken {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "redis: cannot read this node's matches");
                return Vec::new();
            }
        };
        if !entries.is_empty() {
            let removed: RedisResult<()> = self.run(true, |c| {
                let mut pipe = redis::pipe();
                for e in &entries {
                    pipe.lrem(&inbox, 1, e).ignore();
                }
                pipe.query(c)
            });
            if let Err(e) = removed {
                tracing::warn!(error = %e, "redis: this node's matches stay in its inbox");
            }
        }
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

    fn requeue_all(&mut self) {
        Cluster::requeue_all(self);
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

/// Why a message of a batch has no seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpublished {
    /// Redis did not run the batch: nothing was stored.
    NotStored,
    /// The batch was sent but not answered: it may have been stored, and then it is delivered.
    Unconfirmed,
}

/// One hub batch in cluster mode: messages queued by `append`, published by `commit`.
pub struct ClusterBatch<'a> {
    cluster: &'a mut Cluster,
    queued: Vec<Msg>,
}

impl ClusterBatch<'_> {
    /// Publish the queued messages in one pipeline: each one's seq, or why it was not stored
    /// (then it reached no one).
    pub fn commit(self) -> Vec<std::result::Result<u64, Unpublished>> {
        if self.queued.is_empty() {
            return Vec::new();
        }
        let history_max = self.cluster.history_max;
        let script = self.cluster.script.clone();
        self.cluster.batches += 1;
        let key = format!("chat:batch:{}:{}", self.cluster.node, self.cluster.batches);
        let mut args: Vec<String> = vec![self.queued.len().to_string(), history_max.to_string()];
        for m in &self.queued {
            let (prefix, suffix) = frame_parts(m);
            let cid = m.cid.as_ref().map(ToString::to_string).unwrap_or_default();
            args.extend([m.room.clone(), prefix, suffix, cid]);
        }
        // The script is idempotent by the batch's key: a connection cut after Redis ran it is
        // made again and the script run again, which gives the same seqs and stores nothing
        // twice.
        let published: RedisResult<Vec<u64>> = self
            .cluster
            .run(true, |c| script.key(&key).arg(&args).invoke(c));
        match published {
            Ok(seqs) if seqs.len() == self.queued.len() => seqs.into_iter().map(Ok).collect(),
            Ok(seqs) => {
                tracing::error!(
                    sent = self.queued.len(),
                    got = seqs.len(),
                    "redis: a batch answered for the wrong number of messages"
                );
                vec![Err(Unpublished::Unconfirmed); self.queued.len()]
            }
            // Sent, but no answer came (Redis hung, or the connection was cut and could not be
            // made again): the batch may have run, or may still run. Its senders are told so,
            // not that nothing was stored.
            Err(e) if self.cluster.may_have_run => {
                tracing::warn!(error = %e, "redis: a batch went unanswered; it may have been published");
                vec![Err(Unpublished::Unconfirmed); self.queued.len()]
            }
            Err(e) => {
                tracing::warn!(error = %e, "redis: a batch was not published");
                vec![Err(Unpublished::NotStored); self.queued.len()]
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
                    .run(true, |c| {
                        redis::cmd("XRANGE").arg(&key).arg(&from).arg(&to).query(c)
                    })
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
            .run(true, |c| first_kept_on(c, room))
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
            .run(true, |c| {
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
            .run(true, |c| c.get::<_, Option<u64>>(&key))
            .map_err(|e| store_error(&e))?
            .unwrap_or(0);
        let _ = self.cluster.orders.send(Order::Subscribe(room.to_owned()));
        Ok(last)
    }

    fn remote_members(&mut self, room: &str) -> Vec<String> {
        self.cluster.remote_members(room)
    }

    fn lobby_elsewhere(&self) -> usize {
        self.cluster.lobby_elsewhere.load(Ordering::Relaxed)
    }

    fn pair_ended(&mut self, room: &str) -> bool {
        let key = ended_key(room);
        self.cluster.run(true, |c| c.exists(&key)).unwrap_or(false)
    }

    fn matchmaker(&mut self) -> Option<&mut dyn Matchmaker> {
        Some(&mut *self.cluster)
    }

    fn frames_after(&mut self, room: &str, after: u64) -> StoreResult<Vec<(u64, String)>> {
        self.cluster
            .frames(room, after, None)
            .map_err(|e| store_error(&e))
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

/// The heartbeat: a thread with a connection of its own, so a busy or blocked hub never makes
/// the node look dead. Once a second it says the node is alive (and how many are in its
/// lobby), learns the other nodes' lobbies, removes nodes that are not alive, and watches the
/// cluster's epoch. It tells the hub when the node was taken for dead while alive, and when
/// Redis lost its data.
struct Heartbeat {
    client: redis::Client,
    conn: Option<Connection>,
    node: String,
    reap: Script,
    new_epoch: Script,
    epoch: Arc<Mutex<String>>,
    lobby_here: Arc<AtomicUsize>,
    lobby_elsewhere: Arc<AtomicUsize>,
    hub: Arc<Hear>,
    /// This node's entry in `chat:nodes` was made (by a heartbeat of its own).
    registered: bool,
}

impl Heartbeat {
    fn run(mut self) {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if !self.beat() {
                return;
            }
        }
    }

    /// One beat; false once the hub is gone.
    fn beat(&mut self) -> bool {
        let conn = match self.conn.take().map_or_else(|| connect(&self.client), Ok) {
            Ok(c) => self.conn.insert(c),
            Err(e) => {
                tracing::debug!(error = %e, "redis heartbeat: cannot connect");
                return true;
            }
        };
        let node = self.node.clone();
        let ttl = u64::try_from(NODE_TTL.as_millis()).unwrap_or(5000);
        let lobby = self.lobby_here.load(Ordering::Relaxed);
        /// `SADD` of this node, every node, the lobby counts, the epoch.
        type Beat = (u64, Vec<String>, HashMap<String, usize>, Option<String>);
        let beat: RedisResult<Beat> = redis::pipe()
            .cmd("SET")
            .arg(format!("chat:node:{node}"))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .sadd("chat:nodes", &node)
            .hset(LOBBY_COUNTS, &node, lobby)
            .ignore()
            .smembers("chat:nodes")
            .hgetall(LOBBY_COUNTS)
            .get("chat:epoch")
            .query(conn);
        let (added, others, counts, epoch) = match beat {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "redis heartbeat failed");
                self.conn = None;
                return true;
            }
        };
        self.lobby_elsewhere.store(
            counts
                .iter()
                .filter(|(n, _)| **n != node)
                .map(|(_, c)| c)
                .sum(),
            Ordering::Relaxed,
        );
        // Back in the set of nodes after being in it: another node removed it (took it for
        // dead) meanwhile.
        if added == 1 && std::mem::replace(&mut self.registered, true) {
            tracing::warn!("redis: this node was taken for dead; registering its members again");
            if !(self.hub)(Heard::Reaped) {
                return false;
            }
        }
        let known = self.epoch.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if epoch.as_deref() != Some(known.as_str()) {
            // Gone (FLUSHALL, a restart without persistence) or changed by another node that
            // found the same: one new epoch for every node.
            let fresh = format!("{:016x}", rand::random::<u64>());
            let now: RedisResult<String> = self.new_epoch.arg(&known).arg(&fresh).invoke(conn);
            if let Ok(now) = now {
                if now != known {
                    tracing::error!(
                        old = known,
                        new = now,
                        "redis: the store was reset (its data lost); every member is told"
                    );
                    *self.epoch.lock().unwrap_or_else(|e| e.into_inner()) = now.clone();
                    if !(self.hub)(Heard::Reset { epoch: now }) {
                        return false;
                    }
                }
            }
        }
        for other in others.into_iter().filter(|n| *n != node) {
            let alive: RedisResult<bool> = conn.exists(format!("chat:node:{other}"));
            if alive == Ok(false) {
                let removed: RedisResult<u64> = self.reap.arg(&other).invoke(conn);
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
        true
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
