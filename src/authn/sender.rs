//! Sender-constrained tokens: a token may say, in its `cnf` claim, which
//! key must accompany it: a client certificate (RFC 8705 `x5t#S256`) or a
//! DPoP key (RFC 9449 `jkt`). A token bound to something the request does
//! not prove is refused, whatever route it is sent to.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::{AuthnError, Principal, Scheme, TokenError};
use crate::dpop::{DpopVerifier, Expected};
use crate::tls::peer::PeerCert;

/// The confirmation (`cnf`) a token carries, decoded at verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confirmation {
    /// SHA-256 of the client certificate the token is bound to.
    pub x5t_s256: Option<[u8; 32]>,
    /// RFC 7638 thumbprint of the DPoP key the token is bound to.
    pub jkt: Option<[u8; 32]>,
}

impl Confirmation {
    /// Read `cnf`. A confirmation method we cannot check (RFC 7800 `jwk`,
    /// `jku`…) or a malformed one makes the token unusable: accepting it
    /// would drop a binding its issuer asked for.
    pub fn from_claims(claims: &Map<String, Value>) -> Result<Self, TokenError> {
        let Some(cnf) = claims.get("cnf") else {
            return Ok(Self::default());
        };
        let Value::Object(members) = cnf else {
            return Err(TokenError::Malformed);
        };
        let mut out = Self::default();
        for (name, value) in members {
            let slot = match name.as_str() {
                "x5t#S256" => &mut out.x5t_s256,
                "jkt" => &mut out.jkt,
                _ => return Err(TokenError::UnsupportedConfirmation),
            };
            *slot = Some(decode_sha256(value).ok_or(TokenError::Malformed)?);
        }
        Ok(out)
    }
}

fn decode_sha256(value: &Value) -> Option<[u8; 32]> {
    let bytes = URL_SAFE_NO_PAD.decode(value.as_str()?).ok()?;
    bytes.try_into().ok()
}

/// The request facts a binding is checked against.
pub struct Presented<'a> {
    /// How the token came: `Bearer` (or a cookie) or `DPoP`.
    pub scheme: Scheme,
    pub headers: &'a http::HeaderMap,
    /// Method, scheme, authority and canonical path for the DPoP `htm`/`htu`.
    pub expected: Expected<'a>,
    /// The connection's verified client certificate.
    pub peer: Option<&'a PeerCert>,
}

/// Hold a principal to its token's bindings, and a `dpop: required` route
/// to DPoP. `now` is unix seconds.
pub fn check(
    principal: &Principal,
    presented: &Presented<'_>,
    dpop_required: bool,
    dpop: &DpopVerifier,
    now: i64,
) -> Result<(), AuthnError> {
    let cnf = &principal.confirmation;
    if let Some(bound) = &cnf.x5t_s256 {
        let matches = presented.peer.is_some_and(|peer| {
            aws_lc_rs::constant_time::verify_slices_are_equal(&peer.sha256, bound).is_ok()
        });
        if !matches {
            return Err(TokenError::CertificateMismatch.into());
        }
    }
    match (&cnf.jkt, presented.scheme) {
        (Some(jkt), Scheme::Dpop) => {
            let proof = dpop
                .verify(presented.headers, &presented.expected, now)
                .map_err(|e| match e {
                    crate::dpop::DpopError::Busy => AuthnError::DpopUnavailable,
                    e => AuthnError::InvalidDpopProof(e),
                })?;
            aws_lc_rs::constant_time::verify_slices_are_equal(&proof.jkt, jkt)
                .map_err(|_| AuthnError::InvalidDpopProof(crate::dpop::DpopError::KeyMismatch))
        }
        // A bound token sent as a plain bearer token: the downgrade RFC 9449
        // §7.2 forbids.
        (Some(_), Scheme::Bearer) => Err(TokenError::DpopSchemeRequired.into()),
        (None, Scheme::Dpop) => Err(TokenError::NotDpopBound.into()),
        (None, Scheme::Bearer) if dpop_required => Err(AuthnError::DpopRequired),
        (None, Scheme::Bearer) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cnf(value: Value) -> Result<Confirmation, TokenError> {
        let claims = json!({ "cnf": value });
        Confirmation::from_claims(claims.as_object().unwrap_or(&Map::new()))
    }

    #[test]
    fn known_confirmations_are_decoded_and_unknown_ones_refuse_the_token() {
        let hash = URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert_eq!(
            cnf(json!({"x5t#S256": hash, "jkt": hash})),
            Ok(Confirmation {
                x5t_s256: Some([7; 32]),
                jkt: Some([7; 32])
            })
        );
        assert_eq!(
            Confirmation::from_claims(&Map::new()),
            Ok(Confirmation::default())
        );
        assert_eq!(
            cnf(json!({"jwk": {"kty": "EC"}})),
            Err(TokenError::UnsupportedConfirmation)
        );
        assert_eq!(cnf(json!({"jkt": "short"})), Err(TokenError::Malformed));
        assert_eq!(cnf(json!({"jkt": 5})), Err(TokenError::Malformed));
        assert_eq!(cnf(json!("jkt")), Err(TokenError::Malformed));
    }
}
