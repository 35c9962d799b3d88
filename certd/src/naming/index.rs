//! The pure part of secure naming: from Pods, Services and EndpointSlices to
//! the answer for one `IP:port`.
//!
//! - A pod IP answers for its pod: meshed (with its ServiceAccount's SPIFFE ID)
//!   if the pod carries the proxy container and the port is not in its
//!   `meshlite.io/skip-inbound-ports`, unmeshed otherwise.
//! - A ClusterIP and service port answer for the ready endpoints behind it
//!   (EndpointSlices labelled `kubernetes.io/service-name`, the slice port with
//!   the service port's name giving the target port): meshed with the union of
//!   their identities if every ready backend is meshed, unmeshed if none is,
//!   and mixed (with the meshed backends' identities) otherwise.
//! - Anything else is unknown.
//!
//! Pods that have finished (phase Succeeded or Failed) or use the host network
//! are not indexed: their IP belongs to someone else (the next pod, or the node).
//! When two live pods claim one IP (a reused IP while the old pod terminates),
//! the one not being deleted wins, then the newer one.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use meshlite_contract::naming::{DEFAULT_TTL_SECONDS, Meshed, NamingResponse};
use meshlite_contract::{
    INIT_CONTAINER, PROXY_CONTAINER, SKIP_INBOUND_PORTS_ANNOTATION, SpiffeId, TrustDomain,
};

/// Label on an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One indexed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodEntry {
    id: SpiffeId,
    meshed: bool,
    skip_ports: Vec<u16>,
    /// For choosing between two pods that claim one IP.
    deleting: bool,
    created: Option<String>,
}

impl PodEntry {
    fn meshed_on(&self, port: u16) -> bool {
        self.meshed && !self.skip_ports.contains(&port)
    }
}

/// An index built from one snapshot of the watched objects.
#[derive(Debug, Default)]
pub struct Index {
    version: u64,
    pods: HashMap<IpAddr, PodEntry>,
    /// ClusterIP and service port to the ready backends (pod IP, target port).
    services: HashMap<SocketAddr, Vec<SocketAddr>>,
}

/// Whether the injector has put the proxy into this pod. The container name is
/// what the injector itself checks before injecting again (injector/src/mutate.rs).
pub fn is_injected(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    let has_proxy =
        |cs: &[k8s_openapi::api::core::v1::Container]| cs.iter().any(|c| c.name == PROXY_CONTAINER);
    let init = spec.init_containers.as_deref().unwrap_or_default();
    // The init container installs the redirect; without it nothing reaches the proxy.
    init.iter().any(|c| c.name == INIT_CONTAINER)
        && (has_proxy(init) || has_proxy(&spec.containers))
}

fn skip_ports(pod: &Pod) -> Vec<u16> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SKIP_INBOUND_PORTS_ANNOTATION))
        .map(|v| {
            v.split(',')
                .filter_map(|p| p.trim().parse::<u16>().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn pod_entry(pod: &Pod, td: &TrustDomain) -> Option<(Vec<IpAddr>, PodEntry)> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|s| s.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    if ips.is_empty() {
        return None;
    }
    let ns = pod.metadata.namespace.as_deref()?;
    let sa = spec.service_account_name.as_deref().unwrap_or("default");
    let id = SpiffeId::new(td.clone(), ns, sa).ok()?;
    Some((
        ips,
        PodEntry {
            id,
            meshed: is_injected(pod),
            skip_ports: skip_ports(pod),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string()),
        },
    ))
}

/// Whether `new` should own an IP that `old` also claims.
fn wins(new: &PodEntry, old: &PodEntry) -> bool {
    match (new.deleting, old.deleting) {
        (false, true) => true,
        (true, false) => false,
        _ => new.created > old.created,
    }
}

fn service_backends(
    svc: &Service,
    slices: &[&EndpointSlice],
    out: &mut HashMap<SocketAddr, Vec<SocketAddr>>,
) {
    let Some(spec) = &svc.spec else { return };
    let mut cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect();
    if let Some(ip) = spec.cluster_ip.as_deref().and_then(|s| s.parse().ok())
        && !cluster_ips.contains(&ip)
    {
        cluster_ips.push(ip);
    }
    for port in spec.ports.iter().flatten() {
        if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
            continue;
        }
        let Ok(svc_port) = u16::try_from(port.port) else {
            continue;
        };
        let name = port.name.as_deref().unwrap_or_default();
        for ip in &cluster_ips {
            let mut backends = Vec::new();
            for slice in slices {
                let family_matches = match slice.address_type.as_str() {
                    "IPv4" => ip.is_ipv4(),
                    "IPv6" => ip.is_ipv6(),
                    _ => false,
                };
                if !family_matches {
                    continue;
                }
                let target = slice.ports.iter().flatten().find(|p| {
                    p.name.as_deref().unwrap_or_default() == name
                        && p.protocol.as_deref().is_none_or(|p| p == "TCP")
                });
                let Some(target) = target
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                for ep in &slice.endpoints {
                    // A missing `ready` means ready (discovery.k8s.io/v1).
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                    if !ready {
                        continue;
                    }
                    for addr in &ep.addresses {
                        if let Ok(a) = addr.parse::<IpAddr>() {
                            backends.push(SocketAddr::new(a, target));
                        }
                    }
                }
            }
            out.insert(SocketAddr::new(*ip, svc_port), backends);
        }
    }
}

impl Index {
    /// Builds the index from one snapshot.
    pub fn build<'a>(
        pods: impl IntoIterator<Item = &'a Pod>,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        td: &TrustDomain,
        version: u64,
    ) -> Index {
        let mut by_ip: HashMap<IpAddr, PodEntry> = HashMap::new();
        for pod in pods {
            let Some((ips, entry)) = pod_entry(pod, td) else {
                continue;
            };
            for ip in ips {
                match by_ip.get(&ip) {
                    Some(old) if !wins(&entry, old) => {}
                    _ => {
                        by_ip.insert(ip, entry.clone());
                    }
                }
            }
        }
        let mut slices_by_svc: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let ns = slice.metadata.namespace.clone().unwrap_or_default();
            if let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                slices_by_svc
                    .entry((ns, svc.clone()))
                    .or_default()
                    .push(slice);
            }
        }
        let mut services_out = HashMap::new();
        for svc in services {
            let key = (
                svc.metadata.namespace.clone().unwrap_or_default(),
                svc.metadata.name.clone().unwrap_or_default(),
            );
            let slices = slices_by_svc
                .get(&key)
                .map(Vec::as_slice)
                .unwrap_or_default();
            service_backends(svc, slices, &mut services_out);
        }
        Index {
            version,
            pods: by_ip,
            services: services_out,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many pod IPs and service addresses are indexed.
    pub fn len(&self) -> (usize, usize) {
        (self.pods.len(), self.services.len())
    }

    /// The answer for `addr`.
    pub fn answer(&self, addr: SocketAddr) -> NamingResponse {
        let respond = |meshed: Meshed, ids: BTreeSet<SpiffeId>| NamingResponse {
            meshed,
            identities: ids.into_iter().collect(),
            ttl_seconds: DEFAULT_TTL_SECONDS,
            version: self.version,
        };
        if let Some(pod) = self.pods.get(&addr.ip()) {
            return if pod.meshed_on(addr.port()) {
                respond(Meshed::Meshed, BTreeSet::from([pod.id.clone()]))
            } else {
                respond(Meshed::Unmeshed, BTreeSet::new())
            };
        }
        let Some(backends) = self.services.get(&addr) else {
            return NamingResponse::unknown(self.version);
        };
        let mut ids = BTreeSet::new();
        let mut unmeshed = 0usize;
        for backend in backends {
            match self.pods.get(&backend.ip()) {
                Some(pod) if pod.meshed_on(backend.port()) => {
                    ids.insert(pod.id.clone());
                }
                // Not a pod we know (a selectorless Service's endpoint, a
                // node): nothing vouches for it, so it is unmeshed.
                _ => unmeshed += 1,
            }
        }
        match (ids.is_empty(), unmeshed) {
            (true, 0) => NamingResponse::unknown(self.version),
            (true, _) => respond(Meshed::Unmeshed, ids),
            (false, 0) => respond(Meshed::Meshed, ids),
            (false, _) => respond(Meshed::Mixed, ids),
        }
    }
}

#[cfg(test)]
mod tests;
