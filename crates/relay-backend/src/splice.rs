//! Copying one direction of a relayed TCP connection with `splice(2)`: socket → pipe →
//! socket, so the bytes stay in the kernel's pages and never cross into userspace (a
//! relay crosses the TCP stack twice; it need not copy the data twice more).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// At most this much per `splice` (the pipe's default capacity).
const CHUNK: usize = 64 * 1024;

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// Moves everything `src` sends to `dst` until `src` closes its side, then closes `dst`'s
/// sending side (half-close, as a TCP relay must). Returns the bytes moved.
pub(crate) async fn one_way(src: &TcpStream, dst: &TcpStream) -> io::Result<u64> {
    let (pipe_out, pipe_in) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so EAGAIN means the socket has nothing: wait for it.
        let n = loop {
            src.readable().await?;
            let moved = src.try_io(Interest::READABLE, || {
                splice(src.as_fd(), None, pipe_in.as_fd(), None, CHUNK, flags()).map_err(io::Error::from)
            });
            match moved {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            let _ = shutdown(dst.as_raw_fd(), Shutdown::Write);
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            let moved = dst.try_io(Interest::WRITABLE, || {
                splice(pipe_out.as_fd(), None, dst.as_fd(), None, left, flags()).map_err(io::Error::from)
            });
            match moved {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}

/// Both directions, until both sides have closed or either fails (the caller then drops
/// both sockets, which closes them).
pub(crate) async fn both_ways(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b), one_way(b, a))
}
