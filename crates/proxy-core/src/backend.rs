//! The backend seam: one small trait, a sync driver, and an in-memory model backend.
//!
//! A [`Backend`] brings a dataplane to a [`Desired`] state, either wholesale
//! ([`Backend::sync_full`]) or by applying [`Changes`] computed against the last state it
//! applied ([`Backend::sync_partial`]). Each call must be atomic: all of it lands or none.
//! [`Syncer`] adds upstream's recovery contract on top: after any failure the next sync is
//! a full one, because a failed partial sync has consumed its changes. A backend that
//! recovers by itself what failed (the nftables backend, family by family) says so
//! ([`Backend::full_after_failure`]), and the retry is a partial sync instead.

use crate::desired::Desired;
use crate::diff::Changes;
use crate::engine::Plan;

/// What a successful sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Whether it was a full sync.
    pub full: bool,
    /// Backend operations sent (for nftables: netlink messages in the transaction).
    pub operations: usize,
}

/// A dataplane that can be brought to a [`Desired`] state.
pub trait Backend {
    /// The backend's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Makes the dataplane match `desired` exactly, whatever it held before (startup,
    /// recovery after a failure, periodic resync). Must not disturb established flows.
    fn sync_full(&mut self, desired: &Desired) -> Result<SyncStats, Self::Error>;

    /// Applies `changes`, which were computed against the last state this backend
    /// applied successfully; `desired` is the state after them.
    fn sync_partial(&mut self, changes: &Changes, desired: &Desired) -> Result<SyncStats, Self::Error>;

    /// Removes everything this backend ever created.
    fn cleanup(&mut self) -> Result<(), Self::Error>;

    /// Whether a failed sync must be followed by a full one (the default). A backend that
    /// keeps its own record of what each part of the dataplane holds, and brings a part
    /// whose last sync failed back in full at its next partial sync, says `false`: the
    /// retry is then a partial sync, even with no changes, and the healthy parts are not
    /// rewritten.
    fn full_after_failure(&self) -> bool {
        true
    }
}

/// Drives a backend with upstream's recovery contract.
#[derive(Debug)]
pub struct Syncer<B> {
    backend: B,
    need_full: bool,
    /// Whether the last sync failed: its retry goes to the backend even without changes.
    failed: bool,
}

impl<B: Backend> Syncer<B> {
    /// A syncer whose first sync is full.
    pub fn new(backend: B) -> Syncer<B> {
        Syncer { backend, need_full: true, failed: false }
    }

    /// Makes the next sync a full one (periodic resync, drift repair).
    pub fn request_full(&mut self) {
        self.need_full = true;
    }

    /// Whether the next sync will be full.
    pub fn needs_full(&self) -> bool {
        self.need_full
    }

    /// Applies a plan: full if the plan or the syncer asks for it, partial otherwise, and
    /// nothing at all for an empty partial plan (unless the last sync failed).
    pub fn sync(&mut self, plan: &Plan, desired: &Desired) -> Result<SyncStats, B::Error> {
        let result = if self.need_full || plan.full {
            self.backend.sync_full(desired)
        } else if plan.changes.is_empty() && !self.failed {
            Ok(SyncStats::default())
        } else {
            self.backend.sync_partial(&plan.changes, desired)
        };
        self.failed = result.is_err();
        self.need_full = self.failed && self.backend.full_after_failure();
        result
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }
}

/// An in-memory backend that records what it applied: the model every real backend is
/// checked against, and the fake for tests of code that drives a backend.
#[derive(Clone, Debug, Default)]
pub struct ModelBackend {
    /// The state as applied so far (`None` before the first sync or after cleanup).
    pub applied: Option<Desired>,
    /// Full syncs done.
    pub full_syncs: usize,
    /// Partial syncs done.
    pub partial_syncs: usize,
    /// Fail this many upcoming calls (an injected kernel error); the state is untouched.
    pub fail_next: usize,
}

/// The error [`ModelBackend`] injects.
#[derive(Debug, thiserror::Error)]
#[error("injected failure")]
pub struct InjectedFailure;

impl ModelBackend {
    fn maybe_fail(&mut self) -> Result<(), InjectedFailure> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Err(InjectedFailure);
        }
        Ok(())
    }
}

impl Backend for ModelBackend {
    type Error = InjectedFailure;

    fn sync_full(&mut self, desired: &Desired) -> Result<SyncStats, InjectedFailure> {
        self.maybe_fail()?;
        self.applied = Some(desired.clone());
        self.full_syncs += 1;
        Ok(SyncStats { full: true, operations: desired.service_port_count() })
    }

    fn sync_partial(&mut self, changes: &Changes, desired: &Desired) -> Result<SyncStats, InjectedFailure> {
        self.maybe_fail()?;
        let applied = self.applied.as_mut().expect("a partial sync follows a full one");
        applied.apply(changes);
        debug_assert_eq!(applied, desired, "changes were not computed against the applied state");
        self.partial_syncs += 1;
        Ok(SyncStats { full: false, operations: changes.len() })
    }

    fn cleanup(&mut self) -> Result<(), InjectedFailure> {
        self.maybe_fail()?;
        self.applied = None;
        Ok(())
    }
}
