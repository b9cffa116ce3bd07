//! deploy/ is checked here, since no Docker engine or cluster runs in CI:
//! every manifest parses, the config each one mounts compiles, and the ports,
//! probe paths and mounts agree with that config.

use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every document of a multi-document YAML file.
fn documents(path: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn port_of(addr: Option<std::net::SocketAddr>) -> u64 {
    u64::from(addr.expect("an address").port())
}

/// What a mounted gateway.yaml says, compiled as the gateway would.
struct Mounted {
    listen: u64,
    admin: u64,
    drain_seconds: u64,
    upstream_hosts: Vec<String>,
}

fn compile(text: &str, name: &str) -> Mounted {
    let config = portcullis::config::from_str(text, name, |_| None)
        .unwrap_or_else(|e| panic!("{name} does not compile:\n{e}"));
    let upstream_hosts = config
        .routes
        .iter()
        .map(|r| format!("{:?}", r.upstream))
        .collect();
    Mounted {
        listen: port_of(config.listen),
        admin: port_of(config.admin),
        drain_seconds: config.server.drain_timeout.as_secs(),
        upstream_hosts,
    }
}

/// The Kubernetes checks shared by both layouts; returns the Deployment.
fn check_kubernetes(path: &str) -> (Vec<Value>, Mounted) {
    let docs = documents(path);
    for doc in &docs {
        assert!(
            doc["apiVersion"].is_string() && doc["kind"].is_string(),
            "{path}: a document without apiVersion/kind"
        );
    }
    let [config_map] = kind(&docs, "ConfigMap")[..] else {
        panic!("{path}: one ConfigMap expected");
    };
    let text = config_map["data"]["gateway.yaml"]
        .as_str()
        .expect("the ConfigMap holds gateway.yaml");
    let mounted = compile(text, path);
    let [deployment] = kind(&docs, "Deployment")[..] else {
        panic!("{path}: one Deployment expected");
    };
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    let gateway = containers
        .iter()
        .find(|c| c["name"] == "portcullis")
        .expect("a portcullis container");
    let ports = gateway["ports"].as_sequence().expect("ports");
    let named = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{path}: no port named {name}"))
    };
    assert_eq!(named("http"), mounted.listen, "{path}: http port vs listen");
    assert_eq!(
        named("admin"),
        mounted.admin,
        "{path}: admin port vs admin.listen"
    );
    for (probe, endpoint) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &gateway[probe]["httpGet"];
        assert_eq!(get["path"], endpoint, "{path}: {probe} path");
        assert_eq!(
            get["port"], "admin",
            "{path}: {probe} must use the admin port"
        );
    }
    let args: Vec<&str> = gateway["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_arg = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .expect("--config");
    let mount = gateway["volumeMounts"]
        .as_sequence()
        .and_then(|m| m.first())
        .expect("a volume mount");
    assert_eq!(
        Path::new(config_arg).parent(),
        Path::new(mount["mountPath"].as_str().expect("mountPath")).into(),
        "{path}: --config is in the mounted directory"
    );
    let volume = pod["volumes"]
        .as_sequence()
        .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
        .expect("the mounted volume");
    assert_eq!(
        volume["configMap"]["name"], config_map["metadata"]["name"],
        "{path}: the volume is the ConfigMap"
    );
    // runAsNonRoot can only be verified against a numeric user.
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"], true, "{path}");
    assert_eq!(security["runAsUser"], 65532, "{path}: the image's user");
    assert_eq!(
        security["seccompProfile"]["type"], "RuntimeDefault",
        "{path}"
    );
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    let pause = |c: &Value| {
        c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0)
    };
    let gateway_done = pause(gateway) + mounted.drain_seconds;
    assert!(
        grace > gateway_done,
        "{path}: the grace period must outlast the pause and the drain"
    );
    for other in containers.iter().filter(|c| c["name"] != "portcullis") {
        assert!(
            pause(other) >= gateway_done && grace > pause(other),
            "{path}: {:?} must outlive the gateway's drain, within the grace period",
            other["name"]
        );
    }
    let [service] = kind(&docs, "Service")[..] else {
        panic!("{path}: one Service expected");
    };
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"],
        "{path}: the Service selects the Pods"
    );
    (docs, mounted)
}

#[test]
fn the_sidecar_manifest_fronts_an_app_that_listens_on_localhost_only() {
    let (docs, mounted) = check_kubernetes("deploy/kubernetes/sidecar.yaml");
    assert!(!mounted.upstream_hosts.is_empty(), "the sidecar has routes");
    assert!(
        mounted
            .upstream_hosts
            .iter()
            .all(|u| u.contains("127.0.0.1")),
        "the sidecar forwards to the app on localhost: {:?}",
        mounted.upstream_hosts
    );
    let deployment = kind(&docs, "Deployment")[0];
    let app = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(app["name"], "app");
    assert!(
        app["env"]
            .as_sequence()
            .is_some_and(|env| env.iter().any(|e| e["value"]
                .as_str()
                .is_some_and(|v| v.starts_with("127.0.0.1:")))),
        "the app is told to listen on localhost"
    );
}

#[test]
fn the_standalone_manifest_scales_and_survives_disruptions() {
    let (docs, _) = check_kubernetes("deploy/kubernetes/standalone.yaml");
    let deployment = kind(&docs, "Deployment")[0];
    let name = &deployment["metadata"]["name"];
    let [hpa] = kind(&docs, "HorizontalPodAutoscaler")[..] else {
        panic!("one HorizontalPodAutoscaler expected");
    };
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], *name);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    let min = hpa["spec"]["minReplicas"].as_u64().expect("minReplicas");
    let [pdb] = kind(&docs, "PodDisruptionBudget")[..] else {
        panic!("one PodDisruptionBudget expected");
    };
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "one replica at a time");
    assert!(min >= 2, "with one replica a disruption is an outage");
    assert!(
        deployment["spec"]["replicas"].is_null(),
        "the HPA owns the replica count; `replicas` would reset it on every apply"
    );
}

#[test]
fn the_compose_trial_mounts_a_config_that_compiles_and_publishes_its_ports() {
    let compose = documents("deploy/compose/docker-compose.yaml").remove(0);
    let mounted = compile(
        &read("deploy/compose/gateway.yaml"),
        "deploy/compose/gateway.yaml",
    );
    let gateway = &compose["services"]["portcullis"];
    let volume = gateway["volumes"][0].as_str().expect("a config volume");
    assert!(volume.starts_with("./gateway.yaml:/etc/portcullis/gateway.yaml"));
    let ports: Vec<&str> = gateway["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for port in [mounted.listen, mounted.admin] {
        assert!(
            ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "port {port} published: {ports:?}"
        );
    }
    assert!(compose["services"]["keycloak"].is_mapping());
    let realm: serde_json::Value =
        serde_json::from_str(&read("deploy/compose/realm-demo.json")).expect("realm JSON");
    assert_eq!(realm["realm"], "demo");
}

#[test]
fn the_dockerfile_ships_the_release_build_as_a_non_root_user() {
    let dockerfile = read("deploy/Dockerfile");
    let has = |text: &str| assert!(dockerfile.contains(text), "Dockerfile lacks `{text}`");
    has("cargo build --release --locked --bin portcullis");
    has("COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis");
    has("USER 65532:65532");
    let last_from = dockerfile
        .lines()
        .rfind(|l| l.starts_with("FROM "))
        .expect("a FROM");
    assert!(last_from.contains("distroless") && last_from.contains("nonroot"));
    assert_eq!(env!("CARGO_PKG_NAME"), "portcullis", "the binary it copies");
    // The image's default config is the shipped one, and it compiles.
    has("COPY gateway.yaml /etc/portcullis/gateway.yaml");
    compile(&read("gateway.yaml"), "gateway.yaml");
}
