//! Token review: who does a bearer token belong to?
//!
//! [`TokenReviewer`] has two implementations: the Kubernetes TokenReview API
//! ([`crate::kube::KubeTokenReviewer`]) and, for embedded mode, a static token
//! file ([`StaticTokens`]).

use std::collections::HashMap;
use std::path::Path;

use futures::future::BoxFuture;
use meshlite_contract::{SpiffeId, TrustDomain};

use crate::ApiError;
use crate::identity::Caller;

/// Authenticates a bearer token and derives the caller's identity from it.
pub trait TokenReviewer: Send + Sync + std::fmt::Debug {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, ApiError>>;
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path} line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
}

/// Embedded mode's tokens: one per line, `<token> <namespace> <serviceaccount> [<pod>]`.
/// Blank lines and lines starting with `#` are ignored.
#[derive(Clone)]
pub struct StaticTokens {
    tokens: HashMap<String, Caller>,
}

impl std::fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: print how many, not which.
        f.debug_struct("StaticTokens")
            .field("count", &self.tokens.len())
            .finish()
    }
}

impl StaticTokens {
    /// Parses the token file format; `path` only labels errors.
    pub fn parse(text: &str, td: &TrustDomain, path: &str) -> Result<Self, TokenFileError> {
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| TokenFileError::Line {
                path: path.to_string(),
                line: i + 1,
                reason,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (token, ns, sa, pod) = match fields.as_slice() {
                [t, ns, sa] => (*t, *ns, *sa, None),
                [t, ns, sa, pod] => (*t, *ns, *sa, Some(pod.to_string())),
                _ => {
                    return Err(err(
                        "expected `<token> <namespace> <serviceaccount> [<pod>]`".into(),
                    ));
                }
            };
            let id = SpiffeId::new(td.clone(), ns, sa).map_err(|e| err(e.to_string()))?;
            if tokens
                .insert(token.to_string(), Caller { id, pod })
                .is_some()
            {
                return Err(err("duplicate token".into()));
            }
        }
        Ok(StaticTokens { tokens })
    }

    pub fn load(path: &Path, td: &TrustDomain) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, td, &path.display().to_string())
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

impl TokenReviewer for StaticTokens {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, ApiError>> {
        let found = self
            .tokens
            .get(token)
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated("unknown token".into()));
        Box::pin(async move { found })
    }
}

/// Tokens that passed review recently, for the naming API only.
///
/// A proxy asks certd about every new destination and again after each
/// answer's TTL, so reviewing its token every time would put a TokenReview on
/// the API server per destination per TTL per pod. Naming answers only
/// describe the mesh (they grant nothing), so a token reviewed once is
/// accepted for [`ReviewCache::TTL`] without another review; certificate
/// requests are always reviewed. Keys are SHA-256 digests, never the tokens.
#[derive(Debug, Default)]
pub struct ReviewCache {
    map: std::sync::Mutex<HashMap<[u8; 32], std::time::Instant>>,
}

impl ReviewCache {
    /// How long a reviewed token is accepted without another review.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(60);
    /// Most tokens remembered; past it the cache starts over (one review each).
    pub const MAX: usize = 16 * 1024;

    fn key(token: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    /// Whether `token` passed review less than [`Self::TTL`] before `now`.
    pub fn fresh(&self, token: &str, now: std::time::Instant) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&Self::key(token))
            .is_some_and(|at| now.saturating_duration_since(*at) < Self::TTL)
    }

    /// Records that `token` passed review at `now`.
    pub fn remember(&self, token: &str, now: std::time::Instant) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::MAX {
            map.retain(|_, at| now.saturating_duration_since(*at) < Self::TTL);
            if map.len() >= Self::MAX {
                map.clear();
            }
        }
        map.insert(Self::key(token), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_tokens_map_to_their_identity_and_unknown_ones_are_refused() {
        let td = TrustDomain::default();
        let text = "# comment\n\nt1 shop cart\nt2 shop web web-0\n";
        let tokens = StaticTokens::parse(text, &td, "f").unwrap();
        assert_eq!(tokens.len(), 2);
        let c = tokens.review("t2").await.unwrap();
        assert_eq!(c.id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(c.pod.as_deref(), Some("web-0"));
        assert!(matches!(
            tokens.review("nope").await,
            Err(ApiError::Unauthenticated(_))
        ));
    }

    #[test]
    fn a_reviewed_token_is_fresh_for_the_ttl_only() {
        let cache = ReviewCache::default();
        let t0 = std::time::Instant::now();
        assert!(!cache.fresh("t", t0));
        cache.remember("t", t0);
        assert!(cache.fresh("t", t0 + ReviewCache::TTL / 2));
        assert!(!cache.fresh("t", t0 + ReviewCache::TTL));
        assert!(!cache.fresh("other", t0));
    }

    #[test]
    fn token_file_errors_name_the_line() {
        let td = TrustDomain::default();
        let err = StaticTokens::parse("t1 a b\nt2 only\n", &td, "f").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = StaticTokens::parse("t1 A b\n", &td, "f").unwrap_err();
        assert!(err.to_string().contains("namespace"), "{err}");
        let err = StaticTokens::parse("t a b\nt c d\n", &td, "f").unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
    }
}
