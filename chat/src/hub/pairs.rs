//! Matchmaking: the queue of strangers, pairs and their rooms, and a pair's end.

use super::*;

impl State {
    /// `id` leaves its pair, if it has one: the partner is told `peer_left`, leaves the room,
    /// and goes back in the queue (cluster mode: the partner's node is told if it is another).
    /// `tell_self`: `id` gets the room's `presence left` too (with `cid`).
    pub(super) fn end_pair(
        &mut self,
        batch: &mut dyn Log,
        id: u64,
        tell_self: bool,
        cid: Option<Value>,
    ) {
        let Some(room) = self.members.get_mut(&id).and_then(|m| m.pair.take()) else {
            return;
        };
        if let Some(m) = self.members.get_mut(&id) {
            m.rooms.retain(|r| *r != room);
            // It stays the current room, ended: plain text meant for the partner is refused.
            m.ended_pair = Some(room.clone());
        }
        if !self.rooms.contains_key(&room) {
            return;
        }
        let partners: Vec<u64> = self
            .close_pair_room(batch, &room)
            .into_iter()
            .filter(|m| *m != id)
            .collect();
        let nick = self.nick(id);
        if tell_self {
            self.reply(
                id,
                cid,
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
    pub(super) fn release_partners(&mut self, room: &str, partners: Vec<u64>) {
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

    /// An ended pair room leaves the hub, and its conversation the store (nobody can join it
    /// again): what waited for its subscription goes out first. Returns its members.
    pub(super) fn close_pair_room(&mut self, batch: &mut dyn Log, room: &str) -> Vec<u64> {
        let Some(r) = self.rooms.remove(room) else {
            return Vec::new();
        };
        if let Err(e) = batch.drop_room(room) {
            tracing::warn!(error = %e, room, "store: an ended pair's history stays");
        }
        self.forget_own_acks(room);
        self.out.extend(r.held.into_iter().flatten());
        r.members
    }

    /// `id` stops waiting for a stranger.
    pub(super) fn unqueue(&mut self, id: u64) {
        let Some(m) = self.members.get_mut(&id).filter(|m| m.queued) else {
            return;
        };
        m.queued = false;
        m.asked = false;
        self.queue.retain(|q| *q != id);
        self.share(Change::Unqueued { id });
    }

    pub(super) fn enqueue(&mut self, id: u64) {
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

    pub(super) fn tell_position(&mut self, id: u64) {
        if let Some(pos) = self.queue.iter().position(|q| *q == id) {
            self.answer_seek(id, json!({"ev": "queued", "pos": pos + 1}));
        }
    }

    /// `queued` or `matched` for member `id`: the first answer after its `match` or `next`
    /// carries that request's `cid`.
    fn answer_seek(&mut self, id: u64, event: Value) {
        let cid = self.members.get_mut(&id).and_then(|m| m.seek_cid.take());
        self.reply(id, cid, event);
    }

    /// `id` asks for a stranger (`match`, or `next` once out of its pair): it is queued, or
    /// told its place if it waits already (in the shared queue, cluster mode); then the queue
    /// is paired. The pair found becomes its current room.
    pub(super) fn seek_stranger(&mut self, batch: &mut dyn Log, id: u64, cid: Option<Value>) {
        if self.rooms_full(id) {
            let refusal = self.too_many_rooms().with_cid(cid);
            return self.refuse(id, refusal);
        }
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        m.asked = true;
        m.seek_cid = cid;
        if !m.queued {
            self.enqueue(id);
        } else if let Some(queue) = batch.matchmaker() {
            match queue.position(id) {
                Some(pos) => self.answer_seek(id, json!({"ev": "queued", "pos": pos})),
                // Queued here but not in the shared queue (the entry was lost, e.g. this node
                // was taken for dead): seek again, so the asker is always answered.
                None => {
                    self.queue.retain(|q| *q != id);
                    self.queue.push_back(id);
                }
            }
        } else {
            self.tell_position(id);
        }
        self.make_pairs(batch);
    }

    /// Cluster mode: the partner on another node left the pair `room` (or its node died).
    pub(super) fn partner_left(&mut self, batch: &mut dyn Log, room: &str) {
        let partners = self.close_pair_room(batch, room);
        self.release_partners(room, partners);
    }

    /// Pair queued members in order, never two who were just paired with each other, nor one
    /// that is being closed.
    pub(super) fn make_pairs(&mut self, batch: &mut dyn Log) {
        if batch.matchmaker().is_some() {
            return self.make_pairs_shared(batch);
        }
        let closing: Vec<u64> = self
            .queue
            .iter()
            .copied()
            .filter(|q| self.members.get(q).is_none_or(|m| m.closing))
            .collect();
        for id in closing {
            self.unqueue(id);
            self.queue.retain(|q| *q != id);
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
            if !self.pair(batch, a, b, room) {
                // The store failed: both were told; they wait no longer.
                for id in [a, b] {
                    if let Some(m) = self.members.get_mut(&id) {
                        m.queued = false;
                        m.asked = false;
                    }
                }
            }
        }
        // Positions are told on entering the queue (and on asking again with `match`), not on
        // every move: telling the whole queue each time would cost n^2 frames when thousands
        // wait at once.
    }

    /// Cluster mode: each member waiting here is paired through the shared queue with the
    /// first fitting stranger on any node, or waits there.
    pub(super) fn make_pairs_shared(&mut self, batch: &mut dyn Log) {
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
                Ok(Sought::Queued(pos)) => {
                    self.answer_seek(id, json!({"ev": "queued", "pos": pos}))
                }
                Ok(Sought::Paired(Peer { local: Some(b), .. })) => {
                    self.pair(batch, id, b, who.room);
                }
                Ok(Sought::Paired(peer)) => {
                    self.pair_across(batch, id, &who.room, &peer.key, &peer.nick);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis: matchmaking");
                    let cid = self.members.get_mut(&id).and_then(|m| {
                        m.queued = false;
                        m.asked = false;
                        m.seek_cid.take()
                    });
                    self.refuse(
                        id,
                        Refusal::new(
                            "unavailable",
                            "matchmaking is out of reach (Redis unreachable); ask again",
                        )
                        .with_cid(cid),
                    );
                }
            }
        }
    }

    /// A new pair room's name, unique across restarts (the time, and a counter for pairs made
    /// in one millisecond) and across nodes.
    pub(super) fn pair_room(&mut self) -> String {
        self.pairs_made += 1;
        format!(
            "{PAIR_PREFIX}{:x}-{}{}",
            now_ms(),
            self.pairs_made,
            self.pair_tag
        )
    }

    /// Pair `a` and `b` in `room`; false if the room could not be opened (both were told).
    pub(super) fn pair(&mut self, batch: &mut dyn Log, a: u64, b: u64, room: String) -> bool {
        for (id, peer) in [(a, b), (b, a)] {
            let key = batch.matchmaker().map(|q| q.key(peer));
            if let Some(m) = self.members.get_mut(&id) {
                m.queued = false;
                m.pair = Some(room.clone());
                m.last_peer = Some(peer);
                m.last_peer_key = key;
            }
        }
        if !self.join(batch, a, &room, None, None, None) {
            for id in [a, b] {
                if let Some(m) = self.members.get_mut(&id) {
                    m.pair = None;
                }
            }
            self.unavailable(b, "matchmaking", &room, None);
            return false;
        }
        self.join(batch, b, &room, None, None, None);
        for (me, peer) in [(a, b), (b, a)] {
            self.take_up_pair(me, &room);
            let peer_nick = self.nick(peer);
            self.matched(me, &room, &peer_nick);
        }
        Metrics::inc(&self.metrics.matches_total);
        self.log
            .record("match", json!({"room": room, "ids": [a, b]}));
        true
    }

    /// Tell `id` it is matched with `peer` in `room`, in the room's order (after its `joined`).
    fn matched(&mut self, id: u64, room: &str, peer: &str) {
        let out_start = self.out.len();
        self.answer_seek(id, json!({"ev": "matched", "room": room, "peer": peer}));
        self.hold_if_awaited(room, out_start);
    }

    /// A member that asked for this pair (`match`, `next`) talks in it with plain text from
    /// now on; one put back in the queue by a partner's leaving keeps its ended pair as its
    /// current room until it chooses (plain text it typed for the last partner must not reach
    /// the next).
    fn take_up_pair(&mut self, id: u64, room: &str) {
        if let Some(m) = self.members.get_mut(&id) {
            if std::mem::take(&mut m.asked) {
                m.current = Some(room.to_owned());
            }
        }
    }

    /// Cluster mode: `id` is paired in `room` with a member of another node. Each side joins
    /// the room on its own node's time, so the partner may have written already: `id` gets the
    /// room from its start (`joined{recovered: true}` and the replay).
    pub(super) fn pair_across(
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
        if !self.join(batch, id, room, Some(0), None, None) {
            if let Some(m) = self.members.get_mut(&id) {
                m.pair = None;
            }
            self.share(Change::PairEnded {
                room: room.to_owned(),
            });
            return;
        }
        self.take_up_pair(id, room);
        self.matched(id, room, peer_nick);
        Metrics::inc(&self.metrics.matches_total);
        self.log.record(
            "match",
            json!({"room": room, "ids": [id], "peer": peer_key}),
        );
    }

    /// Cluster mode: another node paired this node's member `m.id`. If it is still waiting
    /// (and has room for one more) it joins the pair; if not (gone, unmatched, paired
    /// meanwhile) the partner is told it left.
    pub(super) fn matched_elsewhere(&mut self, batch: &mut dyn Log, m: Matched) {
        let waiting = self
            .members
            .get(&m.id)
            .is_some_and(|member| member.queued && member.pair.is_none() && !member.closing);
        if !waiting || self.rooms_full(m.id) {
            return self.share(Change::PairEnded { room: m.room });
        }
        self.queue.retain(|q| *q != m.id);
        self.pair_across(batch, m.id, &m.room, &m.peer_key, &m.peer_nick);
    }
}
