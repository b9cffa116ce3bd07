//! Prometheus metrics, one registry per process. Counters live here, not in
//! a `Runtime`, so they keep counting across reloads; what a route counts
//! into is resolved when its runtime is built, so a request only touches
//! atomics (denials, by their many reasons, take one label lookup).

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets, in seconds: 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_duration: HistogramVec,
    pub open_connections: IntGauge,
    pub token_cache_hits: IntCounter,
    pub token_cache_misses: IntCounter,
    pub signature_checks: IntCounter,
    pub jwks_fetches: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub jwks_age_seconds: IntGaugeVec,
    pub reloads: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("portcullis".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests answered, by route, status class, decision and reason",
            ),
            &["route", "status_class", "decision", "reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "From request received to response body sent, by route",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "From forwarding to the upstream's response headers, by route",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        )?;
        let open_connections =
            IntGauge::new("open_connections", "Client connections open on the gateway")?;
        let token_cache_hits = IntCounter::new(
            "token_cache_hits_total",
            "Tokens answered from the verified-token cache",
        )?;
        let token_cache_misses = IntCounter::new(
            "token_cache_misses_total",
            "Tokens not in the verified-token cache",
        )?;
        let signature_checks =
            IntCounter::new("signature_checks_total", "JWT signatures verified")?;
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "jwks_fetches_total",
                "Key-set fetches, by provider and result",
            ),
            &["provider", "result"],
        )?;
        let jwks_keys = IntGaugeVec::new(
            Opts::new("jwks_keys", "Keys in the provider's current key set"),
            &["provider"],
        )?;
        let jwks_age_seconds = IntGaugeVec::new(
            Opts::new(
                "jwks_age_seconds",
                "Seconds since the provider's keys were last fetched successfully",
            ),
            &["provider"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("config_reloads_total", "Config reloads, by result"),
            &["result"],
        )?;
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(open_connections.clone()),
            Box::new(token_cache_hits.clone()),
            Box::new(token_cache_misses.clone()),
            Box::new(signature_checks.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(jwks_keys.clone()),
            Box::new(jwks_age_seconds.clone()),
            Box::new(reloads.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(Self {
            registry,
            requests,
            duration,
            upstream_duration,
            open_connections,
            token_cache_hits,
            token_cache_misses,
            signature_checks,
            jwks_fetches,
            jwks_keys,
            jwks_age_seconds,
            reloads,
        })
    }

    /// The counters one route uses, resolved once when its runtime is built.
    pub fn route(&self, label: &str) -> RouteMetrics {
        let allowed = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            self.requests
                .with_label_values(&[label, class, "allow", "allowed"])
        });
        RouteMetrics {
            label: label.into(),
            allowed,
            duration: self.duration.with_label_values(&[label]),
            upstream: self.upstream_duration.with_label_values(&[label]),
        }
    }

    /// Count a request the gateway answered itself: refused, or a CORS
    /// preflight (by its reason: one label lookup). Reasons are the
    /// gateway's own fixed codes, never client input.
    pub fn answered(
        &self,
        route: Option<&RouteMetrics>,
        status: u16,
        decision: &str,
        reason: &str,
    ) {
        let label = route.map_or("none", |r| &r.label);
        if let Ok(counter) = self.requests.get_metric_with_label_values(&[
            label,
            status_class(status),
            decision,
            reason,
        ]) {
            counter.inc();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 << 10);
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "encoding metrics");
        }
        out
    }
}

/// One route's counters.
pub struct RouteMetrics {
    label: Box<str>,
    /// Forwarded requests by the upstream's status class.
    allowed: [IntCounter; 5],
    duration: Histogram,
    upstream: Histogram,
}

impl RouteMetrics {
    /// A forwarded request got its response headers.
    pub fn forwarded(&self, status: u16, upstream: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        if let Some(counter) = self.allowed.get(class) {
            counter.inc();
        }
        self.upstream.observe(upstream.as_secs_f64());
    }

    /// The whole exchange ended (response body sent or abandoned).
    pub fn finished(&self, total: Duration) {
        self.duration.observe(total.as_secs_f64());
    }
}

fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}
