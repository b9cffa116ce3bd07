//! API keys (issue: "the client already has one and sends it in every
//! request"): matched by SHA-256, mapped to a principal and scopes, on routes
//! that take them alone or beside bearer tokens.

mod support;

use serde_json::json;
use support::*;

struct World {
    _idp: Idp,
    upstream: Upstream,
    gateway: TestGateway,
    token: String,
    _dir: Scratch,
}

/// A scratch directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn world() -> World {
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    static WORLDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = WORLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("portcullis-apikeys-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let keys_file = dir.join("keys.yaml");
    std::fs::write(
        &keys_file,
        format!(
            "- {{ name: from-file, sha256: {}, scopes: [reports] }}\n",
            sha256_hex(b"file-key")
        ),
    )
    .expect("keys file");
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
realm: keys
providers:
{provider}
api_keys:
  header: X-API-Key
  keys:
    - {{ name: reporting-cron, sha256: {cron}, scopes: [reports] }}
    - {{ name: ops, sha256: {ops}, scopes: [] }}
  file: {file}
upstreams:
  app: {{ url: "{up}" }}
routes:
  - path: /reports/**
    upstream: app
    auth: api_key
    scopes: [reports]
    forward_claims: {{ sub: X-Auth-Subject }}
  - {{ path: /either/**, upstream: app, auth: [bearer, api_key] }}
  - {{ path: /stripped/**, upstream: app, auth: api_key, strip_authorization: true }}
  - {{ path: /bearer/**, upstream: app }}
"#,
        provider = provider_yaml("main", &idp.issuer(), &idp.jwks_uri()),
        cron = sha256_hex(b"cron-key"),
        ops = sha256_hex(b"ops-key"),
        file = keys_file.display(),
        up = upstream.url(),
    );
    let gateway = TestGateway::start(&yaml).await;
    let token = key.token(
        &json!({"iss": idp.issuer(), "aud": "orders-api", "sub": "alice", "exp": now() + 60}),
    );
    World {
        _idp: idp,
        upstream,
        gateway,
        token,
        _dir: Scratch(dir),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_key_is_forwarded_as_its_principal() {
    let w = world().await;
    let resp = Client::new()
        .get(
            &w.gateway.url("/reports/daily"),
            &[("x-api-key", "cron-key"), ("x-auth-subject", "admin")],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = w.upstream.last();
    assert_eq!(
        got.header_all("x-auth-subject"),
        ["reporting-cron"],
        "the key's name, never a spoofed one"
    );
    let resp = Client::new()
        .get(&w.gateway.url("/reports/x"), &[("x-api-key", "file-key")])
        .await;
    assert_eq!(resp.status, 200, "a key from the keys file");
    assert_eq!(
        w.upstream.last().header("x-auth-subject"),
        Some("from-file")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_missing_and_doubled_keys_are_refused_and_never_forwarded() {
    let w = world().await;
    let client = Client::new();
    let url = w.gateway.url("/reports/daily");
    let wrong = client.get(&url, &[("x-api-key", "cron-key2")]).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.header("www-authenticate"),
        Some(r#"ApiKey realm="keys", header="x-api-key", error="invalid_api_key""#)
    );
    assert_eq!(wrong.json()["error"], "invalid_api_key");
    let missing = client.get(&url, &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("www-authenticate"),
        Some(r#"ApiKey realm="keys", header="x-api-key""#)
    );
    let bearer_here = client.get_bearer(&url, &w.token, &[]).await;
    assert_eq!(
        bearer_here.status, 401,
        "an api_key-only route does not take tokens"
    );
    let raw = raw_http(
        w.gateway.addr(),
        b"GET /reports/daily HTTP/1.1\r\nHost: x\r\nX-API-Key: cron-key\r\nX-API-Key: ops-key\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 400, "{raw}");
    let no_scope = client.get(&url, &[("x-api-key", "ops-key")]).await;
    assert_eq!(no_scope.status, 403, "a key without the scope");
    let key_on_bearer_route = client
        .get(&w.gateway.url("/bearer/x"), &[("x-api-key", "cron-key")])
        .await;
    assert_eq!(
        key_on_bearer_route.status, 401,
        "a bearer-only route does not take keys"
    );
    assert_eq!(w.upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_taking_either_kind_accepts_both_and_challenges_for_both() {
    let w = world().await;
    let client = Client::new();
    let url = w.gateway.url("/either/x");
    assert_eq!(client.get_bearer(&url, &w.token, &[]).await.status, 200);
    assert_eq!(
        client.get(&url, &[("x-api-key", "ops-key")]).await.status,
        200
    );
    let missing = client.get(&url, &[]).await;
    assert_eq!(missing.status, 401);
    let challenges: Vec<&str> = missing
        .headers
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(
        challenges,
        [
            r#"Bearer realm="keys""#,
            r#"ApiKey realm="keys", header="x-api-key""#
        ]
    );
    // A bad token is judged as a token: no fallback to the key beside it.
    let resp = client
        .get(
            &url,
            &[
                ("authorization", "Bearer not.a.token"),
                ("x-api-key", "ops-key"),
            ],
        )
        .await;
    assert_eq!(resp.status, 401);
    assert_eq!(w.upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn strip_authorization_strips_the_key_too() {
    let w = world().await;
    let resp = Client::new()
        .get(&w.gateway.url("/stripped/x"), &[("x-api-key", "ops-key")])
        .await;
    assert_eq!(resp.status, 200);
    assert!(!w.upstream.last().has_header("x-api-key"));
    let resp = Client::new()
        .get(&w.gateway.url("/either/x"), &[("x-api-key", "ops-key")])
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        w.upstream.last().header("x-api-key"),
        Some("ops-key"),
        "kept by default, as Authorization is"
    );
}
