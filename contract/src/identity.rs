//! Workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Identities are parsed once, at the edge (a certificate SAN, a TokenReview
//! answer, a CLI flag), and passed around as [`SpiffeId`] from then on.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a meshlite identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{0:?} is not a spiffe:// URI")]
    NotSpiffe(String),
    #[error(
        "invalid trust domain {0:?}: use lowercase letters, digits, '.', '-' and '_' (at most 255 characters)"
    )]
    TrustDomain(String),
    #[error(
        "{0:?} does not have the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Shape(String),
    #[error("invalid namespace {0:?}: it must be a DNS-1123 label")]
    Namespace(String),
    #[error("invalid service account {0:?}: it must be a DNS-1123 subdomain")]
    ServiceAccount(String),
}

/// A SPIFFE trust domain such as `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(s: &str) -> Result<Self, IdentityError> {
        let ok = !s.is_empty()
            && s.len() <= 255
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if ok {
            Ok(TrustDomain(s.to_string()))
        } else {
            Err(IdentityError::TrustDomain(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        TrustDomain(crate::DEFAULT_TRUST_DOMAIN.to_string())
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustDomain::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workload identity in meshlite's SPIFFE ID shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

/// A DNS-1123 label: 1..=63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

impl SpiffeId {
    /// Builds an identity from its parts, validating each one.
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        if !is_dns1123_label(namespace) {
            return Err(IdentityError::Namespace(namespace.to_string()));
        }
        if !is_dns1123_subdomain(service_account) {
            return Err(IdentityError::ServiceAccount(service_account.to_string()));
        }
        Ok(SpiffeId {
            trust_domain,
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The URI form, as it appears in a certificate's URI SAN.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::NotSpiffe(s.to_string()))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::Shape(s.to_string()))?;
        let trust_domain = TrustDomain::new(td)?;
        let mut parts = path.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => {
                SpiffeId::new(trust_domain, ns, sa)
            }
            _ => Err(IdentityError::Shape(s.to_string())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_canonical_form() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "cart");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
    }

    #[test]
    fn rejects_malformed_identities_with_the_reason() {
        let cases = [
            ("https://cluster.local/ns/a/sa/b", "not a spiffe"),
            ("spiffe://Cluster.Local/ns/a/sa/b", "trust domain"),
            ("spiffe://cluster.local", "form"),
            ("spiffe://cluster.local/ns/a/sa", "form"),
            ("spiffe://cluster.local/ns/a/sa/b/extra", "form"),
            ("spiffe://cluster.local/sa/b/ns/a", "form"),
            ("spiffe://cluster.local/ns/A/sa/b", "namespace"),
            ("spiffe://cluster.local/ns/-a/sa/b", "namespace"),
            ("spiffe://cluster.local/ns/a/sa/", "service account"),
            ("spiffe://cluster.local/ns/a/sa/b..c", "service account"),
            ("spiffe:///ns/a/sa/b", "trust domain"),
        ];
        for (input, want) in cases {
            let err = input.parse::<SpiffeId>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err} should mention {want}");
        }
    }

    #[test]
    fn serde_round_trips_as_a_string() {
        let id: SpiffeId = "spiffe://td/ns/a/sa/b.c".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://td/ns/a/sa/b.c\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/x\"").is_err());
    }

    proptest! {
        #[test]
        fn valid_identities_round_trip(
            td in "[a-z0-9._-]{1,20}",
            ns in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            sa in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,3}",
        ) {
            let id = SpiffeId::new(TrustDomain::new(&td).unwrap(), &ns, &sa).unwrap();
            let back: SpiffeId = id.to_string().parse().unwrap();
            prop_assert_eq!(back, id);
        }

        #[test]
        fn parsing_arbitrary_strings_never_panics(s in ".{0,80}") {
            let _ = s.parse::<SpiffeId>();
            let _ = format!("spiffe://{s}").parse::<SpiffeId>();
        }
    }
}
