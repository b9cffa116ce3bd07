//! The request path's per-request work besides tokens: canonical paths,
//! route matching over 10 and 1,000 routes, and header rewriting.
//!   cargo bench --bench routing

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use portcullis::config::Config;
use portcullis::headers::{self, ClientInfo};

/// A config with `n` routes: a few realistic ones, then `/svc{i}/…` prefixes.
fn config(n: usize) -> Config {
    let mut yaml = String::from(
        "listen: 127.0.0.1:0
providers:
  - { name: main, issuer: https://id.example.com, jwks_uri: http://127.0.0.1:9/jwks, audiences: [api], algorithms: [RS256] }
upstreams:
  app: { url: \"http://127.0.0.1:9\" }
routes:
  - { path: /health, methods: [GET], upstream: app, auth: none }
  - { path: \"/users/{id}/orders\", methods: [GET], upstream: app, auth: none }
",
    );
    for i in 2..n.saturating_sub(1) {
        yaml.push_str(&format!(
            "  - {{ path: /svc{i}/**, upstream: app, forward_claims: {{ sub: X-Sub-{i} }} }}\n"
        ));
    }
    yaml.push_str("  - { path: /api/**, upstream: app, auth: none }\n");
    portcullis::config::from_str(&yaml, "bench.yaml", |_| None).expect("config")
}

fn paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("canonicalize");
    for (label, path) in [
        ("clean", "/api/v1/orders/12345/items"),
        ("dot-segments", "/api/v1/../v1/./orders//12345/%7Eitems"),
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(label), path, |b, path| {
            b.iter(|| black_box(portcullis::path::canonicalize(black_box(path)).is_ok()))
        });
    }
    group.finish();
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for n in [10, 1000] {
        let config = config(n);
        // The last route: the worst case for first-match.
        group.bench_function(BenchmarkId::new("last-of", n), |b| {
            b.iter(|| {
                black_box(
                    config
                        .routes
                        .find(&Method::GET, black_box("/api/v1/orders/12345"))
                        .is_some(),
                )
            })
        });
    }
    group.finish();
}

fn header_rewrite(c: &mut Criterion) {
    let config = config(10);
    let route = config.routes.find(&Method::GET, "/api/x").expect("route");
    let client = ClientInfo {
        forwarded_for: HeaderValue::from_static("127.0.0.1"),
        proto: HeaderValue::from_static("http"),
        peer: None,
        tunnels: None,
        upstream: Default::default(),
        caller: "ip:127.0.0.1".into(),
    };
    let mut incoming = HeaderMap::new();
    for (name, value) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("authorization", "Bearer abc.def.ghi"),
        ("x-forwarded-for", "10.0.0.1"),
        ("connection", "keep-alive"),
        ("content-type", "application/json"),
        ("x-request-id", "abc-123"),
    ] {
        incoming.insert(
            http::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    c.bench_function("headers/to_upstream", |b| {
        b.iter_batched_ref(
            || incoming.clone(),
            |headers| {
                headers::to_upstream(
                    headers,
                    route,
                    None,
                    &client,
                    &config.identity_headers,
                    None,
                );
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, paths, matching, header_rewrite);
criterion_main!(benches);
