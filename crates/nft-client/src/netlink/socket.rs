//! Sending a batch and reading its outcome.
//!
//! The whole batch goes out in one `sendmsg` whose iovec holds every page: the kernel
//! treats each `sendmsg` as its own batch, so sending page by page would split one
//! transaction into several (and the first, lacking its END, would be aborted). Right
//! behind it goes a `GETGEN` request. Replies arrive in order, so once the generation
//! reply is in, every error the batch produced has been read; the generation id it carries
//! is what drift detection compares later.

use std::io;
use std::os::fd::AsRawFd;

use nftnl::nftnl_sys as sys;

use super::Encoded;

/// `NFNL_SUBSYS_NFTABLES`.
const SUBSYS_NFTABLES: u16 = 10;
/// `NFTA_GEN_ID`.
const NFTA_GEN_ID: u16 = 1;
const NFTA_RULE_HANDLE: u16 = 3;
/// `NLM_F_ACK_TLVS`: the error carries extended-ack attributes.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

/// A netfilter netlink socket in the current network namespace.
pub struct Socket {
    sock: mnl::Socket,
    seq: u32,
}

/// One failed message of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageError {
    /// The message's sequence number.
    pub seq: u32,
    /// The errno the kernel reported.
    pub errno: i32,
    /// The kernel's extended acknowledgement (`NETLINK_EXT_ACK`): its message, if it gave
    /// one, and the offset of the offending attribute in our message, if it named one.
    pub detail: Option<String>,
}

/// The outcome of sending a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Failed messages; empty when the batch was committed.
    pub errors: Vec<MessageError>,
    /// The ruleset generation after the batch.
    pub generation: u32,
    /// Rules sent with `NLM_F_ECHO`, as the kernel echoed them once committed: (sequence
    /// number of the message, the rule's handle).
    pub rule_handles: Vec<(u32, u64)>,
}

impl Socket {
    /// Opens a socket.
    pub fn open() -> io::Result<Socket> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
        let socket = Socket { sock, seq: 0x4b50_0000 };
        // The kernel answers within the sendmsg that carried the batch; a reply that does
        // not come is a bug to report, not a reason to hang a node's sync loop.
        let timeout = libc::timeval { tv_sec: 30, tv_usec: 0 };
        // SAFETY: setsockopt with a timeval-sized value on our own fd.
        unsafe {
            libc::setsockopt(
                socket.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        // Extended acknowledgements: the kernel says which attribute it refused, and why
        // when it can. With CAP_ACK it echoes only the header of a failed message, not the
        // whole message.
        for option in [libc::NETLINK_EXT_ACK, libc::NETLINK_CAP_ACK] {
            let _ = setsockopt_int(socket.sock.as_raw_fd(), libc::SOL_NETLINK, option, 1);
        }
        Ok(socket)
    }

    fn setsockopt(&self, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
        setsockopt_int(self.sock.as_raw_fd(), libc::SOL_SOCKET, option, value)
    }

    /// Raises the socket buffers to `bytes`: with `SO_*BUFFORCE` where we may (root in the
    /// initial user namespace), else as far as `net.core.[rw]mem_max` allows.
    fn size_buffers(&self, send: usize, recv: usize) {
        let clamp = |n: usize| n.min(i32::MAX as usize / 2) as libc::c_int;
        if self.setsockopt(libc::SO_SNDBUFFORCE, clamp(send)).is_err() {
            let _ = self.setsockopt(libc::SO_SNDBUF, clamp(send));
        }
        if self.setsockopt(libc::SO_RCVBUFFORCE, clamp(recv)).is_err() {
            let _ = self.setsockopt(libc::SO_RCVBUF, clamp(recv));
        }
    }

    /// The socket's netlink port id: the sender the kernel names in the change
    /// notifications of our transactions.
    pub fn port_id(&self) -> u32 {
        self.sock.portid()
    }

    /// Discards replies left over from an earlier exchange that was cut short (a timeout,
    /// ENOBUFS), so they are not taken for this batch's.
    fn drain(&mut self) {
        let mut buf = vec![0u8; 1 << 16];
        // SAFETY: non-blocking recv into our own buffer.
        while unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) } > 0 {
        }
    }

    /// Sends a batch and waits for its outcome.
    pub fn send(&mut self, encoded: &Encoded) -> io::Result<Outcome> {
        self.drain();
        // Room for the batch plus the kernel's per-skb overhead; on the receive side, room
        // for an error report per message in the worst case, within reason.
        self.size_buffers(encoded.bytes + (1 << 16), (encoded.messages * 256).clamp(1 << 20, 64 << 20));
        let pages: Vec<&[u8]> = encoded.batch.iter().collect();
        let mut iov: Vec<libc::iovec> =
            pages.iter().map(|p| libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() }).collect();
        // SAFETY: a zeroed sockaddr_nl is valid; we set the family (pid 0 = the kernel).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: a zeroed msghdr is valid; the pointers we set outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        // SAFETY: msg describes buffers that stay alive for the call.
        let sent = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, 0) };
        if sent < 0 {
            // EMSGSIZE: the batch is larger than the send buffer may grow here (without
            // CAP_NET_ADMIN in the initial user namespace it stops at net.core.wmem_max).
            return Err(io::Error::last_os_error());
        }
        let gen_seq = self.request_generation()?;
        self.read_until_generation(gen_seq)
    }

    /// Reads the current ruleset generation.
    pub fn generation(&mut self) -> io::Result<u32> {
        let seq = self.request_generation()?;
        let outcome = self.read_until_generation(seq)?;
        Ok(outcome.generation)
    }

    fn request_generation(&mut self) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut buf = vec![0u8; 64];
        // SAFETY: the buffer holds a header plus the nfgenmsg nftnl appends.
        let len = unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(
                buf.as_mut_ptr().cast(),
                libc::NFT_MSG_GETGEN as u16,
                libc::AF_UNSPEC as u16,
                0,
                seq,
            );
            (*nlh).nlmsg_len as usize
        };
        self.sock.send(&buf[..len])?;
        Ok(seq)
    }

    fn read_until_generation(&mut self, gen_seq: u32) -> io::Result<Outcome> {
        let mut errors = Vec::new();
        let mut rule_handles = Vec::new();
        // u64 storage keeps the buffer aligned for netlink headers.
        let mut storage = vec![0u64; 1 << 16];
        loop {
            // SAFETY: reinterpreting the u64 buffer as bytes of the same length.
            let buf = unsafe { std::slice::from_raw_parts_mut(storage.as_mut_ptr().cast::<u8>(), storage.len() * 8) };
            let n = match self.sock.recv_raw(buf) {
                Ok(n) => n,
                // Too many error reports to buffer: the batch failed; keep reading.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    errors.push(MessageError { seq: 0, errno: libc::ENOBUFS, detail: None });
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut off = 0;
            while off + std::mem::size_of::<libc::nlmsghdr>() <= n {
                // SAFETY: bounds checked above; read_unaligned tolerates any offset.
                let hdr: libc::nlmsghdr = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                let len = hdr.nlmsg_len as usize;
                if len < std::mem::size_of::<libc::nlmsghdr>() || off + len > n {
                    break;
                }
                let body = &buf[off + std::mem::size_of::<libc::nlmsghdr>()..off + len];
                if std::env::var_os("KPROXY_NETLINK_DEBUG").is_some() {
                    eprintln!("netlink reply: type {:#x} seq {} len {len}", hdr.nlmsg_type, hdr.nlmsg_seq);
                }
                if hdr.nlmsg_type == libc::NLMSG_ERROR as u16 && body.len() >= 4 {
                    let code = i32::from_ne_bytes(body[..4].try_into().unwrap());
                    if code != 0 {
                        if hdr.nlmsg_seq == gen_seq {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        let detail = (hdr.nlmsg_flags & NLM_F_ACK_TLVS != 0).then(|| ext_ack(body)).flatten();
                        errors.push(MessageError { seq: hdr.nlmsg_seq, errno: -code, detail });
                    }
                } else if hdr.nlmsg_seq == gen_seq
                    && hdr.nlmsg_type == (SUBSYS_NFTABLES << 8) | libc::NFT_MSG_NEWGEN as u16
                {
                    let generation = parse_generation(body).unwrap_or(0);
                    return Ok(Outcome { errors, generation, rule_handles });
                } else if hdr.nlmsg_type == (SUBSYS_NFTABLES << 8) | libc::NFT_MSG_NEWRULE as u16
                    && let Some(handle) = parse_rule_handle(body)
                {
                    rule_handles.push((hdr.nlmsg_seq, handle));
                }
                off += (len + 3) & !3;
            }
        }
    }
}

/// `setsockopt` with an int value.
pub(crate) fn setsockopt_int(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: plain setsockopt with an int-sized value; an invalid fd only makes it fail.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The extended acknowledgement after an error code and the failed message's header
/// (`NETLINK_CAP_ACK` leaves out its payload): the message and the attribute offset.
fn ext_ack(body: &[u8]) -> Option<String> {
    let mut rest = body.get(4 + std::mem::size_of::<libc::nlmsghdr>()..)?;
    let (mut msg, mut offset) = (None, None);
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]);
        if len < 4 || len > rest.len() {
            break;
        }
        let value = &rest[4..len];
        match kind {
            NLMSGERR_ATTR_MSG => msg = Some(String::from_utf8_lossy(value).trim_end_matches('\0').to_string()),
            NLMSGERR_ATTR_OFFS if value.len() >= 4 => {
                offset = Some(u32::from_ne_bytes(value[..4].try_into().ok()?));
            }
            _ => {}
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    match (msg, offset) {
        (None, None) => None,
        (Some(m), None) => Some(m),
        (None, Some(o)) => Some(format!("attribute at byte {o} of the message")),
        (Some(m), Some(o)) => Some(format!("{m} (attribute at byte {o} of the message)")),
    }
}

/// The `NFTA_RULE_HANDLE` attribute of a rule message.
fn parse_rule_handle(body: &[u8]) -> Option<u64> {
    super::attributes(body)
        .find(|(kind, _)| *kind == NFTA_RULE_HANDLE)
        .and_then(|(_, v)| Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?)))
}

/// The `NFTA_GEN_ID` attribute after the 4-byte `nfgenmsg`.
fn parse_generation(body: &[u8]) -> Option<u32> {
    super::attributes(body)
        .find(|(kind, _)| *kind == NFTA_GEN_ID)
        .and_then(|(_, v)| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)))
}
