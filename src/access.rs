//! One access-log event and one duration sample per request, emitted when
//! the response body has been sent (or abandoned), so the event knows the
//! bytes sent and the whole time taken. Never a token.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use hyper::body::{Body, Frame, SizeHint};

use crate::authn::Principal;
use crate::runtime::Runtime;

pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// What the log line says of a request, filled in as it goes.
pub struct Record {
    pub started: Instant,
    pub request_id: HeaderValue,
    pub method: Method,
    /// The canonical path and query, or the raw one when it could not be
    /// canonicalised.
    pub path: Option<http::uri::PathAndQuery>,
    pub route: Option<usize>,
    pub principal: Option<Arc<Principal>>,
    pub status: u16,
    /// `allowed`, or the reason code of the refusal.
    pub reason: &'static str,
    pub upstream: Option<Duration>,
    /// The runtime that judged it: its route patterns and counters.
    pub runtime: Arc<Runtime>,
}

impl Record {
    fn emit(&self, bytes: u64) {
        let elapsed = self.started.elapsed();
        let route = self.route.and_then(|i| self.runtime.routes.get(i));
        if let Some(metrics) = self.route.and_then(|i| self.runtime.route_metrics.get(i)) {
            metrics.finished(elapsed);
        }
        tracing::info!(
            target: "portcullis::access",
            request_id = self.request_id.to_str().unwrap_or(""),
            method = %self.method,
            path = self.path.as_ref().map(|p| p.path()),
            route = route.map(|r| r.pattern.as_str()),
            route.index = self.route,
            status = self.status,
            decision = if matches!(self.reason, "allowed" | "preflight") { "allow" } else { "deny" },
            reason = self.reason,
            subject = self.principal.as_ref().and_then(|p| p.subject.as_deref()),
            upstream_us = self.upstream.map(|d| d.as_micros() as u64),
            bytes,
            duration_us = elapsed.as_micros() as u64,
        );
    }
}

/// A response body that counts what it sends and logs the exchange once it
/// ends or is dropped.
pub struct Logged<B> {
    inner: B,
    record: Option<Record>,
    bytes: u64,
}

impl<B> Logged<B> {
    pub fn new(inner: B, record: Record) -> Self {
        Self {
            inner,
            record: Some(record),
            bytes: 0,
        }
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.emit(self.bytes);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request's id: the client's `X-Request-Id` when it is sane (1–128
/// visible ASCII characters), else a new one: a random per-process prefix
/// and a counter, unique without a syscall per request.
pub fn request_id(headers: &HeaderMap, ids: &RequestIds) -> HeaderValue {
    if let Some(value) = headers.get(X_REQUEST_ID)
        && (1..=128).contains(&value.len())
        && value.as_bytes().iter().all(|b| (0x21..0x7f).contains(b))
    {
        return value.clone();
    }
    ids.next()
}

/// Generator of request ids.
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        // Without randomness ids are still unique within the process.
        let _ = aws_lc_rs::rand::fill(&mut seed);
        Self {
            prefix: u64::from_le_bytes(seed),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut text = [0u8; 32];
        hex(self.prefix, &mut text[..16]);
        hex(n, &mut text[16..]);
        HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("-"))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

fn hex(mut n: u64, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_client_id_is_kept_and_others_are_replaced() {
        let ids = RequestIds::new();
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers, &ids), "abc-123");
        for bad in ["", "has space", &"x".repeat(129)] {
            headers.insert(X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = request_id(&headers, &ids);
            assert_eq!(id.len(), 32, "{bad:?} replaced by {id:?}");
        }
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_eq!(a.as_bytes()[..16], b.as_bytes()[..16]);
    }
}
