//! Path canonicalisation end to end: routes match on one canonical path and
//! exactly that path is forwarded; a public prefix is never a way into a
//! protected one.

mod support;

use serde_json::json;
use support::*;

struct World {
    _idp: Idp,
    upstream: Upstream,
    gateway: TestGateway,
    admin_token: String,
}

async fn world() -> World {
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
providers:
{provider}
upstreams:
  app: {{ url: "{up}" }}
routes:
  - {{ path: /public/**, upstream: app, auth: none }}
  - {{ path: "/files/{{name}}", upstream: app, auth: none, allow_encoded_slash: true }}
  - {{ path: /admin/**, upstream: app, scopes: [admin] }}
  - {{ path: /profile, methods: [GET], upstream: app, scopes: [admin] }}
  - {{ path: "/matrix/{{item}}", upstream: app, auth: none, allow_semicolon: true }}
  - {{ path: /**, upstream: app, auth: none }}
"#,
        provider = provider_yaml("main", &idp.issuer(), &idp.jwks_uri()),
        up = upstream.url(),
    );
    let gateway = TestGateway::start(&yaml).await;
    let admin_token = key.token(&json!({
        "iss": idp.issuer(), "aud": "orders-api", "sub": "root",
        "exp": now() + 300, "scope": "admin",
    }));
    World {
        _idp: idp,
        upstream,
        gateway,
        admin_token,
    }
}

async fn raw_get(w: &World, target: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {target} HTTP/1.1\r\nHost: gw\r\n{auth}Connection: close\r\n\r\n");
    raw_http(w.gateway.addr(), request.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn traversal_from_a_public_prefix_lands_on_the_protected_route() {
    let w = world().await;
    let attempts = [
        "/public/../admin/users",
        "/public/%2e%2e/admin/users",
        "/public/%2E%2E/admin/users",
        "/public/.%2e/admin/users",
        "/public/./../admin/users",
        "/public/x/../../admin/users",
        "//admin/users",
        "/public/..//admin/users",
        "/%61dmin/users",
    ];
    for target in attempts {
        let resp = raw_get(&w, target, None).await;
        assert_eq!(
            raw_status(&resp),
            401,
            "{target} must be judged as /admin/users: {resp}"
        );
    }
    assert_eq!(w.upstream.count(), 0, "a traversal reached the upstream");

    // With the right token, exactly the canonical path is forwarded.
    for target in attempts {
        let resp = raw_get(&w, target, Some(&w.admin_token)).await;
        assert_eq!(raw_status(&resp), 200, "{target}: {resp}");
        assert_eq!(w.upstream.last().path_and_query, "/admin/users", "{target}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_paths_are_refused_with_400() {
    let w = world().await;
    let attempts = [
        "/public/..%2Fadmin/users",
        "/public/%2e%2e%2fadmin/users",
        "/public/..;/admin/users",
        "/public/.;/admin",
        "/public/..%3B/admin",
        "/public/%5c..%5cadmin",
        "/public/%00",
        "/public/%zz",
        "/..",
        "/public/../../admin",
    ];
    for target in attempts {
        let resp = raw_get(&w, target, Some(&w.admin_token)).await;
        assert_eq!(raw_status(&resp), 400, "{target}: {resp}");
    }
    let backslash = raw_get(&w, "/public\\..\\admin", Some(&w.admin_token)).await;
    assert_eq!(raw_status(&backslash), 400, "{backslash}");
    assert_eq!(
        w.upstream.count(),
        0,
        "an ambiguous path reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_canonical_path_and_the_original_query_are_forwarded() {
    let w = world().await;
    let cases = [
        ("/public/a/./b", "/public/a/b"),
        ("/public/%7euser/%41", "/public/~user/A"),
        ("/public/a%3ab?q=%2F..%2F&x", "/public/a%3Ab?q=%2F..%2F&x"),
        ("/public/a//b/", "/public/a/b/"),
        ("/public/sp%20ace", "/public/sp%20ace"),
        ("/public?x=/../admin", "/public?x=/../admin"),
    ];
    for (target, forwarded) in cases {
        let resp = raw_get(&w, target, None).await;
        assert_eq!(raw_status(&resp), 200, "{target}: {resp}");
        assert_eq!(w.upstream.last().path_and_query, forwarded, "{target}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_slashes_pass_only_where_a_route_opts_in_and_stay_encoded() {
    let w = world().await;
    let resp = raw_get(&w, "/files/a%2fb", None).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(w.upstream.last().path_and_query, "/files/a%2Fb");
    let resp = raw_get(&w, "/public/a%2Fb", None).await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    // The opt-in never lets a dot segment hide behind an encoded slash: an
    // upstream that decodes `%2F` first would climb with it.
    for target in [
        "/files/..%2Fadmin",
        "/files/..%2F..%2Fadmin%2Fusers",
        "/files/a%2F..",
    ] {
        let resp = raw_get(&w, target, None).await;
        assert_eq!(raw_status(&resp), 400, "{target}: {resp}");
    }
    let resp = raw_get(&w, "/files/x%2Fy%2Fz", None).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(w.upstream.last().path_and_query, "/files/x%2Fy%2Fz");
    assert_eq!(w.upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn path_parameters_cannot_slip_past_a_protected_prefix() {
    let w = world().await;
    // Tomcat, Jetty and Spring strip `;…` from segments: `/admin;x/users`
    // is `/admin/users` to them, so it must not reach the public `/**`.
    for target in ["/admin;x/users", "/admin;jsessionid=1/users", "/public;/x"] {
        let resp = raw_get(&w, target, None).await;
        assert_eq!(raw_status(&resp), 400, "{target}: {resp}");
    }
    assert_eq!(w.upstream.count(), 0);
    let resp = raw_get(&w, "/matrix/a;v=2", None).await;
    assert_eq!(raw_status(&resp), 200, "a route may opt in: {resp}");
    assert_eq!(w.upstream.last().path_and_query, "/matrix/a;v=2");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_spellings_of_a_protected_path_are_judged_by_its_route() {
    let w = world().await;
    // Express and ASP.NET route these to the protected handlers; the gateway
    // must not let them fall through to the public catch-all.
    let attempts = [
        ("GET", "/ADMIN/users"),
        ("GET", "/Admin/users"),
        ("GET", "/profile/"),
        ("GET", "/PROFILE"),
        ("HEAD", "/profile"),
    ];
    for (method, target) in attempts {
        let request =
            format!("{method} {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        let resp = raw_http(w.gateway.addr(), request.as_bytes()).await;
        assert_eq!(raw_status(&resp), 401, "{method} {target}: {resp}");
    }
    // A lower-case method is refused rather than judged as another method.
    let resp = raw_http(
        w.gateway.addr(),
        b"get /profile HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert_eq!(
        w.upstream.count(),
        0,
        "a variant spelling reached the upstream"
    );
    // What the route does not cover still goes to the catch-all, unchanged.
    let resp = raw_get(&w, "/Public/X", None).await;
    assert_eq!(raw_status(&resp), 200);
    assert_eq!(w.upstream.last().path_and_query, "/Public/X");
}
