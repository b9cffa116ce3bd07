//! The gateway as it runs: the current `Runtime`, swapped whole when the
//! config is reloaded. A request keeps the runtime it started with, so
//! in-flight requests finish under the old config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio_rustls::TlsAcceptor;

use crate::access::Logged;
use crate::auth_service::LocalKeys;
use crate::config::{self, Config};
use crate::error::Body;
use crate::headers::ClientInfo;
use crate::metrics::Metrics;
use crate::pipeline;
use crate::runtime::Runtime;
use crate::server::Service;

/// How often the config file is checked for a change.
const CONFIG_POLL: Duration = Duration::from_secs(2);

pub struct Live {
    current: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    /// The built-in auth service's keys, when it runs in this process.
    local: Option<Arc<LocalKeys>>,
    /// Serialises reloads.
    reloading: tokio::sync::Mutex<()>,
}

impl Live {
    /// Build the first runtime and fetch every provider's keys (so the first
    /// requests find them).
    pub async fn start(
        config: Config,
        local: Option<Arc<LocalKeys>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let runtime = Runtime::build(config, local.clone(), Arc::clone(&metrics), None);
        runtime.authn.load_keys().await;
        if let Some(tls) = &runtime.tls {
            tls.spawn_watcher();
        }
        Self {
            current: ArcSwap::from_pointee(runtime),
            metrics,
            local,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The runtime new requests get.
    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Swap in a new, already compiled config. Key caches of unchanged
    /// providers are kept; new providers' keys are fetched before the swap,
    /// so the new config starts ready. The verified-token cache, whose
    /// verdicts the new rules may not share, starts empty.
    pub async fn replace(&self, config: Config) {
        let _one_at_a_time = self.reloading.lock().await;
        let previous = self.current();
        let runtime = Runtime::build(
            config,
            self.local.clone(),
            Arc::clone(&self.metrics),
            Some(&previous),
        );
        runtime.authn.load_keys().await;
        if let Some(tls) = &runtime.tls {
            tls.spawn_watcher();
        }
        self.current.store(Arc::new(runtime));
    }

    /// Reload from `path`: compile (off the async threads), and swap in the
    /// result; a config with errors is refused, logged, and the running one
    /// keeps serving. Settings that need a new listener (`listen`, `server`,
    /// `admin`, `auth_service`) are logged and take effect on restart.
    pub async fn reload_from(&self, path: &Path, started: &Fixed) -> bool {
        let file = path.to_path_buf();
        let compiled = tokio::task::spawn_blocking(move || config::load(&file)).await;
        let config = match compiled {
            Ok(Ok(config)) => config,
            Ok(Err(errors)) => {
                self.metrics.reloads.with_label_values(&["refused"]).inc();
                tracing::error!(
                    errors = %errors,
                    "config reload refused; the running config keeps serving"
                );
                return false;
            }
            Err(_) => {
                self.metrics.reloads.with_label_values(&["refused"]).inc();
                tracing::error!("config reload failed; the running config keeps serving");
                return false;
            }
        };
        if config.tls.is_some() != started.tls {
            self.metrics.reloads.with_label_values(&["refused"]).inc();
            tracing::error!(
                "config reload refused: adding or removing `tls` needs a restart; the running config keeps serving"
            );
            return false;
        }
        for (what, same) in [
            ("listen", config.listen == started.listen),
            ("admin", config.admin == started.admin),
            ("server", config.server == started.server),
            (
                "auth_service",
                config.auth_service.is_some() == started.auth_service,
            ),
        ] {
            if !same {
                tracing::warn!(section = what, "changed: takes effect on restart");
            }
        }
        let mut config = config;
        // The auth service keeps running as started.
        config.auth_service = None;
        self.replace(config).await;
        self.metrics.reloads.with_label_values(&["applied"]).inc();
        tracing::info!(path = %path.display(), "config reloaded");
        true
    }

    /// Reload on SIGHUP and whenever the file's bytes change, until `live`
    /// is gone.
    pub fn spawn_reloader(self: &Arc<Self>, path: PathBuf, started: Fixed) {
        let live = Arc::downgrade(self);
        // Read now, so a change made right after this call is seen as one.
        let mut last = digest_of(std::fs::read(&path).ok());
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let signalled = async {
                    match hangup.as_mut() {
                        Some(signal) => {
                            signal.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let signalled = std::future::pending::<()>();
                let forced = tokio::select! {
                    _ = signalled => true,
                    _ = tokio::time::sleep(CONFIG_POLL) => false,
                };
                let now = read_digest(&path).await;
                if !forced && (now.is_none() || now == last) {
                    continue;
                }
                last = now;
                let Some(live) = live.upgrade() else { return };
                live.reload_from(&path, &started).await;
            }
        });
    }
}

/// What the process started with that a reload cannot change.
#[derive(Debug, Clone)]
pub struct Fixed {
    pub listen: Option<std::net::SocketAddr>,
    pub admin: Option<std::net::SocketAddr>,
    pub server: crate::server::ServerSettings,
    pub auth_service: bool,
    /// TLS on the listener: whether the port speaks TLS cannot change
    /// under connected clients.
    pub tls: bool,
}

impl Fixed {
    pub fn of(config: &Config) -> Self {
        Self {
            listen: config.listen,
            admin: config.admin,
            server: config.server.clone(),
            auth_service: config.auth_service.is_some(),
            tls: config.tls.is_some(),
        }
    }
}

/// SHA-256 of the file's bytes; `None` when unreadable (a ConfigMap
/// mid-swap): no reload is attempted on that alone.
async fn read_digest(path: &Path) -> Option<[u8; 32]> {
    let file = path.to_path_buf();
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(file))
        .await
        .ok()?;
    digest_of(bytes.ok())
}

fn digest_of(bytes: Option<Vec<u8>>) -> Option<[u8; 32]> {
    Some(crate::digest::sha256(&[&bytes?]))
}

impl Service for Live {
    type Body = Logged<Body>;

    async fn call(
        &self,
        request: Request<Incoming>,
        client: &ClientInfo,
    ) -> Response<Logged<Body>> {
        pipeline::handle(request, client, self.current()).await
    }

    fn tls(&self) -> Option<TlsAcceptor> {
        self.current.load().tls.as_ref().map(|tls| tls.acceptor())
    }

    fn connection(&self, open: bool) {
        if open {
            self.metrics.open_connections.inc();
        } else {
            self.metrics.open_connections.dec();
        }
    }
}
