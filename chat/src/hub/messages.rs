//! Messages: a `say` numbered, stored and handed to the room; in cluster mode, what Redis
//! published; and what happens to a batch's messages when the store refuses them.

use super::*;

impl State {
    pub(super) fn say(
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
        let frame = SharedFrame::text(frame);
        let out_start = self.out.len();
        for m in r.members.clone() {
            self.out.push((m, Out::Msg(frame.clone())));
        }
        self.hold_if_awaited(room, out_start);
    }

    /// Cluster mode: the batch's messages that Redis did not store reach no one; their
    /// senders are told.
    pub(super) fn refuse_unpublished(&mut self, results: &[Result<u64, String>]) {
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

    /// The commit failed: the batch's messages reach no one, their senders are told, and the
    /// rooms' sequence numbers go back to what the store holds.
    pub(super) fn refuse_batch(&mut self, store: &Store) {
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
}
