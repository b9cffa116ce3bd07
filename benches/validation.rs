//! Token validation: RS256, ES256 and EdDSA, with a signature check on every
//! request (cache off) and from the verified-token cache.
//!   cargo bench --bench validation

mod support;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use portcullis::auth_service::LocalKeys;
use portcullis::authn::provider::KeySource;
use portcullis::authn::{Authenticator, Stats};
use portcullis::fetch::Fetcher;
use portcullis::metrics::Metrics;
use portcullis::routes::Access;
use support::{AUDIENCE, ISSUER, Signer};

/// An authenticator over a fixed key set, and the requirement of a route.
fn authenticator(
    rt: &tokio::runtime::Runtime,
    signers: &[&Signer],
    cache_entries: u64,
) -> (Authenticator, portcullis::routes::RouteTable) {
    let yaml = format!(
        "listen: 127.0.0.1:0
providers:
  - name: bench
    issuer: {ISSUER}
    jwks_uri: http://127.0.0.1:9/jwks
    audiences: [{AUDIENCE}]
    algorithms: [RS256, ES256, EdDSA]
upstreams:
  app: {{ url: \"http://127.0.0.1:9\" }}
routes:
  - {{ path: /api/**, upstream: app, scopes: [orders] }}
"
    );
    let config = portcullis::config::from_str(&yaml, "bench.yaml", |_| None).expect("config");
    let mut providers = config.providers;
    // The key set is held in process, as the built-in service's is.
    providers[0].keys = KeySource::AuthService;
    let local = Arc::new(LocalKeys::from_jwks(support::jwks(signers).into()));
    let metrics = Metrics::new().expect("metrics");
    let authn = Authenticator::new(
        providers,
        cache_entries,
        &Fetcher::new(),
        Some(local),
        Stats::new(&metrics),
        None,
    );
    rt.block_on(authn.load_keys());
    (authn, config.routes)
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
    headers.insert(http::header::AUTHORIZATION, value);
    headers
}

fn validation(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let signers = [Signer::rs256(), Signer::es256(), Signer::eddsa()];
    let all: Vec<&Signer> = signers.iter().collect();
    for (label, cache) in [("cold", 0), ("cached", 10_000)] {
        let (authn, routes) = authenticator(&rt, &all, cache);
        let route = routes.find(&Method::GET, "/api/x").expect("route");
        let Access::Protected(protected) = &route.access else {
            panic!("a protected route");
        };
        let requirement = &protected.requirement;
        let mut group = c.benchmark_group(format!("validate/{label}"));
        for signer in &signers {
            let headers = bearer(&signer.token("alice"));
            group.bench_function(signer.alg(), |b| {
                b.to_async(&rt).iter(|| async {
                    let ok = authn.authenticate(&headers, requirement).await.is_ok();
                    assert!(ok);
                    black_box(ok)
                })
            });
        }
        // A flood of forged tokens: a valid header and claims, a wrong
        // signature; never cached, so each costs a signature check.
        let forged = {
            let token = signers[0].token("mallory");
            let cut = token.rfind('.').map_or(token.len(), |i| i + 1);
            format!("{}{}", &token[..cut], "A".repeat(342))
        };
        let headers = bearer(&forged);
        group.bench_function("RS256-bad-signature", |b| {
            b.to_async(&rt).iter(|| async {
                let refused = authn.authenticate(&headers, requirement).await.is_err();
                assert!(refused);
                black_box(refused)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, validation);
criterion_main!(benches);
