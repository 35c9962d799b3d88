//! The proxy's Prometheus metrics, served on the admin port at `/metrics`.
//!
//! Every refusal has a counter with a reason label, so an operator can tell a
//! policy denial from a bad certificate from an overloaded proxy without logs.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Which listener a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Which side of the connection sent the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The side that opened the connection.
    Client,
    /// The side the connection was opened to.
    Server,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

impl EncodeLabelValue for Peer {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Peer::Client => "client",
            Peer::Server => "server",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnLabels {
    pub direction: Direction,
    /// `mtls` or `plaintext`.
    pub tls: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BytesLabels {
    pub direction: Direction,
    pub sender: Peer,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PeerLabels {
    pub direction: Direction,
    /// The peer's SPIFFE ID. Cardinality is the number of workload identities
    /// this pod talks to, not the number of pods.
    pub peer_identity: String,
    /// Whether the TLS session was resumed from a ticket.
    pub resumed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// All of the proxy's metrics.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub conn_opened: Family<ConnLabels, Counter>,
    pub conn_closed: Family<ConnLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub plaintext: Family<ReasonLabels, Counter>,
    pub handshake_failures: Family<ReasonLabels, Counter>,
    pub refused: Family<ReasonLabels, Counter>,
    pub policy_denials: Counter,
    pub mtls_peers: Family<PeerLabels, Counter>,
    pub cert_not_after: Gauge,
    pub cred_reloads: Family<ResultLabels, Counter>,
    pub policy_reloads: Family<ResultLabels, Counter>,
    pub renewals: Family<ResultLabels, Counter>,
    pub fallback_cache_size: Gauge,
    pub naming_lookups: Family<ResultLabels, Counter>,
    pub naming_fallback: Family<NamingReason, Counter>,
    pub naming_cache_size: Gauge,
    /// `not_loopback`, or one of the gate's reasons (`header_timeout`, ...).
    pub admin_refusals: meshlite_https::Refusals,
    pub bundle_file_rejections: Family<FileLabels, Counter>,
    /// The connection limit in force (`--max-connections`, or derived).
    pub max_connections: Gauge,
    /// Inbound connections to the app with client address preservation on,
    /// by how they were made (`preserved`, or why they fell back).
    pub client_address: Family<ResultLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct NamingReason {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FileLabels {
    /// The path of the file, as configured: one series per mounted file.
    pub file: String,
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshlite");
        let m = Metrics {
            conn_opened: Family::default(),
            conn_closed: Family::default(),
            bytes: Family::default(),
            plaintext: Family::default(),
            handshake_failures: Family::default(),
            refused: Family::default(),
            policy_denials: Counter::default(),
            mtls_peers: Family::default(),
            cert_not_after: Gauge::default(),
            cred_reloads: Family::default(),
            policy_reloads: Family::default(),
            renewals: Family::default(),
            fallback_cache_size: Gauge::default(),
            naming_lookups: Family::default(),
            naming_fallback: Family::default(),
            naming_cache_size: Gauge::default(),
            admin_refusals: meshlite_https::Refusals::default(),
            bundle_file_rejections: Family::default(),
            client_address: Family::default(),
            max_connections: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tcp_connections_opened",
            "TCP connections accepted, by direction and whether they are mTLS",
            m.conn_opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "TCP connections closed, by direction and whether they were mTLS",
            m.conn_closed.clone(),
        );
        registry.register(
            "tcp_bytes",
            "Bytes relayed, by direction and by the side that sent them",
            m.bytes.clone(),
        );
        registry.register(
            "plaintext_connections",
            "Connections relayed without mTLS, by reason (not_meshed, other_tls, detect_timeout, disabled, ...)",
            m.plaintext.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Failed mTLS handshakes, by reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "refused_connections",
            "Connections refused, by reason (max_connections, strict_plaintext, no_credentials, ...)",
            m.refused.clone(),
        );
        registry.register(
            "policy_denials",
            "Inbound mTLS connections refused by the allow list",
            m.policy_denials.clone(),
        );
        registry.register(
            "mtls_connections",
            "Established mTLS connections, by direction, peer identity and resumption",
            m.mtls_peers.clone(),
        );
        registry.register(
            "max_connections",
            "Connections the proxy holds at once before refusing more (reason max_connections)",
            m.max_connections.clone(),
        );
        registry.register(
            "identity_cert_not_after_timestamp_seconds",
            "notAfter of the workload certificate in use, as a Unix timestamp",
            m.cert_not_after.clone(),
        );
        registry.register(
            "credential_reloads",
            "Attempts to load new workload credentials, by result",
            m.cred_reloads.clone(),
        );
        registry.register(
            "policy_reloads",
            "Attempts to load the allow list, by result",
            m.policy_reloads.clone(),
        );
        registry.register(
            "certificate_renewals",
            "Certificate requests to certd, by result",
            m.renewals.clone(),
        );
        registry.register(
            "outbound_fallback_destinations",
            "Destinations currently remembered as not meshed",
            m.fallback_cache_size.clone(),
        );
        registry.register(
            "naming_lookups",
            "Secure-naming decisions for outbound destinations, by where the answer came from \
             (pinned, cached, asked, stale, refreshed: asked again after a mismatch)",
            m.naming_lookups.clone(),
        );
        registry.register(
            "naming_fallback",
            "Outbound connections decided by detection because secure naming had no answer, \
             by reason (unknown, certd_error, not_configured)",
            m.naming_fallback.clone(),
        );
        registry.register(
            "naming_cache_destinations",
            "Destinations whose secure-naming answers are held",
            m.naming_cache_size.clone(),
        );
        registry.register(
            "trust_bundle_file_rejections",
            "Reads of the mounted trust-bundle file that were unusable, by file and reason; \
             the last good bundle stays in use",
            m.bundle_file_rejections.clone(),
        );
        registry.register(
            "client_address_connections",
            "Inbound connections to the app while client address preservation is on, by result \
             (preserved; refused_no_capability, refused_bind_failed: refused, never made from the \
             pod's own address; not_applicable: a loopback client or target, made as without \
             preservation)",
            m.client_address.clone(),
        );
        let admin_refusals = meshlite_https::Refusals::register(
            &mut registry,
            "admin_refusals",
            "Admin port requests (not_loopback: a state change asked from outside the pod) \
             and connections",
        );
        Metrics {
            registry,
            admin_refusals,
            ..m
        }
    }

    /// Metrics with one series in every family. The text encoding leaves out
    /// a family that has no series yet, so this is how
    /// `tests/tests/monitoring.rs` reads every exported name and type from
    /// the code; a family added without a line here fails that test.
    pub fn with_every_family() -> Self {
        let m = Metrics::new();
        let conn = ConnLabels {
            direction: Direction::Inbound,
            tls: "mtls",
        };
        m.conn_opened.get_or_create(&conn).inc();
        m.conn_closed.get_or_create(&conn).inc();
        m.bytes_counter(Direction::Inbound, Peer::Client).inc();
        m.plaintext(Direction::Inbound, "not_meshed");
        m.handshake_failed(Direction::Inbound, "timeout");
        m.refuse(Direction::Inbound, "max_connections");
        m.policy_denials.inc();
        m.mtls_peers
            .get_or_create(&PeerLabels {
                direction: Direction::Inbound,
                peer_identity: "spiffe://cluster.local/ns/a/sa/b".into(),
                resumed: false,
            })
            .inc();
        for family in [&m.cred_reloads, &m.policy_reloads, &m.renewals] {
            family.get_or_create(&ResultLabels { result: "ok" }).inc();
        }
        m.naming_lookup("cached");
        m.naming_fallback("unknown");
        m.admin_refusals.inc("not_loopback");
        m.bundle_file_rejected(std::path::Path::new("bundle.pem"), "unreadable");
        m.client_address("preserved");
        m
    }

    /// Renders the Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn client_address(&self, result: &'static str) {
        self.client_address
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn refuse(&self, direction: Direction, reason: &'static str) {
        self.refused
            .get_or_create(&ReasonLabels { direction, reason })
            .inc();
    }

    /// The trust-bundle file at `path` could not be used, for `reason`.
    pub fn bundle_file_rejected(&self, path: &std::path::Path, reason: &'static str) {
        self.bundle_file_rejections
            .get_or_create(&FileLabels {
                file: path.display().to_string(),
                reason,
            })
            .inc();
    }

    pub fn handshake_failed(&self, direction: Direction, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { direction, reason })
            .inc();
    }

    pub fn plaintext(&self, direction: Direction, reason: &'static str) {
        self.plaintext
            .get_or_create(&ReasonLabels { direction, reason })
            .inc();
    }

    pub fn naming_lookup(&self, result: &'static str) {
        self.naming_lookups
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn naming_fallback(&self, reason: &'static str) {
        self.naming_fallback
            .get_or_create(&NamingReason { reason })
            .inc();
    }

    /// The counter for bytes sent by `sender` on `direction` connections.
    pub fn bytes_counter(&self, direction: Direction, sender: Peer) -> Counter<u64, AtomicU64> {
        self.bytes
            .get_or_create(&BytesLabels { direction, sender })
            .clone()
    }
}
