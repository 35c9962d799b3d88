//! What meshlite's HTTP servers share.
//!
//! - [`gate`]: the limits every server puts on its clients (connection cap,
//!   header-read and request timeouts, lingering close), and [`body`], reading
//!   a body under a size limit. Always built; the proxy's plaintext admin port
//!   uses them without the TLS parts.
//! - With the `tls` feature, the HTTPS accept loop of certd's API and the
//!   injector's webhook: TLS 1.3 via tokio-rustls, HTTP/1 via hyper, routes via
//!   axum ([`serve`], [`server_config`]).
//! - With `test-util`, a misbehaving client for the servers' tests.

pub mod body;
pub mod gate;
#[cfg(feature = "test-util")]
pub mod testing;
#[cfg(feature = "tls")]
mod tls;

pub use body::{BodyError, read_limited};
pub use gate::{Gate, Limits, Refusal, Refusals};
#[cfg(feature = "tls")]
pub use tls::{ALPN, serve, server_config};
