//! The binary's process life: SIGHUP reloads the config, SIGTERM drains and
//! exits 0 with the requests in flight answered, and the JSON access log
//! says what happened to each request without ever holding a token.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::process::GatewayProcess;
use support::*;

fn config(upstream: &str, admin: u16, extra_route: &str) -> String {
    format!(
        "listen: {{LISTEN}}
admin: {{ listen: 127.0.0.1:{admin} }}
server: {{ drain_timeout: 10s }}
upstreams:
  app: {{ url: \"{upstream}\" }}
routes:
  - {{ path: /slow, upstream: app, auth: none }}
{extra_route}"
    )
}

/// A counter's value in the admin endpoint's Prometheus text.
async fn metric(client: &Client, admin: u16, line_start: &str) -> u64 {
    let text = client
        .get(&format!("http://127.0.0.1:{admin}/metrics"), &[])
        .await
        .text();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config_even_when_the_file_looks_unchanged() {
    let upstream = Upstream::start().await;
    let admin = free_port();
    let gateway = GatewayProcess::start(&config(&upstream.url(), admin, ""));
    let client = Client::new().with_timeout(Duration::from_secs(5));
    let applied = "portcullis_config_reloads_total{result=\"applied\"}";
    eventually(
        "the admin listener answers",
        Duration::from_secs(10),
        || async {
            client
                .try_send(build_request(
                    "GET",
                    &format!("http://127.0.0.1:{admin}/healthz"),
                    &[],
                    empty(),
                ))
                .await
                .is_ok_and(|r| r.status == 200)
        },
    )
    .await;
    assert_eq!(metric(&client, admin, applied).await, 0);
    gateway.signal("HUP");
    eventually(
        "SIGHUP applied a reload",
        Duration::from_secs(10),
        || async { metric(&client, admin, applied).await == 1 },
    )
    .await;
    assert_eq!(client.get(&gateway.url("/slow"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_answers_the_requests_in_flight_then_exits_0() {
    let upstream = Upstream::start_with_delay(Duration::from_millis(1500)).await;
    let admin = free_port();
    let mut gateway = GatewayProcess::start(&config(&upstream.url(), admin, ""));
    let client = Client::new().with_timeout(Duration::from_secs(10));
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let url = gateway.url("/slow");
            tokio::spawn(async move {
                client
                    .try_send(build_request("GET", &url, &[], empty()))
                    .await
            })
        })
        .collect();
    eventually(
        "the requests reached the upstream",
        Duration::from_secs(5),
        || async { upstream.count() == 4 },
    )
    .await;
    gateway.signal("TERM");
    for request in in_flight {
        let resp = request
            .await
            .expect("join")
            .expect("answered during the drain");
        assert_eq!(resp.status, 200);
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = gateway.wait_exit(Duration::from_secs(10));
        (status, gateway.log.read())
    })
    .await
    .expect("join");
    let (status, log) = status;
    let status = status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{log}"));
    assert!(status.success(), "exit {status}:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_access_log_has_one_event_per_request_and_no_token() {
    let idp = Idp::start(vec![]).await;
    let upstream = Upstream::start().await;
    let admin = free_port();
    let route = format!(
        "  - {{ path: /api/**, upstream: app }}\nproviders:\n{}",
        provider_yaml("main", &idp.issuer(), &idp.jwks_uri())
    );
    let gateway = GatewayProcess::start_with(
        &config(&upstream.url(), admin, &route),
        &["--log-format", "json"],
        "portcullis::access=info",
    );
    let client = Client::new().with_timeout(Duration::from_secs(5));
    let secret_token = "not.a-valid.token-SECRET";
    let resp = client
        .get_bearer(&gateway.url("/api/x"), secret_token, &[])
        .await;
    assert_eq!(resp.status, 401);
    let request_id = resp
        .header("x-request-id")
        .expect("a request id")
        .to_owned();
    let resp = client
        .get(&gateway.url("/slow"), &[("x-request-id", "trace-42")])
        .await;
    assert_eq!(resp.status, 200);
    let events = || -> Vec<Value> {
        gateway
            .log
            .read()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["target"] == "portcullis::access")
            .collect()
    };
    eventually("two access events", Duration::from_secs(5), || async {
        events().len() == 2
    })
    .await;
    let events = events();
    let refused = &events[0];
    assert_eq!(refused["request_id"], json!(request_id));
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["decision"], "deny");
    assert_eq!(refused["route"], "/api/**");
    let allowed = &events[1];
    assert_eq!(allowed["request_id"], "trace-42");
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["path"], "/slow");
    assert!(
        allowed["bytes"].as_u64().is_some_and(|b| b > 0),
        "{allowed}"
    );
    assert!(allowed["upstream_us"].as_u64().is_some(), "{allowed}");
    assert!(
        !gateway.log.read().contains("SECRET"),
        "the token leaked into the log"
    );
}
