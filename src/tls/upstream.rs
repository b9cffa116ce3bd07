//! TLS to upstreams: system roots or a configured CA, and optionally a
//! client certificate the upstream can verify.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;

/// `upstreams.<name>` TLS settings as configured.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    /// Trust only this CA bundle instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Present this certificate chain and key to the upstream.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl UpstreamTls {
    /// The rustls client config; `None` when the system defaults apply.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, String> {
        if self.ca_file.is_none() && self.client_cert.is_none() {
            return Ok(None);
        }
        let roots = match &self.ca_file {
            Some(path) => super::load_roots(path)?,
            None => crate::fetch::system_roots(),
        };
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(super::load_certs(cert)?, super::load_key(key)?)
                .map_err(|e| format!("client certificate and key do not fit: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Some(Arc::new(config)))
    }
}
