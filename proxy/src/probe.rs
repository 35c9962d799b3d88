//! Probe rewriting, proxy side: the admin port runs the application's original
//! HTTP and TCP probes against the app locally. (Being built; see issue 4.)

/// The application's original probes, parsed from `MESHLITE_APP_PROBES`.
#[derive(Debug, Default, Clone)]
pub struct AppProbes {}

impl AppProbes {
    /// Parses the JSON the injector writes into `MESHLITE_APP_PROBES`.
    pub fn parse(_json: &str) -> Result<Self, serde_json::Error> {
        Ok(AppProbes {})
    }

    /// Runs the probe registered under `path` on the admin port. `None` when no
    /// probe has that path (the admin server then answers 404).
    pub async fn check(&self, _path: &str) -> Option<(http::StatusCode, String)> {
        None
    }
}
