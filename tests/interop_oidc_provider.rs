//! Interop with a real, independently written OAuth 2.0 server: oidc-provider
//! (OpenID-certified, Node.js), started from `tests/oidc/server.mjs` on
//! 127.0.0.1. Its client-credentials tokens (JWT through an RFC 8707 resource
//! indicator) go through the gateway, which finds the provider's keys by
//! discovery from the issuer URL, exactly as it would in production.
//!
//! Needs Node.js (20 or later) and the locked npm packages:
//! `npm ci --prefix tests/oidc`. Without them these tests fail (they do not
//! skip): CI installs both.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;
use support::*;

/// The client `server.mjs` registers (a fixed test credential).
const CLIENT_ID: &str = "orders-client";
const CLIENT_SECRET: &str = "orders-client-secret";
/// Resources `server.mjs` knows: orders (ES256) and reports (RS256) are this
/// API's audiences; billing is another API's.
const ORDERS: &str = "urn:orders-api";
const REPORTS: &str = "urn:reports-api";
const BILLING: &str = "urn:billing-api";

/// How long oidc-provider may take to print `READY`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// `node tests/oidc/server.mjs` on a free port; killed when dropped.
struct OidcProvider {
    child: Child,
    /// Kept open: the server exits when it closes (`--exit-with-stdin`), so
    /// it goes away even if this test process dies without running `Drop`.
    _stdin: ChildStdin,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl OidcProvider {
    fn start() -> OidcProvider {
        let dir = oidc_dir();
        assert!(
            dir.join("node_modules/oidc-provider/package.json")
                .is_file(),
            "oidc-provider is not installed in {}: run `npm ci --prefix tests/oidc` \
             (needs Node.js 20+ and npm; CI's .ci/run does this)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .args(["--port", "0", "--exit-with-stdin"])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `node` ({e}): install Node.js 20+, then `npm ci --prefix tests/oidc`"
                )
            });
        let stdin = child.stdin.take().expect("child stdin");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let mut pipe = child.stderr.take().expect("child stderr");
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let stdout = child.stdout.take().expect("child stdout");
            std::thread::spawn(move || {
                // Keep reading to the end, so the pipe never fills.
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(port) = line.strip_prefix("READY ") {
                        let _ = ready_tx.send(port.trim().parse::<u16>());
                    }
                }
            });
        }
        let mut server = OidcProvider {
            child,
            _stdin: stdin,
            port: 0,
            stderr,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(port)) => {
                    server.port = port;
                    return server;
                }
                Ok(Err(e)) => panic!("server.mjs printed a bad READY line ({e})"),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: give stderr a moment to arrive.
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "server.mjs exited before READY ({:?}); stderr:\n{}",
                        server.child.try_wait(),
                        server.stderr()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "server.mjs printed no READY within {START_TIMEOUT:?}; stderr:\n{}",
                server.stderr()
            );
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `http://127.0.0.1:PORT`, as oidc-provider puts it in `iss`.
    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// POST /token with HTTP Basic client authentication and `form`.
    async fn token_response(&self, form: &[(&str, &str)]) -> Resp {
        // RFC 6749 §2.3.1: id and secret are form-encoded before Basic.
        let basic = STANDARD.encode(format!(
            "{}:{}",
            form_encode(CLIENT_ID),
            form_encode(CLIENT_SECRET)
        ));
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        Client::new()
            .request(
                "POST",
                &format!("{}/token", self.issuer()),
                &[
                    ("authorization", &format!("Basic {basic}")),
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("accept", "application/json"),
                ],
                full(body),
            )
            .await
    }

    /// A client-credentials access token; `resource` picks the audience (and
    /// the JWT format), none gives an opaque token.
    async fn access_token(&self, resource: Option<&str>, scope: &str) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        let resp = self.token_response(&form).await;
        assert_eq!(
            resp.status,
            200,
            "token request {form:?} refused: {}; server stderr:\n{}",
            resp.text(),
            self.stderr()
        );
        assert_eq!(resp.header("cache-control"), Some("no-store"));
        let body = resp.json();
        assert_eq!(body["token_type"], "Bearer", "{body}");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_string()
    }

    /// Test endpoint: new signing keys in front of the published set.
    async fn rotate(&self) -> Vec<String> {
        let resp = Client::new()
            .request(
                "POST",
                &format!("{}/__test/rotate", self.issuer()),
                &[],
                empty(),
            )
            .await;
        assert_eq!(resp.status, 200, "rotate: {}", resp.text());
        kids(&resp.json())
    }

    /// Test endpoint: how often discovery and the JWKS were served, and the
    /// published kids (read without touching those counters).
    async fn stats(&self) -> Value {
        let resp = Client::new()
            .get(&format!("{}/__test/stats", self.issuer()), &[])
            .await;
        assert_eq!(resp.status, 200, "stats: {}", resp.text());
        resp.json()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.kill();
    }
}

impl OidcProvider {
    /// Stop the server (by its PID) now, as an outage would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `application/x-www-form-urlencoded` value: unreserved bytes as they are,
/// every other byte as `%XX` (no crate, so the test does not depend on
/// which URL-encoding crate the gateway happens to use).
fn form_encode(s: &str) -> String {
    use std::fmt::Write as _;
    s.bytes()
        .fold(String::with_capacity(s.len()), |mut out, b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
            out
        })
}

fn kids(v: &Value) -> Vec<String> {
    v["kids"]
        .as_array()
        .unwrap_or_else(|| panic!("no kids in {v}"))
        .iter()
        .map(|k| k.as_str().expect("kid is a string").to_string())
        .collect()
}

/// The decoded JOSE header and claims of a compact JWS (no verification).
fn decode_jwt(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    let part = |s: &str| -> Value {
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .unwrap_or_else(|e| panic!("bad base64url in JWT ({e})"));
        serde_json::from_slice(&bytes).expect("JWT part is JSON")
    };
    (part(parts[0]), part(parts[1]))
}

struct World {
    idp: OidcProvider,
    upstream: Upstream,
    gateway: TestGateway,
}

/// oidc-provider, an upstream, and a gateway that knows the provider only by
/// its issuer URL (discovery), with one key-set fetch at start and none in
/// the background during the test.
async fn world() -> World {
    support::init_tracing();
    let idp = OidcProvider::start();
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
realm: test
providers:
  - name: oidc-provider
    issuer: "{issuer}"
    discovery: true
    audiences: ["{ORDERS}", "{REPORTS}"]
    algorithms: [ES256, RS256]
    require_typ: at+jwt
    jwks: {{ refresh_interval: 1h }}
upstreams:
  app: {{ url: "{up}", timeout: 5s }}
routes:
  - path: /orders/write/**
    upstream: app
    scopes: ["orders:write"]
    forward_claims: {{ client_id: X-Client-Id }}
  - path: /orders/**
    upstream: app
    scopes: ["orders:read"]
    forward_claims: {{ client_id: X-Client-Id, sub: X-Subject }}
  - path: /reports/**
    upstream: app
    scopes: ["reports:read"]
    forward_claims: {{ client_id: X-Client-Id }}
"#,
        issuer = idp.issuer(),
        up = upstream.url(),
    );
    let gateway = TestGateway::start(&yaml).await;
    World {
        idp,
        upstream,
        gateway,
    }
}

impl World {
    async fn get(&self, path: &str, token: &str) -> Resp {
        Client::new()
            .get_bearer(&self.gateway.url(path), token, &[])
            .await
    }
}

fn assert_refused(resp: &Resp, status: u16, error: &str, description: &str) {
    assert_eq!(resp.status, status, "body {}", resp.text());
    let challenge = resp.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.starts_with("Bearer realm=\"test\"")
            && challenge.contains(&format!("error=\"{error}\""))
            && challenge.contains(&format!("error_description=\"{description}\"")),
        "challenge {challenge:?}"
    );
    let body = resp.json();
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_description"], description, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_credentials_jwt_is_accepted_via_discovery_and_its_client_id_forwarded() {
    let w = world().await;
    let stats = w.idp.stats().await;
    assert_eq!(
        (&stats["discovery"], &stats["jwks"]),
        (&1.into(), &1.into()),
        "the gateway read discovery, then the JWKS, once each before serving: {stats}"
    );

    let token = w.idp.access_token(Some(ORDERS), "orders:read").await;
    let (header, claims) = decode_jwt(&token);
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert!(
        kids(&stats).contains(&header["kid"].as_str().unwrap_or("").to_string()),
        "signed by a published key: {header} {stats}"
    );
    assert_eq!(claims["iss"], w.idp.issuer(), "{claims}");
    assert_eq!(claims["aud"], ORDERS, "{claims}");
    assert_eq!(claims["client_id"], CLIENT_ID, "{claims}");
    assert_eq!(claims["sub"], CLIENT_ID, "{claims}");
    assert_eq!(claims["scope"], "orders:read", "{claims}");

    let resp = w.get("/orders/42?x=1", &token).await;
    assert_eq!(resp.status, 200, "body {}", resp.text());
    assert_eq!(resp.header("x-upstream"), Some("yes"));
    let seen = w.upstream.last();
    assert_eq!(seen.path_and_query, "/orders/42?x=1");
    assert_eq!(seen.header("x-client-id"), Some(CLIENT_ID));
    assert_eq!(seen.header("x-subject"), Some(CLIENT_ID));
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(w.upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_rs256_token_for_the_second_audience_is_accepted() {
    let w = world().await;
    let token = w.idp.access_token(Some(REPORTS), "reports:read").await;
    let (header, claims) = decode_jwt(&token);
    assert_eq!(header["alg"], "RS256", "{header}");
    assert_eq!(claims["aud"], REPORTS, "{claims}");
    let resp = w.get("/reports/daily", &token).await;
    assert_eq!(resp.status, 200, "body {}", resp.text());
    assert_eq!(w.upstream.last().header("x-client-id"), Some(CLIENT_ID));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_for_another_resource_is_refused_and_never_forwarded() {
    let w = world().await;
    let token = w.idp.access_token(Some(BILLING), "billing:read").await;
    let (header, claims) = decode_jwt(&token);
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(claims["aud"], BILLING, "{claims}");
    assert_eq!(claims["iss"], w.idp.issuer(), "{claims}");

    for path in ["/orders/42", "/orders/write/1", "/reports/daily"] {
        let resp = w.get(path, &token).await;
        assert_refused(&resp, 401, "invalid_token", "token audience not accepted");
    }
    assert_eq!(w.upstream.count(), 0, "{:?}", w.upstream.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_needing_a_scope_the_token_lacks_is_403() {
    let w = world().await;
    let read_only = w.idp.access_token(Some(ORDERS), "orders:read").await;
    let resp = w.get("/orders/write/1", &read_only).await;
    assert_refused(
        &resp,
        403,
        "insufficient_scope",
        "token lacks a required scope",
    );
    let challenge = resp.header("www-authenticate").unwrap();
    assert!(challenge.contains("scope=\"orders:write\""), "{challenge}");
    // A scope this resource does not define is dropped by oidc-provider, so
    // asking for it does not help either.
    let other = w
        .idp
        .access_token(Some(ORDERS), "orders:read reports:read")
        .await;
    assert_eq!(decode_jwt(&other).1["scope"], "orders:read");
    let resp = w.get("/reports/daily", &other).await;
    assert_refused(
        &resp,
        403,
        "insufficient_scope",
        "token lacks a required scope",
    );
    assert_eq!(w.upstream.count(), 0, "{:?}", w.upstream.requests());

    let both = w
        .idp
        .access_token(Some(ORDERS), "orders:read orders:write")
        .await;
    let resp = w.get("/orders/write/1", &both).await;
    assert_eq!(resp.status, 200, "body {}", resp.text());
    assert_eq!(w.upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_provider_rotates_its_keys_new_tokens_are_accepted_after_one_refetch() {
    let w = world().await;
    let before = w.idp.stats().await;
    let old = w.idp.access_token(Some(ORDERS), "orders:read").await;
    let old_kid = decode_jwt(&old).0["kid"].as_str().unwrap().to_string();
    assert_eq!(w.get("/orders/1", &old).await.status, 200);

    let published = w.idp.rotate().await;
    let new = w.idp.access_token(Some(ORDERS), "orders:read").await;
    let (header, _) = decode_jwt(&new);
    let new_kid = header["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid, "oidc-provider signs with the new key");
    assert!(!kids(&before).contains(&new_kid), "{before}");
    assert!(published.contains(&new_kid), "{published:?}");
    assert!(published.contains(&old_kid), "old key stays published");

    let resp = w.get("/orders/2", &new).await;
    assert_eq!(
        resp.status,
        200,
        "new kid refused: {}; challenge {:?}",
        resp.text(),
        resp.header("www-authenticate")
    );
    let after = w.idp.stats().await;
    assert_eq!(
        after["jwks"],
        before["jwks"].as_u64().unwrap() + 1,
        "exactly one JWKS refetch for the new kid: {before} → {after}"
    );
    assert_eq!(after["discovery"], before["discovery"], "{after}");

    // The other new key (RS256) came with the same fetch; the old key still works.
    let rsa = w.idp.access_token(Some(REPORTS), "reports:read").await;
    assert!(published.contains(&decode_jwt(&rsa).0["kid"].as_str().unwrap().to_string()));
    assert_eq!(w.get("/reports/1", &rsa).await.status, 200);
    assert_eq!(w.get("/orders/3", &old).await.status, 200);
    assert_eq!(
        w.idp.stats().await["jwks"],
        after["jwks"],
        "known kids cost no fetch"
    );
    assert_eq!(w.upstream.count(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_opaque_access_token_is_refused() {
    let w = world().await;
    let opaque = w.idp.access_token(None, "").await;
    assert!(
        !opaque.contains('.'),
        "without a resource oidc-provider issues an opaque token: {opaque}"
    );
    let resp = w.get("/orders/1", &opaque).await;
    assert_refused(&resp, 401, "invalid_token", "token malformed");
    assert_eq!(w.upstream.count(), 0);
}

/// A gateway that takes oidc-provider's opaque tokens by introspection
/// (RFC 7662 at /token/introspection), with this client's credentials.
async fn introspecting_gateway(idp: &OidcProvider, upstream: &Upstream) -> TestGateway {
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
providers:
  - name: opaque
    issuer: "{issuer}"
    audience_claim: client_id
    audiences: ["{CLIENT_ID}"]
    introspection:
      endpoint: "{issuer}/token/introspection"
      client_id: "{CLIENT_ID}"
      client_secret: "{CLIENT_SECRET}"
      timeout: 2s
      cache_active_max: 3s
upstreams:
  app: {{ url: "{up}", timeout: 5s }}
routes:
  - {{ path: /api/**, upstream: app, forward_claims: {{ client_id: X-Client-Id }} }}
"#,
        issuer = idp.issuer(),
        up = upstream.url(),
    );
    TestGateway::start(&yaml).await
}

#[tokio::test(flavor = "multi_thread")]
async fn opaque_tokens_are_introspected_once_for_concurrent_requests_then_cached() {
    let idp = OidcProvider::start();
    let upstream = Upstream::start().await;
    let gateway = introspecting_gateway(&idp, &upstream).await;
    let opaque = idp.access_token(None, "").await;
    assert!(!opaque.contains('.'), "an opaque token: {opaque}");
    let before = idp.stats().await["introspection"].as_u64().unwrap_or(0);
    let mut requests = Vec::new();
    for _ in 0..20 {
        let (url, token) = (gateway.url("/api/x"), opaque.clone());
        requests.push(tokio::spawn(async move {
            Client::new().get_bearer(&url, &token, &[]).await.status
        }));
    }
    for request in requests {
        assert_eq!(request.await.expect("request task"), 200);
    }
    let stats = idp.stats().await;
    assert_eq!(
        stats["introspection"].as_u64().unwrap_or(0) - before,
        1,
        "single flight: {stats}"
    );
    assert_eq!(upstream.last().header("x-client-id"), Some(CLIENT_ID));
    for _ in 0..5 {
        assert_eq!(
            Client::new()
                .get_bearer(&gateway.url("/api/x"), &opaque, &[])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        idp.stats().await["introspection"],
        stats["introspection"],
        "answered from the cache"
    );

    let garbage = Client::new()
        .get_bearer(&gateway.url("/api/x"), "not-a-token-anyone-issued", &[])
        .await;
    assert_eq!(garbage.status, 401);
    assert_eq!(garbage.json()["error_description"], "token inactive");
    assert_eq!(
        upstream.count(),
        25,
        "the inactive token never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_endpoint_gives_503_for_new_tokens_while_cached_ones_keep_working() {
    let mut idp = OidcProvider::start();
    let upstream = Upstream::start().await;
    let gateway = introspecting_gateway(&idp, &upstream).await;
    let cached = idp.access_token(None, "").await;
    let unseen = idp.access_token(None, "").await;
    assert_eq!(
        Client::new()
            .get_bearer(&gateway.url("/api/x"), &cached, &[])
            .await
            .status,
        200
    );
    idp.kill();
    let resp = Client::new()
        .get_bearer(&gateway.url("/api/x"), &unseen, &[])
        .await;
    assert_eq!(resp.status, 503, "nobody vouched for it: {}", resp.text());
    assert_eq!(resp.header("retry-after"), Some("5"));
    assert_eq!(
        Client::new()
            .get_bearer(&gateway.url("/api/x"), &cached, &[])
            .await
            .status,
        200
    );
    assert_eq!(upstream.count(), 2);
}
