//! The authentication and authorisation matrix against real servers: every
//! rejection has the RFC 6750 shape and never reaches the upstream.

mod support;

use serde_json::{Value, json};
use support::*;

struct World {
    idp: Idp,
    upstream: Upstream,
    gateway: TestGateway,
    rsa: TestKey,
    ec: TestKey,
}

async fn world() -> World {
    let rsa = TestKey::rsa_shared(0, "k1");
    let ec = TestKey::ec("e1");
    let idp = Idp::start(vec![rsa.public_jwk(), ec.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
realm: test
providers:
{provider}
upstreams:
  app: {{ url: "{up}", timeout: 5s }}
routes:
  - {{ path: /public/**, upstream: app, auth: none }}
  - {{ path: /profile, methods: [GET], upstream: app, scopes: [profile] }}
  - {{ path: /admin/**, upstream: app, scopes: [admin] }}
  - path: /orders/**
    upstream: app
    forward_claims: {{ sub: X-Auth-Subject, "realm_access.roles": X-Auth-Roles }}
  - path: /tenants/{{t}}/reports
    upstream: app
    claims: {{ tenant: acme, "realm_access.roles": reporter }}
"#,
        provider = provider_yaml("main", &idp.issuer(), &idp.jwks_uri()),
        up = upstream.url(),
    );
    let gateway = TestGateway::start(&yaml).await;
    World {
        idp,
        upstream,
        gateway,
        rsa,
        ec,
    }
}

impl World {
    fn claims(&self, extra: Value) -> Value {
        let mut claims = json!({
            "iss": self.idp.issuer(),
            "aud": "orders-api",
            "sub": "alice",
            "exp": now() + 300,
            "iat": now(),
            "scope": "profile orders",
        });
        if let (Value::Object(base), Value::Object(extra)) = (&mut claims, extra) {
            base.extend(extra);
        }
        claims
    }

    fn token(&self, extra: Value) -> String {
        self.rsa.token(&self.claims(extra))
    }
}

/// What a refused request must look like.
struct Refusal {
    status: u16,
    /// `error=` in WWW-Authenticate; `None` means the challenge has no error code.
    error: Option<&'static str>,
    description: &'static str,
}

const fn invalid_token(description: &'static str) -> Refusal {
    Refusal {
        status: 401,
        error: Some("invalid_token"),
        description,
    }
}

fn assert_refused(resp: &Resp, expected: &Refusal, case: &str) {
    assert_eq!(
        resp.status,
        expected.status,
        "{case}: status; body {}",
        resp.text()
    );
    let challenge = resp.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.starts_with("Bearer realm=\"test\""),
        "{case}: challenge {challenge:?}"
    );
    match expected.error {
        Some(error) => {
            assert!(
                challenge.contains(&format!("error=\"{error}\"")),
                "{case}: {challenge}"
            );
            assert!(
                challenge.contains(&format!("error_description=\"{}\"", expected.description)),
                "{case}: {challenge}"
            );
            assert_eq!(resp.json()["error"], error, "{case}: body");
        }
        None => assert!(!challenge.contains("error="), "{case}: {challenge}"),
    }
    assert_eq!(
        resp.json()["error_description"],
        expected.description,
        "{case}: body"
    );
    assert!(
        resp.header("x-upstream").is_none(),
        "{case}: came from the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_token_is_forwarded_with_its_claim_headers() {
    let w = world().await;
    let token = w.token(json!({"realm_access": {"roles": ["a", "b"]}}));
    let resp = Client::new()
        .get_bearer(&w.gateway.url("/orders/42?x=1"), &token, &[])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-upstream"), Some("yes"));
    let got = w.upstream.last();
    assert_eq!(got.path_and_query, "/orders/42?x=1");
    assert_eq!(got.header("x-auth-subject"), Some("alice"));
    assert_eq!(got.header("x-auth-roles"), Some(r#"["a","b"]"#));
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        got.header("x-forwarded-host"),
        Some(w.gateway.addr().to_string().as_str())
    );
    assert_eq!(
        got.header("host"),
        Some(w.upstream.addr().to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_token_is_refused_in_the_rfc_6750_shape_and_never_forwarded() {
    let w = world().await;
    let attacker = TestKey::rsa_shared(2, "k1");
    let stranger = TestKey::rsa_shared(2, "attacker-kid");
    let good = w.claims(json!({}));
    let tampered = {
        let token = w.token(json!({}));
        let parts: Vec<&str> = token.split('.').collect();
        let claims = w.claims(json!({"scope": "profile orders admin"}));
        format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2])
    };
    let cases: Vec<(&str, Headers, Refusal)> = vec![
        (
            "no Authorization header gets a bare challenge",
            vec![],
            Refusal {
                status: 401,
                error: None,
                description: "bearer token required",
            },
        ),
        (
            "a Basic credential counts as no bearer token",
            vec![("authorization", "Basic YWxpY2U6c2VjcmV0".into())],
            Refusal {
                status: 401,
                error: None,
                description: "bearer token required",
            },
        ),
        (
            "a token that is not a JWS is malformed",
            bearer("abc.def"),
            invalid_token("token malformed"),
        ),
        (
            "a JWE-shaped token is malformed",
            bearer(&format!(
                "{}.a.b.c.d",
                b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)
            )),
            invalid_token("token malformed"),
        ),
        (
            "alg none is refused",
            bearer(&unsigned(&json!({"alg": "none", "kid": "k1"}), &good)),
            invalid_token("token algorithm not allowed"),
        ),
        (
            "HS256 keyed with the RSA public key is refused",
            bearer(&hs256(
                w.rsa.public_key_pem().as_bytes(),
                &json!({"alg": "HS256", "kid": "k1"}),
                &good,
            )),
            invalid_token("token algorithm not allowed"),
        ),
        (
            "an RS256 header naming the EC key is refused",
            bearer(&w.rsa.sign(&json!({"alg": "RS256", "kid": "e1"}), &good)),
            invalid_token("token algorithm not allowed"),
        ),
        (
            "a signature by another key under the same kid is invalid",
            bearer(&attacker.token(&good)),
            invalid_token("token signature invalid"),
        ),
        (
            "a tampered payload breaks the signature",
            bearer(&tampered),
            invalid_token("token signature invalid"),
        ),
        (
            "an expired token is refused",
            bearer(&w.token(json!({"exp": now() - 120}))),
            invalid_token("token expired"),
        ),
        (
            "a token not valid before a future time is refused",
            bearer(&w.token(json!({"nbf": now() + 120}))),
            invalid_token("token not yet valid"),
        ),
        (
            "a token issued in the future is refused",
            bearer(&w.token(json!({"iat": now() + 120}))),
            invalid_token("token issued in the future"),
        ),
        (
            "a token without exp is refused",
            bearer(&w.rsa.token(&{
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("exp");
                c
            })),
            invalid_token("token has no expiry"),
        ),
        (
            "a token from another issuer is refused",
            bearer(&w.token(json!({"iss": "https://evil.example"}))),
            invalid_token("token issuer not accepted"),
        ),
        (
            "a token for another audience is refused",
            bearer(&w.token(json!({"aud": ["account", "billing-api"]}))),
            invalid_token("token audience not accepted"),
        ),
        (
            "a token whose kid the key set lacks is refused",
            bearer(&stranger.token(&good)),
            invalid_token("token signing key unknown"),
        ),
        (
            "a jku header is ignored: the key is still looked up in our set",
            bearer(&stranger.sign(
                &json!({"alg": "RS256", "kid": "attacker-kid", "jku": "http://127.0.0.1:1/jwks"}),
                &good,
            )),
            invalid_token("token signing key unknown"),
        ),
        (
            "an embedded jwk header is ignored: the published key decides",
            bearer(&attacker.sign(
                &json!({"alg": "RS256", "kid": "k1", "jwk": attacker.public_jwk()}),
                &good,
            )),
            invalid_token("token signature invalid"),
        ),
        (
            "an unknown critical header is refused",
            bearer(&w.rsa.sign(
                &json!({"alg": "RS256", "kid": "k1", "crit": ["x-ext"], "x-ext": 1}),
                &good,
            )),
            invalid_token("token has unsupported critical header"),
        ),
        (
            "a bearer value that is not token68 is an invalid request",
            bearer("a b"),
            Refusal {
                status: 400,
                error: Some("invalid_request"),
                description: "malformed bearer token",
            },
        ),
    ];
    let client = Client::new();
    for (case, headers, expected) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = client.get(&w.gateway.url("/orders/1"), &headers).await;
        assert_refused(&resp, expected, case);
    }
    assert_eq!(
        w.upstream.count(),
        0,
        "a refused request reached the upstream"
    );
}

/// Request headers of one case.
type Headers = Vec<(&'static str, String)>;

fn bearer(token: &str) -> Headers {
    vec![("authorization", format!("Bearer {token}"))]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_expired_within_the_leeway_is_accepted() {
    let w = world().await;
    let token = w.token(json!({"exp": now() - 10}));
    let resp = Client::new()
        .get_bearer(&w.gateway.url("/orders/1"), &token, &[])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(w.upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn es256_tokens_verify_against_the_ec_key() {
    let w = world().await;
    let token = w.ec.token(&w.claims(json!({})));
    let resp = Client::new()
        .get_bearer(&w.gateway.url("/orders/1"), &token, &[])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_and_claims_are_exact_and_failures_are_403() {
    let w = world().await;
    let client = Client::new();
    let cases = [
        (
            "the profile scope opens /profile",
            "GET",
            "/profile",
            json!({}),
            200,
        ),
        (
            "HEAD is judged like GET",
            "HEAD",
            "/profile",
            json!({"scope": "orders"}),
            403,
        ),
        (
            "a missing scope is 403",
            "GET",
            "/admin/users",
            json!({}),
            403,
        ),
        (
            "admin_read is not admin",
            "GET",
            "/admin/users",
            json!({"scope": "admin_read superadmin"}),
            403,
        ),
        (
            "scp as an array counts",
            "GET",
            "/admin/users",
            json!({"scope": "x", "scp": ["admin"]}),
            200,
        ),
        (
            "an array element is one whole scope",
            "GET",
            "/admin/users",
            json!({"scope": "x", "scp": ["not admin"]}),
            403,
        ),
        (
            "all required claims match",
            "GET",
            "/tenants/acme/reports",
            json!({"tenant": "acme", "realm_access": {"roles": ["reporter", "x"]}}),
            200,
        ),
        (
            "a claim of another value is 403",
            "GET",
            "/tenants/acme/reports",
            json!({"tenant": "acme-evil", "realm_access": {"roles": ["reporter"]}}),
            403,
        ),
        (
            "a missing nested claim is 403",
            "GET",
            "/tenants/acme/reports",
            json!({"tenant": "acme", "realm_access": {}}),
            403,
        ),
    ];
    for (case, method, path, extra, status) in cases {
        let before = w.upstream.count();
        let auth = format!("Bearer {}", w.token(extra));
        let resp = client
            .request(
                method,
                &w.gateway.url(path),
                &[("authorization", &auth)],
                empty(),
            )
            .await;
        assert_eq!(resp.status, status, "{case}: {}", resp.text());
        if status == 403 {
            let challenge = resp.header("www-authenticate").unwrap();
            assert!(
                challenge.contains("error=\"insufficient_scope\""),
                "{case}: {challenge}"
            );
            assert_eq!(w.upstream.count(), before, "{case}: reached the upstream");
        } else {
            assert_eq!(w.upstream.count(), before + 1, "{case}");
        }
    }
    let resp = client
        .get_bearer(&w.gateway.url("/admin/x"), &w.token(json!({})), &[])
        .await;
    assert_eq!(
        resp.header("www-authenticate"),
        Some(
            r#"Bearer realm="test", error="insufficient_scope", error_description="token lacks a required scope", scope="admin""#
        )
    );
    let post = client
        .request(
            "POST",
            &w.gateway.url("/profile"),
            &[("authorization", &format!("Bearer {}", w.token(json!({}))))],
            empty(),
        )
        .await;
    assert_eq!(post.status, 404, "GET-only route must not take POST");
}

#[tokio::test(flavor = "multi_thread")]
async fn public_routes_need_no_token_and_unmatched_paths_are_404() {
    let w = world().await;
    let client = Client::new();
    let resp = client.get(&w.gateway.url("/public/info"), &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(w.upstream.count(), 1);
    for path in ["/", "/nothing", "/profile/extra", "/publicity"] {
        let resp = client
            .get_bearer(&w.gateway.url(path), &w.token(json!({})), &[])
            .await;
        assert_eq!(resp.status, 404, "{path}");
        assert_eq!(resp.json()["error"], "not_found");
    }
    assert_eq!(
        w.upstream.count(),
        1,
        "an unmatched request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_authorization_headers_and_query_tokens_are_refused() {
    let w = world().await;
    let token = w.token(json!({}));
    let raw = format!(
        "GET /orders/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let resp = raw_http(w.gateway.addr(), raw.as_bytes()).await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert!(resp.contains("error=\"invalid_request\""), "{resp}");
    let resp = Client::new()
        .get(
            &w.gateway.url(&format!("/orders/1?access_token={token}")),
            &[],
        )
        .await;
    assert_eq!(resp.status, 401);
    assert!(!resp.header("www-authenticate").unwrap().contains("error="));
    assert_eq!(w.upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_cannot_spoof_identity_or_forwarding_headers() {
    let w = world().await;
    let client = Client::new();
    let spoof = [
        ("x-auth-subject", "admin"),
        ("x_auth_subject", "admin"),
        ("x-auth-roles", "[\"admin\"]"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-host", "evil"),
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-port", "443"),
        ("forwarded", "for=10.0.0.1"),
        ("x-real-ip", "10.0.0.1"),
        ("x-original-url", "/admin/users"),
        ("x-rewrite-url", "/admin/users"),
        ("x-http-method-override", "DELETE"),
    ];
    let never = [
        "x_auth_subject",
        "x-forwarded-prefix",
        "x-forwarded-port",
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
    ];
    client.get(&w.gateway.url("/public/x"), &spoof).await;
    let got = w.upstream.last();
    assert!(
        !got.has_header("x-auth-subject"),
        "public route forwarded a spoofed identity"
    );
    assert!(!got.has_header("x-auth-roles"));
    for name in never {
        assert!(
            !got.has_header(name),
            "{name} crossed the gateway on a public route"
        );
    }
    assert_eq!(got.header_all("x-forwarded-for"), ["127.0.0.1"]);

    let token = w.token(json!({}));
    let auth = format!("Bearer {token}");
    let mut headers = spoof.to_vec();
    headers.push(("authorization", &auth));
    client.get(&w.gateway.url("/orders/1"), &headers).await;
    let got = w.upstream.last();
    assert_eq!(got.header_all("x-auth-subject"), ["alice"]);
    assert!(
        !got.has_header("x-auth-roles"),
        "claim absent: header must be absent, not spoofed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_named_headers_cannot_remove_or_smuggle_identity() {
    let w = world().await;
    let token = w.token(json!({}));
    let raw = format!(
        "GET /orders/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close, X-Auth-Subject, X-Forwarded-For, X-Secret\r\nX-Auth-Subject: mallory\r\nX-Secret: s\r\nKeep-Alive: timeout=1\r\nProxy-Authorization: Basic eA==\r\n\r\n"
    );
    let resp = raw_http(w.gateway.addr(), raw.as_bytes()).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let got = w.upstream.last();
    assert_eq!(
        got.header_all("x-auth-subject"),
        ["alice"],
        "the gateway's identity header must survive"
    );
    assert_eq!(got.header_all("x-forwarded-for"), ["127.0.0.1"]);
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "connection",
    ] {
        assert!(!got.has_header(gone), "{gone} crossed the gateway");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_verified_token_cache_skips_the_signature_check_but_not_authorisation() {
    let w = world().await;
    let token = w.token(json!({}));
    let client = Client::new();
    for _ in 0..5 {
        let resp = client
            .get_bearer(&w.gateway.url("/profile"), &token, &[])
            .await;
        assert_eq!(resp.status, 200);
        let resp = client
            .get_bearer(&w.gateway.url("/admin/x"), &token, &[])
            .await;
        assert_eq!(
            resp.status, 403,
            "a cached token must still be authorised per route"
        );
    }
    assert_eq!(w.upstream.count(), 5);
    let stats = w.gateway.runtime().authn.stats().clone();
    assert_eq!(stats.signature_checks.get(), 1, "one check, then the cache");
    assert_eq!(stats.cache_hits.get(), 9);

    // A different token (even for the same subject) is checked afresh.
    let other = w.token(json!({"jti": "another"}));
    assert_eq!(
        client
            .get_bearer(&w.gateway.url("/profile"), &other, &[])
            .await
            .status,
        200
    );
    assert_eq!(stats.signature_checks.get(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_cache_off_every_request_is_checked() {
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nproviders:\n{}upstreams:\n  app: {{ url: \"{}\" }}\nroutes:\n  - {{ path: /**, upstream: app }}\ntoken_cache: {{ max_entries: 0 }}\n",
        provider_yaml("main", &idp.issuer(), &idp.jwks_uri()),
        upstream.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let token = key.token(&json!({"iss": idp.issuer(), "aud": "orders-api", "exp": now() + 60}));
    for _ in 0..3 {
        assert_eq!(
            Client::new()
                .get_bearer(&gw.url("/x"), &token, &[])
                .await
                .status,
            200
        );
    }
    let stats = gw.runtime().authn.stats().clone();
    assert_eq!(stats.signature_checks.get(), 3);
    assert_eq!(stats.cache_hits.get(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jku_header_is_never_fetched() {
    let w = world().await;
    let attacker_key = TestKey::rsa_shared(2, "attacker-kid");
    let attacker = Idp::start(vec![attacker_key.public_jwk()]).await;
    let token = attacker_key.sign(
        &json!({"alg": "RS256", "kid": "attacker-kid", "jku": attacker.jwks_uri(), "x5u": attacker.jwks_uri()}),
        &w.claims(json!({})),
    );
    let resp = Client::new()
        .get_bearer(&w.gateway.url("/orders/1"), &token, &[])
        .await;
    assert_refused(&resp, &invalid_token("token signing key unknown"), "jku");
    assert_eq!(
        attacker.jwks_hits(),
        0,
        "the gateway fetched a key URL from the token"
    );
    assert_eq!(w.upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_provider_has_its_own_keys_audiences_and_routes() {
    let main_key = TestKey::rsa_shared(0, "shared-kid");
    let cognito_key = TestKey::rsa_shared(1, "shared-kid");
    let main = Idp::start(vec![main_key.public_jwk()]).await;
    let cognito = Idp::start(vec![cognito_key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: {main_iss}
    jwks_uri: {main_jwks}
    audiences: [orders-api]
    algorithms: [RS256]
    require_typ: at+jwt
  - name: cognito
    issuer: {cog_iss}
    jwks_uri: {cog_jwks}
    audiences: [app-client]
    audience_claim: client_id
    algorithms: [RS256]
    scopes_claims: [permissions]
upstreams:
  app: {{ url: "{up}" }}
routes:
  - {{ path: /main-only/**, upstream: app, providers: [main] }}
  - {{ path: /cognito-only/**, upstream: app, providers: [cognito], scopes: [read] }}
  - {{ path: /any/**, upstream: app }}
"#,
        main_iss = main.issuer(),
        main_jwks = main.jwks_uri(),
        cog_iss = cognito.issuer(),
        cog_jwks = cognito.jwks_uri(),
        up = upstream.url(),
    );
    let gw = TestGateway::start(&yaml).await;
    let at_jwt = |claims: Value| {
        main_key.sign(
            &json!({"alg": "RS256", "kid": "shared-kid", "typ": "at+jwt"}),
            &claims,
        )
    };
    let main_claims = json!({"iss": main.issuer(), "aud": "orders-api", "exp": now() + 60});
    let main_token = at_jwt(main_claims.clone());
    let main_plain_jwt = main_key.token(&main_claims);
    let cognito_token = cognito_key.token(&json!({
        "iss": cognito.issuer(), "client_id": "app-client", "exp": now() + 60, "permissions": ["read"],
    }));
    let cognito_other_client = cognito_key.token(&json!({
        "iss": cognito.issuer(), "client_id": "other", "exp": now() + 60, "permissions": ["read"],
    }));
    // The same kid at two issuers: the issuer picks the key set, so a token
    // claiming main's issuer but signed by cognito's key fails.
    let cross_signed = cognito_key.sign(
        &json!({"alg": "RS256", "kid": "shared-kid", "typ": "at+jwt"}),
        &main_claims,
    );

    let client = Client::new();
    let cases = [
        (
            "main token on a main route",
            "/main-only/x",
            &main_token,
            200,
            "",
        ),
        (
            "cognito token on a cognito route",
            "/cognito-only/x",
            &cognito_token,
            200,
            "",
        ),
        (
            "both on a route open to all",
            "/any/x",
            &main_token,
            200,
            "",
        ),
        (
            "both on a route open to all",
            "/any/x",
            &cognito_token,
            200,
            "",
        ),
        (
            "a cognito token on a main-only route",
            "/main-only/x",
            &cognito_token,
            401,
            "token issuer not accepted for this route",
        ),
        (
            "a main token on a cognito-only route",
            "/cognito-only/x",
            &main_token,
            401,
            "token issuer not accepted for this route",
        ),
        (
            "client_id is the audience for cognito",
            "/any/x",
            &cognito_other_client,
            401,
            "token audience not accepted",
        ),
        (
            "main requires typ at+jwt",
            "/any/x",
            &main_plain_jwt,
            401,
            "token type not accepted",
        ),
        (
            "keys do not cross issuers",
            "/any/x",
            &cross_signed,
            401,
            "token signature invalid",
        ),
    ];
    for (case, path, token, status, description) in cases {
        let before = upstream.count();
        let resp = client.get_bearer(&gw.url(path), token, &[]).await;
        assert_eq!(resp.status, status, "{case}: {}", resp.text());
        if status == 401 {
            assert_eq!(resp.json()["error_description"], description, "{case}");
            assert_eq!(upstream.count(), before, "{case}: reached the upstream");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_may_explicitly_skip_the_audience_check() {
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nproviders:\n  - {{ name: m, issuer: \"{}\", jwks_uri: \"{}\", skip_audience_check: true, algorithms: [RS256] }}\nupstreams:\n  app: {{ url: \"{}\" }}\nroutes:\n  - {{ path: /**, upstream: app }}\n",
        idp.issuer(),
        idp.jwks_uri(),
        upstream.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let token = key.token(&json!({"iss": idp.issuer(), "exp": now() + 60, "aud": "anything"}));
    assert_eq!(
        Client::new()
            .get_bearer(&gw.url("/x"), &token, &[])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_forged_token_costs_one_signature_check_and_is_always_refused() {
    let w = world().await;
    // Signed by another key under the published kid: the signature fails.
    let forger = TestKey::rsa_shared(2, "k1");
    let forged = forger.token(&w.claims(json!({})));
    let before = w.gateway.runtime().authn.stats().signature_checks.get();
    for _ in 0..5 {
        let resp = Client::new()
            .get_bearer(&w.gateway.url("/orders/1"), &forged, &[])
            .await;
        assert_eq!(resp.status, 401);
        assert!(
            resp.header("www-authenticate")
                .is_some_and(|c| c.contains("token signature invalid")),
            "{:?}",
            resp.header("www-authenticate")
        );
    }
    let checks = w.gateway.runtime().authn.stats().signature_checks.get() - before;
    assert_eq!(checks, 1, "the forged token is remembered after one check");
    assert_eq!(
        w.upstream.count(),
        0,
        "a forged token never reaches the upstream"
    );
    // The genuine token under the same kid still passes.
    let genuine = w.rsa.token(&w.claims(json!({})));
    let resp = Client::new()
        .get_bearer(&w.gateway.url("/orders/1"), &genuine, &[])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}
