//! certd: meshlite's certificate authority front end.
//!
//! A proxy POSTs a PKCS#10 CSR with its projected ServiceAccount token to
//! `/v1/certificates`; certd derives the workload's SPIFFE ID from the token
//! (never from the CSR), checks the CSR, gets it signed, and answers with the
//! chain, the trust bundle and `notAfter`.
//!
//! The HTTP handler ([`api`]) and the pure checks ([`identity`], [`csr`],
//! [`approval`]) are shared by both modes; what differs is behind two traits:
//!
//! - [`review::TokenReviewer`]: Kubernetes TokenReview ([`kube::KubeTokenReviewer`])
//!   or a static token file ([`review::StaticTokens`], embedded mode).
//! - [`signer::SigningBackend`]: the Kubernetes CSR API with the built-in or an
//!   external signer ([`kube::KubeSigner`]), or the in-process CA
//!   ([`signer::EmbeddedSigner`]).
//!
//! [`ca`] holds the CA material and mints certificates, [`kube::bootstrap`]
//! creates or loads the CA Secret, [`kube::trust`] distributes the trust bundle.
//! [`naming`] answers `POST /v1/naming`: which identities may answer at an
//! address, from watches of Pods, Services and EndpointSlices.

pub mod api;
pub mod app;
pub mod approval;
pub mod ca;
pub mod client;
pub mod config;
pub mod csr;
pub mod error;
pub mod identity;
pub mod kube;
pub mod metrics;
pub mod naming;
pub mod rbac;
pub mod review;
pub mod server;
pub mod signer;

pub use error::ApiError;
