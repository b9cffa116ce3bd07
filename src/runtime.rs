//! What a running gateway holds: the compiled config plus live state (key
//! caches, upstream pools). Immutable once built and shared behind an `Arc`;
//! a reload will build a new one and swap it in.

use http::HeaderName;

use crate::authn::Authenticator;
use crate::authn::api_key::ApiKeys;
use crate::dpop::DpopVerifier;
use crate::routes::RouteTable;

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
}

impl Runtime {
    /// Build the runtime; keys are not fetched until `authn.load_keys()`.
    /// `local` is the key set of the auth service running in this process.
    pub fn new(
        realm: Box<str>,
        routes: RouteTable,
        identity_headers: Box<[HeaderName]>,
        authn: Authenticator,
        api_keys: Option<ApiKeys>,
        dpop: DpopVerifier,
        public_scheme: &'static str,
    ) -> Self {
        Self {
            realm,
            routes,
            identity_headers,
            authn,
            api_keys,
            dpop,
            public_scheme,
        }
    }
}
