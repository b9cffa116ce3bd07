//! The key-set cache of one provider.
//!
//! Its usage:
//! - `JwksCache::new` at start, then `refresh()` once before the listener is
//!   ready, then `spawn_refresher()` keeps it fresh in the background;
//! - on the request path `keys()` is a lock-free load of the current set;
//! - a token naming an unknown `kid` calls `find_unknown_kid`, which refetches
//!   at most once per cooldown, shared by all concurrent callers.
//!
//! A failed or empty fetch never replaces the last good set; keys are refused
//! only after `max_staleness` without a successful fetch (fail closed).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use prometheus::IntCounter;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Uri;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;
use serde_json::Value;

use super::provider::{JwksTiming, KeySource, ProviderConfig};
use crate::auth_service::LocalKeys;
use crate::fetch::{Document, FetchError, Fetcher};

/// The kind of public key, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// One published public key, prepared for verification.
pub struct VerifyingKey {
    kid: Option<Box<str>>,
    /// The JWK's own `alg`, which pins the key to one algorithm.
    alg: Option<Algorithm>,
    kind: KeyKind,
    /// The key parsed once per algorithm it may verify (RFC 8725 §3.1: one
    /// key, one algorithm family), so that a verification does no key setup.
    parsed: Box<[(Algorithm, ParsedPublicKey)]>,
    /// The JWK as published, to tell an unchanged key from a replaced one.
    published: Box<str>,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Prepare a JWK. `Ok(None)` for keys that are not ours to use
    /// (encryption keys, symmetric keys, unsupported curves).
    pub(crate) fn from_jwk(value: &Value) -> Result<Option<Self>, String> {
        let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return Ok(None);
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyKind::P256,
                EllipticCurve::P384 => KeyKind::P384,
                _ => return Ok(None),
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                KeyKind::Ed25519
            }
            _ => return Ok(None),
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => match algorithm_of(ka) {
                Some(a) => Some(a),
                None => return Ok(None),
            },
        };
        let parsed = parse_key(&jwk.algorithm, kind, alg)?;
        Ok(Some(Self {
            kid: jwk.common.key_id.map(Into::into),
            alg,
            kind,
            parsed,
            published: value.to_string().into(),
        }))
    }

    /// Can this key verify a token signed with `alg`? Both the key type and
    /// the JWK's own `alg` (when present) must agree (RFC 8725 §3.1).
    pub fn supports(&self, alg: Algorithm) -> bool {
        let kind_fits = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.kind == KeyKind::Rsa,
            Algorithm::ES256 => self.kind == KeyKind::P256,
            Algorithm::ES384 => self.kind == KeyKind::P384,
            Algorithm::EdDSA => self.kind == KeyKind::Ed25519,
            _ => false,
        };
        kind_fits && self.alg.is_none_or(|a| a == alg)
    }

    /// Verify a JWS signature over `signing_input`.
    pub fn verify(&self, signing_input: &[u8], signature_b64: &str, alg: Algorithm) -> bool {
        if !self.supports(alg) {
            return false;
        }
        let Some((_, key)) = self.parsed.iter().find(|(a, _)| *a == alg) else {
            return false;
        };
        // Large enough for RSA-8192; decoded on the stack.
        let mut signature = [0u8; 1024];
        match URL_SAFE_NO_PAD.decode_slice(signature_b64, &mut signature) {
            Ok(len) => key.verify_sig(signing_input, &signature[..len]).is_ok(),
            Err(_) => false,
        }
    }
}

/// Parse a JWK's key material for each algorithm it may verify: its own
/// `alg`, or every one of its kind.
fn parse_key(
    params: &AlgorithmParameters,
    kind: KeyKind,
    pinned: Option<Algorithm>,
) -> Result<Box<[(Algorithm, ParsedPublicKey)]>, String> {
    let b64 = |field: &str, value: &str| {
        URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|e| format!("`{field}` is not base64url: {e}"))
    };
    let candidates: &[Algorithm] = match kind {
        KeyKind::Rsa => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        KeyKind::P256 => &[Algorithm::ES256],
        KeyKind::P384 => &[Algorithm::ES384],
        KeyKind::Ed25519 => &[Algorithm::EdDSA],
    };
    let mut out = Vec::new();
    for &alg in candidates
        .iter()
        .filter(|a| pinned.is_none_or(|p| p == **a))
    {
        let parsed = match params {
            AlgorithmParameters::RSA(rsa) => {
                let (n, e) = (b64("n", &rsa.n)?, b64("e", &rsa.e)?);
                // Some issuers pad the modulus with a zero byte; the value is the same.
                let strip = |b: &[u8]| b.iter().position(|&x| x != 0).unwrap_or(0);
                let components = RsaPublicKeyComponents {
                    n: &n[strip(&n)..],
                    e: &e[strip(&e)..],
                };
                components
                    .to_parsed_public_key(rsa_params(alg))
                    .map_err(|e| format!("not a usable RSA key: {e}"))?
            }
            AlgorithmParameters::EllipticCurve(ec) => {
                let mut point = vec![0x04];
                point.extend(b64("x", &ec.x)?);
                point.extend(b64("y", &ec.y)?);
                let curve = if kind == KeyKind::P256 {
                    &signature::ECDSA_P256_SHA256_FIXED
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED
                };
                ParsedPublicKey::new(curve, point)
                    .map_err(|e| format!("not a usable EC key: {e}"))?
            }
            AlgorithmParameters::OctetKeyPair(okp) => {
                ParsedPublicKey::new(&signature::ED25519, b64("x", &okp.x)?)
                    .map_err(|e| format!("not a usable Ed25519 key: {e}"))?
            }
            _ => return Err("unsupported key type".into()),
        };
        out.push((alg, parsed));
    }
    Ok(out.into())
}

fn rsa_params(alg: Algorithm) -> &'static signature::RsaParameters {
    match alg {
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => &signature::RSA_PKCS1_2048_8192_SHA256,
    }
}

/// The JWK `alg` as a signature algorithm, if it is one we verify.
fn algorithm_of(ka: KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A snapshot of a provider's keys.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<Box<str>, Arc<VerifyingKey>>,
    all: Box<[Arc<VerifyingKey>]>,
    /// Time of the fetch that produced this set; `None` before the first.
    fetched_at: Option<Instant>,
}

impl KeySet {
    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyingKey>> {
        self.by_kid.get(kid)
    }

    /// Every key, for tokens without a `kid`.
    pub fn all(&self) -> &[Arc<VerifyingKey>] {
        &self.all
    }

    /// Is this exact key (not merely its kid) still published?
    pub fn contains(&self, key: &Arc<VerifyingKey>) -> bool {
        self.all.iter().any(|k| Arc::ptr_eq(k, key))
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

/// Why a key-set fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching {uri}: {source}")]
    Fetch { uri: Uri, source: FetchError },
    #[error("{0} is not a JWK set: {1}")]
    NotAKeySet(Uri, String),
    #[error("{0} has no usable signing key")]
    NoUsableKeys(Uri),
    #[error("discovery document at {0}: {1}")]
    Discovery(Uri, String),
    #[error("the built-in auth service is not running in this process")]
    NoAuthService,
    #[error("the provider has no key source (its tokens are introspected)")]
    NoKeySource,
}

/// Cached, refreshed keys of one provider.
pub struct JwksCache {
    provider: Box<str>,
    issuer: Box<str>,
    source: KeySource,
    timing: JwksTiming,
    fetcher: Fetcher,
    keys: ArcSwap<KeySet>,
    /// The discovered `jwks_uri` (discovery sources only).
    jwks_uri: tokio::sync::OnceCell<Uri>,
    /// When the last unknown-kid refetch started; the lock makes it single-flight.
    unknown_kid: tokio::sync::Mutex<Option<Instant>>,
    /// Held for the whole of each fetch.
    refreshing: tokio::sync::Mutex<()>,
    /// Plain http is allowed for the discovered `jwks_uri` (see `KeySource`).
    allow_http: bool,
    /// The built-in auth service's keys, for `KeySource::AuthService`.
    local: Option<Arc<LocalKeys>>,
    /// `start` ran: the first fetch happened and a refresher runs.
    started: std::sync::atomic::AtomicBool,
    /// Successful and failed fetches (process metrics).
    fetches: (IntCounter, IntCounter),
}

impl JwksCache {
    /// A cache for `provider`; `local` is the built-in auth service's key set
    /// when that is the provider's source.
    pub fn new(
        provider: &ProviderConfig,
        fetcher: Fetcher,
        local: Option<Arc<LocalKeys>>,
        fetches: (IntCounter, IntCounter),
    ) -> Self {
        Self {
            fetches,
            provider: provider.name.clone(),
            issuer: provider.issuer.clone(),
            source: provider.keys.clone(),
            timing: provider.jwks,
            fetcher,
            local,
            keys: ArcSwap::from_pointee(KeySet::default()),
            jwks_uri: tokio::sync::OnceCell::new(),
            unknown_kid: tokio::sync::Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            allow_http: provider.allow_http,
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Would a cache for `provider` fetch the same keys the same way? Then a
    /// reload keeps this one.
    pub fn fits(&self, provider: &ProviderConfig) -> bool {
        *self.provider == *provider.name
            && *self.issuer == *provider.issuer
            && self.source == provider.keys
            && self.timing == provider.jwks
            && self.allow_http == provider.allow_http
    }

    pub fn is_started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the keys were last fetched successfully, and how many there are.
    pub fn status(&self) -> (Option<Instant>, usize) {
        let keys = self.keys.load();
        (keys.fetched_at, keys.len())
    }

    /// The current key set, if it may be used: fetched at least once and not
    /// older than `max_staleness`. Lock-free.
    pub fn keys(&self) -> Option<arc_swap::Guard<Arc<KeySet>>> {
        let keys = self.keys.load();
        let fresh = keys
            .fetched_at
            .is_some_and(|t| t.elapsed() <= self.timing.max_staleness);
        fresh.then_some(keys)
    }

    /// Has a fetch ever succeeded?
    pub fn is_loaded(&self) -> bool {
        self.keys.load().fetched_at.is_some()
    }

    /// A token named a `kid` we do not have: refetch once (shared by all
    /// concurrent callers, at most once per cooldown) and look again.
    pub async fn find_unknown_kid(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        let mut last = self.unknown_kid.lock().await;
        // Someone may have fetched it while we waited for the lock.
        if let Some(key) = self.keys.load().get(kid) {
            return Some(Arc::clone(key));
        }
        if last.is_some_and(|t| t.elapsed() < self.timing.unknown_kid_cooldown) {
            return None;
        }
        *last = Some(Instant::now());
        tracing::info!(provider = %self.provider, "unknown kid in a token: refetching the key set");
        if let Err(error) = self.refresh().await {
            tracing::warn!(provider = %self.provider, %error, "key set refetch failed; keeping the last good keys");
        }
        self.keys.load().get(kid).cloned()
    }

    /// Fetch the key set now. On success the new set replaces the old one and
    /// the delay until the next refresh is returned; on failure nothing changes.
    pub async fn refresh(&self) -> Result<Duration, JwksError> {
        // One fetch at a time, so a slow older answer never overwrites a newer one.
        let _serial = self.refreshing.lock().await;
        let result = self.fetch_and_swap().await;
        match &result {
            Ok(_) => self.fetches.0.inc(),
            Err(_) => self.fetches.1.inc(),
        }
        result
    }

    async fn fetch_and_swap(&self) -> Result<Duration, JwksError> {
        let uri = match &self.source {
            KeySource::JwksUri(uri) => uri.clone(),
            KeySource::Discovery(metadata) => self
                .jwks_uri
                .get_or_try_init(|| self.discover(metadata))
                .await?
                .clone(),
            KeySource::AuthService => Uri::from_static("/.well-known/jwks.json"),
            KeySource::None => return Err(JwksError::NoKeySource),
        };
        let document = match (&self.source, &self.local) {
            (KeySource::AuthService, Some(local)) => Document {
                body: local.jwks(),
                max_age: None,
            },
            (KeySource::AuthService, None) => return Err(JwksError::NoAuthService),
            _ => self
                .fetcher
                .get(&uri, self.timing.fetch_timeout)
                .await
                .map_err(|source| JwksError::Fetch {
                    uri: uri.clone(),
                    source,
                })?,
        };
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let set: Set = serde_json::from_slice(&document.body)
            .map_err(|e| JwksError::NotAKeySet(uri.clone(), e.to_string()))?;
        let previous = self.keys.load_full();
        let mut all = Vec::with_capacity(set.keys.len());
        for value in &set.keys {
            match VerifyingKey::from_jwk(value) {
                // Keep the old Arc for an unchanged key, so tokens it verified stay cached.
                Ok(Some(key)) => all.push(
                    previous
                        .all
                        .iter()
                        .find(|old| old.published == key.published)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(key)),
                ),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(provider = %self.provider, %error, "skipping a key the set publishes")
                }
            }
        }
        if all.is_empty() {
            return Err(JwksError::NoUsableKeys(uri));
        }
        let by_kid = all
            .iter()
            .filter_map(|k| Some((k.kid.clone()?, Arc::clone(k))))
            .collect();
        let changed = previous.all.len() != all.len() || !all.iter().all(|k| previous.contains(k));
        if changed {
            let kids: Vec<&str> = all.iter().filter_map(|k| k.kid.as_deref()).collect();
            tracing::info!(provider = %self.provider, keys = all.len(), ?kids, "key set loaded");
        }
        self.keys.store(Arc::new(KeySet {
            by_kid,
            all: all.into(),
            fetched_at: Some(Instant::now()),
        }));
        // A server's max-age may shorten the interval, never below 10 s
        // (nor below a configured interval that is itself shorter).
        let next = document
            .max_age
            .map_or(self.timing.refresh_interval, |age| {
                age.max(Duration::from_secs(10))
                    .min(self.timing.refresh_interval)
            });
        Ok(next)
    }

    /// The `jwks_uri` of the issuer's metadata document; cached once found.
    async fn discover(&self, uri: &Uri) -> Result<Uri, JwksError> {
        let doc = self
            .fetcher
            .get(uri, self.timing.fetch_timeout)
            .await
            .map_err(|source| JwksError::Fetch {
                uri: uri.clone(),
                source,
            })?;
        #[derive(Deserialize)]
        struct Metadata {
            issuer: String,
            jwks_uri: String,
        }
        let meta: Metadata = serde_json::from_slice(&doc.body)
            .map_err(|e| JwksError::Discovery(uri.clone(), e.to_string()))?;
        // OpenID Connect Discovery §4.3: the document must name the issuer we expect.
        if meta.issuer != *self.issuer {
            return Err(JwksError::Discovery(
                uri.clone(),
                format!("issuer is `{}`, expected `{}`", meta.issuer, self.issuer),
            ));
        }
        let jwks_uri: Uri = meta
            .jwks_uri
            .parse()
            .map_err(|e| JwksError::Discovery(uri.clone(), format!("jwks_uri: {e}")))?;
        // The metadata must not downgrade the key source to plain http.
        if !is_trusted_transport(&jwks_uri, self.allow_http) {
            return Err(JwksError::Discovery(
                uri.clone(),
                format!("jwks_uri {jwks_uri} is plain http to a non-loopback host"),
            ));
        }
        Ok(jwks_uri)
    }

    /// The first fetch, then background refreshes. A failed first fetch is
    /// logged and retried with backoff like any other.
    pub async fn start(self: &Arc<Self>) {
        if matches!(self.source, KeySource::None)
            || self
                .started
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        match self.refresh().await {
            Ok(next) => {
                self.spawn_refresher(next);
            }
            Err(error) => {
                tracing::error!(provider = %self.provider, %error, "initial key set fetch failed; its tokens get 503 until a retry succeeds");
                self.spawn_refresher(self.retry_delay(1));
            }
        }
    }

    /// Refresh in the background for as long as the cache is in use,
    /// retrying failures with backoff. Holds only a weak reference, so the
    /// task ends when the gateway drops the cache.
    fn spawn_refresher(self: &Arc<Self>, first_delay: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut delay = first_delay;
            let mut failures: u32 = 0;
            loop {
                tokio::time::sleep(delay).await;
                let Some(cache) = weak.upgrade() else { return };
                delay = match cache.refresh().await {
                    Ok(next) => {
                        failures = 0;
                        next
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        let retry = cache.retry_delay(failures);
                        tracing::warn!(provider = %cache.provider, %error, retry_in = ?retry, "key set refresh failed; keeping the last good keys");
                        retry
                    }
                };
            }
        })
    }

    /// Exponential backoff from 1 s, capped at a minute or the refresh interval.
    fn retry_delay(&self, failures: u32) -> Duration {
        let cap = self.timing.refresh_interval.min(Duration::from_secs(60));
        Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(cap)
    }
}

/// https anywhere, plain http only to a loopback host or when allowed:
/// keys fetched in the clear could be replaced by anyone on the path.
pub fn is_trusted_transport(uri: &Uri, allow_http: bool) -> bool {
    match uri.scheme_str() {
        Some("https") => true,
        Some("http") => allow_http || uri.host().is_some_and(is_loopback),
        _ => false,
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
