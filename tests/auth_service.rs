//! The built-in auth service (`auth_service:` in gateway.yaml) on real
//! sockets: the token endpoint (client credentials, refresh rotation with
//! reuse detection), revocation (RFC 7009), introspection (RFC 7662), the
//! JWKS and RFC 8414 metadata, state and keys across a restart, key rotation
//! through the key file, and both kinds of gateway in front of it: the one in
//! the same process (keys shared directly) and a separate one over HTTP.
//!
//! Every world starts from YAML on 127.0.0.1, the auth service on port 0 or
//! a pre-picked free port; with port 0 and no `issuer`, the issuer names the
//! port really bound (`with_listen_port_0_the_default_issuer_names_the_bound_port`).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use portcullis::auth_service::keys::{KeyRing, SigningAlg};
use serde_json::{Value, json};
use support::*;

// ---------------------------------------------------------------------------
// The clients every world configures.

/// A client's id and plain secret.
#[derive(Clone, Copy, Debug)]
struct Cred {
    id: &'static str,
    secret: &'static str,
}

const fn cred(id: &'static str, secret: &'static str) -> Cred {
    Cred { id, secret }
}

/// scopes [profile, orders], audience orders-api, 60 s access, 1 h refresh, may introspect.
const REPORTING: Cred = cred("reporting", "s3cret");
/// scopes [profile, invoices], audience billing-api (another API), may not introspect.
const BILLING: Cred = cred("billing", "b1lling");
/// scopes [profile], audience orders-api, `refresh_tokens: false`.
const LEGACY: Cred = cred("legacy", "l3gacy");
/// scopes [profile], audience orders-api, 1 s access and refresh tokens, may introspect.
const SHORT: Cred = cred("short", "sh0rt");
/// `reporting` with a wrong secret.
const WRONG: Cred = cred("reporting", "wrong");
/// Not configured at all.
const NOBODY: Cred = cred("nobody", "s3cret");

/// The configured `client_secret_hash`es, made once per test binary, all
/// with the cheapest argon2id parameters: the service verifies with the
/// parameters in the hash (one set for all clients, so that unknown ids cost
/// the same), and the default ones cost about 0.35 s per check in a debug
/// build. Real `hash_secret` hashes are exercised by tests/demo.rs and
/// tests/cli.rs.
static HASHES: LazyLock<HashMap<&'static str, String>> = LazyLock::new(|| {
    [REPORTING, BILLING, LEGACY, SHORT]
        .iter()
        .map(|c| (c.id, cheap_hash(c.secret)))
        .collect()
});

fn clients_yaml() -> String {
    let h = |c: Cred| HASHES[c.id].clone();
    format!(
        r#"  clients:
    - client_id: reporting
      client_secret_hash: "{reporting}"
      scopes: [profile, orders]
      audiences: [orders-api]
      access_token_ttl: 60s
      refresh_token_ttl: 1h
      introspect: true
    - client_id: billing
      client_secret_hash: "{billing}"
      scopes: [profile, invoices]
      audiences: [billing-api]
    - client_id: legacy
      client_secret_hash: "{legacy}"
      scopes: [profile]
      audiences: [orders-api]
      refresh_tokens: false
    - client_id: short
      client_secret_hash: "{short}"
      scopes: [profile]
      audiences: [orders-api]
      access_token_ttl: 1s
      refresh_token_ttl: 1s
      introspect: true
"#,
        reporting = h(REPORTING),
        billing = h(BILLING),
        legacy = h(LEGACY),
        short = h(SHORT),
    )
}

// ---------------------------------------------------------------------------
// A world: the auth service, the gateway in the same process, an upstream.

/// How to start a world; `Setup::default()` is ES256, port 0, in memory,
/// with the in-process gateway.
#[derive(Default, Clone)]
struct Setup {
    rs256: bool,
    /// The auth service's port; 0 lets the OS pick (issuer then says `:0`).
    auth_port: u16,
    /// `key_file` and `state_file` go here; in memory when `None`.
    dir: Option<PathBuf>,
    /// Run the auth service alone (no `listen`, providers or routes).
    alone: bool,
    /// `reporting` may only have `profile` (as if an admin took `orders` away).
    narrow_reporting: bool,
}

impl Setup {
    fn yaml(&self, upstream: &str) -> String {
        let alg = if self.rs256 { "RS256" } else { "ES256" };
        let mut yaml = String::new();
        if !self.alone {
            yaml.push_str("listen: 127.0.0.1:0\n");
        }
        yaml.push_str(&format!(
            "auth_service:\n  listen: 127.0.0.1:{}\n  signing_algorithm: {alg}\n",
            self.auth_port
        ));
        if let Some(dir) = &self.dir {
            yaml.push_str(&format!(
                "  key_file: {}\n  state_file: {}\n",
                dir.join("keys.json").display(),
                dir.join("auth.db").display()
            ));
        }
        let clients = clients_yaml();
        if self.narrow_reporting {
            yaml.push_str(&clients.replacen("scopes: [profile, orders]", "scopes: [profile]", 1));
        } else {
            yaml.push_str(&clients);
        }
        if !self.alone {
            yaml.push_str(&format!(
                r#"providers:
  - {{ name: builtin, auth_service: true, audiences: [orders-api], algorithms: [{alg}], require_typ: at+jwt }}
upstreams:
  app: {{ url: "{upstream}", timeout: 5s }}
routes:
  - path: /profile
    upstream: app
    scopes: [profile]
    forward_claims: {{ sub: X-Auth-Subject, client_id: X-Auth-Client }}
  - {{ path: /orders/**, upstream: app, scopes: [orders] }}
"#
            ));
        }
        yaml
    }
}

struct World {
    /// The auth service and (unless `alone`) the gateway, in one `Gateway`.
    gw: TestGateway,
    upstream: Upstream,
    client: Client,
}

impl World {
    async fn start(setup: &Setup) -> World {
        init_tracing();
        let upstream = Upstream::start().await;
        let gw = TestGateway::start(&setup.yaml(&upstream.url())).await;
        World {
            gw,
            upstream,
            client: Client::new().with_timeout(Duration::from_secs(10)),
        }
    }

    /// Stop everything and wait for the listeners to close.
    async fn stop(self) {
        self.gw.gateway.shutdown().await;
    }

    fn auth_addr(&self) -> SocketAddr {
        self.gw.gateway.auth_addr().expect("the auth service runs")
    }

    fn auth_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.auth_addr())
    }

    /// The `iss` the service puts in its tokens.
    fn issuer(&self) -> String {
        let service = self
            .gw
            .gateway
            .auth_service()
            .expect("the auth service runs");
        service.config().issuer.to_string()
    }

    /// `POST` a raw body to the auth service.
    async fn post(&self, path: &str, headers: &[(&str, &str)], body: impl Into<String>) -> Resp {
        let body: String = body.into();
        self.client
            .request("POST", &self.auth_url(path), headers, full(body))
            .await
    }

    /// `POST` a form to the auth service, with `basic` credentials in
    /// `Authorization` (client_secret_basic) when given.
    async fn form_post(&self, path: &str, params: &[(&str, &str)], basic: Option<Cred>) -> Resp {
        let authorization = basic.map(basic_header);
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(value) = &authorization {
            headers.push(("authorization", value.as_str()));
        }
        self.post(path, &headers, form(params)).await
    }

    /// A client-credentials token for `cred` (client_secret_basic); panics
    /// unless it is a 200.
    async fn token(&self, cred: Cred, scope: Option<&str>) -> Value {
        let mut params = vec![("grant_type", "client_credentials")];
        params.extend(scope.map(|s| ("scope", s)));
        let resp = self.form_post("/token", &params, Some(cred)).await;
        assert_eq!(resp.status, 200, "token for {}: {}", cred.id, resp.text());
        resp.json()
    }

    /// Both tokens of a fresh client-credentials grant.
    async fn tokens(&self, cred: Cred, scope: Option<&str>) -> (String, String) {
        let body = self.token(cred, scope).await;
        (
            str_of(&body, "access_token"),
            str_of(&body, "refresh_token"),
        )
    }

    /// `POST /token/refresh` (the seed's endpoint; no grant_type needed).
    async fn refresh(&self, cred: Cred, refresh_token: &str, scope: Option<&str>) -> Resp {
        let mut params = vec![("refresh_token", refresh_token)];
        params.extend(scope.map(|s| ("scope", s)));
        self.form_post("/token/refresh", &params, Some(cred)).await
    }

    async fn revoke(&self, cred: Cred, token: &str) -> Resp {
        self.form_post("/revoke", &[("token", token)], Some(cred))
            .await
    }

    /// `POST /introspect` as `cred`; panics unless it is a 200.
    async fn introspect(&self, cred: Cred, token: &str) -> Value {
        let resp = self
            .form_post("/introspect", &[("token", token)], Some(cred))
            .await;
        assert_eq!(resp.status, 200, "introspect: {}", resp.text());
        assert_eq!(resp.header("cache-control"), Some("no-store"));
        resp.json()
    }

    async fn get_json(&self, path: &str) -> Value {
        let resp = self.client.get(&self.auth_url(path), &[]).await;
        assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        resp.json()
    }

    async fn jwks(&self) -> Value {
        self.get_json("/.well-known/jwks.json").await
    }

    /// The kids the JWKS publishes.
    async fn kids(&self) -> Vec<String> {
        let jwks = self.jwks().await;
        jwks["keys"]
            .as_array()
            .expect("keys array")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect()
    }

    /// `GET path` through the in-process gateway with the token.
    async fn api(&self, path: &str, token: &str) -> Resp {
        self.client.get_bearer(&self.gw.url(path), token, &[]).await
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "portcullis-auth-service-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `application/x-www-form-urlencoded` of `params`.
fn form(params: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn basic_header(cred: Cred) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", enc(cred.id), enc(cred.secret));
    format!("Basic {}", STANDARD.encode(pair))
}

/// client_secret_post parameters.
fn post_creds(cred: Cred) -> [(&'static str, &'static str); 2] {
    [("client_id", cred.id), ("client_secret", cred.secret)]
}

fn str_of(body: &Value, key: &str) -> String {
    body[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{key}` in {body}"))
        .to_owned()
}

/// A compact JWS's header and claims (not verified).
fn jwt(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    let decode = |part: &str| -> Value {
        let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url JWS part");
        serde_json::from_slice(&bytes).expect("JSON JWS part")
    };
    (decode(parts[0]), decode(parts[1]))
}

/// Verify `token` with an independent JOSE library against the published
/// JWKS, requiring iss, aud, exp, iat and sub; the claims.
fn verify_independently(token: &str, jwks: &Value, issuer: &str, audience: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).expect("JWT header");
    let kid = header.kid.expect("a kid");
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} is not in the JWKS {jwks}"));
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).expect("a JWK");
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("a usable JWK");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("jsonwebtoken refuses the token: {e}"))
        .claims
}

/// An RFC 6749 §5.2 error: status, JSON `{error, error_description}` and
/// nothing else, never cached, never carrying a token.
fn assert_oauth_error(resp: &Resp, status: u16, error: &str, case: &str) {
    assert_eq!(resp.status, status, "{case}: {}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{case}"
    );
    assert_eq!(resp.header("cache-control"), Some("no-store"), "{case}");
    let body = resp.json();
    let object = body.as_object().expect("a JSON object");
    assert_eq!(body["error"], error, "{case}: {body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{case}: error_description missing in {body}"
    );
    assert_eq!(
        object.len(),
        2,
        "{case}: only error and description: {body}"
    );
}

// ---------------------------------------------------------------------------
// POST /token

/// How a request the token endpoint must refuse is sent.
#[derive(Clone, Copy)]
enum Via {
    /// Form body, `Authorization: Basic` for this client.
    Basic(Cred),
    /// Form body, this raw `Authorization` value.
    Authorization(&'static str),
    /// Form body, no `Authorization` (credentials, if any, in the body).
    Form,
    /// A JSON body (with good Basic credentials).
    Json,
    /// No `Content-Type` at all (with good Basic credentials).
    NoType,
}

impl Via {
    fn headers(self) -> Vec<(&'static str, String)> {
        let form = (
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        );
        let basic = |cred| ("authorization", basic_header(cred));
        match self {
            Via::Basic(cred) => vec![form, basic(cred)],
            Via::Authorization(raw) => vec![form, ("authorization", raw.to_owned())],
            Via::Form => vec![form],
            Via::Json => vec![
                ("content-type", "application/json".into()),
                basic(REPORTING),
            ],
            Via::NoType => vec![basic(REPORTING)],
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_with_basic_or_post_auth_return_bearer_and_refresh_tokens() {
    let w = World::start(&Setup::default()).await;
    let grant = [("grant_type", "client_credentials")];
    let basic = w.form_post("/token", &grant, Some(REPORTING)).await;
    let mut params = grant.to_vec();
    params.extend(post_creds(REPORTING));
    let post = w.form_post("/token", &params, None).await;
    let mut access_tokens = Vec::new();
    for (how, resp) in [("client_secret_basic", basic), ("client_secret_post", post)] {
        assert_eq!(resp.status, 200, "{how}: {}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.header("cache-control"), Some("no-store"), "{how}");
        assert_eq!(resp.header("pragma"), Some("no-cache"), "{how}");
        let body = resp.json();
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "access_token",
                "expires_in",
                "refresh_token",
                "scope",
                "token_type"
            ],
            "{how}: {body}"
        );
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 60);
        assert_eq!(
            body["scope"], "profile orders",
            "no scope asked: all allowed"
        );
        let refresh = str_of(&body, "refresh_token");
        assert!(
            refresh.len() >= 43 && !refresh.contains('.'),
            "{how}: the refresh token is opaque, not a JWT: {refresh}"
        );
        access_tokens.push(str_of(&body, "access_token"));
    }
    let (_, first) = jwt(&access_tokens[0]);
    let (_, second) = jwt(&access_tokens[1]);
    assert_ne!(first["jti"], second["jti"], "every token has its own jti");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_token_is_an_rfc9068_es256_jwt_whose_kid_the_jwks_publishes() {
    let w = World::start(&Setup::default()).await;
    let before = now();
    let body = w.token(REPORTING, None).await;
    let token = str_of(&body, "access_token");
    let (header, claims) = jwt(&token);

    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    let kid = header["kid"].as_str().expect("kid in the header");
    let jwks = w.jwks().await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let jwk = &keys[0];
    assert_eq!(jwk["kid"], kid);
    assert_eq!((&jwk["kty"], &jwk["crv"]), (&json!("EC"), &json!("P-256")));
    assert_eq!((&jwk["alg"], &jwk["use"]), (&json!("ES256"), &json!("sig")));
    assert!(jwk.get("d").is_none(), "no private key in the JWKS: {jwk}");

    let issuer = w.issuer();
    let meta = w.get_json("/.well-known/openid-configuration").await;
    assert_eq!(meta["issuer"], issuer.as_str());
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["sub"], "reporting");
    assert_eq!(claims["client_id"], "reporting");
    assert_eq!(claims["aud"], "orders-api");
    assert_eq!(claims["scope"], "profile orders");
    let iat = claims["iat"].as_i64().expect("iat");
    assert!((before..=now()).contains(&iat), "iat {iat} is now");
    assert_eq!(claims["exp"].as_i64(), Some(iat + 60), "exp = iat + ttl");
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    let verified = verify_independently(&token, &jwks, &issuer, "orders-api");
    assert_eq!(verified, claims);
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_tokens_verify_against_the_published_rsa_key_and_pass_the_gateway() {
    let w = World::start(&Setup {
        rs256: true,
        ..Setup::default()
    })
    .await;
    let token = str_of(&w.token(REPORTING, Some("profile")).await, "access_token");
    let (header, _) = jwt(&token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "at+jwt");
    let jwks = w.jwks().await;
    let jwk = &jwks["keys"][0];
    assert_eq!((&jwk["kty"], &jwk["alg"]), (&json!("RSA"), &json!("RS256")));
    assert_eq!(jwk["kid"], header["kid"]);
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(jwk.get(private).is_none(), "private `{private}` published");
    }
    verify_independently(&token, &jwks, &w.issuer(), "orders-api");
    let resp = w.api("/profile", &token).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(w.upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requested_subset_of_the_allowed_scopes_is_granted_exactly() {
    let w = World::start(&Setup::default()).await;
    for (asked, granted) in [
        ("orders", "orders"),
        ("profile", "profile"),
        ("orders profile", "orders profile"),
        ("profile profile", "profile"),
        ("  orders  ", "orders"),
    ] {
        let body = w.token(REPORTING, Some(asked)).await;
        assert_eq!(body["scope"], granted, "asked `{asked}`");
        let (_, claims) = jwt(&str_of(&body, "access_token"));
        assert_eq!(claims["scope"], granted, "asked `{asked}`");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_errors_have_the_rfc6749_shape() {
    use Via::*;
    let w = World::start(&Setup::default()).await;
    let cc = "grant_type=client_credentials";
    let post_ok = format!("{cc}&client_id=reporting&client_secret=s3cret");
    // (case, how it is sent, body, "status error")
    #[rustfmt::skip]
    let cases: Vec<(&str, Via, String, &str)> = vec![
        ("wrong secret (basic)", Basic(WRONG), cc.into(), "401 invalid_client"),
        ("wrong secret (post)", Form, format!("{cc}&client_id=reporting&client_secret=wrong"), "401 invalid_client"),
        ("unknown client (basic)", Basic(NOBODY), cc.into(), "401 invalid_client"),
        ("unknown client (post)", Form, format!("{cc}&client_id=nobody&client_secret=s3cret"), "401 invalid_client"),
        ("no client authentication", Form, format!("{cc}&client_id=reporting"), "401 invalid_client"),
        ("malformed Basic", Authorization("Basic !!!"), cc.into(), "401 invalid_client"),
        ("Basic and form credentials", Basic(REPORTING), post_ok.clone(), "400 invalid_request"),
        ("form client_id differs from Basic", Basic(REPORTING), format!("{cc}&client_id=billing"), "400 invalid_request"),
        ("missing grant_type", Basic(REPORTING), "scope=profile".into(), "400 invalid_request"),
        ("JSON body", Json, r#"{"grant_type":"client_credentials"}"#.into(), "400 invalid_request"),
        ("no content type", NoType, cc.into(), "400 invalid_request"),
        ("duplicate scope", Basic(REPORTING), format!("{cc}&scope=profile&scope=orders"), "400 invalid_request"),
        ("duplicate grant_type", Basic(REPORTING), format!("{cc}&{cc}"), "400 invalid_request"),
        ("body over 64 KiB", Basic(REPORTING), format!("{cc}&pad={}", "x".repeat(70 << 10)), "400 invalid_request"),
        ("refresh grant without refresh_token", Basic(REPORTING), "grant_type=refresh_token".into(), "400 invalid_request"),
        ("password grant", Basic(REPORTING), "grant_type=password&username=a&password=b".into(), "400 unsupported_grant_type"),
        ("authorization_code grant", Basic(REPORTING), "grant_type=authorization_code&code=x".into(), "400 unsupported_grant_type"),
        ("scope not allowed", Basic(REPORTING), format!("{cc}&scope=admin"), "400 invalid_scope"),
        ("one of two scopes not allowed", Basic(REPORTING), format!("{cc}&scope=profile+invoices"), "400 invalid_scope"),
        ("unknown refresh token", Basic(REPORTING), "grant_type=refresh_token&refresh_token=made-up".into(), "400 invalid_grant"),
    ];
    for (case, via, body, expected) in cases {
        let (status, error) = expected.split_once(' ').unwrap();
        let status: u16 = status.parse().unwrap();
        let headers = via.headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = w.post("/token", &headers, body).await;
        assert_oauth_error(&resp, status, error, case);
        let challenge = resp.header("www-authenticate");
        if status == 401 {
            assert!(
                challenge.is_some_and(|c| c.starts_with("Basic ")),
                "{case}: 401 needs a Basic challenge, got {challenge:?}"
            );
        } else {
            assert_eq!(challenge, None, "{case}: no challenge on a {status}");
        }
    }
    // Control: the same service answers a correct request.
    let form_type = ("content-type", "application/x-www-form-urlencoded");
    assert_eq!(w.post("/token", &[form_type], post_ok).await.status, 200);
    assert_eq!(
        w.token(REPORTING, Some("profile")).await["scope"],
        "profile"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_methods_get_405_with_allow_and_unknown_paths_404() {
    let w = World::start(&Setup::default()).await;
    for path in ["/token", "/token/refresh", "/revoke", "/introspect"] {
        for method in ["GET", "PUT", "DELETE"] {
            let resp = w
                .client
                .request(method, &w.auth_url(path), &[], empty())
                .await;
            assert_eq!(resp.status, 405, "{method} {path}");
            assert_eq!(resp.header("allow"), Some("POST"), "{method} {path}");
            assert_eq!(resp.json()["error"], "method_not_allowed");
        }
    }
    for path in [
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let resp = w.post(path, &[], "").await;
        assert_eq!(resp.status, 405, "POST {path}");
        assert_eq!(resp.header("allow"), Some("GET, HEAD"), "POST {path}");
        let head = w
            .client
            .request("HEAD", &w.auth_url(path), &[], empty())
            .await;
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.body.is_empty());
    }
    for path in ["/", "/token/", "/authorize", "/.well-known/jwks"] {
        let resp = w.client.get(&w.auth_url(path), &[]).await;
        assert_eq!(resp.status, 404, "GET {path}");
        assert_eq!(resp.json(), json!({"error": "not_found"}));
    }
}

// ---------------------------------------------------------------------------
// Refresh tokens

#[tokio::test(flavor = "multi_thread")]
async fn refresh_rotates_both_tokens_at_token_refresh_and_at_the_token_endpoint() {
    let w = World::start(&Setup::default()).await;
    let (access0, refresh0) = w.tokens(REPORTING, Some("orders")).await;

    let resp = w.refresh(REPORTING, &refresh0, None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let body = resp.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 60);
    assert_eq!(body["scope"], "orders", "the scope carries over");
    let (access1, refresh1) = (
        str_of(&body, "access_token"),
        str_of(&body, "refresh_token"),
    );
    assert_ne!(access1, access0);
    assert_ne!(refresh1, refresh0, "rotated");
    let (_, claims) = jwt(&access1);
    assert_eq!(
        (&claims["sub"], &claims["client_id"]),
        (&json!("reporting"), &json!("reporting"))
    );
    assert_eq!(claims["scope"], "orders");
    assert_ne!(claims["jti"], jwt(&access0).1["jti"]);

    // The same grant on /token, with client_secret_post this time.
    let mut params = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh1.as_str()),
    ];
    params.extend(post_creds(REPORTING));
    let resp = w.form_post("/token", &params, None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["scope"], "orders");
    let refresh2 = str_of(&body, "refresh_token");
    assert!(![&refresh0, &refresh1].contains(&&refresh2));
    let resp = w.api("/orders/1", &str_of(&body, "access_token")).await;
    assert_eq!(resp.status, 200, "the refreshed token works at the gateway");
}

#[tokio::test(flavor = "multi_thread")]
async fn reusing_a_refresh_token_revokes_its_whole_family_and_only_that_family() {
    let w = World::start(&Setup::default()).await;
    let (_, first) = w.tokens(REPORTING, None).await;
    let (_, other_family) = w.tokens(REPORTING, None).await;
    let resp = w.refresh(REPORTING, &first, None).await;
    assert_eq!(resp.status, 200);
    let successor = str_of(&resp.json(), "refresh_token");

    let reuse = w.refresh(REPORTING, &first, None).await;
    assert_oauth_error(
        &reuse,
        400,
        "invalid_grant",
        "reuse of a used refresh token",
    );
    let after = w.refresh(REPORTING, &successor, None).await;
    assert_oauth_error(
        &after,
        400,
        "invalid_grant",
        "its successor after the reuse",
    );
    assert_eq!(
        w.introspect(REPORTING, &successor).await,
        json!({"active": false})
    );

    let resp = w.refresh(REPORTING, &other_family, None).await;
    assert_eq!(
        resp.status,
        200,
        "another family is untouched: {}",
        resp.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_refreshes_with_one_token_succeed_at_most_once() {
    let w = World::start(&Setup::default()).await;
    let (_, refresh) = w.tokens(REPORTING, None).await;
    let (a, b, c, d) = tokio::join!(
        w.refresh(REPORTING, &refresh, None),
        w.refresh(REPORTING, &refresh, None),
        w.refresh(REPORTING, &refresh, None),
        w.refresh(REPORTING, &refresh, None),
    );
    let statuses = [a.status, b.status, c.status, d.status];
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "exactly one winner: {statuses:?}"
    );
    for loser in [a, b, c, d].iter().filter(|r| r.status != 200) {
        assert_oauth_error(loser, 400, "invalid_grant", "a concurrent second use");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn another_clients_refresh_token_is_refused_without_burning_it() {
    let w = World::start(&Setup::default()).await;
    let (_, refresh) = w.tokens(REPORTING, None).await;
    let stolen = w.refresh(BILLING, &refresh, None).await;
    assert_oauth_error(
        &stolen,
        400,
        "invalid_grant",
        "another client's refresh token",
    );
    let owner = w.refresh(REPORTING, &refresh, None).await;
    assert_eq!(owner.status, 200, "the owner still can: {}", owner.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_may_narrow_the_scope_but_not_widen_it() {
    let w = World::start(&Setup::default()).await;
    let (_, refresh) = w.tokens(REPORTING, None).await;
    let resp = w.refresh(REPORTING, &refresh, Some("orders")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["scope"], "orders");
    assert_eq!(jwt(&str_of(&body, "access_token")).1["scope"], "orders");

    for wider in ["profile orders", "orders", "admin"] {
        // A fresh token each time, though a refused refresh leaves it
        // usable (tested below).
        let (_, narrow) = w.tokens(REPORTING, Some("profile")).await;
        let resp = w.refresh(REPORTING, &narrow, Some(wider)).await;
        assert_oauth_error(
            &resp,
            400,
            "invalid_scope",
            &format!("refresh widening to `{wider}`"),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_refused_for_its_scope_leaves_the_refresh_token_usable() {
    let w = World::start(&Setup::default()).await;
    let (_, refresh) = w.tokens(REPORTING, Some("profile")).await;
    let wider = w.refresh(REPORTING, &refresh, Some("profile orders")).await;
    assert_oauth_error(&wider, 400, "invalid_scope", "widening refresh");
    let retry = w.refresh(REPORTING, &refresh, None).await;
    assert_eq!(
        retry.status,
        200,
        "a refused request must not consume the token: {}",
        retry.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_narrowing_refresh_keeps_the_refresh_tokens_original_scope() {
    let w = World::start(&Setup::default()).await;
    let (_, refresh) = w.tokens(REPORTING, Some("profile orders")).await;
    let resp = w.refresh(REPORTING, &refresh, Some("orders")).await;
    assert_eq!(resp.status, 200);
    let next = str_of(&resp.json(), "refresh_token");
    let resp = w.refresh(REPORTING, &next, Some("profile orders")).await;
    assert_eq!(
        resp.status,
        200,
        "the new refresh token's scope is the original one: {}",
        resp.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_refresh_tokens_gets_none_and_refresh_is_unauthorized_client() {
    let w = World::start(&Setup::default()).await;
    let body = w.token(LEGACY, None).await;
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(body["scope"], "profile");
    let (_, reporting_refresh) = w.tokens(REPORTING, None).await;
    for token in ["anything", reporting_refresh.as_str()] {
        let resp = w.refresh(LEGACY, token, None).await;
        assert_oauth_error(&resp, 400, "unauthorized_client", "legacy refresh");
    }
    let resp = w.refresh(REPORTING, &reporting_refresh, None).await;
    assert_eq!(resp.status, 200, "not burnt by legacy's attempt");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_refresh_token_is_invalid_grant_and_its_access_token_inactive() {
    let w = World::start(&Setup::default()).await;
    // Lifetimes count in whole seconds, so a 1 s token may be over within
    // milliseconds: no "still active" check before the wait.
    let (access, refresh) = w.tokens(SHORT, None).await;
    let (_, claims) = jwt(&access);
    assert_eq!(
        claims["exp"].as_i64(),
        claims["iat"].as_i64().map(|i| i + 1)
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = w.refresh(SHORT, &refresh, None).await;
    assert_oauth_error(&resp, 400, "invalid_grant", "expired refresh token");
    let why = resp.json()["error_description"].to_string();
    assert!(why.contains("expired"), "refused for its expiry: {why}");
    assert_eq!(w.introspect(SHORT, &access).await, json!({"active": false}));
    assert_eq!(
        w.introspect(SHORT, &refresh).await,
        json!({"active": false})
    );
}

// ---------------------------------------------------------------------------
// POST /revoke (RFC 7009)

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_refresh_token_kills_it_and_its_whole_family() {
    let w = World::start(&Setup::default()).await;
    // Revoke the newest token of a family.
    let (_, r1) = w.tokens(REPORTING, None).await;
    let resp = w.revoke(REPORTING, &r1).await;
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let refused = w.refresh(REPORTING, &r1, None).await;
    assert_oauth_error(&refused, 400, "invalid_grant", "a revoked refresh token");
    assert_eq!(w.introspect(REPORTING, &r1).await, json!({"active": false}));

    // Revoke an ancestor (already used): its live successor dies with it.
    let (_, a1) = w.tokens(REPORTING, None).await;
    let a2 = str_of(
        &w.refresh(REPORTING, &a1, None).await.json(),
        "refresh_token",
    );
    assert_eq!(w.revoke(REPORTING, &a1).await.status, 200);
    let refused = w.refresh(REPORTING, &a2, None).await;
    assert_oauth_error(
        &refused,
        400,
        "invalid_grant",
        "successor of a revoked token",
    );

    // Revoking twice is still a 200.
    assert_eq!(w.revoke(REPORTING, &a1).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_an_access_token_makes_introspection_say_inactive() {
    let w = World::start(&Setup::default()).await;
    let (revoked, _) = w.tokens(REPORTING, None).await;
    let (kept, _) = w.tokens(REPORTING, None).await;
    assert_eq!(w.introspect(REPORTING, &revoked).await["active"], true);
    // client_secret_post at /revoke.
    let mut params = vec![
        ("token", revoked.as_str()),
        ("token_type_hint", "access_token"),
    ];
    params.extend(post_creds(REPORTING));
    assert_eq!(w.form_post("/revoke", &params, None).await.status, 200);
    assert_eq!(
        w.introspect(REPORTING, &revoked).await,
        json!({"active": false})
    );
    assert_eq!(
        w.introspect(REPORTING, &kept).await["active"],
        true,
        "only that jti is revoked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_answers_200_to_unknown_and_foreign_tokens_and_revokes_nothing() {
    let w = World::start(&Setup::default()).await;
    let (access, refresh) = w.tokens(REPORTING, None).await;
    for token in ["made-up", "a.b.c", ""] {
        let resp = w.revoke(REPORTING, token).await;
        assert_eq!(resp.status, 200, "unknown token `{token}`: {}", resp.text());
    }
    assert_eq!(w.revoke(BILLING, &refresh).await.status, 200);
    assert_eq!(w.revoke(BILLING, &access).await.status, 200);
    assert_eq!(
        w.introspect(REPORTING, &access).await["active"],
        true,
        "billing cannot revoke reporting's access token"
    );
    let resp = w.refresh(REPORTING, &refresh, None).await;
    assert_eq!(
        resp.status,
        200,
        "billing cannot revoke reporting's refresh token: {}",
        resp.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_and_introspect_require_client_authentication() {
    let w = World::start(&Setup::default()).await;
    let (access, refresh) = w.tokens(REPORTING, None).await;
    for path in ["/revoke", "/introspect"] {
        for token in [&access, &refresh] {
            let none = w.form_post(path, &[("token", token)], None).await;
            assert_oauth_error(
                &none,
                401,
                "invalid_client",
                &format!("{path} without auth"),
            );
            assert!(
                none.header("www-authenticate")
                    .is_some_and(|c| c.starts_with("Basic "))
            );
            let bad = w.form_post(path, &[("token", token)], Some(WRONG)).await;
            assert_oauth_error(&bad, 401, "invalid_client", &format!("{path} wrong secret"));
            let nobody = w.form_post(path, &[("token", token)], Some(NOBODY)).await;
            assert_oauth_error(
                &nobody,
                401,
                "invalid_client",
                &format!("{path} unknown client"),
            );
        }
        let missing = w.form_post(path, &[], Some(REPORTING)).await;
        assert_oauth_error(
            &missing,
            400,
            "invalid_request",
            &format!("{path} without token"),
        );
        let json = w
            .post(path, &[("content-type", "application/json")], "{}")
            .await;
        assert_oauth_error(&json, 400, "invalid_request", &format!("{path} JSON body"));
    }
    assert_eq!(w.introspect(REPORTING, &access).await["active"], true);
    assert_eq!(w.refresh(REPORTING, &refresh, None).await.status, 200);
}

// ---------------------------------------------------------------------------
// POST /introspect (RFC 7662)

#[tokio::test(flavor = "multi_thread")]
async fn introspecting_an_active_access_token_returns_its_claims() {
    let w = World::start(&Setup::default()).await;
    let (access, _) = w.tokens(REPORTING, Some("orders")).await;
    let (_, claims) = jwt(&access);
    let got = w.introspect(REPORTING, &access).await;
    assert_eq!(got["active"], true);
    assert_eq!(got["token_type"], "Bearer");
    for claim in [
        "scope",
        "client_id",
        "sub",
        "exp",
        "iat",
        "iss",
        "aud",
        "jti",
    ] {
        assert_eq!(got[claim], claims[claim], "`{claim}` in {got}");
    }
    assert_eq!(got["scope"], "orders");
    // A token for another API is none of this caller's business (RFC 7662
    // §4): `short` is an orders-api client, billing's token is for billing-api.
    let (billing_access, _) = w.tokens(BILLING, None).await;
    let got = w.introspect(SHORT, &billing_access).await;
    assert_eq!(
        got,
        json!({"active": false}),
        "a foreign audience is hidden"
    );
    // Another client's token for the caller's own API is visible.
    let got = w.introspect(SHORT, &access).await;
    assert_eq!(got["active"], true);
    assert_eq!(got["client_id"], "reporting");
}

#[tokio::test(flavor = "multi_thread")]
async fn introspecting_garbage_or_forged_tokens_says_only_active_false() {
    let w = World::start(&Setup::default()).await;
    let (access, _) = w.tokens(REPORTING, None).await;
    let (header, claims) = jwt(&access);
    let forged = TestKey::ec(header["kid"].as_str().unwrap()).sign(&header, &claims);
    let mut tampered_claims = claims.clone();
    tampered_claims["scope"] = json!("profile orders admin");
    let parts: Vec<&str> = access.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(tampered_claims.to_string()),
        parts[2]
    );
    let other_issuer = World::start(&Setup::default()).await;
    let (foreign, _) = other_issuer.tokens(REPORTING, None).await;
    for (case, token) in [
        ("garbage", "garbage".to_owned()),
        ("empty", String::new()),
        ("three dots", "a.b.c".to_owned()),
        ("forged signature", forged),
        ("tampered claims", tampered),
        ("another service's token", foreign),
    ] {
        let got = w.introspect(REPORTING, &token).await;
        assert_eq!(got, json!({"active": false}), "{case}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn introspecting_a_refresh_token_says_active_to_its_owner_until_it_is_used() {
    let w = World::start(&Setup::default()).await;
    let (_, refresh) = w.tokens(REPORTING, Some("profile")).await;
    assert_eq!(
        w.introspect(SHORT, &refresh).await,
        json!({"active": false}),
        "another client never sees a refresh token"
    );
    let got = w.introspect(REPORTING, &refresh).await;
    assert_eq!(got["active"], true, "{got}");
    assert!(
        got.get("token_type").is_none(),
        "not an RFC 6749 §7.1 token type: {got}"
    );
    assert_eq!(got["client_id"], "reporting");
    assert_eq!(got["scope"], "profile");
    assert_eq!(got["iss"], w.issuer().as_str());
    let exp = got["exp"].as_i64().expect("exp");
    assert!(
        (now() + 3590..=now() + 3600).contains(&exp),
        "1 h refresh ttl: {exp}"
    );
    assert_eq!(w.refresh(REPORTING, &refresh, None).await.status, 200);
    assert_eq!(
        w.introspect(REPORTING, &refresh).await,
        json!({"active": false}),
        "a used refresh token is inactive"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_introspect_permission_gets_403_unauthorized_client() {
    let w = World::start(&Setup::default()).await;
    let (access, refresh) = w.tokens(BILLING, None).await;
    for token in [&access, &refresh] {
        let resp = w
            .form_post("/introspect", &[("token", token)], Some(BILLING))
            .await;
        assert_oauth_error(&resp, 403, "unauthorized_client", "billing introspects");
        assert!(!resp.text().contains("billing-api"), "no token data leaks");
    }
}

// ---------------------------------------------------------------------------
// Metadata

#[tokio::test(flavor = "multi_thread")]
async fn metadata_names_the_issuer_and_endpoints_that_work() {
    let port = free_port();
    let w = World::start(&Setup {
        auth_port: port,
        alone: true,
        ..Setup::default()
    })
    .await;
    let issuer = format!("http://127.0.0.1:{port}");
    assert_eq!(w.issuer(), issuer);
    let oidc = w.get_json("/.well-known/openid-configuration").await;
    let oauth = w.get_json("/.well-known/oauth-authorization-server").await;
    assert_eq!(oidc, oauth, "one document at both addresses");
    assert_eq!(oidc["issuer"], issuer.as_str());
    for (key, path) in [
        ("token_endpoint", "/token"),
        ("jwks_uri", "/.well-known/jwks.json"),
        ("revocation_endpoint", "/revoke"),
        ("introspection_endpoint", "/introspect"),
    ] {
        assert_eq!(oidc[key], format!("{issuer}{path}"), "{key}");
    }
    assert_eq!(
        oidc["grant_types_supported"],
        json!(["client_credentials", "refresh_token"])
    );
    assert_eq!(
        oidc["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    let scopes = &oidc["scopes_supported"];
    assert_eq!(*scopes, json!(["invoices", "orders", "profile"]));
    let resp = w
        .client
        .get(&w.auth_url("/.well-known/openid-configuration"), &[])
        .await;
    assert!(resp.header("cache-control").unwrap().starts_with("public"));

    // The advertised URLs are the ones that answer.
    let jwks = w.client.get(oidc["jwks_uri"].as_str().unwrap(), &[]).await;
    assert_eq!(jwks.status, 200);
    assert!(jwks.json()["keys"].as_array().is_some_and(|k| k.len() == 1));
    let basic = basic_header(REPORTING);
    let post = |key: &str, body: String| {
        let url = oidc[key].as_str().unwrap().to_owned();
        let client = w.client.clone();
        let basic = basic.clone();
        async move {
            let headers = [
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", basic.as_str()),
            ];
            client.request("POST", &url, &headers, full(body)).await
        }
    };
    let token = post("token_endpoint", "grant_type=client_credentials".into()).await;
    assert_eq!(token.status, 200);
    let access = str_of(&token.json(), "access_token");
    let introspected = post("introspection_endpoint", form(&[("token", &access)])).await;
    assert_eq!(introspected.json()["active"], true);
    let revoked = post("revocation_endpoint", form(&[("token", &access)])).await;
    assert_eq!(revoked.status, 200);
    assert_eq!(w.introspect(REPORTING, &access).await["active"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_listen_port_0_the_default_issuer_names_the_bound_port() {
    let w = World::start(&Setup {
        alone: true,
        ..Setup::default()
    })
    .await;
    let meta = w.get_json("/.well-known/openid-configuration").await;
    let bound = format!("http://{}", w.auth_addr());
    assert_eq!(meta["issuer"], bound.as_str());
    assert_eq!(meta["token_endpoint"], format!("{bound}/token"));
}

// ---------------------------------------------------------------------------
// Restart and key rotation

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_keys_refresh_tokens_and_revocations() {
    let dir = TempDir::new("restart");
    let setup = Setup {
        auth_port: free_port(),
        dir: Some(dir.path().to_owned()),
        ..Setup::default()
    };
    let w = World::start(&setup).await;
    let kids_before = w.kids().await;
    let (early_access, early_refresh) = w.tokens(REPORTING, None).await;
    let live = str_of(
        &w.refresh(REPORTING, &early_refresh, None).await.json(),
        "refresh_token",
    );
    let (_, revoked_refresh) = w.tokens(REPORTING, None).await;
    let (revoked_access, _) = w.tokens(REPORTING, None).await;
    assert_eq!(w.revoke(REPORTING, &revoked_refresh).await.status, 200);
    assert_eq!(w.revoke(REPORTING, &revoked_access).await.status, 200);
    w.stop().await;

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("keys.json"))
            .expect("the key file exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is private");
    }
    assert!(
        dir.path().join("auth.db").is_file(),
        "the state file exists"
    );

    let w = World::start(&setup).await;
    assert_eq!(
        w.kids().await,
        kids_before,
        "the same key after the restart"
    );
    let resp = w.api("/profile", &early_access).await;
    assert_eq!(resp.status, 200, "a pre-restart token: {}", resp.text());
    assert_eq!(w.upstream.last().header("x-auth-client"), Some("reporting"));

    let resp = w.refresh(REPORTING, &live, None).await;
    assert_eq!(
        resp.status,
        200,
        "a live refresh token survives: {}",
        resp.text()
    );
    assert_eq!(w.introspect(REPORTING, &early_access).await["active"], true);
    let again = w.refresh(REPORTING, &live, None).await;
    assert_oauth_error(
        &again,
        400,
        "invalid_grant",
        "still single-use after restart",
    );
    let used = w.refresh(REPORTING, &early_refresh, None).await;
    assert_oauth_error(&used, 400, "invalid_grant", "used before the restart");
    let revoked = w.refresh(REPORTING, &revoked_refresh, None).await;
    assert_oauth_error(&revoked, 400, "invalid_grant", "revoked before the restart");
    assert_eq!(
        w.introspect(REPORTING, &revoked_access).await,
        json!({"active": false}),
        "an access token revoked before the restart"
    );
    assert_eq!(
        w.introspect(REPORTING, &early_access).await,
        json!({"active": false}),
        "replaying a used refresh token revoked its family's access tokens too"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_the_key_file_switches_signing_and_keeps_the_old_key_published() {
    let dir = TempDir::new("rotate");
    let w = World::start(&Setup {
        dir: Some(dir.path().to_owned()),
        ..Setup::default()
    })
    .await;
    let key_file = dir.path().join("keys.json");
    let old_kid = w.kids().await.remove(0);
    let (checked_before, _) = w.tokens(REPORTING, Some("profile")).await;
    let (first_seen_after, _) = w.tokens(REPORTING, Some("profile")).await;
    assert_eq!(w.api("/profile", &checked_before).await.status, 200);

    // What `portcullis keys rotate` does, while the service runs.
    let mut ring = KeyRing::load_or_create(&key_file, SigningAlg::ES256, now()).unwrap();
    let new_kid = ring
        .rotate(SigningAlg::ES256, now(), 3600)
        .unwrap()
        .kid
        .clone();
    ring.save(&key_file).unwrap();
    assert_ne!(new_kid, old_kid);

    let deadline = Instant::now() + Duration::from_secs(8);
    let rotated = loop {
        let (access, _) = w.tokens(REPORTING, Some("profile")).await;
        if jwt(&access).0["kid"] == new_kid.as_str() {
            break access;
        }
        assert!(
            Instant::now() < deadline,
            "new tokens never got the new kid"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let kids = w.kids().await;
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert!(
        kids.contains(&old_kid) && kids.contains(&new_kid),
        "{kids:?}"
    );
    verify_independently(&rotated, &w.jwks().await, &w.issuer(), "orders-api");

    let before = w.upstream.count();
    eventually(
        "the in-process gateway accepts the new key",
        Duration::from_secs(5),
        || async { w.api("/profile", &rotated).await.status == 200 },
    )
    .await;
    let resp = w.api("/profile", &first_seen_after).await;
    assert_eq!(
        resp.status,
        200,
        "old-key token after rotation: {}",
        resp.text()
    );
    assert!(w.upstream.count() > before);
    assert_eq!(
        w.introspect(REPORTING, &first_seen_after).await["active"],
        true
    );
}

// ---------------------------------------------------------------------------
// Gateways in front of the service

#[tokio::test(flavor = "multi_thread")]
async fn the_in_process_gateway_accepts_service_tokens_and_forwards_their_claims() {
    let w = World::start(&Setup::default()).await;
    let (access, _) = w.tokens(REPORTING, None).await;
    let resp = w.api("/profile", &access).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-upstream"), Some("yes"));
    let seen = w.upstream.last();
    assert_eq!(seen.path_and_query, "/profile");
    assert_eq!(seen.header("x-auth-subject"), Some("reporting"));
    assert_eq!(seen.header("x-auth-client"), Some("reporting"));
    assert_eq!(w.api("/orders/7", &access).await.status, 200);

    let legacy = str_of(&w.token(LEGACY, None).await, "access_token");
    assert_eq!(w.api("/profile", &legacy).await.status, 200);
    assert_eq!(w.upstream.last().header("x-auth-subject"), Some("legacy"));
    assert_eq!(w.upstream.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_in_process_gateway_refuses_missing_scope_other_audience_and_forgeries() {
    let w = World::start(&Setup::default()).await;
    let (profile_only, _) = w.tokens(REPORTING, Some("profile")).await;
    let resp = w.api("/orders/1", &profile_only).await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    let challenge = resp.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"orders\""),
        "{challenge}"
    );

    let (billing, _) = w.tokens(BILLING, Some("profile")).await;
    let resp = w.api("/profile", &billing).await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    let challenge = resp.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"invalid_token\"")
            && challenge.contains("token audience not accepted"),
        "{challenge}"
    );

    let (header, claims) = jwt(&profile_only);
    let forged = TestKey::ec(header["kid"].as_str().unwrap()).sign(&header, &claims);
    let resp = w.api("/profile", &forged).await;
    assert_eq!(resp.status, 401, "forged signature: {}", resp.text());

    let (_, refresh) = w.tokens(REPORTING, None).await;
    let resp = w.api("/profile", &refresh).await;
    assert_eq!(resp.status, 401, "a refresh token is no access token");

    assert_eq!(
        w.upstream.count(),
        0,
        "nothing refused reached the upstream"
    );
    assert_eq!(w.api("/profile", &profile_only).await.status, 200);
    assert_eq!(w.upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_separate_gateway_uses_the_service_over_http_by_discovery_or_jwks_uri() {
    let port = free_port();
    let service = World::start(&Setup {
        auth_port: port,
        alone: true,
        ..Setup::default()
    })
    .await;
    let issuer = service.issuer();
    assert_eq!(issuer, format!("http://127.0.0.1:{port}"));
    let upstream = Upstream::start().await;
    let gateway = |source: String| {
        let upstream = upstream.url();
        let issuer = issuer.clone();
        async move {
            TestGateway::start(&format!(
                r#"
listen: 127.0.0.1:0
providers:
  - name: portcullis-auth
    issuer: {issuer}
{source}
    audiences: [orders-api]
    algorithms: [ES256]
    require_typ: at+jwt
upstreams:
  app: {{ url: "{upstream}" }}
routes:
  - {{ path: /profile, upstream: app, scopes: [profile] }}
  - {{ path: /orders/**, upstream: app, scopes: [orders] }}
"#
            ))
            .await
        }
    };
    let by_discovery = gateway("    discovery: true".into()).await;
    let by_jwks_uri = gateway(format!("    jwks_uri: {issuer}/.well-known/jwks.json")).await;

    let (access, _) = service.tokens(REPORTING, None).await;
    let (profile_only, _) = service.tokens(REPORTING, Some("profile")).await;
    let (billing, _) = service.tokens(BILLING, None).await;
    for (name, gw) in [("discovery", &by_discovery), ("jwks_uri", &by_jwks_uri)] {
        let get = async |path: &str, token: &str| {
            service.client.get_bearer(&gw.url(path), token, &[]).await
        };
        let before = upstream.count();
        let resp = get("/orders/1", &access).await;
        assert_eq!(resp.status, 200, "{name}: {}", resp.text());
        assert_eq!(get("/profile", &profile_only).await.status, 200, "{name}");
        assert_eq!(get("/orders/1", &profile_only).await.status, 403, "{name}");
        assert_eq!(get("/profile", &billing).await.status, 401, "{name}");
        assert_eq!(upstream.count(), before + 2, "{name}: refusals stay out");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_refresh_takes_only_the_refresh_grant() {
    let w = World::start(&Setup::default()).await;
    let resp = w
        .form_post(
            "/token/refresh",
            &[("grant_type", "client_credentials")],
            Some(REPORTING),
        )
        .await;
    assert_oauth_error(
        &resp,
        400,
        "unsupported_grant_type",
        "client credentials at /token/refresh",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_grants_only_the_scopes_the_client_still_has() {
    let dir = TempDir::new("narrowed");
    let wide = Setup {
        auth_port: free_port(),
        dir: Some(dir.path().to_owned()),
        ..Setup::default()
    };
    let w = World::start(&wide).await;
    let (_, refresh) = w.tokens(REPORTING, Some("profile orders")).await;
    w.stop().await;

    let narrow = Setup {
        narrow_reporting: true,
        ..wide
    };
    let w = World::start(&narrow).await;
    let asked_for_orders = w.refresh(REPORTING, &refresh, Some("orders")).await;
    assert_oauth_error(
        &asked_for_orders,
        400,
        "invalid_scope",
        "orders was taken away",
    );
    let resp = w.refresh(REPORTING, &refresh, None).await;
    assert_eq!(
        resp.status,
        200,
        "the refused request did not burn the token: {}",
        resp.text()
    );
    let body = resp.json();
    assert_eq!(
        body["scope"], "profile",
        "the old grant no longer gives orders"
    );
    let access = str_of(&body, "access_token");
    assert_eq!(w.api("/orders/1", &access).await.status, 403);
    let next = str_of(&body, "refresh_token");
    let resp = w.refresh(REPORTING, &next, Some("profile orders")).await;
    assert_oauth_error(&resp, 400, "invalid_scope", "nor does its successor");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_refresh_token_also_revokes_the_access_tokens_of_its_family() {
    let w = World::start(&Setup::default()).await;
    let (first_access, refresh) = w.tokens(REPORTING, None).await;
    let rotated = w.refresh(REPORTING, &refresh, None).await.json();
    let second_access = str_of(&rotated, "access_token");
    let (other_access, _) = w.tokens(REPORTING, None).await;
    assert_eq!(
        w.revoke(REPORTING, &str_of(&rotated, "refresh_token"))
            .await
            .status,
        200
    );
    for (case, token) in [("first", &first_access), ("second", &second_access)] {
        assert_eq!(
            w.introspect(REPORTING, token).await,
            json!({"active": false}),
            "{case}"
        );
    }
    assert_eq!(
        w.introspect(REPORTING, &other_access).await["active"],
        true,
        "another family lives on"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_key_file_never_replaces_the_keys_in_use() {
    let dir = TempDir::new("vanished");
    let w = World::start(&Setup {
        dir: Some(dir.path().to_owned()),
        ..Setup::default()
    })
    .await;
    let kids = w.kids().await;
    let (access, _) = w.tokens(REPORTING, Some("profile")).await;
    std::fs::rename(
        dir.path().join("keys.json"),
        dir.path().join("elsewhere.json"),
    )
    .expect("move the key file");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(w.kids().await, kids, "the published keys did not change");
    assert!(
        !dir.path().join("keys.json").exists(),
        "the service did not re-create the file"
    );
    assert_eq!(w.api("/profile", &access).await.status, 200);
    let (fresh, _) = w.tokens(REPORTING, Some("profile")).await;
    assert_eq!(w.api("/profile", &fresh).await.status, 200);
}
