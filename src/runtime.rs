//! What a running gateway holds: the compiled config plus live state (key
//! caches, upstream pools, metrics handles). Immutable once built and shared
//! behind an `Arc`; a reload builds a new one and swaps it in (`live`).

use std::sync::Arc;

use http::HeaderName;

use crate::access::RequestIds;
use crate::auth_service::LocalKeys;
use crate::authn::api_key::ApiKeys;
use crate::authn::{Authenticator, Stats};
use crate::config::Config;
use crate::dpop::DpopVerifier;
use crate::fetch::Fetcher;
use crate::metrics::{Metrics, RouteMetrics};
use crate::routes::RouteTable;
use crate::tls::server::ServerTls;

pub struct Runtime {
    /// RFC 6750 realm of every challenge.
    pub realm: Box<str>,
    pub routes: RouteTable,
    /// Headers set from claims on any route; removed from every request.
    pub identity_headers: Box<[HeaderName]>,
    /// Providers, their key caches and the verified-token cache.
    pub authn: Authenticator,
    /// API keys, when configured.
    pub api_keys: Option<ApiKeys>,
    /// DPoP proof checks and their replay cache.
    pub dpop: DpopVerifier,
    /// `http` or `https`, as clients address the gateway (DPoP `htu`).
    pub public_scheme: &'static str,
    /// TLS on the listener, when configured.
    pub tls: Option<Arc<ServerTls>>,
    pub metrics: Arc<Metrics>,
    /// Each route's counters, by route index.
    pub route_metrics: Box<[RouteMetrics]>,
    pub request_ids: RequestIds,
}

impl Runtime {
    /// Build the gateway part of a compiled config (its `auth_service` is
    /// not used here). `local` is the key set of the auth service running in
    /// this process; `previous` is the runtime being replaced, whose key
    /// caches are kept where the provider's key source did not change. Keys
    /// are not fetched until `authn.load_keys()`.
    pub fn build(
        mut config: Config,
        local: Option<Arc<LocalKeys>>,
        metrics: Arc<Metrics>,
        previous: Option<&Runtime>,
    ) -> Self {
        let authn = Authenticator::new(
            config.providers,
            config.token_cache_entries,
            &Fetcher::new(),
            local,
            Stats::new(&metrics),
            previous.map(|p| &p.authn),
        );
        if let Some(previous) = previous {
            keep_rate_limits(&mut config.routes, &previous.routes);
        }
        let route_metrics = config
            .routes
            .iter()
            .map(|route| metrics.route(route.pattern.as_str()))
            .collect();
        Self {
            realm: config.realm,
            routes: config.routes,
            identity_headers: config.identity_headers,
            authn,
            api_keys: config.api_keys,
            dpop: match previous {
                Some(previous) => previous.dpop.reconfigured(config.dpop),
                None => DpopVerifier::new(config.dpop),
            },
            public_scheme: config.public_scheme,
            tls: config.tls,
            metrics,
            route_metrics,
            request_ids: RequestIds::new(),
        }
    }
}

/// Carry the buckets of each rate limit over to the same route (pattern and
/// methods) with the same limit in the new table.
fn keep_rate_limits(routes: &mut RouteTable, previous: &RouteTable) {
    for route in routes.iter_mut() {
        let Some(limit) = &route.rate_limit else {
            continue;
        };
        let kept = previous
            .iter()
            .filter(|old| {
                old.pattern.as_str() == route.pattern.as_str() && old.methods == route.methods
            })
            .find_map(|old| old.rate_limit.as_ref().filter(|l| l.same_limit(limit)));
        if let Some(kept) = kept {
            route.rate_limit = Some(Arc::clone(kept));
        }
    }
}
