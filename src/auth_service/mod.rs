//! The built-in auth service: the seed's other half, for teams without an
//! identity provider. Client credentials (RFC 6749 §4.4) and refresh tokens
//! with rotation and reuse detection; JWT access tokens (RFC 9068) signed with
//! keys it keeps in a key file; JWKS and RFC 8414 metadata; revocation
//! (RFC 7009) and introspection (RFC 7662). State lives in SQLite.
//!
//! It runs on its own listener. A gateway in the same process reads its key
//! set directly (`LocalKeys`); a gateway elsewhere fetches the JWKS over HTTP.

pub mod clients;
mod introspection;
pub mod keys;
pub mod oauth;
mod store;
mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::dpop::{DpopSettings, DpopVerifier};
use crate::error::Body;
use crate::headers::ClientInfo;
use clients::ClientAuth;
use keys::{KeyError, KeyRing, SigningAlg};
use oauth::OAuthError;
use store::{Store, StoreError};

/// `auth_service:` compiled.
#[derive(Debug)]
pub struct AuthServiceConfig {
    pub listen: SocketAddr,
    /// `iss` of every token; also the base of the metadata URLs.
    pub issuer: Box<str>,
    /// `issuer` was not configured but derived from `listen`: with port 0 it
    /// is set again from the bound address.
    pub issuer_from_listen: bool,
    pub algorithm: SigningAlg,
    /// Where signing keys live; `None` keeps them in memory (lost on restart).
    pub key_file: Option<PathBuf>,
    /// SQLite file for refresh tokens and revocations; `None` is in memory.
    pub state_file: Option<PathBuf>,
    pub clients: Arc<[ClientConfig]>,
    /// How token requests' DPoP proofs are judged (the top-level `dpop:`).
    pub dpop: DpopSettings,
}

/// One client allowed to get tokens.
#[derive(Debug)]
pub struct ClientConfig {
    pub id: Box<str>,
    /// argon2 PHC string.
    pub secret_hash: Box<str>,
    /// The scopes it may be granted.
    pub scopes: Box<[Box<str>]>,
    /// `aud` of its access tokens.
    pub audiences: Box<[Box<str>]>,
    pub access_ttl: Duration,
    /// `None`: no refresh tokens (the seed's long-lived-token variant).
    pub refresh_ttl: Option<Duration>,
    /// May call `/introspect`.
    pub introspect: bool,
}

impl AuthServiceConfig {
    /// The longest access-token lifetime: how long a retired key stays published.
    pub fn longest_access_ttl(&self) -> Duration {
        self.clients
            .iter()
            .map(|c| c.access_ttl)
            .max()
            .unwrap_or_default()
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("client secrets: {0}")]
    Clients(String),
}

/// The published key set, shared with a gateway in the same process.
pub struct LocalKeys {
    jwks: ArcSwap<Bytes>,
}

impl LocalKeys {
    /// A key set held in this process (the built-in service's, or a fixed
    /// one for benchmarks).
    pub fn from_jwks(jwks: Bytes) -> Self {
        Self {
            jwks: ArcSwap::from_pointee(jwks),
        }
    }

    /// The current `{"keys": [...]}` document.
    pub fn jwks(&self) -> Bytes {
        Bytes::clone(&self.jwks.load())
    }
}

/// Largest form body accepted.
const MAX_FORM: usize = 64 << 10;
/// How often the key file is checked for a rotation.
const KEY_FILE_POLL: Duration = Duration::from_secs(2);

/// The auth service: its config, keys, client checks and state.
pub struct AuthService {
    config: AuthServiceConfig,
    keys: ArcSwap<KeyRing>,
    local: Arc<LocalKeys>,
    store: Arc<Store>,
    clients: ClientAuth,
    key_file_modified: Mutex<Option<SystemTime>>,
    metadata: Bytes,
    /// Proofs of token requests that ask for DPoP-bound tokens.
    dpop: DpopVerifier,
    /// The issuer's parts, which a proof's `htu` must name.
    token_endpoint: Endpoint,
}

/// Scheme, authority and path prefix of the issuer URL.
struct Endpoint {
    scheme: Box<str>,
    authority: Box<str>,
    base_path: Box<str>,
}

impl Endpoint {
    fn of(issuer: &str) -> Self {
        let uri: http::Uri = issuer.parse().unwrap_or_default();
        Self {
            scheme: uri.scheme_str().unwrap_or("http").into(),
            authority: uri.authority().map_or("", |a| a.as_str()).into(),
            base_path: uri.path().trim_end_matches('/').into(),
        }
    }
}

impl AuthService {
    /// Load or create the keys, open the state, and prepare the documents.
    /// Blocking (key generation, file and database work): call it from
    /// `spawn_blocking` in async code.
    pub fn new(config: AuthServiceConfig) -> Result<Self, StartError> {
        let now = unix_now();
        let ring = match &config.key_file {
            Some(path) => KeyRing::load_or_create(path, config.algorithm, now)?,
            None => {
                tracing::warn!(
                    "auth_service.key_file is not set: signing keys live in memory, and a restart invalidates every token issued"
                );
                KeyRing::generate(config.algorithm, now)?
            }
        };
        if config.state_file.is_none() {
            tracing::warn!(
                "auth_service.state_file is not set: refresh tokens and revocations live in memory and are lost on restart"
            );
        }
        let store = Store::open(config.state_file.as_deref())?;
        let clients = ClientAuth::new(Arc::clone(&config.clients)).map_err(StartError::Clients)?;
        let local = Arc::new(LocalKeys {
            jwks: ArcSwap::from_pointee(Bytes::from(ring.jwks().to_string())),
        });
        // Proofs here name the token endpoint under the issuer, never the
        // gateway's origins.
        let dpop = DpopVerifier::new(DpopSettings {
            origins: Box::default(),
            ..config.dpop.clone()
        });
        let metadata = Bytes::from(metadata(&config, &dpop).to_string());
        let modified = config.key_file.as_deref().and_then(modified_time);
        let token_endpoint = Endpoint::of(&config.issuer);
        Ok(Self {
            dpop,
            token_endpoint,
            config,
            keys: ArcSwap::from_pointee(ring),
            local,
            store: Arc::new(store),
            clients,
            key_file_modified: Mutex::new(modified),
            metadata,
        })
    }

    pub fn config(&self) -> &AuthServiceConfig {
        &self.config
    }

    /// The key set, for a gateway in this process.
    pub fn local_keys(&self) -> Arc<LocalKeys> {
        Arc::clone(&self.local)
    }

    /// Watch the key file for rotations and prune expired state, for as long
    /// as the service is alive.
    pub fn spawn_housekeeping(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks: u64 = 0;
            loop {
                tokio::time::sleep(KEY_FILE_POLL).await;
                let Some(service) = weak.upgrade() else {
                    return;
                };
                let reload = Arc::clone(&service);
                let _ = tokio::task::spawn_blocking(move || reload.reload_keys_if_changed()).await;
                ticks += 1;
                if ticks.is_multiple_of(300) {
                    let store = Arc::clone(&service.store);
                    let pruned = tokio::task::spawn_blocking(move || store.prune(unix_now())).await;
                    if let Ok(Err(error)) = pruned {
                        tracing::warn!(%error, "pruning expired auth state failed");
                    }
                }
            }
        });
    }

    /// Take a rotation made in the key file. The file stays the source of
    /// truth, but a missing or unreadable file never replaces the keys in
    /// use (and is never re-created here: `keys rotate` owns the file).
    fn reload_keys_if_changed(&self) {
        let Some(path) = &self.config.key_file else {
            return;
        };
        let modified = modified_time(path);
        let Ok(mut last) = self.key_file_modified.lock() else {
            return;
        };
        if modified == *last {
            return;
        }
        match KeyRing::load(path) {
            Ok(ring) => {
                let kids: Vec<&str> = ring.keys().iter().map(|k| k.kid.as_str()).collect();
                tracing::info!(?kids, "signing keys reloaded from the key file");
                self.local
                    .jwks
                    .store(Arc::new(Bytes::from(ring.jwks().to_string())));
                self.keys.store(Arc::new(ring));
                *last = modified;
            }
            Err(error) => {
                tracing::error!(%error, "key file changed but cannot be read; keeping the current keys")
            }
        }
    }

    /// Answer one request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let result = match (method.clone(), path.as_str()) {
            (Method::GET | Method::HEAD, "/.well-known/jwks.json") => Ok(oauth::bytes(
                StatusCode::OK,
                self.local.jwks(),
                "public, max-age=60",
            )),
            (
                Method::GET | Method::HEAD,
                "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server",
            ) => Ok(oauth::bytes(
                StatusCode::OK,
                self.metadata.clone(),
                "public, max-age=300",
            )),
            (Method::GET, "/revocations") => self.revocations().await,
            (Method::POST, "/token") => self.token(request, None).await,
            (Method::POST, "/token/refresh") => self.token(request, Some("refresh_token")).await,
            (Method::POST, "/revoke") => self.revoke(request).await,
            (Method::POST, "/introspect") => self.introspect(request).await,
            (_, "/revocations") => Ok(method_not_allowed("GET")),
            (_, "/token" | "/token/refresh" | "/revoke" | "/introspect") => {
                Ok(method_not_allowed("POST"))
            }
            (
                _,
                "/.well-known/jwks.json"
                | "/.well-known/openid-configuration"
                | "/.well-known/oauth-authorization-server",
            ) => Ok(method_not_allowed("GET, HEAD")),
            _ => Ok(oauth::json(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found"}),
            )),
        };
        let response = result.unwrap_or_else(|error| {
            if error == OAuthError::ServerError {
                tracing::error!(%method, path, "auth service request failed");
            }
            error.into_response()
        });
        tracing::info!(target: "portcullis::auth", %method, path, status = response.status().as_u16());
        response
    }

    /// The revoked access tokens that have not expired, for gateways to poll
    /// (`providers[].revocation.url`). Public: a `jti` is a random id that
    /// grants nothing.
    async fn revocations(&self) -> Result<Response<Body>, OAuthError> {
        let jtis = self
            .blocking(|store| store.revoked_jtis(unix_now()))
            .await?;
        let body = json!({"jtis": jtis}).to_string();
        Ok(oauth::bytes(StatusCode::OK, Bytes::from(body), "no-cache"))
    }

    /// Authenticate the calling client from its Basic header or form.
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<&ClientConfig, OAuthError> {
        let credentials = clients::credentials(
            headers,
            form.get("client_id").map(String::as_str),
            form.get("client_secret").map(String::as_str),
        )?;
        self.clients.authenticate(credentials).await
    }

    /// Run a store operation on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, OAuthError> {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || op(&store)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                tracing::error!(%error, "auth state store failed");
                Err(OAuthError::ServerError)
            }
            Err(_) => Err(OAuthError::ServerError),
        }
    }
}

/// Read an `application/x-www-form-urlencoded` body of at most 64 KiB. A
/// parameter given twice is an error (RFC 6749 §3.2).
async fn read_form(
    request: Request<Incoming>,
) -> Result<(HeaderMap, HashMap<String, String>), OAuthError> {
    let (parts, body) = request.into_parts();
    let form_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let body = Limited::new(body, MAX_FORM)
        .collect()
        .await
        .map_err(|_| OAuthError::InvalidRequest("body unreadable or over 64 KiB"))?
        .to_bytes();
    let mut form = HashMap::new();
    for (name, value) in form_urlencoded::parse(&body) {
        if form.insert(name.into_owned(), value.into_owned()).is_some() {
            return Err(OAuthError::InvalidRequest(
                "a parameter is given more than once",
            ));
        }
    }
    Ok((parts.headers, form))
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = oauth::json(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "method_not_allowed"}),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, http::HeaderValue::from_static(allow));
    response
}

/// RFC 8414 metadata (also served as an OpenID discovery document, which is
/// where most gateways look).
fn metadata(config: &AuthServiceConfig, dpop: &DpopVerifier) -> Value {
    let base = &config.issuer;
    let mut scopes: Vec<&str> = config
        .clients
        .iter()
        .flat_map(|c| c.scopes.iter().map(|s| &**s))
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    json!({
        "issuer": base,
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{base}/revoke"),
        "revocation_list": format!("{base}/revocations"),
        "introspection_endpoint": format!("{base}/introspect"),
        "dpop_signing_alg_values_supported": dpop.algorithms().iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
        "grant_types_supported": ["client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": scopes,
        // No authorization endpoint: no response types (RFC 8414 §2).
        "response_types_supported": [],
    })
}

/// SHA-256, how refresh tokens are stored.
fn digest(token: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// `bytes` random bytes, base64url. A failing system RNG fails the request:
/// a predictable token is worse than none.
fn random_token(bytes: usize) -> Result<String, OAuthError> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| {
        tracing::error!("system random number generator failed");
        OAuthError::ServerError
    })?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

fn modified_time(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl crate::server::Service for AuthService {
    type Body = Body;

    async fn call(&self, request: Request<Incoming>, _client: &ClientInfo) -> Response<Body> {
        self.handle(request).await
    }
}
