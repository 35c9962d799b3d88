//! The injector's serving certificate: Secret `meshlite-injector-tls`.
//!
//! The API server calls the injector's webhook over TLS and verifies it
//! against the `caBundle` that [`super::trust`] keeps set to meshlite's roots,
//! so the injector's certificate must chain to certd's CA and name the
//! injector's Service. Every trust pass makes sure the Secret (type
//! `kubernetes.io/tls`, keys `tls.crt` and `tls.key`, in the CA's namespace)
//! holds such a certificate; the injector mounts it and reloads changed files.
//!
//! Whether to re-issue is [`check`], a pure function of the Secret, the CA,
//! the wanted DNS names and the time. Replicas run this concurrently: the
//! first `create` wins and the others re-read (409 AlreadyExists); an update
//! carries the resourceVersion it read, and a 409 Conflict is left to the next
//! pass, which re-reads and usually finds the winner's certificate current.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::bootstrap::{TLS_CRT, TLS_KEY};
use super::is_code;
use crate::ca::{Ca, CaError};
use crate::metrics::Metrics;

/// Default name of the Secret the injector Deployment mounts.
pub const INJECTOR_SECRET: &str = "meshlite-injector-tls";
/// Default name of the injector's Service (the webhook's `clientConfig.service`).
pub const INJECTOR_SERVICE: &str = "meshlite-injector";
/// The Secret type whose documented keys are `tls.crt` and `tls.key`.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Why the Secret's certificate must be (re-)issued, or cannot be fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No Secret yet.
    Absent,
    /// The Secret has another type; a Secret's type is immutable, so certd
    /// cannot fix it (an operator deletes it and certd creates it anew).
    WrongType,
    /// `tls.crt` or `tls.key` is missing, not PEM, or they do not match.
    Unparseable,
    /// The certificate does not verify as a serverAuth certificate issued
    /// by the CA certd signs with now (e.g. after a CA rotation).
    NotFromCurrentCa,
    /// Its DNS names are not exactly the injector Service's.
    NamesDiffer,
    /// Half of its lifetime has passed (or all of it).
    Renew,
}

impl Reason {
    /// Metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Absent => "absent",
            Reason::WrongType => "wrong_type",
            Reason::Unparseable => "unparseable",
            Reason::NotFromCurrentCa => "not_from_current_ca",
            Reason::NamesDiffer => "names_differ",
            Reason::Renew => "renew",
        }
    }
}

/// Why a pass could not make the Secret current.
#[derive(Debug, thiserror::Error)]
pub enum WebhookCertError {
    #[error("Kubernetes API ({what}): {source}")]
    Api {
        what: &'static str,
        source: kube::Error,
    },
    #[error("issuing the injector certificate: {0}")]
    Issue(#[from] CaError),
    #[error(
        "Secret {namespace}/{name} has type {found:?}, not {TLS_SECRET_TYPE}; the type cannot be changed: delete the Secret and certd recreates it"
    )]
    WrongType {
        namespace: String,
        name: String,
        found: String,
    },
}

/// What a pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The Secret was current; nothing written.
    Current,
    /// Created the Secret.
    Created(Reason),
    /// Replaced the certificate in the existing Secret.
    Updated(Reason),
    /// Another replica created it first; its Secret is used.
    LostCreateRace,
    /// Another writer updated it first; the next pass re-reads.
    Conflict,
}

impl Outcome {
    /// Whether this pass wrote the Secret.
    pub fn wrote(self) -> bool {
        matches!(self, Outcome::Created(_) | Outcome::Updated(_))
    }
}

/// Decides whether `secret` needs a new certificate from `ca` for exactly
/// `dns` at `now`. `Ok(())`: it is current.
pub fn check(
    secret: Option<&Secret>,
    ca: &Ca,
    dns: &[String],
    now: OffsetDateTime,
) -> Result<(), Reason> {
    let Some(secret) = secret else {
        return Err(Reason::Absent);
    };
    if secret.type_.as_deref() != Some(TLS_SECRET_TYPE) {
        return Err(Reason::WrongType);
    }
    let data = secret.data.as_ref().ok_or(Reason::Unparseable)?;
    let text = |key: &str| -> Result<&str, Reason> {
        let bytes = data.get(key).ok_or(Reason::Unparseable)?;
        std::str::from_utf8(&bytes.0).map_err(|_| Reason::Unparseable)
    };
    let cert_pem = text(TLS_CRT)?;
    let key_pem = text(TLS_KEY)?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Reason::Unparseable)?;
    let leaf_der = chain.first().ok_or(Reason::Unparseable)?;
    let (_, leaf) =
        X509Certificate::from_der(leaf_der.as_ref()).map_err(|_| Reason::Unparseable)?;
    let key = KeyPair::from_pem(key_pem).map_err(|_| Reason::Unparseable)?;
    if leaf.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(Reason::Unparseable);
    }

    // Signed by the signing certificate itself, for serverAuth. The time
    // given is the leaf's own notBefore, so this checks the issuer, the
    // signature and the usage; the validity window is judged below.
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    if !signed_by_for_server_auth(leaf_der, ca.cert_pem(), not_before) {
        return Err(Reason::NotFromCurrentCa);
    }

    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(d) = name {
                names.insert(d.to_string());
            }
        }
    }
    if names != dns.iter().cloned().collect::<BTreeSet<_>>() {
        return Err(Reason::NamesDiffer);
    }

    let renew_at = not_before + (not_after - not_before) / 2;
    if now.unix_timestamp() >= renew_at {
        return Err(Reason::Renew);
    }
    Ok(())
}

fn signed_by_for_server_auth(leaf: &CertificateDer<'_>, ca_pem: &str, at_unix: i64) -> bool {
    let Some(Ok(ca_der)) = CertificateDer::pem_slice_iter(ca_pem.as_bytes()).next() else {
        return false;
    };
    let Ok(anchor) = webpki::anchor_from_trusted_cert(&ca_der) else {
        return false;
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let Ok(secs) = u64::try_from(at_unix) else {
        return false;
    };
    let time = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(secs));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        time,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .is_ok()
}

/// Keeps the injector's serving-certificate Secret current.
#[derive(Debug, Clone)]
pub struct WebhookCert {
    pub namespace: String,
    pub name: String,
    /// DNS names of the injector's Service.
    pub dns: Vec<String>,
}

impl WebhookCert {
    /// One pass against the current `ca`; counts its outcome in `metrics`.
    pub async fn reconcile(
        &self,
        client: &kube::Client,
        ca: &Ca,
        metrics: &Metrics,
    ) -> Result<Outcome, WebhookCertError> {
        let result = self.ensure(client, ca).await;
        let (outcome, reason) = match &result {
            Ok(Outcome::Current) => ("current", ""),
            Ok(Outcome::Created(r)) => ("created", r.as_str()),
            Ok(Outcome::Updated(r)) => ("updated", r.as_str()),
            Ok(Outcome::LostCreateRace) => ("lost_create_race", Reason::Absent.as_str()),
            Ok(Outcome::Conflict) => ("conflict", ""),
            Err(WebhookCertError::WrongType { .. }) => ("failed", Reason::WrongType.as_str()),
            Err(_) => ("failed", ""),
        };
        metrics.injector_cert(outcome, reason);
        result
    }

    async fn ensure(&self, client: &kube::Client, ca: &Ca) -> Result<Outcome, WebhookCertError> {
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let existing = api
            .get_opt(&self.name)
            .await
            .map_err(|source| WebhookCertError::Api {
                what: "get injector TLS Secret",
                source,
            })?;
        let reason = match check(existing.as_ref(), ca, &self.dns, OffsetDateTime::now_utc()) {
            Ok(()) => return Ok(Outcome::Current),
            Err(r) => r,
        };
        let Some(mut secret) = existing else {
            let secret = self.new_secret(ca)?;
            return match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    tracing::info!(secret = %self.name, namespace = %self.namespace, reason = reason.as_str(), "created the injector's serving certificate");
                    Ok(Outcome::Created(reason))
                }
                Err(e) if is_code(&e, 409) => {
                    // Another replica won; its certificate is from the same CA.
                    // Re-read so a broken winner is reported now, fixed next pass.
                    let winner =
                        api.get_opt(&self.name)
                            .await
                            .map_err(|source| WebhookCertError::Api {
                                what: "re-read injector TLS Secret after AlreadyExists",
                                source,
                            })?;
                    if let Err(r) = check(winner.as_ref(), ca, &self.dns, OffsetDateTime::now_utc())
                    {
                        tracing::info!(secret = %self.name, reason = r.as_str(), "another writer created the injector's Secret first; it needs re-issuing next pass");
                    } else {
                        tracing::debug!(secret = %self.name, "another replica created the injector's Secret first; using it");
                    }
                    Ok(Outcome::LostCreateRace)
                }
                Err(source) => Err(WebhookCertError::Api {
                    what: "create injector TLS Secret",
                    source,
                }),
            };
        };
        if reason == Reason::WrongType {
            return Err(WebhookCertError::WrongType {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                found: secret.type_.clone().unwrap_or_default(),
            });
        }
        // replace() sends the resourceVersion we read: a concurrent writer
        // makes this 409 rather than being overwritten.
        let fresh = self.new_secret(ca)?;
        secret.data = fresh.data;
        secret.string_data = None;
        secret
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .extend(fresh.metadata.labels.unwrap_or_default());
        match api
            .replace(&self.name, &PostParams::default(), &secret)
            .await
        {
            Ok(_) => {
                tracing::info!(secret = %self.name, namespace = %self.namespace, reason = reason.as_str(), "re-issued the injector's serving certificate");
                Ok(Outcome::Updated(reason))
            }
            Err(e) if is_code(&e, 409) => {
                tracing::debug!(secret = %self.name, "the injector's Secret changed under us; re-reading next pass");
                Ok(Outcome::Conflict)
            }
            Err(source) => Err(WebhookCertError::Api {
                what: "update injector TLS Secret",
                source,
            }),
        }
    }

    /// A Secret holding a fresh key and a certificate for it from `ca`.
    fn new_secret(&self, ca: &Ca) -> Result<Secret, WebhookCertError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::from)?;
        let issued = ca.issue_serving(&key, &self.dns, &[])?;
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "meshlite-certd".to_string(),
                    ),
                    (
                        "app.kubernetes.io/part-of".to_string(),
                        "meshlite".to_string(),
                    ),
                ])),
                ..Default::default()
            },
            type_: Some(TLS_SECRET_TYPE.into()),
            data: Some(BTreeMap::from([
                (
                    TLS_CRT.to_string(),
                    ByteString(issued.chain_pem.into_bytes()),
                ),
                (
                    TLS_KEY.to_string(),
                    ByteString(key.serialize_pem().into_bytes()),
                ),
            ])),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

    use super::*;
    use crate::server::cluster_dns_names;

    fn dns() -> Vec<String> {
        cluster_dns_names(INJECTOR_SERVICE, "meshlite-system")
    }

    fn cert() -> WebhookCert {
        WebhookCert {
            namespace: "meshlite-system".into(),
            name: INJECTOR_SECRET.into(),
            dns: dns(),
        }
    }

    fn with_data(mut s: Secret, key: &str, value: &str) -> Secret {
        s.data
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), ByteString(value.as_bytes().to_vec()));
        s
    }

    #[test]
    fn a_fresh_secret_is_current_until_half_its_lifetime() {
        let ca = Ca::generate_root("td").unwrap();
        let secret = cert().new_secret(&ca).unwrap();
        let now = OffsetDateTime::now_utc();
        assert_eq!(check(Some(&secret), &ca, &dns(), now), Ok(()));
        assert_eq!(
            check(Some(&secret), &ca, &dns(), now + time::Duration::days(14)),
            Ok(())
        );
        assert_eq!(
            check(Some(&secret), &ca, &dns(), now + time::Duration::days(16)),
            Err(Reason::Renew)
        );
        assert_eq!(
            check(Some(&secret), &ca, &dns(), now + time::Duration::days(40)),
            Err(Reason::Renew),
            "expired"
        );
    }

    #[test]
    fn the_secret_is_kubernetes_io_tls_with_a_p256_key_and_a_server_certificate() {
        let ca = Ca::generate_root("td").unwrap();
        let secret = cert().new_secret(&ca).unwrap();
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = secret.data.unwrap();
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["tls.crt", "tls.key"]);
        let key = KeyPair::from_pem(std::str::from_utf8(&data["tls.key"].0).unwrap()).unwrap();
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        let chain = std::str::from_utf8(&data["tls.crt"].0).unwrap();
        let der = CertificateDer::from_pem_slice(chain.as_bytes()).unwrap();
        let (_, leaf) = X509Certificate::from_der(der.as_ref()).unwrap();
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let days = (leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp())
            / 86400;
        assert_eq!(days, 30);
    }

    #[test]
    fn absent_wrong_type_and_unparseable_secrets_need_a_certificate() {
        let ca = Ca::generate_root("td").unwrap();
        let now = OffsetDateTime::now_utc();
        assert_eq!(check(None, &ca, &dns(), now), Err(Reason::Absent));
        let good = cert().new_secret(&ca).unwrap();

        let mut opaque = good.clone();
        opaque.type_ = Some("Opaque".into());
        assert_eq!(
            check(Some(&opaque), &ca, &dns(), now),
            Err(Reason::WrongType)
        );

        let mut no_data = good.clone();
        no_data.data = None;
        let mut no_key = good.clone();
        no_key.data.as_mut().unwrap().remove(TLS_KEY);
        let garbage = with_data(good.clone(), TLS_CRT, "not a certificate");
        let bad_pem = with_data(
            good.clone(),
            TLS_CRT,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        );
        let other_key = with_data(
            good.clone(),
            TLS_KEY,
            &KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .unwrap()
                .serialize_pem(),
        );
        let mut not_utf8 = good.clone();
        not_utf8
            .data
            .as_mut()
            .unwrap()
            .insert(TLS_CRT.into(), ByteString(vec![0xff, 0xfe]));
        for (what, s) in [
            ("no data", no_data),
            ("no tls.key", no_key),
            ("no PEM", garbage),
            ("broken PEM", bad_pem),
            ("key of another certificate", other_key),
            ("not UTF-8", not_utf8),
        ] {
            assert_eq!(
                check(Some(&s), &ca, &dns(), now),
                Err(Reason::Unparseable),
                "{what}"
            );
        }
    }

    #[test]
    fn a_certificate_from_another_ca_or_for_other_names_is_replaced() {
        let ca = Ca::generate_root("td").unwrap();
        let other = Ca::generate_root("td").unwrap();
        let now = OffsetDateTime::now_utc();
        let foreign = cert().new_secret(&other).unwrap();
        assert_eq!(
            check(Some(&foreign), &ca, &dns(), now),
            Err(Reason::NotFromCurrentCa)
        );
        let mut narrow = cert();
        narrow.dns.truncate(1);
        let narrow = narrow.new_secret(&ca).unwrap();
        assert_eq!(
            check(Some(&narrow), &ca, &dns(), now),
            Err(Reason::NamesDiffer)
        );
        let mut wide = cert();
        wide.dns.push("extra.example".into());
        let wide = wide.new_secret(&ca).unwrap();
        assert_eq!(
            check(Some(&wide), &ca, &dns(), now),
            Err(Reason::NamesDiffer)
        );
    }

    #[test]
    fn a_workload_certificate_from_the_ca_is_not_a_serving_certificate() {
        let ca = Ca::generate_root("td").unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // A leaf without serverAuth: signed by the CA, but the wrong kind.
        let mut params = rcgen::CertificateParams::new(dns()).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let ca_key = KeyPair::from_pem(ca.key_pem()).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(ca.cert_pem(), ca_key).unwrap();
        let leaf = params.signed_by(&key, &issuer).unwrap();
        let mut secret = cert().new_secret(&ca).unwrap();
        secret = with_data(secret, TLS_CRT, &leaf.pem());
        secret = with_data(secret, TLS_KEY, &key.serialize_pem());
        assert_eq!(
            check(Some(&secret), &ca, &dns(), OffsetDateTime::now_utc()),
            Err(Reason::NotFromCurrentCa)
        );
    }
}
