//! The shape of `gateway.yaml`, exactly as written. Nothing here is used at
//! request time: `compile` turns it into runtime types.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::duration::Seconds;
use super::size::Size;

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
    #[serde(default)]
    pub api_keys: Option<ApiKeys>,
    #[serde(default)]
    pub tls: Option<Tls>,
    #[serde(default)]
    pub dpop: Option<Dpop>,
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub admin: Option<Admin>,
}

/// `server:`: the gateway listener's limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default)]
    pub header_read_timeout: Option<Seconds>,
    #[serde(default)]
    pub idle_timeout: Option<Seconds>,
    #[serde(default)]
    pub max_header_bytes: Option<Size>,
    #[serde(default)]
    pub max_headers: Option<usize>,
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub drain_timeout: Option<Seconds>,
}

/// `admin:`: health, readiness and metrics on their own address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: String,
}

/// `tls:`: TLS on the gateway's listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert_file: String,
    pub key_file: String,
    #[serde(default)]
    pub client_ca_file: Option<String>,
    #[serde(default)]
    pub client_crl_file: Option<String>,
    #[serde(default)]
    pub client_certs: Option<ClientCerts>,
    #[serde(default)]
    pub reload_interval: Option<Seconds>,
}

/// `tls.client_certs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCerts {
    Optional,
    Required,
}

/// `dpop:`: how DPoP proofs (RFC 9449) are judged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dpop {
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub max_age: Option<Seconds>,
    #[serde(default)]
    pub leeway: Option<Seconds>,
    #[serde(default)]
    pub replay_cache_entries: Option<u64>,
    /// The origins clients address the gateway by (`https://api.example.com`).
    #[serde(default)]
    pub origins: Vec<String>,
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
    #[serde(default)]
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
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub revocation: Option<Revocation>,
    #[serde(default)]
    pub introspection: Option<Introspection>,
}

/// `providers[].introspection` (RFC 7662).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub timeout: Option<Seconds>,
    #[serde(default)]
    pub cache_active_max: Option<Seconds>,
    #[serde(default)]
    pub cache_inactive: Option<Seconds>,
}

/// `providers[].revocation`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub interval: Option<Seconds>,
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
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    #[serde(default)]
    pub http2: bool,
    #[serde(default)]
    pub eject_for: Option<Seconds>,
    #[serde(default)]
    pub retries: Option<usize>,
    #[serde(default)]
    pub connect_timeout: Option<Seconds>,
    #[serde(default)]
    pub timeout: Option<Seconds>,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub path: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    pub upstream: String,
    #[serde(default)]
    pub auth: AuthSpec,
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
    #[serde(default)]
    pub verify: Verify,
    #[serde(default)]
    pub client_cert: Need,
    #[serde(default)]
    pub forward_client_cert: bool,
    #[serde(default)]
    pub dpop: Need,
    #[serde(default)]
    pub timeout: Option<Seconds>,
    #[serde(default)]
    pub max_body: Option<Size>,
    #[serde(default)]
    pub upgrades: Option<Vec<String>>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub cors: Option<Cors>,
}

/// `routes[].rate_limit`: a token bucket per caller.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u64,
    pub per: Seconds,
    #[serde(default)]
    pub burst: Option<u64>,
}

/// `routes[].cors`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub allowed_methods: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    #[serde(default)]
    pub exposed_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<Seconds>,
    #[serde(default)]
    pub allow_credentials: bool,
}

/// `routes[].client_cert` and `routes[].dpop`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// Checked when present (a bound token is always held to its binding).
    #[default]
    Optional,
    /// The request is refused without it.
    Required,
}

/// `routes[].verify`: where tokens are judged.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// Signatures against the cached keys (and the verified-token cache).
    #[default]
    Local,
    /// The provider's introspection endpoint, on every request.
    Remote,
}

/// One kind of credential a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// Public: forwarded without a credential.
    None,
    /// A JWT in `Authorization: Bearer`.
    Bearer,
    /// A key from the `api_keys` section.
    ApiKey,
}

/// `auth:` as written: one kind (`bearer`) or a list of kinds any of which
/// will do (`[bearer, api_key]`). Default: `bearer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSpec(pub Vec<Auth>);

impl Default for AuthSpec {
    fn default() -> Self {
        Self(vec![Auth::Bearer])
    }
}

impl<'de> Deserialize<'de> for AuthSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AuthSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`none`, `bearer`, `api_key`, or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AuthSpec, E> {
                Auth::deserialize(serde::de::value::StrDeserializer::<E>::new(v))
                    .map(|a| AuthSpec(vec![a]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AuthSpec, A::Error> {
                let mut kinds = Vec::new();
                while let Some(kind) = seq.next_element::<Auth>()? {
                    kinds.push(kind);
                }
                Ok(AuthSpec(kinds))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `api_keys:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeys {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub keys: Vec<ApiKeyEntry>,
    /// A YAML file holding more entries (a list), e.g. a mounted Secret.
    #[serde(default)]
    pub file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    pub name: String,
    pub sha256: String,
    #[serde(default)]
    pub scopes: Vec<String>,
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
