//! Secure naming in the proxy: before an outbound connection, who must answer
//! at its destination?
//!
//! The answer comes from one of three places ([`NamingSource`]):
//! - pinned identities (`--outbound-expect-identity`, explicit mode with a
//!   fixed upstream): every destination is meshed, and only those may answer;
//! - certd's `POST /v1/naming`, asked on demand, with the workload's token, and
//!   kept in a bounded cache ([`NamingCache`]) for the answer's TTL;
//! - nothing (credentials from files, no certd): every destination is detected
//!   as before, and counted.
//!
//! What the outbound side does with a [`Decision`] is in [`crate::outbound`].
//! When certd cannot be asked, answers already held are used even past their
//! TTL: an address known to be meshed stays meshed (fail closed) until certd
//! says otherwise. Only an address never answered falls back to detection.
//!
//! Memory: at most `max` destinations, each a fixed ~100 bytes (key, answer
//! tag and expiry in the map) plus its identities, at most
//! [`MAX_IDENTITIES`] of ~150 bytes each (see [`NamingCache`]).

use crate::identity_client::{ClientConfig, RequestError, post, refused};
use crate::metrics::Metrics;
use meshlite_contract::naming::{Meshed, NamingRequest, NamingResponse};
use meshlite_contract::{NAMING_PATH, SpiffeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default number of destinations held.
pub const DEFAULT_CACHE_MAX: usize = 4096;
/// Most identities accepted in one answer; an answer with more is treated as
/// malformed (certd would have to be broken to send it), which keeps the
/// per-destination memory bounded.
pub const MAX_IDENTITIES: usize = 16;
/// How long a naming request may take before the connection falls back to
/// what is held (or detection). A first connection waits at most this long.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest TTL honoured, whatever certd says.
const MAX_TTL: Duration = Duration::from_secs(60);

/// Where naming answers come from.
#[derive(Debug, Clone, Default)]
pub enum NamingSource {
    /// No naming: detection for every destination (counted).
    #[default]
    None,
    /// Every destination is meshed, and must be one of these identities.
    Pinned(Vec<SpiffeId>),
    /// Ask certd, as the workload of this client config.
    Certd(ClientConfig),
}

/// Naming settings.
#[derive(Debug, Clone)]
pub struct NamingConfig {
    pub source: NamingSource,
    /// Most destinations whose answers are held.
    pub cache_max: usize,
}

impl Default for NamingConfig {
    fn default() -> Self {
        NamingConfig {
            source: NamingSource::None,
            cache_max: DEFAULT_CACHE_MAX,
        }
    }
}

/// What the outbound side must do for a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// mTLS required; the server must be one of these.
    Meshed(Arc<[SpiffeId]>),
    /// Not meshed: plaintext at once (permissive) or refuse (strict).
    Unmeshed,
    /// Some backends meshed: detect, but an mTLS server must be one of these.
    Mixed(Arc<[SpiffeId]>),
    /// Nothing known: detect as without naming; the reason is counted.
    Detect(&'static str),
}

#[derive(Debug, Clone)]
struct Entry {
    decision: Decision,
    until: Instant,
}

/// Answers held per destination, at most `max` of them.
///
/// Size of one entry (64-bit): the key, a `SocketAddr`, is 32 bytes; the
/// entry (a `Decision`, an `Arc<[SpiffeId]>` fat pointer plus tag, and an
/// `Instant`) about 40; the hash table adds its control byte and slack, so
/// about 100 bytes in the table. The identities live behind the `Arc`: 16
/// bytes of counts plus 72 per `SpiffeId` and its three strings (trust domain,
/// namespace, account: typically 60-80 bytes together), so about 150 bytes per
/// identity. One destination with one identity is thus about 270 bytes, and the
/// worst case ([`MAX_IDENTITIES`]) about 2.5 KiB. With the default 4096
/// destinations: about 1.1 MiB typical, 10 MiB at most.
#[derive(Debug)]
pub struct NamingCache {
    max: usize,
    map: Mutex<HashMap<SocketAddr, Entry>>,
}

impl NamingCache {
    pub fn new(max: usize) -> Self {
        NamingCache {
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The held answer and whether it is still within its TTL.
    pub fn get(&self, dst: SocketAddr, now: Instant) -> Option<(Decision, bool)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&dst).map(|e| (e.decision.clone(), now < e.until))
    }

    /// Holds `decision` for `dst` until `until`; answers the number held.
    /// When full, expired answers go first, then the one expiring soonest.
    pub fn put(&self, dst: SocketAddr, decision: Decision, until: Instant, now: Instant) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&dst) && map.len() >= self.max {
            map.retain(|_, e| now < e.until);
            if map.len() >= self.max
                && let Some(oldest) = map.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        map.insert(dst, Entry { decision, until });
        map.len()
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why certd's naming answer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NamingError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("certd's naming answer is malformed: {0}")]
    Decode(String),
    #[error("certd's naming answer has {0} identities; at most {MAX_IDENTITIES} are accepted")]
    TooManyIdentities(usize),
}

/// What one certd answer means for the outbound side.
pub fn decide(answer: &NamingResponse) -> Result<Decision, NamingError> {
    if answer.identities.len() > MAX_IDENTITIES {
        return Err(NamingError::TooManyIdentities(answer.identities.len()));
    }
    let ids = || Arc::<[SpiffeId]>::from(answer.identities.clone());
    Ok(match answer.meshed {
        // A meshed answer without identities cannot be satisfied by anyone:
        // it stays meshed (fail closed) and every server is refused.
        Meshed::Meshed => Decision::Meshed(ids()),
        Meshed::Mixed => Decision::Mixed(ids()),
        Meshed::Unmeshed => Decision::Unmeshed,
        Meshed::Unknown => Decision::Detect("unknown"),
    })
}

/// Asks certd about `dst`.
pub async fn ask(cfg: &ClientConfig, dst: SocketAddr) -> Result<NamingResponse, NamingError> {
    let body = serde_json::to_vec(&NamingRequest { addr: dst })
        .map_err(|e| NamingError::Decode(e.to_string()))?;
    // The mounted bundle as it is now: a bad file fails this ask, which falls
    // back to the answers held, then to counted detection.
    let roots = crate::identity_client::read_bundle(&cfg.bundle_file)?;
    let (status, retry_after, bytes) =
        post(cfg, &roots, NAMING_PATH, body, ASK_TIMEOUT.min(cfg.timeout)).await?;
    if !status.is_success() {
        return Err(refused(status, retry_after, &bytes).into());
    }
    serde_json::from_slice(&bytes).map_err(|e| NamingError::Decode(e.to_string()))
}

/// The proxy's naming: a source and the answers held from it.
#[derive(Debug)]
pub struct Naming {
    source: NamingSource,
    pinned: Option<Arc<[SpiffeId]>>,
    cache: NamingCache,
}

impl Naming {
    pub fn new(cfg: &NamingConfig) -> Self {
        let pinned = match &cfg.source {
            NamingSource::Pinned(ids) => Some(Arc::from(ids.clone())),
            _ => None,
        };
        Naming {
            source: cfg.source.clone(),
            pinned,
            cache: NamingCache::new(cfg.cache_max),
        }
    }

    pub fn cache(&self) -> &NamingCache {
        &self.cache
    }

    /// Decides for `dst`, asking certd when nothing valid is held.
    pub async fn resolve(&self, dst: SocketAddr, metrics: &Metrics) -> Decision {
        let client = match &self.source {
            NamingSource::None => return self.detect(metrics, "not_configured"),
            NamingSource::Pinned(_) => {
                metrics.naming_lookup("pinned");
                let ids = self.pinned.clone().unwrap_or_else(|| Arc::from(Vec::new()));
                return Decision::Meshed(ids);
            }
            NamingSource::Certd(client) => client,
        };
        let now = Instant::now();
        let held = self.cache.get(dst, now);
        if let Some((decision, true)) = &held {
            metrics.naming_lookup("cached");
            return decision.clone();
        }
        match ask(client, dst)
            .await
            .and_then(|a| Ok((decide(&a)?, a.ttl_seconds)))
        {
            Ok((decision, ttl)) => {
                metrics.naming_lookup("asked");
                let now = Instant::now();
                let ttl = Duration::from_secs(u64::from(ttl)).min(MAX_TTL);
                let size = self.cache.put(dst, decision.clone(), now + ttl, now);
                metrics.naming_cache_size.set(size as i64);
                match decision {
                    Decision::Detect(reason) => self.detect(metrics, reason),
                    d => d,
                }
            }
            Err(e) => match held {
                // certd is unreachable: keep what we held, even past its
                // TTL, rather than let an outage downgrade a meshed address.
                Some((decision, _)) => {
                    metrics.naming_lookup("stale");
                    tracing::debug!(%dst, error = %e, "naming: certd did not answer; using the held answer");
                    decision
                }
                None => {
                    tracing::debug!(%dst, error = %e, "naming: certd did not answer; detecting");
                    self.detect(metrics, "certd_error")
                }
            },
        }
    }

    /// Asks certd again for `dst`, past the cache: a held answer can lag the
    /// endpoints kube-proxy already routes to (a backend that just became
    /// ready). Whether `peer` may answer at `dst` by certd's fresh answer; the
    /// fresh answer replaces the held one. Pinned identities are never re-asked.
    pub async fn allows_fresh(&self, dst: SocketAddr, peer: &SpiffeId, metrics: &Metrics) -> bool {
        let NamingSource::Certd(client) = &self.source else {
            return false;
        };
        let Ok((decision, ttl)) = ask(client, dst)
            .await
            .and_then(|a| Ok((decide(&a)?, a.ttl_seconds)))
        else {
            return false;
        };
        metrics.naming_lookup("refreshed");
        let now = Instant::now();
        let ttl = Duration::from_secs(u64::from(ttl)).min(MAX_TTL);
        let allowed =
            matches!(&decision, Decision::Meshed(ids) | Decision::Mixed(ids) if ids.contains(peer));
        let size = self.cache.put(dst, decision, now + ttl, now);
        metrics.naming_cache_size.set(size as i64);
        allowed
    }

    fn detect(&self, metrics: &Metrics, reason: &'static str) -> Decision {
        metrics.naming_fallback(reason);
        Decision::Detect(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/a/sa/{s}")
            .parse()
            .unwrap()
    }

    fn dst(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(i), 80))
    }

    #[test]
    fn answers_map_to_decisions_and_oversized_ones_are_refused() {
        let answer = |meshed, ids: Vec<SpiffeId>| NamingResponse {
            meshed,
            identities: ids,
            ttl_seconds: 10,
            version: 1,
        };
        assert_eq!(
            decide(&answer(Meshed::Meshed, vec![id("x")])).unwrap(),
            Decision::Meshed(Arc::from(vec![id("x")]))
        );
        assert_eq!(
            decide(&answer(Meshed::Unmeshed, vec![])).unwrap(),
            Decision::Unmeshed
        );
        assert_eq!(
            decide(&answer(Meshed::Unknown, vec![])).unwrap(),
            Decision::Detect("unknown")
        );
        let many = (0..=MAX_IDENTITIES).map(|i| id(&format!("s{i}"))).collect();
        assert!(matches!(
            decide(&answer(Meshed::Meshed, many)),
            Err(NamingError::TooManyIdentities(17))
        ));
    }

    #[test]
    fn the_cache_holds_at_most_max_destinations_and_evicts_the_soonest_expiring() {
        let cache = NamingCache::new(3);
        let now = Instant::now();
        let s = Duration::from_secs(1);
        cache.put(dst(1), Decision::Unmeshed, now + 10 * s, now);
        cache.put(dst(2), Decision::Unmeshed, now + 5 * s, now);
        cache.put(dst(3), Decision::Unmeshed, now + 20 * s, now);
        assert_eq!(cache.put(dst(4), Decision::Unmeshed, now + 30 * s, now), 3);
        assert!(
            cache.get(dst(2), now).is_none(),
            "the soonest to expire went"
        );
        assert_eq!(cache.get(dst(1), now), Some((Decision::Unmeshed, true)));
        // Past its TTL an answer is still held, but reported stale.
        assert_eq!(
            cache.get(dst(1), now + 11 * s),
            Some((Decision::Unmeshed, false))
        );
        for i in 0..10_000 {
            cache.put(dst(100 + i), Decision::Unmeshed, now + s, now);
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_fixed_entry_is_about_a_hundred_bytes() {
        // The figures in NamingCache's docs.
        assert_eq!(std::mem::size_of::<SocketAddr>(), 32);
        assert!(
            std::mem::size_of::<Entry>() <= 48,
            "{}",
            std::mem::size_of::<Entry>()
        );
        assert!(
            std::mem::size_of::<SpiffeId>() <= 72,
            "{}",
            std::mem::size_of::<SpiffeId>()
        );
    }

    #[tokio::test]
    async fn pinned_identities_make_every_destination_meshed_and_none_means_detect() {
        let m = Metrics::new();
        let pinned = Naming::new(&NamingConfig {
            source: NamingSource::Pinned(vec![id("x")]),
            cache_max: 8,
        });
        assert_eq!(
            pinned.resolve(dst(1), &m).await,
            Decision::Meshed(Arc::from(vec![id("x")]))
        );
        let none = Naming::new(&NamingConfig::default());
        assert_eq!(
            none.resolve(dst(1), &m).await,
            Decision::Detect("not_configured")
        );
        assert!(
            m.encode()
                .contains("meshlite_naming_fallback_total{reason=\"not_configured\"} 1")
        );
    }
}
