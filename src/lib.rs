//! Portcullis: a reverse-proxy API gateway that enforces bearer tokens.
//!
//! # Layout
//! - `config`: gateway.yaml → typed `Config` (parse, check, compile; errors with file:line).
//! - `runtime`: the compiled config plus live state, shared by all requests.
//! - `server`: accept loop; `pipeline`: one request's stages in order.
//! - `path`: canonical request paths; `routes`: path/method → route.
//! - `authn`: bearer extraction, JWT parsing and verification, JWKS and
//!   verified-token caches; `authz`: scopes and claims → `Permit`.
//! - `headers`: hop-by-hop, forwarded and identity headers; `forward`: the
//!   upstream client; `error`: every failure → its response.
//! - `claims`: claim paths and scope words; `fetch`: the gateway's own HTTP client.
//! - `tls`: listener certificates (reloaded on change), client certificates,
//!   TLS to upstreams; `dpop`: RFC 9449 proofs.
#![forbid(unsafe_code)]

pub mod auth_service;
pub mod authn;
pub mod authz;
pub mod claims;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dpop;
pub mod error;
pub mod fetch;
pub mod forward;
pub mod headers;
pub mod path;
pub mod pipeline;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth_service::AuthService;
use crate::authn::Authenticator;
use crate::authn::provider::KeySource;
use crate::config::Config;
use crate::dpop::DpopVerifier;
use crate::fetch::Fetcher;
use crate::runtime::Runtime;
use crate::server::Service;
use crate::tls::server::ServerTls;

/// Why the process could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("auth service: {0}")]
    AuthService(#[from] auth_service::StartError),
    #[error("starting the auth service panicked")]
    Panicked,
}

/// A service bound to its listener.
struct Listening<S> {
    addr: SocketAddr,
    service: Arc<S>,
    task: JoinHandle<()>,
}

/// A failed start or a dropped `Gateway` stops what was already serving.
impl<S> Drop for Listening<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: Service> Listening<S> {
    /// Serve `service` on an already bound listener.
    fn serve(
        listener: TcpListener,
        service: Arc<S>,
        tls: Option<Arc<ServerTls>>,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, StartError> {
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(([0, 0, 0, 0], 0).into(), e))?;
        let task = tokio::spawn(server::serve(listener, Arc::clone(&service), tls, stop));
        Ok(Self {
            addr,
            service,
            task,
        })
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Listen(addr, e))
}

/// What one config runs: the gateway, the built-in auth service, or both.
/// Dropping it stops the accept loops.
pub struct Gateway {
    gateway: Option<Listening<Runtime>>,
    auth: Option<Listening<AuthService>>,
    shutdown: watch::Sender<bool>,
}

impl Gateway {
    /// Start the auth service (when configured) first, since a gateway in
    /// the same process reads its keys; then fetch every provider's keys (so
    /// the first requests find them), bind `config.listen` and serve.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let (shutdown, stop) = watch::channel(false);
        let mut providers = config.providers;
        let auth = match config.auth_service {
            Some(mut auth_config) => {
                let listener = bind(auth_config.listen).await?;
                // An issuer derived from `listen: …:0` names the port really bound,
                // here and in the providers that stand for this service.
                if auth_config.issuer_from_listen && auth_config.listen.port() == 0 {
                    let bound = listener
                        .local_addr()
                        .map_err(|e| StartError::Listen(auth_config.listen, e))?;
                    auth_config.issuer = format!("http://{bound}").into();
                    for provider in providers
                        .iter_mut()
                        .filter(|p| matches!(p.keys, KeySource::AuthService))
                    {
                        provider.issuer = auth_config.issuer.clone();
                    }
                }
                // Key generation, file and database work: off the async threads.
                let service = tokio::task::spawn_blocking(move || AuthService::new(auth_config))
                    .await
                    .map_err(|_| StartError::Panicked)??;
                let service = Arc::new(service);
                service.spawn_housekeeping();
                let bound = Listening::serve(listener, service, None, stop.clone())?;
                tracing::info!(listen = %bound.addr, issuer = %bound.service.config().issuer, "auth service ready");
                Some(bound)
            }
            None => None,
        };
        let gateway = match config.listen {
            Some(listen) => {
                let local = auth.as_ref().map(|a| a.service.local_keys());
                let authn = Authenticator::new(
                    providers,
                    config.token_cache_entries,
                    &Fetcher::new(),
                    local,
                );
                let runtime = Arc::new(Runtime::new(
                    config.realm,
                    config.routes,
                    config.identity_headers,
                    authn,
                    config.api_keys,
                    DpopVerifier::new(config.dpop),
                    config.public_scheme,
                ));
                runtime.authn.load_keys().await;
                if let Some(tls) = &config.tls {
                    tls.spawn_watcher();
                }
                let bound = Listening::serve(bind(listen).await?, runtime, config.tls, stop)?;
                log_ready(&bound);
                Some(bound)
            }
            None => None,
        };
        Ok(Self {
            gateway,
            auth,
            shutdown,
        })
    }

    /// The gateway's bound address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().map(|g| g.addr)
    }

    /// The auth service's bound address.
    pub fn auth_addr(&self) -> Option<SocketAddr> {
        self.auth.as_ref().map(|a| a.addr)
    }

    /// The gateway's live state: routes, providers and their key caches, counters.
    pub fn runtime(&self) -> Option<&Runtime> {
        self.gateway.as_ref().map(|g| &*g.service)
    }

    /// The built-in auth service, when it runs.
    pub fn auth_service(&self) -> Option<&AuthService> {
        self.auth.as_ref().map(|a| &*a.service)
    }

    /// Stop accepting connections and wait for the accept loops to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(g) = self.gateway.as_mut() {
            let _ = (&mut g.task).await;
        }
        if let Some(a) = self.auth.as_mut() {
            let _ = (&mut a.task).await;
        }
    }
}

fn log_ready(bound: &Listening<Runtime>) {
    let without_keys: Vec<&str> = bound
        .service
        .authn
        .providers()
        .iter()
        .filter(|p| !matches!(p.config.keys, KeySource::None) && !p.keys.is_loaded())
        .map(|p| &*p.config.name)
        .collect();
    if without_keys.is_empty() {
        tracing::info!(listen = %bound.addr, routes = bound.service.routes.iter().count(), "ready");
    } else {
        tracing::warn!(listen = %bound.addr, ?without_keys, "listening, but these providers have no keys yet: their tokens get 503");
    }
}
