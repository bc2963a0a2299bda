//! [`Client`]: one netlink socket to nf_tables, and transactions committed through it.

use proxy_core::IpFamily;

use crate::Error;
use crate::netlink::{self, monitor::Committer, socket::Socket};
use crate::ruleset::Ruleset;
use crate::tx::{Gathered, Op, OpCounts, Transaction};

/// The table name both of kproxy's backends write by default.
pub const DEFAULT_TABLE: &str = "kproxy";

/// Where transactions go: the kernel through a [`Client`], or a [`Model`](crate::model::Model)
/// in tests.
pub trait Commit {
    /// Commits the transactions as one batch, all or nothing. Returns what was sent
    /// (netlink messages for the kernel, operations for the model).
    fn commit(&mut self, txs: &[Transaction]) -> Result<usize, Error>;

    /// The rules the last batch added that are echoed back (see
    /// [`Rule::echoed`](crate::ruleset::Rule::echoed)), with their handles: (index of the
    /// operation over all its transactions, handle).
    fn last_handles(&self) -> &[(usize, u64)];
}

/// A connection to nf_tables that commits [`Transaction`]s, each batch atomically, and
/// remembers what the kernel answered (ruleset generation, rule handles).
///
/// The socket opens at the first use, so a client can be made where no kernel is reachable
/// (`kproxy plan`).
#[derive(Default)]
pub struct Client {
    socket: Option<Socket>,
    generation: Option<u32>,
    /// Successful batches so far (each bumps the generation by one).
    commits: u64,
    last_transaction_bytes: usize,
    last_counts: OpCounts,
    /// The handles of the rules the last batch added with an echo request: (index of the
    /// operation over all its transactions, handle).
    last_handles: Vec<(usize, u64)>,
}

impl Client {
    /// A client; nothing is opened yet.
    pub fn new() -> Client {
        Client::default()
    }

    /// The ruleset generation after our last successful batch.
    pub fn generation(&self) -> Option<u32> {
        self.generation
    }

    /// The kernel's ruleset generation now (it counts every commit, by anyone).
    pub fn current_generation(&mut self) -> Result<u32, Error> {
        self.socket()?.generation().map_err(Error::Socket)
    }

    /// How many batches this client has committed so far.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// The netlink port id our batches come from (see
    /// [`Monitor`](crate::netlink::monitor::Monitor)), once the socket is open.
    pub fn port_id(&self) -> Option<u32> {
        self.socket.as_ref().map(Socket::port_id)
    }

    /// The size in bytes of the last batch sent.
    pub fn last_transaction_bytes(&self) -> usize {
        self.last_transaction_bytes
    }

    /// What the last commit did, counted by kind.
    pub fn last_counts(&self) -> OpCounts {
        self.last_counts
    }

    /// The rules the last commit added with an echo request, with the handles the kernel
    /// gave them: (index of the operation over all its transactions, handle).
    pub fn last_handles(&self) -> &[(usize, u64)] {
        &self.last_handles
    }

    /// Opens the netlink socket now and returns its port id, so a drift monitor can tell
    /// our changes from others' from the start.
    pub fn connect(&mut self) -> Result<u32, Error> {
        Ok(self.socket()?.port_id())
    }

    fn socket(&mut self) -> Result<&mut Socket, Error> {
        if self.socket.is_none() {
            self.socket = Some(Socket::open().map_err(Error::Socket)?);
        }
        Ok(self.socket.as_mut().expect("just opened"))
    }

    /// Sends the transactions as one batch and returns the netlink messages sent.
    ///
    /// If the kernel refuses the batch as larger than this socket may send (`EMSGSIZE`:
    /// no `CAP_NET_ADMIN` over the initial user namespace, so the send buffer stops at
    /// `net.core.wmem_max`), the operations are sent in order in several smaller batches
    /// instead, with a warning: each part is atomic, the whole is not.
    pub fn commit(&mut self, txs: &[Transaction]) -> Result<usize, Error> {
        if txs.iter().all(|t| t.ops.is_empty()) {
            return Ok(0);
        }
        self.last_counts = OpCounts::default();
        self.last_handles.clear();
        for tx in txs {
            self.last_counts += tx.counts();
        }
        match self.commit_batch(txs) {
            Err(Error::Socket(e)) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                tracing::warn!(
                    bytes = self.last_transaction_bytes,
                    "transaction exceeds the socket send buffer (net.core.wmem_max); sending it in parts, \
                     which is not atomic: run as root in the initial user namespace to avoid this"
                );
                let mut messages = 0;
                for tx in txs {
                    messages += self.commit_in_parts(tx, &tx.ops)?;
                }
                // Operation indices of the parts do not map back: rule handles stay unknown.
                self.last_handles.clear();
                Ok(messages)
            }
            other => other,
        }
    }

    /// Sends `ops` of `tx` in order, halving the parts until each fits.
    fn commit_in_parts(&mut self, tx: &Transaction, ops: &[Op]) -> Result<usize, Error> {
        let part = Transaction { family: tx.family, table: tx.table.clone(), ops: ops.to_vec() };
        match self.commit_batch(std::slice::from_ref(&part)) {
            Err(Error::Socket(e)) if e.raw_os_error() == Some(libc::EMSGSIZE) && ops.len() > 1 => {
                let (first, second) = ops.split_at(ops.len() / 2);
                Ok(self.commit_in_parts(tx, first)? + self.commit_in_parts(tx, second)?)
            }
            other => other,
        }
    }

    fn commit_batch(&mut self, txs: &[Transaction]) -> Result<usize, Error> {
        let encoded = netlink::encode(txs);
        self.last_transaction_bytes = encoded.bytes;
        let outcome = self.socket()?.send(&encoded).map_err(Error::Socket)?;
        if let Some(first) = outcome.errors.first() {
            let failed = encoded.seqs.iter().find(|(seq, _)| *seq == first.seq).map(|(_, op)| *op);
            let op = failed.and_then(|i| op_at(txs, i)).unwrap_or_else(|| "(unknown message)".into());
            return Err(Error::Transaction {
                errno: first.errno,
                detail: first.detail.clone(),
                op,
                errors: outcome.errors.len(),
            });
        }
        self.generation = Some(outcome.generation);
        self.commits += 1;
        for (seq, handle) in outcome.rule_handles {
            if let Some((_, op)) = encoded.seqs.iter().find(|(s, _)| *s == seq) {
                self.last_handles.push((*op, handle));
            }
        }
        Ok(encoded.messages)
    }

    /// Replaces table `table` in each given family with its ruleset, atomically (one
    /// batch): for a table written whole at every sync, such as the IPVS backend's
    /// masquerade, reject and firewall rules. Returns the netlink messages sent.
    pub fn replace_tables(&mut self, table: &str, rulesets: &[(IpFamily, &Ruleset)]) -> Result<usize, Error> {
        let txs: Vec<Transaction> = rulesets
            .iter()
            .map(|(family, ruleset)| Transaction::replace(*family, table, ruleset, Gathered::default()))
            .collect();
        self.commit(&txs)
    }

    /// Removes table `table` from both families, whether or not it exists.
    pub fn delete_table(&mut self, table: &str) -> Result<(), Error> {
        for family in IpFamily::ALL {
            self.commit(&[Transaction::delete_table(family, table)])?;
        }
        Ok(())
    }
}

impl Commit for Client {
    fn commit(&mut self, txs: &[Transaction]) -> Result<usize, Error> {
        Client::commit(self, txs)
    }

    fn last_handles(&self) -> &[(usize, u64)] {
        Client::last_handles(self)
    }
}

impl Commit for crate::model::Model {
    fn commit(&mut self, txs: &[Transaction]) -> Result<usize, Error> {
        crate::model::Model::commit(self, txs)
    }

    fn last_handles(&self) -> &[(usize, u64)] {
        crate::model::Model::last_handles(self)
    }
}

impl Committer for Client {
    fn current_generation(&mut self) -> Result<u32, Error> {
        Client::current_generation(self)
    }

    fn commits(&self) -> u64 {
        Client::commits(self)
    }
}

/// The `nft` command of the operation at a global index over several transactions.
fn op_at(txs: &[Transaction], mut i: usize) -> Option<String> {
    for tx in txs {
        if i < tx.ops.len() {
            let single = Transaction { family: tx.family, table: tx.table.clone(), ops: vec![tx.ops[i].clone()] };
            return Some(single.to_string().lines().next().unwrap_or_default().to_string());
        }
        i -= tx.ops.len();
    }
    None
}
