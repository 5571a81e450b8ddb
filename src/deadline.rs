//! Deadlines from durations the user chose: `Instant + Duration` panics on overflow, and a
//! duration such as `Duration::MAX` (a common way to say "forever") would overflow. Every
//! deadline is computed here, saturating to a time so far off it never comes.

use std::time::{Duration, Instant};

/// Longer than any program runs (a hundred years), and far from overflowing an `Instant`.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + d`, or a deadline that never comes if that would overflow.
pub(crate) fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(FOREVER))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_duration_gives_a_deadline_without_panicking() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        let far = after(now, Duration::MAX);
        assert!(far >= now + Duration::from_secs(99 * 365 * 24 * 3600));
    }
}
