//! The original destination of a redirected connection (`SO_ORIGINAL_DST`).
//!
//! iptables `REDIRECT` rewrites the destination to the proxy's port; conntrack
//! remembers the address the application asked for, and the kernel reports it
//! through `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6).

use socket2::SockRef;
use std::io;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Where a redirected client wanted to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

impl std::fmt::Display for OrigDstAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Reads the original destination of an accepted, redirected connection.
pub fn original_dst(stream: &TcpStream) -> io::Result<OrigDstAddr> {
    let sock = SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(local) if local.ip().to_ipv4_mapped().is_some() => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket()
        .map(OrigDstAddr)
        .ok_or_else(|| io::Error::other("SO_ORIGINAL_DST returned a non-IP address"))
}
