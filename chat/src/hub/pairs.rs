//! Matchmaking: the queue of strangers, pairs and their rooms, and a pair's end.

use super::*;

impl State {
    /// `id` leaves its pair, if it has one: the partner is told `peer_left`, leaves the room,
    /// and goes back in the queue (cluster mode: the partner's node is told if it is another).
    /// `tell_self`: `id` gets the room's `presence left` too.
    pub(super) fn end_pair(&mut self, id: u64, tell_self: bool) {
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

    /// An ended pair room leaves the hub (nobody can join it again, so its seq is never needed
    /// here; on one node its history stays in the store): what waited for its subscription
    /// goes out first. Returns its members.
    pub(super) fn close_pair_room(&mut self, room: &str) -> Vec<u64> {
        let Some(r) = self.rooms.remove(room) else {
            return Vec::new();
        };
        self.out.extend(r.held.into_iter().flatten());
        r.members
    }

    /// `id` stops waiting for a stranger.
    pub(super) fn unqueue(&mut self, id: u64) {
        let Some(m) = self.members.get_mut(&id).filter(|m| m.queued) else {
            return;
        };
        m.queued = false;
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
            self.send(id, json!({"ev": "queued", "pos": pos + 1}));
        }
    }

    /// `id` asks for a stranger (`match`, or `next` once out of its pair): it is queued, or
    /// told its place if it waits already (in the shared queue, cluster mode); then the queue
    /// is paired.
    pub(super) fn seek_stranger(&mut self, batch: &mut dyn Log, id: u64) {
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
    pub(super) fn partner_left(&mut self, room: &str) {
        let partners = self.close_pair_room(room);
        self.release_partners(room, partners);
    }

    /// Pair queued members in order, never two who were just paired with each other.
    pub(super) fn make_pairs(&mut self, batch: &mut dyn Log) {
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
    pub(super) fn pair_room(&mut self) -> String {
        self.pairs_made += 1;
        format!(
            "{PAIR_PREFIX}{:x}-{}{}",
            now_ms(),
            self.pairs_made,
            self.pair_tag
        )
    }

    pub(super) fn pair(&mut self, batch: &mut dyn Log, a: u64, b: u64, room: String) {
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
    pub(super) fn matched_elsewhere(&mut self, batch: &mut dyn Log, m: Matched) {
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
}
