//! meshlite-proxy: the per-pod sidecar.
//!
//! It intercepts the pod's TCP traffic (iptables redirects, installed by
//! `meshlite-proxy init`) and carries it between meshed pods over TLS 1.3 mutual
//! TLS with SPIFFE identities:
//!
//! - [`outbound`]: the pod's own connections, originated as mTLS to their
//!   original destination. [`naming`] says whether the destination is meshed
//!   and who must answer there; plaintext only for unmeshed destinations.
//! - [`inbound`]: connections to the pod, detected ([`detect`]) and terminated
//!   as mTLS, authorised against the allow list ([`policy`]), or passed through
//!   as plaintext in permissive mode.
//! - [`tls`]: the TLS policy, SPIFFE verification and live credentials.
//! - [`admin`]: `/live`, `/ready`, `/metrics` on port 15020.
//!
//! [`proxy::Proxy`] ties them together; `main.rs` only parses flags and calls it.

pub mod admin;
pub mod client_addr;
pub mod config;
pub mod detect;
pub mod identity_client;
pub mod inbound;
pub mod init;
pub mod metrics;
pub mod naming;
pub mod orig_dst;
pub mod outbound;
pub mod policy;
pub mod privs;
pub mod probe;
pub mod proxy;
pub mod relay;
pub mod reload;
pub mod tls;
pub mod trim;

#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use config::Config;
pub use proxy::{Bound, Proxy};
