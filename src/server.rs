//! The accept loop: one task per connection, HTTP/1.1 and HTTP/2 (h2 by
//! ALPN over TLS, h2c with prior knowledge) via hyper-util.
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
use crate::tls::peer::PeerCert;
use crate::tls::server::ServerTls;

/// Longest a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Serve until `shutdown` turns true, over TLS when `tls` is given.
/// Connections already accepted finish on their own tasks.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    tls: Option<Arc<ServerTls>>,
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
        let service = Arc::clone(&service);
        let builder = builder.clone();
        let Some(tls) = &tls else {
            let client = client_info(peer, "http", None);
            tokio::spawn(serve_connection(
                builder,
                TokioIo::new(stream),
                service,
                client,
            ));
            continue;
        };
        // Taken now, so a reload never changes a handshake under way.
        let acceptor = tls.acceptor();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            // The verifier has checked the chain; only the leaf matters here.
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|leaf| PeerCert::from_der(leaf));
            let client = client_info(peer, "https", cert);
            serve_connection(builder, TokioIo::new(stream), service, client).await;
        });
    }
}

/// One connection, HTTP/1.1 or HTTP/2, until it closes.
async fn serve_connection<S, I>(
    builder: auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    service: Arc<S>,
    client: ClientInfo,
) where
    S: Service,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = Arc::new((service, client));
    let handler = service_fn(move |request| {
        let connection = Arc::clone(&connection);
        async move {
            let (service, client) = &*connection;
            Ok::<_, Infallible>(service.call(request, client).await)
        }
    });
    if let Err(error) = builder.serve_connection(io, handler).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}

fn client_info(peer: SocketAddr, proto: &'static str, cert: Option<PeerCert>) -> ClientInfo {
    ClientInfo {
        forwarded_for: HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        proto: HeaderValue::from_static(proto),
        peer: cert,
    }
}
