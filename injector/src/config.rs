//! The injector's configuration: what the injected containers look like.
//!
//! Parsed once at start from a YAML (or JSON, which YAML accepts) file into
//! [`InjectorConfig`]. Every field has a default, so an empty file is a working
//! configuration; unknown fields are refused so a typo does not silently fall
//! back to a default.

use std::collections::BTreeMap;
use std::path::Path;

use meshlite_contract::Mode;
use serde::{Deserialize, Serialize};

/// Image used when the configuration names none. Tagged with this crate's
/// version so the injector and the proxy it injects move together.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/meshlite/meshlite-proxy:",
    env!("CARGO_PKG_VERSION")
);
/// certd's in-cluster URL under the default install (`deploy/`).
pub const DEFAULT_CERTD_URL: &str = "https://meshlite-certd.meshlite-system.svc:8443";

/// Everything the mutation needs besides the pod and its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InjectorConfig {
    /// Image of both the init container and the proxy.
    pub image: String,
    /// `imagePullPolicy` of both injected containers; unset leaves the cluster default.
    pub image_pull_policy: Option<String>,
    /// Resources of the proxy container.
    pub proxy_resources: Resources,
    /// Resources of the init container (it only runs iptables-restore).
    pub init_resources: Resources,
    /// Inject the proxy as a regular container with a postStart wait, for
    /// clusters older than 1.29 (no native sidecars).
    pub legacy_mode: bool,
    /// SPIFFE trust domain handed to the proxy.
    pub trust_domain: String,
    /// certd's base URL handed to the proxy.
    pub certd_url: String,
    /// Inbound mode when neither the pod nor its namespace names one.
    #[serde(with = "mode_serde")]
    pub default_mode: Mode,
    /// Lifetime of the projected ServiceAccount token (the kubelet refreshes it at 80%).
    pub token_expiration_seconds: i64,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        InjectorConfig {
            image: DEFAULT_IMAGE.to_string(),
            image_pull_policy: None,
            proxy_resources: Resources::proxy_default(),
            init_resources: Resources::init_default(),
            legacy_mode: false,
            trust_domain: meshlite_contract::DEFAULT_TRUST_DOMAIN.to_string(),
            certd_url: DEFAULT_CERTD_URL.to_string(),
            default_mode: Mode::Permissive,
            // One hour: the shortest lifetime the API server's default settings allow
            // without extending it, and long enough to ride out a certd restart.
            token_expiration_seconds: 3600,
        }
    }
}

/// Requests and limits as Kubernetes quantity strings (`"100m"`, `"64Mi"`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Resources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

impl Resources {
    fn proxy_default() -> Self {
        // Sized for the proxy's bounded per-connection memory (no discovery state).
        Resources {
            requests: [("cpu", "50m"), ("memory", "32Mi")].map(own).into(),
            limits: [("memory", "128Mi")].map(own).into(),
        }
    }

    fn init_default() -> Self {
        Resources {
            requests: [("cpu", "10m"), ("memory", "10Mi")].map(own).into(),
            limits: [("cpu", "100m"), ("memory", "50Mi")].map(own).into(),
        }
    }
}

fn own((k, v): (&str, &str)) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading injector config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing injector config {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("injector config {path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl InjectorConfig {
    /// Parses YAML or JSON text. `origin` names the source in error messages.
    pub fn from_text(text: &str, origin: &str) -> Result<Self, ConfigError> {
        // An empty YAML document is `null`, which serde refuses for a struct.
        let cfg: InjectorConfig = if text.trim().is_empty() {
            InjectorConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                path: origin.to_string(),
                source,
            })?
        };
        cfg.validate().map_err(|reason| ConfigError::Invalid {
            path: origin.to_string(),
            reason,
        })?;
        Ok(cfg)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: origin.clone(),
            source,
        })?;
        Self::from_text(&text, &origin)
    }

    fn validate(&self) -> Result<(), String> {
        if self.image.trim().is_empty() {
            return Err("image: must not be empty".into());
        }
        meshlite_contract::TrustDomain::new(&self.trust_domain)
            .map_err(|e| format!("trustDomain {:?}: {e}", self.trust_domain))?;
        if !self.certd_url.starts_with("https://") {
            return Err(format!(
                "certdUrl {:?}: must be an https:// URL",
                self.certd_url
            ));
        }
        // The API server refuses projected tokens shorter than 10 minutes.
        if self.token_expiration_seconds < 600 {
            return Err(format!(
                "tokenExpirationSeconds {}: must be at least 600",
                self.token_expiration_seconds
            ));
        }
        Ok(())
    }
}

mod mode_serde {
    use meshlite_contract::Mode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &Mode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(mode.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(
            InjectorConfig::from_text("", "t").unwrap(),
            InjectorConfig::default()
        );
    }

    #[test]
    fn yaml_overrides_only_the_fields_it_names() {
        let cfg = InjectorConfig::from_text(
            "image: example/proxy:1\nlegacyMode: true\ndefaultMode: strict\nproxyResources:\n  limits: {cpu: '1'}\n",
            "t",
        )
        .unwrap();
        assert_eq!(cfg.image, "example/proxy:1");
        assert!(cfg.legacy_mode);
        assert_eq!(cfg.default_mode, Mode::Strict);
        assert_eq!(
            cfg.proxy_resources.limits.get("cpu").map(String::as_str),
            Some("1")
        );
        assert!(cfg.proxy_resources.requests.is_empty());
        assert_eq!(cfg.trust_domain, "cluster.local");
    }

    #[test]
    fn json_is_accepted_too() {
        let cfg = InjectorConfig::from_text(r#"{"trustDomain": "example.org"}"#, "t").unwrap();
        assert_eq!(cfg.trust_domain, "example.org");
    }

    #[test]
    fn typos_and_bad_values_are_refused_with_the_field_named() {
        let err = InjectorConfig::from_text("imagee: x", "cfg.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cfg.yaml") && err.contains("imagee"), "{err}");
        let err = InjectorConfig::from_text("defaultMode: Strict", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Strict"), "{err}");
        let err = InjectorConfig::from_text("certdUrl: http://x", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("certdUrl"), "{err}");
    }
}
