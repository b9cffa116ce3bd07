//! Authentication: from a request's headers to a verified `Principal`.
//!
//! Order of checks for a bearer token (cheap and local first, as envoy's
//! jwt_authn does): extract → verified-token cache → parse → issuer selects
//! the provider → route accepts it → algorithm allowed → key by `kid` →
//! signature → typ, exp/nbf/iat, audience.

pub mod api_key;
pub mod extract;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub mod provider;
pub mod revocation;
pub mod sender;
mod token_cache;

pub use extract::uses_dpop;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use serde_json::{Map, Value};

use crate::auth_service::LocalKeys;
use crate::authz::Requirement;
use crate::claims;
use crate::fetch::Fetcher;
use introspect::Introspector;
use jwks::{JwksCache, VerifyingKey};
use provider::ProviderConfig;
use revocation::RevocationList;
use sender::Confirmation;
use token_cache::TokenCache;

/// Who the caller is, as a verified token or API key says.
#[derive(Debug)]
pub struct Principal {
    pub origin: Origin,
    /// `sub` (the key's name for API keys), for logs.
    pub subject: Option<Box<str>>,
    pub claims: Map<String, Value>,
    /// Sorted, deduplicated scopes.
    pub scopes: Box<[Box<str>]>,
    /// `exp`, unix seconds (`i64::MAX` for API keys).
    pub expires_at: i64,
    /// `jti` and `iat`, for revocation lists.
    pub jti: Option<Box<str>>,
    pub issued_at: Option<i64>,
    /// The key the token is bound to (`cnf`), if any.
    pub confirmation: Confirmation,
    /// Who a rate limit counts: `p:<provider>:sub:<sub>`,
    /// `p:<provider>:client:<client_id>` or `key:<name>`, so that no kind of
    /// caller can drain another's bucket by choosing its name.
    pub caller: Box<str>,
}

impl Principal {
    /// A principal from verified token claims (a JWT's or an introspection
    /// answer's). Fails on a `cnf` the gateway cannot enforce.
    pub fn from_claims(
        origin: Origin,
        claims: Map<String, Value>,
        provider: &provider::ProviderConfig,
        expires_at: i64,
    ) -> Result<Self, TokenError> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(Into::into);
        // By provider name, which a reload keeps (position may not); names
        // are the operator's, so a client can only choose what follows.
        let name = &provider.name;
        let caller = match (claims.get("sub"), claims.get("client_id")) {
            (Some(Value::String(sub)), _) => format!("p:{name}:sub:{sub}"),
            (_, Some(Value::String(client))) => format!("p:{name}:client:{client}"),
            _ => format!("p:{name}:anonymous"),
        };
        let scope_claims = &provider.scope_claims;
        Ok(Self {
            caller: caller.into(),
            origin,
            subject: text("sub"),
            jti: text("jti"),
            scopes: claims::scopes(&claims, scope_claims),
            issued_at: claims.get("iat").and_then(Value::as_i64),
            confirmation: Confirmation::from_claims(&claims)?,
            claims,
            expires_at,
        })
    }
}

/// The authorization scheme a token came with (a cookie counts as `Bearer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    /// RFC 9449: the token must be DPoP-bound and come with a proof.
    Dpop,
}

/// A verified token and how it was presented.
pub struct Authenticated<'h> {
    pub principal: Arc<Principal>,
    pub token: &'h str,
    pub scheme: Scheme,
}

/// What vouched for a principal.
#[derive(Debug)]
pub enum Origin {
    /// A JWT of this provider, verified by this key. A cached principal is
    /// used only while this exact key is still published.
    Token {
        provider: usize,
        key: Arc<VerifyingKey>,
    },
    /// A configured API key.
    ApiKey,
    /// The provider's introspection endpoint said the token is active.
    Introspection { provider: usize },
}

/// Why a request could not be authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No credential, or one in a scheme we do not take: plain 401 challenge.
    #[error("no bearer token")]
    Missing,
    /// The Authorization header itself is malformed: 400 invalid_request.
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// 401 invalid_token.
    #[error(transparent)]
    InvalidToken(#[from] TokenError),
    /// The provider's keys were never loaded or are too stale to trust: 503.
    #[error("signing keys unavailable")]
    KeysUnavailable,
    /// An API key that is not configured: 401.
    #[error("API key not recognised")]
    InvalidApiKey,
    /// The introspection endpoint did not answer for a token not in the
    /// cache: 503 (nobody vouched for it).
    #[error("token cannot be verified now")]
    IntrospectionUnavailable,
    /// A DPoP proof was needed and is missing or wrong: 401 with a DPoP
    /// `invalid_dpop_proof` challenge.
    #[error(transparent)]
    InvalidDpopProof(crate::dpop::DpopError),
    /// The route takes only DPoP-bound tokens: 401 with a DPoP challenge.
    #[error("DPoP-bound token required")]
    DpopRequired,
    /// The DPoP replay cache is full: 503, proofs cannot be checked now.
    #[error("DPoP proofs cannot be checked now")]
    DpopUnavailable,
}

/// Why a bearer token was refused. The `Display` text is the short
/// `error_description` clients see; `code()` is the reason in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token malformed")]
    Malformed,
    #[error("token has unsupported critical header")]
    UnsupportedCrit,
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("token issuer not accepted")]
    UnknownIssuer,
    #[error("token issuer not accepted for this route")]
    IssuerNotAccepted,
    #[error("token signing key unknown")]
    UnknownKey,
    #[error("token signature invalid")]
    BadSignature,
    #[error("token has no expiry")]
    NoExpiry,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token audience not accepted")]
    AudienceNotAccepted,
    #[error("token type not accepted")]
    TypeNotAccepted,
    #[error("token revoked")]
    Revoked,
    #[error("token inactive")]
    Inactive,
    #[error("token confirmation method not supported")]
    UnsupportedConfirmation,
    #[error("token bound to another client certificate")]
    CertificateMismatch,
    #[error("DPoP-bound token must use the DPoP scheme")]
    DpopSchemeRequired,
    #[error("token is not DPoP-bound")]
    NotDpopBound,
}

impl TokenError {
    /// Stable reason code for logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnsupportedCrit => "unsupported_crit",
            Self::AlgorithmNotAllowed => "alg_not_allowed",
            Self::UnknownIssuer => "unknown_issuer",
            Self::IssuerNotAccepted => "issuer_not_accepted",
            Self::UnknownKey => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::NoExpiry => "no_exp",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "iat_in_future",
            Self::AudienceNotAccepted => "audience",
            Self::TypeNotAccepted => "typ",
            Self::Revoked => "revoked",
            Self::Inactive => "inactive",
            Self::UnsupportedConfirmation => "unsupported_cnf",
            Self::CertificateMismatch => "cert_mismatch",
            Self::DpopSchemeRequired => "dpop_scheme_required",
            Self::NotDpopBound => "not_dpop_bound",
        }
    }
}

impl AuthnError {
    /// Stable reason code for logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidToken(e) => e.code(),
            Self::KeysUnavailable => "keys_unavailable",
            Self::InvalidApiKey => "invalid_api_key",
            Self::IntrospectionUnavailable => "introspection_unavailable",
            Self::InvalidDpopProof(e) => e.code(),
            Self::DpopRequired => "dpop_required",
            Self::DpopUnavailable => "dpop_busy",
        }
    }
}

/// A provider at run time: its compiled config and its live key set.
pub struct Provider {
    pub config: ProviderConfig,
    pub keys: Arc<JwksCache>,
    /// Revoked tokens, when the provider has a revocation source.
    pub revocations: Option<Arc<RevocationList>>,
    /// Its introspection endpoint, when configured.
    pub introspection: Option<Arc<Introspector>>,
}

/// Verifies bearer tokens against every configured provider.
pub struct Authenticator {
    providers: Box<[Provider]>,
    by_issuer: HashMap<Box<str>, usize>,
    /// `(cookie name, provider)` for providers that read tokens from a cookie.
    cookies: Box<[(Box<str>, usize)]>,
    cache: Option<TokenCache>,
    stats: Stats,
}

/// Counters of how tokens were judged: the process's metrics, which
/// outlive a reload.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Tokens answered from the verified-token cache.
    pub cache_hits: prometheus::IntCounter,
    /// Tokens looked up in the cache and not found.
    pub cache_misses: prometheus::IntCounter,
    /// Signature checks performed (cache misses that got that far).
    pub signature_checks: prometheus::IntCounter,
    /// Key-set fetches by provider and result.
    pub jwks_fetches: prometheus::IntCounterVec,
}

impl Stats {
    pub fn new(metrics: &crate::metrics::Metrics) -> Self {
        Self {
            cache_hits: metrics.token_cache_hits.clone(),
            cache_misses: metrics.token_cache_misses.clone(),
            signature_checks: metrics.signature_checks.clone(),
            jwks_fetches: metrics.jwks_fetches.clone(),
        }
    }
}

impl Authenticator {
    /// Build the providers' key caches (nothing is fetched yet: see
    /// `load_keys`). A provider whose key source is unchanged from
    /// `previous` (a reload) keeps its cache: its keys stay loaded, even if
    /// the auth service is down just then.
    pub fn new(
        configs: Vec<ProviderConfig>,
        token_cache_entries: u64,
        fetcher: &Fetcher,
        local: Option<Arc<LocalKeys>>,
        stats: Stats,
        previous: Option<&Authenticator>,
    ) -> Self {
        let providers: Box<[Provider]> = configs
            .into_iter()
            .enumerate()
            .map(|(index, config)| {
                let local = matches!(config.keys, provider::KeySource::AuthService)
                    .then(|| local.clone())
                    .flatten();
                // Names are unique, so the provider of the same name is the
                // only candidate for everything kept.
                let same = previous.and_then(|p| {
                    p.providers
                        .iter()
                        .enumerate()
                        .find(|(_, old)| old.config.name == config.name)
                });
                let kept = same
                    .filter(|(_, old)| old.keys.fits(&config))
                    .map(|(_, old)| Arc::clone(&old.keys));
                let keys = kept.unwrap_or_else(|| {
                    let counter = |result: &str| {
                        stats.jwks_fetches.with_label_values(&[&config.name, result])
                    };
                    Arc::new(JwksCache::new(
                        &config,
                        fetcher.clone(),
                        local,
                        (counter("ok"), counter("failed")),
                    ))
                });
                // A reload keeps what an unchanged provider has learnt: its
                // revocations (a list source down during the reload must not
                // un-revoke anything) and its introspection answers.
                let revocations = same
                    .filter(|(_, old)| old.config.revocation == config.revocation)
                    .and_then(|(_, old)| old.revocations.clone())
                    .or_else(|| {
                        config.revocation.clone().map(|source| {
                            Arc::new(RevocationList::new(&config.name, source, fetcher.clone()))
                        })
                    });
                let introspection = same
                    .filter(|(old_index, old)| *old_index == index && old.config == config)
                    .and_then(|(_, old)| old.introspection.clone())
                    .or_else(|| {
                        config.introspection.clone().and_then(|c| {
                            Introspector::new(index, c)
                                .map_err(|error| tracing::error!(provider = %config.name, %error, "introspection client"))
                                .ok()
                                .map(Arc::new)
                        })
                    });
                Provider {
                    config,
                    keys,
                    revocations,
                    introspection,
                }
            })
            .collect();
        let by_issuer = providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.config.issuer.clone(), i))
            .collect();
        let cookies = providers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((p.config.cookie.clone()?, i)))
            .collect();
        Self {
            providers,
            cookies,
            by_issuer,
            cache: (token_cache_entries > 0).then(|| TokenCache::new(token_cache_entries)),
            stats,
        }
    }

    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// Providers with a key source whose keys were never fetched.
    pub fn providers_without_keys(&self) -> impl Iterator<Item = &str> {
        self.providers
            .iter()
            .filter(|p| !matches!(p.config.keys, provider::KeySource::None) && !p.keys.is_loaded())
            .map(|p| &*p.config.name)
    }

    /// The cookies providers read tokens from.
    pub fn token_cookies(&self) -> impl Iterator<Item = &str> {
        self.cookies.iter().map(|(name, _)| &**name)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Fetch every provider's keys once, concurrently, then keep them fresh
    /// in the background. A provider whose first fetch fails is retried with
    /// backoff; its tokens get 503 until its keys arrive.
    pub async fn load_keys(&self) {
        let mut fetches = tokio::task::JoinSet::new();
        for provider in self.providers.iter() {
            let keys = Arc::clone(&provider.keys);
            // A cache kept from before a reload is already loaded and refreshing.
            if !keys.is_started() {
                fetches.spawn(async move { keys.start().await });
            }
            if let Some(list) = &provider.revocations {
                let list = Arc::clone(list);
                fetches.spawn(async move { list.start().await });
            }
        }
        while let Some(done) = fetches.join_next().await {
            if let Err(error) = done {
                tracing::error!(%error, "key set loader failed");
            }
        }
    }

    /// Authenticate a request for a bearer route. Bindings (`cnf`) are
    /// the caller's to check, with `sender::check`.
    pub async fn authenticate<'h>(
        &self,
        headers: &'h HeaderMap,
        requirement: &Requirement,
    ) -> Result<Authenticated<'h>, AuthnError> {
        // `Authorization` first; a provider's cookie only when there is no
        // `Authorization` header at all (query-string tokens never).
        let (token, scheme, from_cookie) = match extract::credential(headers) {
            Ok((token, scheme)) => (token, scheme, None),
            Err(AuthnError::Missing) if !headers.contains_key(http::header::AUTHORIZATION) => {
                match extract::cookie(headers, &self.cookies, |p| requirement.accepts_provider(p))?
                {
                    Some((token, provider)) => (token, Scheme::Bearer, Some(provider)),
                    None => return Err(AuthnError::Missing),
                }
            }
            Err(error) => return Err(error),
        };
        let principal = self.principal(token, from_cookie, requirement).await?;
        Ok(Authenticated {
            principal,
            token,
            scheme,
        })
    }

    /// The verified principal of a token (from the cache when possible).
    async fn principal(
        &self,
        token: &str,
        from_cookie: Option<usize>,
        requirement: &Requirement,
    ) -> Result<Arc<Principal>, AuthnError> {
        let cookie_fits = |index: usize| from_cookie.is_none_or(|p| p == index);
        let now = unix_now();
        // `verify: remote` routes never take a locally cached verdict.
        let cache = self.cache.as_ref().filter(|_| !requirement.remote);
        let digest = cache.map(|_| TokenCache::digest(token));
        if let (Some(cache), Some(digest)) = (cache, &digest)
            && let Some(principal) = cache.get(digest)
            && let Origin::Token {
                provider: index,
                key,
            } = &principal.origin
            && let Some(provider) = self.providers.get(*index)
            && principal
                .expires_at
                .saturating_add(provider.config.leeway as i64)
                >= now
            && provider.keys.keys().is_some_and(|k| k.contains(key))
        {
            self.stats.cache_hits.inc();
            if !requirement.accepts_provider(*index) || !cookie_fits(*index) {
                return Err(TokenError::IssuerNotAccepted.into());
            }
            // Checked on every request, so a cached token is refused as soon
            // as its revocation is known.
            if provider
                .revocations
                .as_ref()
                .is_some_and(|r| r.revokes(&principal))
            {
                return Err(TokenError::Revoked.into());
            }
            return Ok(principal);
        }

        // A token whose signature failed against a key still published fails
        // again, without another signature check.
        if let (Some(cache), Some(digest)) = (cache, &digest)
            && let Some((index, key)) = cache.forged(digest)
            && self
                .providers
                .get(index)
                .and_then(|p| p.keys.keys())
                .is_some_and(|k| k.contains(&key))
        {
            return Err(TokenError::BadSignature.into());
        }
        if digest.is_some() {
            self.stats.cache_misses.inc();
        }
        let raw = token;
        let token = match jwt::parse(raw) {
            Ok(token) => token,
            // Not a JWT: an opaque token, for the first accepted provider
            // that introspects.
            Err(TokenError::Malformed) => {
                let (_, provider) = self
                    .providers
                    .iter()
                    .enumerate()
                    .find(|(i, p)| {
                        p.introspection.is_some()
                            && requirement.accepts_provider(*i)
                            && cookie_fits(*i)
                    })
                    .ok_or(TokenError::Malformed)?;
                return self.introspect(raw, provider, requirement).await;
            }
            Err(error) => return Err(error.into()),
        };
        let (index, provider) = token
            .issuer()
            .and_then(|iss| self.by_issuer.get(iss))
            .and_then(|&i| Some((i, self.providers.get(i)?)))
            .ok_or(TokenError::UnknownIssuer)?;
        // A token from a cookie counts only for the provider naming that cookie.
        if !requirement.accepts_provider(index) || !cookie_fits(index) {
            return Err(TokenError::IssuerNotAccepted.into());
        }
        // Remote verification where the route asks for it, or where the
        // provider has no keys to verify with.
        if requirement.remote || matches!(provider.config.keys, provider::KeySource::None) {
            return self.introspect(raw, provider, requirement).await;
        }
        let config = &provider.config;
        if !config.allows(token.alg) {
            return Err(TokenError::AlgorithmNotAllowed.into());
        }
        let key = match self.verifying_key(provider, &token).await {
            Ok(key) => key,
            Err(AuthnError::InvalidToken(TokenError::BadSignature)) => {
                if let (Some(cache), Some(digest), Some(kid)) =
                    (cache, digest, token.kid.as_deref())
                    && let Some(key) = provider.keys.keys().and_then(|k| k.get(kid).cloned())
                {
                    cache.remember_forged(digest, index, key);
                }
                return Err(TokenError::BadSignature.into());
            }
            Err(error) => return Err(error),
        };
        token.check_typ(config)?;
        let expires_at = jwt::check_claims(&token.claims, config, now)?;
        let principal = Arc::new(Principal::from_claims(
            Origin::Token {
                provider: index,
                key,
            },
            token.claims,
            config,
            expires_at,
        )?);
        if provider
            .revocations
            .as_ref()
            .is_some_and(|r| r.revokes(&principal))
        {
            return Err(TokenError::Revoked.into());
        }
        if let (Some(cache), Some(digest)) = (&self.cache, digest) {
            cache.insert(digest, Arc::clone(&principal), now);
        }
        Ok(principal)
    }

    /// Ask the provider's introspection endpoint (through its cache).
    async fn introspect(
        &self,
        token: &str,
        provider: &Provider,
        requirement: &Requirement,
    ) -> Result<Arc<Principal>, AuthnError> {
        let introspector = provider
            .introspection
            .as_ref()
            .ok_or(AuthnError::KeysUnavailable)?;
        let principal = introspector
            .introspect(token, &provider.config, !requirement.remote)
            .await?;
        if provider
            .revocations
            .as_ref()
            .is_some_and(|r| r.revokes(&principal))
        {
            return Err(TokenError::Revoked.into());
        }
        Ok(principal)
    }

    /// Find the key that verifies the signature. An unknown `kid` may trigger
    /// one coalesced, rate-limited refetch; it never yields a 5xx.
    async fn verifying_key(
        &self,
        provider: &Provider,
        token: &jwt::Unverified<'_>,
    ) -> Result<Arc<VerifyingKey>, AuthnError> {
        let keys = provider.keys.keys().ok_or(AuthnError::KeysUnavailable)?;
        let input = token.signing_input.as_bytes();
        self.stats.signature_checks.inc();
        let key = match token.kid.as_deref() {
            Some(kid) => match keys.get(kid) {
                Some(key) => Arc::clone(key),
                None => {
                    drop(keys);
                    provider
                        .keys
                        .find_unknown_kid(kid)
                        .await
                        .ok_or(TokenError::UnknownKey)?
                }
            },
            // No kid: try the keys that fit the algorithm (a set has a handful).
            None => {
                return keys
                    .all()
                    .iter()
                    .find(|k| k.verify(input, token.signature, token.alg))
                    .cloned()
                    .ok_or_else(|| {
                        if keys.all().iter().any(|k| k.supports(token.alg)) {
                            TokenError::BadSignature.into()
                        } else {
                            TokenError::UnknownKey.into()
                        }
                    });
            }
        };
        if !key.supports(token.alg) {
            return Err(TokenError::AlgorithmNotAllowed.into());
        }
        if !key.verify(input, token.signature, token.alg) {
            return Err(TokenError::BadSignature.into());
        }
        Ok(key)
    }
}

/// Seconds since the epoch (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d: Duration| {
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
        })
}
