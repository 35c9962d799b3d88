//! Workload credentials and the TLS configs built from them.
//!
//! A [`CredStore`] holds the current [`TlsConfigs`] behind a `watch` channel.
//! Sources (files on disk, or certd) call [`CredStore::publish`], which validates
//! the credentials completely before anything sees them: the key matches the
//! leaf, the chain verifies against the bundle, the leaf carries one SPIFFE ID in
//! our trust domain, and it has not expired.
//!
//! The leaf must be good for the directions the proxy runs ([`Roles`]):
//! `serverAuth` to accept inbound mTLS, `clientAuth` to originate outbound
//! mTLS. A direction-only certificate is accepted for a proxy that runs only
//! that direction (a leaf without the EKU extension is good for both, as
//! RFC 5280 has it); a missing usage is refused with an error naming it. Until the first publish the store is
//! empty, every handshake fails closed, and the proxy is not ready.

use super::verify::{SpiffeClientVerifier, SpiffeServerVerifier, leaf_info};
use super::{TlsOptions, VERSIONS, provider_with};
use meshlite_contract::{ALPN, SpiffeId, TrustDomain};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ProducesTickets, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How many TLS sessions the outbound side remembers for resumption.
const CLIENT_SESSION_CACHE: usize = 1024;

/// Raw credentials, as a source produces them.
#[derive(Debug)]
pub struct Credentials {
    /// The leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The trust bundle: every root to accept peers from.
    pub roots: Vec<CertificateDer<'static>>,
}

/// Why credentials were not published.
#[derive(Debug, thiserror::Error)]
pub enum CredError {
    #[error("the certificate chain is empty")]
    EmptyChain,
    #[error("the trust bundle is empty")]
    EmptyBundle,
    #[error("the trust bundle has an unusable root: {0}")]
    BadRoot(String),
    #[error("the private key is unusable: {0}")]
    BadKey(rustls::Error),
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("the leaf certificate has no usable identity: {0}")]
    Identity(#[from] super::PeerIdError),
    #[error("the leaf identity {id} is outside the trust domain {expected}")]
    WrongTrustDomain { id: SpiffeId, expected: TrustDomain },
    #[error("the certificate does not verify against the trust bundle: {0}")]
    Untrusted(rustls::Error),
    #[error(
        "the certificate's extended key usage lacks {usage}, which the {direction} \
         side needs; its chain and the trust bundle are fine"
    )]
    WrongUsage {
        usage: &'static str,
        direction: &'static str,
    },
    #[error("building the TLS config failed: {0}")]
    Config(rustls::Error),
}

impl CredError {
    /// A short metric label.
    pub fn label(&self) -> &'static str {
        match self {
            CredError::EmptyChain | CredError::Identity(_) => "bad_certificate",
            CredError::EmptyBundle | CredError::BadRoot(_) => "bad_bundle",
            CredError::BadKey(_) | CredError::KeyMismatch => "bad_key",
            CredError::WrongTrustDomain { .. } => "wrong_trust_domain",
            CredError::Untrusted(_) => "untrusted",
            CredError::WrongUsage { .. } => "wrong_key_usage",
            CredError::Config(_) => "config",
        }
    }
}

/// Validated credentials, ready for handshakes.
#[derive(Debug)]
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    pub identity: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// What the proxy presents and trusts (public material, for `/identity`).
    pub chain: Vec<CertificateDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
}

impl TlsConfigs {
    /// Whether the leaf is still within its validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        now < self.not_after
    }
}

/// Session tickets that never outlive the certificate they were issued under.
///
/// A ticketer is created with each published config, so tickets from older
/// credentials cannot be decrypted after a rotation, and the advertised lifetime
/// is capped at the leaf's remaining validity.
#[derive(Debug)]
struct BoundedTicketer {
    inner: Arc<dyn ProducesTickets>,
    not_after: SystemTime,
}

impl ProducesTickets for BoundedTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        let left = self
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs();
        self.inner
            .lifetime()
            .min(u32::try_from(left).unwrap_or(u32::MAX))
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        if SystemTime::now() >= self.not_after {
            return None;
        }
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if SystemTime::now() >= self.not_after {
            return None;
        }
        self.inner.decrypt(cipher)
    }
}

/// Which directions the credentials serve: what the leaf must be good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Accepting mesh mTLS: the leaf is a TLS server certificate.
    pub inbound: bool,
    /// Originating mesh mTLS: the leaf is a TLS client certificate.
    pub outbound: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Roles {
            inbound: true,
            outbound: true,
        }
    }
}

/// Verifies our own chain against `roots` for every usage `roles` needs, so
/// a certificate peers would refuse is refused here, with the reason.
fn verify_own_chain(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    roles: Roles,
    algs: &[&dyn rustls::pki_types::SignatureVerificationAlgorithm],
) -> Result<(), CredError> {
    let anchors = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CredError::BadRoot(format!("{e:?}")))?;
    let untrusted =
        |e: webpki::Error| CredError::Untrusted(rustls::Error::General(format!("{e:?}")));
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(untrusted)?;
    let needs = [
        (
            roles.inbound,
            webpki::KeyUsage::server_auth(),
            "serverAuth",
            "inbound",
        ),
        (
            roles.outbound,
            webpki::KeyUsage::client_auth(),
            "clientAuth",
            "outbound",
        ),
    ];
    for (needed, usage, name, direction) in needs {
        if !needed {
            continue;
        }
        leaf.verify_for_usage(
            algs,
            &anchors,
            &chain[1..],
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .map_err(|e| match e {
            #[allow(deprecated, reason = "older webpki releases still return it")]
            webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
                CredError::WrongUsage {
                    usage: name,
                    direction,
                }
            }
            other => untrusted(other),
        })?;
    }
    Ok(())
}

/// Validates credentials for `roles` and builds the server and client
/// configs from them.
pub fn build(
    creds: Credentials,
    trust_domain: &TrustDomain,
    opts: TlsOptions,
    roles: Roles,
) -> Result<TlsConfigs, CredError> {
    let leaf = creds.chain.first().ok_or(CredError::EmptyChain)?;
    if creds.roots.is_empty() {
        return Err(CredError::EmptyBundle);
    }
    let mut roots = RootCertStore::empty();
    for root in &creds.roots {
        roots
            .add(root.clone())
            .map_err(|e| CredError::BadRoot(e.to_string()))?;
    }
    let roots = Arc::new(roots);
    let provider = provider_with(opts);

    let info = leaf_info(leaf)?;
    if info.id.trust_domain() != trust_domain {
        return Err(CredError::WrongTrustDomain {
            id: info.id,
            expected: trust_domain.clone(),
        });
    }

    let signing_key = provider
        .key_provider
        .load_private_key(creds.key)
        .map_err(CredError::BadKey)?;
    let certified = Arc::new(CertifiedKey::new(creds.chain.clone(), signing_key));
    certified.keys_match().map_err(|_| CredError::KeyMismatch)?;

    // Our own chain must verify against the bundle we hand to peers; otherwise
    // every peer would refuse us and the failure would only show up remotely.
    verify_own_chain(
        &creds.chain,
        &creds.roots,
        roles,
        provider.signature_verification_algorithms.all,
    )?;

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| CredError::Config(rustls::Error::General(e.to_string())))?;
    let client_verifier = Arc::new(SpiffeClientVerifier::new(
        client_verifier,
        trust_domain.clone(),
    ));

    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(CredError::Config)?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(Arc::new(SingleCert(certified.clone())));
    server.alpn_protocols = vec![ALPN.to_vec()];
    server.ticketer = Arc::new(BoundedTicketer {
        inner: rustls::crypto::aws_lc_rs::Ticketer::new().map_err(CredError::Config)?,
        not_after: info.not_after,
    });
    // TLS 1.3 resumption uses tickets; no stateful session cache is needed.
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = usize::from(opts.resumption);
    server.max_early_data_size = 0;

    let server_verifier = Arc::new(SpiffeServerVerifier::new(
        roots,
        trust_domain.clone(),
        provider.signature_verification_algorithms,
    ));
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(CredError::Config)?
        .dangerous()
        // Justified: SpiffeServerVerifier delegates chain verification to rustls's
        // WebPki functions and adds the SPIFFE checks; it skips only the DNS/IP
        // name check, which cannot apply to an original destination (see verify.rs).
        .with_custom_certificate_verifier(server_verifier)
        .with_client_cert_resolver(Arc::new(SingleCert(certified)));
    client.alpn_protocols = vec![ALPN.to_vec()];
    client.resumption = if opts.resumption {
        Resumption::in_memory_sessions(CLIENT_SESSION_CACHE)
    } else {
        Resumption::disabled()
    };
    client.enable_early_data = false;

    Ok(TlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
        identity: info.id,
        not_before: info.not_before,
        not_after: info.not_after,
        chain: creds.chain,
        roots: creds.roots,
    })
}

/// One certified key for every handshake, on either side.
#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for SingleCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The current credentials, shared by the listeners and the admin server.
#[derive(Debug, Clone)]
pub struct CredStore {
    trust_domain: TrustDomain,
    opts: TlsOptions,
    roles: Roles,
    tx: Arc<watch::Sender<Option<Arc<TlsConfigs>>>>,
}

impl CredStore {
    /// An empty store: no handshake succeeds until the first publish.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self::with_options(trust_domain, TlsOptions::default())
    }

    pub fn with_options(trust_domain: TrustDomain, opts: TlsOptions) -> Self {
        let (tx, _) = watch::channel(None);
        CredStore {
            trust_domain,
            opts,
            roles: Roles::default(),
            tx: Arc::new(tx),
        }
    }

    /// Only the directions in `roles` are served: the leaf need only be good
    /// for those.
    pub fn for_roles(mut self, roles: Roles) -> Self {
        self.roles = roles;
        self
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Validates and publishes new credentials. On error the current ones stay.
    pub fn publish(&self, creds: Credentials) -> Result<Arc<TlsConfigs>, CredError> {
        let configs = Arc::new(build(creds, &self.trust_domain, self.opts, self.roles)?);
        self.tx.send_replace(Some(configs.clone()));
        Ok(configs)
    }

    /// The current configs, if any are published and still valid.
    pub fn current(&self) -> Option<Arc<TlsConfigs>> {
        let cur = self.tx.borrow().clone()?;
        cur.is_valid_at(SystemTime::now()).then_some(cur)
    }

    /// The current configs even if expired (for reporting).
    pub fn latest(&self) -> Option<Arc<TlsConfigs>> {
        self.tx.borrow().clone()
    }

    /// Waits until credentials change.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<TlsConfigs>>> {
        self.tx.subscribe()
    }

    /// Time left before the current leaf expires.
    pub fn remaining(&self) -> Option<Duration> {
        let cur = self.latest()?;
        cur.not_after.duration_since(SystemTime::now()).ok()
    }
}
