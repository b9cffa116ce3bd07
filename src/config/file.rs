//! The shape of `gateway.yaml`, exactly as written. Nothing here is used at
//! request time: `compile` turns it into runtime types.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::duration::Seconds;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub realm: Option<String>,
    #[serde(default)]
    pub providers: Vec<Provider>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub token_cache: TokenCache,
    #[serde(default)]
    pub auth_service: Option<AuthService>,
}

/// The built-in auth service (`auth_service:`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthService {
    pub listen: String,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub signing_algorithm: Option<crate::auth_service::keys::SigningAlg>,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default)]
    pub state_file: Option<String>,
    #[serde(default)]
    pub clients: Vec<AuthClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthClient {
    pub client_id: String,
    pub client_secret_hash: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub access_token_ttl: Option<Seconds>,
    #[serde(default)]
    pub refresh_token_ttl: Option<Seconds>,
    #[serde(default = "yes")]
    pub refresh_tokens: bool,
    #[serde(default)]
    pub introspect: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub auth_service: bool,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub discovery: bool,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub skip_audience_check: bool,
    #[serde(default)]
    pub audience_claim: Option<String>,
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub leeway: Option<Seconds>,
    #[serde(default)]
    pub scopes_claims: Option<Vec<String>>,
    #[serde(default)]
    pub require_typ: Option<String>,
    #[serde(default)]
    pub jwks: JwksSettings,
    #[serde(default)]
    pub allow_http: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksSettings {
    #[serde(default)]
    pub refresh_interval: Option<Seconds>,
    #[serde(default)]
    pub unknown_kid_cooldown: Option<Seconds>,
    #[serde(default)]
    pub max_staleness: Option<Seconds>,
    #[serde(default)]
    pub fetch_timeout: Option<Seconds>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub url: String,
    #[serde(default)]
    pub connect_timeout: Option<Seconds>,
    #[serde(default)]
    pub timeout: Option<Seconds>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub path: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    pub upstream: String,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    #[serde(default)]
    pub strip_authorization: bool,
    #[serde(default)]
    pub allow_encoded_slash: bool,
    #[serde(default)]
    pub allow_semicolon: bool,
}

/// How a route authenticates. New kinds (api_key, mtls) slot in here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// Public: forwarded without a credential.
    None,
    /// A JWT in `Authorization: Bearer`.
    #[default]
    Bearer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCache {
    #[serde(default = "TokenCache::default_max_entries")]
    pub max_entries: u64,
}

impl TokenCache {
    fn default_max_entries() -> u64 {
        10_000
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            max_entries: Self::default_max_entries(),
        }
    }
}
