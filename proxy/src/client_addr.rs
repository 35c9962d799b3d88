//! Client address preservation: the inbound proxy connects to the app *from the
//! client's address*, so the app sees who called it rather than its own pod IP.
//!
//! The socket to the app gets `IP_TRANSPARENT` (`IPV6_TRANSPARENT`), which
//! lets it bind an address that is not local, and is bound to the client's IP
//! with port 0. The app's replies are addressed to the client's IP, which is
//! routed out of the pod; the rules `meshlite-proxy init
//! --preserve-client-address` installs bring them back (see
//! [`crate::init::rules`] and [`crate::init::route`]): the proxy's transparent
//! connections are marked, the mark is restored on the app's replies, and a
//! policy route delivers marked packets locally.
//!
//! **The source port is the kernel's choice, never the client's.** The
//! redirected inbound connection's conntrack entry has the original tuple
//! `client:port -> pod:app_port`; a proxy leg from the same client port to the
//! same app port would have that very tuple, and conntrack would take the
//! proxy's SYN for a packet of the redirected connection and apply its REDIRECT
//! (to the proxy's own inbound port). Port 0 does not settle it alone: the
//! kernel may pick a port that a *later* connection from the client happens to
//! use. So init also puts the proxy leg's original direction in a conntrack
//! zone of its own (`CT --zone-orig`), where the two tuples can never meet;
//! `client_address_netns.rs` tests exactly that case.
//!
//! **Fail closed.** `IP_TRANSPARENT` needs `CAP_NET_RAW` at each `setsockopt`
//! (see [`crate::privs`]). A proxy asked to preserve the address checks at
//! start ([`Preserve::check`]) and refuses to start without the capability,
//! counted as `meshlite_client_address_connections_total{result=
//! "refused_no_capability"}` and with an error naming the fix. Falling back to
//! the pod's address would silently hand the app the wrong client, which is
//! what an app that authorises or rate-limits by address must never get. A
//! connection whose transparent socket still fails later is refused, counted
//! the same way. Only where there is nothing to preserve (a loopback client or
//! target) does the connection go ahead as without preservation, counted as
//! `not_applicable`.

use crate::metrics::Direction;
use crate::proxy::{Ctx, connect};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::{TcpSocket, TcpStream};

/// Per-proxy state: whether preservation is asked for, and whether a failed
/// connection has been logged at `warn` yet.
#[derive(Debug, Default)]
pub(crate) struct Preserve {
    enabled: bool,
    warned: AtomicBool,
}

/// Why a proxy asked to preserve the client's address refuses to start.
#[derive(Debug, thiserror::Error)]
#[error(
    "client address preservation is on (--preserve-client-address / \
     MESHLITE_PRESERVE_CLIENT_ADDRESS) but IP_TRANSPARENT is refused: {source}; the proxy needs \
     CAP_NET_RAW (start it as root with NET_RAW, SETUID and SETGID, as the injector does for pods \
     annotated meshlite.io/client-address: preserve), or turn preservation off"
)]
pub struct NoCapability {
    #[source]
    pub source: io::Error,
}

/// How one connection to the app was made, the metric's `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the client's address.
    Preserved,
    /// Refused: `IP_TRANSPARENT` was refused (no capability).
    NoCapability,
    /// Refused: binding the client's address failed.
    BindFailed,
    /// From the pod's address: preservation does not apply (a loopback client
    /// or target, or the families differ).
    NotApplicable,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Preserved => "preserved",
            Outcome::NoCapability => "refused_no_capability",
            Outcome::BindFailed => "refused_bind_failed",
            Outcome::NotApplicable => "not_applicable",
        }
    }
}

impl Preserve {
    pub(crate) fn new(enabled: bool) -> Self {
        Preserve {
            enabled,
            warned: AtomicBool::new(false),
        }
    }

    /// At start: logs whether preservation is active, and fails when it is
    /// asked for but `IP_TRANSPARENT` is refused (counted).
    pub(crate) fn check(&self, metrics: &crate::metrics::Metrics) -> Result<(), NoCapability> {
        if !self.enabled {
            tracing::info!(
                "client address preservation is off: the app sees connections from the pod's own address"
            );
            return Ok(());
        }
        match probe() {
            Ok(()) => {
                tracing::info!(
                    "client address preservation is active: the app sees each client's own address"
                );
                Ok(())
            }
            Err(source) => {
                metrics.client_address(Outcome::NoCapability.label());
                let e = NoCapability { source };
                tracing::error!(error = %e, "refusing to start");
                Err(e)
            }
        }
    }
}

/// Whether preservation applies between `client` and `target`.
pub fn applies(client: SocketAddr, target: SocketAddr) -> bool {
    let ip = client.ip();
    client.is_ipv4() == target.is_ipv4()
        && !ip.is_loopback()
        && !ip.is_unspecified()
        && !target.ip().is_loopback()
}

/// Checks that this process may set `IP_TRANSPARENT`.
pub fn probe() -> io::Result<()> {
    let sock = TcpSocket::new_v4()?;
    set_transparent(&sock, true)
}

fn setsockopt_one(sock: &TcpSocket, level: libc::c_int, opt: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the descriptor is open for the duration of the call (we hold
    // `sock`), and the option value is a valid c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_transparent(sock: &TcpSocket, v4: bool) -> io::Result<()> {
    if v4 {
        setsockopt_one(sock, libc::SOL_IP, libc::IP_TRANSPARENT)
    } else {
        setsockopt_one(sock, libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
    }
}

/// A socket bound to `source` (port 0) that may carry a non-local address.
/// The error says which step failed, for the outcome.
pub fn transparent_socket(source: IpAddr) -> Result<TcpSocket, (Outcome, io::Error)> {
    let v4 = source.is_ipv4();
    let sock = if v4 {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| (Outcome::BindFailed, e))?;
    set_transparent(&sock, v4).map_err(|e| {
        let outcome = match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => Outcome::NoCapability,
            _ => Outcome::BindFailed,
        };
        (outcome, e)
    })?;
    // Choose the port at connect time, by the whole 4-tuple, so many
    // connections from one client address do not each hold a port of the range.
    setsockopt_one(&sock, libc::SOL_IP, libc::IP_BIND_ADDRESS_NO_PORT)
        .map_err(|e| (Outcome::BindFailed, e))?;
    sock.bind(SocketAddr::new(source, 0))
        .map_err(|e| (Outcome::BindFailed, e))?;
    Ok(sock)
}

/// Connects to the app at `target` for a connection from `client`: from the
/// client's address when preservation is on (refused, `None`, when that
/// fails), else as [`connect`] does. `None` when the connection failed (counted).
pub(crate) async fn connect_app(
    target: SocketAddr,
    client: SocketAddr,
    ctx: &Ctx,
) -> Option<TcpStream> {
    let preserve = &ctx.preserve;
    if !preserve.enabled {
        return connect(target, ctx, Direction::Inbound).await;
    }
    let sock = if applies(client, target) {
        transparent_socket(client.ip())
    } else {
        Err((Outcome::NotApplicable, io::Error::other("not applicable")))
    };
    let sock = match sock {
        Ok(s) => s,
        Err((Outcome::NotApplicable, _)) => {
            ctx.metrics.client_address(Outcome::NotApplicable.label());
            return connect(target, ctx, Direction::Inbound).await;
        }
        Err((outcome, e)) => {
            // Fail closed: never hand the app the pod's address in place of
            // the client's.
            ctx.metrics.client_address(outcome.label());
            ctx.metrics.refuse(Direction::Inbound, outcome.label());
            if !preserve.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    %client,
                    error = %e,
                    result = outcome.label(),
                    "cannot connect to the app from the client's address; refusing the \
                     connection (logged once, counted in meshlite_client_address_connections_total)"
                );
            } else {
                tracing::debug!(%client, error = %e, result = outcome.label(), "refused");
            }
            return None;
        }
    };
    let attempt = async {
        sock.set_nodelay(true)?;
        sock.connect(target).await
    };
    match tokio::time::timeout(ctx.config.timeouts.connect, attempt).await {
        Ok(Ok(s)) => {
            ctx.metrics.client_address(Outcome::Preserved.label());
            Some(s)
        }
        Ok(Err(e)) => {
            ctx.metrics.refuse(Direction::Inbound, "connect_failed");
            tracing::debug!(%target, %client, error = %e, "transparent connect failed");
            None
        }
        Err(_) => {
            // Typically the reply routing is missing (init ran without
            // --preserve-client-address): the app's SYN-ACK left the pod.
            ctx.metrics.refuse(Direction::Inbound, "connect_timeout");
            tracing::debug!(%target, %client, "transparent connect timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preservation_applies_only_between_routable_addresses_of_one_family() {
        let s = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert!(applies(s("10.0.0.16:40000"), s("10.0.0.12:8080")));
        assert!(applies(s("[fd00::16]:40000"), s("[fd00::12]:8080")));
        assert!(!applies(s("127.0.0.1:40000"), s("10.0.0.12:8080")));
        assert!(!applies(s("10.0.0.16:40000"), s("127.0.0.1:8080")));
        assert!(!applies(s("10.0.0.16:40000"), s("[fd00::12]:8080")));
        assert!(!applies(s("0.0.0.0:1"), s("10.0.0.12:8080")));
    }

    #[test]
    fn outcome_labels_are_distinct() {
        let all = [
            Outcome::Preserved,
            Outcome::NoCapability,
            Outcome::BindFailed,
            Outcome::NotApplicable,
        ];
        let labels: std::collections::BTreeSet<_> = all.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), all.len());
    }
}
