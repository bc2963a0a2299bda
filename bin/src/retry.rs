//! How long a failed watch waits before it tries again.

use std::time::Duration;

use kube::runtime::utils::Backoff;

/// Delays between retries of a failed watch: 100 ms, doubling up to 1 s. kube-runtime's
/// default climbs to 30 s, which would leave a returning API server's changes (and the
/// relist after a 410 Gone) waiting up to 30 s; a proxy must catch up within a couple of
/// seconds. One retry per second per watch is a small load for an API server to bear.
pub(crate) struct Retry {
    next: Duration,
}

impl Retry {
    const FIRST: Duration = Duration::from_millis(100);
    pub(crate) const MAX: Duration = Duration::from_secs(1);
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { next: Retry::FIRST }
    }
}

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(Retry::MAX);
        Some(now)
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.next = Retry::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_retries_back_off_to_one_second_and_reset() {
        let mut retry = Retry::default();
        let delays: Vec<u64> = retry.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        retry.reset();
        assert_eq!(retry.next(), Some(Duration::from_millis(100)));
    }
}
