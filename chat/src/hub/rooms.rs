//! Rooms and membership: joining (with what a recovering member missed), leaving, a
//! connection's end, and which rooms the hub keeps.

use super::*;

impl State {
    pub(super) fn join(
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

    /// Cluster mode: frames pushed since `out_start` for a room whose subscription is not
    /// confirmed yet wait in the room instead.
    pub(super) fn hold_if_awaited(&mut self, room: &str, out_start: usize) {
        if let Some(held) = self.rooms.get_mut(room).and_then(|r| r.held.as_mut()) {
            held.extend(self.out.drain(out_start..));
        }
    }

    /// Take `id` out of `room` (not a pair room: see `end_pair`), telling every member (the
    /// leaver too, as its acknowledgement).
    pub(super) fn leave(&mut self, id: u64, room: &str) {
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

    pub(super) fn disconnect(&mut self, id: u64) {
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
    pub(super) fn disconnect_without_store(&mut self, id: u64) {
        self.disconnect(id);
    }

    /// A room nobody is in and nobody ever wrote to holds nothing worth keeping: joining
    /// random names must not grow the server's memory.
    pub(super) fn forget_if_unused(&mut self, room: &str) {
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

    /// Cluster mode: the rooms whose last member here left in this batch are no longer
    /// followed, unless one joined again since.
    pub(super) fn unfollow_unused(&mut self) {
        let mut rooms = std::mem::take(&mut self.unfollow);
        rooms.sort_unstable();
        rooms.dedup();
        for room in rooms {
            if self.rooms.get(&room).is_none_or(|r| r.members.is_empty()) {
                self.share(Change::Unfollowed { room });
            }
        }
    }
}
