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
        if !self.is_member(id, &room) {
            return self.refuse(id, not_member(&room).with_cid(cid));
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
            return self.unavailable(id, "storing your message", &room, cid);
        }
        Metrics::inc(&self.metrics.messages_total);
        if batch.shared() {
            // Numbered and delivered by Redis (Remote); told to the sender if not stored.
            self.said.push((id, room.clone(), cid, at));
            self.log.record(
                "msg",
                json!({"id": id, "room": room, "bytes": msg.text.len()}),
            );
            return;
        }
        self.seqs_before.entry(room.clone()).or_insert(r.last_seq);
        r.last_seq = msg.seq;
        let recipients = r.members.clone();
        let shared = frame(msg.to_value(false));
        let own = if cid.is_some() {
            frame(msg.to_value(true))
        } else {
            shared.clone()
        };
        self.out_bytes += shared.len() + own.len();
        for m in recipients {
            let f = if m == id { own.clone() } else { shared.clone() };
            self.out.push((m, Out::Msg(f)));
        }
        self.said.push((id, room.clone(), cid, at));
        self.log.record(
            "msg",
            json!({"id": id, "room": room, "seq": msg.seq, "bytes": msg.text.len()}),
        );
    }

    /// Cluster mode: a published message of `room`. Each seq is delivered once, in order: one
    /// already handed out is skipped, and a gap (published while this node was not yet or no
    /// longer subscribed) is filled from the room's log first.
    pub(super) fn remote(&mut self, batch: &mut dyn Log, room: &str, seq: u64, frame: String) {
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
    /// with their `cid`.
    pub(super) fn refuse_unpublished(&mut self, results: &[Result<u64, String>]) {
        let said = std::mem::take(&mut self.said);
        let now = Instant::now();
        for ((id, room, cid, at), result) in said.into_iter().zip(results) {
            match result {
                Ok(seq) => {
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
                    tracing::debug!(id, why, "redis: not published");
                    self.refuse(
                        id,
                        Refusal::new(
                            "unavailable",
                            "the message could not be stored (Redis unreachable); nothing was sent",
                        )
                        .with_room(&room)
                        .with_cid(cid),
                    );
                }
            }
        }
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
