//! Messages: a `say` numbered, stored and handed to the room; in cluster mode, what Redis
//! published; and what happens to a batch's messages when the store refuses them.

use super::*;

impl State {
    /// A plain-text frame: said in the member's current room. There is no fallback: with no
    /// current room, or a pair that ended, it is refused (plain text meant for one person must
    /// never reach others).
    pub(super) fn say_here(&mut self, batch: &mut dyn Log, id: u64, text: String, at: Instant) {
        let Some(member) = self.members.get(&id) else {
            return;
        };
        match member.current.clone() {
            None => self.refuse(
                id,
                Refusal::new(
                    "no_room",
                    "you are in no room now: join one, or say{room, text} in one",
                ),
            ),
            Some(room) if member.ended_pair.as_deref() == Some(room.as_str()) => {
                let again = member.pair.as_deref().map_or_else(String::new, |p| {
                    format!(
                        "; you are matched again in {p}: join it (or say{{room}}) to talk there"
                    )
                });
                self.refuse(
                    id,
                    Refusal::new(
                        "peer_left",
                        format!("your partner has left {room}; nothing was sent{again}"),
                    )
                    .with_room(&room),
                )
            }
            Some(room) => self.say(batch, id, room, text, None, at),
        }
    }

    /// `say{room, text}`: numbered, stored and handed to the room's members after the commit;
    /// the sender's copy, its acknowledgement, alone carries its `cid`.
    pub(super) fn say(
        &mut self,
        batch: &mut dyn Log,
        id: u64,
        room: String,
        text: String,
        cid: Option<Value>,
        at: Instant,
    ) {
        let Some(member) = self.members.get(&id) else {
            return;
        };
        if member.ended_pair.as_deref() == Some(room.as_str()) {
            return self.refuse(
                id,
                Refusal::new(
                    "peer_left",
                    format!("your partner has left {room}; nothing was sent"),
                )
                .with_room(&room)
                .with_cid(cid),
            );
        }
        if !member.rooms.contains(&room) {
            return self.refuse(id, not_member(&room).with_cid(cid));
        }
        let from = member.nick.clone();
        let r = self.rooms.get_mut(&room).expect("a member's room exists");
        let msg = Msg {
            room,
            seq: r.last_seq + 1,
            from,
            text,
            ts: now_ms(),
            cid,
        };
        if let Err(e) = batch.append(&msg) {
            tracing::error!(error = %e, "store: append");
            return self.unavailable(id, "storing your message", &msg.room, msg.cid);
        }
        Metrics::inc(&self.metrics.messages_total);
        if batch.shared() {
            // Numbered and delivered by Redis (Remote); told to the sender if not stored.
            self.log.record(
                "msg",
                json!({"id": id, "room": msg.room, "bytes": msg.text.len()}),
            );
            self.said.push((id, msg.room, msg.cid, at));
            return;
        }
        if !self.seqs_before.contains_key(&msg.room) {
            self.seqs_before.insert(msg.room.clone(), r.last_seq);
        }
        r.last_seq = msg.seq;
        // Written once for the room; the sender's copy is the same text with its `cid` first.
        let shared = msg.to_json(false);
        let own = msg
            .cid
            .as_ref()
            .map(|cid| SharedFrame::text(protocol::cid_first(&shared, cid)));
        let shared = SharedFrame::text(shared);
        self.out_bytes += shared.len() + own.as_ref().unwrap_or(&shared).len();
        for &m in &r.members {
            let f = match &own {
                Some(own) if m == id => own.clone(),
                _ => shared.clone(),
            };
            self.out.push((m, Out::Msg(f)));
        }
        self.log.record(
            "msg",
            json!({"id": id, "room": msg.room, "seq": msg.seq, "bytes": msg.text.len()}),
        );
        self.said.push((id, msg.room, msg.cid, at));
    }

    /// Cluster mode: a published message of `room`. Each seq is delivered once, in order: one
    /// already handed out is skipped, and a gap (published while this node was not yet or no
    /// longer subscribed) is filled from the room's log first; what the log no longer has
    /// (or could not be read) is told to the members as a `gap`.
    pub(super) fn remote(&mut self, batch: &mut dyn Log, room: &str, seq: u64, frame: String) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        if seq <= r.last_seq {
            return;
        }
        if seq > r.last_seq + 1 {
            let last = r.last_seq;
            let filled = batch.frames_after(room, last).unwrap_or_else(|e| {
                tracing::warn!(error = %e, room, "redis: cannot read the room's log");
                Vec::new()
            });
            for (s, f) in filled.into_iter().take_while(|(s, _)| *s < seq) {
                self.published(room, s, f);
            }
        }
        self.published(room, seq, frame);
    }

    /// Hand out `room`'s message `seq`, after telling its members of any seqs before it that
    /// will never come.
    pub(super) fn published(&mut self, room: &str, seq: u64, frame: String) {
        let Some(last) = self.rooms.get(room).map(|r| r.last_seq) else {
            return;
        };
        if seq > last + 1 {
            self.gap(room, last, seq);
        }
        self.hand_out(room, seq, frame);
    }

    /// Messages `after+1 .. next-1` of `room` will never reach this node's members (the log no
    /// longer has them): say so, in the room's order, so no client takes the jump for
    /// nothing missed. A client can page what history still has.
    fn gap(&mut self, room: &str, after: u64, next: u64) {
        Metrics::inc(&self.metrics.gaps_total);
        tracing::warn!(room, after, next, "a gap the room's log cannot fill");
        self.log
            .record("gap", json!({"room": room, "after": after, "next": next}));
        let gap = frame(json!({"ev": "gap", "room": room, "after": after, "next": next}));
        let members = self
            .rooms
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        let out_start = self.out.len();
        for m in members {
            self.out.push((m, Out::Frame(gap.clone())));
        }
        self.hold_if_awaited(room, out_start);
    }

    /// Cluster mode: Redis lost its data, and the cluster has a new `epoch`. Every seq this
    /// node knew is void: each member is closed with 1012 (service restart), reconnects,
    /// and is told on its recovering joins that the old numbers cannot be recovered; what was
    /// said since the loss is in the new history.
    pub(super) fn reset(&mut self, epoch: String) {
        if epoch == self.epoch {
            return;
        }
        tracing::error!(
            old = self.epoch,
            new = epoch,
            "the store was reset: every member is told to reconnect"
        );
        self.log
            .record("store_reset", json!({"old": self.epoch, "epoch": epoch}));
        Metrics::inc(&self.metrics.store_resets_total);
        self.epoch = epoch;
        for r in self.rooms.values_mut() {
            r.last_seq = 0;
        }
        self.own_acks.clear();
        for m in self.members.values_mut() {
            if !m.closing {
                m.closing = true;
                let _ = m.tx.close(1012, "the message store was reset; reconnect");
            }
        }
    }

    /// Cluster mode: the other nodes took this one for dead and removed its members: register
    /// them again in their rooms (pair rooms excepted: those pairs were ended, and the partners
    /// told) and its strangers in the queue.
    pub(super) fn register_again(&mut self, batch: &mut dyn Log) {
        let joined: Vec<Change> = self
            .members
            .iter()
            .filter(|(_, m)| !m.closing)
            .flat_map(|(id, m)| {
                m.rooms
                    .iter()
                    .filter(|r| !r.starts_with(PAIR_PREFIX))
                    .map(|room| Change::Joined {
                        room: room.clone(),
                        id: *id,
                        nick: m.nick.clone(),
                    })
            })
            .collect();
        self.log
            .record("registered_again", json!({"memberships": joined.len()}));
        for change in joined {
            self.share(change);
        }
        if let Some(queue) = batch.matchmaker() {
            queue.requeue_all();
        }
    }

    pub(super) fn hand_out(&mut self, room: &str, seq: u64, frame: String) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if seq <= r.last_seq {
            return;
        }
        r.last_seq = seq;
        let members = r.members.clone();
        // The sender's copy is its acknowledgement: it alone carries the sender's `cid`.
        let own = self.own_acks.get_mut(room).and_then(|acks| {
            let at = acks.iter().position(|(s, _, _)| *s == seq)?;
            Some(acks.swap_remove(at))
        });
        let shared = SharedFrame::text(frame.clone());
        let own = own.map(|(_, id, cid)| (id, SharedFrame::text(with_cid(&frame, &cid))));
        let out_start = self.out.len();
        for m in members {
            let f = match &own {
                Some((id, f)) if *id == m => f.clone(),
                _ => shared.clone(),
            };
            self.out.push((m, Out::Msg(f)));
        }
        self.hold_if_awaited(room, out_start);
    }

    /// Cluster mode: a room no longer followed takes its senders' pending acknowledgements.
    pub(super) fn forget_own_acks(&mut self, room: &str) {
        self.own_acks.remove(room);
    }

    /// Cluster mode: the batch's messages that Redis did not store reach no one; their
    /// senders are told. Those stored wait for their published copy, which their senders get
    /// with their `cid`. True if Redis handed out a seq this node had passed: Redis lost its
    /// data (see `reset`).
    pub(super) fn refuse_unpublished(&mut self, results: &[Result<u64, Unpublished>]) -> bool {
        let said = std::mem::take(&mut self.said);
        let now = Instant::now();
        let mut lost = false;
        for ((id, room, cid, at), result) in said.into_iter().zip(results) {
            match result {
                Ok(seq) => {
                    lost |= self.rooms.get(&room).is_some_and(|r| *seq <= r.last_seq);
                    self.metrics
                        .delivery_latency
                        .observe(now.duration_since(at));
                    if let Some(cid) = cid {
                        if self.rooms.contains_key(&room) {
                            self.own_acks.entry(room).or_default().push((*seq, id, cid));
                        }
                    }
                }
                Err(why) => {
                    Metrics::inc(&self.metrics.store_errors_total);
                    Metrics::dec(&self.metrics.messages_total);
                    tracing::debug!(id, ?why, "redis: not published");
                    let refusal = match why {
                        Unpublished::NotStored => Refusal::new(
                            "unavailable",
                            "the message could not be stored (Redis unreachable); nothing was sent",
                        ),
                        Unpublished::Unconfirmed => Refusal::new(
                            "unconfirmed",
                            "Redis did not answer in time: the message may have been stored, and then it reaches the room (without your cid); do not send it again blindly",
                        ),
                    };
                    self.refuse(id, refusal.with_room(&room).with_cid(cid));
                }
            }
        }
        lost
    }

    /// The batch is committed: what it held for the case of a failure is let go.
    pub(super) fn committed(&mut self) {
        let now = Instant::now();
        for (_, _, _, at) in self.said.drain(..) {
            self.metrics
                .delivery_latency
                .observe(now.duration_since(at));
        }
        self.seqs_before.clear();
        self.reads.clear();
    }

    /// The commit failed: nothing the batch wrote reaches anyone. Its messages are refused to
    /// their senders (`unavailable`, with their `cid`); the rooms' seqs go back to what they
    /// were (the seqs handed out were never shown); every answer read from the transaction is
    /// dropped and given again from what is committed (a `joined` without a replay, a history
    /// page refused).
    pub(super) fn refuse_batch(&mut self) {
        self.out.retain(|(_, o)| matches!(o, Out::Frame(_)));
        for (id, room, cid, _) in std::mem::take(&mut self.said) {
            Metrics::dec(&self.metrics.messages_total);
            self.unavailable(id, "storing your message", &room, cid);
        }
        for (room, seq) in std::mem::take(&mut self.seqs_before) {
            if let Some(r) = self.rooms.get_mut(&room) {
                r.last_seq = seq;
            }
        }
        let mut none = store::Unavailable;
        for read in std::mem::take(&mut self.reads) {
            match read {
                Reread::Join {
                    id,
                    room,
                    since,
                    cid,
                } => {
                    if !self.is_member(id, &room) {
                        continue;
                    }
                    let recovery = since.map(|_| Some(rooms::NotRecovered::Unavailable));
                    let joined = self.joined_event(&mut none, &room, recovery, None, cid.clone());
                    self.send(id, joined);
                    if since.is_some() {
                        self.unavailable(id, "history", &room, cid);
                    }
                }
                Reread::History { id, room, cid } => self.unavailable(id, "history", &room, cid),
            }
        }
    }
}

/// A framed event (`{...}`) with a `cid` added.
fn with_cid(frame: &str, cid: &Value) -> String {
    let body = frame.strip_suffix('}').unwrap_or(frame);
    format!("{body},\"cid\":{cid}}}")
}
