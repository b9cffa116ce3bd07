//! `portcullis demo`: the seed's whole sequence on this machine, in one
//! command. It starts the built-in auth service, a small echo upstream and
//! the gateway from a config it prints, then plays the client's part step by
//! step, and (unless `--once`) keeps running with curl commands to try.

use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::Gateway;
use crate::error::Body;
use crate::headers::ClientInfo;
use crate::server::{self, Service};

const CLIENT_ID: &str = "demo-client";
/// A second client with a longer token lifetime, for trying things by hand.
const CURL_CLIENT_ID: &str = "demo-cli";
const CLIENT_SECRET: &str = "demo-secret";
/// Short, so that the demo can show expiry and refresh.
const ACCESS_TTL_SECS: u64 = 5;

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo config: {0}")]
    Config(String),
    #[error("{0}")]
    Start(#[from] crate::StartError),
    #[error("echo upstream: {0}")]
    Echo(std::io::Error),
    #[error("step {step}: expected HTTP {expected}, got {got}")]
    Step {
        step: &'static str,
        expected: u16,
        got: u16,
    },
    #[error("step {0}: {1}")]
    Client(&'static str, String),
}

/// The ports the demo uses: the usual ones when free, else any free ones.
struct Ports {
    gateway: u16,
    auth: u16,
    upstream: u16,
}

impl Ports {
    fn pick() -> Self {
        let free = |preferred: u16| {
            StdListener::bind(("127.0.0.1", preferred))
                .or_else(|_| StdListener::bind(("127.0.0.1", 0)))
                .and_then(|l| l.local_addr())
                .map_or(0, |a| a.port())
        };
        Self {
            gateway: free(8080),
            auth: free(9000),
            upstream: free(3000),
        }
    }
}

/// The config the demo runs, as YAML (it is printed for the user).
fn config_yaml(ports: &Ports, secret_hash: &str) -> String {
    format!(
        r#"# The demo's gateway.yaml (the client secret is "{CLIENT_SECRET}")
listen: 127.0.0.1:{gateway}
realm: demo-api
auth_service:                       # the built-in auth service (token, refresh, JWKS, revoke)
  listen: 127.0.0.1:{auth}
  clients:
    - client_id: {CLIENT_ID}
      client_secret_hash: "{secret_hash}"
      scopes: [profile]
      audiences: [demo-api]
      access_token_ttl: {ACCESS_TTL_SECS}s            # short, to show expiry and refresh
      refresh_token_ttl: 1h
    - client_id: {CURL_CLIENT_ID}                 # the same secret; tokens for trying things by hand
      client_secret_hash: "{secret_hash}"
      scopes: [profile]
      audiences: [demo-api]
      access_token_ttl: 15m
      introspect: true
providers:
  - {{ name: builtin, auth_service: true, audiences: [demo-api], algorithms: [ES256], leeway: 0s, require_typ: at+jwt }}
upstreams:
  echo: {{ url: "http://127.0.0.1:{upstream}" }}
routes:
  - {{ path: /resource, upstream: echo, forward_claims: {{ sub: X-Auth-Subject, scope: X-Auth-Scope }} }}
  - {{ path: /profile, methods: [GET], upstream: echo, scopes: [profile] }}
  - {{ path: /admin/**, upstream: echo, scopes: [admin] }}
"#,
        gateway = ports.gateway,
        auth = ports.auth,
        upstream = ports.upstream,
    )
}

/// Run the demo. With `once`, stop after the sequence (for tests and CI).
pub async fn run(once: bool) -> Result<(), DemoError> {
    let ports = Ports::pick();
    let hash =
        crate::auth_service::clients::hash_secret(CLIENT_SECRET).map_err(DemoError::Config)?;
    let yaml = config_yaml(&ports, &hash);
    let config = crate::config::from_str(&yaml, "demo.yaml", |_| None)
        .map_err(|e| DemoError::Config(e.to_string()))?;

    println!("Portcullis demo: the API token authentication sequence, end to end.\n");
    println!("{yaml}");
    let (_stop_echo, stop) = watch::channel(false);
    let echo = tokio::net::TcpListener::bind(("127.0.0.1", ports.upstream))
        .await
        .map_err(DemoError::Echo)?;
    tokio::spawn(server::serve(
        echo,
        Arc::new(Echo),
        server::ServerSettings::default(),
        stop,
    ));
    let gateway = Gateway::start(config).await?;
    let gateway_url = format!(
        "http://{}",
        gateway
            .local_addr()
            .unwrap_or(([127, 0, 0, 1], ports.gateway).into())
    );
    let auth_url = format!(
        "http://{}",
        gateway
            .auth_addr()
            .unwrap_or(([127, 0, 0, 1], ports.auth).into())
    );
    println!(
        "Started: auth service {auth_url}, gateway {gateway_url}, echo upstream http://127.0.0.1:{}\n",
        ports.upstream
    );

    let client = DemoClient::new();
    sequence(&client, &gateway_url, &auth_url).await?;

    println!("\nAll six steps behaved as the sequence says.");
    if once {
        gateway.shutdown().await;
        return Ok(());
    }
    print_curl(&auth_url, &gateway_url);
    println!("\nThe demo keeps running; Ctrl-C stops it.");
    let _ = tokio::signal::ctrl_c().await;
    gateway.shutdown().await;
    Ok(())
}

/// The seed's sequence, each step checked.
async fn sequence(client: &DemoClient, gateway: &str, auth: &str) -> Result<(), DemoError> {
    let credentials = [("grant_type", "client_credentials"), ("scope", "profile")];
    println!(
        "1. Client -> Auth Service: POST {auth}/token (client credentials, Basic {CLIENT_ID}:{CLIENT_SECRET})"
    );
    let (status, first) = client
        .form(&format!("{auth}/token"), &credentials, true)
        .await?;
    expect("1", 200, status)?;
    println!(
        "   <- 200 bearer token {} (expires_in {} s, scope \"{}\") and a refresh token",
        short(&first["access_token"]),
        first["expires_in"],
        first["scope"].as_str().unwrap_or("")
    );
    let token = first["access_token"].as_str().unwrap_or("").to_owned();

    println!(
        "2. Client -> API (gateway): GET {gateway}/resource with Authorization: Bearer <token>"
    );
    let (status, body, _) = client
        .get(&format!("{gateway}/resource"), Some(&token))
        .await?;
    expect("2", 200, status)?;
    println!("   <- 200 from the upstream, which saw: {body}");

    println!("3. GET {gateway}/admin/reports, which needs scope `admin` the client lacks");
    let (status, _, challenge) = client
        .get(&format!("{gateway}/admin/reports"), Some(&token))
        .await?;
    expect("3", 403, status)?;
    println!("   <- 403 WWW-Authenticate: {challenge}");

    println!("4. (the token expires after {ACCESS_TTL_SECS} s: waiting)");
    tokio::time::sleep(Duration::from_secs(ACCESS_TTL_SECS + 1)).await;
    let (status, _, challenge) = client
        .get(&format!("{gateway}/resource"), Some(&token))
        .await?;
    expect("4", 401, status)?;
    println!("   GET /resource with the expired token <- 401 WWW-Authenticate: {challenge}");

    let refresh = first["refresh_token"].as_str().unwrap_or("").to_owned();
    println!("5. Client -> Auth Service: POST {auth}/token/refresh (the refresh token)");
    let (status, second) = client
        .form(
            &format!("{auth}/token/refresh"),
            &[("refresh_token", refresh.as_str())],
            true,
        )
        .await?;
    expect("5", 200, status)?;
    println!(
        "   <- 200 new bearer token {} and a new refresh token",
        short(&second["access_token"])
    );
    let renewed = second["access_token"].as_str().unwrap_or("");
    let (status, _, _) = client
        .get(&format!("{gateway}/resource"), Some(renewed))
        .await?;
    expect("5", 200, status)?;
    println!("   GET /resource with the new token <- 200");

    println!("6. Replay of the old, already used refresh token");
    let (status, refused) = client
        .form(
            &format!("{auth}/token/refresh"),
            &[("refresh_token", refresh.as_str())],
            true,
        )
        .await?;
    expect("6", 400, status)?;
    println!(
        "   <- 400 {}: {} (the new refresh token from step 5 is revoked with it)",
        refused["error"].as_str().unwrap_or(""),
        refused["error_description"].as_str().unwrap_or("")
    );
    Ok(())
}

fn expect(step: &'static str, expected: u16, got: u16) -> Result<(), DemoError> {
    if expected == got {
        Ok(())
    } else {
        Err(DemoError::Step {
            step,
            expected,
            got,
        })
    }
}

/// The start of a token, enough to recognise it.
fn short(token: &Value) -> String {
    let token = token.as_str().unwrap_or("");
    format!("{}…", token.get(..24).unwrap_or(token))
}

fn print_curl(auth: &str, gateway: &str) {
    let c = CURL_CLIENT_ID;
    println!("\nTry it yourself (client {c}, secret {CLIENT_SECRET}, 15-minute tokens):");
    println!(
        "  RESPONSE=$(curl -s -u {c}:{CLIENT_SECRET} -d grant_type=client_credentials {auth}/token)"
    );
    println!(
        "  TOKEN=$(printf %s \"$RESPONSE\" | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')"
    );
    println!(
        "  REFRESH=$(printf %s \"$RESPONSE\" | sed -E 's/.*\"refresh_token\":\"([^\"]+)\".*/\\1/')"
    );
    println!("  curl -i -H \"Authorization: Bearer $TOKEN\" {gateway}/resource");
    println!(
        "  curl -i -H \"Authorization: Bearer $TOKEN\" {gateway}/admin/reports    # 403: no admin scope"
    );
    println!(
        "  curl -i {gateway}/resource                                         # 401: no token"
    );
    println!("  curl -s -u {c}:{CLIENT_SECRET} -d refresh_token=$REFRESH {auth}/token/refresh");
    println!("  curl -s -u {c}:{CLIENT_SECRET} -d token=$TOKEN {auth}/introspect");
    println!("  curl -i -u {c}:{CLIENT_SECRET} -d token=$TOKEN {auth}/revoke");
    println!("  curl -s {auth}/.well-known/jwks.json");
}

/// The demo's HTTP client.
struct DemoClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl DemoClient {
    fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// POST a form, optionally with the demo client's Basic credentials.
    async fn form(
        &self,
        url: &str,
        fields: &[(&str, &str)],
        basic: bool,
    ) -> Result<(u16, Value), DemoError> {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut request =
            Request::post(url).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if basic {
            let credentials = STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
            request = request.header(header::AUTHORIZATION, format!("Basic {credentials}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| DemoError::Client("request", e.to_string()))?;
        let (status, _, body) = self.send(request).await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// GET with an optional bearer token: status, body, WWW-Authenticate.
    async fn get(
        &self,
        url: &str,
        token: Option<&str>,
    ) -> Result<(u16, String, String), DemoError> {
        let mut request = Request::get(url);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| DemoError::Client("request", e.to_string()))?;
        let (status, challenge, body) = self.send(request).await?;
        Ok((
            status,
            String::from_utf8_lossy(&body).into_owned(),
            challenge,
        ))
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<(u16, String, Bytes), DemoError> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| DemoError::Client("send", e.to_string()))?;
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| DemoError::Client("read", e.to_string()))?
            .to_bytes();
        Ok((status, challenge, body))
    }
}

/// The demo's upstream: answers with what reached it.
struct Echo;

impl Service for Echo {
    type Body = Body;

    async fn call(&self, request: Request<Incoming>, _client: &ClientInfo) -> Response<Body> {
        let seen: serde_json::Map<String, Value> = request
            .headers()
            .iter()
            .filter(|(name, _)| {
                name.as_str().starts_with("x-auth-") || name.as_str() == "x-forwarded-for"
            })
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    json!(value.to_str().unwrap_or("")),
                )
            })
            .collect();
        let body = json!({"path": request.uri().path(), "headers": seen}).to_string();
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *response.status_mut() = StatusCode::OK;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }
}
