//! Tokens from a cookie, for browser front ends: only for a provider that
//! names the cookie, only when there is no `Authorization` header.

mod support;

use serde_json::json;
use support::*;

struct World {
    _web: Idp,
    _api: Idp,
    upstream: Upstream,
    gateway: TestGateway,
    web_token: String,
    api_token: String,
}

async fn world() -> World {
    let web_key = TestKey::rsa_shared(0, "web");
    let api_key = TestKey::rsa_shared(1, "api");
    let web = Idp::start(vec![web_key.public_jwk()]).await;
    let api = Idp::start(vec![api_key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
providers:
  - {{ name: web, issuer: "{wi}", jwks_uri: "{wj}", audiences: [orders-api], algorithms: [RS256], cookie: access_token }}
  - {{ name: api, issuer: "{ai}", jwks_uri: "{aj}", audiences: [orders-api], algorithms: [RS256] }}
upstreams:
  app: {{ url: "{up}" }}
routes:
  - {{ path: /api/**, upstream: app, forward_claims: {{ sub: X-Auth-Subject }} }}
  - {{ path: /machines/**, upstream: app, providers: [api] }}
  - {{ path: /stripped/**, upstream: app, strip_authorization: true }}
"#,
        wi = web.issuer(),
        wj = web.jwks_uri(),
        ai = api.issuer(),
        aj = api.jwks_uri(),
        up = upstream.url(),
    );
    let gateway = TestGateway::start(&yaml).await;
    let claims = |iss: String| json!({"iss": iss, "aud": "orders-api", "sub": "browser-user", "exp": now() + 60});
    World {
        web_token: web_key.token(&claims(web.issuer())),
        api_token: api_key.token(&claims(api.issuer())),
        _web: web,
        _api: api,
        upstream,
        gateway,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_in_the_providers_cookie_is_accepted() {
    let w = world().await;
    let cookie = format!("theme=dark; access_token={}", w.web_token);
    let resp = Client::new()
        .get(&w.gateway.url("/api/x"), &[("cookie", &cookie)])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        w.upstream.last().header("x-auth-subject"),
        Some("browser-user")
    );
}

/// Request headers of one case.
type Headers = Vec<(&'static str, String)>;

#[tokio::test(flavor = "multi_thread")]
async fn strip_authorization_strips_the_token_cookie_and_keeps_the_others() {
    let w = world().await;
    let cookie = format!("theme=dark; access_token={}; lang=en", w.web_token);
    let resp = Client::new()
        .get(&w.gateway.url("/stripped/x"), &[("cookie", &cookie)])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        w.upstream.last().header_all("cookie"),
        ["theme=dark; lang=en"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cookies_are_refused_where_the_rules_say_so() {
    let w = world().await;
    let client = Client::new();
    let cases: Vec<(&str, &str, Headers, u16)> = vec![
        ("no cookie, no header", "/api/x", vec![], 401),
        (
            "an Authorization header wins, even a bad one",
            "/api/x",
            vec![
                ("authorization", "Bearer not.a.jwt".into()),
                ("cookie", format!("access_token={}", w.web_token)),
            ],
            401,
        ),
        (
            "another provider's token in the cookie",
            "/api/x",
            vec![("cookie", format!("access_token={}", w.api_token))],
            401,
        ),
        (
            "a route that does not accept the cookie's provider",
            "/machines/x",
            vec![("cookie", format!("access_token={}", w.web_token))],
            401,
        ),
        (
            "the cookie twice",
            "/api/x",
            vec![(
                "cookie",
                format!("access_token={0}; access_token={0}", w.web_token),
            )],
            400,
        ),
        (
            "a cookie of another name",
            "/api/x",
            vec![("cookie", format!("token={}", w.web_token))],
            401,
        ),
    ];
    // Query-string tokens are never read, even a valid one.
    let query = format!("/api/x?access_token={}", w.web_token);
    let cases: Vec<(&str, &str, Headers, u16)> = cases
        .into_iter()
        .chain([(
            "a valid token in the query string",
            query.as_str(),
            Vec::new(),
            401,
        )])
        .collect();
    for (case, path, headers, status) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = client.get(&w.gateway.url(path), &headers).await;
        assert_eq!(resp.status, *status, "{case}: {}", resp.text());
    }
    assert_eq!(
        w.upstream.count(),
        0,
        "a refused request reached the upstream"
    );
    let resp = client
        .get_bearer(&w.gateway.url("/machines/x"), &w.api_token, &[])
        .await;
    assert_eq!(resp.status, 200, "the header path is unchanged");
}
