//! DPoP (RFC 9449) end to end, on real sockets: a gateway on 127.0.0.1:0
//! (plain http, so a proof's `htu` is `http://127.0.0.1:PORT/path`) in front
//! of a recording upstream, with tokens from a real JWKS server; then the
//! built-in auth service issuing DPoP-bound tokens to a gateway in the same
//! process.
//!
//! Every refusal is checked three ways: the status, the exact
//! `WWW-Authenticate` challenge (with the JSON body saying the same), and
//! that the request never reached the upstream.
//!
//! The proof helper ([`DpopKey`]) signs with aws-lc-rs directly and computes
//! the RFC 7638 thumbprint by hand, independently of `src/dpop.rs`; it is
//! checked against RFC 9449's own example key.

mod support;

use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::*;

/// `algs` of every DPoP challenge under the default `dpop.algorithms`.
const DEFAULT_ALGS: &str = "ES256 ES384 EdDSA PS256 RS256";

// ---------------------------------------------------------------------------
// Proofs.

/// A client's DPoP key, signing proofs with its public JWK in the header.
struct DpopKey {
    pair: EcdsaKeyPair,
    alg: &'static str,
    /// The public JWK as a proof carries it: `kty`, `crv`, `x`, `y` only.
    jwk: Value,
}

// === impl DpopKey ===

impl DpopKey {
    /// A fresh P-256 key (ES256).
    fn p256() -> DpopKey {
        DpopKey::generate(&ECDSA_P256_SHA256_FIXED_SIGNING, "ES256", "P-256")
    }

    /// A fresh P-384 key (ES384).
    fn p384() -> DpopKey {
        DpopKey::generate(&ECDSA_P384_SHA384_FIXED_SIGNING, "ES384", "P-384")
    }

    fn generate(signing: &'static EcdsaSigningAlgorithm, alg: &'static str, crv: &str) -> DpopKey {
        let pair = EcdsaKeyPair::generate(signing).expect("generate EC key");
        // Uncompressed SEC1 point: 0x04 || x || y, both of the curve's size.
        let point = pair.public_key().as_ref();
        let size = (point.len() - 1) / 2;
        let jwk = json!({
            "kty": "EC",
            "crv": crv,
            "x": b64(&point[1..1 + size]),
            "y": b64(&point[1 + size..]),
        });
        DpopKey { pair, alg, jwk }
    }

    /// The RFC 7638 thumbprint, as a token's `cnf.jkt` carries it.
    fn jkt(&self) -> String {
        let member = |name: &str| self.jwk[name].as_str().expect("jwk member").to_owned();
        ec_thumbprint(&member("crv"), &member("x"), &member("y"))
    }

    /// `{"typ": "dpop+jwt", "alg": …, "jwk": …}`.
    fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk})
    }

    /// A compact JWS of `claims` under [`DpopKey::header`].
    fn sign(&self, claims: &Value) -> String {
        self.sign_with(&self.header(), claims)
    }

    /// A compact JWS of `claims` under `header`, signed with this key.
    fn sign_with(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("ECDSA sign");
        format!("{input}.{}", b64(sig.as_ref()))
    }

    /// A fresh proof (new `jti`, `iat` now) for `htm htu`, with `ath` when
    /// a token accompanies it.
    fn proof(&self, htm: &str, htu: &str, token: Option<&str>) -> String {
        self.sign(&proof_claims(htm, htu, token))
    }
}

/// A proof's claims `{jti, htm, htu, iat[, ath]}` with a random `jti` and `iat` now.
fn proof_claims(htm: &str, htu: &str, token: Option<&str>) -> Value {
    let mut claims = json!({"jti": jti(), "htm": htm, "htu": htu, "iat": now()});
    if let Some(token) = token {
        claims["ath"] = json!(ath(token));
    }
    claims
}

/// RFC 7638: SHA-256 of the required members in lexicographic order, no
/// whitespace; base64url.
fn ec_thumbprint(crv: &str, x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#);
    b64(sha256(canonical.as_bytes()))
}

/// RFC 9449 §4.2: base64url(SHA-256(access token)).
fn ath(token: &str) -> String {
    b64(sha256(token.as_bytes()))
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// 128 random bits, base64url.
fn jti() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("random jti");
    b64(bytes)
}

/// The claims of a compact JWS (not verified).
fn jwt_claims(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWS has a payload");
    let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

/// The exact challenge of a refused token or proof.
fn challenge(scheme: &str, error: &str, description: &str, algs: Option<&str>) -> String {
    let algs = algs.map_or(String::new(), |a| format!(", algs=\"{a}\""));
    format!(
        r#"{scheme} realm="portcullis", error="{error}", error_description="{description}"{algs}"#
    )
}

/// A `DPoP` challenge for a refused proof, under the default algorithms.
fn proof_refused(description: &str) -> String {
    challenge(
        "DPoP",
        "invalid_dpop_proof",
        description,
        Some(DEFAULT_ALGS),
    )
}

/// Every `WWW-Authenticate` value of `resp`.
fn challenges(resp: &Resp) -> Vec<&str> {
    resp.headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().expect("ASCII challenge"))
        .collect()
}

// ---------------------------------------------------------------------------
// A gateway world: IdP, upstream, gateway.

/// An IdP signing ES256 tokens, an upstream, and a gateway with
/// `/api/**` (bearer, DPoP optional) and `/pay/**` (`dpop: required`).
struct World {
    issuer_key: TestKey,
    idp: Idp,
    upstream: Upstream,
    gw: TestGateway,
    client: Client,
}

// === impl World ===

impl World {
    /// The default `dpop:` settings.
    async fn start() -> World {
        World::with_dpop("").await
    }

    /// `dpop_section` is a whole top-level `dpop:` block (or empty).
    async fn with_dpop(dpop_section: &str) -> World {
        init_tracing();
        let issuer_key = TestKey::ec("issuer-1");
        let idp = Idp::start(vec![issuer_key.public_jwk()]).await;
        let upstream = Upstream::start().await;
        let yaml = format!(
            "listen: 127.0.0.1:0\n{dpop_section}providers:\n{}upstreams:\n  app: {{ url: \"{}\", timeout: 5s }}\nroutes:\n  - {{ path: /api/**, upstream: app }}\n  - {{ path: /pay/**, upstream: app, dpop: required }}\n",
            provider_yaml("main", &idp.issuer(), &idp.jwks_uri()),
            upstream.url()
        );
        let gw = TestGateway::start(&yaml).await;
        World {
            issuer_key,
            idp,
            upstream,
            gw,
            client: Client::new().with_timeout(Duration::from_secs(10)),
        }
    }

    /// A valid access token, bound to `jkt` (`cnf.jkt`) when given.
    fn token(&self, jkt: Option<&str>) -> String {
        let mut claims = json!({
            "iss": self.idp.issuer(),
            "aud": "orders-api",
            "sub": "alice",
            "iat": now(),
            "exp": now() + 300,
        });
        if let Some(jkt) = jkt {
            claims["cnf"] = json!({ "jkt": jkt });
        }
        self.issuer_key.token(&claims)
    }

    /// The URL a proof for `path` names: `http://127.0.0.1:PORT{path}`.
    fn htu(&self, path: &str) -> String {
        self.gw.url(path)
    }

    /// `method path` with `authorization` (a whole header value) and one
    /// `DPoP` header per proof.
    async fn send(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        proofs: &[&str],
    ) -> Resp {
        let mut headers: Vec<(&str, &str)> = authorization
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        headers.extend(proofs.iter().map(|p| ("dpop", *p)));
        self.client
            .request(method, &self.gw.url(path), &headers, empty())
            .await
    }

    /// `GET path` with `Authorization: DPoP {token}` and `proofs`.
    async fn get_dpop(&self, path: &str, token: &str, proofs: &[&str]) -> Resp {
        self.send("GET", path, Some(&format!("DPoP {token}")), proofs)
            .await
    }

    /// `GET path` with `Authorization: DPoP {token}` and `headers` (owned,
    /// so the future borrows only `self` and `token`).
    async fn get_dpop_with(&self, path: &str, token: &str, headers: Vec<(String, String)>) -> Resp {
        let auth = format!("DPoP {token}");
        let mut all = vec![("authorization", auth.as_str())];
        all.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.client
            .request("GET", &self.gw.url(path), &all, empty())
            .await
    }

    /// Assert that `resp` is a 401 with exactly `want` as its challenge, a
    /// body saying the same, and that the upstream saw nothing since `before`
    /// requests.
    #[track_caller]
    fn assert_refused(&self, resp: &Resp, before: usize, want: &str, case: &str) {
        assert_eq!(resp.status, 401, "{case}: {}", resp.text());
        assert_eq!(challenges(resp), [want], "{case}");
        let body = resp.json();
        let error = want
            .split("error=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next());
        if let Some(error) = error {
            assert_eq!(body["error"], error, "{case}: {body}");
            let description = want
                .split("error_description=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next());
            assert_eq!(
                body["error_description"].as_str(),
                description,
                "{case}: {body}"
            );
        }
        assert_eq!(
            self.upstream.count(),
            before,
            "{case}: a refused request reached the upstream"
        );
    }
}

// ---------------------------------------------------------------------------
// The helper itself.

#[test]
fn the_thumbprint_helper_gives_rfc_9449s_example_jkt() {
    // RFC 9449 §4.1 (the proof's key) and §6.1 (its `cnf.jkt`).
    assert_eq!(
        ec_thumbprint(
            "P-256",
            "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
            "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"
        ),
        "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    );
}

// ---------------------------------------------------------------------------
// The gateway.

#[tokio::test(flavor = "multi_thread")]
async fn a_bound_token_with_a_valid_proof_is_forwarded_with_both_headers() {
    let w = World::start().await;
    let key = DpopKey::p256();
    let token = w.token(Some(&key.jkt()));
    let proof = key.proof("GET", &w.htu("/api/orders"), Some(&token));

    let resp = w.get_dpop("/api/orders", &token, &[&proof]).await;

    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(w.upstream.count(), 1);
    // The upstream sees the credential as sent: `Authorization: DPoP …` and
    // the proof (neither is stripped unless `strip_authorization: true`).
    let seen = w.upstream.last();
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("DPoP {token}"))
    );
    assert_eq!(seen.header_all("dpop"), [proof.as_str()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proof_by_another_key_is_refused_although_its_signature_is_valid() {
    let w = World::start().await;
    let (holder, thief) = (DpopKey::p256(), DpopKey::p256());
    let token = w.token(Some(&holder.jkt()));
    let proof = thief.proof("GET", &w.htu("/api/x"), Some(&token));

    let resp = w.get_dpop("/api/x", &token, &[&proof]).await;

    w.assert_refused(
        &resp,
        0,
        &proof_refused("DPoP proof key does not match the token"),
        "thief's proof",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proof_for_another_method_or_url_is_refused() {
    let w = World::start().await;
    let key = DpopKey::p256();
    let token = w.token(Some(&key.jkt()));
    let port = w.gw.addr().port();
    let htm = "DPoP proof htm does not match the request";
    let htu = "DPoP proof htu does not match the request";
    let cases: &[(&str, &str, String, &str)] = &[
        (
            "should fail because the proof is for POST",
            "POST",
            w.htu("/api/x"),
            htm,
        ),
        (
            "should fail because the proof is for another path",
            "GET",
            w.htu("/api/y"),
            htu,
        ),
        (
            "should fail because the proof is for another host",
            "GET",
            format!("http://localhost:{port}/api/x"),
            htu,
        ),
        (
            "should fail because the proof is for https",
            "GET",
            format!("https://127.0.0.1:{port}/api/x"),
            htu,
        ),
        (
            "should fail because the proof is for another port",
            "GET",
            format!("http://127.0.0.1:{}/api/x", port.wrapping_add(1)),
            htu,
        ),
    ];
    for (case, method, url, description) in cases {
        let proof = key.proof(method, url, Some(&token));
        let resp = w.get_dpop("/api/x", &token, &[&proof]).await;
        w.assert_refused(&resp, 0, &proof_refused(description), case);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proof_issued_too_long_ago_or_in_the_future_is_refused() {
    let w = World::start().await;
    let key = DpopKey::p256();
    let token = w.token(Some(&key.jkt()));
    // Defaults: max_age 60 s, leeway 5 s.
    let cases = [
        (
            "should fail because iat is 120 s old",
            -120,
            "DPoP proof too old",
        ),
        (
            "should fail because iat is 60 s ahead",
            60,
            "DPoP proof issued in the future",
        ),
    ];
    for (case, offset, description) in cases {
        let mut claims = proof_claims("GET", &w.htu("/api/x"), Some(&token));
        claims["iat"] = json!(now() + offset);
        let resp = w.get_dpop("/api/x", &token, &[&key.sign(&claims)]).await;
        w.assert_refused(&resp, 0, &proof_refused(description), case);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_proof_is_refused() {
    let w = World::start().await;
    let key = DpopKey::p256();
    let token = w.token(Some(&key.jkt()));
    let proof = key.proof("GET", &w.htu("/api/x"), Some(&token));

    let first = w.get_dpop("/api/x", &token, &[&proof]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let again = w.get_dpop("/api/x", &token, &[&proof]).await;

    w.assert_refused(
        &again,
        1,
        &proof_refused("DPoP proof replayed"),
        "the same proof twice",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proof_without_ath_or_with_another_tokens_ath_is_refused() {
    let w = World::start().await;
    let key = DpopKey::p256();
    let token = w.token(Some(&key.jkt()));
    let other = w.token(Some(&key.jkt()));
    // Same claims, but ECDSA signatures are randomised: another token.
    assert_ne!(token, other);
    let cases = [
        (
            "should fail because ath is missing",
            key.proof("GET", &w.htu("/api/x"), None),
            "DPoP proof ath missing",
        ),
        (
            "should fail because ath is another token's",
            key.proof("GET", &w.htu("/api/x"), Some(&other)),
            "DPoP proof ath does not match the access token",
        ),
    ];
    for (case, proof, description) in &cases {
        let resp = w.get_dpop("/api/x", &token, &[proof]).await;
        w.assert_refused(&resp, 0, &proof_refused(description), case);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dpop_scheme_needs_exactly_one_proof() {
    let w = World::start().await;
    let key = DpopKey::p256();
    let token = w.token(Some(&key.jkt()));
    let one = key.proof("GET", &w.htu("/api/x"), Some(&token));
    let two = key.proof("GET", &w.htu("/api/x"), Some(&token));

    let none = w.get_dpop("/api/x", &token, &[]).await;
    w.assert_refused(
        &none,
        0,
        &proof_refused("DPoP proof missing"),
        "no DPoP header",
    );
    let both = w.get_dpop("/api/x", &token, &[&one, &two]).await;
    w.assert_refused(
        &both,
        0,
        &proof_refused("multiple DPoP proofs"),
        "two DPoP headers",
    );
    // Neither refusal used up a proof.
    let resp = w.get_dpop("/api/x", &token, &[&one]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bound_token_cannot_be_downgraded_to_bearer_nor_an_unbound_one_upgraded() {
    let w = World::start().await;
    let key = DpopKey::p256();
    let bound = w.token(Some(&key.jkt()));
    let unbound = w.token(None);

    // A valid proof does not make the Bearer scheme acceptable. The request
    // used `Bearer` on a route that also takes plain bearer tokens, so the
    // challenge is in the Bearer scheme (README "Responses": DPoP challenges
    // go to requests that used DPoP and to `dpop: required` routes).
    let proof = key.proof("GET", &w.htu("/api/x"), Some(&bound));
    let resp = w
        .send("GET", "/api/x", Some(&format!("Bearer {bound}")), &[&proof])
        .await;
    w.assert_refused(
        &resp,
        0,
        &challenge(
            "DPoP",
            "invalid_token",
            "DPoP-bound token must use the DPoP scheme",
            Some(DEFAULT_ALGS),
        ),
        "bound token as Bearer with a proof",
    );
    let resp = w.client.get_bearer(&w.gw.url("/api/x"), &bound, &[]).await;
    w.assert_refused(
        &resp,
        0,
        &challenge(
            "DPoP",
            "invalid_token",
            "DPoP-bound token must use the DPoP scheme",
            Some(DEFAULT_ALGS),
        ),
        "bound token as Bearer without a proof",
    );

    let unbound_proof = key.proof("GET", &w.htu("/api/x"), Some(&unbound));
    let resp = w.get_dpop("/api/x", &unbound, &[&unbound_proof]).await;
    w.assert_refused(
        &resp,
        0,
        &challenge(
            "DPoP",
            "invalid_token",
            "token is not DPoP-bound",
            Some(DEFAULT_ALGS),
        ),
        "unbound token as DPoP",
    );

    // The downgrade was refused before the proof was judged: it is still fresh.
    let resp = w.get_dpop("/api/x", &bound, &[&proof]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(w.upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dpop_required_route_takes_only_bound_tokens_with_a_proof() {
    let w = World::start().await;
    let key = DpopKey::p256();
    let bound = w.token(Some(&key.jkt()));
    let unbound = w.token(None);

    let resp = w
        .client
        .get_bearer(&w.gw.url("/pay/x"), &unbound, &[])
        .await;
    w.assert_refused(
        &resp,
        0,
        &challenge(
            "DPoP",
            "invalid_token",
            "DPoP-bound token required",
            Some(DEFAULT_ALGS),
        ),
        "unbound bearer token on /pay",
    );
    let resp = w.client.get_bearer(&w.gw.url("/pay/x"), &bound, &[]).await;
    w.assert_refused(
        &resp,
        0,
        &challenge(
            "DPoP",
            "invalid_token",
            "DPoP-bound token must use the DPoP scheme",
            Some(DEFAULT_ALGS),
        ),
        "bound token as Bearer on /pay",
    );
    let resp = w.send("GET", "/pay/x", None, &[]).await;
    w.assert_refused(
        &resp,
        0,
        &format!(r#"DPoP realm="portcullis", algs="{DEFAULT_ALGS}""#),
        "no Authorization on /pay",
    );
    assert_eq!(resp.json()["error"], "unauthorized");
    // The same on the optional route is a Bearer challenge.
    let resp = w.send("GET", "/api/x", None, &[]).await;
    w.assert_refused(
        &resp,
        0,
        r#"Bearer realm="portcullis""#,
        "no Authorization on /api",
    );

    let proof = key.proof("GET", &w.htu("/pay/x"), Some(&bound));
    let resp = w.get_dpop("/pay/x", &bound, &[&proof]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(w.upstream.count(), 1);
    assert_eq!(w.upstream.last().path_and_query, "/pay/x");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_token_is_still_held_to_its_proof() {
    let w = World::start().await;
    let key = DpopKey::p256();
    let token = w.token(Some(&key.jkt()));
    for n in 1..=2 {
        let proof = key.proof("GET", &w.htu("/api/x"), Some(&token));
        let resp = w.get_dpop("/api/x", &token, &[&proof]).await;
        assert_eq!(resp.status, 200, "request {n}: {}", resp.text());
    }

    let resp = w.get_dpop("/api/x", &token, &[]).await;
    w.assert_refused(
        &resp,
        2,
        &proof_refused("DPoP proof missing"),
        "cached token, no proof",
    );
    let resp = w.client.get_bearer(&w.gw.url("/api/x"), &token, &[]).await;
    w.assert_refused(
        &resp,
        2,
        &challenge(
            "DPoP",
            "invalid_token",
            "DPoP-bound token must use the DPoP scheme",
            Some(DEFAULT_ALGS),
        ),
        "cached token as Bearer",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_query_and_fragment_play_no_part_in_htu() {
    let w = World::start().await;
    let key = DpopKey::p256();
    let token = w.token(Some(&key.jkt()));
    let cases = [
        ("/api/x?a=1", w.htu("/api/x")),
        ("/api/x?a=1", w.htu("/api/x?b=2#frag")),
        ("/api/x", w.htu("/api/x#frag")),
    ];
    for (n, (path, htu)) in cases.iter().enumerate() {
        let proof = key.proof("GET", htu, Some(&token));
        let resp = w.get_dpop(path, &token, &[&proof]).await;
        assert_eq!(resp.status, 200, "{path} with htu {htu}: {}", resp.text());
        assert_eq!(w.upstream.count(), n + 1);
        assert_eq!(w.upstream.last().path_and_query, *path, "forwarded as sent");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dpop_max_age_from_config_bounds_the_proofs_age() {
    // leeway 1 s, so that the oldest iat accepted is now - 6 s; with the
    // default leeway of 5 s an iat of now - 10 s would sit on the boundary.
    let w = World::with_dpop("dpop:\n  max_age: 5s\n  leeway: 1s\n").await;
    let key = DpopKey::p256();
    let token = w.token(Some(&key.jkt()));
    let aged = |age: i64| {
        let mut claims = proof_claims("GET", &w.htu("/api/x"), Some(&token));
        claims["iat"] = json!(now() - age);
        key.sign(&claims)
    };

    let resp = w.get_dpop("/api/x", &token, &[&aged(10)]).await;
    w.assert_refused(
        &resp,
        0,
        &proof_refused("DPoP proof too old"),
        "10 s old (valid under the default 60 s)",
    );
    let resp = w.get_dpop("/api/x", &token, &[&aged(2)]).await;
    assert_eq!(resp.status, 200, "2 s old: {}", resp.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn dpop_algorithms_from_config_limit_the_proofs_and_the_challenge() {
    let w = World::with_dpop("dpop:\n  algorithms: [ES384]\n").await;
    let (es256, es384) = (DpopKey::p256(), DpopKey::p384());

    let token = w.token(Some(&es256.jkt()));
    let proof = es256.proof("GET", &w.htu("/api/x"), Some(&token));
    let resp = w.get_dpop("/api/x", &token, &[&proof]).await;
    w.assert_refused(
        &resp,
        0,
        &challenge(
            "DPoP",
            "invalid_dpop_proof",
            "DPoP proof algorithm not allowed",
            Some("ES384"),
        ),
        "ES256 proof when only ES384 is allowed",
    );
    let resp = w.send("GET", "/pay/x", None, &[]).await;
    w.assert_refused(
        &resp,
        0,
        r#"DPoP realm="portcullis", algs="ES384""#,
        "no Authorization on /pay",
    );

    let token = w.token(Some(&es384.jkt()));
    let proof = es384.proof("GET", &w.htu("/api/x"), Some(&token));
    let resp = w.get_dpop("/api/x", &token, &[&proof]).await;
    assert_eq!(resp.status, 200, "ES384 proof: {}", resp.text());
}

// ---------------------------------------------------------------------------
// Whose URL a proof names: `dpop.origins`, absolute-form targets.

#[tokio::test(flavor = "multi_thread")]
async fn with_dpop_origins_a_proof_must_name_a_configured_origin_whatever_the_host() {
    let w = World::with_dpop("dpop:\n  origins: [\"https://api.example.com\"]\n").await;
    let key = DpopKey::p256();
    let token = w.token(Some(&key.jkt()));
    // `Host` is sent as given (the client sets it only when absent).
    let send = |host: Option<&'static str>, proof: String| {
        let mut headers = vec![("dpop".to_owned(), proof)];
        headers.extend(host.map(|h| ("host".to_owned(), h.to_owned())));
        w.get_dpop_with("/api/x", &token, headers)
    };

    // Plain http on 127.0.0.1:PORT, yet the proof names the public origin.
    let public = "https://api.example.com/api/x";
    let resp = send(None, key.proof("GET", public, Some(&token))).await;
    assert_eq!(resp.status, 200, "the configured origin: {}", resp.text());
    assert_eq!(w.upstream.count(), 1);
    let resp = send(Some("evil.example"), key.proof("GET", public, Some(&token))).await;
    assert_eq!(resp.status, 200, "any Host: {}", resp.text());
    assert_eq!(w.upstream.count(), 2);

    let htu = proof_refused("DPoP proof htu does not match the request");
    let resp = send(None, key.proof("GET", &w.htu("/api/x"), Some(&token))).await;
    w.assert_refused(&resp, 2, &htu, "a proof for the request's own Host");
    let resp = send(
        Some("evil.example"),
        key.proof("GET", "http://evil.example/api/x", Some(&token)),
    )
    .await;
    w.assert_refused(&resp, 2, &htu, "a proof for a spoofed Host");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_dpop_origins_an_absolute_form_target_wins_over_host() {
    let w = World::start().await;
    let key = DpopKey::p256();
    let token = w.token(Some(&key.jkt()));
    let addr = w.gw.addr();
    // RFC 9112 §3.2.2: with an absolute-form target, `Host` is ignored.
    let send = |proof: String| {
        let request = format!(
            "GET http://{addr}/api/x HTTP/1.1\r\nHost: other.example\r\nAuthorization: DPoP {token}\r\nDPoP: {proof}\r\nConnection: close\r\n\r\n"
        );
        async move { raw_http(addr, request.as_bytes()).await }
    };

    let answer = send(key.proof("GET", &format!("http://{addr}/api/x"), Some(&token))).await;
    assert_eq!(raw_status(&answer), 200, "the target's authority: {answer}");
    assert_eq!(w.upstream.count(), 1);
    assert_eq!(w.upstream.last().path_and_query, "/api/x");

    let answer = send(key.proof("GET", "http://other.example/api/x", Some(&token))).await;
    assert_eq!(raw_status(&answer), 401, "the Host header's: {answer}");
    let challenge = format!(
        "www-authenticate: {}",
        proof_refused("DPoP proof htu does not match the request")
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&challenge.to_ascii_lowercase()),
        "{answer}"
    );
    assert_eq!(
        w.upstream.count(),
        1,
        "a refused request reached the upstream"
    );
}

// ---------------------------------------------------------------------------
// The replay cache.

#[tokio::test(flavor = "multi_thread")]
async fn a_full_replay_cache_refuses_new_proofs_with_503_but_still_catches_replays() {
    let w = World::with_dpop("dpop: { replay_cache_entries: 2 }\n").await;
    let key = DpopKey::p256();
    let token = w.token(Some(&key.jkt()));
    let fresh = || key.proof("GET", &w.htu("/api/x"), Some(&token));
    let first = fresh();

    for (n, proof) in [first.clone(), fresh()].iter().enumerate() {
        let resp = w.get_dpop("/api/x", &token, &[proof]).await;
        assert_eq!(resp.status, 200, "proof {}: {}", n + 1, resp.text());
    }
    assert_eq!(w.upstream.count(), 2);

    // Full: a valid new proof cannot be checked for replay, so it is refused
    // rather than the cache forgetting a live proof.
    let resp = w.get_dpop("/api/x", &token, &[&fresh()]).await;
    assert_eq!(resp.status, 503, "a third proof: {}", resp.text());
    let retry_after = resp.header("retry-after").unwrap_or("");
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s > 0),
        "Retry-After: {retry_after:?}"
    );
    assert_eq!(resp.json()["error"], "temporarily_unavailable");
    assert_eq!(
        w.upstream.count(),
        2,
        "a refused request reached the upstream"
    );

    let resp = w.get_dpop("/api/x", &token, &[&first]).await;
    w.assert_refused(
        &resp,
        2,
        &proof_refused("DPoP proof replayed"),
        "the first proof again, cache full",
    );
}

// ---------------------------------------------------------------------------
// Config mistakes.

#[test]
fn dpop_config_mistakes_are_refused_with_their_key_path_and_line() {
    // (case, the line under `dpop:`, key path, words the message must contain)
    let cases = [
        (
            "an origin without a scheme",
            r#"origins: ["api.example.com"]"#,
            "dpop.origins[0]",
            "https://",
        ),
        (
            "an origin with a path",
            r#"origins: ["https://api.example.com/path"]"#,
            "dpop.origins[0]",
            "without a path",
        ),
        (
            "a max_age below a second",
            "max_age: 500ms",
            "dpop.max_age",
            "1s",
        ),
        (
            "no algorithm at all",
            "algorithms: []",
            "dpop.algorithms",
            "at least one",
        ),
    ];
    let yaml = |entry: &str| {
        format!(
            "listen: 127.0.0.1:0\ndpop:\n  {entry}\nupstreams:\n  app: {{ url: \"http://127.0.0.1:9\" }}\nroutes:\n  - {{ path: /public, upstream: app, auth: none }}\n"
        )
    };
    for (case, entry, path, words) in cases {
        let text = yaml(entry);
        let errors = match portcullis::config::from_str(&text, "case.yaml", |_| None) {
            Ok(_) => panic!("{case}: accepted:\n{text}"),
            Err(errors) => errors.0,
        };
        let [error] = &errors[..] else {
            panic!("{case}: expected one error, got {errors:#?}\n{text}");
        };
        assert_eq!(error.file, "case.yaml", "{case}");
        assert_eq!(error.path, path, "{case}: {error}");
        assert_eq!(
            error.position.map(|(line, _)| line),
            Some(3),
            "{case}: {error}"
        );
        assert!(error.message.contains(words), "{case}: {error}");
    }

    let good = yaml(r#"origins: ["https://api.example.com", "http://localhost:8080"]"#);
    portcullis::config::from_str(&good, "case.yaml", |_| None)
        .unwrap_or_else(|errors| panic!("valid origins refused:\n{errors}\n{good}"));
}

// ---------------------------------------------------------------------------
// The built-in auth service.

/// The auth service on 127.0.0.1:0 with client `app` (secret `s3cret`, may
/// introspect), and a gateway in the same process taking its tokens on
/// `/api/**`.
struct AuthWorld {
    upstream: Upstream,
    gw: TestGateway,
    client: Client,
}

// === impl AuthWorld ===

impl AuthWorld {
    async fn start() -> AuthWorld {
        AuthWorld::with_extra("").await
    }

    /// With `extra` appended to the config (e.g. a `dpop:` section).
    async fn with_extra(extra: &str) -> AuthWorld {
        init_tracing();
        let upstream = Upstream::start().await;
        let yaml = format!(
            r#"listen: 127.0.0.1:0
auth_service:
  listen: 127.0.0.1:0
  clients:
    - client_id: app
      client_secret_hash: "{hash}"
      scopes: [read]
      audiences: [orders-api]
      introspect: true
providers:
  - {{ name: builtin, auth_service: true, audiences: [orders-api], algorithms: [ES256] }}
upstreams:
  app: {{ url: "{up}", timeout: 5s }}
routes:
  - {{ path: /api/**, upstream: app }}
{extra}"#,
            hash = cheap_hash("s3cret"),
            up = upstream.url()
        );
        let gw = TestGateway::start(&yaml).await;
        AuthWorld {
            upstream,
            gw,
            client: Client::new().with_timeout(Duration::from_secs(10)),
        }
    }

    /// `http://127.0.0.1:PORT` of the auth service: its issuer (port 0 and
    /// no `issuer` configured, so it names the port bound).
    fn issuer(&self) -> String {
        let addr = self.gw.gateway.auth_addr().expect("the auth service runs");
        format!("http://{addr}")
    }

    /// `POST path` as `app` (client_secret_basic) with a form and `proof`.
    async fn post(&self, path: &str, fields: &[(&str, &str)], proof: Option<&str>) -> Resp {
        let basic = format!("Basic {}", STANDARD.encode("app:s3cret"));
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut headers = vec![
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", basic.as_str()),
        ];
        headers.extend(proof.map(|p| ("dpop", p)));
        let url = format!("{}{path}", self.issuer());
        self.client
            .request("POST", &url, &headers, full(body))
            .await
    }

    /// A proof for `POST {issuer}/token` (no `ath`).
    fn token_proof(&self, key: &DpopKey) -> String {
        key.proof("POST", &format!("{}/token", self.issuer()), None)
    }

    /// `GET path` at the gateway with `Authorization: DPoP` and a fresh proof.
    async fn api_dpop(&self, path: &str, token: &str, key: &DpopKey) -> Resp {
        let proof = key.proof("GET", &self.gw.url(path), Some(token));
        let auth = format!("DPoP {token}");
        self.client
            .get(
                &self.gw.url(path),
                &[("authorization", &auth), ("dpop", &proof)],
            )
            .await
    }
}

/// Assert a 200 token response and return it.
#[track_caller]
fn issued(resp: &Resp) -> Value {
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    resp.json()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_auth_service_binds_tokens_to_the_proof_key_and_the_gateway_holds_them_to_it() {
    let w = AuthWorld::start().await;
    let key = DpopKey::p256();
    let grant = [("grant_type", "client_credentials")];

    // With a proof: a DPoP token bound to the proof's key.
    let body = issued(&w.post("/token", &grant, Some(&w.token_proof(&key))).await);
    assert_eq!(body["token_type"], "DPoP", "{body}");
    let bound = body["access_token"].as_str().expect("access_token");
    let claims = jwt_claims(bound);
    assert_eq!(claims["cnf"], json!({ "jkt": key.jkt() }), "{claims}");

    let resp = w.api_dpop("/api/x", bound, &key).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(w.upstream.count(), 1);
    let resp = w.client.get_bearer(&w.gw.url("/api/x"), bound, &[]).await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert_eq!(
        challenges(&resp),
        [challenge(
            "DPoP",
            "invalid_token",
            "DPoP-bound token must use the DPoP scheme",
            Some(DEFAULT_ALGS),
        )]
    );
    let resp = w.api_dpop("/api/x", bound, &DpopKey::p256()).await;
    assert_eq!(resp.status, 401, "another key: {}", resp.text());
    assert_eq!(
        challenges(&resp),
        [proof_refused("DPoP proof key does not match the token")]
    );
    assert_eq!(w.upstream.count(), 1, "refused requests never reach it");

    // Without a proof: a plain bearer token.
    let body = issued(&w.post("/token", &grant, None).await);
    assert_eq!(body["token_type"], "Bearer", "{body}");
    let plain = body["access_token"].as_str().expect("access_token");
    assert!(jwt_claims(plain).get("cnf").is_none(), "no cnf");
    let resp = w.client.get_bearer(&w.gw.url("/api/x"), plain, &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_auth_service_refuses_a_bad_token_request_proof_with_400() {
    let w = AuthWorld::start().await;
    let key = DpopKey::p256();
    let grant = [("grant_type", "client_credentials")];
    let issuer = w.issuer();
    let cases = [
        (
            "should fail because htu is another endpoint",
            key.proof("POST", &format!("{issuer}/introspect"), None),
            "DPoP proof htu does not match the request",
        ),
        (
            "should fail because htm is GET",
            key.proof("GET", &format!("{issuer}/token"), None),
            "DPoP proof htm does not match the request",
        ),
        (
            "should fail because the proof is not a JWS",
            "not-a-proof".to_owned(),
            "DPoP proof malformed",
        ),
    ];
    for (case, proof, description) in &cases {
        let resp = w.post("/token", &grant, Some(proof)).await;
        assert_eq!(resp.status, 400, "{case}: {}", resp.text());
        let body = resp.json();
        assert_eq!(body["error"], "invalid_dpop_proof", "{case}: {body}");
        assert_eq!(body["error_description"], *description, "{case}: {body}");
        assert!(body.get("access_token").is_none(), "{case}");
    }

    // A proof used once at the token endpoint cannot be used again there.
    let proof = w.token_proof(&key);
    issued(&w.post("/token", &grant, Some(&proof)).await);
    let resp = w.post("/token", &grant, Some(&proof)).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.json()["error_description"], "DPoP proof replayed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_with_a_proof_binds_the_new_access_token_to_that_proofs_key() {
    let w = AuthWorld::start().await;
    let (first, second) = (DpopKey::p256(), DpopKey::p256());
    let body = issued(
        &w.post(
            "/token",
            &[("grant_type", "client_credentials")],
            Some(&w.token_proof(&first)),
        )
        .await,
    );
    let refresh = body["refresh_token"].as_str().expect("refresh_token");

    let fields = [("grant_type", "refresh_token"), ("refresh_token", refresh)];
    let body = issued(
        &w.post("/token", &fields, Some(&w.token_proof(&second)))
            .await,
    );
    assert_eq!(body["token_type"], "DPoP", "{body}");
    let token = body["access_token"].as_str().expect("access_token");
    assert_eq!(
        jwt_claims(token)["cnf"],
        json!({ "jkt": second.jkt() }),
        "bound to the refresh request's proof key"
    );
    let resp = w.api_dpop("/api/x", token, &second).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = w.api_dpop("/api/x", token, &first).await;
    assert_eq!(resp.status, 401, "the first key: {}", resp.text());

    // A refresh without a proof gives a bearer token again.
    let next = body["refresh_token"]
        .as_str()
        .expect("rotated refresh_token");
    let fields = [("grant_type", "refresh_token"), ("refresh_token", next)];
    let body = issued(&w.post("/token", &fields, None).await);
    assert_eq!(body["token_type"], "Bearer", "{body}");
    let token = body["access_token"].as_str().expect("access_token");
    assert!(jwt_claims(token).get("cnf").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_and_metadata_speak_of_dpop() {
    let w = AuthWorld::start().await;
    let key = DpopKey::p256();
    let grant = [("grant_type", "client_credentials")];
    let body = issued(&w.post("/token", &grant, Some(&w.token_proof(&key))).await);
    let bound = body["access_token"].as_str().expect("access_token");
    let body = issued(&w.post("/token", &grant, None).await);
    let plain = body["access_token"].as_str().expect("access_token");

    let resp = w.post("/introspect", &[("token", bound)], None).await;
    let info = issued(&resp);
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["token_type"], "DPoP", "{info}");
    assert_eq!(info["cnf"], json!({ "jkt": key.jkt() }), "{info}");
    let resp = w.post("/introspect", &[("token", plain)], None).await;
    let info = issued(&resp);
    assert_eq!(info["token_type"], "Bearer", "{info}");
    assert!(info.get("cnf").is_none(), "{info}");

    let resp = w
        .client
        .get(
            &format!("{}/.well-known/openid-configuration", w.issuer()),
            &[],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let metadata = resp.json();
    let algs = metadata["dpop_signing_alg_values_supported"]
        .as_array()
        .unwrap_or_else(|| panic!("dpop_signing_alg_values_supported: {metadata}"));
    assert!(algs.contains(&json!("ES256")), "{metadata}");
    assert!(
        algs.iter()
            .all(|a| !a.as_str().unwrap_or("HS").starts_with("HS")),
        "no HMAC: {metadata}"
    );
    assert_eq!(
        metadata["token_endpoint"],
        format!("{}/token", w.issuer()),
        "the URL proofs must name"
    );
}

#[tokio::test]
async fn the_auth_service_judges_proofs_by_the_dpop_section_too() {
    let w = AuthWorld::with_extra("dpop: { algorithms: [ES384] }\n").await;
    let grant = [("grant_type", "client_credentials")];
    let resp = w
        .post("/token", &grant, Some(&w.token_proof(&DpopKey::p256())))
        .await;
    assert_eq!(resp.status, 400, "an ES256 proof: {}", resp.text());
    assert_eq!(resp.json()["error"], "invalid_dpop_proof");
    let body = issued(
        &w.post("/token", &grant, Some(&w.token_proof(&DpopKey::p384())))
            .await,
    );
    assert_eq!(body["token_type"], "DPoP", "an ES384 proof: {body}");
    let metadata = w
        .client
        .get(
            &format!("{}/.well-known/openid-configuration", w.issuer()),
            &[],
        )
        .await
        .json();
    assert_eq!(
        metadata["dpop_signing_alg_values_supported"],
        json!(["ES384"])
    );
}
