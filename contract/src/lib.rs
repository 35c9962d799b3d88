//! The meshlite contract: every name, port and wire type that crosses a component
//! boundary, kept in one place.
//!
//! The proxy, certd, the injector and the deploy-manifest test all read these
//! constants, so a rename here is a rename everywhere. Nothing in this crate does
//! I/O; it is the vocabulary the components share.

pub mod allow;
pub mod api;
pub mod duration;
pub mod env;
pub mod identity;
pub mod naming;

pub use allow::{AllowList, AllowPattern};
pub use identity::{IdentityError, SpiffeId, TrustDomain};

/// Namespace label (and value) that opts a namespace into injection.
pub const INJECT_LABEL: &str = "meshlite.io/inject";
/// Value of [`INJECT_LABEL`] on a namespace that opts in.
pub const INJECT_ENABLED: &str = "enabled";
/// Value of [`INJECT_LABEL`] (annotation or label) on a pod that opts out.
pub const INJECT_DISABLED: &str = "disabled";
/// Annotation selecting the inbound mode: `permissive` (default) or `strict`.
pub const MODE_ANNOTATION: &str = "meshlite.io/mode";
/// Namespace annotation, `"true"` or `"false"`: when `"true"`, the namespace's
/// [`MODE_ANNOTATION`] (or the cluster default) is a floor that its pods cannot
/// lower. A pod asking for a weaker mode, skipping inbound ports of its own or
/// opting out of injection is refused at admission.
pub const MODE_ENFORCED_ANNOTATION: &str = "meshlite.io/mode-enforced";
/// Pod annotation with the inbound allow list (see [`AllowList`]).
pub const ALLOW_ANNOTATION: &str = "meshlite.io/allow";
/// Comma-separated inbound ports that are not redirected to the proxy.
pub const SKIP_INBOUND_PORTS_ANNOTATION: &str = "meshlite.io/skip-inbound-ports";
/// Comma-separated outbound ports that are not redirected to the proxy.
pub const SKIP_OUTBOUND_PORTS_ANNOTATION: &str = "meshlite.io/skip-outbound-ports";
/// Comma-separated outbound CIDRs that are not redirected to the proxy.
pub const SKIP_OUTBOUND_CIDRS_ANNOTATION: &str = "meshlite.io/skip-outbound-cidrs";
/// Pod annotation: `preserve` makes the app see each inbound client's own
/// address rather than the pod's; `proxy` (the default) keeps today's
/// behaviour. Opt-in, because preserving needs CAP_NET_RAW in the sidecar.
pub const CLIENT_ADDRESS_ANNOTATION: &str = "meshlite.io/client-address";

/// Trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The CSR signer name certd approves and signs for.
pub const SIGNER_NAME: &str = "meshlite.io/workload";
/// Audience of the projected ServiceAccount token a proxy presents to certd.
pub const TOKEN_AUDIENCE: &str = "meshlite-certd";
/// ALPN protocol that marks a TLS connection as mesh mTLS.
pub const ALPN: &[u8] = b"meshlite/1";

/// The proxy's outbound (transparent) listener port.
pub const OUTBOUND_PORT: u16 = 15001;
/// The proxy's inbound (transparent) listener port.
pub const INBOUND_PORT: u16 = 15006;
/// The proxy's admin port: `/live`, `/ready`, `/metrics`.
pub const ADMIN_PORT: u16 = 15020;
/// certd's HTTPS API port.
pub const CERTD_PORT: u16 = 8443;
/// The injector's HTTPS webhook port.
pub const INJECTOR_PORT: u16 = 9443;
/// The UID the proxy runs as; iptables exempts it from redirection.
pub const PROXY_UID: u32 = 2102;

/// Namespace the control plane is installed into.
pub const SYSTEM_NAMESPACE: &str = "meshlite-system";
/// Secret holding the CA key and certificate used by certd's built-in signer.
pub const CA_SECRET: &str = "meshlite-ca";
/// ConfigMap (in every injected namespace) holding the PEM trust bundle.
pub const TRUST_BUNDLE_CONFIGMAP: &str = "meshlite-trust-bundle";
/// Key of the trust bundle inside [`TRUST_BUNDLE_CONFIGMAP`].
pub const TRUST_BUNDLE_KEY: &str = "ca.pem";
/// Path of certd's certificate API.
pub const CERTIFICATES_PATH: &str = "/v1/certificates";
/// Path of certd's secure-naming API (`POST`, see [`naming`]).
pub const NAMING_PATH: &str = "/v1/naming";
/// Name of the injector's MutatingWebhookConfiguration (certd keeps its caBundle current).
pub const WEBHOOK_CONFIGURATION: &str = "meshlite-injector";
/// Path prefix on the admin port under which rewritten application probes are
/// served: `/app-health/<container>/<livez|readyz|startupz>`.
pub const APP_HEALTH_PREFIX: &str = "/app-health/";
/// Name of the proxy's init container.
pub const INIT_CONTAINER: &str = "meshlite-init";
/// Name of the proxy container (a native sidecar, or a regular container in legacy mode).
pub const PROXY_CONTAINER: &str = "meshlite-proxy";
/// Annotation the injector sets on a pod it has injected (value: the meshlite version).
pub const INJECTED_ANNOTATION: &str = "meshlite.io/injected";
/// Label certd puts on every CSR object so it can be traced to the pod's namespace.
pub const CSR_NAMESPACE_LABEL: &str = "meshlite.io/namespace";
/// Label certd puts on every CSR object: the pod's service account.
pub const CSR_SERVICE_ACCOUNT_LABEL: &str = "meshlite.io/service-account";
/// Label certd puts on every CSR object: the pod's name, when the token names one.
pub const CSR_POD_LABEL: &str = "meshlite.io/pod";

/// Inbound mode for connections that are not mesh mTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Plaintext (and the application's own TLS) passes through.
    #[default]
    Permissive,
    /// Only mesh mTLS is accepted.
    Strict,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Permissive => "permissive",
            Mode::Strict => "strict",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode string that is neither `permissive` nor `strict`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid mode {0:?}: expected \"permissive\" or \"strict\"")]
pub struct InvalidMode(pub String);

impl std::str::FromStr for Mode {
    type Err = InvalidMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "permissive" => Ok(Mode::Permissive),
            "strict" => Ok(Mode::Strict),
            other => Err(InvalidMode(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parses_both_values_and_rejects_others() {
        assert_eq!("strict".parse::<Mode>(), Ok(Mode::Strict));
        assert_eq!(" permissive ".parse::<Mode>(), Ok(Mode::Permissive));
        assert_eq!("Strict".parse::<Mode>(), Err(InvalidMode("Strict".into())));
        assert_eq!(Mode::default(), Mode::Permissive);
    }
}
