//! Key-set behaviour users file bugs about: rotation, removed keys, unknown
//! kid floods, auth-service outages, discovery.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// A gateway in front of one IdP, with a `jwks:` block of our choosing.
async fn gateway(idp: &Idp, upstream: &Upstream, jwks: &str) -> TestGateway {
    gateway_with(
        idp,
        upstream,
        &format!("    jwks_uri: {}\n", idp.jwks_uri()),
        jwks,
    )
    .await
}

async fn gateway_with(idp: &Idp, upstream: &Upstream, source: &str, jwks: &str) -> TestGateway {
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
providers:
  - name: main
    issuer: {issuer}
{source}    audiences: [orders-api]
    algorithms: [RS256, ES256]
    jwks: {jwks}
upstreams:
  app: {{ url: "{up}" }}
routes:
  - {{ path: /api/**, upstream: app }}
"#,
        issuer = idp.issuer(),
        up = upstream.url(),
    );
    TestGateway::start(&yaml).await
}

fn claims(idp: &Idp, n: u32) -> Value {
    json!({"iss": idp.issuer(), "aud": "orders-api", "sub": format!("user-{n}"), "exp": now() + 300})
}

async fn status(gw: &TestGateway, token: &str) -> u16 {
    Client::new()
        .get_bearer(&gw.url("/api/x"), token, &[])
        .await
        .status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_kid_is_accepted_after_one_refetch() {
    let k1 = TestKey::rsa_shared(0, "k1");
    let k2 = TestKey::rsa_shared(1, "k2");
    let idp = Idp::start(vec![k1.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let gw = gateway(&idp, &upstream, "{ refresh_interval: 1h }").await;
    assert_eq!(idp.jwks_hits(), 1, "keys are fetched once before serving");
    assert_eq!(status(&gw, &k1.token(&claims(&idp, 1))).await, 200);

    idp.set_keys(vec![k1.public_jwk(), k2.public_jwk()]);
    assert_eq!(
        status(&gw, &k2.token(&claims(&idp, 2))).await,
        200,
        "rotated key refused"
    );
    assert_eq!(idp.jwks_hits(), 2, "exactly one refetch for the new kid");
    assert_eq!(status(&gw, &k2.token(&claims(&idp, 3))).await, 200);
    assert_eq!(idp.jwks_hits(), 2, "a known kid costs no fetch");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_kid_is_refused_after_the_next_refresh_even_from_the_cache() {
    let k1 = TestKey::rsa_shared(0, "k1");
    let k2 = TestKey::rsa_shared(1, "k2");
    let idp = Idp::start(vec![k1.public_jwk(), k2.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let gw = gateway(
        &idp,
        &upstream,
        "{ refresh_interval: 1s, unknown_kid_cooldown: 1h }",
    )
    .await;
    let old = k1.token(&claims(&idp, 1));
    assert_eq!(
        status(&gw, &old).await,
        200,
        "warms the verified-token cache"
    );

    idp.set_keys(vec![k2.public_jwk()]);
    let hits = idp.jwks_hits();
    eventually(
        "a background refresh happened",
        Duration::from_secs(5),
        || async { idp.jwks_hits() > hits },
    )
    .await;
    let resp = Client::new().get_bearer(&gw.url("/api/x"), &old, &[]).await;
    assert_eq!(resp.status, 401);
    assert!(
        resp.header("www-authenticate")
            .unwrap()
            .contains("token signing key unknown")
    );
    assert_eq!(status(&gw, &k2.token(&claims(&idp, 2))).await, 200);
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_made_up_kids_costs_at_most_one_fetch_per_cooldown() {
    let k1 = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![k1.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let gw = gateway(
        &idp,
        &upstream,
        "{ refresh_interval: 1h, unknown_kid_cooldown: 1h }",
    )
    .await;
    let mut tasks = Vec::new();
    for n in 0..100 {
        let token = k1.with_kid(&format!("made-up-{n}")).token(&claims(&idp, n));
        let url = gw.url("/api/x");
        tasks.push(tokio::spawn(async move {
            Client::new().get_bearer(&url, &token, &[]).await
        }));
    }
    for task in tasks {
        let resp = task.await.unwrap();
        assert_eq!(
            resp.status, 401,
            "an unknown kid is an invalid token, never a 5xx"
        );
        assert!(
            resp.header("www-authenticate")
                .unwrap()
                .contains("error=\"invalid_token\"")
        );
    }
    assert!(
        idp.jwks_hits() <= 2,
        "{} fetches for 100 made-up kids",
        idp.jwks_hits()
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn known_keys_keep_working_while_the_auth_service_is_down_or_broken() {
    let k1 = TestKey::rsa_shared(0, "k1");
    let mut idp = Idp::start(vec![k1.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let gw = gateway(
        &idp,
        &upstream,
        "{ refresh_interval: 1s, fetch_timeout: 1s }",
    )
    .await;
    for (n, mode) in [
        IdpMode::Failing500,
        IdpMode::Garbage,
        IdpMode::EmptySet,
        IdpMode::Hang,
    ]
    .into_iter()
    .enumerate()
    {
        idp.set_mode(mode);
        let hits = idp.jwks_hits();
        eventually(
            "the broken key set was fetched",
            Duration::from_secs(8),
            || async { idp.jwks_hits() > hits },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // A fresh token each time, so the verified-token cache cannot answer.
        assert_eq!(
            status(&gw, &k1.token(&claims(&idp, n as u32))).await,
            200,
            "{n}: keys were poisoned"
        );
    }
    idp.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        status(&gw, &k1.token(&claims(&idp, 99))).await,
        200,
        "keys lost when the IdP died"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_older_than_max_staleness_fail_closed_with_503() {
    let k1 = TestKey::rsa_shared(0, "k1");
    let mut idp = Idp::start(vec![k1.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let gw = gateway(
        &idp,
        &upstream,
        "{ refresh_interval: 1s, max_staleness: 2s }",
    )
    .await;
    assert_eq!(status(&gw, &k1.token(&claims(&idp, 1))).await, 200);
    idp.stop().await;
    let token = k1.token(&claims(&idp, 2));
    eventually("stale keys are refused", Duration::from_secs(6), || async {
        status(&gw, &token).await == 503
    })
    .await;
    let resp = Client::new()
        .get_bearer(&gw.url("/api/x"), &token, &[])
        .await;
    assert_eq!(resp.header("retry-after"), Some("5"));
    idp.restart().await;
    eventually(
        "keys come back with the IdP",
        Duration::from_secs(10),
        || async { status(&gw, &token).await == 200 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idp_down_at_start_gives_503_until_its_keys_arrive() {
    let k1 = TestKey::rsa_shared(0, "k1");
    let mut idp = Idp::start(vec![k1.public_jwk()]).await;
    idp.stop().await;
    let upstream = Upstream::start().await;
    let gw = gateway(&idp, &upstream, "{ refresh_interval: 1h }").await;
    let token = k1.token(&claims(&idp, 1));
    assert_eq!(
        status(&gw, &token).await,
        503,
        "no keys yet: cannot vouch for any token"
    );
    idp.restart().await;
    eventually(
        "the background retry loaded the keys",
        Duration::from_secs(10),
        || async { status(&gw, &token).await == 200 },
    )
    .await;
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_finds_the_jwks_uri_from_the_issuer() {
    let k1 = TestKey::ec("e1");
    let idp = Idp::start(vec![k1.public_jwk()]).await;
    let upstream = Upstream::start().await;
    let gw = gateway_with(&idp, &upstream, "    discovery: true\n", "{}").await;
    assert_eq!(idp.discovery_hits(), 1);
    assert_eq!(idp.jwks_hits(), 1);
    assert_eq!(status(&gw, &k1.token(&claims(&idp, 1))).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_control_max_age_never_lengthens_a_short_refresh_interval() {
    // max-age=60 with a 2 s interval: refresh every 2 s (this panicked once).
    let k1 = TestKey::rsa_shared(0, "k1");
    let idp = Idp::start(vec![k1.public_jwk()]).await;
    idp.set_cache_control(Some("public, max-age=60"));
    let upstream = Upstream::start().await;
    let gw = gateway(&idp, &upstream, "{ refresh_interval: 2s }").await;
    let hits = idp.jwks_hits();
    eventually(
        "a background refresh after about 2 s",
        Duration::from_secs(5),
        || async { idp.jwks_hits() > hits },
    )
    .await;
    let made_up = k1.with_kid("made-up").token(&claims(&idp, 1));
    assert_eq!(
        status(&gw, &made_up).await,
        401,
        "an unknown kid still gets a clean 401"
    );
    assert_eq!(status(&gw, &k1.token(&claims(&idp, 2))).await, 200);
}
