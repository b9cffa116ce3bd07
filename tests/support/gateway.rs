//! Starting the real gateway in-process from YAML, on 127.0.0.1:0.

use std::net::SocketAddr;

use portcullis::Gateway;

/// A running gateway plus its base URL.
pub struct TestGateway {
    pub gateway: Gateway,
}

impl TestGateway {
    /// Compile `yaml` (it must say `listen: 127.0.0.1:0`) and start serving.
    /// Panics with every config error when the YAML is invalid.
    pub async fn start(yaml: &str) -> TestGateway {
        let config = portcullis::config::from_str(yaml, "test.yaml", |_| None)
            .unwrap_or_else(|errors| panic!("test config refused:\n{errors}"));
        let gateway = Gateway::start(config).await.expect("gateway starts");
        TestGateway { gateway }
    }

    pub fn addr(&self) -> SocketAddr {
        self.gateway
            .local_addr()
            .expect("the config has a gateway listener")
    }

    /// The gateway's live state.
    pub fn runtime(&self) -> std::sync::Arc<portcullis::runtime::Runtime> {
        self.gateway
            .runtime()
            .expect("the config has a gateway listener")
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }
}

/// A provider block for `idp` with the usual test settings: audience
/// `orders-api`, RS256 and ES256, 30 s leeway, scopes in `scope`/`scp`.
pub fn provider_yaml(name: &str, issuer: &str, jwks_uri: &str) -> String {
    format!(
        "  - name: {name}\n    issuer: {issuer}\n    jwks_uri: {jwks_uri}\n    audiences: [orders-api]\n    algorithms: [RS256, ES256]\n    leeway: 30s\n"
    )
}
