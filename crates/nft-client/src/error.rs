//! The crate's error type.

use std::io;

/// Why a sync failed. Every failure leaves the kernel as it was (transactions are atomic)
/// and is worth retrying with a full sync, after a backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The netlink socket could not be opened or used.
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel rejected the transaction; nothing of it was applied.
    #[error(
        "nftables transaction rejected ({errors} failed message(s)); first: {op}: {}{}",
        io::Error::from_raw_os_error(*errno),
        detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    Transaction {
        /// The errno of the first failed message.
        errno: i32,
        /// What the kernel's extended acknowledgement said about it, if anything.
        detail: Option<String>,
        /// The first failed operation, as an `nft` command.
        op: String,
        /// How many messages failed.
        errors: usize,
    },
}

impl Error {
    /// Whether the kernel said an object does not exist (`ENOENT`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Transaction { errno, .. } if *errno == libc::ENOENT)
    }
}
