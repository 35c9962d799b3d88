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
    /// `auto` (the default): native sidecars where the API server has them
    /// (1.29 and later), legacy mode before. `true`: the proxy is a regular
    /// container with a postStart wait. `false`: always a native sidecar; on a
    /// server without them every pod is refused with a message naming this
    /// setting. [`InjectorConfig::resolve_legacy_mode`] settles `auto` at start.
    #[serde(with = "legacy_serde")]
    pub legacy_mode: LegacyMode,
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
            legacy_mode: LegacyMode::Auto,
            trust_domain: meshlite_contract::DEFAULT_TRUST_DOMAIN.to_string(),
            certd_url: DEFAULT_CERTD_URL.to_string(),
            default_mode: Mode::Permissive,
            // One hour: the shortest lifetime the API server's default settings allow
            // without extending it, and long enough to ride out a certd restart.
            token_expiration_seconds: 3600,
        }
    }
}

/// How the proxy is injected; see [`InjectorConfig::legacy_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LegacyMode {
    /// Chosen from the API server's version at start. Unresolved, it injects a
    /// native sidecar.
    #[default]
    Auto,
    /// A regular container with a postStart wait (`legacyMode: true`).
    On,
    /// A native sidecar (`legacyMode: false`).
    Off,
}

/// The first Kubernetes minor (of major 1) with native sidecars on by default.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

/// Parses a `/version` answer's `major` and `minor` (`"1"`, `"36+"`).
pub fn parse_server_version(major: &str, minor: &str) -> Option<(u32, u32)> {
    let digits = |s: &str| -> Option<u32> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    Some((digits(major)?, digits(minor)?))
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

    /// Whether pods get the legacy-mode proxy. `Auto` counts as native until
    /// [`resolve_legacy_mode`](Self::resolve_legacy_mode) settles it.
    pub fn legacy(&self) -> bool {
        self.legacy_mode == LegacyMode::On
    }

    /// Settles `legacyMode: auto` against the API server's version
    /// (`major`, `minor`). Returns the refusal every pod gets when native
    /// sidecars are forced on a server that has none.
    pub fn resolve_legacy_mode(&mut self, server: (u32, u32)) -> Option<String> {
        let native = server >= (1, NATIVE_SIDECAR_MINOR);
        match self.legacy_mode {
            LegacyMode::Auto => {
                self.legacy_mode = if native {
                    LegacyMode::Off
                } else {
                    LegacyMode::On
                };
                None
            }
            LegacyMode::Off if !native => Some(format!(
                "meshlite-injector: legacyMode is false (native sidecars), but this API server is \
                 v{}.{}, which has no native sidecars (they need 1.{NATIVE_SIDECAR_MINOR}); set \
                 legacyMode to auto or true in ConfigMap meshlite-system/meshlite-config, then \
                 restart the injector",
                server.0, server.1
            )),
            LegacyMode::On | LegacyMode::Off => None,
        }
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

mod legacy_serde {
    use super::LegacyMode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &LegacyMode, s: S) -> Result<S::Ok, S::Error> {
        match mode {
            LegacyMode::Auto => s.serialize_str("auto"),
            LegacyMode::On => s.serialize_bool(true),
            LegacyMode::Off => s.serialize_bool(false),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Str(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LegacyMode, D::Error> {
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("legacyMode: must be auto, true or false"))?
        {
            Raw::Bool(true) => Ok(LegacyMode::On),
            Raw::Bool(false) => Ok(LegacyMode::Off),
            Raw::Str(s) if s == "auto" => Ok(LegacyMode::Auto),
            Raw::Str(s) => Err(serde::de::Error::custom(format!(
                "legacyMode {s:?}: must be auto, true or false"
            ))),
        }
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
        assert_eq!(cfg.legacy_mode, LegacyMode::On);
        assert_eq!(cfg.default_mode, Mode::Strict);
        assert_eq!(
            cfg.proxy_resources.limits.get("cpu").map(String::as_str),
            Some("1")
        );
        assert!(cfg.proxy_resources.requests.is_empty());
        assert_eq!(cfg.trust_domain, "cluster.local");
    }

    #[test]
    fn legacy_mode_auto_follows_the_server_version() {
        let cfg = InjectorConfig::from_text("legacyMode: auto", "t").unwrap();
        assert_eq!(cfg.legacy_mode, LegacyMode::Auto);
        assert_eq!(InjectorConfig::default().legacy_mode, LegacyMode::Auto);
        let mut new = cfg.clone();
        assert_eq!(new.resolve_legacy_mode((1, 36)), None);
        assert!(!new.legacy());
        let mut old = cfg.clone();
        assert_eq!(old.resolve_legacy_mode((1, 28)), None);
        assert!(old.legacy());
        let mut edge = cfg;
        edge.resolve_legacy_mode((1, 29));
        assert!(!edge.legacy());
    }

    #[test]
    fn native_sidecars_forced_on_an_old_server_refuse_naming_meshlite_and_the_setting() {
        let mut cfg = InjectorConfig::from_text("legacyMode: false", "t").unwrap();
        let refusal = cfg.resolve_legacy_mode((1, 24)).unwrap();
        assert!(
            refusal.contains("meshlite")
                && refusal.contains("legacyMode")
                && refusal.contains("v1.24"),
            "{refusal}"
        );
        let mut on = InjectorConfig::from_text("legacyMode: true", "t").unwrap();
        assert_eq!(on.resolve_legacy_mode((1, 24)), None);
        assert!(on.legacy());
        assert_eq!(cfg.clone().resolve_legacy_mode((1, 36)), None);
        let err = InjectorConfig::from_text("legacyMode: sometimes", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("legacyMode"), "{err}");
    }

    #[test]
    fn server_versions_parse_with_provider_suffixes() {
        assert_eq!(parse_server_version("1", "36"), Some((1, 36)));
        assert_eq!(parse_server_version("1", "29+"), Some((1, 29)));
        assert_eq!(parse_server_version("", "x"), None);
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
