//! Inbound authorisation: the allow list, reloaded live.
//!
//! The allow list is the `meshlite.io/allow` annotation (syntax in
//! `meshlite_contract::allow`). In a pod it is read from the downward-API
//! annotations file, which the kubelet rewrites when the annotation changes, so
//! a change takes effect without a restart. An allow list that fails to parse
//! denies everything until it is fixed: the operator meant to restrict access.

use meshlite_contract::{ALLOW_ANNOTATION, AllowList, SpiffeId, TrustDomain};
use std::sync::{Arc, RwLock};

/// Why a policy source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Allow(#[from] meshlite_contract::allow::AllowError),
    #[error("annotations file line {line}: {reason}")]
    Annotations { line: usize, reason: &'static str },
}

/// The current allow list, shared by the inbound listeners.
#[derive(Debug, Clone)]
pub struct PolicyStore {
    local: TrustDomain,
    current: Arc<RwLock<Arc<AllowList>>>,
}

impl PolicyStore {
    pub fn new(local: TrustDomain, initial: AllowList) -> Self {
        PolicyStore {
            local,
            current: Arc::new(RwLock::new(Arc::new(initial))),
        }
    }

    pub fn set(&self, list: AllowList) {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        *cur = Arc::new(list);
    }

    pub fn get(&self) -> Arc<AllowList> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `peer` may connect to this workload.
    pub fn allows(&self, peer: &SpiffeId) -> bool {
        self.get().allows(peer, &self.local)
    }
}

/// Parses a downward-API annotations file (`key="value"` lines, values quoted
/// as Go's `%q` does) and returns the allow list it declares.
pub fn allow_list_from_annotations(text: &str) -> Result<AllowList, PolicyError> {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(PolicyError::Annotations {
            line: i + 1,
            reason: "expected key=\"value\"",
        })?;
        if key == ALLOW_ANNOTATION {
            let value = unquote(value).ok_or(PolicyError::Annotations {
                line: i + 1,
                reason: "value is not a quoted string",
            })?;
            return Ok(AllowList::parse(&value)?);
        }
    }
    Ok(AllowList::AnyInTrustDomain)
}

/// Undoes Go's `%q` quoting for the escapes an annotation value can contain.
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_without_the_key_allow_the_trust_domain() {
        let text = "kubernetes.io/config.seen=\"2026-01-01\"\nother=\"x\"\n";
        assert_eq!(
            allow_list_from_annotations(text).unwrap(),
            AllowList::AnyInTrustDomain
        );
    }

    #[test]
    fn the_allow_annotation_is_unquoted_and_parsed() {
        let text = "a=\"b\"\nmeshlite.io/allow=\"ns/shop/sa/cart, ns/ops/sa/*\"\n";
        let list = allow_list_from_annotations(text).unwrap();
        let td = TrustDomain::default();
        let store = PolicyStore::new(td, list);
        assert!(store.allows(&"spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap()));
        assert!(store.allows(&"spiffe://cluster.local/ns/ops/sa/x".parse().unwrap()));
        assert!(!store.allows(&"spiffe://cluster.local/ns/shop/sa/web".parse().unwrap()));
    }

    #[test]
    fn malformed_annotation_files_are_errors() {
        assert!(allow_list_from_annotations("garbage line").is_err());
        assert!(allow_list_from_annotations("meshlite.io/allow=unquoted").is_err());
        assert!(allow_list_from_annotations("meshlite.io/allow=\"bad entry\"").is_err());
    }

    #[test]
    fn go_escapes_are_undone() {
        assert_eq!(
            unquote(r#""a\"b\\c\n\u00e9\x41""#).as_deref(),
            Some("a\"b\\c\néA")
        );
        assert_eq!(unquote(r#""\q""#), None);
        assert_eq!(unquote("nope"), None);
    }

    #[test]
    fn set_replaces_the_list_for_new_checks() {
        let store = PolicyStore::new(TrustDomain::default(), AllowList::Only(vec![]));
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        assert!(!store.allows(&id));
        store.set(AllowList::parse("ns/a/sa/b").unwrap());
        assert!(store.allows(&id));
    }
}
