//! Upstream connections of a single-target plain-HTTP upstream: each client
//! HTTP/1.1 connection keeps an upstream connection of its own. Checked with
//! real servers on 127.0.0.1: which upstream connection every request came
//! on, an upstream that closes after each answer, an upstream that goes away,
//! and a reload that changes the target under an open client connection.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// No test here may run longer than this.
const BOUND: Duration = Duration::from_secs(20);

async fn bounded<F: Future<Output = ()>>(test: F) {
    if tokio::time::timeout(BOUND, test).await.is_err() {
        panic!("test did not finish within {BOUND:?}");
    }
}

fn yaml(upstream: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nupstreams:\n  app: {{ url: \"{upstream}\" }}\nroutes:\n  - {{ path: /**, upstream: app, auth: none }}\n"
    )
}

/// One client keep-alive connection to the gateway.
async fn keep_alive(gateway: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(gateway).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

/// `GET path` on `sender`; the status and body.
async fn get(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> (StatusCode, Bytes) {
    sender.ready().await.expect("connection ready");
    let request = Request::get(path)
        .header("host", "gateway.test")
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

#[tokio::test]
async fn a_client_connection_keeps_one_upstream_connection_and_each_client_its_own() {
    bounded(async {
        let upstream = Upstream::start().await;
        let gateway = TestGateway::start(&yaml(&upstream.url())).await;
        let mut first = keep_alive(gateway.addr()).await;
        let mut second = keep_alive(gateway.addr()).await;
        for n in 0..3 {
            assert_eq!(get(&mut first, &format!("/first/{n}")).await.0, 200);
        }
        for n in 0..2 {
            assert_eq!(get(&mut second, &format!("/second/{n}")).await.0, 200);
        }
        let seen = upstream.requests();
        assert_eq!(seen.len(), 5);
        let peers = |prefix: &str| {
            let mut peers: Vec<SocketAddr> = seen
                .iter()
                .filter(|r| r.path_and_query.starts_with(prefix))
                .map(|r| r.peer.expect("plain HTTP records the peer"))
                .collect();
            peers.dedup();
            peers
        };
        let (by_first, by_second) = (peers("/first/"), peers("/second/"));
        assert_eq!(
            by_first.len(),
            1,
            "one upstream connection for the first client: {by_first:?}"
        );
        assert_eq!(
            by_second.len(),
            1,
            "one upstream connection for the second client: {by_second:?}"
        );
        assert_ne!(by_first, by_second, "each client connection has its own");
        // Origin form and the target's Host, as the pooled path sends them.
        assert_eq!(seen[0].path_and_query, "/first/0");
        assert_eq!(
            seen[0].header("host"),
            Some(upstream.addr().to_string().as_str())
        );
        assert_eq!(seen[0].header("x-forwarded-host"), Some("gateway.test"));
    })
    .await;
}

/// An upstream that answers one request per connection and then closes it
/// without saying so (no `Connection: close`); counts its connections.
async fn one_answer_per_connection() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>)
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if !read_head(&mut stream).await {
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, accepted, task)
}

#[tokio::test]
async fn an_upstream_that_closes_after_every_answer_costs_the_client_nothing() {
    bounded(async {
        let (upstream, accepted, task) = one_answer_per_connection().await;
        let gateway = TestGateway::start(&yaml(&format!("http://{upstream}"))).await;
        let mut client = keep_alive(gateway.addr()).await;
        // Back to back, and after a pause that lets the close arrive first.
        for n in 0..6 {
            let (status, body) = get(&mut client, &format!("/x/{n}")).await;
            assert_eq!(
                (status, &body[..]),
                (StatusCode::OK, &b"ok"[..]),
                "request {n}"
            );
            if n % 2 == 1 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            6,
            "a new upstream connection per request"
        );
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn an_upstream_gone_between_requests_is_502_and_back_again_is_200() {
    bounded(async {
        let mut upstream = Upstream::start().await;
        let addr = upstream.addr();
        let gateway = TestGateway::start(&yaml(&upstream.url())).await;
        let mut client = keep_alive(gateway.addr()).await;
        assert_eq!(get(&mut client, "/before").await.0, 200);
        upstream.stop_and_wait().await;
        assert_eq!(get(&mut client, "/while-down").await.0, 502);
        let back = Upstream::start_on(addr).await;
        assert_eq!(get(&mut client, "/after").await.0, 200);
        assert_eq!(
            back.requests().len(),
            1,
            "only /after reached the new upstream"
        );
        assert_eq!(back.last().path_and_query, "/after");
    })
    .await;
}

#[tokio::test]
async fn after_a_reload_an_open_client_connection_reaches_the_new_upstream() {
    bounded(async {
        let old = Upstream::start().await;
        let new = Upstream::start().await;
        let gateway = TestGateway::start(&yaml(&old.url())).await;
        let mut client = keep_alive(gateway.addr()).await;
        assert_eq!(get(&mut client, "/one").await.0, 200);
        let config = portcullis::config::from_str(&yaml(&new.url()), "test.yaml", |_| None)
            .expect("the new config loads");
        gateway
            .gateway
            .live()
            .expect("a gateway listener")
            .replace(config)
            .await;
        assert_eq!(get(&mut client, "/two").await.0, 200);
        assert_eq!(
            old.requests().len(),
            1,
            "nothing more reached the old upstream"
        );
        assert_eq!(new.requests().len(), 1);
        assert_eq!(new.last().path_and_query, "/two");
    })
    .await;
}

#[tokio::test]
async fn one_client_connection_alternating_between_two_upstreams_opens_no_connection_per_request() {
    bounded(async {
        let orders = Upstream::start().await;
        let users = Upstream::start().await;
        let gateway = TestGateway::start(&format!(
            "listen: 127.0.0.1:0\nupstreams:\n  orders: {{ url: \"{}\" }}\n  users: {{ url: \"{}\" }}\nroutes:\n  - {{ path: /orders/**, upstream: orders, auth: none }}\n  - {{ path: /users/**, upstream: users, auth: none }}\n",
            orders.url(),
            users.url()
        ))
        .await;
        let mut client = keep_alive(gateway.addr()).await;
        for n in 0..4 {
            assert_eq!(get(&mut client, &format!("/orders/{n}")).await.0, 200);
            assert_eq!(get(&mut client, &format!("/users/{n}")).await.0, 200);
        }
        for upstream in [&orders, &users] {
            let mut peers: Vec<SocketAddr> = upstream
                .requests()
                .iter()
                .map(|r| r.peer.expect("plain HTTP records the peer"))
                .collect();
            assert_eq!(peers.len(), 4);
            peers.dedup();
            assert_eq!(peers.len(), 1, "one upstream connection each, reused: {peers:?}");
        }
    })
    .await;
}

/// Send `request` (raw HTTP/1.x) on a new connection and read until the
/// gateway closes it.
async fn raw_exchange(gateway: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(gateway).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn closing_and_http_1_0_clients_share_pooled_upstream_connections() {
    bounded(async {
        let upstream = Upstream::start().await;
        let gateway = TestGateway::start(&yaml(&upstream.url())).await;
        for n in 0..3 {
            let close = format!("GET /close/{n} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
            let answer = raw_exchange(gateway.addr(), &close).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            let old = format!("GET /old/{n} HTTP/1.0\r\nhost: gw\r\n\r\n");
            let answer = raw_exchange(gateway.addr(), &old).await;
            assert!(answer.contains(" 200 OK"), "{answer}");
        }
        let mut peers: Vec<SocketAddr> = upstream
            .requests()
            .iter()
            .map(|r| r.peer.expect("plain HTTP records the peer"))
            .collect();
        assert_eq!(peers.len(), 6);
        peers.sort();
        peers.dedup();
        assert_eq!(
            peers.len(),
            1,
            "six short client connections, one pooled upstream connection: {peers:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn an_ipv6_literal_target_is_reached() {
    bounded(async {
        let Ok(listener) = TcpListener::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback on this machine: nothing to check");
            return;
        };
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let upstream = Upstream::start_on(addr).await;
        let gateway = TestGateway::start(&yaml(&format!("http://[::1]:{}", addr.port()))).await;
        let mut client = keep_alive(gateway.addr()).await;
        for n in 0..2 {
            assert_eq!(get(&mut client, &format!("/v6/{n}")).await.0, 200);
        }
        assert_eq!(upstream.requests().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_post_the_upstream_took_and_dropped_unanswered_is_502_and_never_sent_again() {
    bounded(async {
        // Answers the first request on a connection, then reads the next
        // one whole and closes without a word.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    for answer in [true, false] {
                        if !read_head(&mut stream).await {
                            return;
                        }
                        seen.fetch_add(1, Ordering::SeqCst);
                        if answer {
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            let _ = stream.write_all(ok).await;
                        }
                    }
                });
            }
        });
        let gateway = TestGateway::start(&yaml(&format!("http://{addr}"))).await;
        let stream = TcpStream::connect(gateway.addr()).await.expect("connect");
        let (mut client, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        let post = |path: &str| {
            Request::post(path)
                .header("host", "gw")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{}")))
                .expect("request")
        };
        let first = client.send_request(post("/first")).await.expect("response");
        assert_eq!(first.status(), 200);
        first.into_body().collect().await.expect("body");
        client.ready().await.expect("ready");
        let second = client
            .send_request(post("/second"))
            .await
            .expect("response");
        assert_eq!(second.status(), 502);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            requests.load(Ordering::SeqCst),
            2,
            "the dropped POST was not sent again"
        );
        task.abort();
    })
    .await;
}

/// Read one request head (and whatever came with it); `false` when the
/// connection ended first.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}
