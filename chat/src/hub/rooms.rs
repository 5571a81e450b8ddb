//! Rooms and membership: joining (with what a recovering member missed), leaving, a
//! connection's end, which rooms the hub keeps, and the room list.

use super::*;

/// Why a join with `since` was not recovered (`joined.reason`).
#[derive(Debug, Clone, Copy)]
pub(super) enum NotRecovered {
    /// Part of the range is no longer kept.
    Gone,
    /// More was missed than one replay carries (`replay_bytes`): page history instead.
    TooMuch,
    /// `since` and `epoch` belong to another store (the data directory was reset) or are
    /// ahead of the room.
    Unknown,
    /// The store failed.
    Unavailable,
}

impl NotRecovered {
    fn as_str(self) -> &'static str {
        match self {
            NotRecovered::Gone => "gone",
            NotRecovered::TooMuch => "too_much",
            NotRecovered::Unknown => "unknown",
            NotRecovered::Unavailable => "unavailable",
        }
    }
}

impl State {
    /// `id` joins `room` and is told `joined` (with what it missed after `since`, replayed).
    /// False if the room could not be opened (the store failed; `id` was told).
    pub(super) fn join(
        &mut self,
        batch: &mut dyn Log,
        id: u64,
        room: &str,
        since: Option<u64>,
        epoch: Option<&str>,
        cid: Option<Value>,
    ) -> bool {
        let Some(member) = self.members.get(&id) else {
            return false;
        };
        let rejoin = member.rooms.iter().any(|r| r == room);
        let nick = member.nick.clone();
        // A room with no members here until now is opened: its last seq is read from the
        // store, or (cluster mode) from Redis, and the node follows the room from there.
        if self.rooms.get(room).is_none_or(|r| r.members.is_empty()) {
            match batch.open_room(room) {
                Ok(seq) => {
                    let shared = batch.shared();
                    let r = self.rooms.entry(room.to_owned()).or_default();
                    r.last_seq = r.last_seq.max(seq);
                    if shared {
                        r.held = Some(Vec::new());
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, room, "store: cannot open a room");
                    self.unavailable(id, "joining this room", room, cid);
                    return false;
                }
            }
        }
        if let Some(member) = self.members.get_mut(&id) {
            member.rooms.retain(|r| r != room);
            member.rooms.push(room.to_owned());
        }
        let r = self
            .rooms
            .get_mut(room)
            .expect("the room was opened above or has members");
        if !rejoin {
            r.members.push(id);
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
        let (replay, first_kept, not_recovered) = match since {
            None => (Vec::new(), None, None),
            Some(since) if epoch.is_some_and(|e| e != self.epoch) || since > last => (
                Vec::new(),
                batch.first_kept(room).ok().flatten(),
                Some(NotRecovered::Unknown),
            ),
            Some(since) => match batch.recover(room, since, last, self.options.replay_bytes) {
                Ok(Recovery::Complete(msgs)) => (msgs, None, None),
                Ok(Recovery::Gone { first_kept }) => {
                    (Vec::new(), first_kept, Some(NotRecovered::Gone))
                }
                Ok(Recovery::TooMuch { first_kept }) => {
                    (Vec::new(), first_kept, Some(NotRecovered::TooMuch))
                }
                Err(e) => {
                    tracing::error!(error = %e, "store: recovery");
                    self.unavailable(id, "history", room, cid.clone());
                    (Vec::new(), None, Some(NotRecovered::Unavailable))
                }
            },
        };
        let recovered = since.is_some() && not_recovered.is_none();
        if since.is_some() {
            Metrics::inc(if recovered {
                &self.metrics.recoveries_total
            } else {
                &self.metrics.recoveries_failed_total
            });
        }
        let joined = self.joined_event(
            batch,
            room,
            since.map(|_| not_recovered),
            first_kept,
            cid.clone(),
        );
        let joined = frame(joined);
        self.out_bytes += joined.len();
        self.out.push((id, Out::Read(joined)));
        self.replay(id, room, &replay);
        self.hold_if_awaited(room, out_start);
        self.reads.push(Reread::Join {
            id,
            room: room.to_owned(),
            since,
            cid,
        });
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
        true
    }

    /// The `joined` event for `room` as it is now. `recovery`: None for a join without
    /// `since`; Some(None) if everything missed is replayed; Some(Some(why)) if not.
    pub(super) fn joined_event(
        &self,
        batch: &mut dyn Log,
        room: &str,
        recovery: Option<Option<NotRecovered>>,
        first_kept: Option<u64>,
        cid: Option<Value>,
    ) -> Value {
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
            m.truncate(MAX_LISTED);
            (m, n)
        };
        let last = self.rooms.get(room).map_or(0, |r| r.last_seq);
        let recovered = matches!(recovery, Some(None));
        let mut joined = json!({
            "ev": "joined", "room": room, "seq": last, "epoch": self.epoch,
            "recovered": recovered, "members": members, "count": count,
        });
        if let Some(Some(why)) = recovery {
            joined["reason"] = json!(why.as_str());
        }
        if let Some(first) = first_kept {
            joined["first"] = json!(first);
        }
        if let Some(cid) = cid {
            joined["cid"] = cid;
        }
        joined
    }

    /// Cluster mode: frames pushed since `out_start` for a room whose subscription is not
    /// confirmed yet wait in the room instead.
    pub(super) fn hold_if_awaited(&mut self, room: &str, out_start: usize) {
        if let Some(held) = self.rooms.get_mut(room).and_then(|r| r.held.as_mut()) {
            held.extend(self.out.drain(out_start..));
        }
    }

    /// Take `id` out of `room` (not a pair room: see `end_pair`), telling every member (the
    /// leaver too, as its acknowledgement, with the request's `cid`).
    pub(super) fn leave(&mut self, id: u64, room: &str, cid: Option<Value>) {
        let nick = self.nick(id);
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let left = json!({"ev": "presence", "room": room, "state": "left", "nick": nick});
        let presence = frame(left.clone());
        r.members.retain(|m| *m != id);
        let others = r.members.clone();
        self.share(Change::Left {
            room: room.to_owned(),
            id,
            nick: nick.clone(),
        });
        self.forget_if_unused(room);
        for m in others {
            self.out.push((m, Out::Frame(presence.clone())));
        }
        self.reply(id, cid, left);
        if let Some(member) = self.members.get_mut(&id) {
            member.rooms.retain(|r| r != room);
            if member.current.as_deref() == Some(room) {
                member.current = None;
            }
        }
    }

    pub(super) fn disconnect(&mut self, batch: &mut dyn Log, id: u64) {
        if !self.members.contains_key(&id) {
            return;
        }
        self.end_pair(batch, id, false, None);
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
            self.forget_if_unused(&room);
            if room == LOBBY {
                continue;
            }
            let presence =
                frame(json!({"ev": "presence", "room": room, "state": "left", "nick": nick}));
            for m in told {
                self.out.push((m, Out::Frame(presence.clone())));
            }
        }
        self.members.remove(&id);
    }

    /// A room nobody is in leaves the hub's memory (its seq and history stay in the store, and
    /// it is opened again when someone joins): joining many names must not grow the server.
    /// On one node the lobby stays, as everyone joins it.
    pub(super) fn forget_if_unused(&mut self, room: &str) {
        if !self.rooms.get(room).is_some_and(|r| r.members.is_empty()) {
            return;
        }
        if self.clustered() {
            // Cluster mode: the room lives in Redis; this node stops following it.
            self.unfollow.push(room.to_owned());
            self.forget_own_acks(room);
            self.rooms.remove(room);
        } else if room != LOBBY {
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

    /// `rooms`: the rooms with members now (pair rooms are private), the fullest first, at
    /// most `MAX_LISTED`; the lobby's count covers every node.
    pub(super) fn list_rooms(&mut self, batch: &mut dyn Log, id: u64, cid: Option<Value>) {
        let mut rooms: Vec<(&String, &Room)> = self
            .rooms
            .iter()
            .filter(|(name, r)| {
                !name.starts_with(PAIR_PREFIX) && (!r.members.is_empty() || *name == LOBBY)
            })
            .collect();
        rooms.sort_by(|a, b| b.1.members.len().cmp(&a.1.members.len()).then(a.0.cmp(b.0)));
        let elsewhere = batch.lobby_elsewhere();
        let list: Vec<Value> = rooms
            .iter()
            .take(MAX_LISTED)
            .map(|(name, r)| {
                let members = r.members.len() + if *name == LOBBY { elsewhere } else { 0 };
                json!({"room": name, "members": members, "seq": r.last_seq})
            })
            .collect();
        self.reply(id, cid, json!({"ev": "rooms", "rooms": list}));
    }
}
