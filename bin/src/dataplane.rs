//! The backend `--proxy-mode` picks: nftables or IPVS, behind proxy-core's one trait.

use ipvs_backend::IpvsBackend;
use nft_backend::NftBackend;
use proxy_core::{Backend, Changes, Desired, SyncStats};

use crate::config::Config;

/// A backend of either mode. One lives per process, so the size difference between the
/// variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Dataplane {
    /// `--proxy-mode=nftables`.
    Nft(NftBackend),
    /// `--proxy-mode=ipvs`.
    Ipvs(IpvsBackend),
}

/// Either backend's error.
#[derive(Debug)]
pub enum DataplaneError {
    /// From the nftables backend.
    Nft(nft_backend::Error),
    /// From the IPVS backend.
    Ipvs(ipvs_backend::Error),
}

impl std::fmt::Display for DataplaneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataplaneError::Nft(e) => e.fmt(f),
            DataplaneError::Ipvs(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DataplaneError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataplaneError::Nft(e) => e.source(),
            DataplaneError::Ipvs(e) => e.source(),
        }
    }
}

impl Dataplane {
    /// The backend of the configured mode.
    pub fn new(config: &Config) -> Dataplane {
        if config.proxy_mode == "ipvs" {
            Dataplane::Ipvs(IpvsBackend::new(ipvs_backend::Config {
                scheduler: config.ipvs_scheduler.clone(),
                table: config.table.clone(),
                ..Default::default()
            }))
        } else {
            Dataplane::Nft(NftBackend::new(&config.table))
        }
    }

    /// The nftables backend, in nftables mode.
    pub fn nft(&self) -> Option<&NftBackend> {
        match self {
            Dataplane::Nft(b) => Some(b),
            Dataplane::Ipvs(_) => None,
        }
    }

    /// The nftables backend, in nftables mode.
    pub fn nft_mut(&mut self) -> Option<&mut NftBackend> {
        match self {
            Dataplane::Nft(b) => Some(b),
            Dataplane::Ipvs(_) => None,
        }
    }

    /// What a full sync would write, as text: nft tables (and, for IPVS, its virtual
    /// services as `ipvsadm` commands are not included: they depend on the kernel).
    pub fn plan(&mut self, desired: &Desired) -> String {
        match self {
            Dataplane::Nft(b) => b.plan(desired),
            Dataplane::Ipvs(b) => b.plan(desired),
        }
    }
}

impl Backend for Dataplane {
    type Error = DataplaneError;

    fn sync_full(&mut self, desired: &Desired) -> Result<SyncStats, DataplaneError> {
        match self {
            Dataplane::Nft(b) => b.sync_full(desired).map_err(DataplaneError::Nft),
            Dataplane::Ipvs(b) => b.sync_full(desired).map_err(DataplaneError::Ipvs),
        }
    }

    fn sync_partial(&mut self, changes: &Changes, desired: &Desired) -> Result<SyncStats, DataplaneError> {
        match self {
            Dataplane::Nft(b) => b.sync_partial(changes, desired).map_err(DataplaneError::Nft),
            Dataplane::Ipvs(b) => b.sync_partial(changes, desired).map_err(DataplaneError::Ipvs),
        }
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        match self {
            Dataplane::Nft(b) => b.cleanup().map_err(DataplaneError::Nft),
            Dataplane::Ipvs(b) => b.cleanup().map_err(DataplaneError::Ipvs),
        }
    }

    fn full_after_failure(&self) -> bool {
        match self {
            Dataplane::Nft(b) => b.full_after_failure(),
            Dataplane::Ipvs(b) => b.full_after_failure(),
        }
    }
}
