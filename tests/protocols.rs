//! Protocol edges: HTTP/2 with prior knowledge (h2c) to an HTTP/1.1
//! upstream, HTTP/1.0 clients.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::*;

async fn world() -> (Idp, Upstream, TestGateway, String) {
    let key = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![key.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nproviders:\n{}upstreams:\n  app: {{ url: \"{}\" }}\nroutes:\n  - {{ path: /public/**, upstream: app, auth: none }}\n  - {{ path: /api/**, upstream: app, forward_claims: {{ sub: X-Sub }} }}\n",
        provider_yaml("main", &idp.issuer(), &idp.jwks_uri()),
        upstream.url()
    );
    let gateway = TestGateway::start(&yaml).await;
    let token = key.token(
        &json!({"iss": idp.issuer(), "aud": "orders-api", "sub": "h2-user", "exp": now() + 60}),
    );
    (idp, upstream, gateway, token)
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_requests_are_authenticated_and_forwarded_as_http_1_1() {
    let (_idp, upstream, gateway, token) = world().await;
    let stream = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);

    let request = |path: &str, token: Option<&str>| {
        let mut builder = http::Request::get(format!("http://api.example:8080{path}"));
        if let Some(t) = token {
            builder = builder.header("authorization", format!("Bearer {t}"));
        }
        builder.body(Empty::<Bytes>::new()).unwrap()
    };
    let response = sender
        .send_request(request("/api/x?q=1", Some(&token)))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(!body.is_empty());
    let got = upstream.last();
    assert_eq!(got.path_and_query, "/api/x?q=1");
    assert_eq!(got.header("x-sub"), Some("h2-user"));
    assert_eq!(got.header("x-forwarded-host"), Some("api.example:8080"));

    let refused = sender.send_request(request("/api/x", None)).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        upstream.count(),
        1,
        "the refused h2 request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_1_0_clients_are_served() {
    let (_idp, upstream, gateway, _token) = world().await;
    let resp = raw_http(
        gateway.addr(),
        b"GET /public/x HTTP/1.0\r\nHost: gw\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(upstream.last().path_and_query, "/public/x");
}
