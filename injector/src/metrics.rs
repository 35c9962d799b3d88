//! The injector's Prometheus metrics: one counter of reviews by outcome.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Counters shared by every request.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reviews: Family<OutcomeLabels, Counter>,
    http_refusals: meshlite_https::Refusals,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("meshlite_injector");
        let reviews = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reviews",
            "Admission reviews answered, by outcome (injected, skipped_*, ignored, denied, invalid, unreadable, too_large, error)",
            reviews.clone(),
        );
        let http_refusals =
            meshlite_https::Refusals::register(&mut registry, "http_refusals", "Webhook clients");
        Metrics {
            registry,
            reviews,
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
        m.review("injected");
        m.http_refusals.inc("too_many_connections");
        m
    }

    pub fn review(&self, outcome: &'static str) {
        self.reviews.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// The webhook's limits, counting what they shed in `http_refusals`.
    pub fn gate(&self, limits: meshlite_https::Limits) -> meshlite_https::Gate {
        meshlite_https::Gate::new(limits, self.http_refusals.clone())
    }

    /// Prometheus/OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
