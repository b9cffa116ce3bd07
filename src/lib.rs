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
#![forbid(unsafe_code)]

pub mod authn;
pub mod authz;
pub mod claims;
pub mod cli;
pub mod config;
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

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::fetch::Fetcher;
use crate::runtime::Runtime;

/// A running gateway. Dropping it stops the accept loop.
pub struct Gateway {
    local_addr: SocketAddr,
    runtime: Arc<Runtime>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Gateway {
    /// Fetch every provider's keys (so the first requests find them), then
    /// bind `config.listen` and serve.
    pub async fn start(config: Config) -> std::io::Result<Self> {
        let listen = config.listen;
        let runtime = Arc::new(Runtime::new(config, &Fetcher::new()));
        runtime.authn.load_keys().await;
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(server::serve(listener, Arc::clone(&runtime), stop));
        let without_keys: Vec<&str> = runtime
            .authn
            .providers()
            .iter()
            .filter(|p| !p.keys.is_loaded())
            .map(|p| &*p.config.name)
            .collect();
        if without_keys.is_empty() {
            tracing::info!(listen = %local_addr, routes = runtime.routes.iter().count(), "ready");
        } else {
            tracing::warn!(listen = %local_addr, ?without_keys, "listening, but these providers have no keys yet: their tokens get 503");
        }
        Ok(Self {
            local_addr,
            runtime,
            shutdown,
            task,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live state: routes, providers and their key caches, counters.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Stop accepting connections and wait for the accept loop to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.task).await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}
