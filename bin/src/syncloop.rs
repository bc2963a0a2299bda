//! When to sync: the daemon's timing rules as a state machine with an injected clock.
//!
//! Inputs are what happened (a source changed something, the sources finished their first
//! read, someone else changed our tables, a sync succeeded or failed) and the current
//! time; the output is a [`Decision`]: sync now (full or partial), or wait until a given
//! instant unless an input arrives first. Nothing here sleeps, spawns or reads a clock, so
//! every rule is table-tested in `syncloop_tests.rs` without threads.
//!
//! The rules are upstream kube-proxy's sync-loop contract:
//!
//! - nothing is synced until the sources have been read once;
//! - syncs come in bursts of at most two, then one per `--min-sync-period` (the
//!   BoundedFrequencyRunner's token bucket);
//! - a sync runs at least every `--sync-period`; with drift detection on, upstream's
//!   nftables mode makes these partial and rewrites the table only hourly;
//! - a failed sync is retried with exponential backoff (1 s doubling, at most the sync
//!   period), as a full sync where the backend needs one ([`Periods::retry_full`]).
//!
//! Beyond upstream: a foreign change to our tables is repaired at once by a full sync,
//! without waiting for the rate limit.

use std::time::{Duration, Instant};

/// How often the nftables mode rewrites its whole table while drift detection is on.
/// Upstream's nftables proxier makes its periodic sync partial and a full one hourly; the
/// drift monitor repairs foreign changes as they happen, so this only bounds what a missed
/// notification could cost. At 5k Services × 50 endpoints a full sync takes seconds, which
/// every 30 s would be a tenth of a core. Without the monitor, and in IPVS mode (whose full
/// sync reads the kernel back), every periodic sync is full.
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// The first delay after a failed sync; it doubles up to the sync period.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// A source changed something the rules depend on.
    Changed,
    /// The sources have been read once: syncing may start.
    Listed,
    /// Someone else changed our tables.
    Drift,
    /// Drift detection stopped: from now on every periodic sync is full.
    DriftUnwatched,
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Sync now; `full` asks for a full sync (the backend may still do one without it).
    Sync { full: bool },
    /// Nothing to do until this instant, or until an input arrives.
    Wait { until: Instant },
}

/// The periods the loop keeps.
#[derive(Clone, Copy, Debug)]
pub struct Periods {
    /// `--min-sync-period`.
    pub min_sync: Duration,
    /// `--sync-period`.
    pub sync: Duration,
    /// Whether drift detection runs, so that periodic syncs may be partial.
    pub drift_watched: bool,
    /// Whether a failed sync is retried as a full one. The nftables backend needs not:
    /// each family commits alone, and a family whose last transaction failed gets a full
    /// sync of its own while the other stays partial. IPVS, without transactions, does.
    pub retry_full: bool,
}

/// kube-proxy's sync rate limit: bursts of up to two syncs, then one per
/// `--min-sync-period`.
#[derive(Clone, Debug)]
struct Burst {
    period: Duration,
    tokens: f64,
    at: Instant,
}

impl Burst {
    const SIZE: f64 = 2.0;

    fn tokens_at(&self, now: Instant) -> f64 {
        if self.period.is_zero() {
            return Self::SIZE;
        }
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() / self.period.as_secs_f64();
        (self.tokens + refilled).min(Self::SIZE)
    }

    /// When the next sync may start.
    fn next_allowed(&self, now: Instant) -> Instant {
        let tokens = self.tokens_at(now);
        if tokens >= 1.0 { now } else { now + self.period.mul_f64(1.0 - tokens) }
    }

    fn take(&mut self, now: Instant) {
        self.tokens = (self.tokens_at(now) - 1.0).max(0.0);
        self.at = now;
    }

    fn refill(&mut self, now: Instant) {
        self.tokens = Self::SIZE;
        self.at = now;
    }
}

/// The sync loop's state.
#[derive(Clone, Debug)]
pub struct SyncLoop {
    periods: Periods,
    burst: Burst,
    listed: bool,
    /// A sync is due (changes queued, a periodic sync, a retry).
    pending: bool,
    /// The next sync must be full.
    full_due: bool,
    next_periodic: Instant,
    next_full: Instant,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Since when changes have waited for a sync (kube-proxy's oldest queued update).
    queued_since: Option<Instant>,
    last_synced: Option<Instant>,
}

impl SyncLoop {
    /// A loop started at `now`: its first sync is full and waits for [`Input::Listed`].
    pub fn new(now: Instant, periods: Periods) -> SyncLoop {
        let mut l = SyncLoop {
            periods,
            burst: Burst { period: periods.min_sync, tokens: Burst::SIZE, at: now },
            listed: false,
            pending: true,
            full_due: true,
            next_periodic: now + periods.sync,
            next_full: now,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            // Healthy until the sources are read, as upstream (whose health server reports
            // healthy until its first sync); from then on, changes wait.
            queued_since: None,
            last_synced: None,
        };
        l.next_full = now + l.full_period();
        l
    }

    fn full_period(&self) -> Duration {
        if self.periods.drift_watched { FULL_SYNC_PERIOD.max(self.periods.sync) } else { self.periods.sync }
    }

    /// Takes an input. Returns whether it queued work (for health and metrics).
    pub fn input(&mut self, now: Instant, input: Input) -> bool {
        match input {
            Input::Changed => {}
            Input::Listed => self.listed = true,
            Input::Drift => {
                self.full_due = true;
                // Repair at once, without waiting for the min sync period.
                self.burst.refill(now);
            }
            Input::DriftUnwatched => {
                self.periods.drift_watched = false;
                self.next_full = self.next_full.min(self.next_periodic);
                return false;
            }
        }
        self.pending = true;
        self.queued_since.get_or_insert(now);
        true
    }

    /// What to do at `now`. Periodic and hourly-full syncs fall due here.
    pub fn decide(&mut self, now: Instant) -> Decision {
        if now >= self.next_full {
            self.full_due = true;
            self.pending = true;
            self.next_full = now + self.full_period();
        } else if now >= self.next_periodic {
            self.pending = true;
            self.next_periodic = now + self.periods.sync;
        }
        if !(self.listed && self.pending) {
            return Decision::Wait { until: self.next_full.min(self.next_periodic) };
        }
        let earliest = self.burst.next_allowed(now).max(self.retry_at.unwrap_or(now));
        if now >= earliest { Decision::Sync { full: self.full_due } } else { Decision::Wait { until: earliest } }
    }

    /// Records a sync that ended at `now`; `full` says whether it was one.
    pub fn synced(&mut self, now: Instant, ok: bool, full: bool) {
        self.burst.take(now);
        if ok {
            self.pending = false;
            self.queued_since = None;
            self.last_synced = Some(now);
            self.next_periodic = now + self.periods.sync;
            self.retry_at = None;
            self.backoff = FIRST_BACKOFF;
            if full {
                self.full_due = false;
                self.next_full = now + self.full_period();
            }
        } else {
            self.full_due |= self.periods.retry_full;
            self.retry_at = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(self.periods.sync.max(FIRST_BACKOFF));
        }
    }

    /// When the next retry of a failed sync is due, if one failed.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// What the health endpoints report.
    pub fn health(&self) -> Freshness {
        Freshness { queued_since: self.queued_since, last_synced: self.last_synced }
    }
}

/// How current the rules are, as the health endpoints report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Freshness {
    /// Since when changes have waited for a sync.
    pub queued_since: Option<Instant>,
    /// When the last successful sync ended.
    pub last_synced: Option<Instant>,
}

impl Freshness {
    /// Whether the rules are current enough: no change has waited longer than `timeout`
    /// (kube-proxy's healthz rule, with twice the sync period as the timeout).
    pub fn healthy(&self, now: Instant, timeout: Duration) -> bool {
        self.queued_since.is_none_or(|q| now.saturating_duration_since(q) < timeout)
    }
}

#[cfg(test)]
#[path = "syncloop_tests.rs"]
mod tests;
