//! proxy-core's [`Backend`] over IPVS: the nftables table first, then the dummy
//! interface's addresses, then the IPVS operations in a safe order, then the addresses
//! no longer needed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use nft_backend::NftBackend;
use proxy_core::{Backend, Changes, Desired, IpFamily, SyncStats};

use crate::error::Error;
use crate::filter;
use crate::ipvs::Ipvs;
use crate::kernel::IpvsState;
use crate::link::{DEFAULT_NAME, Dummy};
use crate::plan::{Op, plan, settled};
use crate::render::{DEFAULT_SCHEDULER, IpvsDesired, node_port_addresses, render};

/// How the IPVS backend is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The scheduler of every virtual service (`rr`, `lc`, `sh`, `mh`, …).
    pub scheduler: String,
    /// The dummy interface that holds the Service IPs.
    pub interface: String,
    /// The nftables table for masquerade, reject and firewall rules.
    pub table: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            scheduler: DEFAULT_SCHEDULER.into(),
            interface: DEFAULT_NAME.into(),
            table: nft_backend::DEFAULT_TABLE.into(),
        }
    }
}

/// The IPVS backend.
pub struct IpvsBackend {
    config: Config,
    ipvs: Option<Ipvs>,
    dummy: Option<Dummy>,
    nft: NftBackend,
    /// What the kernel holds of ours after the last sync, if it went through; `None`
    /// makes the next sync read the kernel first.
    known: Option<Known>,
    last_ops: Vec<Op>,
}

impl std::fmt::Debug for IpvsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpvsBackend").field("config", &self.config).field("known", &self.known).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Known {
    services: IpvsState,
    bound: BTreeSet<IpAddr>,
}

impl IpvsBackend {
    /// A backend; nothing touches the kernel before the first sync.
    pub fn new(config: Config) -> IpvsBackend {
        let nft = NftBackend::new(&config.table);
        IpvsBackend { config, ipvs: None, dummy: None, nft, known: None, last_ops: Vec::new() }
    }

    /// The IPVS operations of the last sync, in the order they were applied.
    pub fn last_ops(&self) -> &[Op] {
        &self.last_ops
    }

    /// The nftables side as `nft` text (`kproxy plan`).
    pub fn plan(&self, desired: &Desired) -> String {
        desired
            .families()
            .map(|f| nft_backend::text::table(f.context.family, &self.config.table, &filter::family(f)))
            .collect()
    }

    fn connect(&mut self) -> Result<(&mut Ipvs, &mut Dummy), Error> {
        if self.ipvs.is_none() {
            self.ipvs = Some(Ipvs::open()?);
        }
        if self.dummy.is_none() {
            self.dummy = Some(Dummy::open(&self.config.interface)?);
        }
        Ok((self.ipvs.as_mut().expect("opened"), self.dummy.as_mut().expect("opened")))
    }

    fn sync(&mut self, desired: &Desired) -> Result<SyncStats, Error> {
        let want: IpvsDesired = render(desired, &self.config.scheduler);
        let rulesets: Vec<_> = desired.families().map(|f| (f.context.family, filter::family(f))).collect();
        let refs: Vec<(IpFamily, &nft_backend::ruleset::Ruleset)> = rulesets.iter().map(|(f, r)| (*f, r)).collect();
        let mut operations = self.nft.replace_tables(&refs)?;

        let node_ports: BTreeSet<IpAddr> = desired.families().flat_map(|f| node_port_addresses(&f.context)).collect();
        let known = self.known.take();
        let (ipvs, dummy) = self.connect()?;
        let index = dummy.ensure()?;
        let (current, bound) = match known {
            Some(k) => {
                let mut services = k.services;
                // Draining servers: their connection counts have moved since.
                for key in services.keys().copied().collect::<Vec<_>>() {
                    if want.services.get(&key).is_some_and(|w| services[&key].servers.len() > w.servers.len()) {
                        let servers = ipvs.servers(&key)?;
                        services.get_mut(&key).expect("listed").servers = servers;
                    }
                }
                (services, k.bound)
            }
            None => {
                let bound = dummy.addresses(index)?;
                let ours =
                    |addr: &IpAddr| bound.contains(addr) || want.bound.contains(addr) || node_ports.contains(addr);
                (ipvs.state(|k| ours(&k.addr))?, bound)
            }
        };

        for ip in want.bound.difference(&bound) {
            dummy.add(index, *ip)?;
            operations += 1;
        }
        let ops = plan(&current, &want.services);
        let mut first_error = None;
        let mut failed = 0;
        for op in &ops {
            if let Err(e) = ipvs.apply(op) {
                tracing::warn!(error = %e, "IPVS operation failed");
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        operations += ops.len();
        for ip in bound.difference(&want.bound) {
            dummy.remove(index, *ip)?;
            operations += 1;
        }
        self.last_ops = ops;
        if let Some(e) = first_error {
            tracing::warn!(failed, "IPVS operations failed; the next sync reads the kernel again");
            return Err(e);
        }
        self.known = Some(Known { services: settled(&current, &want.services), bound: want.bound });
        Ok(SyncStats { full: true, operations })
    }
}

impl Backend for IpvsBackend {
    type Error = Error;

    fn sync_full(&mut self, desired: &Desired) -> Result<SyncStats, Error> {
        // A full sync trusts nothing remembered: it reads the kernel (drift repair).
        self.known = None;
        self.sync(desired)
    }

    fn sync_partial(&mut self, _changes: &Changes, desired: &Desired) -> Result<SyncStats, Error> {
        let stats = self.sync(desired)?;
        Ok(SyncStats { full: false, ..stats })
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        self.known = None;
        let (ipvs, dummy) = self.connect()?;
        if let Some(index) = dummy.index()? {
            let bound = dummy.addresses(index)?;
            for key in ipvs.state(|k| bound.contains(&k.addr))?.into_keys() {
                ipvs.apply(&Op::DeleteService(key))?;
            }
            dummy.delete()?;
        }
        self.nft.cleanup()?;
        Ok(())
    }
}
