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
    // The opt-in does not make `..%2F` a separator: it is one literal segment.
    let resp = raw_get(&w, "/files/..%2Fadmin", None).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(w.upstream.last().path_and_query, "/files/..%2Fadmin");
    assert_eq!(w.upstream.count(), 2);
}
