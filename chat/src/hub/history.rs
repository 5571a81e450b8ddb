//! History and recovery: what a member missed, replayed in pages.

use super::*;

impl State {
    /// Replay `msgs` to `id` as `history` frames (`replay: true`), oldest first, each under the
    /// replay size.
    pub(super) fn replay(&mut self, id: u64, room: &str, msgs: &[Msg]) {
        let mut page: Vec<Value> = Vec::new();
        let mut bytes = 0;
        let mut rest = msgs.len();
        for msg in msgs {
            let v = msg.to_value();
            let len = msg.text.len() + 128;
            if !page.is_empty()
                && (page.len() >= REPLAY_PAGE || bytes + len > self.options.replay_bytes)
            {
                let msgs = std::mem::take(&mut page);
                self.send(id, json!({"ev": "history", "room": room, "msgs": msgs, "more": rest > 0, "replay": true}));
                bytes = 0;
            }
            page.push(v);
            bytes += len;
            rest -= 1;
        }
        if !page.is_empty() {
            self.send(
                id,
                json!({"ev": "history", "room": room, "msgs": page, "more": false, "replay": true}),
            );
        }
    }
}
