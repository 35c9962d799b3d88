//! The inbound allow list: the value of the `meshlite.io/allow` pod annotation.
//!
//! A comma-separated list of entries, each either a full SPIFFE ID or the short
//! form `ns/<namespace>/sa/<service-account>`. In both forms the namespace and
//! service-account segments may contain `*`, which matches any run of characters
//! within that segment. The short form matches in the proxy's own trust domain;
//! a full SPIFFE ID must name the trust domain exactly.
//!
//! An absent annotation allows every identity in the trust domain. A present but
//! empty annotation allows nobody: an operator who wrote an allow list meant to
//! restrict, so the empty case fails closed.

use crate::identity::{SpiffeId, TrustDomain};
use std::fmt;

/// Why an allow-list entry could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid allow-list entry {entry:?}: {reason}")]
pub struct AllowError {
    pub entry: String,
    pub reason: &'static str,
}

/// One entry of an allow list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowPattern {
    /// `None` for the short form, which matches in the local trust domain.
    trust_domain: Option<TrustDomain>,
    namespace: String,
    service_account: String,
}

/// Matches `text` against `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'*')
        })
}

impl AllowPattern {
    pub fn parse(entry: &str) -> Result<Self, AllowError> {
        let err = |reason| AllowError {
            entry: entry.to_string(),
            reason,
        };
        let (trust_domain, path) = match entry.strip_prefix("spiffe://") {
            Some(rest) => {
                let (td, path) = rest
                    .split_once('/')
                    .ok_or_else(|| err("expected spiffe://<trust-domain>/ns/<ns>/sa/<sa>"))?;
                let td = TrustDomain::new(td).map_err(|_| err("invalid trust domain"))?;
                (Some(td), path)
            }
            None => (None, entry),
        };
        let segs: Vec<&str> = path.split('/').collect();
        let [ns_key, ns, sa_key, sa] = segs.as_slice() else {
            return Err(err("expected ns/<namespace>/sa/<service-account>"));
        };
        if *ns_key != "ns" || *sa_key != "sa" {
            return Err(err("expected ns/<namespace>/sa/<service-account>"));
        }
        if !valid_segment(ns) || !valid_segment(sa) {
            return Err(err(
                "namespace and service account use lowercase letters, digits, '-', '.' and '*'",
            ));
        }
        Ok(AllowPattern {
            trust_domain,
            namespace: ns.to_string(),
            service_account: sa.to_string(),
        })
    }

    /// Whether `id` matches this entry, given the proxy's own trust domain.
    pub fn matches(&self, id: &SpiffeId, local: &TrustDomain) -> bool {
        let td = self.trust_domain.as_ref().unwrap_or(local);
        id.trust_domain() == td
            && glob(&self.namespace, id.namespace())
            && glob(&self.service_account, id.service_account())
    }
}

impl fmt::Display for AllowPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(td) = &self.trust_domain {
            write!(f, "spiffe://{td}/")?;
        }
        write!(f, "ns/{}/sa/{}", self.namespace, self.service_account)
    }
}

/// A parsed allow list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AllowList {
    /// No allow list configured: any identity in the local trust domain.
    #[default]
    AnyInTrustDomain,
    /// Only identities matching one of these entries (none: nobody).
    Only(Vec<AllowPattern>),
}

impl AllowList {
    /// Parses the annotation value. Whitespace around entries is ignored.
    pub fn parse(value: &str) -> Result<Self, AllowError> {
        value
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(AllowPattern::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(AllowList::Only)
    }

    /// Whether `id` may connect, given the proxy's own trust domain.
    pub fn allows(&self, id: &SpiffeId, local: &TrustDomain) -> bool {
        match self {
            AllowList::AnyInTrustDomain => id.trust_domain() == local,
            AllowList::Only(patterns) => patterns.iter().any(|p| p.matches(id, local)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn absent_list_allows_only_the_local_trust_domain() {
        let td = TrustDomain::default();
        let list = AllowList::default();
        assert!(list.allows(&id("spiffe://cluster.local/ns/a/sa/b"), &td));
        assert!(!list.allows(&id("spiffe://other.org/ns/a/sa/b"), &td));
    }

    #[test]
    fn empty_list_allows_nobody() {
        let td = TrustDomain::default();
        let list = AllowList::parse(" , ").unwrap();
        assert_eq!(list, AllowList::Only(vec![]));
        assert!(!list.allows(&id("spiffe://cluster.local/ns/a/sa/b"), &td));
    }

    #[test]
    fn patterns_match_by_table() {
        let td = TrustDomain::default();
        let list = AllowList::parse(
            "ns/shop/sa/cart, ns/ops-*/sa/*, spiffe://partner.io/ns/billing/sa/api, ns/x/sa/*-reader",
        )
        .unwrap();
        let cases = [
            ("spiffe://cluster.local/ns/shop/sa/cart", true),
            ("spiffe://cluster.local/ns/shop/sa/carts", false),
            ("spiffe://cluster.local/ns/ops-eu/sa/anything", true),
            ("spiffe://cluster.local/ns/ops/sa/anything", false),
            ("spiffe://partner.io/ns/billing/sa/api", true),
            ("spiffe://cluster.local/ns/billing/sa/api", false),
            ("spiffe://partner.io/ns/shop/sa/cart", false),
            ("spiffe://cluster.local/ns/x/sa/db-reader", true),
            ("spiffe://cluster.local/ns/x/sa/db-writer", false),
        ];
        for (who, want) in cases {
            assert_eq!(list.allows(&id(who), &td), want, "{who}");
        }
    }

    #[test]
    fn bad_entries_are_errors_that_name_the_entry() {
        for bad in [
            "shop/cart",
            "ns/shop/sa",
            "ns/Shop/sa/x",
            "svc/shop/sa/x",
            "spiffe://BAD/ns/a/sa/b",
            "spiffe://td",
        ] {
            let err = AllowList::parse(bad).unwrap_err();
            assert_eq!(err.entry, bad);
        }
    }

    #[test]
    fn glob_matches_like_a_shell_segment() {
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(glob("a*a", "aa"));
        assert!(!glob("a*a", "a"));
        assert!(glob("**", "x"));
        assert!(!glob("abc", "abcd"));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,60}") {
            let _ = AllowList::parse(&s);
        }

        #[test]
        fn entries_round_trip_through_display(ns in "[a-z*][a-z0-9*-]{0,8}", sa in "[a-z*][a-z0-9.*-]{0,8}") {
            let p = AllowPattern::parse(&format!("ns/{ns}/sa/{sa}")).unwrap();
            prop_assert_eq!(AllowPattern::parse(&p.to_string()).unwrap(), p);
        }
    }
}
