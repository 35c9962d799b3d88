//! certd's Prometheus metrics: requests by result (`issued` or the refusal
//! reason), how long issuing took by [`Issuance`] class, TokenReview
//! failures by reason, the CA's notAfter, so an expiring root pages someone
//! long before it breaks the mesh, and the injector serving-certificate passes.
//!
//! `deploy/monitoring/` alerts on these names; a test there checks that the
//! rules, the dashboard and the README table use only names registered here.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the issuance-latency buckets, seconds. The built-in signer
/// answers in milliseconds; an external signer is waited for up to
/// `--signer-wait-seconds` (30 by default) on top of the API budget, so the
/// buckets reach past that to tell "slow" from "timed out".
pub const ISSUANCE_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How a certificate request ended, in the few classes an operator alerts
/// on; `meshlite_certd_requests_total` keeps the exact reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Issuance {
    /// A certificate was returned.
    Issued,
    /// The caller's request was wrong: no or a bad token, not a workload, a
    /// bad CSR, a body too large. Retrying the same request cannot help.
    Rejected,
    /// The CSR object was denied (by an approver other than certd).
    Denied,
    /// certd, the Kubernetes API or the signer could not issue: unavailable,
    /// timed out, failed by an external signer, or an internal error.
    Failed,
}

impl Issuance {
    pub fn as_str(self) -> &'static str {
        match self {
            Issuance::Issued => "issued",
            Issuance::Rejected => "rejected",
            Issuance::Denied => "denied",
            Issuance::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for Issuance {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuanceLabels {
    result: Issuance,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn issuance_histogram() -> Histogram {
    Histogram::new(ISSUANCE_BUCKETS)
}

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
    issuance_seconds: HistogramFamily<IssuanceLabels>,
    tokenreview_failures: Family<ReasonLabels, Counter>,
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
        let issuance_seconds: HistogramFamily<IssuanceLabels> =
            Family::new_with_constructor(issuance_histogram);
        registry.register(
            "issuance_duration_seconds",
            "Time from a certificate request's arrival to its answer, seconds, by result \
             (issued, rejected, denied, failed); its _count is the issuance count by result",
            issuance_seconds.clone(),
        );
        let tokenreview_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tokenreview_failures",
            "Token reviews (TokenReview, or the token file in embedded mode) that did not \
             yield a workload identity, by reason (unauthenticated, wrong_audience, \
             not_service_account, unavailable, internal, timeout)",
            tokenreview_failures.clone(),
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
            issuance_seconds,
            tokenreview_failures,
            ca_not_after,
            injector_cert,
            http_refusals,
        }
    }
}

impl Metrics {
    /// Metrics with one series in every family. The text encoding leaves out
    /// a family that has no series yet, so this is how
    /// `tests/tests/monitoring.rs` reads every exported name and type from
    /// the code; a family added without a line here fails that test.
    pub fn with_every_family() -> Self {
        let m = Metrics::default();
        m.request("issued");
        m.issuance(Issuance::Issued, Duration::ZERO);
        m.tokenreview_failure("unauthenticated");
        m.injector_cert("current", "");
        m.naming("meshed");
        m.http_refusals.inc("too_many_connections");
        m
    }

    pub fn request(&self, result: &'static str) {
        self.requests.get_or_create(&ResultLabels { result }).inc();
    }

    /// A certificate request ended as `result` after `took`.
    pub fn issuance(&self, result: Issuance, took: Duration) {
        self.issuance_seconds
            .get_or_create(&IssuanceLabels { result })
            .observe(took.as_secs_f64());
    }

    /// How many certificate requests ended as `result` (the histogram's
    /// count, which prometheus-client reads out only for tests).
    #[cfg(feature = "test-util")]
    pub fn issuances(&self, result: Issuance) -> u64 {
        self.issuance_seconds
            .get(&IssuanceLabels { result })
            .map_or(0, |h| h.count())
    }

    /// A token review failed for `reason`.
    pub fn tokenreview_failure(&self, reason: &'static str) {
        self.tokenreview_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// How many token reviews failed for `reason`.
    pub fn tokenreview_failures(&self, reason: &'static str) -> u64 {
        self.tokenreview_failures
            .get(&ReasonLabels { reason })
            .map_or(0, |c| c.get())
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

    /// Called whenever the CA is loaded, at start and on every reconcile
    /// pass, so a rotated CA moves the gauge within one interval.
    pub fn set_ca_not_after(&self, unix_seconds: i64) {
        self.ca_not_after.set(unix_seconds);
    }

    /// The CA notAfter last recorded, Unix seconds.
    pub fn ca_not_after(&self) -> i64 {
        self.ca_not_after.get()
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

    #[test]
    fn issuance_latency_lands_in_its_bucket_by_result() {
        let m = Metrics::default();
        m.issuance(Issuance::Issued, Duration::from_millis(3));
        m.issuance(Issuance::Failed, Duration::from_secs(12));
        m.tokenreview_failure("wrong_audience");
        let text = m.encode().unwrap();
        for line in [
            "meshlite_certd_issuance_duration_seconds_bucket{le=\"0.005\",result=\"issued\"} 1",
            "meshlite_certd_issuance_duration_seconds_bucket{le=\"10.0\",result=\"failed\"} 0",
            "meshlite_certd_issuance_duration_seconds_bucket{le=\"30.0\",result=\"failed\"} 1",
            "meshlite_certd_issuance_duration_seconds_count{result=\"failed\"} 1",
            "meshlite_certd_tokenreview_failures_total{reason=\"wrong_audience\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert_eq!(m.tokenreview_failures("wrong_audience"), 1);
    }
}
