//! The accept loop: one task per connection, HTTP/1.1 and h2c via hyper-util.
//! Serves anything that is a `Service`: the gateway's `Runtime`, the auth
//! service.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::Body;
use crate::headers::ClientInfo;
use crate::pipeline;
use crate::runtime::Runtime;

/// Longest a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Something that answers requests. Errors are its own business: every
/// request gets a response.
pub trait Service: Send + Sync + 'static {
    fn call(
        &self,
        request: Request<Incoming>,
        client: &ClientInfo,
    ) -> impl Future<Output = Response<Body>> + Send;
}

impl Service for Runtime {
    async fn call(&self, request: Request<Incoming>, client: &ClientInfo) -> Response<Body> {
        pipeline::handle(request, client, self).await
    }
}

/// Serve until `shutdown` turns true. Connections already accepted finish
/// on their own tasks.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that trickles its request headers (slowloris) is cut off.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Arc::new((Arc::clone(&service), client_info(peer)));
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let connection = Arc::clone(&connection);
                async move {
                    let (service, client) = &*connection;
                    Ok::<_, Infallible>(service.call(request, client).await)
                }
            });
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

fn client_info(peer: SocketAddr) -> ClientInfo {
    ClientInfo {
        forwarded_for: HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        proto: HeaderValue::from_static("http"),
    }
}
