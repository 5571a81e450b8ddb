//! Finding a dead peer: any bytes from it prove it alive; silence past the interval earns a
//! ping, and silence past the ping's timeout means it is gone. A state machine over instants and
//! the stream's read counter; the session acts on what it says.

use std::time::{Duration, Instant};

use tungstenite::Bytes;

use crate::deadline::after;
use crate::Config;

/// What the session should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Beat {
    Nothing,
    /// Send a ping with this payload (queued now, written by the pass's flush).
    Ping(Bytes),
    /// No traffic since our ping, past its timeout.
    Dead,
}

/// Heartbeat settings (see [`ConfigBuilder::ping_interval`](crate::ConfigBuilder::ping_interval))
/// and where the connection stands.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    payload: Bytes,
    /// When bytes last arrived, and the stream's read counter then.
    last_input: (Instant, u64),
    /// When our unanswered heartbeat ping went out.
    awaiting: Option<Instant>,
}

impl Heartbeat {
    /// The config's heartbeat, if it asks for one, starting now with `read` bytes read so far.
    pub(crate) fn new(config: &Config, read: u64) -> Option<Self> {
        config.ping_interval().map(|interval| Heartbeat {
            interval,
            timeout: config.pong_timeout(),
            payload: Bytes::from(config.ping_payload().to_vec()),
            last_input: (Instant::now(), read),
            awaiting: None,
        })
    }

    /// When to look again.
    pub(crate) fn deadline(&self) -> Instant {
        match self.awaiting {
            Some(sent) => after(sent, self.timeout),
            None => after(self.last_input.0, self.interval),
        }
    }

    /// The application held reading up for `by`: the peer was not watched meanwhile, so its
    /// clock starts again where it stopped.
    pub(crate) fn shift(&mut self, by: Duration) {
        self.last_input.0 = after(self.last_input.0, by);
        if let Some(sent) = &mut self.awaiting {
            *sent = after(*sent, by);
        }
    }

    /// At `now`, with `read` bytes read from the stream so far.
    pub(crate) fn check(&mut self, now: Instant, read: u64) -> Beat {
        if read != self.last_input.1 {
            self.last_input = (now, read);
            self.awaiting = None;
        }
        match self.awaiting {
            Some(sent) if now >= after(sent, self.timeout) => Beat::Dead,
            None if now >= after(self.last_input.0, self.interval) => {
                self.awaiting = Some(now);
                Beat::Ping(self.payload.clone())
            }
            _ => Beat::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> (Heartbeat, Instant) {
        let config = Config::builder()
            .ping_interval(Some(Duration::from_secs(10)))
            .pong_timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let hb = Heartbeat::new(&config, 0).unwrap();
        let start = hb.last_input.0;
        (hb, start)
    }

    #[test]
    fn silence_earns_a_ping_then_more_silence_is_death() {
        let (mut hb, t0) = heartbeat();
        assert_eq!(hb.check(t0 + Duration::from_secs(9), 0), Beat::Nothing);
        assert!(matches!(
            hb.check(t0 + Duration::from_secs(10), 0),
            Beat::Ping(_)
        ));
        assert_eq!(hb.deadline(), t0 + Duration::from_secs(13));
        assert_eq!(hb.check(t0 + Duration::from_secs(12), 0), Beat::Nothing);
        assert_eq!(hb.check(t0 + Duration::from_secs(13), 0), Beat::Dead);
    }

    #[test]
    fn any_bytes_prove_the_peer_alive() {
        let (mut hb, t0) = heartbeat();
        assert!(matches!(
            hb.check(t0 + Duration::from_secs(10), 0),
            Beat::Ping(_)
        ));
        // Something arrived (not necessarily the pong): alive, and the interval starts again.
        assert_eq!(hb.check(t0 + Duration::from_secs(12), 5), Beat::Nothing);
        assert_eq!(hb.deadline(), t0 + Duration::from_secs(22));
        assert_eq!(hb.check(t0 + Duration::from_secs(21), 5), Beat::Nothing);
    }
}
