//! meshlite's injector: a mutating admission webhook that adds the proxy to pods.
//!
//! The decision is a pure function ([`mutate::mutate`]: pod + namespace
//! annotations + [`config::InjectorConfig`] → JSON Patch); [`webhook`] is the async
//! shell that reads an AdmissionReview, fetches the namespace through an
//! injectable [`webhook::NamespaceLookup`] and answers; [`server`] and [`tls`]
//! serve it over HTTPS. See DESIGN.md section 2, "Injection".

pub mod config;
pub mod metrics;
pub mod mutate;
pub mod probes;
pub mod review;
pub mod settings;
pub mod sidecar;
pub mod tls;
pub mod webhook;

pub use config::InjectorConfig;
pub use mutate::{Decision, SkipReason, mutate};
pub use webhook::{NamespaceLookup, StaticNamespaces, Webhook};
