//! Revocation (RFC 7009) and introspection (RFC 7662).

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::oauth::{self, OAuthError};
use super::{AuthService, ClientConfig, digest, read_form, unix_now};
use crate::error::Body;

impl AuthService {
    /// Revoke a refresh token (with its family and the access tokens issued
    /// from it) or an access token of the calling client. Unknown or
    /// foreign tokens get the same 200, so the answer reveals nothing.
    pub(super) async fn revoke(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, OAuthError> {
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
                tracing::info!(target: "portcullis::auth", client_id = %client.id, "refresh token family revoked");
            }
        } else if let Some(claims) = self.verify_own(token) {
            let owner = claims.get("client_id").and_then(Value::as_str);
            let jti = claims.get("jti").and_then(Value::as_str).map(str::to_owned);
            let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
            if let (Some(jti), true) = (jti, owner == Some(&*client.id)) {
                self.blocking(move |store| store.revoke_access(&jti, exp))
                    .await?;
                tracing::info!(target: "portcullis::auth", client_id = %client.id, "access token revoked");
            }
        }
        Ok(oauth::empty(StatusCode::OK))
    }

    /// For clients with `introspect: true`. A caller sees an access token
    /// only when it issued it or is one of its audiences, and a refresh token
    /// only when it owns it (RFC 7662 §4); anything else is `active: false`.
    pub(super) async fn introspect(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, OAuthError> {
        let (headers, form) = read_form(request).await?;
        let client = self.authenticate(&headers, &form).await?;
        if !client.introspect {
            return Err(OAuthError::IntrospectionNotAllowed);
        }
        let token = form
            .get("token")
            .ok_or(OAuthError::InvalidRequest("token is required"))?;
        let inactive = || oauth::json(StatusCode::OK, &json!({"active": false}));
        if let Some(mut claims) = self.verify_own(token) {
            let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
            let jti = claims
                .get("jti")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if exp <= unix_now() || !may_see(client, &claims) {
                return Ok(inactive());
            }
            if self
                .blocking(move |store| store.is_access_revoked(&jti))
                .await?
            {
                return Ok(inactive());
            }
            claims.insert("active".into(), json!(true));
            // RFC 9449 §6.2: a DPoP-bound token is of type DPoP; its `cnf`
            // is among the claims.
            let token_type = if claims.contains_key("cnf") {
                "DPoP"
            } else {
                "Bearer"
            };
            claims.insert("token_type".into(), json!(token_type));
            return Ok(oauth::json(StatusCode::OK, &Value::Object(claims)));
        }
        let hash = digest(token);
        let record = self
            .blocking(move |store| store.find_refresh(&hash))
            .await?;
        match record {
            Some(r)
                if *r.client_id == *client.id
                    && !r.used
                    && !r.family_revoked
                    && r.expires_at > unix_now() =>
            {
                // No `token_type`: RFC 7662 means the access-token types of
                // RFC 6749 §7.1 by it, and a refresh token is none of them.
                Ok(oauth::json(
                    StatusCode::OK,
                    &json!({
                        "active": true,
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
    pub(super) fn verify_own(&self, token: &str) -> Option<Map<String, Value>> {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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
}

/// May `client` learn about the access token with these claims?
fn may_see(client: &ClientConfig, claims: &Map<String, Value>) -> bool {
    if claims.get("client_id").and_then(Value::as_str) == Some(&*client.id) {
        return true;
    }
    let audience_of_caller = |aud: &str| client.audiences.iter().any(|a| **a == *aud);
    match claims.get("aud") {
        Some(Value::String(aud)) => audience_of_caller(aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(audience_of_caller),
        _ => false,
    }
}
