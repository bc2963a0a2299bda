//! proxy-core's [`Backend`] over IPVS: the nftables table first, then the dummy
//! interface's addresses, then the IPVS operations in a safe order, then the addresses
//! no longer needed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use nft_client::Client;
use nft_client::ruleset::Ruleset;
use proxy_core::{Backend, Changes, Desired, IpFamily, SyncStats};

use crate::error::Error;
use crate::filter;
use crate::ipvs::Ipvs;
use crate::kernel::IpvsState;
use crate::link::{DEFAULT_NAME, Dummy};
use crate::plan::{Op, plan, settled};
use crate::render::{DEFAULT_SCHEDULER, IpvsDesired, render};

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
            table: nft_client::DEFAULT_TABLE.into(),
        }
    }
}

/// The IPVS backend.
pub struct IpvsBackend {
    config: Config,
    ipvs: Option<Ipvs>,
    dummy: Option<Dummy>,
    nft: Client,
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
    /// The dummy interface's index then.
    index: u32,
}

impl IpvsBackend {
    /// A backend; nothing touches the kernel before the first sync.
    pub fn new(config: Config) -> IpvsBackend {
        let nft = Client::new();
        IpvsBackend { config, ipvs: None, dummy: None, nft, known: None, last_ops: Vec::new() }
    }

    /// The IPVS operations of the last sync, in the order they were applied.
    pub fn last_ops(&self) -> &[Op] {
        &self.last_ops
    }

    /// The nftables side as `nft` text (`kproxy plan`), as if the dummy interface were
    /// empty.
    pub fn plan(&self, desired: &Desired) -> String {
        let want = render(desired, &self.config.scheduler, &BTreeSet::new());
        let tables = filter::tables(desired, &want.node_ports);
        tables.iter().map(|(family, ruleset)| nft_client::text::table(*family, &self.config.table, ruleset)).collect()
    }

    /// Opens the IPVS and rtnetlink sockets unless open: [`Error::NoIpvs`] before anything
    /// is written, on a kernel without IPVS.
    fn connect(&mut self) -> Result<(), Error> {
        if self.ipvs.is_none() {
            self.ipvs = Some(Ipvs::open()?);
        }
        if self.dummy.is_none() {
            self.dummy = Some(Dummy::open(&self.config.interface)?);
        }
        Ok(())
    }

    fn sync(&mut self, desired: &Desired) -> Result<SyncStats, Error> {
        let known = self.known.take();
        self.connect()?;
        let (ipvs, dummy) = (self.ipvs.as_mut().expect("connected"), self.dummy.as_mut().expect("connected"));
        let index = dummy.ensure()?;
        // A dummy interface recreated by someone else has lost its addresses: re-read all.
        let known = known.filter(|k| k.index == index);
        let on_dummy = match &known {
            Some(k) => k.bound.clone(),
            None => dummy.addresses(index)?,
        };
        let want: IpvsDesired = render(desired, &self.config.scheduler, &on_dummy);
        let current = match known {
            Some(k) => {
                let mut services = k.services;
                // Servers no longer wanted are draining: their connection counts moved.
                for (key, entry) in services.iter_mut() {
                    let Some(w) = want.services.get(key) else { continue };
                    if entry.servers.keys().any(|a| !w.servers.contains_key(a)) {
                        entry.servers = ipvs.servers(key)?;
                    }
                }
                services
            }
            None => {
                let ours = |a: &IpAddr| on_dummy.contains(a) || want.bound.contains(a) || want.node_ports.contains(a);
                ipvs.state(|k| ours(&k.addr))?
            }
        };

        // nftables first: its masquerade and reject rules are in place before IPVS takes
        // a new frontend's traffic.
        let tables = filter::tables(desired, &want.node_ports);
        let refs: Vec<(IpFamily, &Ruleset)> = tables.iter().map(|(f, r)| (*f, r)).collect();
        let mut operations = self.nft.replace_tables(&self.config.table, &refs)?;

        // Then addresses, IPVS, and stale addresses; a failure is logged and the rest
        // goes on, so that one bad object does not block every other Service.
        let mut failures = Failures::default();
        for ip in want.bound.difference(&on_dummy) {
            failures.note(dummy.add(index, *ip));
            operations += 1;
        }
        let ops = plan(&current, &want.services);
        for op in &ops {
            failures.note(ipvs.apply(op));
        }
        operations += ops.len();
        // An address leaves only once all went well: a virtual service whose deletion
        // failed stays ours (its address still on the dummy) for the next sync to retry.
        if failures.first.is_none() {
            for ip in on_dummy.difference(&want.bound) {
                failures.note(dummy.remove(index, *ip));
                operations += 1;
            }
        }
        self.last_ops = ops;
        if let Some(e) = failures.first {
            tracing::warn!(failed = failures.count, "IPVS sync incomplete; the next sync reads the kernel again");
            return Err(e);
        }
        self.known = Some(Known { services: settled(&current, &want.services), bound: want.bound, index });
        Ok(SyncStats { full: true, operations })
    }
}

/// The failures of one sync: the first is returned, all are logged.
#[derive(Default)]
struct Failures {
    first: Option<Error>,
    count: usize,
}

impl Failures {
    fn note(&mut self, result: Result<(), Error>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "IPVS backend operation failed");
            self.count += 1;
            self.first.get_or_insert(e);
        }
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

    /// Removes kproxy's IPVS state. If the dummy interface exists, kproxy ran in IPVS mode
    /// here: every virtual service is flushed, as upstream's cleanup does (NodePort
    /// services sit on node addresses, not on the dummy), and the dummy is deleted with its
    /// addresses. Then the nftables table goes. On a kernel without IPVS only the table is
    /// removed.
    fn cleanup(&mut self) -> Result<(), Error> {
        self.known = None;
        if self.dummy.is_none() {
            self.dummy = Some(Dummy::open(&self.config.interface)?);
        }
        let dummy = self.dummy.as_mut().expect("opened");
        if dummy.index()?.is_some() {
            match Ipvs::open() {
                Ok(mut ipvs) => ipvs.flush()?,
                Err(Error::NoIpvs) => {}
                Err(e) => return Err(e),
            }
            dummy.delete()?;
        }
        self.nft.delete_table(&self.config.table)?;
        Ok(())
    }
}
