//! The Kubernetes API as the source of pods, namespaces and policies, end to end: a real
//! kube-apiserver (v1.20.2) and etcd on the node namespace's loopback, the real sensor
//! watching it (`kubernetes:` in its config, the DaemonSet's RBAC), real TCP between a local
//! pod and a pod "on another node".
//!
//! - `server` is a pod of this node (`spec.nodeName` = the sensor's node name): its netns
//!   hangs off a veth whose host side matches the sensor's `interfaces`, with a /32 host route
//!   to its IP in the node namespace, as routed CNIs install it; that route is how the sensor
//!   finds the pod's interface.
//! - `client` lives in a `remote` netns behind a veth the sensor does not attach to; the API
//!   says it runs on another node, so it is known only as a remote identity (IP → labels).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sensor_e2e::{
    ApiServer, Netns, Sensor, Veth, apiserver::object_path, privileged, run,
    traffic::tcp_roundtrip, unique, wait_until,
};
use serde_json::{Value, json};

/// The sensor's node name (`Sensor::start` passes `--node-name e2e-node`).
const NODE: &str = "e2e-node";

/// Declared first, dropped first: the API server's processes live in `node`.
struct Cluster {
    api: ApiServer,
    node: Netns,
    server: Netns,
    remote: Netns,
    server_veth: Veth,
    remote_veth: Veth,
}

impl Cluster {
    /// The namespaces and veths, the API server, namespace `shop` and the local pod
    /// `shop/server` (app=server), running, with its host route.
    fn setup(subnet: u8) -> Self {
        let cluster = Self::setup_without_server(subnet);
        cluster.add_host_route();
        cluster.add_server_pod();
        cluster
    }

    /// [`Cluster::setup`] without the server pod in the API and without its host route.
    fn setup_without_server(subnet: u8) -> Self {
        let node = Netns::new("node");
        let server = Netns::new("srv");
        let remote = Netns::new("rmt");
        // "veth*" is among the sensor's default interfaces; "rmt*" is not.
        let server_veth = Veth::new(&node, &server, &unique("vethk"), subnet);
        let remote_veth = Veth::new(&node, &remote, &unique("rmt"), subnet + 1);
        server_veth.route_via_node(&node, &server);
        remote_veth.route_via_node(&node, &remote);
        let api = ApiServer::start(&node);
        let cluster = Self { api, node, server, remote, server_veth, remote_veth };
        cluster.namespace("shop", &json!({"team": "web"}));
        cluster
    }

    /// The node's /32 route to the server pod through its veth, as a routed CNI adds it.
    fn add_host_route(&self) {
        run(
            "ip",
            &[
                "-n",
                &self.node.name,
                "route",
                "add",
                &format!("{}/32", self.server_veth.pod_ip),
                "dev",
                &self.server_veth.host_if,
            ],
        );
    }

    /// The local pod `shop/server` (app=server), running.
    fn add_server_pod(&self) {
        self.api.add_running_pod(
            "shop",
            "server",
            &json!({"app": "server"}),
            NODE,
            &self.server_veth.pod_ip.to_string(),
        );
    }

    fn namespace(&self, name: &str, labels: &Value) {
        self.api.apply(&json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        }));
    }

    /// The pod `namespace/client` (app=client) on another node, at the remote netns' IP.
    fn remote_client(&self, namespace: &str) {
        self.api.add_running_pod(
            namespace,
            "client",
            &json!({"app": "client"}),
            "other-node",
            &self.remote_veth.pod_ip.to_string(),
        );
    }

    /// The sensor in enforce mode with the Kubernetes source only (no policy files).
    fn start(&self, stale_after_seconds: u64) -> Sensor {
        Sensor::start(&self.node, &self.config(stale_after_seconds, 30), &[])
    }

    fn config(&self, stale_after_seconds: u64, initial_sync_timeout_seconds: u64) -> String {
        format!(
            "mode: enforce\nkubernetes:\n  kubeconfig: {}\n  stale_after_seconds: {stale_after_seconds}\n  \
             initial_sync_timeout_seconds: {initial_sync_timeout_seconds}\n",
            self.api.kubeconfig().display()
        )
    }

    /// A TCP round trip client → server:port.
    fn tcp(&self, port: u16) -> bool {
        tcp_roundtrip(&self.remote, &self.server, SocketAddr::from((self.server_veth.pod_ip, port)))
    }

    /// Waits until a round trip to `port` succeeds (`allowed`) or fails.
    fn wait_tcp(&self, port: u16, allowed: bool, sensor: &Sensor) {
        let what = format!("TCP to {port} {}", if allowed { "allowed" } else { "denied" });
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(&what, Duration::from_secs(30), || (self.tcp(port) == allowed).then_some(()))
        }));
        if found.is_err() {
            panic!("{what}: never happened; sensor log:\n{}", sensor.log());
        }
    }
}

/// CiliumNetworkPolicy `shop/server-ingress`: the client may reach the server on `allowed`
/// ports (TCP); 8081 is denied explicitly.
fn server_policy(allowed: &[u16]) -> Value {
    let ports: Vec<Value> =
        allowed.iter().map(|p| json!({"port": p.to_string(), "protocol": "TCP"})).collect();
    json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "server-ingress", "namespace": "shop"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                "toPorts": [{"ports": ports}],
            }],
            "ingressDeny": [{
                "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                "toPorts": [{"ports": [{"port": "8081", "protocol": "TCP"}]}],
            }],
        },
    })
}

fn flow_to(port: u16, verdict: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["flow"]["verdict"] == verdict && v["flow"]["l4"]["TCP"]["destination_port"] == port
}

/// `sensor_kubernetes_*{resource}` of every source, for assertions on all of them.
const SOURCES: [&str; 7] = [
    "pods/local",
    "pods/cluster",
    "namespaces",
    "networkpolicies",
    "ciliumnetworkpolicies",
    "ciliumclusterwidenetworkpolicies",
    "hostpolicies",
];

#[test]
fn a_cilium_policy_from_the_api_is_enforced_updated_and_removed() {
    if !privileged() {
        return;
    }
    let cluster = Cluster::setup(10);
    cluster.remote_client("shop");
    let policy = server_policy(&[8080]);
    cluster.api.apply(&policy);
    let sensor = cluster.start(30);

    // Start-up waits for the first lists: the API's policy is in force once ready.
    assert!(cluster.tcp(8080), "allowed port denied:\n{}", sensor.log());
    assert!(!cluster.tcp(8081), "explicitly denied port passed");
    assert!(!cluster.tcp(9000), "port no rule allows passed");
    let denied = sensor.wait_event("POLICY_DENY drop of 8081", flow_to(8081, "DROPPED"));
    let f = &denied["flow"];
    assert_eq!(f["drop_reason_desc"], "POLICY_DENY", "{denied}");
    // Both ends are named from the API: the local pod and the remote pod's identity.
    assert_eq!(f["destination"]["pod_name"], "server", "{denied}");
    assert_eq!(f["destination"]["namespace"], "shop", "{denied}");
    assert_eq!(f["source"]["pod_name"], "client", "{denied}");
    assert_eq!(f["ingress_denied_by"][0]["name"], "server-ingress", "{denied}");
    let allowed = sensor.wait_event("FORWARDED flow into the server on 8080", |v| {
        flow_to(8080, "FORWARDED")(v) && v["flow"]["traffic_direction"] == "INGRESS"
    });
    assert_eq!(allowed["flow"]["ingress_allowed_by"][0]["name"], "server-ingress", "{allowed}");

    let m = sensor.metrics();
    for source in SOURCES {
        assert_eq!(
            m.get("sensor_kubernetes_source_synced", &[("resource", source)]),
            Some(1.0),
            "{source}: {}",
            m.text
        );
        assert_eq!(
            m.get("sensor_kubernetes_source_stale", &[("resource", source)]),
            Some(0.0),
            "{source}: {}",
            m.text
        );
    }
    let objects = |resource| m.get("sensor_kubernetes_objects", &[("resource", resource)]);
    assert_eq!(objects("pods/local"), Some(1.0), "{}", m.text);
    assert_eq!(objects("pods/cluster"), Some(2.0), "{}", m.text);
    assert_eq!(objects("ciliumnetworkpolicies"), Some(1.0), "{}", m.text);

    // Updated through the API: 9000 allowed as well.
    cluster.api.apply(&server_policy(&[8080, 9000]));
    cluster.wait_tcp(9000, true, &sensor);
    assert!(cluster.tcp(8080), "8080 denied after the update");
    assert!(!cluster.tcp(8081), "8081 passed after the update");

    // A HostPolicy object through the CRD of deploy/ reaches the host engine too.
    cluster.api.apply(&json!({
        "apiVersion": "sensor.dev/v1alpha1",
        "kind": "HostPolicy",
        "metadata": {"name": "shop-audit"},
        "spec": {
            "selector": {"namespaces": ["shop"]},
            "executables": [{"path": "/nonexistent/se2e-tool"}],
        },
    }));
    sensor.wait_metric("sensor_kubernetes_objects", &[("resource", "hostpolicies")], |v| {
        v == Some(1.0)
    });

    // Deleted: nothing selects the server any more, every port is open.
    cluster.api.delete(&object_path(&policy));
    cluster.wait_tcp(8081, true, &sensor);
    assert!(cluster.tcp(9001), "a port passed only with no policy");
    sensor.wait_metric(
        "sensor_kubernetes_objects",
        &[("resource", "ciliumnetworkpolicies")],
        |v| v == Some(0.0),
    );

    // A cluster-wide policy (no namespace) from the API applies as well. As in Cilium, its
    // ingress section makes ingress default-deny: it allows everything but denies 9001.
    cluster.api.apply(&json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "deny-9001"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"fromEntities": ["all"]}],
            "ingressDeny": [{
                "fromEntities": ["all"],
                "toPorts": [{"ports": [{"port": "9001", "protocol": "TCP"}]}],
            }],
        },
    }));
    cluster.wait_tcp(9001, false, &sensor);
    assert!(cluster.tcp(8081), "a port the cluster-wide policy does not name was denied");

    // Every object this API server sent decoded (none skipped), and no watch failed.
    let m = sensor.metrics();
    for source in SOURCES {
        for reason in ["bad_event", "error"] {
            assert_eq!(
                m.get(
                    "sensor_kubernetes_watch_restarts_total",
                    &[("resource", source), ("reason", reason)]
                ),
                Some(0.0),
                "{source} {reason}: {}",
                m.text
            );
        }
    }
}

#[test]
fn namespace_labels_from_the_api_drive_a_namespace_selector() {
    if !privileged() {
        return;
    }
    let cluster = Cluster::setup(20);
    cluster.namespace("front", &json!({"team": "other"}));
    cluster.remote_client("front");
    cluster.api.apply(&json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "from-frontend-teams", "namespace": "shop"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"team": "frontend"}}}],
                "ports": [{"port": 8080, "protocol": "TCP"}],
            }],
        },
    }));
    let sensor = cluster.start(30);
    assert!(!cluster.tcp(8080), "the client's namespace is not labelled team=frontend yet");
    let dropped = sensor.wait_event("drop of 8080", flow_to(8080, "DROPPED"));
    assert_eq!(dropped["flow"]["source"]["namespace"], "front", "{dropped}");

    // Labelled through the API: the selector matches the client's namespace.
    cluster.namespace("front", &json!({"team": "frontend"}));
    cluster.wait_tcp(8080, true, &sensor);
    assert!(!cluster.tcp(8081), "a port the NetworkPolicy does not list passed");
    let allowed = sensor.wait_event("FORWARDED 8080", |v| {
        flow_to(8080, "FORWARDED")(v) && v["flow"]["traffic_direction"] == "INGRESS"
    });
    assert_eq!(allowed["flow"]["ingress_allowed_by"][0]["name"], "from-frontend-teams");

    // And unlabelled again.
    cluster.namespace("front", &json!({"team": "other"}));
    cluster.wait_tcp(8080, false, &sensor);
}

#[test]
fn a_stale_api_keeps_the_last_policy_and_a_restarted_api_server_is_followed_again() {
    if !privileged() {
        return;
    }
    let mut cluster = Cluster::setup(30);
    cluster.remote_client("shop");
    cluster.api.apply(&server_policy(&[8080]));
    let stale_after = 2;
    let sensor = cluster.start(stale_after);
    assert!(cluster.tcp(8080), "allowed port denied:\n{}", sensor.log());
    assert!(!cluster.tcp(8081), "denied port passed");

    let killed = Instant::now();
    cluster.api.kill();
    // Every source fails at once, but none is stale before stale_after_seconds.
    let grace = Duration::from_secs(stale_after) - Duration::from_millis(500);
    while killed.elapsed() < grace {
        let (status, body) = sensor.get("/readyz");
        assert!(
            status == 200 || killed.elapsed() >= grace,
            "not ready {:?} after the kill: {status} {body}\n{}",
            killed.elapsed(),
            sensor.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Then all of them are, each named with how long it has been failing.
    let body = wait_until("/readyz 503 naming every source", Duration::from_secs(30), || {
        let (status, body) = sensor.get("/readyz");
        (status == 503
            && SOURCES.iter().all(|source| body.contains(&format!("{source}: failing for"))))
        .then_some(body)
    });
    assert!(body.starts_with("not ready: stale Kubernetes cache: "), "{body}");
    let m = sensor.metrics();
    for source in SOURCES {
        assert_eq!(
            m.get("sensor_kubernetes_source_stale", &[("resource", source)]),
            Some(1.0),
            "{source}: {}",
            m.text
        );
    }
    // The last state stays in force.
    assert!(cluster.tcp(8080), "allowed port denied while the API is down");
    assert!(!cluster.tcp(8081), "denied port passed while the API is down");
    let errors = m
        .get(
            "sensor_kubernetes_watch_restarts_total",
            &[("resource", "ciliumnetworkpolicies"), ("reason", "error")],
        )
        .unwrap_or_default();
    assert!(errors >= 1.0, "{}", m.text);

    cluster.api.restart();
    let restarted = Instant::now();
    wait_until("/readyz 200 after the API server restart", Duration::from_secs(90), || {
        (sensor.get("/readyz").0 == 200).then_some(())
    });
    eprintln!("ready again {:?} after the API server answered", restarted.elapsed());
    let m = sensor.metrics();
    for source in SOURCES {
        assert_eq!(
            m.get("sensor_kubernetes_source_stale", &[("resource", source)]),
            Some(0.0),
            "{source}: {}",
            m.text
        );
    }
    // A change made after the restart is followed (resumed, or relisted after 410 Gone).
    cluster.api.apply(&json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "server-ingress", "namespace": "shop"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                "toPorts": [{"ports": [{"port": "8081", "protocol": "TCP"}]}],
            }],
        },
    }));
    cluster.wait_tcp(8081, true, &sensor);
    assert!(!cluster.tcp(8080), "8080 still allowed after the change");
    let m = sensor.metrics();
    let restarts = |reason| {
        m.get(
            "sensor_kubernetes_watch_restarts_total",
            &[("resource", "ciliumnetworkpolicies"), ("reason", reason)],
        )
    };
    eprintln!(
        "ciliumnetworkpolicies watch restarts: error {:?}, expired {:?}, resumed {:?}",
        restarts("error"),
        restarts("expired"),
        restarts("resumed")
    );
}

#[test]
fn a_policy_object_that_does_not_parse_is_rejected_and_its_previous_version_stays() {
    if !privileged() {
        return;
    }
    let cluster = Cluster::setup(40);
    cluster.remote_client("shop");
    cluster.api.apply(&server_policy(&[8080]));
    let sensor = cluster.start(30);
    assert!(cluster.tcp(8080), "allowed port denied:\n{}", sensor.log());

    // The CRD has no schema: the API server stores a CIDR that cannot parse.
    let mut bad = server_policy(&[8080, 9000]);
    bad["spec"]["ingress"]
        .as_array_mut()
        .expect("ingress")
        .push(json!({"fromCIDR": ["999.1.1.1/8"]}));
    cluster.api.apply(&bad);
    sensor.wait_metric(
        "sensor_kubernetes_rejected_objects",
        &[("resource", "ciliumnetworkpolicies")],
        |v| v == Some(1.0),
    );
    let log = wait_until("the rejection in the log", Duration::from_secs(10), || {
        let log = sensor.log();
        log.contains("999.1.1.1").then_some(log)
    });
    let line = log.lines().find(|l| l.contains("999.1.1.1")).expect("line");
    assert!(
        line.contains("kubernetes/ciliumnetworkpolicies/shop/server-ingress:")
            && line.contains("previous version stays in force"),
        "the error must name the object and a line: {line}"
    );
    // The previous version stays: 9000 (only in the bad version) denied, 8080 allowed.
    assert!(!cluster.tcp(9000), "the rejected version was applied");
    assert!(cluster.tcp(8080), "the previous version is not in force");
    assert!(!cluster.tcp(8081), "the previous version is not in force");
    assert_eq!(
        sensor.metrics().get("sensor_kubernetes_objects", &[("resource", "ciliumnetworkpolicies")]),
        Some(1.0)
    );

    // Fixed: applied, nothing rejected any more.
    cluster.api.apply(&server_policy(&[8080, 9000]));
    cluster.wait_tcp(9000, true, &sensor);
    sensor.wait_metric(
        "sensor_kubernetes_rejected_objects",
        &[("resource", "ciliumnetworkpolicies")],
        |v| v == Some(0.0),
    );
}

#[test]
fn pods_routes_and_crds_that_change_while_the_sensor_runs_are_followed() {
    if !privileged() {
        return;
    }
    let cluster = Cluster::setup_without_server(50);
    cluster.remote_client("shop");
    cluster.api.apply(&server_policy(&[8080]));
    let stale_after = 3;
    let sensor = cluster.start(stale_after);
    // The server is no endpoint yet: no policy selects its address.
    assert!(cluster.tcp(8081), "8081 denied before the server pod exists:\n{}", sensor.log());

    // The pod appears through the watch, first Pending without an IP, then running; its host
    // route is not there yet, so no interface carries its policy.
    cluster.api.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "server", "namespace": "shop", "labels": {"app": "server"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "example.invalid/app:1"}]},
    }));
    let ip = cluster.server_veth.pod_ip.to_string();
    cluster.api.set_pod_running("shop", "server", &[&ip], &"ab".repeat(32));
    sensor.wait_metric("sensor_kubernetes_objects", &[("resource", "pods/local")], |v| {
        v == Some(1.0)
    });
    // The route appears: the pod's interface is found and its policy enforced.
    cluster.add_host_route();
    cluster.wait_tcp(8081, false, &sensor);
    assert!(cluster.tcp(8080), "allowed port denied:\n{}", sensor.log());
    let denied = sensor.wait_event("POLICY_DENY drop of 8081", flow_to(8081, "DROPPED"));
    assert_eq!(denied["flow"]["destination"]["pod_name"], "server", "{denied}");

    // A CRD removed while watched: its resource is no longer served (404), which counts as
    // empty and healthy, not as a failing source.
    cluster.api.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ciliumclusterwidenetworkpolicies.cilium.io");
    wait_until("the sensor to see the CCNP resource gone", Duration::from_secs(30), || {
        sensor
            .log()
            .lines()
            .any(|l| {
                l.contains("not served by the API server")
                    && l.contains("ciliumclusterwidenetworkpolicies")
            })
            .then_some(())
    });
    let gone = Instant::now();
    // Past stale_after_seconds the source is still healthy (polled until then).
    wait_until("stale_after_seconds to pass", Duration::from_secs(10), || {
        let m = sensor.metrics();
        let stale = m.get(
            "sensor_kubernetes_source_stale",
            &[("resource", "ciliumclusterwidenetworkpolicies")],
        );
        assert_eq!(stale, Some(0.0), "an absent resource counted as stale: {}", m.text);
        assert_eq!(sensor.get("/readyz").0, 200, "not ready after a CRD was removed");
        (gone.elapsed() > Duration::from_secs(stale_after + 1)).then_some(())
    });

    // The pod goes (as the kubelet finally deletes it, without grace: with no kubelet, a
    // graceful delete would leave it Terminating): its address is no endpoint any more.
    cluster.api.delete("/api/v1/namespaces/shop/pods/server?gracePeriodSeconds=0");
    sensor.wait_metric("sensor_kubernetes_objects", &[("resource", "pods/local")], |v| {
        v == Some(0.0)
    });
    cluster.wait_tcp(8081, true, &sensor);
}

#[test]
fn a_sensor_started_while_the_api_is_down_applies_the_api_policies_once_it_answers() {
    if !privileged() {
        return;
    }
    let mut cluster = Cluster::setup(60);
    cluster.remote_client("shop");
    cluster.api.apply(&server_policy(&[8080]));
    cluster.api.kill();
    let sensor = Sensor::start_unready(&cluster.node, &cluster.config(2, 2), &[]);
    // Running after initial_sync_timeout_seconds, but not ready: no source has listed.
    wait_until("the initial sync timeout in the log", Duration::from_secs(30), || {
        sensor.log().contains("Kubernetes sources not listed after 2s").then_some(())
    });
    // Once attached (the plain "not ready" before), /readyz names what holds it back.
    let body = wait_until("/readyz naming the unlisted sources", Duration::from_secs(30), || {
        let (status, body) = sensor.get("/readyz");
        assert_ne!(status, 200, "ready without the API: {body}");
        body.contains("stale Kubernetes cache").then_some(body)
    });
    for source in SOURCES {
        assert!(body.contains(&format!("{source}: ")), "{source} not named: {body}");
    }
    // Nothing from the API is in force yet: the server is no endpoint.
    assert!(cluster.tcp(8081), "8081 denied before any policy:\n{}", sensor.log());

    cluster.api.restart();
    wait_until("/readyz 200 once the API answers", Duration::from_secs(90), || {
        (sensor.get("/readyz").0 == 200).then_some(())
    });
    cluster.wait_tcp(8081, false, &sensor);
    assert!(cluster.tcp(8080), "allowed port denied:\n{}", sensor.log());
    // Reloads that waited for the API were deferred, not rejected.
    let m = sensor.metrics();
    assert_eq!(
        m.get("sensor_policy_reloads_total", &[("outcome", "rejected")]).unwrap_or_default(),
        0.0,
        "{}",
        m.text
    );
}
