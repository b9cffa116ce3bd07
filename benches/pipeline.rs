//! The whole request pipeline in process: a client on one keep-alive
//! connection, the gateway, and an upstream answering "ok", all on loopback
//! in one runtime. Public route, and a bearer route with the verified-token
//! cache (RS256).
//!   cargo bench --bench pipeline

mod support;

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use support::{AUDIENCE, ISSUER, Signer};
use tokio::net::{TcpListener, TcpStream};

/// An upstream answering every request with `ok`, and `/jwks` with the key set.
async fn upstream(jwks: Bytes) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let jwks = jwks.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let body = if request.uri().path() == "/jwks" {
                        jwks.clone()
                    } else {
                        Bytes::from_static(b"ok")
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn client(addr: std::net::SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let signer = Signer::rs256();
    let token = signer.token("alice");
    let (gateway, mut sender) = rt.block_on(async {
        let upstream = upstream(support::jwks(&[&signer]).into()).await;
        let yaml = format!(
            "listen: 127.0.0.1:0
providers:
  - {{ name: bench, issuer: {ISSUER}, jwks_uri: \"http://{upstream}/jwks\", audiences: [{AUDIENCE}], algorithms: [RS256] }}
upstreams:
  app: {{ url: \"http://{upstream}\" }}
routes:
  - {{ path: /public, upstream: app, auth: none }}
  - {{ path: /api/**, upstream: app, scopes: [orders] }}
"
        );
        let config = portcullis::config::from_str(&yaml, "bench.yaml", |_| None).expect("config");
        let gateway = portcullis::Gateway::start(config).await.expect("gateway");
        let sender = client(gateway.local_addr().expect("listening")).await;
        (gateway, sender)
    });
    let authorization = format!("Bearer {token}");
    let mut group = c.benchmark_group("pipeline");
    for (label, path, auth) in [
        ("public", "/public", None),
        ("rs256-cached", "/api/orders", Some(&authorization)),
    ] {
        group.bench_function(label, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut request = Request::get(path).header("host", "bench");
                    if let Some(auth) = auth {
                        request = request.header("authorization", auth.as_str());
                    }
                    let request = request.body(Empty::new()).expect("request");
                    let response = sender.send_request(request).await.expect("response");
                    assert_eq!(response.status(), 200);
                    black_box(response.into_body().collect().await.expect("body"));
                })
            })
        });
    }
    group.finish();
    drop(gateway);
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
