//! Test support for certd against the fake API server: start certd in cluster
//! mode with command-line flags, make CSRs, and name the objects certd uses.

use clap::Parser as _;
use meshlite_certd::app::{self, AppError, Running};
use meshlite_certd::client::Target;
use meshlite_certd::config::{Args, Mode};
use meshlite_contract::{CA_SECRET, SYSTEM_NAMESPACE, SpiffeId};
use rcgen::{CertificateParams, KeyPair, SanType};

use super::{FakeApiServer, Key};

/// The name certd's serving certificate is verified for in cluster mode.
pub const CLUSTER_SERVER_NAME: &str = "meshlite-certd.meshlite-system.svc";

/// Starts certd (cluster mode) against `fake` with extra command-line `flags`,
/// on an ephemeral loopback port.
pub async fn start_cluster_certd(
    fake: &FakeApiServer,
    flags: &[&str],
) -> Result<Running, AppError> {
    let mut argv = vec!["meshlite-certd", "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(flags);
    let settings = Args::try_parse_from(argv)
        .expect("test flags parse")
        .settings()
        .expect("test flags are valid settings");
    let Mode::Cluster(cluster) = &settings.mode else {
        panic!("start_cluster_certd needs cluster-mode flags");
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|source| AppError::Io {
            path: "127.0.0.1:0".into(),
            source,
        })?;
    app::start_cluster(&settings, cluster, fake.client(), listener).await
}

/// How a test client reaches `certd`.
pub fn target(certd: &Running) -> Target {
    Target {
        addr: certd.addr,
        server_name: CLUSTER_SERVER_NAME.into(),
        roots_pem: certd.bundle_pem(),
    }
}

/// A CSR signed by a fresh key of `alg`, with `sans`.
pub fn csr(alg: &'static rcgen::SignatureAlgorithm, sans: Vec<SanType>) -> (KeyPair, String) {
    let key = KeyPair::generate_for(alg).expect("key generation for a supported algorithm");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list is valid");
    params.subject_alt_names = sans;
    let pem = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .expect("CSR serialisation");
    (key, pem)
}

/// A P-256 CSR asking for `id`, as the proxy sends it.
pub fn csr_for(id: &SpiffeId) -> (KeyPair, String) {
    csr(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        vec![SanType::URI(
            id.to_uri()
                .as_str()
                .try_into()
                .expect("a SPIFFE ID is a valid URI"),
        )],
    )
}

/// The key of the CA Secret in the default location.
pub fn ca_secret_key() -> Key {
    FakeApiServer::core_key("secrets", Some(SYSTEM_NAMESPACE), CA_SECRET)
}
