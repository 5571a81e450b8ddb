//! Reconnection: the policy, what happens to sends meanwhile, and what each attempt reports.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// When and how often to reconnect after a connection ends without the user asking (an error,
/// a dead peer, or a close started by the server). A close or force-quit by the user, or
/// dropping the client, never reconnects and stops a reconnection under way, even in the middle
/// of a backoff wait or of an attempt that is still opening (its name lookup included).
///
/// The delay before attempt `n` is `min_delay * 2^(n-1)`, capped at `max_delay`, with up to
/// `jitter` of it taken off at random so that many clients do not come back at once.
///
/// ```
/// use std::time::Duration;
/// let policy = syncws::Reconnect::new()
///     .min_delay(Duration::from_millis(200))
///     .max_delay(Duration::from_secs(10))
///     .max_attempts(Some(20));
/// let config = syncws::Config::builder().reconnect(Some(policy)).build()?;
/// # Ok::<(), syncws::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Reconnect {
    pub(crate) min_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) jitter: f64,
    pub(crate) min_uptime: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            max_attempts: None,
            jitter: 0.5,
            min_uptime: Duration::from_secs(5),
        }
    }
}

impl Reconnect {
    /// The defaults: 100 ms doubling to 30 s, unlimited attempts, jitter 0.5, a connection
    /// counts as a success once it has been up 5 s.
    pub fn new() -> Self {
        Reconnect::default()
    }
    /// Delay before the first attempt. Defaults to 100 ms.
    #[must_use]
    pub fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }
    /// Cap on the delay. Defaults to 30 s.
    #[must_use]
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }
    /// Give up after this many failed attempts in a row (`None`: never; a connection that ends
    /// before [`min_uptime`](Self::min_uptime) is a failed attempt). Defaults to `None`.
    #[must_use]
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }
    /// How long a new connection must stay up before it counts as a success, which starts the
    /// next outage's backoff again from `min_delay` (and its attempts from 1). A connection that
    /// ends sooner (a server that accepts and drops at once, an overloaded one that closes
    /// everyone) counts as a failed attempt: the backoff goes on growing and `max_attempts`
    /// goes on counting, so a flapping server is not redialled every `min_delay` forever, and
    /// a set of thousands does not come back as a herd. Defaults to 5 s; zero resets the backoff
    /// on every successful handshake.
    #[must_use]
    pub fn min_uptime(mut self, uptime: Duration) -> Self {
        self.min_uptime = uptime;
        self
    }
    /// Fraction of each delay (0.0 to 1.0) that may be taken off at random. Defaults to 0.5.
    #[must_use]
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "reconnect jitter {} is outside 0.0..=1.0",
                self.jitter
            ));
        }
        if self.min_delay > self.max_delay {
            return Err("reconnect min_delay exceeds max_delay".into());
        }
        if self.max_attempts == Some(0) {
            return Err("reconnect max_attempts must be at least 1 (or None)".into());
        }
        Ok(())
    }

    /// The delay before attempt `attempt` (1-based), with `random` in 0.0..1.0.
    pub(crate) fn delay(&self, attempt: u32, random: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let base = self
            .min_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay);
        // Never longer than `base`; the conversion only fails for a base near Duration::MAX.
        Duration::try_from_secs_f64(base.as_secs_f64() * (1.0 - self.jitter * random))
            .map_or(base, |d| d.min(base))
    }
}

/// What happens to messages sent while a reconnecting client is disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhileDisconnected {
    /// Refuse them with [`Error::Disconnected`](crate::Error::Disconnected). The default. A
    /// hook's send returns the error; a [`CommandSender`](crate::CommandSender) cannot know the
    /// connection's state when it sends, so its send is accepted and the error is reported to
    /// `on_error` / `Event::Error`, once per message.
    #[default]
    Refuse,
    /// Hold up to `max_bytes` of payload and send them, in order, right after `on_activated` of
    /// the new connection; past the bound, [`Error::QueueFull`](crate::Error::QueueFull).
    /// Messages the ended connection still had queued (not yet taken by its socket) are held
    /// first and sent again too, so nothing accepted is dropped by a reconnect; those its
    /// socket had taken may have been lost with it. Held messages are dropped only if
    /// reconnecting gives up, reported as [`Error::Unsent`](crate::Error::Unsent).
    Queue {
        /// Bound on held payload bytes.
        max_bytes: usize,
    },
}

/// One reconnection attempt, as reported to
/// [`Handler::on_reconnecting`](crate::Handler::on_reconnecting) and
/// [`Event::Reconnecting`](crate::Event::Reconnecting), before its delay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectAttempt {
    /// 1 for the first attempt after a connection ended; counts on while connections end
    /// before [`Reconnect::min_uptime`], and starts again from 1 after one that lasted.
    pub attempt: u32,
    /// How long the client waits before this attempt.
    pub delay: Duration,
    /// What ended the connection or failed the previous attempt (its typed form was reported
    /// through `on_error` / `Event::Error` just before), or `None` after a close by the server.
    pub last_error: Option<String>,
}

/// A cheap random number in 0.0..1.0 for jitter (no cryptographic use).
pub(crate) fn jitter_random() -> f64 {
    // std's randomly keyed hasher: new keys per call, no extra dependency.
    let x = RandomState::new().build_hasher().finish();
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_only_shortens() {
        let p = Reconnect::new()
            .min_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1))
            .jitter(0.5);
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, 0.0), Duration::from_millis(200));
        assert_eq!(p.delay(4, 0.0), Duration::from_millis(800));
        assert_eq!(p.delay(5, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(1000, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(1, 0.999_999), Duration::from_nanos(50_000_050));
        for _ in 0..100 {
            let r = jitter_random();
            assert!((0.0..1.0).contains(&r));
        }
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(Reconnect::new().jitter(1.5).validate().is_err());
        assert!(Reconnect::new().max_attempts(Some(0)).validate().is_err());
        assert!(Reconnect::new()
            .min_delay(Duration::from_secs(2))
            .max_delay(Duration::from_secs(1))
            .validate()
            .is_err());
    }
}
