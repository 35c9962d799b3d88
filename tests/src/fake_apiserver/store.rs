//! The fake API server's object store: JSON objects keyed by
//! (group, version, resource, namespace, name), one resourceVersion counter
//! for everything (as etcd's revision is), and a history of watch events.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Identifies one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: String,
}

/// A change, as a watch reports it.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub key: Key,
    pub object: Value,
    pub rv: u64,
}

/// All objects and their history.
#[derive(Debug)]
pub struct Store {
    pub objects: BTreeMap<Key, Value>,
    pub rv: u64,
    pub history: Vec<Event>,
    pub events: broadcast::Sender<Event>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            objects: BTreeMap::new(),
            rv: 0,
            history: Vec::new(),
            events: broadcast::channel(1024).0,
        }
    }
}

/// `metadata.resourceVersion` as a number (0 when absent or unparsable).
pub fn rv_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Store {
    /// Stores `obj` under `key` with a new resourceVersion and records the event.
    pub fn put(&mut self, key: Key, mut obj: Value, kind: &'static str) -> Value {
        self.rv += 1;
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key.clone(), obj.clone());
        self.record(kind, key, obj.clone());
        obj
    }

    pub fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record("DELETED", key.clone(), obj.clone());
        Some(obj)
    }

    fn record(&mut self, kind: &'static str, key: Key, object: Value) {
        let event = Event {
            kind,
            key,
            object,
            rv: self.rv,
        };
        self.history.push(event.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
    }
}

/// A parsed `labelSelector`: equality (`k=v`, `k==v`), inequality (`k!=v`) and existence (`k`, `!k`).
pub fn matches_labels(obj: &Value, selector: &str) -> bool {
    let labels = obj.pointer("/metadata/labels");
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                label(k.trim()) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                label(k.trim()) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                label(k.trim()).is_none()
            } else {
                label(term).is_some()
            }
        })
}

/// A `fieldSelector`: only `metadata.name` and `metadata.namespace` equality, which is what
/// every resource supports on a real API server.
pub fn matches_fields(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) else {
                return false;
            };
            let path = match k.trim() {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                _ => return false,
            };
            obj.pointer(path).and_then(Value::as_str) == Some(v.trim())
        })
}
