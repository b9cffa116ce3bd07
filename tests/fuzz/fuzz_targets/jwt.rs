//! Token parsing before the signature check (`authn::jwt::parse`), then the
//! claim checks, `cnf` decoding and the principal built from the claims.
//!
//! Input: either a raw token, or header JSON, a NUL byte, payload JSON, a NUL
//! byte and the signature; the JSON parts are base64url-encoded here, so the
//! fuzzer works on the JSON rather than on its encoding.
#![no_main]

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use portcullis::authn::provider::{AudienceCheck, JwksTiming, KeySource, ProviderConfig};
use portcullis::authn::sender::Confirmation;
use portcullis::authn::{Origin, Principal, jwt};
use portcullis::claims::ClaimPath;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        check(&String::from_utf8_lossy(data));
        return;
    };
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        String::from_utf8_lossy(signature)
    );
    if let Some(parsed) = check(&token) {
        assert_eq!(
            Ok(&parsed),
            serde_json::from_slice::<Value>(payload)
                .as_ref()
                .map_err(|_| ())
        );
    }
});

/// Checks what `parse` promises and returns the claims it read.
fn check(token: &str) -> Option<Value> {
    let parsed = match jwt::parse(token) {
        Ok(parsed) => parsed,
        Err(e) => {
            assert!(!e.to_string().is_empty() && !e.code().is_empty());
            return None;
        }
    };
    // Exactly three parts; the signature covers the first two, as sent.
    assert_eq!(token.matches('.').count(), 2, "{token:?}");
    assert_eq!(
        format!("{}.{}", parsed.signing_input, parsed.signature),
        token
    );
    assert!(!parsed.signature.is_empty());
    assert!(
        parsed
            .signature
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{token:?}"
    );
    assert_eq!(
        parsed.issuer(),
        parsed.claims.get("iss").and_then(Value::as_str)
    );

    let provider = provider();
    let _ = parsed.check_typ(&provider);
    for now in [i64::MIN, 0, 1_800_000_000, i64::MAX] {
        if let Ok(exp) = jwt::check_claims(&parsed.claims, &provider, now) {
            assert!(now <= exp.saturating_add(30), "{token:?} at {now}");
            let aud = parsed.claims.get("aud");
            assert!(
                aud.is_some_and(|a| portcullis::claims::matches(a, "orders-api")),
                "{token:?}"
            );
        }
    }

    let confirmation = Confirmation::from_claims(&parsed.claims);
    if !parsed.claims.contains_key("cnf") {
        assert_eq!(confirmation, Ok(Confirmation::default()));
    }
    match Principal::from_claims(Origin::ApiKey, parsed.claims.clone(), &provider, 0) {
        Ok(principal) => {
            assert_eq!(Ok(&principal.confirmation), confirmation.as_ref());
            assert!(principal.caller.starts_with("p:main:"));
            assert!(principal.scopes.windows(2).all(|w| w[0] < w[1]));
        }
        Err(e) => assert_eq!(Err(e), confirmation),
    }
    Some(Value::Object(parsed.claims))
}

fn provider() -> ProviderConfig {
    ProviderConfig {
        name: "main".into(),
        issuer: "https://issuer".into(),
        audience: AudienceCheck::OneOf {
            claim: ClaimPath::new("aud"),
            allowed: ["orders-api".into()].into(),
        },
        algorithms: [Algorithm::RS256, Algorithm::ES256].into(),
        leeway: 30,
        scope_claims: [ClaimPath::new("scope"), ClaimPath::new("scp")].into(),
        require_typ: Some("at+jwt".into()),
        keys: KeySource::None,
        jwks: JwksTiming {
            refresh_interval: Duration::from_secs(60),
            ..JwksTiming::default()
        },
        allow_http: false,
        cookie: None,
        revocation: None,
        introspection: None,
    }
}
