//! Delivery: a batch's frames handed to the connections after the commit, the per-member
//! backlog and the slow-consumer close; the idle sweep and the shutdown's close.

use super::*;

impl State {
    pub(super) fn backlogged(&self) -> bool {
        !self.backlogged.is_empty()
    }

    /// Hand this batch's frames to their connections, in order, after what earlier batches
    /// left waiting for them (and its events to the log's writer). A frame the connection's channel has no room for waits in its
    /// backlog; once what waits for the connection (the backlog, its command channel and its
    /// outbox, all counted in bytes) passes `outbox_bytes`, it is a slow consumer: closed with
    /// 4008, counted, logged, and its backlog dropped.
    pub(super) fn deliver(&mut self) {
        self.metrics
            .rooms
            .store(self.rooms.len() as u64, Ordering::Relaxed);
        let limit = self.options.outbox_bytes;
        for (id, out) in std::mem::take(&mut self.out) {
            let Some(member) = self.members.get_mut(&id) else {
                continue;
            };
            if member.closing {
                continue;
            }
            let item = match out {
                Out::Msg(f) => (f, true),
                Out::Frame(f) | Out::Read(f) => (f, false),
            };
            member.backlog_bytes += item.0.len();
            member.backlog.push_back(item);
            if !member.listed {
                member.listed = true;
                self.backlogged.push(id);
            }
        }
        let mut slow = Vec::new();
        let ids = std::mem::take(&mut self.backlogged);
        for id in ids {
            let Some(member) = self.members.get_mut(&id) else {
                continue;
            };
            member.listed = false;
            if member.backlog.is_empty() {
                continue;
            }
            if member.closing {
                member.backlog.clear();
                member.backlog_bytes = 0;
                continue;
            }
            while let Some((frame, is_msg)) = member.backlog.pop_front() {
                let len = frame.len();
                match member.tx.try_send(Command::SendShared(frame)) {
                    Ok(()) => {
                        member.backlog_bytes -= len;
                        if is_msg {
                            Metrics::inc(&self.metrics.deliveries_total);
                            Metrics::add(&self.metrics.bytes_out_total, len as u64);
                        }
                    }
                    Err(TrySendError::Full(Command::SendShared(frame))) => {
                        member.backlog.push_front((frame, is_msg));
                        break;
                    }
                    // The connection is ending; its Disconnect is on the way.
                    Err(_) => {
                        member.closing = true;
                        break;
                    }
                }
            }
            let queued = usize::try_from(member.metrics.queued_bytes())
                .unwrap_or(usize::MAX)
                .saturating_add(member.tx.queued_bytes());
            if !member.backlog.is_empty() {
                if member.backlog_bytes.saturating_add(queued) > limit {
                    slow.push(id);
                } else {
                    member.listed = true;
                    self.backlogged.push(id);
                }
            }
        }
        for id in slow {
            let Some(member) = self.members.get_mut(&id) else {
                continue;
            };
            member.closing = true;
            member.backlog.clear();
            member.backlog_bytes = 0;
            let _ = member.tx.close(SLOW_CONSUMER, "slow consumer");
            Metrics::inc(&self.metrics.slow_consumer_closes_total);
            tracing::info!(id, "slow consumer: closed with 4008");
            self.log.record("slow_consumer", json!({"id": id}));
        }
        // The batch's events go to the log's writer together.
        self.log.send();
    }

    pub(super) fn sweep_idle(&mut self) {
        let Some(idle) = self.options.idle_timeout else {
            return;
        };
        let cutoff = now_ms() - i64::try_from(idle.as_millis()).unwrap_or(i64::MAX);
        for (id, m) in &mut self.members {
            if !m.closing && m.last_active.load(Ordering::Relaxed) < cutoff {
                m.closing = true;
                let _ = m.tx.close(1000, "idle timeout");
                Metrics::inc(&self.metrics.idle_closes_total);
                self.log.record("idle_close", json!({"id": id}));
            }
        }
    }

    pub(super) fn close_all(&mut self) {
        for m in self.members.values_mut() {
            m.closing = true;
            let _ = m.tx.close(1001, "server shutting down");
        }
    }
}
