//! What a running gateway holds: the compiled config plus live state (key
//! caches, upstream pools). Immutable once built and shared behind an `Arc`;
//! a reload will build a new one and swap it in.

use http::HeaderName;

use crate::authn::Authenticator;
use crate::config::Config;
use crate::fetch::Fetcher;
use crate::routes::RouteTable;

pub struct Runtime {
    /// RFC 6750 realm of every challenge.
    pub realm: Box<str>,
    pub routes: RouteTable,
    /// Headers set from claims on any route; removed from every request.
    pub identity_headers: Box<[HeaderName]>,
    /// Providers, their key caches and the verified-token cache.
    pub authn: Authenticator,
}

impl Runtime {
    /// Build the runtime; keys are not fetched until `authn.load_keys()`.
    pub fn new(config: Config, fetcher: &Fetcher) -> Self {
        Self {
            realm: config.realm,
            routes: config.routes,
            identity_headers: config.identity_headers,
            authn: Authenticator::new(config.providers, config.token_cache_entries, fetcher),
        }
    }
}
