//! meshlite's benchmark harness: the proxy pair against a no-proxy baseline.
//!
//! One run measures three configurations side by side, on loopback, on the same
//! machine, interleaved so that drift affects them alike:
//!
//! - **direct**: client to server, no proxy;
//! - **plain relay**: the outbound/inbound pair with TLS off (outbound mode
//!   `disabled`), which isolates the cost of proxying;
//! - **mtls**: the pair with TLS 1.3 mutual TLS;
//! - **reference relay**: a plain tokio-rustls mTLS relay pair with
//!   `copy_bidirectional` (`meshlite-ref-relay`), the same certificates and
//!   worker threads: what meshlite's data path is measured against.
//!
//! The proxies are the real `meshlite-proxy` binary (release build), one process
//! each, so their RSS and CPU time can be read from `/proc`. The client and the
//! server run in this process. See `benches/README.md` for the method.
//!
//! [`client_address`] is a harness of its own (`meshlite-bench-client-address`,
//! root): the cost of client address preservation, between network namespaces.
//! [`held`] measures RSS per held idle connection on fresh pairs.
//! [`soak`] is apart from the suite: one long run of held and new connections
//! while certd rotates the pair's certificates (`meshlite-soak`).

pub mod client_address;
pub mod held;
pub mod measure;
pub mod procs;
pub mod report;
pub mod soak;
pub mod workloads;
