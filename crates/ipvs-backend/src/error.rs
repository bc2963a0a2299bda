//! The IPVS backend's error.

use std::io;

/// What can go wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel has no IPVS.
    #[error("the kernel has no IPVS generic netlink family (load the ip_vs module)")]
    NoIpvs,
    /// A socket error while sending or receiving.
    #[error("{what}: {source}")]
    Io {
        /// The request.
        what: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request.
    #[error("{what}: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The request.
        what: String,
        /// The errno.
        errno: i32,
    },
    /// A reply could not be parsed.
    #[error("{what}: undecodable reply: {detail}")]
    Decode {
        /// The request.
        what: String,
        /// The parser's complaint.
        detail: String,
    },
    /// The nftables side failed.
    #[error("nftables: {0}")]
    Nft(#[from] nft_client::Error),
}
