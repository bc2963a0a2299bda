//! Drift detection: nf_tables change notifications that touch our table but were not sent
//! by us.
//!
//! The kernel multicasts every committed change to the `NFNLGRP_NFTABLES` group, with the
//! port id of the socket that made it. A [`Monitor`] listens there and reports a change
//! to a table of ours from any other port: another program flushing the ruleset, deleting
//! a chain, editing a map. Upstream kube-proxy finds such drift at its next periodic full
//! sync (about an hour); a daemon blocked on [`Monitor::wait`] can repair it at once.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use crate::Error;

/// What [`Quiet`] reads from the side that commits (the backend): the ruleset generation,
/// and how many transactions it committed. The wire layer does not reach up to the backend;
/// the backend implements this.
pub trait Committer {
    /// The kernel's ruleset generation now.
    fn current_generation(&mut self) -> Result<u32, Error>;
    /// Transactions committed so far.
    fn commits(&self) -> u64;
}

/// `NFNLGRP_NFTABLES`.
const GROUP_NFTABLES: u32 = 7;
/// `NFNL_SUBSYS_NFTABLES`.
const SUBSYS_NFTABLES: u16 = 10;
/// The first attribute of table, chain, rule, set and element messages names the table.
const ATTR_TABLE: u16 = 1;

/// Stops and restarts a [`Monitor`]'s notifications, from any thread.
///
/// The kernel builds a notification for every object a transaction touches, but only
/// while someone listens: with a monitor subscribed, a full sync of 10k Services makes
/// the kernel build and queue ~100k messages we would then read and discard as our own.
/// Pausing the subscription around our own transactions avoids that work. What a pause
/// could hide (someone else's commit meanwhile) shows in the ruleset generation: the
/// caller compares it before and after, see [`Committer`].
pub struct Quiet {
    fd: OwnedFd,
}

impl Quiet {
    fn membership(&self, option: libc::c_int) -> io::Result<()> {
        super::socket::setsockopt_int(self.fd.as_raw_fd(), libc::SOL_NETLINK, option, GROUP_NFTABLES as libc::c_int)
    }

    /// Pauses the notifications before a sync of `backend`. Returns `None`, without
    /// pausing, when the ruleset generation cannot be read (then nothing could tell a
    /// foreign commit during the pause from ours).
    pub fn pause(&self, backend: &mut impl Committer) -> Option<Paused> {
        let generation = backend.current_generation().ok()?;
        self.membership(libc::NETLINK_DROP_MEMBERSHIP).ok()?;
        Some(Paused { generation, commits: backend.commits() })
    }

    /// Resumes the notifications after the sync. Returns `false` when someone else
    /// committed while they were paused: the generation moved by more than our own
    /// commits. (A commit to another table counts too; the cost is one needless repair,
    /// never a missed one.) When the generation cannot be read, it assumes no drift.
    pub fn resume(&self, backend: &mut impl Committer, before: Paused) -> bool {
        if let Err(e) = self.membership(libc::NETLINK_ADD_MEMBERSHIP) {
            tracing::warn!("drift detection: could not resubscribe: {e}");
        }
        let ours = (backend.commits() - before.commits) as u32;
        match backend.current_generation() {
            Ok(now) => now == before.generation.wrapping_add(ours),
            Err(e) => {
                tracing::warn!("drift detection: could not read the ruleset generation: {e}");
                true
            }
        }
    }
}

/// The ruleset generation and our commit count when notifications were paused.
#[derive(Clone, Copy, Debug)]
pub struct Paused {
    generation: u32,
    commits: u64,
}

/// A subscription to nf_tables change notifications.
pub struct Monitor {
    sock: mnl::Socket,
    table: String,
}

impl Monitor {
    /// Subscribes to changes of tables named `table` (any family).
    pub fn open(table: &str) -> io::Result<Monitor> {
        let sock = mnl::Socket::open(mnl::Bus::Netfilter)?;
        sock.bind(1 << (GROUP_NFTABLES - 1), mnl::mnl_sys::MNL_SOCKET_AUTOPID)?;
        // A burst of foreign changes must not be lost to a full receive queue; if it is,
        // recv reports ENOBUFS and we treat that as drift too.
        let size: libc::c_int = 4 << 20;
        // SAFETY: setsockopt with an int on our own fd.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(Monitor { sock, table: table.to_string() })
    }

    /// A handle to pause and resume this monitor's subscription (it shares the socket).
    pub fn quiet(&self) -> io::Result<Quiet> {
        let fd = self.sock.as_raw_fd();
        // SAFETY: the fd is open for the lifetime of `self.sock`; we duplicate it at once.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        Ok(Quiet { fd: borrowed.as_fd().try_clone_to_owned()? })
    }

    /// Waits up to `timeout` for a foreign change to our table. `own_ports` are the netlink
    /// port ids whose changes are ours (the backend's socket). Returns `true` on drift.
    pub fn wait(&mut self, timeout: Duration, own_ports: &[u32]) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, millis) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        if ready == 0 {
            return Ok(false);
        }
        let mut drift = false;
        // Drain everything queued, without blocking.
        loop {
            let mut storage = vec![0u64; 1 << 14];
            // SAFETY: reinterpreting the u64 buffer as bytes of the same length.
            let buf = unsafe { std::slice::from_raw_parts_mut(storage.as_mut_ptr().cast::<u8>(), storage.len() * 8) };
            // SAFETY: recv into our buffer, non-blocking.
            let n =
                unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::ENOBUFS) => {
                        drift = true;
                        continue;
                    }
                    _ => return Err(err),
                }
            }
            drift |= foreign_change(&buf[..n as usize], &self.table, own_ports);
        }
        Ok(drift)
    }
}

/// Whether any netlink message in `buf` (what one `recv` on a monitor socket returned) is
/// a change to table `table` made by a netlink port not in `own_ports`. Generation
/// messages and other subsystems do not count; a cut or malformed message ends the scan.
/// Pure, so that it can be fuzzed: the bytes come from the kernel, but every program that
/// writes nf_tables is heard.
pub fn foreign_change(buf: &[u8], table: &str, own_ports: &[u32]) -> bool {
    let header = std::mem::size_of::<libc::nlmsghdr>();
    let mut off = 0;
    let mut found = false;
    while off + header <= buf.len() {
        // SAFETY: bounds checked; read_unaligned tolerates any offset.
        let hdr: libc::nlmsghdr = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
        let len = hdr.nlmsg_len as usize;
        if len < header || off + len > buf.len() {
            break;
        }
        let subsys = hdr.nlmsg_type >> 8;
        let msg = hdr.nlmsg_type & 0xff;
        let body = &buf[off + header..off + len];
        if subsys == SUBSYS_NFTABLES
            && msg != libc::NFT_MSG_NEWGEN as u16
            && !own_ports.contains(&hdr.nlmsg_pid)
            && table_attr(body).is_some_and(|t| t == table.as_bytes())
        {
            found = true;
        }
        off += (len + 3) & !3;
    }
    found
}

/// The table-name attribute after the 4-byte `nfgenmsg`.
fn table_attr(body: &[u8]) -> Option<&[u8]> {
    super::attributes(body).find(|(kind, _)| *kind == ATTR_TABLE).map(|(_, v)| v.strip_suffix(&[0]).unwrap_or(v))
}
