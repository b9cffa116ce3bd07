//! The built-in auth service: the seed's other half, for teams without an
//! identity provider. Client credentials (RFC 6749 §4.4) and refresh tokens
//! with rotation and reuse detection; JWT access tokens (RFC 9068) signed with
//! keys it keeps in a key file; JWKS and RFC 8414 metadata; revocation
//! (RFC 7009) and introspection (RFC 7662). State lives in SQLite.
//!
//! It runs on its own listener. A gateway in the same process reads its key
//! set directly (`LocalKeys`); a gateway elsewhere fetches the JWKS over HTTP.

pub mod clients;
pub mod keys;
pub mod oauth;
mod store;

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
use serde_json::{Map, Value, json};

use crate::error::Body;
use crate::headers::ClientInfo;
use keys::{KeyError, KeyRing, SigningAlg};
use oauth::OAuthError;
use store::{Redeemed, Store, StoreError};

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
}

/// The published key set, shared with a gateway in the same process.
pub struct LocalKeys {
    jwks: ArcSwap<Bytes>,
}

impl LocalKeys {
    /// The current `{"keys": [...]}` document.
    pub fn jwks(&self) -> Bytes {
        Bytes::clone(&self.jwks.load())
    }
}

/// Largest form body accepted.
const MAX_FORM: usize = 64 << 10;
/// How often the key file is checked for a rotation.
const KEY_FILE_POLL: Duration = Duration::from_secs(2);

pub struct AuthService {
    config: AuthServiceConfig,
    keys: ArcSwap<KeyRing>,
    local: Arc<LocalKeys>,
    store: Arc<Store>,
    /// Verified against when the client id is unknown, so that timing does
    /// not reveal which ids exist.
    dummy_hash: Box<str>,
    key_file_modified: Mutex<Option<SystemTime>>,
    metadata: Bytes,
}

impl AuthService {
    /// Load or create the keys, open the state, and prepare the documents.
    pub fn new(config: AuthServiceConfig) -> Result<Self, StartError> {
        let now = unix_now();
        let ring = match &config.key_file {
            Some(path) => KeyRing::load_or_create(path, config.algorithm, now)?,
            None => KeyRing::generate(config.algorithm, now)?,
        };
        let store = Store::open(config.state_file.as_deref())?;
        let dummy_hash = clients::hash_secret("portcullis-timing-equaliser")
            .unwrap_or_default()
            .into();
        let local = Arc::new(LocalKeys {
            jwks: ArcSwap::from_pointee(Bytes::from(ring.jwks().to_string())),
        });
        let metadata = Bytes::from(metadata(&config).to_string());
        let modified = config.key_file.as_deref().and_then(modified_time);
        Ok(Self {
            config,
            keys: ArcSwap::from_pointee(ring),
            local,
            store: Arc::new(store),
            dummy_hash,
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
                service.reload_keys_if_changed();
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
        match KeyRing::load_or_create(path, self.config.algorithm, unix_now()) {
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
            (Method::POST, "/token") => self.token(request, None).await,
            (Method::POST, "/token/refresh") => self.token(request, Some("refresh_token")).await,
            (Method::POST, "/revoke") => self.revoke(request).await,
            (Method::POST, "/introspect") => self.introspect(request).await,
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

    /// `/token` and `/token/refresh`.
    async fn token(
        &self,
        request: Request<Incoming>,
        default_grant: Option<&str>,
    ) -> Result<Response<Body>, OAuthError> {
        let (headers, form) = read_form(request).await?;
        let grant = form
            .get("grant_type")
            .map(String::as_str)
            .or(default_grant)
            .ok_or(OAuthError::InvalidRequest("grant_type is required"))?;
        let allowed = match default_grant {
            // `/token/refresh` is for refreshing only.
            Some(only) => grant == only,
            None => matches!(grant, "client_credentials" | "refresh_token"),
        };
        if !allowed {
            return Err(OAuthError::UnsupportedGrantType);
        }
        let client = self.authenticate(&headers, &form).await?;
        match grant {
            "client_credentials" => {
                let scope = granted_scope(client.scopes.iter().map(|s| &**s), form.get("scope"))?;
                let grant = Grant {
                    access_scope: &scope,
                    refresh_scope: &scope,
                    family: None,
                };
                self.issue(client, grant).await
            }
            _ => self.refresh(client, &form).await,
        }
    }

    async fn refresh(
        &self,
        client: &ClientConfig,
        form: &HashMap<String, String>,
    ) -> Result<Response<Body>, OAuthError> {
        if client.refresh_ttl.is_none() {
            return Err(OAuthError::UnauthorizedClient(
                "refresh tokens are off for this client",
            ));
        }
        let token = form
            .get("refresh_token")
            .ok_or(OAuthError::InvalidRequest("refresh_token is required"))?;
        let hash = digest(token);
        // Judge the requested scope before the token is used up: a request
        // refused for its scope must not burn the token (or, on retry, look
        // like theft). A refresh may narrow the scope, never widen it
        // (RFC 6749 §6).
        let peek = {
            let hash = hash.clone();
            self.blocking(move |store| store.find_refresh(&hash))
                .await?
        };
        if let Some(record) = peek.filter(|r| *r.client_id == *client.id) {
            granted_scope(words(&record.scope), form.get("scope"))?;
        }
        let client_id = client.id.to_string();
        let outcome = self
            .blocking(move |store| store.redeem_refresh(&hash, &client_id, unix_now()))
            .await?;
        let record = match outcome {
            Redeemed::Fresh(record) => record,
            Redeemed::Reused => {
                tracing::warn!(client = %client.id, "refresh token reused: its whole family is revoked");
                return Err(OAuthError::InvalidGrant(
                    "refresh token already used; all tokens from it are revoked",
                ));
            }
            Redeemed::Expired => return Err(OAuthError::InvalidGrant("refresh token expired")),
            Redeemed::Revoked => return Err(OAuthError::InvalidGrant("refresh token revoked")),
            Redeemed::Unknown => return Err(OAuthError::InvalidGrant("refresh token unknown")),
        };
        let access_scope = granted_scope(words(&record.scope), form.get("scope"))?;
        // The new refresh token keeps the original scope (RFC 6749 §6).
        let grant = Grant {
            access_scope: &access_scope,
            refresh_scope: &record.scope,
            family: Some(record.family.clone()),
        };
        self.issue(client, grant).await
    }

    /// Mint an access token (and a refresh token, when the client has them).
    async fn issue(
        &self,
        client: &ClientConfig,
        grant: Grant<'_>,
    ) -> Result<Response<Body>, OAuthError> {
        let scope = grant.access_scope;
        let now = unix_now();
        let access_ttl = i64::try_from(client.access_ttl.as_secs()).unwrap_or(i64::MAX);
        let audience = match &*client.audiences {
            [one] => json!(one),
            many => json!(many),
        };
        let claims = json!({
            "iss": self.config.issuer,
            "sub": client.id,
            "aud": audience,
            "exp": now.saturating_add(access_ttl),
            "iat": now,
            "nbf": now,
            "jti": random_token(16)?,
            "client_id": client.id,
            "scope": scope,
        });
        let keys = self.keys.load();
        let key = keys.active().ok_or(OAuthError::ServerError)?;
        let access_token = key.sign("at+jwt", &claims).map_err(|error| {
            tracing::error!(%error, "signing an access token failed");
            OAuthError::ServerError
        })?;
        let mut body = json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": access_ttl,
            "scope": scope,
        });
        if let Some(ttl) = client.refresh_ttl {
            let refresh_token = random_token(32)?;
            let hash = digest(&refresh_token);
            let family = match grant.family {
                Some(family) => family,
                None => random_token(16)?,
            };
            let (client_id, scope) = (client.id.to_string(), grant.refresh_scope.to_owned());
            let expires = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
            self.blocking(move |store| {
                store.insert_refresh(&hash, &family, &client_id, &scope, expires)
            })
            .await?;
            body["refresh_token"] = json!(refresh_token);
        }
        tracing::info!(target: "portcullis::auth", client = %client.id, scope, "token issued");
        Ok(oauth::json(StatusCode::OK, &body))
    }

    /// RFC 7009: revoke a refresh token (and its family) or an access token
    /// of the calling client. Unknown or foreign tokens get the same 200.
    async fn revoke(&self, request: Request<Incoming>) -> Result<Response<Body>, OAuthError> {
        let (headers, form) = read_form(request).await?;
        let client = self.authenticate(&headers, &form).await?;
        let token = form
            .get("token")
            .ok_or(OAuthError::InvalidRequest("token is required"))?;
        let hash = digest(token);
        let record = self
            .blocking(move |store| store.find_refresh(&hash))
            .await?;
        if let Some(record) = record {
            if *record.client_id == *client.id {
                let family = record.family;
                self.blocking(move |store| store.revoke_family(&family, unix_now()))
                    .await?;
                tracing::info!(target: "portcullis::auth", client = %client.id, "refresh token family revoked");
            }
        } else if let Some(claims) = self.verify_own(token) {
            let owner = claims.get("client_id").and_then(Value::as_str);
            let jti = claims.get("jti").and_then(Value::as_str).map(str::to_owned);
            let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
            if let (Some(jti), true) = (jti, owner == Some(&*client.id)) {
                self.blocking(move |store| store.revoke_access(&jti, exp))
                    .await?;
                tracing::info!(target: "portcullis::auth", client = %client.id, "access token revoked");
            }
        }
        Ok(oauth::empty(StatusCode::OK))
    }

    /// RFC 7662, for clients with `introspect: true`.
    async fn introspect(&self, request: Request<Incoming>) -> Result<Response<Body>, OAuthError> {
        let (headers, form) = read_form(request).await?;
        let client = self.authenticate(&headers, &form).await?;
        if !client.introspect {
            return Err(OAuthError::UnauthorizedClient(
                "this client may not introspect tokens",
            ));
        }
        let token = form
            .get("token")
            .ok_or(OAuthError::InvalidRequest("token is required"))?;
        let inactive = || oauth::json(StatusCode::OK, &json!({"active": false}));
        if let Some(mut claims) = self.verify_own(token) {
            let now = unix_now();
            let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
            let jti = claims
                .get("jti")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let revoked = self
                .blocking(move |store| store.is_access_revoked(&jti))
                .await?;
            if exp <= now || revoked {
                return Ok(inactive());
            }
            claims.insert("active".into(), json!(true));
            claims.insert("token_type".into(), json!("Bearer"));
            return Ok(oauth::json(StatusCode::OK, &Value::Object(claims)));
        }
        let hash = digest(token);
        let record = self
            .blocking(move |store| store.find_refresh(&hash))
            .await?;
        match record {
            Some(r) if !r.used && !r.family_revoked && r.expires_at > unix_now() => {
                Ok(oauth::json(
                    StatusCode::OK,
                    &json!({
                        "active": true,
                        "token_type": "refresh_token",
                        "client_id": r.client_id,
                        "scope": r.scope,
                        "exp": r.expires_at,
                        "iss": self.config.issuer,
                    }),
                ))
            }
            _ => Ok(inactive()),
        }
    }

    /// The claims of an access token this service signed with a key it still
    /// publishes; `None` for anything else. Expiry is the caller's business.
    fn verify_own(&self, token: &str) -> Option<Map<String, Value>> {
        let mut parts = token.split('.');
        let (header_part, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_part).ok()?).ok()?;
        let kid = header.get("kid")?.as_str()?;
        let keys = self.keys.load();
        let key = keys.keys().iter().find(|k| k.kid == kid)?;
        if header.get("alg")?.as_str()? != key.alg.as_str() {
            return None;
        }
        let input = token.get(..header_part.len() + 1 + payload.len())?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        if !key.verify(input.as_bytes(), &signature) {
            return None;
        }
        let claims: Map<String, Value> =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (claims.get("iss")?.as_str()? == &*self.config.issuer).then_some(claims)
    }

    /// Authenticate the calling client (argon2, off the async threads).
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
        let clients = Arc::clone(&self.config.clients);
        let dummy = self.dummy_hash.clone();
        let index = tokio::task::spawn_blocking(move || {
            clients::authenticate(&clients, &dummy, &credentials)
        })
        .await
        .map_err(|_| OAuthError::ServerError)??;
        self.config
            .clients
            .get(index)
            .ok_or(OAuthError::ServerError)
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

/// What a token response grants.
struct Grant<'a> {
    access_scope: &'a str,
    /// The scope the refresh token carries: the original grant's, even when
    /// this access token was narrowed.
    refresh_scope: &'a str,
    /// The refresh token family to continue; `None` starts one.
    family: Option<String>,
}

/// The words of a stored scope string.
fn words(scope: &str) -> impl Iterator<Item = &str> + Clone {
    scope.split(' ').filter(|s| !s.is_empty())
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

/// The scopes to grant: all `allowed` when none are asked for, else exactly
/// those asked for, each of which must be allowed.
fn granted_scope<'a>(
    allowed: impl Iterator<Item = &'a str> + Clone,
    requested: Option<&String>,
) -> Result<String, OAuthError> {
    let requested: Vec<&str> = match requested {
        Some(r) if !r.trim().is_empty() => r.split(' ').filter(|s| !s.is_empty()).collect(),
        _ => return Ok(allowed.collect::<Vec<_>>().join(" ")),
    };
    let mut granted: Vec<&str> = Vec::with_capacity(requested.len());
    for scope in requested {
        if !allowed.clone().any(|a| a == scope) {
            return Err(OAuthError::InvalidScope(
                "a requested scope is not allowed for this client",
            ));
        }
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(granted.join(" "))
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
fn metadata(config: &AuthServiceConfig) -> Value {
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
        "introspection_endpoint": format!("{base}/introspect"),
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
    async fn call(&self, request: Request<Incoming>, _client: &ClientInfo) -> Response<Body> {
        self.handle(request).await
    }
}
