//! Strict JWS compact parsing and the claim checks of RFC 7519 / RFC 8725.
//! Signatures are checked by `jwks::VerifyingKey`; this file decides whether
//! a token is well-formed and whether its claims are acceptable.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::TokenError;
use super::provider::{AudienceCheck, ProviderConfig};

/// The JOSE header fields we read, from a header that must be a JSON object.
/// `jwk`, `jku`, `x5u`, `x5c` are never read: keys come only from the
/// provider's published set (RFC 8725 §3.10).
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

impl Header {
    fn parse(part: &str) -> Result<Self, TokenError> {
        let mut fields: Map<String, Value> = decode_json(part)?;
        // We implement no JWS extensions, so any critical one is unknown
        // (RFC 7515 §4.1.11); an empty or null `crit` is malformed anyway.
        if fields.contains_key("crit") {
            return Err(TokenError::UnsupportedCrit);
        }
        let mut text = |name: &str| match fields.remove(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(TokenError::Malformed),
        };
        Ok(Self {
            alg: text("alg")?.ok_or(TokenError::Malformed)?,
            kid: text("kid")?,
            typ: text("typ")?,
        })
    }
}

/// A parsed, not yet verified, token.
#[derive(Debug)]
pub struct Unverified<'t> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    typ: Option<String>,
    pub claims: Map<String, Value>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'t str,
    pub signature: &'t str,
}

/// Parse a JWS compact serialisation: exactly three base64url parts without
/// padding, a JSON object header with a known `alg` and no `crit`, a JSON
/// object payload, and a non-empty signature. Anything else is refused.
/// (Whether the provider allows that `alg` is checked next: never HS* or
/// `none`, which the config refuses.)
pub fn parse(token: &str) -> Result<Unverified<'_>, TokenError> {
    let mut parts = token.splitn(3, '.');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if signature.contains('.') {
        // Five parts is a JWE, more is garbage: neither is a signed token.
        return Err(TokenError::Malformed);
    }
    let header = Header::parse(header)?;
    let alg: Algorithm = header
        .alg
        .parse()
        .map_err(|_| TokenError::AlgorithmNotAllowed)?;
    let claims: Map<String, Value> = decode_json(payload)?;
    // An empty signature (as `alg: none` has) was already refused by the alg check.
    if !is_base64url(signature) {
        return Err(TokenError::Malformed);
    }
    let signing_input = &token[..header_len(token, payload)];
    Ok(Unverified {
        alg,
        kid: header.kid,
        typ: header.typ,
        claims,
        signing_input,
        signature,
    })
}

/// Length of `header.payload` within the token.
fn header_len(token: &str, payload: &str) -> usize {
    token.find('.').map_or(0, |dot| dot + 1 + payload.len())
}

fn is_base64url(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    if !is_base64url(part) {
        return Err(TokenError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

impl Unverified<'_> {
    /// The `iss` claim, which selects the provider.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// The header's `typ` against the provider's `require_typ` (RFC 9068 §4:
    /// `at+jwt`, optionally with the `application/` prefix, any case).
    pub fn check_typ(&self, provider: &ProviderConfig) -> Result<(), TokenError> {
        let Some(required) = provider.require_typ.as_deref() else {
            return Ok(());
        };
        let typ = self.typ.as_deref().unwrap_or("");
        let bare = match typ.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
            _ => typ,
        };
        if bare.eq_ignore_ascii_case(required) {
            Ok(())
        } else {
            Err(TokenError::TypeNotAccepted)
        }
    }
}

/// Time claims, audience: everything but the signature and the issuer.
/// Returns `exp`. `now` is unix seconds.
pub fn check_claims(
    claims: &Map<String, Value>,
    provider: &ProviderConfig,
    now: i64,
) -> Result<i64, TokenError> {
    let leeway = i64::try_from(provider.leeway).unwrap_or(i64::MAX);
    let exp = numeric_date(claims, "exp")?.ok_or(TokenError::NoExpiry)?;
    if now > exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(TokenError::NotYetValid);
    }
    if let Some(iat) = numeric_date(claims, "iat")?
        && iat > now.saturating_add(leeway)
    {
        return Err(TokenError::IssuedInFuture);
    }
    if let AudienceCheck::OneOf { claim, allowed } = &provider.audience {
        let ok = match claim.lookup(claims) {
            Some(Value::String(aud)) => allowed.iter().any(|a| **a == **aud),
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .any(|aud| allowed.iter().any(|a| **a == *aud)),
            _ => false,
        };
        if !ok {
            return Err(TokenError::AudienceNotAccepted);
        }
    }
    Ok(exp)
}

/// A NumericDate claim (RFC 7519 §2), fractions truncated. Present but not a
/// number is malformed.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(TokenError::Malformed),
        Some(_) => Err(TokenError::Malformed),
    }
}

#[cfg(test)]
mod tests;
