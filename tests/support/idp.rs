//! A real JWKS / OIDC discovery server on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use super::{Body, bind_local, full, spawn_server};

/// How `GET /jwks` is answered (discovery is always served normally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdpMode {
    /// `200` with `{"keys": [...]}` (the default).
    Serving,
    /// `500` with a small text body.
    Failing500,
    /// `200`, `content-type: application/json`, body that is not JSON.
    Garbage,
    /// `200` with `{"keys": []}`.
    EmptySet,
    /// Accept the request and never answer (for fetch-timeout tests). The
    /// request is still counted in [`Idp::jwks_hits`].
    Hang,
}

struct State {
    keys: Vec<Value>,
    mode: IdpMode,
    cache_control: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    jwks_hits: AtomicUsize,
    discovery_hits: AtomicUsize,
    issuer: String,
}

/// A JWKS / OIDC discovery server.
///
/// * `GET /jwks` → `{"keys": [...]}` (`content-type: application/json`), subject to [`IdpMode`].
/// * `GET /.well-known/openid-configuration` → `{"issuer": issuer(), "jwks_uri": jwks_uri()}`.
/// * anything else → 404.
///
/// Stopped (listener and all connections closed) when dropped.
pub struct Idp {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    /// While stopped: a socket bound to `addr` but not listening, so the port
    /// stays reserved and connects are refused.
    placeholder: Option<TcpSocket>,
}

impl Idp {
    /// Start serving `keys` (public JWKs, e.g. [`super::TestKey::public_jwk`]).
    pub async fn start(keys: Vec<Value>) -> Idp {
        let listener = bind_local().await;
        let addr = listener.local_addr().expect("idp local_addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                keys,
                mode: IdpMode::Serving,
                cache_control: None,
            }),
            jwks_hits: AtomicUsize::new(0),
            discovery_hits: AtomicUsize::new(0),
            issuer: format!("http://{addr}"),
        });
        let mut idp = Idp {
            addr,
            shared,
            task: None,
            placeholder: None,
        };
        idp.serve(listener);
        idp
    }

    fn serve(&mut self, listener: TcpListener) {
        let shared = self.shared.clone();
        self.task = Some(spawn_server(listener, move |req| {
            let shared = shared.clone();
            async move { handle(&shared, req).await }
        }));
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// `issuer() + "/jwks"`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.shared.issuer)
    }

    /// `issuer() + "/.well-known/openid-configuration"`.
    pub fn discovery_uri(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.shared.issuer)
    }

    /// Replace the served key set (key rotation); visible to the next request.
    pub fn set_keys(&self, keys: Vec<Value>) {
        self.shared.state.lock().expect("idp state").keys = keys;
    }

    /// Change how `/jwks` answers from the next request on.
    pub fn set_mode(&self, mode: IdpMode) {
        self.shared.state.lock().expect("idp state").mode = mode;
    }

    /// Send (`Some`) or stop sending (`None`) a `Cache-Control` header on `/jwks`.
    pub fn set_cache_control(&self, value: Option<&str>) {
        self.shared.state.lock().expect("idp state").cache_control = value.map(str::to_string);
    }

    /// Number of `GET /jwks` requests received so far (in any mode).
    pub fn jwks_hits(&self) -> usize {
        self.shared.jwks_hits.load(Ordering::SeqCst)
    }

    /// Number of `GET /.well-known/openid-configuration` requests received so far.
    pub fn discovery_hits(&self) -> usize {
        self.shared.discovery_hits.load(Ordering::SeqCst)
    }

    /// Take the IdP down: close the listener and every open connection (also
    /// in-flight `Hang` requests). The port stays reserved by a bound,
    /// non-listening socket, so connects get "connection refused" and no other
    /// server can take the port. No-op if already stopped.
    pub async fn stop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        task.abort();
        let _ = task.await; // listener and connections are dropped once this returns
        let socket = TcpSocket::new_v4().expect("idp placeholder socket");
        socket
            .set_reuseaddr(true)
            .expect("idp placeholder SO_REUSEADDR");
        socket
            .bind(self.addr)
            .unwrap_or_else(|e| panic!("idp: re-reserve {} after stop: {e}", self.addr));
        self.placeholder = Some(socket);
    }

    /// Bring a stopped IdP back on the same address (keys, mode and hit
    /// counters are kept). No-op if running.
    pub async fn restart(&mut self) {
        let Some(socket) = self.placeholder.take() else {
            return;
        };
        let listener = socket.listen(1024).expect("idp listen again");
        self.serve(listener);
    }

    /// Is the IdP currently serving (not stopped)?
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(body).expect("serialize json")))
        .expect("build response")
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let is_get = req.method() == http::Method::GET;
    match req.uri().path() {
        "/jwks" if is_get => {
            shared.jwks_hits.fetch_add(1, Ordering::SeqCst);
            let (keys, mode, cache_control) = {
                let st = shared.state.lock().expect("idp state");
                (st.keys.clone(), st.mode, st.cache_control.clone())
            };
            let mut resp = match mode {
                IdpMode::Serving => json_response(StatusCode::OK, &json!({ "keys": keys })),
                IdpMode::EmptySet => json_response(StatusCode::OK, &json!({ "keys": [] })),
                IdpMode::Failing500 => Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .header("content-type", "text/plain")
                    .body(full("idp failure"))
                    .expect("build response"),
                IdpMode::Garbage => Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(full("{\"keys\": [ this is not json"))
                    .expect("build response"),
                IdpMode::Hang => std::future::pending().await,
            };
            if let Some(cc) = cache_control {
                resp.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    cc.parse().expect("valid cache-control value"),
                );
            }
            resp
        }
        "/.well-known/openid-configuration" if is_get => {
            shared.discovery_hits.fetch_add(1, Ordering::SeqCst);
            json_response(
                StatusCode::OK,
                &json!({
                    "issuer": shared.issuer,
                    "jwks_uri": format!("{}/jwks", shared.issuer),
                }),
            )
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("not found"))
            .expect("build response"),
    }
}
