//! Running the gateway in production: the admin endpoints (health,
//! readiness, metrics), request ids, config reload under load, graceful
//! shutdown, and the listener's limits (`server:`).
//!
//! Every wait is bounded: `eventually` or an explicit timeout, so a
//! regression fails with a message instead of hanging the suite.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as PooledClient;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// === Helpers ===

/// A gateway config with an admin listener, the provider `main` for `idp`
/// (when given), the upstream `app`, the route lines `routes` (each
/// `  - { … }\n`) and any further top-level sections in `extra`.
fn config(idp: Option<&Idp>, upstream: &Upstream, routes: &str, extra: &str) -> String {
    let providers = idp.map_or_else(
        || "providers: []\n".to_string(),
        |idp| {
            format!(
                "providers:\n{}",
                provider_yaml("main", &idp.issuer(), &idp.jwks_uri())
            )
        },
    );
    config_with_providers(&providers, upstream, routes, extra)
}

/// [`config`] with a `providers:` section of its own.
fn config_with_providers(
    providers: &str,
    upstream: &Upstream,
    routes: &str,
    extra: &str,
) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{providers}upstreams:\n  app: {{ url: \"{}\" }}\nroutes:\n{routes}{extra}",
        upstream.url()
    )
}

/// A valid token of `idp` for `orders-api` with `scope`, signed by `key`.
fn token(key: &TestKey, idp: &Idp, scope: &str) -> String {
    key.token(&json!({
        "iss": idp.issuer(),
        "aud": "orders-api",
        "sub": "ops-user",
        "scope": scope,
        "exp": now() + 600,
    }))
}

fn admin(gateway: &TestGateway) -> SocketAddr {
    gateway
        .gateway
        .admin_addr()
        .expect("the config has an admin listener")
}

fn client() -> Client {
    Client::new().with_timeout(Duration::from_secs(5))
}

async fn metrics_text(admin: SocketAddr) -> String {
    let resp = client().get(&format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(resp.status, 200, "/metrics: {}", resp.text());
    resp.text()
}

/// The value of the sample `name{…}` whose labels include every pair of
/// `labels`; `None` when no such line exists.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_samples(text, name, labels).next()
}

/// [`sample`] where an absent line counts as 0 (a labelled counter appears
/// only once it has counted).
fn count(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or(0.0)
}

/// Value of header `name` in a raw HTTP/1 response head.
fn raw_header(response: &str, name: &str) -> Option<String> {
    let head = response.split("\r\n\r\n").next()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn is_hex32(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Read one HTTP/1 response (head plus `content-length` body) from a
/// kept-open `stream`; `None` if the connection closed first or nothing
/// complete arrived within `within`.
async fn read_response(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf).into_owned();
            let len: usize = raw_header(&text, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(text);
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// Wait up to `within` for the peer to close `stream` (a read returns 0
/// or fails). Returns how long that took and any bytes that came first;
/// `None` when the connection was still open at the deadline.
async fn wait_closed(stream: &mut TcpStream, within: Duration) -> Option<(Duration, Vec<u8>)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(
            within.saturating_sub(started.elapsed()),
            stream.read(&mut chunk),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((started.elapsed(), got)),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n")
}

// === Admin endpoints ===

#[tokio::test(flavor = "multi_thread")]
async fn admin_answers_health_always_and_readiness_once_every_provider_has_keys() {
    let key = TestKey::rsa_shared(0, "k1");
    let mut idp = Idp::start(vec![key.public_jwk()]).await;
    idp.stop().await;
    let upstream = Upstream::start().await;
    let routes = "  - { path: /api/**, upstream: app }\n";
    // The JWKS server is down: the gateway starts anyway.
    let gw = TestGateway::start(&config(Some(&idp), &upstream, routes, "")).await;
    let admin = admin(&gw);
    let c = client();
    let token = token(&key, &idp, "read");

    let health = c.get(&format!("http://{admin}/healthz"), &[]).await;
    assert_eq!(health.status, 200, "/healthz: {}", health.text());
    let ready = c.get(&format!("http://{admin}/readyz"), &[]).await;
    assert_eq!(ready.status, 503, "/readyz without keys: {}", ready.text());
    let body = ready.json();
    assert_eq!(body["waiting_for_keys"], json!(["main"]), "{body}");
    assert_eq!(body["ready"], json!(false), "{body}");
    assert_eq!(body["draining"], json!(false), "{body}");
    let refused = c.get_bearer(&gw.url("/api/x"), &token, &[]).await;
    assert_eq!(
        refused.status,
        503,
        "a token without keys: {}",
        refused.text()
    );
    assert_eq!(
        upstream.count(),
        0,
        "nothing reached the upstream without keys"
    );

    // Unknown paths and other methods, on the admin listener.
    let missing = c.get(&format!("http://{admin}/nope"), &[]).await;
    assert_eq!(missing.status, 404, "{}", missing.text());
    for path in ["/healthz", "/readyz", "/metrics"] {
        let post = c
            .request("POST", &format!("http://{admin}{path}"), &[], empty())
            .await;
        assert_eq!(post.status, 405, "POST {path}: {}", post.text());
    }
    // The API is not served on the admin listener.
    let api = c
        .get_bearer(&format!("http://{admin}/api/x"), &token, &[])
        .await;
    assert_eq!(api.status, 404, "{}", api.text());

    // The background retry (from 1 s) loads the keys once the IdP is back.
    idp.restart().await;
    let ready_url = format!("http://{admin}/readyz");
    eventually(
        "/readyz turns 200 after the IdP returns",
        Duration::from_secs(10),
        || {
            let (c, url) = (c.clone(), ready_url.clone());
            async move { c.get(&url, &[]).await.status == 200 }
        },
    )
    .await;
    let ready = c.get(&ready_url, &[]).await;
    assert_eq!(
        ready.json()["waiting_for_keys"],
        json!([]),
        "{}",
        ready.text()
    );
    let allowed = c.get_bearer(&gw.url("/api/x"), &token, &[]).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(upstream.count(), 1);
    let health = c.get(&format!("http://{admin}/healthz"), &[]).await;
    assert_eq!(health.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_allowed_and_refused_requests_by_route_and_reason() {
    let key = TestKey::rsa_shared(0, "k1");
    // Same kid, other key material: a signature that does not verify.
    let forger = TestKey::rsa_shared(1, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let routes = "  - { path: /api/**, upstream: app }\n";
    let gw = TestGateway::start(&config(Some(&idp), &upstream, routes, "")).await;
    let admin = admin(&gw);
    let c = client();
    let good = token(&key, &idp, "read");
    let forged = token(&forger, &idp, "read");

    for i in 0..3 {
        let resp = c
            .get_bearer(&gw.url(&format!("/api/{i}")), &good, &[])
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(c.get(&gw.url("/api/none"), &[]).await.status, 401);
    assert_eq!(
        c.get_bearer(&gw.url("/api/forged"), &forged, &[])
            .await
            .status,
        401
    );
    assert_eq!(
        upstream.count(),
        3,
        "refused requests never reach the upstream"
    );

    let duration_count = "portcullis_request_duration_seconds_count";
    eventually(
        "5 request durations recorded",
        Duration::from_secs(5),
        || async move {
            count(
                &metrics_text(admin).await,
                duration_count,
                &[("route", "/api/**")],
            ) >= 5.0
        },
    )
    .await;
    let text = metrics_text(admin).await;
    let requests = |class: &str, decision: &str, reason: &str| {
        sample(
            &text,
            "portcullis_requests_total",
            &[
                ("route", "/api/**"),
                ("status_class", class),
                ("decision", decision),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(requests("2xx", "allow", "allowed"), Some(3.0), "{text}");
    assert_eq!(
        requests("4xx", "deny", "missing_token"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        requests("4xx", "deny", "bad_signature"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        requests("5xx", "allow", "allowed"),
        Some(0.0),
        "no 5xx counted: {text}"
    );
    let hits = sample(&text, "portcullis_token_cache_hits_total", &[]);
    assert!(
        hits.is_some_and(|h| h >= 2.0),
        "the same token 3 times: at least 2 cache hits, got {hits:?}\n{text}"
    );
    assert_eq!(
        sample(&text, "portcullis_jwks_keys", &[("provider", "main")]),
        Some(1.0),
        "{text}"
    );
    // A connection held open (no request yet) is counted.
    let held = tokio::net::TcpStream::connect(gw.addr())
        .await
        .expect("connect");
    eventually(
        "the open-connections gauge counts a held connection",
        Duration::from_secs(5),
        || async {
            sample(
                &metrics_text(admin).await,
                "portcullis_open_connections",
                &[],
            )
            .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    drop(held);
    assert_eq!(
        sample(
            &text,
            "portcullis_config_reloads_total",
            &[("result", "applied")]
        ),
        None,
        "no reload happened: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cors_preflight_is_counted_as_an_allowed_preflight_and_never_timed_as_upstream() {
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let app = "https://app.example.com";
    let routes =
        format!("  - {{ path: /api/**, upstream: app, cors: {{ allowed_origins: [{app}] }} }}\n");
    let gw = TestGateway::start(&config(Some(&idp), &upstream, &routes, "")).await;
    let admin = admin(&gw);
    let c = client();
    let url = gw.url("/api/orders");
    let preflight = |origin: &'static str| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            c.request(
                "OPTIONS",
                &url,
                &[("origin", origin), ("access-control-request-method", "GET")],
                empty(),
            )
            .await
            .status
        }
    };
    let route = ("route", "/api/**");
    let requests = |text: &str, class: &str, decision: &str, reason: &str| {
        count(
            text,
            "portcullis_requests_total",
            &[
                route,
                ("status_class", class),
                ("decision", decision),
                ("reason", reason),
            ],
        )
    };
    let upstream_timed =
        |text: &str| count(text, "portcullis_upstream_duration_seconds_count", &[route]);

    assert_eq!(preflight(app).await, 204);
    assert_eq!(preflight("https://evil.example").await, 403);
    assert_eq!(upstream.count(), 0, "a preflight was forwarded");
    eventually(
        "the preflight is counted",
        Duration::from_secs(5),
        || async move { requests(&metrics_text(admin).await, "2xx", "allow", "preflight") == 1.0 },
    )
    .await;
    let text = metrics_text(admin).await;
    assert_eq!(
        requests(&text, "4xx", "deny", "cors_refused"),
        1.0,
        "{text}"
    );
    assert_eq!(
        requests(&text, "2xx", "deny", "preflight"),
        0.0,
        "a preflight answered 204 is no denial: {text}"
    );
    assert_eq!(
        requests(&text, "2xx", "allow", "allowed"),
        0.0,
        "a preflight is not a forwarded request: {text}"
    );
    assert_eq!(
        upstream_timed(&text),
        0.0,
        "a preflight answered by the gateway was timed as an upstream call: {text}"
    );

    // A real request is timed upstream: the histogram is the one looked at.
    let resp = c
        .get_bearer(&url, &token(&key, &idp, "read"), &[("origin", app)])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let text = metrics_text(admin).await;
    assert_eq!(upstream_timed(&text), 1.0, "{text}");
    assert_eq!(requests(&text, "2xx", "allow", "allowed"), 1.0, "{text}");
    assert_eq!(requests(&text, "2xx", "allow", "preflight"), 1.0, "{text}");
}

// === Request ids ===

#[tokio::test(flavor = "multi_thread")]
async fn every_response_carries_a_request_id_and_only_a_sane_client_id_is_kept() {
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let routes = "  - { path: /api/**, upstream: app }\n";
    let gw = TestGateway::start(&config(Some(&idp), &upstream, routes, "")).await;
    let c = client();
    let good = token(&key, &idp, "read");

    // None sent: the gateway makes one, and the upstream sees the same.
    let first = c.get_bearer(&gw.url("/api/a"), &good, &[]).await;
    assert_eq!(first.status, 200);
    let id = first
        .header("x-request-id")
        .expect("x-request-id")
        .to_string();
    assert!(is_hex32(&id), "generated id {id:?}");
    assert_eq!(
        upstream.last().header_all("x-request-id"),
        vec![id.as_str()]
    );
    let second = c.get_bearer(&gw.url("/api/b"), &good, &[]).await;
    let id2 = second.header("x-request-id").expect("x-request-id");
    assert!(is_hex32(id2), "generated id {id2:?}");
    assert_ne!(id, id2, "each request gets its own id");

    // A sane client id is echoed and forwarded unchanged, once.
    let sane = c
        .get_bearer(
            &gw.url("/api/c"),
            &good,
            &[("x-request-id", "abc-123"), ("x-request-id", "second-456")],
        )
        .await;
    assert_eq!(sane.status, 200);
    assert_eq!(sane.header("x-request-id"), Some("abc-123"));
    assert_eq!(upstream.last().header_all("x-request-id"), vec!["abc-123"]);

    // An insane one (a space; too long) is replaced, in the response and upstream.
    let long = "x".repeat(129);
    for bad in ["abc 123", long.as_str()] {
        let raw = raw_http(
            gw.addr(),
            format!(
                "GET /api/d HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\nX-Request-Id: {bad}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&raw), 200, "{raw}");
        let echoed = raw_header(&raw, "x-request-id").expect("x-request-id on a raw response");
        assert!(
            is_hex32(&echoed),
            "{bad:?} must be replaced, got {echoed:?}"
        );
        assert_eq!(
            upstream.last().header_all("x-request-id"),
            vec![echoed.as_str()],
            "the upstream sees the replacement, never {bad:?}"
        );
    }

    // Refused requests carry one too (and still echo a sane one).
    let before = upstream.count();
    let refused = c.get(&gw.url("/api/e"), &[]).await;
    assert_eq!(refused.status, 401);
    assert!(
        is_hex32(refused.header("x-request-id").unwrap_or("")),
        "{:?}",
        refused.headers
    );
    let refused = c
        .get(&gw.url("/api/e"), &[("x-request-id", "abc-123")])
        .await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("x-request-id"), Some("abc-123"));
    let no_route = c.get(&gw.url("/elsewhere"), &[]).await;
    assert_eq!(no_route.status, 404);
    assert!(
        is_hex32(no_route.header("x-request-id").unwrap_or("")),
        "{:?}",
        no_route.headers
    );
    assert_eq!(
        upstream.count(),
        before,
        "refused requests never reach the upstream"
    );
}

// === Reload ===

/// Replace `path` atomically (write a sibling, rename), so the poller never
/// reads half a file.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// A fresh directory under the system temp dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-ops-{name}-{}-{}",
            std::process::id(),
            now()
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one load task saw: requests sent, and every one that failed.
struct LoadReport {
    sent: usize,
    failures: Vec<String>,
}

/// Most requests one load task sends (a bound, not the plan: the tasks are
/// told to stop once the reloads are done).
const LOAD_CAP: usize = 2_000;

/// Send `GET url` with `token` until `stop` or [`LOAD_CAP`], pausing
/// `pace` between requests, over fresh connections (`pooled: false`) or
/// one kept-alive pool. Anything but a 200 is a failure.
fn spawn_load(
    url: String,
    token: String,
    pooled: bool,
    pace: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let fresh = client();
        let pool = PooledClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut report = LoadReport {
            sent: 0,
            failures: Vec::new(),
        };
        while !stop.load(Ordering::Relaxed) && report.sent < LOAD_CAP {
            report.sent += 1;
            let outcome = if pooled {
                let request = http::Request::get(&url)
                    .header("authorization", format!("Bearer {token}"))
                    .body(Empty::new())
                    .expect("request");
                let sent = async {
                    let resp = pool.request(request).await.map_err(|e| format!("{e:?}"))?;
                    let status = resp.status().as_u16();
                    resp.into_body()
                        .collect()
                        .await
                        .map_err(|e| format!("body: {e:?}"))?;
                    Ok::<u16, String>(status)
                };
                tokio::time::timeout(Duration::from_secs(5), sent)
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()))
            } else {
                let request = build_request(
                    "GET",
                    &url,
                    &[("authorization", &format!("Bearer {token}"))],
                    empty(),
                );
                fresh.try_send(request).await.map(|r| r.status)
            };
            match outcome {
                Ok(200) => {}
                Ok(status) => report.failures.push(format!("status {status}")),
                Err(e) => report.failures.push(format!("transport: {e}")),
            }
            tokio::time::sleep(pace).await;
        }
        report
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn config_reloads_under_load_apply_good_files_refuse_bad_ones_and_keep_key_caches() {
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let api = |scope: &str| format!("  - {{ path: /api/**, upstream: app, scopes: [{scope}] }}\n");
    let extra = "  - { path: /extra/**, upstream: app, auth: none }\n";
    let original = config(Some(&idp), &upstream, &api("read"), "");
    let with_extra = config(
        Some(&idp),
        &upstream,
        &format!("{}{extra}", api("read")),
        "",
    );
    // Both broken files also carry the scope change, so applying one would show.
    let syntax_error = with_extra.replace(
        &api("read"),
        "  - { path: /api/**, upstream: app, scopes: [write]\n",
    );
    let unknown_key = with_extra.replace(
        &api("read"),
        "  - { path: /api/**, upstream: app, scopes: [write], scopez: [read] }\n",
    );
    let final_config = config(
        Some(&idp),
        &upstream,
        &format!("{}{extra}", api("write")),
        "",
    );
    assert!(portcullis::config::from_str(&syntax_error, "t.yaml", |_| None).is_err());
    assert!(portcullis::config::from_str(&unknown_key, "t.yaml", |_| None).is_err());

    let dir = ScratchDir::new("reload");
    let path = dir.0.join("gateway.yaml");
    write_config(&path, &original);
    let gw = TestGateway::start(&original).await;
    gw.gateway.watch_config(path.clone());
    let admin = admin(&gw);
    // The watcher takes its first look at the file as it starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let jwks_hits = idp.jwks_hits();
    assert_eq!(jwks_hits, 1, "keys fetched once at start");

    let c = client();
    let read_write = token(&key, &idp, "read write");
    let read_only = token(&key, &idp, "read");
    let probe = |token: String| {
        let (c, url) = (c.clone(), gw.url("/api/probe"));
        async move { c.get_bearer(&url, &token, &[]).await.status }
    };
    let extra_status = || {
        let (c, url) = (c.clone(), gw.url("/extra/x"));
        async move { c.get(&url, &[]).await.status }
    };
    let reloads = |result: &'static str| async move {
        count(
            &metrics_text(admin).await,
            "portcullis_config_reloads_total",
            &[("result", result)],
        )
    };
    assert_eq!(extra_status().await, 404, "no /extra route yet");
    assert_eq!(probe(read_only.clone()).await, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|i| {
            spawn_load(
                gw.url(&format!("/api/load/{i}")),
                read_write.clone(),
                i % 2 == 0,
                Duration::from_millis(15),
                Arc::clone(&stop),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // (a) A new route appears.
    write_config(&path, &with_extra);
    eventually(
        "the new /extra route answers",
        Duration::from_secs(10),
        || async { extra_status().await == 200 },
    )
    .await;
    assert_eq!(reloads("applied").await, 1.0);
    assert_eq!(
        probe(read_only.clone()).await,
        200,
        "scope `read` still enough"
    );

    // (b) Broken files are refused; the running config keeps serving.
    for (n, broken) in [(1.0, &syntax_error), (2.0, &unknown_key)] {
        write_config(&path, broken);
        eventually(
            &format!("{n} reload(s) refused"),
            Duration::from_secs(10),
            || async move { reloads("refused").await >= n },
        )
        .await;
        assert_eq!(
            extra_status().await,
            200,
            "/extra still served after a refused reload"
        );
        assert_eq!(
            probe(read_only.clone()).await,
            200,
            "the refused file's scope change did not apply"
        );
        assert_eq!(c.get(&gw.url("/api/probe"), &[]).await.status, 401);
    }
    assert_eq!(
        reloads("applied").await,
        1.0,
        "a refused file is not applied"
    );

    // (c) A good file again: the scope change applies.
    write_config(&path, &final_config);
    eventually(
        "scope `write` is required",
        Duration::from_secs(10),
        || async { probe(read_only.clone()).await == 403 },
    )
    .await;
    assert_eq!(probe(read_write.clone()).await, 200);
    assert_eq!(extra_status().await, 200);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        load.iter().all(|task| !task.is_finished()),
        "the load ran until every reload was done (raise LOAD_CAP if not)"
    );
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let mut failures = Vec::new();
    for task in load {
        let report = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("load task ends")
            .expect("load task ran");
        sent += report.sent;
        failures.extend(report.failures);
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} requests under reload failed (transport error or not 200), e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(sent >= 200, "only {sent} requests under load");

    let text = metrics_text(admin).await;
    let applied = count(
        &text,
        "portcullis_config_reloads_total",
        &[("result", "applied")],
    );
    let refused = count(
        &text,
        "portcullis_config_reloads_total",
        &[("result", "refused")],
    );
    assert!(applied >= 2.0, "applied reloads: {applied}\n{text}");
    assert!(refused >= 1.0, "refused reloads: {refused}\n{text}");
    assert_eq!(
        count(
            &text,
            "portcullis_requests_total",
            &[("status_class", "5xx")]
        ),
        0.0,
        "no 5xx counted: {text}"
    );
    assert_eq!(
        idp.jwks_hits(),
        jwks_hits,
        "an unchanged provider keeps its key cache across reloads"
    );
    assert_eq!(
        sample(&text, "portcullis_jwks_keys", &[("provider", "main")]),
        Some(1.0)
    );
}

/// `portcullis_config_reloads_total{result}`, 0 before the first.
async fn reloads(admin: SocketAddr, result: &str) -> f64 {
    count(
        &metrics_text(admin).await,
        "portcullis_config_reloads_total",
        &[("result", result)],
    )
}

/// Wait (up to 10 s: the file is polled every 2 s) until `n` reloads with
/// `result` were counted.
async fn wait_for_reloads(admin: SocketAddr, result: &'static str, n: f64) {
    eventually(
        &format!("{n} reload(s) {result}"),
        Duration::from_secs(10),
        || async move { reloads(admin, result).await >= n },
    )
    .await;
}

/// A revocation list on `127.0.0.1:0`: `{"jtis": [...]}` at any path, or
/// `500` while `failing`; counts the requests it answers.
struct RevocationServer {
    addr: SocketAddr,
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RevocationServer {
    async fn start(jtis: &[&str]) -> RevocationServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind revocation server");
        let addr = listener.local_addr().expect("addr");
        let failing = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let document = json!({ "jtis": jtis }).to_string();
        let (fail, count) = (Arc::clone(&failing), Arc::clone(&hits));
        let task = spawn_server(listener, move |_request| {
            let failing = fail.load(Ordering::SeqCst);
            count.fetch_add(1, Ordering::SeqCst);
            let document = document.clone();
            async move {
                let builder = http::Response::builder().header("content-type", "application/json");
                if failing {
                    builder.status(500).body(full("down")).expect("500")
                } else {
                    builder.body(full(document)).expect("list")
                }
            }
        });
        RevocationServer {
            addr,
            failing,
            hits,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/revocations", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Wait until the gateway asked again (a poll after this call).
    async fn wait_for_poll(&self) {
        let before = self.hits();
        eventually(
            "the gateway polls the revocation list",
            Duration::from_secs(5),
            || async move { self.hits() > before },
        )
        .await;
    }
}

impl Drop for RevocationServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_during_a_revocation_list_outage_keeps_revoked_tokens_refused() {
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let list = RevocationServer::start(&["revoked-1"]).await;
    let providers = format!(
        "providers:\n{}    revocation: {{ url: \"{}\", interval: 1s }}\n",
        provider_yaml("main", &idp.issuer(), &idp.jwks_uri()),
        list.url()
    );
    let routes = "  - { path: /api/**, upstream: app }\n";
    let original = config_with_providers(&providers, &upstream, routes, "");
    let with_extra = config_with_providers(
        &providers,
        &upstream,
        &format!("{routes}  - {{ path: /extra/**, upstream: app, auth: none }}\n"),
        "",
    );
    let dir = ScratchDir::new("revocations");
    let path = dir.0.join("gateway.yaml");
    write_config(&path, &original);
    let gw = TestGateway::start(&original).await;
    gw.gateway.watch_config(path.clone());
    let admin = admin(&gw);
    let c = client();
    let with_jti = |jti: &str| {
        key.token(&json!({
            "iss": idp.issuer(),
            "aud": "orders-api",
            "sub": "ops-user",
            "jti": jti,
            "exp": now() + 600,
        }))
    };
    let (revoked, fine) = (with_jti("revoked-1"), with_jti("fine-1"));
    let url = gw.url("/api/x");
    let assert_refused = |when: &'static str| {
        let (c, url, revoked) = (c.clone(), url.clone(), revoked.clone());
        async move {
            let resp = c.get_bearer(&url, &revoked, &[]).await;
            assert_eq!(resp.status, 401, "{when}: {}", resp.text());
            assert_eq!(
                resp.json()["error_description"],
                "token revoked",
                "{when}: {}",
                resp.text()
            );
        }
    };

    eventually(
        "the revocation list is loaded",
        Duration::from_secs(5),
        || async { c.get_bearer(&url, &revoked, &[]).await.status == 401 },
    )
    .await;
    assert_refused("with the list served").await;
    assert_eq!(c.get_bearer(&url, &fine, &[]).await.status, 200);

    // The list source goes down: the last good list stays.
    list.failing.store(true, Ordering::SeqCst);
    list.wait_for_poll().await;
    assert_refused("during the outage").await;

    // A harmless reload during the outage.
    write_config(&path, &with_extra);
    wait_for_reloads(admin, "applied", 1.0).await;
    assert_eq!(c.get(&gw.url("/extra/x"), &[]).await.status, 200);
    assert_refused("right after the reload").await;
    // Polls fail on under the new config: the list is still not emptied.
    list.wait_for_poll().await;
    list.wait_for_poll().await;
    assert_refused("after failed polls under the new config").await;
    assert_eq!(c.get_bearer(&url, &fine, &[]).await.status, 200);
    assert_eq!(
        upstream
            .requests()
            .iter()
            .filter(|r| r.path_and_query == "/api/x")
            .count(),
        2,
        "only the unrevoked token's requests reached the upstream"
    );
    assert_eq!(reloads(admin, "refused").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_rate_limit_buckets_unless_the_limit_itself_changes() {
    let upstream = Upstream::start().await;
    let limited = |requests: u32| {
        format!(
            "  - {{ path: /api/**, upstream: app, auth: none, rate_limit: {{ requests: {requests}, per: 1m }} }}\n"
        )
    };
    // The new route comes first: the limited route moves to another index.
    let extra = "  - { path: /extra/**, upstream: app, auth: none }\n";
    let original = config(None, &upstream, &limited(2), "");
    let unrelated = config(None, &upstream, &format!("{extra}{}", limited(2)), "");
    let new_limit = config(None, &upstream, &format!("{extra}{}", limited(5)), "");
    let dir = ScratchDir::new("rate-limits");
    let path = dir.0.join("gateway.yaml");
    write_config(&path, &original);
    let gw = TestGateway::start(&original).await;
    gw.gateway.watch_config(path.clone());
    let admin = admin(&gw);
    let c = client();
    let url = gw.url("/api/x");
    let api_calls = || {
        upstream
            .requests()
            .iter()
            .filter(|r| r.path_and_query == "/api/x")
            .count()
    };

    for i in 1..=2 {
        let resp = c.get(&url, &[]).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    assert_eq!(c.get(&url, &[]).await.status, 429, "before any reload");

    write_config(&path, &unrelated);
    wait_for_reloads(admin, "applied", 1.0).await;
    assert_eq!(c.get(&gw.url("/extra/x"), &[]).await.status, 200);
    let resp = c.get(&url, &[]).await;
    assert_eq!(
        resp.status,
        429,
        "an unrelated reload handed the caller a fresh bucket: {}",
        resp.text()
    );
    assert_eq!(api_calls(), 2, "a 429 reached the upstream");

    // A new limit is a new bucket.
    write_config(&path, &new_limit);
    wait_for_reloads(admin, "applied", 2.0).await;
    let resp = c.get(&url, &[]).await;
    assert_eq!(resp.status, 200, "under requests: 5: {}", resp.text());
    assert_eq!(api_calls(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_adds_tls_is_refused_and_the_listener_stays_plain() {
    let upstream = Upstream::start().await;
    let pki = Pki::new();
    let routes = "  - { path: /api/**, upstream: app, auth: none }\n";
    let with_extra = format!("{routes}  - {{ path: /extra/**, upstream: app, auth: none }}\n");
    let tls = format!(
        "tls: {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
        pki.server_cert_path().display(),
        pki.server_key_path().display()
    );
    let original = config(None, &upstream, routes, "");
    let with_tls = config(None, &upstream, &with_extra, &tls);
    // On its own the TLS file is a good config: only the flip is refused.
    if let Err(errors) = portcullis::config::from_str(&with_tls, "t.yaml", |_| None) {
        panic!("the TLS config does not load on its own:\n{errors}");
    }
    let dir = ScratchDir::new("tls-flip");
    let path = dir.0.join("gateway.yaml");
    write_config(&path, &original);
    let gw = TestGateway::start(&original).await;
    gw.gateway.watch_config(path.clone());
    let admin = admin(&gw);

    write_config(&path, &with_tls);
    wait_for_reloads(admin, "refused", 1.0).await;
    assert_eq!(reloads(admin, "applied").await, 0.0);
    let resp = raw_http(gw.addr(), get_request("/api/plain").as_bytes()).await;
    assert_eq!(
        raw_status(&resp),
        200,
        "plain HTTP after the refusal: {resp}"
    );
    let resp = raw_http(gw.addr(), get_request("/extra/x").as_bytes()).await;
    assert_eq!(
        raw_status(&resp),
        404,
        "nothing of the refused file applied: {resp}"
    );

    // The same change without `tls` applies.
    write_config(&path, &config(None, &upstream, &with_extra, ""));
    wait_for_reloads(admin, "applied", 1.0).await;
    let resp = raw_http(gw.addr(), get_request("/extra/x").as_bytes()).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(reloads(admin, "refused").await, 1.0);
}

// === Shutdown ===

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_in_flight_requests_finish_then_refuses_connections() {
    let upstream = Upstream::start_with_delay(Duration::from_secs(1)).await;
    let routes = "  - { path: /api/**, upstream: app, auth: none }\n";
    let gw = TestGateway::start(&config(None, &upstream, routes, "")).await;
    let (addr, admin) = (gw.addr(), admin(&gw));
    let ready_url = format!("http://{admin}/readyz");
    assert_eq!(client().get(&ready_url, &[]).await.status, 200);

    let in_flight: Vec<_> = (0..5)
        .map(|i| {
            let request = build_request("GET", &gw.url(&format!("/api/slow/{i}")), &[], empty());
            tokio::spawn(async move { client().try_send(request).await })
        })
        .collect();
    eventually(
        "5 requests reach the upstream",
        Duration::from_secs(3),
        || async { upstream.count() == 5 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let TestGateway { gateway } = gw;
    let began = Instant::now();
    let shutdown = tokio::spawn(gateway.shutdown());
    // Once shutdown began, readiness is never 200: 503, or the listener is gone.
    let short = Client::new().with_timeout(Duration::from_millis(500));
    let not_ready = || {
        let (c, url) = (short.clone(), ready_url.clone());
        async move {
            match c.try_send(build_request("GET", &url, &[], empty())).await {
                Ok(resp) => resp.status == 503,
                Err(_) => true,
            }
        }
    };
    eventually(
        "/readyz stops answering 200",
        Duration::from_secs(2),
        not_ready,
    )
    .await;
    for _ in 0..3 {
        assert!(not_ready().await, "/readyz answered 200 during shutdown");
    }
    // A new client during the drain is not served.
    let late = short
        .try_send(build_request(
            "GET",
            &format!("http://{addr}/api/late"),
            &[],
            empty(),
        ))
        .await;
    assert!(
        late.is_err(),
        "a request during the drain was answered: {late:?}"
    );

    for (i, request) in in_flight.into_iter().enumerate() {
        let resp = request
            .await
            .expect("request task")
            .unwrap_or_else(|e| panic!("in-flight request {i} failed during shutdown: {e}"));
        assert_eq!(resp.status, 200, "in-flight request {i}: {}", resp.text());
    }
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown returns once drained")
        .expect("shutdown task");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "shutdown returned after {took:?}, before its in-flight requests were answered"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the gateway still accepts connections after shutdown"
    );
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "the admin listener still accepts connections after shutdown"
    );
    assert_eq!(
        upstream.count(),
        5,
        "nothing new was forwarded after shutdown began"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_gives_up_on_open_connections_after_the_drain_timeout() {
    let upstream = Upstream::start_with_delay(Duration::from_secs(5)).await;
    let routes = "  - { path: /api/**, upstream: app, auth: none }\n";
    let extra = "server: { drain_timeout: 1s }\n";
    let gw = TestGateway::start(&config(None, &upstream, routes, extra)).await;
    let stuck: Vec<_> = (0..2)
        .map(|i| {
            let request = build_request("GET", &gw.url(&format!("/api/stuck/{i}")), &[], empty());
            tokio::spawn(async move {
                client()
                    .with_timeout(Duration::from_secs(8))
                    .try_send(request)
                    .await
            })
        })
        .collect();
    eventually(
        "2 requests reach the upstream",
        Duration::from_secs(3),
        || async { upstream.count() == 2 },
    )
    .await;

    let began = Instant::now();
    tokio::time::timeout(Duration::from_secs(4), gw.gateway.shutdown())
        .await
        .expect("shutdown returns after the drain timeout, not the upstream's 5 s");
    let took = began.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&took),
        "shutdown with drain_timeout 1s took {took:?}"
    );
    for request in stuck {
        let outcome = tokio::time::timeout(Duration::from_secs(2), request)
            .await
            .expect("a cut connection ends its request at once")
            .expect("request task");
        assert!(
            !matches!(&outcome, Ok(resp) if resp.status == 200),
            "a request cut by the drain timeout got {outcome:?}"
        );
    }
}

// === Listener limits ===

#[tokio::test(flavor = "multi_thread")]
async fn oversized_or_too_many_headers_get_431_and_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let routes = "  - { path: /pub/**, upstream: app, auth: none }\n";
    let extra = "server: { max_header_bytes: 8KiB, max_headers: 20 }\n";
    let gw = TestGateway::start(&config(None, &upstream, routes, extra)).await;

    let big = format!(
        "GET /pub/big HTTP/1.1\r\nHost: gw.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(10 << 10)
    );
    let resp = raw_http(gw.addr(), big.as_bytes()).await;
    assert_eq!(raw_status(&resp), 431, "10 KiB header: {resp}");

    let many = |n: usize, path: &str| {
        let headers: String = (0..n).map(|i| format!("X-H{i}: v\r\n")).collect();
        format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n{headers}Connection: close\r\n\r\n")
    };
    let resp = raw_http(gw.addr(), many(30, "/pub/many").as_bytes()).await;
    assert_eq!(raw_status(&resp), 431, "30 headers: {resp}");
    assert_eq!(upstream.count(), 0, "a 431 request reached the upstream");

    // Within the limits: served.
    let resp = raw_http(gw.addr(), many(10, "/pub/fine").as_bytes()).await;
    assert_eq!(raw_status(&resp), 200, "10 headers: {resp}");
    let within = format!(
        "GET /pub/sized HTTP/1.1\r\nHost: gw.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(6 << 10)
    );
    let resp = raw_http(gw.addr(), within.as_bytes()).await;
    assert_eq!(raw_status(&resp), 200, "6 KiB header: {resp}");
    let paths: Vec<_> = upstream
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(paths, ["/pub/fine", "/pub/sized"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let upstream = Upstream::start().await;
    let routes = "  - { path: /pub/**, upstream: app, auth: none }\n";
    let extra = "server: { idle_timeout: 1s }\n";
    let gw = TestGateway::start(&config(None, &upstream, routes, extra)).await;

    let mut stream = TcpStream::connect(gw.addr()).await.expect("connect");
    stream
        .write_all(get_request("/pub/a").as_bytes())
        .await
        .expect("write");
    let resp = read_response(&mut stream, Duration::from_secs(5))
        .await
        .expect("a response on the kept-alive connection");
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let (idle_for, extra_bytes) = wait_closed(&mut stream, Duration::from_secs(4))
        .await
        .expect("an idle connection is closed within ~3 s of idle_timeout 1s");
    assert!(
        idle_for >= Duration::from_millis(800),
        "closed after only {idle_for:?} idle (idle_timeout 1s)"
    );
    assert!(
        idle_for <= Duration::from_secs(3),
        "closed after {idle_for:?}"
    );
    assert!(extra_bytes.is_empty(), "unexpected bytes: {extra_bytes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_request_in_flight_is_not_cut_by_the_idle_timeout() {
    let upstream = Upstream::start_with_delay(Duration::from_millis(2_500)).await;
    let routes = "  - { path: /pub/**, upstream: app, auth: none }\n";
    let extra = "server: { idle_timeout: 1s }\n";
    let gw = TestGateway::start(&config(None, &upstream, routes, extra)).await;

    let mut stream = TcpStream::connect(gw.addr()).await.expect("connect");
    let began = Instant::now();
    stream
        .write_all(get_request("/pub/slow").as_bytes())
        .await
        .expect("write");
    let resp = read_response(&mut stream, Duration::from_secs(6))
        .await
        .expect("the slow response arrives on a connection idle for 2.5 s");
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert!(
        began.elapsed() >= Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    // Afterwards the connection is idle like any other.
    assert!(
        wait_closed(&mut stream, Duration::from_secs(4))
            .await
            .is_some(),
        "closed once idle"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_mid_request_line_is_cut_after_the_header_read_timeout() {
    let upstream = Upstream::start().await;
    let routes = "  - { path: /pub/**, upstream: app, auth: none }\n";
    let extra = "server: { header_read_timeout: 1s }\n";
    let gw = TestGateway::start(&config(None, &upstream, routes, extra)).await;

    let mut stream = TcpStream::connect(gw.addr()).await.expect("connect");
    stream.write_all(b"GET /pub/x HT").await.expect("write");
    let (took, bytes) = wait_closed(&mut stream, Duration::from_secs(4))
        .await
        .expect("a half-sent request line is cut within ~3 s (header_read_timeout 1s)");
    assert!(
        took >= Duration::from_millis(800),
        "cut after only {took:?}"
    );
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(" 200 "), "{text}");
    assert_eq!(upstream.count(), 0);

    // A prompt client is still served.
    let resp = raw_http(gw.addr(), get_request("/pub/ok").as_bytes()).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
}

/// Found by the soak: the first-request timer fired on busy connections
/// too, closing every keep-alive connection `header_read_timeout` after it
/// opened, so a request sent at that moment failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_keep_alive_connection_outlives_the_header_read_timeout() {
    let upstream = Upstream::start().await;
    let routes = "  - { path: /pub/**, upstream: app, auth: none }\n";
    let extra = "server: { header_read_timeout: 1s, idle_timeout: 30s }\n";
    let gw = TestGateway::start(&config(None, &upstream, routes, extra)).await;

    let mut stream = TcpStream::connect(gw.addr()).await.expect("connect");
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        stream
            .write_all(get_request("/pub/x").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("write after {served} requests: {e}"));
        let response = read_response(&mut stream, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "connection closed after {served} requests, at {:?}",
                    started.elapsed()
                )
            });
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served >= 20, "only {served} requests in 2.5 s");
    assert_eq!(upstream.count(), served);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_sends_nothing_is_cut_after_the_header_read_timeout() {
    let upstream = Upstream::start().await;
    let routes = "  - { path: /pub/**, upstream: app, auth: none }\n";
    // The idle timeout is long: only the header read timeout may act.
    let extra = "server: { header_read_timeout: 1s, idle_timeout: 30s }\n";
    let gw = TestGateway::start(&config(None, &upstream, routes, extra)).await;

    let mut stream = TcpStream::connect(gw.addr()).await.expect("connect");
    let closed = wait_closed(&mut stream, Duration::from_secs(4)).await;
    assert!(
        closed.is_some(),
        "a connection that never sends a byte must be cut by header_read_timeout (1s), \
         not only by the idle watchdog (hyper-util's auto::Builder sniffs for the \
         HTTP/2 preface before hyper's header timer starts)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_client_that_sends_no_request_gets_a_goaway_before_the_connection_closes() {
    let upstream = Upstream::start().await;
    let routes = "  - { path: /pub/**, upstream: app, auth: none }\n";
    let extra = "server: { header_read_timeout: 1s, idle_timeout: 30s }\n";
    let gw = TestGateway::start(&config(None, &upstream, routes, extra)).await;

    let mut stream = TcpStream::connect(gw.addr()).await.expect("connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // empty SETTINGS
    stream.write_all(&hello).await.expect("write preface");
    let started = Instant::now();

    // Frames as they come: (type, payload, when), until the gateway closes.
    let mut frames: Vec<(u8, Vec<u8>, Duration)> = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            frames.push((buf[3], buf[9..9 + len].to_vec(), started.elapsed()));
            buf.drain(..9 + len);
        }
        match tokio::time::timeout_at(
            (started + Duration::from_secs(6)).into(),
            stream.read(&mut chunk),
        )
        .await
        {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let kinds: Vec<(u8, Duration)> = frames.iter().map(|(t, _, at)| (*t, *at)).collect();
    assert!(
        closed,
        "an h2c connection without a request was still open after 6 s: {kinds:?}"
    );
    let took = started.elapsed();
    let goaway = frames
        .iter()
        .find(|(kind, _, _)| *kind == 0x7)
        .unwrap_or_else(|| panic!("closed after {took:?} without a GOAWAY: {kinds:?}"));
    let (_, payload, at) = goaway;
    assert!(
        *at >= Duration::from_millis(800),
        "GOAWAY after only {at:?} (header_read_timeout 1s): {kinds:?}"
    );
    assert!(
        *at <= Duration::from_secs(3),
        "GOAWAY only after {at:?}: {kinds:?}"
    );
    assert!(payload.len() >= 8, "short GOAWAY payload {payload:?}");
    assert_eq!(
        &payload[4..8],
        &[0, 0, 0, 0],
        "a graceful GOAWAY (NO_ERROR): {payload:?}"
    );
    assert!(
        frames.iter().all(|(kind, _, _)| *kind != 0x1),
        "HEADERS on a connection with no request: {kinds:?}"
    );
    assert!(took <= Duration::from_secs(4), "closed after {took:?}");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_max_connections_a_client_waits_until_a_connection_closes() {
    let upstream = Upstream::start().await;
    let routes = "  - { path: /pub/**, upstream: app, auth: none }\n";
    let extra = "server: { max_connections: 2 }\n";
    let gw = TestGateway::start(&config(None, &upstream, routes, extra)).await;
    let admin = admin(&gw);

    let mut first = TcpStream::connect(gw.addr()).await.expect("connect 1");
    let second = TcpStream::connect(gw.addr()).await.expect("connect 2");
    eventually(
        "2 connections open",
        Duration::from_secs(3),
        || async move {
            count(
                &metrics_text(admin).await,
                "portcullis_open_connections",
                &[],
            ) == 2.0
        },
    )
    .await;
    // The third is left in the kernel's backlog: its request waits.
    let mut third = TcpStream::connect(gw.addr())
        .await
        .expect("connect 3 (backlog)");
    third
        .write_all(get_request("/pub/third").as_bytes())
        .await
        .expect("write");
    assert!(
        read_response(&mut third, Duration::from_millis(1_000))
            .await
            .is_none(),
        "a third connection was served beyond max_connections 2"
    );
    // The admitted ones are served meanwhile.
    first
        .write_all(get_request("/pub/first").as_bytes())
        .await
        .expect("write");
    let resp = read_response(&mut first, Duration::from_secs(3))
        .await
        .expect("an admitted connection is served");
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(
        count(
            &metrics_text(admin).await,
            "portcullis_open_connections",
            &[]
        ),
        2.0
    );
    assert_eq!(upstream.count(), 1, "only the first request was forwarded");

    drop(second);
    let resp = read_response(&mut third, Duration::from_secs(3))
        .await
        .expect("the waiting connection is served once one closes");
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(upstream.last().path_and_query, "/pub/third");
}
