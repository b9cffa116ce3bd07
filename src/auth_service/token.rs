//! The token endpoint: client credentials and refresh (RFC 6749 §4.4, §6).

use std::collections::HashMap;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::oauth::{self, OAuthError};
use super::store::{NewAccess, NewRefresh, Redeemed};
use super::{AuthService, ClientConfig, digest, random_token, read_form, unix_now};
use crate::dpop::Expected;
use crate::error::Body;

/// A token response ready to send, and what must be stored for it.
struct Minted {
    body: Value,
    access: NewAccess,
    refresh: Option<NewRefresh>,
}

impl AuthService {
    /// `/token` and `/token/refresh` (which takes only the refresh grant).
    pub(super) async fn token(
        &self,
        request: Request<Incoming>,
        default_grant: Option<&str>,
    ) -> Result<Response<Body>, OAuthError> {
        let path = request.uri().path().to_owned();
        let (headers, form) = read_form(request).await?;
        let grant = form
            .get("grant_type")
            .map(String::as_str)
            .or(default_grant)
            .ok_or(OAuthError::InvalidRequest("grant_type is required"))?;
        let allowed = match default_grant {
            Some(only) => grant == only,
            None => matches!(grant, "client_credentials" | "refresh_token"),
        };
        if !allowed {
            return Err(OAuthError::UnsupportedGrantType);
        }
        let client = self.authenticate(&headers, &form).await?;
        let jkt = self.dpop_key(&headers, &path)?;
        if grant == "refresh_token" {
            return self.refresh(client, &form, jkt).await;
        }
        let scope = granted_scope(client.scopes.iter().map(|s| &**s), form.get("scope"))?;
        let minted = self.mint(client, &scope, &scope, None, jkt).await?;
        let (access, refresh) = (minted.access, minted.refresh);
        self.blocking(move |store| store.record_issue(&access, refresh.as_ref()))
            .await?;
        tracing::info!(target: "portcullis::auth", client_id = %client.id, scope, "token issued");
        Ok(oauth::json(StatusCode::OK, &minted.body))
    }

    /// The key of the request's DPoP proof, when it carries one: the access
    /// token will be bound to it (RFC 9449 §5). Refresh tokens stay unbound:
    /// our clients are confidential and authenticate anyway (§5.0).
    fn dpop_key(
        &self,
        headers: &http::HeaderMap,
        path: &str,
    ) -> Result<Option<String>, OAuthError> {
        if !headers.contains_key(crate::dpop::DPOP) {
            return Ok(None);
        }
        let endpoint = &self.token_endpoint;
        let expected = Expected {
            method: &http::Method::POST,
            scheme: &endpoint.scheme,
            authority: &endpoint.authority,
            path: &format!("{}{path}", endpoint.base_path),
            access_token: None,
        };
        let proof = self
            .dpop
            .verify(headers, &expected, unix_now())
            .map_err(|e| match e {
                crate::dpop::DpopError::Busy => OAuthError::TemporarilyUnavailable,
                e => OAuthError::InvalidDpopProof(e),
            })?;
        Ok(Some(proof.jkt_b64()))
    }

    async fn refresh(
        &self,
        client: &ClientConfig,
        form: &HashMap<String, String>,
        jkt: Option<String>,
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
        let peek = {
            let hash = hash.clone();
            self.blocking(move |store| store.find_refresh(&hash))
                .await?
        };
        let Some(record) = peek.filter(|r| *r.client_id == *client.id) else {
            return Err(OAuthError::InvalidGrant("refresh token unknown"));
        };
        // What the grant still gives: its scopes the client may still have
        // (the config may have taken some away since).
        let still: Vec<&str> = record
            .scope
            .split(' ')
            .filter(|s| client.scopes.iter().any(|c| **c == **s))
            .collect();
        // Judged before the token is used up: a request refused for its scope
        // must not burn the token. A refresh may narrow the scope, never
        // widen it, and the new refresh token keeps the grant's (RFC 6749 §6).
        let access_scope = granted_scope(still.iter().copied(), form.get("scope"))?;
        let refresh_scope = still.join(" ");
        let minted = self
            .mint(
                client,
                &access_scope,
                &refresh_scope,
                Some(record.family.clone()),
                jkt,
            )
            .await?;
        let (access, successor) = (minted.access, minted.refresh);
        let Some(successor) = successor else {
            return Err(OAuthError::ServerError);
        };
        let client_id = client.id.to_string();
        let outcome = self
            .blocking(move |store| {
                store.redeem_refresh(&hash, &client_id, unix_now(), &access, &successor)
            })
            .await?;
        match outcome {
            Redeemed::Fresh(_) => {
                tracing::info!(target: "portcullis::auth", client_id = %client.id, scope = access_scope, "token refreshed");
                Ok(oauth::json(StatusCode::OK, &minted.body))
            }
            Redeemed::Reused => {
                tracing::warn!(client_id = %client.id, "refresh token reused: its token family is revoked");
                Err(OAuthError::InvalidGrant(
                    "refresh token already used; its token family is revoked",
                ))
            }
            Redeemed::Expired => Err(OAuthError::InvalidGrant("refresh token expired")),
            Redeemed::Revoked => Err(OAuthError::InvalidGrant("refresh token revoked")),
            Redeemed::Unknown => Err(OAuthError::InvalidGrant("refresh token unknown")),
        }
    }

    /// Sign an access token (RFC 9068) and draw a refresh token, when the
    /// client has them. Nothing is stored yet.
    async fn mint(
        &self,
        client: &ClientConfig,
        access_scope: &str,
        refresh_scope: &str,
        family: Option<String>,
        jkt: Option<String>,
    ) -> Result<Minted, OAuthError> {
        let now = unix_now();
        let access_ttl = i64::try_from(client.access_ttl.as_secs()).unwrap_or(i64::MAX);
        let expires_at = now.saturating_add(access_ttl);
        let jti = random_token(16)?;
        let mut claims = json!({
            "iss": self.config.issuer,
            "sub": client.id,
            "aud": match &*client.audiences {
                [one] => json!(one),
                many => json!(many),
            },
            "exp": expires_at,
            "iat": now,
            "nbf": now,
            "jti": jti,
            "client_id": client.id,
        });
        if !access_scope.is_empty() {
            claims["scope"] = json!(access_scope);
        }
        let token_type = match &jkt {
            Some(jkt) => {
                claims["cnf"] = json!({ "jkt": jkt });
                "DPoP"
            }
            None => "Bearer",
        };
        // Signing (RSA especially) is CPU work: off the async threads.
        let key = self
            .keys
            .load()
            .active()
            .map(Arc::clone)
            .ok_or(OAuthError::ServerError)?;
        let access_token = tokio::task::spawn_blocking(move || key.sign("at+jwt", &claims))
            .await
            .map_err(|_| OAuthError::ServerError)?
            .map_err(|error| {
                tracing::error!(%error, "signing an access token failed");
                OAuthError::ServerError
            })?;
        let mut body = json!({
            "access_token": access_token,
            "token_type": token_type,
            "expires_in": access_ttl,
        });
        if !access_scope.is_empty() {
            body["scope"] = json!(access_scope);
        }
        let family = match (client.refresh_ttl, family) {
            (None, _) => None,
            (Some(_), Some(family)) => Some(family),
            (Some(_), None) => Some(random_token(16)?),
        };
        let refresh = match (client.refresh_ttl, &family) {
            (Some(ttl), Some(family)) => {
                let token = random_token(32)?;
                let refresh = NewRefresh {
                    hash: digest(&token),
                    family: family.clone(),
                    client_id: client.id.to_string(),
                    scope: refresh_scope.to_owned(),
                    expires_at: now
                        .saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
                };
                body["refresh_token"] = json!(token);
                Some(refresh)
            }
            _ => None,
        };
        Ok(Minted {
            body,
            access: NewAccess {
                jti,
                family,
                expires_at,
            },
            refresh,
        })
    }
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
