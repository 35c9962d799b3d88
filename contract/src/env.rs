//! The environment variables and mount paths through which the injector configures
//! the proxy in a pod. `meshlite-proxy run` reads each variable as the default of
//! the flag of the same meaning, so a proxy outside a pod takes flags instead.

/// Inbound mode: `permissive` or `strict`.
pub const MODE: &str = "MESHLITE_MODE";
/// Outbound mode: `permissive` (fall back to plaintext), `strict`, or `disabled`.
pub const OUTBOUND_MODE: &str = "MESHLITE_OUTBOUND_MODE";
/// The SPIFFE trust domain.
pub const TRUST_DOMAIN: &str = "MESHLITE_TRUST_DOMAIN";
/// certd's base URL, e.g. `https://meshlite-certd.meshlite-system.svc:8443`.
pub const CERTD_URL: &str = "MESHLITE_CERTD_URL";
/// Pod name (downward API `metadata.name`).
pub const POD_NAME: &str = "MESHLITE_POD_NAME";
/// Pod namespace (downward API `metadata.namespace`).
pub const POD_NAMESPACE: &str = "MESHLITE_POD_NAMESPACE";
/// Pod IP (downward API `status.podIP`).
pub const POD_IP: &str = "MESHLITE_POD_IP";
/// ServiceAccount name (downward API `spec.serviceAccountName`).
pub const SERVICE_ACCOUNT: &str = "MESHLITE_SERVICE_ACCOUNT";
/// Path of the projected ServiceAccount token (audience `meshlite-certd`).
pub const TOKEN_FILE: &str = "MESHLITE_TOKEN_FILE";
/// Path of the PEM trust bundle (the mounted ConfigMap key).
pub const TRUST_BUNDLE_FILE: &str = "MESHLITE_TRUST_BUNDLE_FILE";
/// Path of the downward-API annotations file (allow list reloads from it).
pub const ANNOTATIONS_FILE: &str = "MESHLITE_ANNOTATIONS_FILE";
/// JSON describing the application's original HTTP/TCP probes, keyed by the
/// path the rewritten probe uses on the admin port.
pub const APP_PROBES: &str = "MESHLITE_APP_PROBES";
/// Log format: `plain` or `json`.
pub const LOG_FORMAT: &str = "MESHLITE_LOG_FORMAT";
/// The proxy container's memory limit in bytes (downward API
/// `resourceFieldRef: limits.memory`); the connection limit is derived from it.
pub const MEMORY_LIMIT: &str = "MESHLITE_MEMORY_LIMIT";

/// `true` or `false`: connect to the app from each client's own address
/// (`meshlite-proxy run --preserve-client-address`).
pub const PRESERVE_CLIENT_ADDRESS: &str = "MESHLITE_PRESERVE_CLIENT_ADDRESS";

/// Directory of the projected token volume.
pub const TOKEN_DIR: &str = "/var/run/secrets/meshlite";
/// File name of the token inside [`TOKEN_DIR`].
pub const TOKEN_FILE_NAME: &str = "token";
/// Directory where the trust-bundle ConfigMap is mounted.
pub const TRUST_BUNDLE_DIR: &str = "/var/run/meshlite/trust";
/// Directory of the downward-API volume.
pub const PODINFO_DIR: &str = "/var/run/meshlite/podinfo";
/// File name of the annotations inside [`PODINFO_DIR`].
pub const ANNOTATIONS_FILE_NAME: &str = "annotations";
