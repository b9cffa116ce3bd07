//! Bodies stream through the gateway (never buffered), upstream failures map
//! to 502 / 504, refused requests never reach the upstream, and hop-by-hop
//! response headers stay on their hop.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::process::GatewayProcess;
use support::*;

const MIB: u64 = 1024 * 1024;

/// A token the test provider accepts: RS256, audience `orders-api`.
fn valid_token(key: &TestKey, issuer: &str) -> String {
    key.token(&json!({
        "iss": issuer,
        "aud": "orders-api",
        "sub": "alice",
        "iat": now(),
        "exp": now() + 600,
    }))
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn fifty_mib_uploads_and_downloads_stream_intact_through_the_binary_without_buffering() {
    const N: u64 = 50 * MIB;
    const RSS_LIMIT: u64 = 64 * MIB;
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let gateway = GatewayProcess::start(&format!(
        "\
listen: {{LISTEN}}
providers:
{provider}
upstreams:
  files: {{ url: \"{up}\", timeout: 60s }}
routes:
  - {{ path: /files/**, upstream: files, max_body: 1GiB }}
",
        provider = provider_yaml("main", &idp.issuer(), &idp.jwks_uri()),
        up = upstream.url(),
    ));
    let client = Client::new();
    let auth = format!("Bearer {}", valid_token(&key, &idp.issuer()));
    let expected = download_sha256(N);

    // The route is protected: without the token nothing is forwarded.
    let refused = client.get(&gateway.url("/files/download/1"), &[]).await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(upstream.count(), 0);

    // Upload with a known length: the length is kept, the bytes are intact.
    let r = client
        .request(
            "PUT",
            &gateway.url("/files/sized"),
            &[("authorization", &auth)],
            pattern_body(N, true),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-body-sha256"), Some(expected.as_str()));
    let rec = upstream.last();
    assert_eq!(
        (rec.method.as_str(), rec.path_and_query.as_str()),
        ("PUT", "/files/sized")
    );
    assert_eq!(rec.header("content-length"), Some("52428800"));
    assert_eq!(
        (rec.body_len, rec.body_sha256.as_str()),
        (N, expected.as_str())
    );

    // Chunked upload: streamed on as chunks, never gathered into a length.
    let r = client
        .request(
            "POST",
            &gateway.url("/files/chunked"),
            &[("authorization", &auth)],
            pattern_body(N, false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-body-sha256"), Some(expected.as_str()));
    let rec = upstream.last();
    assert_eq!(rec.path_and_query, "/files/chunked");
    assert_eq!(rec.header("transfer-encoding"), Some("chunked"));
    assert_eq!(rec.header("content-length"), None);
    assert_eq!(
        (rec.body_len, rec.body_sha256.as_str()),
        (N, expected.as_str())
    );

    // Download.
    let r = client
        .request(
            "GET",
            &gateway.url(&format!("/files/download/{N}")),
            &[("authorization", &auth)],
            empty(),
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "{}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(500)])
    );
    assert_eq!(r.header("content-length"), Some("52428800"));
    assert_eq!(r.body.len() as u64, N);
    assert_eq!(r.body_sha256(), expected);
    assert_eq!(upstream.count(), 3, "the refused request never arrived");

    let peak = gateway.peak_rss();
    eprintln!("gateway peak RSS: {:.1} MiB", peak as f64 / MIB as f64);
    assert!(
        peak < RSS_LIMIT,
        "gateway peak RSS {:.1} MiB after moving 150 MiB; it must stream, not buffer (limit {} MiB)",
        peak as f64 / MIB as f64,
        RSS_LIMIT / MIB
    );
    drop(gateway);
}

// ---------------------------------------------------------------------------
// In-process: upstream failures, refused bodies, response headers
// ---------------------------------------------------------------------------

/// A gateway with one public route, `/app/**`, to `upstream_url` with the
/// given upstream `timeout`.
async fn public_gateway(upstream_url: &str, timeout: &str) -> TestGateway {
    TestGateway::start(&format!(
        "\
listen: 127.0.0.1:0
upstreams:
  app: {{ url: \"{upstream_url}\", connect_timeout: 1s, timeout: {timeout} }}
routes:
  - {{ path: /app/**, upstream: app, auth: none, max_body: 1GiB }}
"
    ))
    .await
}

/// The body of a gateway error: JSON with a string `error`.
fn error_body(resp: &Resp) -> Value {
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let body = resp.json();
    assert!(body["error"].is_string(), "no `error` in {body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_refuses_connections_gives_502_with_a_json_error() {
    let gateway = public_gateway(&format!("http://{}", closed_port()), "5s").await;
    let client = Client::new().with_timeout(Duration::from_secs(10));

    for method in ["GET", "POST"] {
        let r = client
            .request(method, &gateway.url("/app/x"), &[], full("payload"))
            .await;
        assert_eq!(r.status, 502, "{method}: {}", r.text());
        let body = error_body(&r);
        assert_eq!(
            body,
            json!({"error": "bad_gateway", "error_description": "upstream unreachable"})
        );
        assert_eq!(r.header("www-authenticate"), None, "not an auth failure");
        assert_eq!(r.header("x-upstream"), None);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_slower_than_its_timeout_gives_504_at_the_timeout() {
    let upstream = Upstream::start_with_delay(Duration::from_secs(3)).await;
    let gateway = public_gateway(&upstream.url(), "1s").await;
    let client = Client::new().with_timeout(Duration::from_secs(10));

    let started = Instant::now();
    let r = client.get(&gateway.url("/app/slow"), &[]).await;
    let took = started.elapsed();

    assert_eq!(r.status, 504, "{}", r.text());
    let body = error_body(&r);
    assert_eq!(body["error_description"], "upstream timed out");
    assert_eq!(r.header("x-upstream"), None, "no upstream response leaked");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2800),
        "answered after {took:?}: at the 1 s timeout, not after the 3 s delay"
    );
    assert_eq!(upstream.count(), 1, "the request did reach the upstream");
    assert_eq!(upstream.last().path_and_query, "/app/slow");
}

/// Send `head` and then `body_len` pattern bytes on a raw connection while
/// reading the answer, the way a browser or curl uploads: the writer does not
/// wait for the server, and a server that answers early and closes only
/// makes the rest of the body fail to send (ignored here). Returns what was
/// read until the server closed (or 5 s passed).
async fn upload_raw(addr: SocketAddr, head: &str, body_len: u64) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (mut reader, mut writer) = stream.into_split();
    let head = head.to_owned();
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let mut sent = 0;
        while sent < body_len {
            let len = (body_len - sent).min(PATTERN_CHUNK as u64) as usize;
            writer.write_all(&pattern_bytes(sent, len)).await?;
            sent += len as u64;
        }
        std::io::Result::Ok(())
    });
    let mut received = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout_at(deadline, reader.read(&mut chunk)).await {
        received.extend_from_slice(&chunk[..n]);
    }
    sender.abort();
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_a_token_is_refused_before_its_body_reaches_the_upstream() {
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(&format!(
        "\
listen: 127.0.0.1:0
realm: uploads
providers:
{provider}
upstreams:
  app: {{ url: \"{up}\" }}
routes:
  - {{ path: /upload, upstream: app }}
",
        provider = provider_yaml("main", &idp.issuer(), &idp.jwks_uri()),
        up = upstream.url(),
    ))
    .await;

    let uploads = [
        (
            "with a length",
            format!("POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: {MIB}\r\n\r\n"),
        ),
        (
            "chunked",
            // One chunk header announcing the whole MiB, then the bytes.
            format!(
                "POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n{MIB:x}\r\n"
            ),
        ),
    ];
    for (what, head) in &uploads {
        let answer = upload_raw(gateway.addr(), head, MIB).await;
        assert_eq!(raw_status(&answer), 401, "{what}: {answer}");
        let lower = answer.to_ascii_lowercase();
        assert!(
            lower.contains("\r\nwww-authenticate: bearer realm=\"uploads\"\r\n"),
            "{what}: {answer}"
        );
        assert!(!lower.contains("x-upstream"), "{what}: {answer}");
    }

    // A careful client asks first and is answered without sending a byte:
    // no `100 Continue`, straight to 401.
    let answer = raw_http(
        gateway.addr(),
        format!(
            "PUT /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: {MIB}\r\nExpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 401, "{answer}");
    assert!(
        !answer.starts_with("HTTP/1.1 100"),
        "the body was invited: {answer}"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        upstream.count(),
        0,
        "a refused request must never be forwarded"
    );

    // The same upload with a valid token does arrive, whole.
    let auth = format!("Bearer {}", valid_token(&key, &idp.issuer()));
    let r = Client::new()
        .with_timeout(Duration::from_secs(10))
        .request(
            "POST",
            &gateway.url("/upload"),
            &[("authorization", &auth)],
            pattern_body(MIB, true),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.count(), 1);
    let rec = upstream.last();
    assert_eq!((rec.body_len, rec.body_sha256), (MIB, download_sha256(MIB)));
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_response_headers_stay_on_their_hop_and_the_others_pass() {
    let upstream = Upstream::start().await;
    upstream.set_response_headers(&[
        ("connection", "x-internal, x-other-internal"),
        ("x-internal", "secret"),
        ("x-other-internal", "secret too"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("x-kept", "visible"),
        ("cache-control", "private"),
    ]);
    let gateway = public_gateway(&upstream.url(), "5s").await;
    let client = Client::new().with_timeout(Duration::from_secs(10));

    let r = client.get(&gateway.url("/app/headers"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for dropped in [
        "x-internal",
        "x-other-internal",
        "keep-alive",
        "proxy-connection",
    ] {
        assert_eq!(r.header(dropped), None, "{dropped} crossed the gateway");
    }
    let connection = r.header("connection").unwrap_or("").to_ascii_lowercase();
    assert!(
        !connection.contains("x-internal"),
        "the upstream's Connection header crossed: {connection:?}"
    );
    for (kept, value) in [
        ("x-upstream", "yes"),
        ("x-kept", "visible"),
        ("cache-control", "private"),
        ("content-type", "application/json"),
    ] {
        assert_eq!(r.header(kept), Some(value), "{kept} must pass");
    }
    assert_eq!(r.json(), json!({"path": "/app/headers", "method": "GET"}));

    // The same, seen on the wire.
    let raw = raw_http(
        gateway.addr(),
        b"GET /app/raw HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    let head = raw
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(head.contains("\r\nx-kept: visible"), "{head}");
    assert!(!head.contains("internal"), "{head}");
    assert!(!head.contains("keep-alive: timeout=5"), "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ordinary_client_uploading_without_a_token_reads_the_401_not_a_reset() {
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(&format!(
        "listen: 127.0.0.1:0\nproviders:\n{}upstreams:\n  app: {{ url: \"{}\" }}\nroutes:\n  - {{ path: /upload, upstream: app }}\n",
        provider_yaml("main", &idp.issuer(), &idp.jwks_uri()),
        upstream.url(),
    ))
    .await;
    // A client that writes its whole body before reading (as hyper's does)
    // must still get the answer: the gateway reads and drops the rest.
    for known_length in [true, false] {
        let resp = Client::new()
            .with_timeout(Duration::from_secs(10))
            .try_send(build_request(
                "POST",
                &gateway.url("/upload"),
                &[("authorization", "Bearer expired.or.bogus")],
                pattern_body(4 * MIB, known_length),
            ))
            .await
            .unwrap_or_else(|e| panic!("known_length={known_length}: no response: {e}"));
        assert_eq!(resp.status, 401, "known_length={known_length}");
        assert!(
            resp.header("www-authenticate")
                .unwrap()
                .contains("invalid_token")
        );
    }
    assert_eq!(upstream.count(), 0);
}
