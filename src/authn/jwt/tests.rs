// Unit tests of the parent module, which declares this file under #[cfg(test)].
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::authn::provider::{JwksTiming, KeySource};
use crate::claims::ClaimPath;

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn token(header: Value, claims: Value) -> String {
    format!("{}.{}.c2ln", b64(&header), b64(&claims))
}

fn provider(audience: AudienceCheck) -> ProviderConfig {
    ProviderConfig {
        name: "main".into(),
        issuer: "https://issuer".into(),
        audience,
        algorithms: [Algorithm::RS256].into(),
        leeway: 30,
        scope_claims: [ClaimPath::new("scope")].into(),
        require_typ: Some("at+jwt".into()),
        keys: KeySource::JwksUri("http://127.0.0.1/jwks".parse().unwrap()),
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

fn orders() -> AudienceCheck {
    AudienceCheck::OneOf {
        claim: ClaimPath::new("aud"),
        allowed: ["orders-api".into()].into(),
    }
}

fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

#[test]
fn a_well_formed_token_is_split_and_decoded() {
    let t = token(
        json!({"alg": "RS256", "kid": "k1", "jku": "http://evil"}),
        json!({"iss": "https://issuer"}),
    );
    let parsed = parse(&t).unwrap();
    assert_eq!(parsed.alg, Algorithm::RS256);
    assert_eq!(parsed.kid.as_deref(), Some("k1"));
    assert_eq!(parsed.issuer(), Some("https://issuer"));
    assert_eq!(parsed.signature, "c2ln");
    assert_eq!(format!("{}.c2ln", parsed.signing_input), t);
}

#[test]
fn anything_but_a_compact_jws_is_malformed() {
    let good_header = b64(&json!({"alg": "RS256"}));
    let good_claims = b64(&json!({}));
    let cases = [
        String::new(),
        "abc".into(),
        format!("{good_header}.{good_claims}"),
        format!("{good_header}.{good_claims}."),
        format!("{good_header}.{good_claims}.sig.extra"),
        format!("{good_header}==.{good_claims}.sig"),
        format!("{good_header}.{good_claims}.si+g"),
        format!("{}.{good_claims}.sig", b64(&json!([1]))),
        format!("{good_header}.{}.sig", b64(&json!("str"))),
        format!("{good_header}.bm90IGpzb24.sig"),
        format!(
            "{}.{good_claims}.sig",
            b64(&json!({"alg": "RS256", "alg2": 1, "kid": 5}))
        ),
        format!("{}.{good_claims}.sig", b64(&json!(["RS256", "k1"]))),
        format!("{}.{good_claims}.sig", b64(&json!({"kid": "k1"}))),
        format!("{}.{good_claims}.sig", b64(&json!({"alg": 256}))),
        format!(
            "{}.{good_claims}.sig",
            b64(&json!({"alg": "RS256", "typ": ["JWT"]}))
        ),
    ];
    for t in cases {
        assert_eq!(parse(&t).unwrap_err(), TokenError::Malformed, "{t}");
    }
}

#[test]
fn none_unknown_algorithms_and_crit_are_refused() {
    let c = json!({});
    assert_eq!(
        parse(&token(json!({"alg": "none"}), c.clone())).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    assert_eq!(
        parse(&token(json!({"alg": "XX999"}), c.clone())).unwrap_err(),
        TokenError::AlgorithmNotAllowed
    );
    for crit in [json!(["exp"]), json!(null), json!([])] {
        let header = json!({"alg": "RS256", "crit": crit, "exp": 1});
        assert_eq!(
            parse(&token(header, c.clone())).unwrap_err(),
            TokenError::UnsupportedCrit
        );
    }
}

#[test]
fn typ_is_checked_when_required() {
    let p = provider(orders());
    for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
        let t = token(json!({"alg": "RS256", "typ": typ}), json!({}));
        assert!(parse(&t).unwrap().check_typ(&p).is_ok(), "{typ}");
    }
    for header in [
        json!({"alg": "RS256", "typ": "JWT"}),
        json!({"alg": "RS256"}),
    ] {
        let t = token(header, json!({}));
        assert_eq!(
            parse(&t).unwrap().check_typ(&p).unwrap_err(),
            TokenError::TypeNotAccepted
        );
    }
}

#[test]
fn time_claims_are_checked_with_leeway() {
    let p = provider(orders());
    let now = 1_000_000;
    let ok = |extra: Value| {
        let mut c = claims(json!({"aud": "orders-api", "exp": now + 60}));
        c.extend(claims(extra));
        check_claims(&c, &p, now)
    };
    assert_eq!(ok(json!({})), Ok(now + 60));
    assert_eq!(
        ok(json!({"exp": now - 20})),
        Ok(now - 20),
        "expired within leeway"
    );
    assert_eq!(ok(json!({"exp": now - 31})), Err(TokenError::Expired));
    assert_eq!(ok(json!({"nbf": now + 20})), Ok(now + 60));
    assert_eq!(ok(json!({"nbf": now + 31})), Err(TokenError::NotYetValid));
    assert_eq!(
        ok(json!({"iat": now + 31})),
        Err(TokenError::IssuedInFuture)
    );
    assert_eq!(ok(json!({"exp": "soon"})), Err(TokenError::Malformed));
    let no_exp = claims(json!({"aud": "orders-api"}));
    assert_eq!(check_claims(&no_exp, &p, now), Err(TokenError::NoExpiry));
}

#[test]
fn audience_is_a_string_or_array_member_unless_skipped() {
    let p = provider(orders());
    let now = 10;
    let with = |aud: Value| check_claims(&claims(json!({"exp": 100, "aud": aud})), &p, now);
    assert!(with(json!("orders-api")).is_ok());
    assert!(with(json!(["account", "orders-api"])).is_ok());
    assert_eq!(with(json!("account")), Err(TokenError::AudienceNotAccepted));
    assert_eq!(
        with(json!(["orders-api-evil"])),
        Err(TokenError::AudienceNotAccepted)
    );
    assert_eq!(
        check_claims(&claims(json!({"exp": 100})), &p, now),
        Err(TokenError::AudienceNotAccepted)
    );
    let cognito = provider(AudienceCheck::OneOf {
        claim: ClaimPath::new("client_id"),
        allowed: ["app".into()].into(),
    });
    assert!(
        check_claims(
            &claims(json!({"exp": 100, "client_id": "app"})),
            &cognito,
            now
        )
        .is_ok()
    );
    let skip = provider(AudienceCheck::Skip);
    assert!(check_claims(&claims(json!({"exp": 100})), &skip, now).is_ok());
}
