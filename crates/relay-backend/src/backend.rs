//! The relay as a proxy-core [`Backend`]: the same trait and [`Desired`] the nftables and
//! IPVS backends take, so it runs beside either one and any embedder can use it.

use std::collections::BTreeMap;

use proxy_core::{Backend, Changes, Desired, SyncStats};

use crate::error::Error;
use crate::plan::{Listener, Listeners, Route};
use crate::relay::{Limits, Relay, Stats};

/// Serves every NodePort on `127.0.0.1` and `::1` through a userspace relay.
pub struct RelayBackend {
    relay: Relay,
    listeners: Listeners,
}

impl RelayBackend {
    /// Starts the relay's runtime.
    pub fn start(limits: Limits) -> Result<RelayBackend, Error> {
        Ok(RelayBackend { relay: Relay::start(limits)?, listeners: Listeners::default() })
    }

    /// What the relay has done.
    pub fn stats(&self) -> &std::sync::Arc<Stats> {
        self.relay.stats()
    }

    /// The listeners asked for.
    pub fn wanted(&self) -> &BTreeMap<Listener, Route> {
        self.listeners.wanted()
    }

    fn send(&self, full: bool) -> Result<SyncStats, Error> {
        let wanted = self.listeners.wanted();
        self.relay.apply(wanted.clone())?;
        Ok(SyncStats { full, operations: wanted.len() })
    }
}

impl Backend for RelayBackend {
    type Error = Error;

    fn sync_full(&mut self, desired: &Desired) -> Result<SyncStats, Error> {
        self.listeners.full(desired);
        self.send(true)
    }

    /// Sends the listeners to the relay only when they changed, or when some failed to
    /// open (each send retries them): most syncs change no NodePort.
    fn sync_partial(&mut self, changes: &Changes, desired: &Desired) -> Result<SyncStats, Error> {
        if self.listeners.partial(changes, desired) || self.relay.stats().failing() > 0 {
            return self.send(false);
        }
        Ok(SyncStats::default())
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        self.listeners.clear();
        self.send(true).map(|_| ())
    }
}
