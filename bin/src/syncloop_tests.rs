//! The sync loop's rules, step by step on a fake clock: no threads, no sleeps.

use super::*;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// A loop and the clock it is driven with.
struct Run {
    l: SyncLoop,
    t0: Instant,
    now: Instant,
}

impl Run {
    fn new(drift_watched: bool) -> Run {
        Run::with(Periods { min_sync: S, sync: 30 * S, drift_watched, retry_full: true })
    }

    fn with(periods: Periods) -> Run {
        let t0 = Instant::now();
        Run { l: SyncLoop::new(t0, periods), t0, now: t0 }
    }

    fn at(&mut self, offset: Duration) -> &mut Run {
        self.now = self.t0 + offset;
        self
    }

    fn input(&mut self, input: Input) -> &mut Run {
        self.l.input(self.now, input);
        self
    }

    fn decide(&mut self) -> Decision {
        self.l.decide(self.now)
    }

    /// Decides, expects a sync, and records its outcome.
    fn sync(&mut self, ok: bool) -> bool {
        match self.decide() {
            Decision::Sync { full } => {
                self.l.synced(self.now, ok, full);
                full
            }
            other => panic!("expected a sync at {:?}, got {other:?}", self.now - self.t0),
        }
    }

    fn waits_until(&mut self, offset: Duration) {
        assert_eq!(self.decide(), Decision::Wait { until: self.t0 + offset }, "at {:?}", self.now - self.t0);
    }
}

#[test]
fn nothing_syncs_before_the_sources_are_read() {
    let mut r = Run::new(true);
    r.waits_until(30 * S);
    r.input(Input::Changed).waits_until(30 * S);
    r.at(5 * S).input(Input::Listed);
    assert!(r.sync(true), "the first sync is full");
    r.waits_until(35 * S);
}

#[test]
fn bursts_of_two_then_one_per_min_sync_period() {
    let mut r = Run::new(true);
    r.input(Input::Listed);
    assert!(r.sync(true));
    r.input(Input::Changed);
    assert!(!r.sync(true), "a second sync right away is allowed, and partial");
    r.input(Input::Changed);
    r.waits_until(S);
    r.at(S);
    assert!(!r.sync(true));
    // Half a period later only half a token has come back.
    r.at(S + 500 * MS).input(Input::Changed);
    r.waits_until(2 * S);
    // After a quiet spell the bucket holds two again.
    r.at(10 * S);
    r.sync(true);
    r.input(Input::Changed);
    r.sync(true);
    r.input(Input::Changed);
    r.waits_until(11 * S);
}

#[test]
fn a_failed_sync_is_retried_full_with_backoff() {
    let mut r = Run::new(true);
    r.input(Input::Listed);
    assert!(r.sync(true));
    r.at(10 * S).input(Input::Changed);
    assert!(!r.sync(false), "a partial sync fails");
    r.waits_until(11 * S);
    r.at(11 * S);
    assert!(r.sync(false), "the retry is full");
    r.waits_until(13 * S);
    r.at(13 * S);
    r.sync(false);
    r.waits_until(17 * S);
    // The backoff stops doubling at the sync period.
    let mut at = 17 * S;
    for _ in 0..5 {
        r.at(at);
        assert!(r.sync(false));
        at += r.l.retry_at().unwrap() - r.now;
    }
    assert_eq!(r.l.retry_at().unwrap() - r.now, 30 * S);
    r.at(at);
    assert!(r.sync(true));
    assert_eq!(r.l.retry_at(), None);
    // Success resets the backoff.
    r.at(at + 5 * S).input(Input::Changed);
    r.sync(false);
    r.waits_until(at + 6 * S);
}

/// With the nftables backend a failed family is synced in full by the backend itself: the
/// retry stays partial (the healthy family is not rewritten), unless a full sync was due.
#[test]
fn a_failed_sync_is_retried_partial_when_the_backend_recovers_per_family() {
    let mut r = Run::with(Periods { min_sync: S, sync: 30 * S, drift_watched: true, retry_full: false });
    r.input(Input::Listed);
    assert!(r.sync(false), "the first sync is full, and fails");
    r.at(1 * S);
    assert!(r.sync(true), "a failed full sync is retried full");
    r.at(10 * S).input(Input::Changed);
    assert!(!r.sync(false), "a partial sync fails");
    r.waits_until(11 * S);
    r.at(11 * S);
    assert!(!r.sync(true), "the retry is partial");
    assert_eq!(r.l.retry_at(), None);
}

#[test]
fn periodic_syncs_are_partial_and_full_hourly_with_drift_detection() {
    let mut r = Run::new(true);
    r.input(Input::Listed);
    assert!(r.sync(true));
    r.waits_until(30 * S);
    r.at(30 * S);
    assert!(!r.sync(true), "the periodic sync is partial");
    r.waits_until(60 * S);
    let mut full = Vec::new();
    let mut t = 60 * S;
    while t <= FULL_SYNC_PERIOD {
        r.at(t);
        full.push(r.sync(true));
        t += 30 * S;
    }
    assert_eq!(full.iter().filter(|f| **f).count(), 1, "one full sync in the hour");
    assert_eq!(full.last(), Some(&true), "at the hour");
}

#[test]
fn without_drift_detection_every_periodic_sync_is_full() {
    let mut r = Run::new(false);
    r.input(Input::Listed);
    assert!(r.sync(true));
    r.at(30 * S);
    assert!(r.sync(true));
    r.at(60 * S);
    assert!(r.sync(true));

    // Drift detection stopping part-way turns them full too.
    let mut r = Run::new(true);
    r.input(Input::Listed);
    r.sync(true);
    r.at(30 * S);
    assert!(!r.sync(true));
    r.at(40 * S).input(Input::DriftUnwatched);
    r.waits_until(60 * S);
    r.at(60 * S);
    assert!(r.sync(true));
}

#[test]
fn drift_is_repaired_at_once_with_a_full_sync() {
    let mut r = Run::new(true);
    r.input(Input::Listed);
    r.sync(true);
    r.input(Input::Changed);
    r.sync(true);
    // The burst is spent, yet drift is repaired now.
    r.at(100 * MS).input(Input::Drift);
    assert!(r.sync(true), "the repair is full");
    // It refilled the bucket: one more sync may follow at once, then the limit holds.
    r.input(Input::Changed);
    assert!(!r.sync(true));
    r.input(Input::Changed);
    r.waits_until(1100 * MS);
}

#[test]
fn health_follows_the_oldest_queued_change() {
    let timeout = 60 * S;
    let mut r = Run::new(true);
    assert!(r.l.health().healthy(r.now, timeout), "healthy while starting");
    r.at(59 * S);
    assert!(r.l.health().healthy(r.now, timeout));
    r.at(61 * S);
    assert!(r.l.health().healthy(r.now, timeout), "healthy until the sources are read, as upstream");
    r.input(Input::Listed);
    r.at(122 * S);
    assert!(!r.l.health().healthy(r.now, timeout), "read, never synced: unhealthy after the timeout");
    r.sync(true);
    assert!(r.l.health().healthy(r.now, timeout));
    assert_eq!(r.l.health().last_synced, Some(r.now));
    // A change waits on failing syncs: unhealthy once it has waited past the timeout.
    r.at(100 * S).input(Input::Changed);
    r.sync(false);
    r.at(150 * S);
    assert!(r.l.health().healthy(r.now, timeout));
    r.input(Input::Changed);
    r.at(161 * S);
    assert!(!r.l.health().healthy(r.now, timeout), "the first queued change counts");
    r.sync(true);
    assert!(r.l.health().healthy(r.now, timeout));
}
