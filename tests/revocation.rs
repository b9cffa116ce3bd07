//! Revocation of JWTs at the gateway: a revoked token gets 401 "token
//! revoked" within one polling interval, even from the verified-token cache.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::*;

fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// The built-in auth service of a test config: its port (picked before the
/// config is written) and client `app` (secret `s3cret`).
struct AuthService {
    port: u16,
    hash: String,
}

impl AuthService {
    fn new() -> Self {
        Self {
            port: free_port(),
            hash: portcullis::auth_service::clients::hash_secret("s3cret").expect("hash"),
        }
    }

    /// POST a form to the service as `app`.
    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("app:s3cret")
        );
        Client::new()
            .send(build_request(
                "POST",
                &format!("http://127.0.0.1:{}{path}", self.port),
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("authorization", &basic),
                ],
                full(form(fields)),
            ))
            .await
    }

    /// A fresh access token for `app`.
    async fn token(&self) -> String {
        let issued: Value = self
            .post("/token", &[("grant_type", "client_credentials")])
            .await
            .json();
        issued["access_token"].as_str().expect("a token").to_owned()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_revoked_at_the_built_in_service_is_refused_within_one_interval() {
    let upstream = Upstream::start().await;
    let service = AuthService::new();
    let (auth_port, hash) = (service.port, &service.hash);
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
auth_service:
  listen: 127.0.0.1:{auth_port}
  clients:
    - {{ client_id: app, client_secret_hash: "{hash}", scopes: [read], audiences: [orders-api] }}
providers:
  - name: builtin
    auth_service: true
    audiences: [orders-api]
    algorithms: [ES256]
    revocation: {{ url: "http://127.0.0.1:{auth_port}/revocations", interval: 1s }}
upstreams:
  app: {{ url: "{up}" }}
routes:
  - {{ path: /api/**, upstream: app }}
"#,
        up = upstream.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let client = Client::new();
    let token = service.token().await;
    let other = service.token().await;
    for _ in 0..3 {
        assert_eq!(
            client
                .get_bearer(&gw.url("/api/x"), &token, &[])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        service.post("/revoke", &[("token", &token)]).await.status,
        200
    );
    let list: Value = client
        .get(&format!("http://127.0.0.1:{auth_port}/revocations"), &[])
        .await
        .json();
    assert_eq!(list["jtis"].as_array().map(Vec::len), Some(1), "{list}");

    eventually(
        "the revocation reached the gateway",
        Duration::from_secs(4),
        || async {
            client
                .get_bearer(&gw.url("/api/x"), &token, &[])
                .await
                .status
                == 401
        },
    )
    .await;
    let reached = upstream.count();
    let resp = client.get_bearer(&gw.url("/api/x"), &token, &[]).await;
    assert_eq!(resp.json()["error_description"], "token revoked");
    assert!(
        resp.header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    assert_eq!(
        client
            .get_bearer(&gw.url("/api/x"), &other, &[])
            .await
            .status,
        200,
        "only that token"
    );
    assert_eq!(
        upstream.count(),
        reached + 1,
        "the revoked token never reached the upstream again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_file_revokes_by_jti_and_by_subject_before_a_time() {
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let dir = std::env::temp_dir().join(format!("portcullis-revocation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let file = dir.join("revoked.yaml");
    std::fs::write(&file, "jtis: []\n").expect("write");
    let yaml = format!(
        "listen: 127.0.0.1:0\nproviders:\n{}    revocation: {{ file: \"{}\", interval: 1s }}\nupstreams:\n  app: {{ url: \"{}\" }}\nroutes:\n  - {{ path: /api/**, upstream: app }}\n",
        provider_yaml("main", &idp.issuer(), &idp.jwks_uri()),
        file.display(),
        upstream.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let token = |jti: &str, sub: &str, iat: i64| {
        key.token(&json!({"iss": idp.issuer(), "aud": "orders-api", "exp": now() + 60, "jti": jti, "sub": sub, "iat": iat}))
    };
    let (a, b, old_carol, new_carol) = (
        token("jti-a", "alice", now()),
        token("jti-b", "bob", now()),
        token("jti-c1", "carol", now() - 100),
        token("jti-c2", "carol", now() + 20),
    );
    let client = Client::new();
    let status = |t: String| {
        let client = client.clone();
        let url = gw.url("/api/x");
        async move { client.get_bearer(&url, &t, &[]).await.status }
    };
    for t in [&a, &b, &old_carol, &new_carol] {
        assert_eq!(status(t.clone()).await, 200);
    }
    let before = now() - 10;
    std::fs::write(
        &file,
        format!("jtis: [jti-a]\nsubjects:\n  - {{ sub: carol, before: {before} }}\n"),
    )
    .expect("write");
    eventually("the file was read again", Duration::from_secs(5), || {
        let a = a.clone();
        let status = &status;
        async move { status(a).await == 401 }
    })
    .await;
    assert_eq!(status(b.clone()).await, 200);
    assert_eq!(
        status(old_carol.clone()).await,
        401,
        "carol's token issued before the cut-off"
    );
    assert_eq!(status(new_carol.clone()).await, 200, "carol's later token");

    // A broken file keeps the last good list.
    std::fs::write(&file, "jtis: [unterminated\n").expect("write");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        status(a.clone()).await,
        401,
        "the last good list still applies"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_remote_refuses_a_revoked_token_at_once_where_local_checks_still_pass() {
    let upstream = Upstream::start().await;
    let service = AuthService::new();
    let (auth_port, hash) = (service.port, &service.hash);
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
auth_service:
  listen: 127.0.0.1:{auth_port}
  clients:
    - {{ client_id: app, client_secret_hash: "{hash}", scopes: [read], audiences: [orders-api] }}
    - {{ client_id: gateway, client_secret_hash: "{hash}", audiences: [orders-api], introspect: true }}
providers:
  - name: builtin
    auth_service: true
    audiences: [orders-api]
    algorithms: [ES256]
    introspection:
      endpoint: "http://127.0.0.1:{auth_port}/introspect"
      client_id: gateway
      client_secret: s3cret
upstreams:
  app: {{ url: "{up}" }}
routes:
  - {{ path: /instant/**, upstream: app, verify: remote }}
  - {{ path: /local/**, upstream: app }}
"#,
        up = upstream.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let client = Client::new();
    let token = service.token().await;
    assert_eq!(
        client
            .get_bearer(&gw.url("/instant/x"), &token, &[])
            .await
            .status,
        200
    );
    assert_eq!(
        client
            .get_bearer(&gw.url("/local/x"), &token, &[])
            .await
            .status,
        200
    );
    assert_eq!(
        service.post("/revoke", &[("token", &token)]).await.status,
        200
    );
    let resp = client.get_bearer(&gw.url("/instant/x"), &token, &[]).await;
    assert_eq!(resp.status, 401, "refused at once: {}", resp.text());
    assert_eq!(resp.json()["error_description"], "token inactive");
    assert_eq!(
        client
            .get_bearer(&gw.url("/local/x"), &token, &[])
            .await
            .status,
        200,
        "local verification cannot know (that is what revocation lists are for)"
    );
    assert_eq!(upstream.count(), 3);
}
