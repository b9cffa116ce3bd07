//! Portcullis: a reverse-proxy API gateway that enforces bearer tokens.
//!
//! # Layout
//! - `config`: gateway.yaml → typed `Config` (parse, check, compile; errors with file:line).
//! - `runtime`: the compiled config plus live state, shared by all requests;
//!   `live`: the current runtime, swapped on reload.
//! - `admin`: health, readiness, metrics; `metrics`: the Prometheus counters;
//!   `access`: the access log and request ids.
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

pub mod access;
pub mod admin;
pub mod auth_service;
pub mod authn;
pub mod authz;
pub mod claims;
pub mod cli;
pub mod config;
pub mod cors;
pub mod demo;
pub mod digest;
pub mod dpop;
pub mod error;
pub mod explain;
pub mod fetch;
pub mod forward;
pub mod headers;
pub mod live;
pub mod metrics;
pub mod path;
pub mod pipeline;
pub mod rate_limit;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upgrade;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::auth_service::AuthService;
use crate::authn::provider::KeySource;
use crate::config::Config;
use crate::live::{Fixed, Live};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::server::{ServerSettings, Service};

/// Why the process could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("auth service: {0}")]
    AuthService(#[from] auth_service::StartError),
    #[error("starting the auth service panicked")]
    Panicked,
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
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
        settings: ServerSettings,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, StartError> {
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(([0, 0, 0, 0], 0).into(), e))?;
        let task = tokio::spawn(server::serve(
            listener,
            Arc::clone(&service),
            settings,
            stop,
        ));
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

/// What one config runs: the gateway, the built-in auth service, or both,
/// and the admin endpoints. Dropping it stops the accept loops.
pub struct Gateway {
    gateway: Option<Listening<Live>>,
    auth: Option<Listening<AuthService>>,
    admin: Option<Listening<Admin>>,
    /// What a reload cannot change.
    fixed: Fixed,
    /// Set when shutdown begins: `/readyz` turns false.
    draining: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    /// The admin listener stops last, so probes see the drain.
    admin_shutdown: watch::Sender<bool>,
}

impl Gateway {
    /// Start the auth service (when configured) first, since a gateway in
    /// the same process reads its keys; then fetch every provider's keys (so
    /// the first requests find them), bind `config.listen` and serve; then
    /// the admin endpoints.
    pub async fn start(mut config: Config) -> Result<Self, StartError> {
        let (shutdown, stop) = watch::channel(false);
        let (admin_shutdown, admin_stop) = watch::channel(false);
        let fixed = Fixed::of(&config);
        let auth = match config.auth_service.take() {
            Some(mut auth_config) => {
                let listener = bind(auth_config.listen).await?;
                // An issuer derived from `listen: …:0` names the port really bound,
                // here and in the providers that stand for this service.
                if auth_config.issuer_from_listen && auth_config.listen.port() == 0 {
                    let bound = listener
                        .local_addr()
                        .map_err(|e| StartError::Listen(auth_config.listen, e))?;
                    auth_config.issuer = format!("http://{bound}").into();
                    for provider in config
                        .providers
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
                let bound =
                    Listening::serve(listener, service, ServerSettings::default(), stop.clone())?;
                tracing::info!(listen = %bound.addr, issuer = %bound.service.config().issuer, "auth service ready");
                Some(bound)
            }
            None => None,
        };
        let draining = Arc::new(AtomicBool::new(false));
        let (gateway, admin) = match config.listen {
            Some(listen) => {
                let local = auth.as_ref().map(|a| a.service.local_keys());
                let server = config.server.clone();
                let admin_addr = config.admin;
                let live = Arc::new(Live::start(config, local, Arc::new(Metrics::new()?)).await);
                let bound =
                    Listening::serve(bind(listen).await?, Arc::clone(&live), server, stop.clone())?;
                log_ready(&bound);
                let admin = match admin_addr {
                    Some(addr) => {
                        let service = Arc::new(Admin::new(live, Arc::clone(&draining)));
                        let bound = Listening::serve(
                            bind(addr).await?,
                            service,
                            ServerSettings::default(),
                            admin_stop,
                        )?;
                        tracing::info!(listen = %bound.addr, "admin endpoints ready: /healthz /readyz /metrics");
                        Some(bound)
                    }
                    None => None,
                };
                (Some(bound), admin)
            }
            None => (None, None),
        };
        Ok(Self {
            gateway,
            auth,
            admin,
            fixed,
            draining,
            shutdown,
            admin_shutdown,
        })
    }

    /// Reload the gateway's config from `path` on SIGHUP and whenever the
    /// file changes.
    pub fn watch_config(&self, path: PathBuf) {
        if let Some(g) = &self.gateway {
            g.service.spawn_reloader(path, self.fixed.clone());
        }
    }

    /// The gateway's bound address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().map(|g| g.addr)
    }

    /// The auth service's bound address.
    pub fn auth_addr(&self) -> Option<SocketAddr> {
        self.auth.as_ref().map(|a| a.addr)
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// The gateway's current runtime: routes, providers and their key
    /// caches, counters.
    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.gateway.as_ref().map(|g| g.service.current())
    }

    /// The gateway itself, for reloads.
    pub fn live(&self) -> Option<&Arc<Live>> {
        self.gateway.as_ref().map(|g| &g.service)
    }

    /// The built-in auth service, when it runs.
    pub fn auth_service(&self) -> Option<&AuthService> {
        self.auth.as_ref().map(|a| &*a.service)
    }

    /// Stop accepting connections, let open ones finish (up to
    /// `server.drain_timeout`), and wait for the accept loops to end. The
    /// admin endpoints answer until then, `/readyz` with 503.
    pub async fn shutdown(mut self) {
        self.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        for task in [
            self.gateway.as_mut().map(|g| &mut g.task),
            self.auth.as_mut().map(|a| &mut a.task),
        ]
        .into_iter()
        .flatten()
        {
            let _ = task.await;
        }
        let _ = self.admin_shutdown.send(true);
        if let Some(admin) = self.admin.as_mut() {
            let _ = (&mut admin.task).await;
        }
    }
}

fn log_ready(bound: &Listening<Live>) {
    let runtime = bound.service.current();
    let without_keys: Vec<&str> = runtime.authn.providers_without_keys().collect();
    if without_keys.is_empty() {
        tracing::info!(listen = %bound.addr, routes = runtime.routes.iter().count(), "ready");
    } else {
        tracing::warn!(listen = %bound.addr, ?without_keys, "listening, but these providers have no keys yet: their tokens get 503");
    }
}
