//! certd's Prometheus metrics: requests by result (`issued` or the refusal
//! reason), the CA's notAfter, so an expiring root pages someone long
//! before it breaks the mesh, and the injector serving-certificate passes.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InjectorCertLabels {
    result: &'static str,
    reason: &'static str,
}

/// Shared by every request and the CA reconcile loop.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<ResultLabels, Counter>,
    ca_not_after: Gauge<i64, AtomicI64>,
    injector_cert: Family<InjectorCertLabels, Counter>,
    naming: Family<ResultLabels, Counter>,
    http_refusals: meshlite_https::Refusals,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("meshlite_certd");
        let requests = Family::<ResultLabels, Counter>::default();
        registry.register(
            "requests",
            "Certificate requests, by result (issued, or the refusal reason)",
            requests.clone(),
        );
        let ca_not_after = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "ca_not_after_seconds",
            "notAfter of the signing CA chain, Unix seconds",
            ca_not_after.clone(),
        );
        let injector_cert = Family::<InjectorCertLabels, Counter>::default();
        registry.register(
            "injector_certificate_passes",
            "Reconcile passes over the injector's serving-certificate Secret, by result \
             (current, created, updated, lost_create_race, conflict, failed) and the \
             reason it was (re-)issued",
            injector_cert.clone(),
        );
        let naming = Family::<ResultLabels, Counter>::default();
        registry.register(
            "naming_requests",
            "Secure-naming requests, by result (meshed, unmeshed, mixed, unknown, or the refusal reason)",
            naming.clone(),
        );
        let http_refusals =
            meshlite_https::Refusals::register(&mut registry, "http_refusals", "API clients");
        Metrics {
            registry,
            naming,
            requests,
            ca_not_after,
            injector_cert,
            http_refusals,
        }
    }
}

impl Metrics {
    pub fn request(&self, result: &'static str) {
        self.requests.get_or_create(&ResultLabels { result }).inc();
    }

    /// One naming request ended with `result`.
    pub fn naming(&self, result: &'static str) {
        self.naming.get_or_create(&ResultLabels { result }).inc();
    }

    /// How many naming requests ended with `result`.
    pub fn naming_requests(&self, result: &'static str) -> u64 {
        self.naming
            .get(&ResultLabels { result })
            .map_or(0, |c| c.get())
    }

    /// How many requests ended with `result`.
    pub fn requests(&self, result: &'static str) -> u64 {
        self.requests.get_or_create(&ResultLabels { result }).get()
    }

    /// One pass over the injector's Secret ended with `result` for `reason`.
    pub fn injector_cert(&self, result: &'static str, reason: &'static str) {
        self.injector_cert
            .get_or_create(&InjectorCertLabels { result, reason })
            .inc();
    }

    /// How many passes over the injector's Secret ended with `result` for `reason`.
    pub fn injector_cert_passes(&self, result: &'static str, reason: &'static str) -> u64 {
        self.injector_cert
            .get(&InjectorCertLabels { result, reason })
            .map_or(0, |c| c.get())
    }

    /// The API's limits, counting what they shed in `http_refusals`.
    pub fn gate(&self, limits: meshlite_https::Limits) -> meshlite_https::Gate {
        meshlite_https::Gate::new(limits, self.http_refusals.clone())
    }

    /// How many clients the API's limits shed for `reason`.
    pub fn http_refusals(&self, reason: &'static str) -> u64 {
        self.http_refusals.get(reason)
    }

    pub fn set_ca_not_after(&self, unix_seconds: i64) {
        self.ca_not_after.set(unix_seconds);
    }

    /// Prometheus/OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests_by_result_and_the_ca_expiry() {
        let m = Metrics::default();
        m.request("issued");
        m.request("wrong_audience");
        m.request("issued");
        m.set_ca_not_after(1_900_000_000);
        let text = m.encode().unwrap();
        assert!(
            text.contains("meshlite_certd_requests_total{result=\"issued\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("meshlite_certd_ca_not_after_seconds 1900000000"),
            "{text}"
        );
        assert_eq!(m.requests("wrong_audience"), 1);
    }
}
