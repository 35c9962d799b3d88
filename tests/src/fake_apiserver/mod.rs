//! A fake Kubernetes API server for in-process tests (DESIGN §6, tier 2).
//!
//! It listens on `127.0.0.1:0` over plain HTTP and serves the real REST paths
//! (`/api/v1/...`, `/apis/<group>/<version>/...`) with the semantics a
//! `kube::Client` relies on: create (with `generateName`), get, list (label
//! and field selectors), watch (`?watch=true`, JSON lines of WatchEvents from
//! a resourceVersion), update with optimistic concurrency (409 on a stale
//! resourceVersion), JSON/merge patch, delete, and `kind: Status` errors
//! (404 NotFound, 409 AlreadyExists/Conflict, 422 Invalid).
//!
//! Objects are kept as `serde_json::Value` by (group, version, resource,
//! namespace, name), so any resource works; a few get real behaviour:
//!
//! - `certificatesigningrequests`: `/approval` changes only the
//!   Approved/Denied conditions, `/status` everything else in status (and a
//!   certificate needs an approved request); an optional external signer.
//! - `tokenreviews`: answered from tokens the test registers.
//!
//! Test knobs: [`FakeApiServer::set_down`] (every request gets 503),
//! [`FakeApiServer::inject_conflicts`] (the next writes get 409),
//! [`FakeApiServer::set_external_signer`] (sign, fail, or never answer), and
//! [`FakeApiServer::requests`] (what was called, e.g. to check RBAC).

pub mod certd;
mod routes;
mod special;
mod status;
mod store;
mod watch;
pub mod workloads;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::task::JoinHandle;

pub use store::Key;

/// What the fake knows about a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// `status.user.username`, e.g. `system:serviceaccount:shop:cart`.
    pub username: String,
    /// Audiences the token was issued for.
    pub audiences: Vec<String>,
    /// An expired token never authenticates.
    pub expired: bool,
    /// `authentication.kubernetes.io/pod-name` in `status.user.extra`.
    pub pod: Option<String>,
}

/// Signs a PEM CSR into a PEM chain, or refuses with a message.
pub type SignFn = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// How an external signer answers approved CSRs for its signerName.
#[derive(Clone)]
pub enum ExternalSigner {
    /// Sets `status.certificate` from the function's chain (or Failed on error).
    Sign(SignFn),
    /// Adds a `Failed` condition with this message.
    Fail(String),
    /// Never touches the request.
    Never,
}

impl std::fmt::Debug for ExternalSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExternalSigner::Sign(_) => f.write_str("Sign(..)"),
            ExternalSigner::Fail(m) => write!(f, "Fail({m:?})"),
            ExternalSigner::Never => f.write_str("Never"),
        }
    }
}

/// One request the fake answered, in Kubernetes RBAC terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// RBAC verb: get, list, watch, create, update, patch, delete.
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    /// The object's name: from the path, or for a create from the body's
    /// `metadata.name` (absent with `generateName`).
    pub name: Option<String>,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) store: Mutex<store::Store>,
    pub(crate) tokens: Mutex<HashMap<String, TokenEntry>>,
    pub(crate) signers: Mutex<HashMap<String, ExternalSigner>>,
    pub(crate) down: AtomicBool,
    pub(crate) requests: Mutex<Vec<Recorded>>,
    pub(crate) conflicts: Mutex<Vec<Injected>>,
}

/// Injected 409 Conflicts for requests matching a verb and (sub)resource.
#[derive(Debug)]
pub(crate) struct Injected {
    pub(crate) verb: String,
    pub(crate) resource: String,
    pub(crate) subresource: Option<String>,
    pub(crate) left: usize,
}

/// Locks, ignoring poisoning: a panicking test thread leaves the data usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running fake API server; dropping it stops it.
#[derive(Debug)]
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let router = routes::router(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "fake API server stopped");
            }
        });
        Ok(FakeApiServer { addr, shared, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kube::Client` talking to this server over plain HTTP.
    pub fn client(&self) -> kube::Client {
        let url = self
            .url()
            .parse()
            .expect("a loopback http URL is a valid URI");
        kube::Client::try_from(kube::Config::new(url))
            .expect("a plain-HTTP kube config always builds a client")
    }

    /// Registers a bearer token.
    pub fn add_token(&self, token: &str, entry: TokenEntry) {
        lock(&self.shared.tokens).insert(token.to_string(), entry);
    }

    /// Registers a valid, bound ServiceAccount token for `ns`/`sa`.
    pub fn add_service_account_token(&self, token: &str, ns: &str, sa: &str, audience: &str) {
        self.add_token(
            token,
            TokenEntry {
                username: format!("system:serviceaccount:{ns}:{sa}"),
                audiences: vec![audience.to_string()],
                expired: false,
                pod: Some(format!("{sa}-pod")),
            },
        );
    }

    /// While down, every request is answered 503 ServiceUnavailable.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Answers the next `count` requests with this RBAC `verb` on
    /// `resource`/`subresource` with 409 Conflict, as if another writer had
    /// changed the object in between.
    pub fn inject_conflicts(
        &self,
        verb: &str,
        resource: &str,
        subresource: Option<&str>,
        count: usize,
    ) {
        lock(&self.shared.conflicts).push(Injected {
            verb: verb.to_string(),
            resource: resource.to_string(),
            subresource: subresource.map(str::to_string),
            left: count,
        });
    }

    /// Installs an external signer for `signer_name`.
    pub fn set_external_signer(&self, signer_name: &str, signer: ExternalSigner) {
        lock(&self.shared.signers).insert(signer_name.to_string(), signer);
    }

    /// Stores an object directly (no validation), e.g. a labelled namespace.
    pub fn insert(&self, key: Key, object: Value) -> Value {
        lock(&self.shared.store).put(key, object, "ADDED")
    }

    pub fn get(&self, key: &Key) -> Option<Value> {
        lock(&self.shared.store).objects.get(key).cloned()
    }

    /// Every object of `resource` (any group, any namespace).
    pub fn list(&self, resource: &str) -> Vec<Value> {
        lock(&self.shared.store)
            .objects
            .iter()
            .filter(|(k, _)| k.resource == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Key of a core (`v1`) object.
    pub fn core_key(resource: &str, namespace: Option<&str>, name: &str) -> Key {
        Key {
            group: String::new(),
            version: "v1".into(),
            resource: resource.into(),
            namespace: namespace.map(str::to_string),
            name: name.into(),
        }
    }

    /// Adds a namespace with `labels`.
    pub fn add_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        self.insert(
            Self::core_key("namespaces", None, name),
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": { "name": name, "labels": labels },
            }),
        );
    }
}
