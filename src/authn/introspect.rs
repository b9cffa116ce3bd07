//! Token introspection (RFC 7662): for opaque tokens, and for JWTs on routes
//! that say `verify: remote` (instant revocation where it matters).
//!
//! Answers are cached under an HMAC of the token (never the token): active
//! ones until the token's `exp` or `cache_active_max`, whichever is first,
//! inactive ones for `cache_inactive`. Concurrent requests with one token
//! share one call. When the endpoint is down or slow, tokens not in the
//! cache get 503 (nobody vouched for them); cached ones keep working.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use moka::Expiry;
use moka::future::Cache;
use serde_json::{Map, Value};

use super::provider::ProviderConfig;
use super::{AuthnError, Origin, Principal, TokenError, unix_now};

/// `providers[].introspection`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntrospectionConfig {
    pub endpoint: Uri,
    pub client_id: Box<str>,
    pub client_secret: Box<str>,
    pub timeout: Duration,
    pub cache_active_max: Duration,
    pub cache_inactive: Duration,
}

/// A cached answer.
#[derive(Clone)]
enum Answer {
    Active(Arc<Principal>),
    Inactive,
}

struct AnswerExpiry {
    active_max: Duration,
    inactive: Duration,
}

impl Expiry<[u8; 32], Answer> for AnswerExpiry {
    fn expire_after_create(&self, _: &[u8; 32], answer: &Answer, _: Instant) -> Option<Duration> {
        Some(match answer {
            Answer::Active(p) => {
                let left = u64::try_from(p.expires_at.saturating_sub(unix_now())).unwrap_or(0);
                Duration::from_secs(left).min(self.active_max)
            }
            Answer::Inactive => self.inactive,
        })
    }
}

/// Why the endpoint could not answer (logged; the client gets 503).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Request(String),
    #[error("answered HTTP {0}")]
    Status(StatusCode),
    #[error("invalid answer: {0}")]
    Answer(String),
}

/// One provider's introspection client and cache.
pub struct Introspector {
    provider: usize,
    config: IntrospectionConfig,
    authorization: http::HeaderValue,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    cache: Cache<[u8; 32], Answer>,
    mac_key: hmac::Key,
}

impl Introspector {
    pub fn new(provider: usize, config: IntrospectionConfig) -> Result<Self, String> {
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let credentials = STANDARD.encode(format!(
            "{}:{}",
            encode(&config.client_id),
            encode(&config.client_secret)
        ));
        let authorization = http::HeaderValue::from_str(&format!("Basic {credentials}"))
            .map_err(|_| "client credentials are not a header value")?;
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| "the system random number generator failed")?;
        let cache = Cache::builder()
            .max_capacity(10_000)
            .expire_after(AnswerExpiry {
                active_max: config.cache_active_max,
                inactive: config.cache_inactive,
            })
            .build();
        Ok(Self {
            provider,
            authorization,
            client: Client::builder(TokioExecutor::new()).build(crate::fetch::https_connector(
                Some(config.timeout),
                None,
                true,
            )),
            cache,
            mac_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            config,
        })
    }

    /// The principal of an active token, after the provider's checks.
    /// `cached: false` (routes with `verify: remote`) asks the endpoint every
    /// time, so a revocation there counts at once.
    pub async fn introspect(
        &self,
        token: &str,
        provider: &ProviderConfig,
        cached: bool,
    ) -> Result<Arc<Principal>, AuthnError> {
        let unavailable = |error: &dyn std::fmt::Display| {
            tracing::warn!(provider = %provider.name, %error, "introspection failed");
            AuthnError::IntrospectionUnavailable
        };
        let answer = if cached {
            let mut key = [0u8; 32];
            key.copy_from_slice(hmac::sign(&self.mac_key, token.as_bytes()).as_ref());
            let owned = token.to_owned();
            self.cache
                .try_get_with(key, async move { self.call(&owned, provider).await })
                .await
                .map_err(|error: Arc<CallError>| unavailable(&error))?
        } else {
            self.call(token, provider)
                .await
                .map_err(|error| unavailable(&error))?
        };
        match answer {
            Answer::Active(principal)
                if principal.expires_at.saturating_add(provider.leeway as i64) >= unix_now() =>
            {
                Ok(principal)
            }
            _ => Err(TokenError::Inactive.into()),
        }
    }

    async fn call(&self, token: &str, provider: &ProviderConfig) -> Result<Answer, CallError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let request = Request::post(self.config.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, self.authorization.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Request(e.to_string()))?;
        let work = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| CallError::Request(e.to_string()))?;
            if response.status() != StatusCode::OK {
                return Err(CallError::Status(response.status()));
            }
            Limited::new(response.into_body(), 64 << 10)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|_| CallError::Answer("body unreadable or over 64 KiB".into()))
        };
        let bytes = tokio::time::timeout(self.config.timeout, work)
            .await
            .map_err(|_| CallError::Timeout)??;
        let claims: Map<String, Value> =
            serde_json::from_slice(&bytes).map_err(|e| CallError::Answer(e.to_string()))?;
        Ok(self.judge(claims, provider))
    }

    /// RFC 7662 §2.2: only `active: true` vouches for a token; then the
    /// provider's own checks apply to the answer as they would to a JWT's
    /// claims. Anything that fails is cached as inactive.
    fn judge(&self, claims: Map<String, Value>, provider: &ProviderConfig) -> Answer {
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Answer::Inactive;
        }
        // An access token only: a refresh token (or any other type) that an
        // endpoint calls active vouches for nothing here.
        if let Some(token_type) = claims.get("token_type") {
            let access = token_type.as_str().is_some_and(|t| {
                [
                    "bearer",
                    "dpop",
                    "access_token",
                    "urn:ietf:params:oauth:token-type:access_token",
                ]
                .iter()
                .any(|ok| t.eq_ignore_ascii_case(ok))
            });
            if !access {
                return Answer::Inactive;
            }
        }
        let now = unix_now();
        let leeway = i64::try_from(provider.leeway).unwrap_or(i64::MAX);
        let date = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(value) => value.as_i64().map(Some).ok_or(()),
        };
        // Dates present but not integers are not trusted.
        let (Ok(exp), Ok(nbf)) = (date("exp"), date("nbf")) else {
            return Answer::Inactive;
        };
        let expires_at = exp.unwrap_or(i64::MAX);
        let not_yet = nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway));
        if expires_at.saturating_add(leeway) < now || not_yet {
            return Answer::Inactive;
        }
        if claims
            .get("iss")
            .and_then(Value::as_str)
            .is_some_and(|iss| iss != &*provider.issuer)
        {
            return Answer::Inactive;
        }
        if let super::provider::AudienceCheck::OneOf { claim, allowed } = &provider.audience {
            let fits = |aud: &str| allowed.iter().any(|a| **a == *aud);
            let ok = match claim.lookup(&claims) {
                Some(Value::String(aud)) => fits(aud),
                Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(fits),
                _ => false,
            };
            if !ok {
                return Answer::Inactive;
            }
        }
        // A binding the gateway cannot enforce makes the token unusable.
        match Principal::from_claims(
            Origin::Introspection {
                provider: self.provider,
            },
            claims,
            provider,
            expires_at,
        ) {
            Ok(principal) => Answer::Active(Arc::new(principal)),
            Err(_) => Answer::Inactive,
        }
    }
}
