//! A token issuer as the verifier sees it, compiled from the config.

use std::time::Duration;

use http::Uri;
use jsonwebtoken::Algorithm;

use crate::claims::ClaimPath;

/// One `providers:` entry, compiled.
#[derive(Debug, PartialEq, Eq)]
pub struct ProviderConfig {
    pub name: Box<str>,
    /// `iss` must equal this exactly.
    pub issuer: Box<str>,
    pub audience: AudienceCheck,
    /// The allow-list; never symmetric algorithms or `none`.
    pub algorithms: Box<[Algorithm]>,
    /// Seconds of clock skew tolerated on exp, nbf and iat.
    pub leeway: u64,
    pub scope_claims: Box<[ClaimPath]>,
    /// RFC 9068 `typ` the header must carry, lowercase without `application/`.
    pub require_typ: Option<Box<str>>,
    pub keys: KeySource,
    pub jwks: JwksTiming,
    /// Plain-http key sources allowed beyond loopback (explicit opt-in).
    pub allow_http: bool,
    /// Cookie to read the token from when a request has no `Authorization`.
    pub cookie: Option<Box<str>>,
    /// Where revoked tokens are listed, if anywhere.
    pub revocation: Option<super::revocation::RevocationSource>,
    /// Its RFC 7662 endpoint, if any.
    pub introspection: Option<super::introspect::IntrospectionConfig>,
}

/// How the audience is checked. Skipping is an explicit choice in the config.
#[derive(Debug, PartialEq, Eq)]
pub enum AudienceCheck {
    /// The claim (string or array) must contain one of these.
    OneOf {
        claim: ClaimPath,
        allowed: Box<[Box<str>]>,
    },
    Skip,
}

/// Where the provider's key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    JwksUri(Uri),
    /// `{issuer}/.well-known/openid-configuration`, whose `jwks_uri` is used.
    Discovery(Uri),
    /// The built-in auth service in this process: its key set is read
    /// directly, with no HTTP hop.
    AuthService,
    /// No keys: every token of the provider is introspected.
    None,
}

/// Timings of the key-set cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksTiming {
    /// Background refresh interval (an upper bound: a shorter `max-age` wins).
    pub refresh_interval: Duration,
    /// Least time between two refetches caused by unknown `kid`s.
    pub unknown_kid_cooldown: Duration,
    /// After this long without a successful fetch, tokens are refused (fail closed).
    pub max_staleness: Duration,
    pub fetch_timeout: Duration,
}

impl Default for JwksTiming {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(300),
            unknown_kid_cooldown: Duration::from_secs(30),
            max_staleness: Duration::from_secs(24 * 3600),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

impl ProviderConfig {
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}
