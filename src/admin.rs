//! The admin listener: `/healthz` (the process answers), `/readyz` (a
//! config is loaded and every provider's keys were fetched at least once;
//! false again while shutting down, so load balancers stop sending) and
//! `/metrics` (Prometheus text format). On its own address, never the
//! gateway's, so it is not exposed with the API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde_json::json;

use crate::authn::provider::KeySource;
use crate::error::Body;
use crate::headers::ClientInfo;
use crate::live::Live;
use crate::server::Service;

pub struct Admin {
    live: Arc<Live>,
    /// Set when shutdown begins.
    draining: Arc<AtomicBool>,
}

impl Admin {
    pub fn new(live: Arc<Live>, draining: Arc<AtomicBool>) -> Self {
        Self { live, draining }
    }

    /// Providers whose keys were never fetched.
    fn waiting_for(&self) -> Vec<String> {
        self.live
            .current()
            .authn
            .providers_without_keys()
            .map(str::to_owned)
            .collect()
    }

    fn metrics(&self) -> Bytes {
        let metrics = self.live.metrics();
        // Providers a reload removed must not linger with stale values.
        metrics.jwks_keys.reset();
        metrics.jwks_age_seconds.reset();
        for provider in self.live.current().authn.providers() {
            if matches!(provider.config.keys, KeySource::None) {
                continue;
            }
            let (fetched_at, count) = provider.keys.status();
            let name = [&*provider.config.name];
            metrics
                .jwks_keys
                .with_label_values(&name)
                .set(i64::try_from(count).unwrap_or(i64::MAX));
            metrics
                .jwks_age_seconds
                .with_label_values(&name)
                .set(fetched_at.map_or(-1, |t| {
                    i64::try_from(t.elapsed().as_secs()).unwrap_or(i64::MAX)
                }));
        }
        Bytes::from(metrics.render())
    }
}

impl Service for Admin {
    type Body = Body;

    async fn call(&self, request: Request<Incoming>, _client: &ClientInfo) -> Response<Body> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "application/json",
                json!({"error": "method_not_allowed"}).to_string().into(),
            );
        }
        match request.uri().path() {
            "/healthz" => respond(
                StatusCode::OK,
                "application/json",
                json!({"status": "ok"}).to_string().into(),
            ),
            "/readyz" => {
                let draining = self.draining.load(Ordering::Relaxed);
                let waiting = self.waiting_for();
                let ready = !draining && waiting.is_empty();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let body =
                    json!({"ready": ready, "draining": draining, "waiting_for_keys": waiting});
                respond(status, "application/json", body.to_string().into())
            }
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics(),
            ),
            _ => respond(
                StatusCode::NOT_FOUND,
                "application/json",
                json!({"error": "not_found", "endpoints": ["/healthz", "/readyz", "/metrics"]})
                    .to_string()
                    .into(),
            ),
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
