//! Secure naming: certd says who may answer at an address.
//!
//! `POST /v1/naming` (handled in [`crate::api`]) asks a [`NamingSource`]. In a
//! cluster that is [`ClusterNaming`]: three reflectors (Pods, Services,
//! EndpointSlices, each a list and then a watch) keep snapshots current, and an
//! [`index::Index`] built from them answers. The index is rebuilt lazily, on
//! the first question after a change, so a burst of events costs one rebuild.
//! Until all three reflectors have listed once, certd refuses naming requests
//! with 503: a restarted certd must not answer `unknown` for an address that
//! proxies hold as meshed, which would let them fall back to detection.
//!
//! Without a cluster (embedded mode) [`NoNaming`] answers `unknown`: the proxy
//! then keeps its own pins (`--outbound-expect-identity`) or detection.

pub mod index;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use meshlite_contract::TrustDomain;
use meshlite_contract::naming::NamingResponse;
use tokio::task::JoinHandle;

use index::Index;

/// Answers naming questions.
pub trait NamingSource: Send + Sync + std::fmt::Debug {
    /// The answer for `addr`, or `None` while the source is not ready to
    /// answer (certd then refuses with 503, so proxies keep what they hold
    /// instead of taking "unknown" for an address they know to be meshed).
    fn answer(&self, addr: SocketAddr) -> Option<NamingResponse>;
}

/// Embedded mode: no cluster, so nothing is known.
#[derive(Debug, Default)]
pub struct NoNaming;

impl NamingSource for NoNaming {
    fn answer(&self, _addr: SocketAddr) -> Option<NamingResponse> {
        Some(NamingResponse::unknown(0))
    }
}

#[derive(Debug, Default)]
struct Synced {
    /// Bumped on every watch event, by any of the three reflectors.
    generation: AtomicU64,
    pods: AtomicBool,
    services: AtomicBool,
    slices: AtomicBool,
}

impl Synced {
    fn synced(&self) -> bool {
        self.pods.load(Ordering::Acquire)
            && self.services.load(Ordering::Acquire)
            && self.slices.load(Ordering::Acquire)
    }
}

/// The cluster's answers, from watches of Pods, Services and EndpointSlices.
pub struct ClusterNaming {
    pods: Store<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    sync: Arc<Synced>,
    trust_domain: TrustDomain,
    /// The index and the generation it was built at.
    built: Mutex<Option<(u64, Arc<Index>)>>,
}

impl std::fmt::Debug for ClusterNaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNaming")
            .field("pods", &self.pods.len())
            .field("services", &self.services.len())
            .field("endpointslices", &self.slices.len())
            .field("synced", &self.sync.synced())
            .finish()
    }
}

/// Keeps one reflector's store current until the task is aborted. Watch
/// errors are retried with kube's default backoff; the store keeps its last
/// snapshot meanwhile.
async fn reflect<K, S>(
    watch: S,
    writer: reflector::store::Writer<K>,
    sync: Arc<Synced>,
    flag: fn(&Synced) -> &AtomicBool,
    what: &'static str,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let stream = reflector::reflector(writer, watch).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::InitDone) => {
                flag(&sync).store(true, Ordering::Release);
                tracing::info!(resource = what, "secure naming: initial list done");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(resource = what, error = %e, "secure naming: watch failed; retrying")
            }
        }
        sync.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl ClusterNaming {
    /// Starts the three reflectors on `client`; the tasks run until aborted.
    pub fn start(
        client: kube::Client,
        trust_domain: TrustDomain,
    ) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        let sync = Arc::new(Synced::default());
        let (pods, pods_w) = reflector::store::<Pod>();
        let (services, services_w) = reflector::store::<Service>();
        let (slices, slices_w) = reflector::store::<EndpointSlice>();
        let tasks = vec![
            tokio::spawn(reflect(
                watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
                pods_w,
                sync.clone(),
                |s| &s.pods,
                "pods",
            )),
            tokio::spawn(reflect(
                watcher(
                    Api::<Service>::all(client.clone()),
                    watcher::Config::default(),
                ),
                services_w,
                sync.clone(),
                |s| &s.services,
                "services",
            )),
            tokio::spawn(reflect(
                watcher(
                    Api::<EndpointSlice>::all(client),
                    watcher::Config::default(),
                ),
                slices_w,
                sync.clone(),
                |s| &s.slices,
                "endpointslices",
            )),
        ];
        let naming = ClusterNaming {
            pods,
            services,
            slices,
            sync,
            trust_domain,
            built: Mutex::new(None),
        };
        (Arc::new(naming), tasks)
    }

    /// The index for the current snapshot, rebuilt if anything changed.
    fn index(&self) -> Arc<Index> {
        let generation = self.sync.generation.load(Ordering::Acquire);
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, idx)) = built.as_ref()
            && *at == generation
        {
            return idx.clone();
        }
        let pods = self.pods.state();
        let services = self.services.state();
        let slices = self.slices.state();
        let idx = Arc::new(Index::build(
            pods.iter().map(AsRef::as_ref),
            services.iter().map(AsRef::as_ref),
            slices.iter().map(AsRef::as_ref),
            &self.trust_domain,
            generation,
        ));
        *built = Some((generation, idx.clone()));
        idx
    }
}

impl NamingSource for ClusterNaming {
    fn answer(&self, addr: SocketAddr) -> Option<NamingResponse> {
        self.sync.synced().then(|| self.index().answer(addr))
    }
}
