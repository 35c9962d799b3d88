//! The outbound listener: the pod's own connections to elsewhere.
//!
//! bind → accept → [`handle`]: ask secure naming ([`crate::naming`]) what is at
//! the original destination, then:
//! - **meshed**: originate mesh mTLS; the server must present one of the
//!   answered identities. Any failure (reset, non-TLS bytes, another CA, the
//!   wrong identity) refuses the connection, in every mode: no application
//!   byte is ever sent in plaintext to a meshed destination.
//! - **unmeshed**: plaintext at once, no handshake attempt (permissive), or
//!   refused (strict).
//! - **mixed** or **no answer**: detection. Try mTLS; if the destination does
//!   not complete *our* handshake, not one application byte has been forwarded
//!   yet, so in permissive mode the proxy opens a fresh plaintext connection
//!   instead, and remembers the destination for a while so later connections
//!   skip the attempt. A server that does complete mTLS must still be one of
//!   the identities of a mixed answer. Strict mode never falls back.

use crate::config::OutboundMode;
use crate::metrics::Direction;
use crate::naming::Decision;
use crate::proxy::{ConnLog, Ctx, connect, resolve_target};
use crate::tls::{handshake_failure_reason, leaf_info};
use meshlite_contract::{ALPN, SpiffeId};
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const DIR: Direction = Direction::Outbound;

/// Most destinations remembered as unmeshed. Past this, expired entries are
/// swept, and if that is not enough the whole cache is dropped: forgetting only
/// costs one extra handshake attempt per destination.
const FALLBACK_CACHE_MAX: usize = 16 * 1024;

/// Destinations that recently failed mesh mTLS.
#[derive(Debug)]
pub struct FallbackCache {
    ttl: Duration,
    map: Mutex<HashMap<SocketAddr, Instant>>,
}

impl FallbackCache {
    pub fn new(ttl: Duration) -> Self {
        FallbackCache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn contains(&self, dst: SocketAddr) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&dst).is_some_and(|until| Instant::now() < *until)
    }

    /// Remembers `dst` as unmeshed; returns the number of entries.
    pub fn insert(&self, dst: SocketAddr) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() >= FALLBACK_CACHE_MAX {
            map.retain(|_, until| now < *until);
            if map.len() >= FALLBACK_CACHE_MAX {
                map.clear();
            }
        }
        map.insert(dst, now + self.ttl);
        map.len()
    }
}

/// Handles one accepted outbound connection.
pub(crate) async fn handle(tcp: TcpStream, client: SocketAddr, listener: SocketAddr, ctx: &Ctx) {
    let Some(cfg) = ctx.config.outbound.as_ref() else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let Some(target) = resolve_target(cfg.target, &tcp, client, listener, ctx, DIR) else {
        return;
    };
    let mut log = ConnLog::new(DIR, client, target);

    if cfg.mode == OutboundMode::Disabled {
        return plaintext(tcp, target, "disabled", ctx, log).await;
    }
    let decision = ctx.naming.resolve(target, &ctx.metrics).await;
    // Who must answer, and whether a failed handshake may fall back.
    let (expected, may_fall_back): (Option<&[SpiffeId]>, bool) = match &decision {
        Decision::Unmeshed => {
            if cfg.mode == OutboundMode::Strict {
                ctx.metrics.refuse(DIR, "strict_unmeshed_destination");
                tracing::info!(%client, %target, "strict outbound: the destination is not meshed");
                return;
            }
            return plaintext(tcp, target, "unmeshed", ctx, log).await;
        }
        Decision::Meshed(ids) => (Some(ids), false),
        Decision::Mixed(ids) => (Some(ids), cfg.mode == OutboundMode::Permissive),
        Decision::Detect(_) => (None, cfg.mode == OutboundMode::Permissive),
    };
    if may_fall_back && ctx.fallback.contains(target) {
        return plaintext(tcp, target, "not_meshed", ctx, log).await;
    }

    let Some(tls) = ctx.creds.current() else {
        // Without a certificate we cannot tell meshed peers from unmeshed ones;
        // sending plaintext to a meshed peer would silently downgrade it.
        ctx.metrics.refuse(DIR, "no_credentials");
        tracing::warn!(%client, %target, "no valid workload certificate: refusing outbound connection");
        return;
    };
    let Some(upstream) = connect(target, ctx, DIR).await else {
        return;
    };
    let server_name = ServerName::IpAddress(target.ip().into());
    let handshake = tokio::time::timeout(
        ctx.config.timeouts.handshake,
        crate::tls::stream::connect(tls.client.clone(), server_name, upstream),
    )
    .await;
    let failure = match handshake {
        Ok(Ok(stream)) => {
            let (_, conn) = stream.get_ref();
            let peer = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| leaf_info(leaf).ok());
            let alpn_ok = conn.alpn_protocol() == Some(ALPN);
            let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
            let mut named = match (expected, &peer) {
                (None, _) => true,
                (Some(ids), Some(p)) => ids.contains(&p.id),
                (Some(_), None) => false,
            };
            if !named && let Some(p) = &peer {
                // The held answer may predate a backend kube-proxy already
                // routes to: certd, asked again, is the judge.
                named = ctx.naming.allows_fresh(target, &p.id, &ctx.metrics).await;
            }
            if alpn_ok && named {
                log.mtls(&ctx.metrics, peer.map(|p| p.id), resumed);
                log.relay(tcp, stream, ctx).await;
                return;
            }
            let mut stream = stream;
            let _ = stream.shutdown().await;
            if !named {
                // A mesh peer with a valid certificate, but not who must answer
                // here: never a fallback, in any mode.
                ctx.metrics.refuse(DIR, "identity_mismatch");
                tracing::warn!(
                    %client,
                    %target,
                    peer = peer.as_ref().map(|p| tracing::field::display(&p.id)),
                    "outbound: the server is not an identity secure naming allows here; refused"
                );
                return;
            }
            // A TLS server we trust that does not speak the mesh protocol.
            "no_alpn"
        }
        Ok(Err(e)) => {
            let reason = handshake_failure_reason(&e);
            tracing::debug!(%target, reason, error = %e, "outbound mTLS handshake failed");
            reason
        }
        Err(_) => "timeout",
    };
    ctx.metrics.handshake_failed(DIR, failure);
    if matches!(decision, Decision::Meshed(_)) {
        ctx.metrics.refuse(DIR, "mesh_handshake_failed");
        tracing::warn!(%client, %target, reason = failure, "outbound: a meshed destination did not complete mesh mTLS; refused, never sent in plaintext");
        return;
    }
    if !may_fall_back {
        ctx.metrics.refuse(DIR, "strict_mode_handshake_failed");
        tracing::info!(%client, %target, reason = failure, "strict outbound: destination did not complete mesh mTLS");
        return;
    }
    let size = ctx.fallback.insert(target);
    ctx.metrics.fallback_cache_size.set(size as i64);
    tracing::debug!(%target, reason = failure, "destination is not meshed: falling back to plaintext");
    plaintext(tcp, target, "not_meshed", ctx, log).await;
}

async fn plaintext(
    tcp: TcpStream,
    target: SocketAddr,
    reason: &'static str,
    ctx: &Ctx,
    mut log: ConnLog,
) {
    let Some(upstream) = connect(target, ctx, DIR).await else {
        return;
    };
    ctx.metrics.plaintext(DIR, reason);
    log.tls = reason;
    log.relay(tcp, upstream, ctx).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_entries_expire_after_the_ttl() {
        let cache = FallbackCache::new(Duration::from_millis(0));
        let dst: SocketAddr = ([10, 0, 0, 1], 80).into();
        cache.insert(dst);
        assert!(!cache.contains(dst));
        let cache = FallbackCache::new(Duration::from_secs(60));
        assert!(!cache.contains(dst));
        cache.insert(dst);
        assert!(cache.contains(dst));
        assert!(!cache.contains(([10, 0, 0, 2], 80).into()));
    }

    #[test]
    fn the_fallback_cache_stays_bounded() {
        let cache = FallbackCache::new(Duration::from_secs(60));
        let mut size = 0;
        for i in 0..(FALLBACK_CACHE_MAX as u32 + 10) {
            size = cache.insert(SocketAddr::from((std::net::Ipv4Addr::from(i), 80)));
        }
        assert!(size <= FALLBACK_CACHE_MAX);
    }
}
