//! History and recovery: pages of a room's past, and what a recovering member missed, each
//! frame bounded in bytes (`reply_bytes`) whatever the messages' sizes.

use super::*;

impl State {
    /// `history{room, before, limit}`: the newest messages before `before`, oldest first, as
    /// many as `limit` and one frame of `reply_bytes` allow (at least one); `more` says older
    /// ones are kept, to be asked for with `before` = the first seq of this page.
    pub(super) fn history(
        &mut self,
        batch: &mut dyn Log,
        id: u64,
        room: String,
        before: Option<u64>,
        limit: Option<usize>,
        cid: Option<Value>,
    ) {
        if let Err(r) = check_room(&room) {
            return self.refuse(id, r.with_room(&room).with_cid(cid));
        }
        if room.starts_with(PAIR_PREFIX) && !self.is_member(id, &room) {
            return self.refuse(id, not_member(&room).with_cid(cid));
        }
        let limit = limit
            .unwrap_or(DEFAULT_HISTORY_PAGE)
            .clamp(1, MAX_HISTORY_PAGE);
        let budget = self.options.reply_bytes;
        let (msgs, mut more) = match batch.page_before(&room, before, limit, budget) {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(error = %e, "store: history");
                return self.unavailable(id, "history", &room, cid);
            }
        };
        let own = self.nick(id);
        // Newest first, while the frame stays under the budget.
        let mut encoded = Vec::with_capacity(msgs.len());
        let mut bytes = 0;
        for m in msgs.iter().rev() {
            let e = m.to_json(m.from == own);
            if !encoded.is_empty() && bytes + e.len() > budget {
                more = true;
                break;
            }
            bytes += e.len() + 1;
            encoded.push(e);
        }
        encoded.reverse();
        let page = SharedFrame::text(history_frame(&room, &encoded, more, false, cid.as_ref()));
        self.out_bytes += page.len();
        self.out.push((id, Out::Read(page)));
        self.reads.push(Reread::History { id, room, cid });
    }

    /// Replay `msgs` to `id` as `history` frames (`replay: true`), oldest first, each at most
    /// `REPLAY_PAGE` messages and `reply_bytes` (at least one message).
    pub(super) fn replay(&mut self, id: u64, room: &str, msgs: &[Msg]) {
        let own = self.nick(id);
        let budget = self.options.reply_bytes;
        let mut page: Vec<String> = Vec::new();
        let mut bytes = 0;
        for (i, msg) in msgs.iter().enumerate() {
            let e = msg.to_json(msg.from == own);
            if !page.is_empty() && (page.len() >= REPLAY_PAGE || bytes + e.len() > budget) {
                self.replay_page(id, room, std::mem::take(&mut page), true);
                bytes = 0;
            }
            bytes += e.len() + 1;
            page.push(e);
            if i + 1 == msgs.len() {
                self.replay_page(id, room, std::mem::take(&mut page), false);
            }
        }
    }

    fn replay_page(&mut self, id: u64, room: &str, msgs: Vec<String>, more: bool) {
        let page = SharedFrame::text(history_frame(room, &msgs, more, true, None));
        self.out_bytes += page.len();
        self.out.push((id, Out::Read(page)));
    }
}

/// A `history` event around messages already serialized (each a `msg` event's JSON): built as
/// a string, so each message is copied once and not turned into a tree and back.
fn history_frame(
    room: &str,
    msgs: &[String],
    more: bool,
    replay: bool,
    cid: Option<&Value>,
) -> String {
    let mut out = String::with_capacity(msgs.iter().map(|m| m.len() + 1).sum::<usize>() + 96);
    out.push_str("{\"ev\":\"history\",\"room\":");
    out.push_str(&Value::from(room).to_string());
    out.push_str(",\"msgs\":[");
    for (i, m) in msgs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(m);
    }
    out.push_str("],\"more\":");
    out.push_str(if more { "true" } else { "false" });
    if replay {
        out.push_str(",\"replay\":true");
    }
    if let Some(cid) = cid {
        out.push_str(",\"cid\":");
        out.push_str(&cid.to_string());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_frame_is_the_event_the_tree_would_give() {
        let m = Msg {
            room: "r".into(),
            seq: 3,
            from: "ann".into(),
            text: "a \"quoted\" line\n".into(),
            ts: 7,
            cid: Some(json!("c1")),
        };
        let built = history_frame(
            "r",
            &[m.to_json(true), m.to_json(false)],
            true,
            true,
            Some(&json!(9)),
        );
        let parsed: Value = serde_json::from_str(&built).unwrap();
        assert_eq!(
            parsed,
            json!({"ev": "history", "room": "r", "msgs": [m.to_value(true), m.to_value(false)],
                   "more": true, "replay": true, "cid": 9})
        );
    }
}
