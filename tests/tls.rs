//! TLS end to end: the listener's certificate (ALPN, reload without
//! restart), client certificates (handshake-level and per route),
//! `X-Forwarded-Client-Cert`, certificate-bound tokens (RFC 8705), https
//! upstreams with the gateway's own client certificate, and the config
//! mistakes around all of these. Every refusal is also checked to never
//! reach the upstream.

mod support;

use std::time::Duration;

use http::Version;
use serde_json::{Value, json};
use support::*;

/// Bound on every TLS request and handshake in this file.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How the listener treats client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    /// No `client_ca_file`: clients are not asked for a certificate.
    Off,
    /// `client_ca_file` and the default `client_certs` (optional).
    Optional,
    /// `client_ca_file` and `client_certs: required`.
    Required,
}

/// The gateway config of the TLS tests: the listener's TLS from `pki`,
/// provider `main` served by `idp`, upstream `app`, and the routes
///
/// * `/public`: no auth;
/// * `/api/**`: bearer;
/// * `/certonly`: no auth, `client_cert: required` (only with a client CA);
/// * `/xfcc`: no auth, `forward_client_cert: true` (only with a client CA).
///
/// `extra_tls` is more lines of the `tls:` block (indented, each ending in
/// a newline), or "".
fn gateway_yaml(
    pki: &Pki,
    client_auth: ClientAuth,
    reload_interval: Option<&str>,
    extra_tls: &str,
    idp: &Idp,
    app_url: &str,
) -> String {
    let mut tls = format!(
        "tls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\n",
        pki.server_cert_path().display(),
        pki.server_key_path().display(),
    );
    if client_auth != ClientAuth::Off {
        tls += &format!("  client_ca_file: \"{}\"\n", pki.ca_pem_path().display());
    }
    if client_auth == ClientAuth::Required {
        tls += "  client_certs: required\n";
    }
    if let Some(interval) = reload_interval {
        tls += &format!("  reload_interval: {interval}\n");
    }
    tls += extra_tls;
    let cert_routes = match client_auth {
        ClientAuth::Off => "",
        ClientAuth::Optional | ClientAuth::Required => {
            "  - { path: /certonly, upstream: app, auth: none, client_cert: required }\n  - { path: /xfcc, upstream: app, auth: none, forward_client_cert: true }\n"
        }
    };
    format!(
        r#"
listen: 127.0.0.1:0
realm: test
{tls}providers:
{provider}upstreams:
  app: {{ url: "{app_url}", timeout: 5s }}
routes:
  - {{ path: /public, upstream: app, auth: none }}
  - {{ path: /api/**, upstream: app }}
{cert_routes}"#,
        provider = provider_yaml("main", &idp.issuer(), &idp.jwks_uri()),
    )
}

/// A gateway on TLS with a real IdP and a recording upstream. Fields drop
/// in order: the gateway stops before the PKI's files disappear.
struct World {
    gateway: TestGateway,
    upstream: Upstream,
    idp: Idp,
    key: TestKey,
    pki: Pki,
}

impl World {
    async fn start(client_auth: ClientAuth, reload_interval: Option<&str>) -> World {
        World::start_with(Pki::new(), client_auth, reload_interval, "").await
    }

    /// Like [`World::start`] on an existing `pki`, with `extra_tls` lines
    /// in the `tls:` block (see [`gateway_yaml`]).
    async fn start_with(
        pki: Pki,
        client_auth: ClientAuth,
        reload_interval: Option<&str>,
        extra_tls: &str,
    ) -> World {
        let key = TestKey::ec("k1");
        let idp = Idp::start(vec![key.public_jwk()]).await;
        let upstream = Upstream::start().await;
        let yaml = gateway_yaml(
            &pki,
            client_auth,
            reload_interval,
            extra_tls,
            &idp,
            &upstream.url(),
        );
        let gateway = TestGateway::start(&yaml).await;
        World {
            gateway,
            upstream,
            idp,
            key,
            pki,
        }
    }

    /// `https://localhost:PORT` + `path`.
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.gateway.addr().port())
    }

    /// A client trusting the test CA, without a client certificate.
    fn client(&self) -> TlsClient {
        TlsClient::new(&self.pki.ca_pem()).with_timeout(TIMEOUT)
    }

    /// The server certificate the gateway presents to a new connection.
    async fn served_cert(&self) -> Result<Vec<u8>, String> {
        self.client()
            .handshake(self.gateway.addr(), "localhost")
            .await
            .map(|info| info.server_cert_der.to_vec())
    }

    /// A valid token for the bearer route, with `extra` claims merged in.
    fn token(&self, extra: Value) -> String {
        let mut claims = json!({
            "iss": self.idp.issuer(),
            "aud": "orders-api",
            "sub": "alice",
            "exp": now() + 300,
            "iat": now(),
        });
        if let (Value::Object(base), Value::Object(extra)) = (&mut claims, extra) {
            base.extend(extra);
        }
        self.key.token(&claims)
    }
}

fn get(url: &str, headers: &[(&str, &str)]) -> http::Request<Body> {
    build_request("GET", url, headers, empty())
}

// ---------------------------------------------------------------------------
// The listener
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_tls_listener_speaks_h2_or_http1_by_alpn_and_forwards_as_https() {
    let w = World::start(ClientAuth::Off, None).await;
    let cases = [
        (Alpn::Both, Some("h2"), Version::HTTP_2),
        (Alpn::H2, Some("h2"), Version::HTTP_2),
        (Alpn::Http1, Some("http/1.1"), Version::HTTP_11),
        (Alpn::Off, None, Version::HTTP_11),
    ];
    for (sent, (alpn, negotiated, version)) in (1..).zip(cases) {
        let client = w.client().with_alpn(alpn);
        let info = client
            .handshake(w.gateway.addr(), "localhost")
            .await
            .unwrap_or_else(|e| panic!("{alpn:?}: handshake: {e}"));
        assert_eq!(info.alpn.as_deref(), negotiated, "{alpn:?}: ALPN");
        assert_eq!(info.server_cert_der, w.pki.server_cert_der(), "{alpn:?}");

        // A client's own X-Forwarded-Proto is replaced, not appended to.
        let resp = client
            .get(&w.url("/public?q=1"), &[("x-forwarded-proto", "http")])
            .await;
        assert_eq!((resp.status, resp.version), (200, version), "{alpn:?}");
        assert_eq!(resp.header("x-upstream"), Some("yes"), "{alpn:?}");
        assert_eq!(w.upstream.count(), sent, "{alpn:?}: one request each");
        let got = w.upstream.last();
        assert_eq!(got.path_and_query, "/public?q=1", "{alpn:?}");
        assert_eq!(got.header_all("x-forwarded-proto"), ["https"], "{alpn:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let w = World::start(ClientAuth::Off, None).await;
    let addr = w.gateway.addr();

    let answer = raw_http(
        addr,
        b"GET /public HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !answer.starts_with("HTTP/"),
        "plain HTTP got an HTTP answer from the TLS port: {answer:?}"
    );
    let resp = Client::new()
        .with_timeout(TIMEOUT)
        .try_send(get(&format!("http://{addr}/public"), &[]))
        .await;
    assert!(resp.is_err(), "plain HTTP got a response: {resp:?}");
    assert_eq!(w.upstream.count(), 0, "plain HTTP reached the upstream");

    // The listener survives the garbage.
    assert_eq!(w.client().get(&w.url("/public"), &[]).await.status, 200);
    assert_eq!(w.upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_is_served_without_restart_and_a_broken_one_is_ignored() {
    let w = World::start(ClientAuth::Off, Some("1s")).await;
    let first = w.served_cert().await.expect("first handshake");
    assert_eq!(first, w.pki.server_cert_der().to_vec());

    let renewed = w.pki.reissue_server().to_vec();
    assert_ne!(renewed, first);
    eventually(
        "the gateway presents the renewed certificate",
        TIMEOUT,
        || async { w.served_cert().await.is_ok_and(|der| der == renewed) },
    )
    .await;
    assert_eq!(w.client().get(&w.url("/public"), &[]).await.status, 200);

    let stranger = w.pki.client("stranger");
    let broken = [
        (
            "garbage in the certificate file",
            b"not a certificate".to_vec(),
        ),
        (
            "a certificate that does not match the key",
            stranger.cert_pem.into_bytes(),
        ),
    ];
    for (case, contents) in broken {
        std::fs::write(w.pki.server_cert_path(), contents).expect("write certificate file");
        // A refusal is the absence of a change: give the watcher (1 s) at
        // least two looks before judging.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let served = w
            .served_cert()
            .await
            .unwrap_or_else(|e| panic!("{case}: the gateway stopped serving TLS: {e}"));
        assert!(
            served == renewed,
            "{case}: the gateway should keep the last good certificate"
        );
        let resp = w.client().get(&w.url("/public"), &[]).await;
        assert_eq!(resp.status, 200, "{case}");
    }

    // The watcher kept looking: repaired files are picked up.
    let repaired = w.pki.reissue_server().to_vec();
    eventually(
        "the gateway presents the repaired certificate",
        TIMEOUT,
        || async { w.served_cert().await.is_ok_and(|der| der == repaired) },
    )
    .await;
}

/// A UTC calendar date, `(year, month, day)`.
type Date = (i32, u8, u8);

/// Validity periods that do not include today, as `(case, not_before, not_after)`.
const OUT_OF_DATE: [(&str, Date, Date); 2] = [
    ("an expired certificate", (2000, 1, 1), (2001, 1, 1)),
    ("a certificate not valid yet", (4000, 1, 1), (4001, 1, 1)),
];

#[test]
fn a_server_certificate_outside_its_validity_is_refused_at_load() {
    for (case, not_before, not_after) in OUT_OF_DATE {
        let pki = Pki::new();
        pki.reissue_server_valid_between(not_before, not_after);
        let text = format!(
            "listen: 127.0.0.1:0\ntls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\nupstreams:\n  app: {{ url: \"http://127.0.0.1:9\" }}\nroutes:\n  - {{ path: /public, upstream: app, auth: none }}\n",
            pki.server_cert_path().display(),
            pki.server_key_path().display(),
        );
        let errors = match portcullis::config::from_str(&text, "case.yaml", |_| None) {
            Ok(_) => panic!("{case}: accepted:\n{text}"),
            Err(errors) => errors.0,
        };
        let [error] = &errors[..] else {
            panic!("{case}: expected one error, got {errors:#?}");
        };
        assert_eq!(error.path, "tls", "{case}: {error}");
        assert_eq!(
            error.position.map(|(line, _)| line),
            Some(2),
            "{case}: {error}"
        );
        assert!(error.message.contains("valid from"), "{case}: {error}");
        let shown = pki.server_cert_path().display().to_string();
        assert!(error.message.contains(&shown), "{case}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_outside_its_validity_is_ignored_and_the_old_one_kept() {
    let w = World::start(ClientAuth::Off, Some("1s")).await;
    let first = w.served_cert().await.expect("first handshake");
    assert_eq!(first, w.pki.server_cert_der().to_vec());

    for (sent, (case, not_before, not_after)) in (1..).zip(OUT_OF_DATE) {
        let replaced = w.pki.reissue_server_valid_between(not_before, not_after);
        assert_ne!(replaced.to_vec(), first, "{case}");
        // A refusal is the absence of a change: give the watcher (1 s) at
        // least two looks at the finished files before judging.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let served = w
            .served_cert()
            .await
            .unwrap_or_else(|e| panic!("{case}: the gateway stopped serving TLS: {e}"));
        assert!(
            served == first,
            "{case}: the old certificate should keep serving"
        );
        let resp = w.client().get(&w.url("/public"), &[]).await;
        assert_eq!(resp.status, 200, "{case}: {}", resp.text());
        assert_eq!(w.upstream.count(), sent, "{case}");
    }

    // The watcher kept looking: a valid certificate is picked up.
    let renewed = w.pki.reissue_server().to_vec();
    eventually(
        "the gateway presents the renewed certificate",
        TIMEOUT,
        || async { w.served_cert().await.is_ok_and(|der| der == renewed) },
    )
    .await;
}

// ---------------------------------------------------------------------------
// Client certificates
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn required_client_certs_refuse_the_handshake_without_a_certificate_from_the_ca() {
    let w = World::start(ClientAuth::Required, None).await;
    let cases = [
        (
            "should refuse a client without a certificate",
            None,
            "CertificateRequired",
        ),
        (
            "should refuse a certificate from another CA",
            Some(w.pki.foreign_client("mallory")),
            "UnknownCA",
        ),
    ];
    for (case, identity, alert) in cases {
        for alpn in [Alpn::Http1, Alpn::H2] {
            let mut client = w.client().with_alpn(alpn);
            if let Some(identity) = &identity {
                client = client.with_identity(identity);
            }
            let err = client
                .handshake(w.gateway.addr(), "localhost")
                .await
                .expect_err(case);
            assert!(err.contains(alert), "{case} ({alpn:?}): {err}");
            let resp = client.try_send(get(&w.url("/public"), &[])).await;
            assert!(resp.is_err(), "{case} ({alpn:?}): {resp:?}");
        }
    }
    assert_eq!(
        w.upstream.count(),
        0,
        "a refused client reached the upstream"
    );

    let alice = w.client().with_identity(&w.pki.client("alice"));
    for path in ["/public", "/certonly"] {
        let resp = alice.get(&w.url(path), &[]).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        assert_eq!(w.upstream.last().path_and_query, path);
    }
    assert_eq!(w.upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_client_certs_let_each_route_decide() {
    let w = World::start(ClientAuth::Optional, None).await;
    let anonymous = w.client();

    let resp = anonymous.get(&w.url("/public"), &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(w.upstream.count(), 1);

    let resp = anonymous.get(&w.url("/certonly"), &[]).await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.json()["error"], "client_certificate_required");
    assert!(
        resp.header("x-upstream").is_none(),
        "came from the upstream"
    );
    assert_eq!(
        w.upstream.count(),
        1,
        "/certonly without a certificate was forwarded"
    );

    // Optional still means verified: a foreign certificate is refused.
    let mallory = w.client().with_identity(&w.pki.foreign_client("mallory"));
    let resp = mallory.try_send(get(&w.url("/public"), &[])).await;
    assert!(resp.is_err(), "a foreign certificate was let in: {resp:?}");
    assert_eq!(w.upstream.count(), 1);

    let alice = w.client().with_identity(&w.pki.client("alice"));
    let resp = alice.get(&w.url("/certonly"), &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(w.upstream.count(), 2);
    assert_eq!(w.upstream.last().path_and_query, "/certonly");
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_client_cert_sends_only_the_verified_certificate() {
    let w = World::start(ClientAuth::Optional, None).await;
    let alice = w.pki.client("alice");
    let forged = [("x-forwarded-client-cert", "Hash=forged")];

    for alpn in [Alpn::Http1, Alpn::H2] {
        let client = w.client().with_alpn(alpn).with_identity(&alice);
        let resp = client.get(&w.url("/xfcc"), &forged).await;
        assert_eq!(resp.status, 200, "{alpn:?}: {}", resp.text());
        let got = w.upstream.last();
        let values = got.header_all("x-forwarded-client-cert");
        let [xfcc] = values[..] else {
            panic!("{alpn:?}: expected exactly the gateway's header, got {values:?}");
        };
        let fields: Vec<&str> = xfcc.split(';').collect();
        assert_eq!(
            fields[0],
            format!("Hash={}", sha256_hex(&alice.cert_der)),
            "{alpn:?}: {xfcc}"
        );
        assert!(
            fields
                .iter()
                .any(|f| f.starts_with("Subject=\"") && f.contains("CN=alice")),
            "{alpn:?}: {xfcc}"
        );
        assert!(
            fields.contains(&"URI=spiffe://test/alice"),
            "{alpn:?}: {xfcc}"
        );
        assert!(
            fields.contains(&"DNS=alice.clients.test"),
            "{alpn:?}: {xfcc}"
        );
        assert!(!xfcc.contains("forged"), "{alpn:?}: {xfcc}");
    }

    // No certificate: the forged header is dropped and none is set.
    let resp = w.client().get(&w.url("/xfcc"), &forged).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = w.upstream.last();
    assert!(
        !got.has_header("x-forwarded-client-cert"),
        "without a certificate: {:?}",
        got.header_all("x-forwarded-client-cert")
    );

    // A certificate on a route that does not forward it: dropped as well.
    let resp = w
        .client()
        .with_identity(&alice)
        .get(&w.url("/public"), &forged)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = w.upstream.last();
    assert!(
        !got.has_header("x-forwarded-client-cert"),
        "route without forward_client_cert: {:?}",
        got.header_all("x-forwarded-client-cert")
    );
    assert_eq!(w.upstream.count(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_client_certificate_is_refused_and_the_others_still_get_in() {
    let pki = Pki::new();
    let (alice, bob) = (pki.client("alice"), pki.client("bob"));
    let crl = pki.crl(&[&alice]);
    let extra = format!("  client_crl_file: \"{}\"\n", crl.display());
    let w = World::start_with(pki, ClientAuth::Required, None, &extra).await;

    for alpn in [Alpn::Http1, Alpn::H2] {
        let revoked = w.client().with_alpn(alpn).with_identity(&alice);
        let err = revoked
            .handshake(w.gateway.addr(), "localhost")
            .await
            .expect_err("a revoked certificate's handshake");
        assert!(err.contains("CertificateRevoked"), "{alpn:?}: {err}");
        let resp = revoked.try_send(get(&w.url("/public"), &[])).await;
        assert!(
            resp.is_err(),
            "{alpn:?}: a revoked certificate got in: {resp:?}"
        );
    }
    assert_eq!(
        w.upstream.count(),
        0,
        "a revoked client reached the upstream"
    );

    let client = w.client().with_identity(&bob);
    for (sent, path) in (1..).zip(["/public", "/certonly"]) {
        let resp = client.get(&w.url(path), &[]).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        assert_eq!(w.upstream.count(), sent);
        assert_eq!(w.upstream.last().path_and_query, path);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crl_renewed_on_disk_is_applied_without_restart() {
    let pki = Pki::new();
    let bob = pki.client("bob");
    let crl = pki.crl(&[]);
    let extra = format!("  client_crl_file: \"{}\"\n", crl.display());
    let w = World::start_with(pki, ClientAuth::Required, Some("1s"), &extra).await;
    let client = w.client().with_identity(&bob);
    let resp = client.get(&w.url("/public"), &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(w.upstream.count(), 1);

    // Renamed into place, as a CRL distributor would, so no half file is read.
    std::fs::rename(w.pki.crl(&[&bob]), &crl).expect("replace the CRL file");
    eventually("bob's revocation is applied", TIMEOUT, || async {
        client
            .handshake(w.gateway.addr(), "localhost")
            .await
            .is_err()
    })
    .await;
    let err = client
        .handshake(w.gateway.addr(), "localhost")
        .await
        .expect_err("a revoked certificate's handshake");
    assert!(err.contains("CertificateRevoked"), "{err}");
    let resp = client.try_send(get(&w.url("/public"), &[])).await;
    assert!(resp.is_err(), "a revoked certificate got in: {resp:?}");
    assert_eq!(
        w.upstream.count(),
        1,
        "a revoked client reached the upstream"
    );

    // A truncated CRL (a writer that empties the file first) is refused:
    // revocation does not silently turn off.
    std::fs::write(&crl, b"").expect("truncate the CRL file");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = client.try_send(get(&w.url("/public"), &[])).await;
    assert!(
        resp.is_err(),
        "an empty CRL let a revoked certificate in: {resp:?}"
    );
    assert_eq!(w.upstream.count(), 1);
}

// ---------------------------------------------------------------------------
// Certificate-bound tokens (RFC 8705)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_bound_token_is_accepted_only_with_its_certificate() {
    let w = World::start(ClientAuth::Optional, None).await;
    let alice = w.pki.client("alice");
    let bob = w.pki.client("bob");
    let bound = w.token(json!({"cnf": {"x5t#S256": alice.sha256_b64url()}}));
    let jwk_bound = w.token(json!({"cnf": {"jwk": TestKey::ec("holder").public_jwk()}}));
    let bearer = |token: &str| format!("Bearer {token}");

    // Accepted first, so the refusals below also show that a verification
    // cached from this request does not skip the binding.
    let resp = w
        .client()
        .with_identity(&alice)
        .get(&w.url("/api/orders"), &[("authorization", &bearer(&bound))])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(w.upstream.count(), 1);
    assert_eq!(w.upstream.last().path_and_query, "/api/orders");

    let cases = [
        (
            "should refuse the token over another client's certificate",
            Some(&bob),
            &bound,
            "token bound to another client certificate",
        ),
        (
            "should refuse the token without a client certificate",
            None,
            &bound,
            "token bound to another client certificate",
        ),
        (
            "should refuse a confirmation method it cannot check",
            Some(&alice),
            &jwk_bound,
            "token confirmation method not supported",
        ),
    ];
    for (case, identity, token, description) in cases {
        let mut client = w.client();
        if let Some(identity) = identity {
            client = client.with_identity(identity);
        }
        let resp = client
            .get(&w.url("/api/orders"), &[("authorization", &bearer(token))])
            .await;
        assert_eq!(resp.status, 401, "{case}: {}", resp.text());
        let challenge = resp.header("www-authenticate").unwrap_or("");
        assert!(
            challenge.starts_with("Bearer realm=\"test\"")
                && challenge.contains("error=\"invalid_token\"")
                && challenge.contains(&format!("error_description=\"{description}\"")),
            "{case}: challenge {challenge:?}"
        );
        let body = resp.json();
        assert_eq!(body["error"], "invalid_token", "{case}");
        assert_eq!(body["error_description"], description, "{case}");
        assert!(
            resp.header("x-upstream").is_none(),
            "{case}: came from the upstream"
        );
    }
    assert_eq!(
        w.upstream.count(),
        1,
        "a refused token reached the upstream"
    );

    // An unbound token needs no certificate.
    let unbound = w.token(json!({}));
    let resp = w
        .client()
        .get(
            &w.url("/api/orders"),
            &[("authorization", &bearer(&unbound))],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(w.upstream.count(), 2);
}

// ---------------------------------------------------------------------------
// Upstreams over https
// ---------------------------------------------------------------------------

/// A plain-http gateway in front of one mTLS upstream (test CA, client
/// certificate required), reached through differently configured upstream
/// entries: `/mtls` (CA + the `gateway` client certificate), `/no-cert`
/// (CA only), `/system-roots` (client certificate, system roots) and
/// `/defaults` (nothing but the URL).
struct HttpsUpstreamWorld {
    gateway: TestGateway,
    upstream: Upstream,
    _pki: Pki,
}

async fn https_upstream_world() -> HttpsUpstreamWorld {
    let pki = Pki::new();
    let upstream = Upstream::start_tls(&pki, true).await;
    let id = pki.client("gateway");
    let (url, ca) = (upstream.url(), pki.ca_pem_path().display());
    let (cert, key) = (id.cert_path.display(), id.key_path.display());
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
upstreams:
  mtls: {{ url: "{url}", ca_file: "{ca}", cert_file: "{cert}", key_file: "{key}", timeout: 5s }}
  no_cert: {{ url: "{url}", ca_file: "{ca}", timeout: 5s }}
  system_roots: {{ url: "{url}", cert_file: "{cert}", key_file: "{key}", timeout: 5s }}
  defaults: {{ url: "{url}", timeout: 5s }}
routes:
  - {{ path: /mtls, upstream: mtls, auth: none }}
  - {{ path: /no-cert, upstream: no_cert, auth: none }}
  - {{ path: /system-roots, upstream: system_roots, auth: none }}
  - {{ path: /defaults, upstream: defaults, auth: none }}
"#
    );
    let gateway = TestGateway::start(&yaml).await;
    HttpsUpstreamWorld {
        gateway,
        upstream,
        _pki: pki,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_is_reached_with_the_configured_ca_and_client_certificate() {
    let w = https_upstream_world().await;
    let client = Client::new().with_timeout(TIMEOUT);
    for sent in 1..=2 {
        let resp = client.get(&w.gateway.url("/mtls"), &[]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-upstream"), Some("yes"));
        assert_eq!(w.upstream.count(), sent);
        let got = w.upstream.last();
        assert_eq!(got.path_and_query, "/mtls");
        assert_eq!(got.client_cert_cn.as_deref(), Some("gateway"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_is_a_502_without_trust_or_client_certificate() {
    let w = https_upstream_world().await;
    let client = Client::new().with_timeout(TIMEOUT);
    let cases = [
        (
            "should fail when the upstream wants a client certificate",
            "/no-cert",
        ),
        (
            "should not trust the test CA with the system roots",
            "/system-roots",
        ),
        ("should not trust the test CA by default", "/defaults"),
    ];
    for (case, path) in cases {
        let resp = client.get(&w.gateway.url(path), &[]).await;
        assert_eq!(resp.status, 502, "{case}: {}", resp.text());
        assert!(resp.header("x-upstream").is_none(), "{case}");
    }
    assert_eq!(w.upstream.count(), 0, "{:?}", w.upstream.requests());
}

// ---------------------------------------------------------------------------
// Config mistakes
// ---------------------------------------------------------------------------

#[test]
fn tls_config_mistakes_are_refused_with_their_key_path() {
    let pki = Pki::new();
    let id = pki.client("gateway");
    let (cert, key) = (
        pki.server_cert_path().display(),
        pki.server_key_path().display(),
    );
    let ca = pki.ca_pem_path().display();
    let missing = pki.dir().join("missing.pem");
    let missing = missing.display();
    let tls = format!("tls: {{ cert_file: \"{cert}\", key_file: \"{key}\" }}");
    let app = r#"app: { url: "http://127.0.0.1:9" }"#;
    let public = "{ path: /public, upstream: app, auth: none }";
    // `route`: a second route under test, or "" for none.
    let yaml = |tls: &str, app: &str, route: &str| {
        let mut text =
            format!("listen: 127.0.0.1:0\n{tls}\nupstreams:\n  {app}\nroutes:\n  - {public}\n");
        if !route.is_empty() {
            text += &format!("  - {route}\n");
        }
        text
    };

    // (case, yaml, accepted key paths, words the message must contain)
    let crl = pki.crl(&[]);
    let crl = crl.display();
    let cases: [(&str, String, &[&str], &[&str]); 9] = [
        (
            "client_certs: required needs a client CA",
            yaml(
                &format!(
                    "tls: {{ cert_file: \"{cert}\", key_file: \"{key}\", client_certs: required }}"
                ),
                app,
                "",
            ),
            &["tls.client_certs"],
            &["client_ca_file"],
        ),
        (
            "client_crl_file needs a client CA",
            yaml(
                &format!(
                    "tls: {{ cert_file: \"{cert}\", key_file: \"{key}\", client_crl_file: \"{crl}\" }}"
                ),
                app,
                "",
            ),
            &["tls.client_crl_file"],
            &["client_ca_file"],
        ),
        (
            "a missing certificate file is named",
            yaml(
                &format!("tls: {{ cert_file: \"{missing}\", key_file: \"{key}\" }}"),
                app,
                "",
            ),
            &["tls.cert_file"],
            &[&missing.to_string()],
        ),
        (
            "a missing upstream CA file is named under its key",
            yaml(
                &tls,
                &format!("app: {{ url: \"https://localhost:9\", ca_file: \"{missing}\" }}"),
                "",
            ),
            &["upstreams.app.ca_file"],
            &[&missing.to_string()],
        ),
        (
            "reload_interval below 1s",
            yaml(
                &format!(
                    "tls: {{ cert_file: \"{cert}\", key_file: \"{key}\", reload_interval: 0s }}"
                ),
                app,
                "",
            ),
            &["tls.reload_interval"],
            &["1s"],
        ),
        (
            "client_cert: required on a route needs tls.client_ca_file",
            yaml(
                &tls,
                app,
                "{ path: /certonly, upstream: app, auth: none, client_cert: required }",
            ),
            &["routes[1].client_cert"],
            &["tls.client_ca_file"],
        ),
        (
            "forward_client_cert on a route needs tls.client_ca_file",
            yaml(
                &tls,
                app,
                "{ path: /xfcc, upstream: app, auth: none, forward_client_cert: true }",
            ),
            &["routes[1].forward_client_cert"],
            &["tls.client_ca_file"],
        ),
        (
            "an upstream ca_file needs an https URL",
            yaml(
                &tls,
                &format!("app: {{ url: \"http://127.0.0.1:9\", ca_file: \"{ca}\" }}"),
                "",
            ),
            &["upstreams.app.url"],
            &["https"],
        ),
        (
            "an upstream cert_file needs a key_file",
            yaml(
                &tls,
                &format!(
                    "app: {{ url: \"https://localhost:9\", cert_file: \"{}\" }}",
                    id.cert_path.display()
                ),
                "",
            ),
            &["upstreams.app"],
            &["key_file"],
        ),
    ];
    for (case, text, paths, words) in cases {
        let errors = match portcullis::config::from_str(&text, "case.yaml", |_| None) {
            Ok(_) => panic!("{case}: accepted:\n{text}"),
            Err(errors) => errors.0,
        };
        let [error] = &errors[..] else {
            panic!("{case}: expected one error, got {errors:#?}\n{text}");
        };
        assert_eq!(error.file, "case.yaml", "{case}");
        assert!(
            paths.contains(&error.path.as_str()),
            "{case}: path {:?}, expected one of {paths:?}: {error}",
            error.path
        );
        assert!(error.position.is_some(), "{case}: no line: {error}");
        for word in words {
            assert!(error.message.contains(word), "{case}: {error}");
        }
    }

    // And the same sections, written correctly, compile.
    let good = yaml(
        &format!(
            "tls: {{ cert_file: \"{cert}\", key_file: \"{key}\", client_ca_file: \"{ca}\", client_crl_file: \"{crl}\", client_certs: optional, reload_interval: 1s }}"
        ),
        &format!(
            "app: {{ url: \"https://localhost:9\", ca_file: \"{ca}\", cert_file: \"{}\", key_file: \"{}\" }}",
            id.cert_path.display(),
            id.key_path.display()
        ),
        "{ path: /certonly, upstream: app, auth: none, client_cert: required, forward_client_cert: true }",
    );
    let config = portcullis::config::from_str(&good, "case.yaml", |_| None)
        .unwrap_or_else(|errors| panic!("valid TLS config refused:\n{errors}\n{good}"));
    assert!(config.tls.is_some());
    assert_eq!(config.public_scheme, "https");
}
