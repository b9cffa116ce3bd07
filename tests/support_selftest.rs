//! Proves the test-support servers and keys do what they claim.

mod support;

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use support::*;

fn claims() -> Value {
    json!({"iss": "https://issuer.test", "sub": "alice", "aud": "portcullis",
           "iat": now(), "exp": now() + 300})
}

fn verify(token: &str, jwk: &Value, alg: Algorithm) -> jsonwebtoken::errors::Result<Value> {
    let jwk: Jwk = serde_json::from_value(jwk.clone()).expect("JWK parses as jsonwebtoken Jwk");
    let key = DecodingKey::from_jwk(&jwk).expect("DecodingKey from JWK");
    let mut v = Validation::new(alg);
    v.set_audience(&["portcullis"]);
    v.set_issuer(&["https://issuer.test"]);
    jsonwebtoken::decode::<Value>(token, &key, &v).map(|d| d.claims)
}

#[test]
fn rsa_and_ec_tokens_verify_with_jsonwebtoken() {
    let t = Instant::now();
    let rsa = TestKey::rsa("r1");
    let gen_time = t.elapsed();
    eprintln!("RSA-2048 keygen took {gen_time:?}");
    let ec = TestKey::ec("e1");
    assert_eq!((rsa.kid(), rsa.alg()), ("r1", "RS256"));
    assert_eq!((ec.kid(), ec.alg()), ("e1", "ES256"));

    let jwk = rsa.public_jwk();
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["e"], "AQAB");
    let n = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        jwk["n"].as_str().unwrap(),
    )
    .expect("n is base64url without padding");
    assert_eq!(n.len(), 256, "2048-bit modulus, no leading zero byte");
    assert_ne!(n[0], 0);

    let ejwk = ec.public_jwk();
    assert_eq!(
        (ejwk["kty"].as_str(), ejwk["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );

    let c = claims();
    let got = verify(&rsa.token(&c), &jwk, Algorithm::RS256).expect("RS256 token verifies");
    assert_eq!(got, c);
    let got = verify(&ec.token(&c), &ejwk, Algorithm::ES256).expect("ES256 token verifies");
    assert_eq!(got, c);

    // Header is used exactly as given.
    let odd = rsa.sign(
        &json!({"alg": "RS256", "kid": "zzz", "jku": "http://evil"}),
        &c,
    );
    let header = jsonwebtoken::decode_header(&odd).expect("header decodes");
    assert_eq!(header.kid.as_deref(), Some("zzz"));
    assert_eq!(header.jku.as_deref(), Some("http://evil"));
    verify(&odd, &jwk, Algorithm::RS256).expect("signature over the custom header is valid");

    // Wrong key does not verify.
    let other = TestKey::ec("e2");
    assert!(verify(&other.token(&c), &ejwk, Algorithm::ES256).is_err());
    // rsa_shared: same slot => same material, other slot => other material.
    let s0 = TestKey::rsa_shared(0, "a");
    let s0b = TestKey::rsa_shared(0, "b");
    let s1 = TestKey::rsa_shared(1, "c");
    assert_eq!(s0.public_jwk()["n"], s0b.public_jwk()["n"]);
    assert_ne!(s0.public_jwk()["n"], s1.public_jwk()["n"]);
    assert_eq!(s0b.kid(), "b");
    verify(&s0.token(&c), &s0b.public_jwk(), Algorithm::RS256).expect("shared key verifies");
    assert_eq!(rsa.with_kid("x").public_jwk()["n"], jwk["n"]);
}

#[test]
fn hs256_unsigned_and_public_key_encodings() {
    let c = claims();
    let hs = hs256(b"secret", &json!({"alg": "HS256", "typ": "JWT"}), &c);
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&["portcullis"]);
    let got = jsonwebtoken::decode::<Value>(&hs, &DecodingKey::from_secret(b"secret"), &v)
        .expect("HS256 verifies")
        .claims;
    assert_eq!(got, c);

    let none = unsigned(&json!({"alg": "none"}), &c);
    assert!(none.ends_with('.'));
    assert_eq!(none.split('.').count(), 3);
    assert_eq!(b64(b"\xff\xfe"), "__4");

    for key in [TestKey::rsa_shared(0, "r"), TestKey::ec("e")] {
        let input = b"hello";
        let sig = key.sign_raw(input);
        let der = key.public_key_der();
        let alg: &dyn aws_lc_rs::signature::VerificationAlgorithm = match key.alg() {
            "RS256" => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            _ => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        };
        aws_lc_rs::signature::UnparsedPublicKey::new(alg, &der)
            .verify(input, &sig)
            .expect("SPKI DER public key verifies the raw signature");
        let pem = key.public_key_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
    }
    // The confusion attack token: HS256 keyed with the PEM of the RSA public key.
    let rsa = TestKey::rsa_shared(0, "r");
    let pem = rsa.public_key_pem();
    let forged = hs256(pem.as_bytes(), &json!({"alg": "HS256", "kid": "r"}), &c);
    jsonwebtoken::decode::<Value>(&forged, &DecodingKey::from_secret(pem.as_bytes()), &v)
        .expect("forged token is a valid HS256 token under the PEM secret");
}

#[tokio::test(flavor = "multi_thread")]
async fn idp_serves_counts_rotates_and_modes() {
    let k1 = TestKey::ec("k1");
    let k2 = TestKey::ec("k2");
    let idp = Idp::start(vec![k1.public_jwk()]).await;
    let client = Client::new().with_timeout(Duration::from_secs(5));
    assert_eq!(idp.issuer(), format!("http://{}", idp.addr()));
    assert_eq!(idp.jwks_uri(), format!("{}/jwks", idp.issuer()));

    let r = client.get(&idp.jwks_uri(), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), json!({"keys": [k1.public_jwk()]}));
    assert_eq!(idp.jwks_hits(), 1);

    let d = client.get(&idp.discovery_uri(), &[]).await;
    assert_eq!(
        d.json(),
        json!({"issuer": idp.issuer(), "jwks_uri": idp.jwks_uri()})
    );
    assert_eq!(idp.discovery_hits(), 1);
    assert_eq!(
        client
            .get(&format!("{}/nope", idp.issuer()), &[])
            .await
            .status,
        404
    );

    idp.set_keys(vec![k1.public_jwk(), k2.public_jwk()]);
    idp.set_cache_control(Some("max-age=60"));
    let r = client.get(&idp.jwks_uri(), &[]).await;
    assert_eq!(r.json()["keys"].as_array().unwrap().len(), 2);
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    idp.set_cache_control(None);

    idp.set_mode(IdpMode::Failing500);
    let r = client.get(&idp.jwks_uri(), &[]).await;
    assert_eq!(r.status, 500);
    assert!(r.header("cache-control").is_none());

    idp.set_mode(IdpMode::Garbage);
    let r = client.get(&idp.jwks_uri(), &[]).await;
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    idp.set_mode(IdpMode::EmptySet);
    assert_eq!(
        client.get(&idp.jwks_uri(), &[]).await.json(),
        json!({"keys": []})
    );

    idp.set_mode(IdpMode::Hang);
    let short = Client::new().with_timeout(Duration::from_millis(300));
    let err = short
        .try_send(build_request("GET", &idp.jwks_uri(), &[], empty()))
        .await
        .expect_err("hang mode never answers");
    assert!(err.contains("timed out"), "{err}");

    idp.set_mode(IdpMode::Serving);
    assert_eq!(client.get(&idp.jwks_uri(), &[]).await.status, 200);
    assert_eq!(idp.jwks_hits(), 7);
    assert_eq!(idp.discovery_hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn idp_stop_refuses_connections_and_restart_serves_again() {
    let idp_key = TestKey::ec("k");
    let mut idp = Idp::start(vec![idp_key.public_jwk()]).await;
    let client = Client::new().with_timeout(Duration::from_secs(5));
    assert_eq!(client.get(&idp.jwks_uri(), &[]).await.status, 200);
    // Leave a connection open (and one hanging request) across the stop.
    let open = tokio::net::TcpStream::connect(idp.addr()).await.unwrap();
    idp.set_mode(IdpMode::Hang);
    let hanging = tokio::spawn({
        let c = client.clone();
        let uri = idp.jwks_uri();
        async move { c.try_send(build_request("GET", &uri, &[], empty())).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    idp.stop().await;
    assert!(!idp.is_running());
    let e = tokio::net::TcpStream::connect(idp.addr())
        .await
        .expect_err("stopped IdP refuses connections");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        client
            .try_send(build_request("GET", &idp.jwks_uri(), &[], empty()))
            .await
            .is_err()
    );
    let r = hanging.await.unwrap();
    assert!(
        r.is_err(),
        "in-flight request fails when the IdP stops: {r:?}"
    );
    drop(open);

    idp.set_mode(IdpMode::Serving);
    idp.restart().await;
    assert!(idp.is_running());
    assert_eq!(client.get(&idp.jwks_uri(), &[]).await.status, 200);
    assert_eq!(
        idp.jwks_hits(),
        3,
        "2 before the stop (one hung), 1 after restart"
    );

    // Stop/restart twice works too.
    idp.stop().await;
    assert!(tokio::net::TcpStream::connect(idp.addr()).await.is_err());
    idp.restart().await;
    assert_eq!(client.get(&idp.jwks_uri(), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_servers_stop_listening() {
    let idp = Idp::start(vec![]).await;
    let up = Upstream::start().await;
    let (a, b) = (idp.addr(), up.addr());
    drop(idp);
    drop(up);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(a).await.is_err());
    assert!(tokio::net::TcpStream::connect(b).await.is_err());
    let e = tokio::net::TcpStream::connect(closed_port())
        .await
        .expect_err("closed_port refuses");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_records_headers_and_body() {
    let up = Upstream::start().await;
    let client = Client::new();
    let r = client
        .request(
            "POST",
            &format!("{}/api/items?x=1&y=2", up.url()),
            &[("X-Dup", "one"), ("x-other", "o"), ("x-dup", "two")],
            full("hello body"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("yes"));
    assert_eq!(r.json(), json!({"path": "/api/items", "method": "POST"}));
    assert_eq!(r.header("x-body-len"), Some("10"));
    assert_eq!(
        r.header("x-body-sha256"),
        Some(sha256_hex(b"hello body").as_str())
    );

    assert_eq!(up.count(), 1);
    let rec = up.last();
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.path_and_query, "/api/items?x=1&y=2");
    assert_eq!(rec.header_all("x-dup"), vec!["one", "two"]);
    assert_eq!(rec.header("X-Other"), Some("o"));
    assert!(rec.headers.iter().all(|(k, _)| *k == k.to_lowercase()));
    assert_eq!(rec.body_len, 10);
    assert_eq!(rec.body_sha256, sha256_hex(b"hello body"));
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );

    let r = client.get(&format!("{}/x/status/503", up.url()), &[]).await;
    assert_eq!(r.status, 503);
    up.set_response_headers(&[("connection", "x-hop"), ("x-hop", "1")]);
    let r = client.get(&up.url(), &[]).await;
    assert_eq!(r.header("x-hop"), Some("1"));
    assert_eq!(up.count(), 3);
    assert_eq!(up.requests()[2].path_and_query, "/");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_streams_large_uploads_and_downloads() {
    let up = Upstream::start().await;
    let client = Client::new();
    const N: u64 = 50 * 1024 * 1024;
    let expected = download_sha256(N);

    let t = Instant::now();
    let r = client
        .request(
            "PUT",
            &format!("{}/upload", up.url()),
            &[],
            pattern_body(N, true),
        )
        .await;
    eprintln!("50 MiB upload took {:?}", t.elapsed());
    assert_eq!(r.header("x-body-sha256"), Some(expected.as_str()));
    let rec = up.last();
    assert_eq!(
        (rec.body_len, rec.body_sha256.as_str()),
        (N, expected.as_str())
    );
    assert_eq!(rec.header("content-length"), Some("52428800"));

    let odd = 100_003;
    client
        .request("POST", &up.url(), &[], pattern_body(odd, false))
        .await;
    let rec = up.last();
    assert_eq!(rec.header("transfer-encoding"), Some("chunked"));
    assert_eq!((rec.body_len, rec.body_sha256), (odd, download_sha256(odd)));

    let t = Instant::now();
    let r = client
        .get(&format!("{}/files/download/{N}", up.url()), &[])
        .await;
    eprintln!("50 MiB download took {:?}", t.elapsed());
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("52428800"));
    assert_eq!(r.body.len() as u64, N);
    assert_eq!(r.body_sha256(), expected);

    let r = client
        .get(&format!("{}/download/{odd}", up.url()), &[])
        .await;
    assert_eq!(r.body_sha256(), download_sha256(odd));
    let r = client.get(&format!("{}/download/0", up.url()), &[]).await;
    assert_eq!((r.status, r.body.len()), (200, 0));

    // The pattern is position-based: any slicing gives the same bytes.
    let whole = pattern_bytes(0, 1000);
    assert_eq!(pattern_bytes(13, 500), whole[13..513]);
    assert_eq!(sha256_hex(&whole), download_sha256(1000));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_delay_and_raw_http() {
    let up = Upstream::start_with_delay(Duration::from_millis(400)).await;
    let fast = Client::new().with_timeout(Duration::from_millis(100));
    let err = fast
        .try_send(build_request("GET", &up.url(), &[], empty()))
        .await
        .expect_err("delayed upstream times out a 100 ms client");
    assert!(err.contains("timed out"));
    assert_eq!(up.count(), 1, "request is recorded before the delay");
    up.set_delay(Duration::ZERO);

    // Keep-alive request: completes by content-length, well before 5 s.
    let t = Instant::now();
    let raw = raw_http(
        up.addr(),
        b"GET /a/../b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n",
    )
    .await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(raw_status(&raw), 200);
    assert!(raw.contains("x-upstream: yes"), "{raw}");
    let body = raw.split_once("\r\n\r\n").expect("head/body separator").1;
    let body: Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(body, json!({"path": "/a/../b", "method": "GET"}));
    let rec = up.last();
    assert_eq!(rec.path_and_query, "/a/../b");
    assert_eq!(
        rec.header_all("authorization"),
        vec!["Bearer a", "Bearer b"]
    );

    // Connection: close, chunked download, HEAD, and a malformed request.
    let raw = raw_http(
        up.addr(),
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 200);
    assert!(raw.contains("x-body-len: 3"), "{raw}");
    let t = Instant::now();
    let raw = raw_http(up.addr(), b"HEAD /download/10 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(raw_status(&raw), 200);
    assert!(raw.contains("content-length: 10"), "{raw}");
    let raw = raw_http(
        up.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 400);
    let raw = raw_http(
        up.addr(),
        b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
}
