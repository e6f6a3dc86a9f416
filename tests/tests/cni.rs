//! Bridge CNIs end to end (flannel's `cni0`, the reference `bridge` plugin, `docker0`): the
//! node reaches its pods through the bridge's subnet route only, with no per-pod host route,
//! so the sensor must find each pod's interface from the pod's own network namespace.
//!
//! - A bridge named like `cni0` (matching the sensor's default `interfaces`) in a `node`
//!   namespace holds 10.78.S.1/24; pods are sandbox processes (`unshare --net`) in cgroups
//!   named like containerd containers, with a veth whose node-side end is enslaved to the
//!   bridge (tests/src/bridge.rs). Their namespaces have no name: only the container's cgroup
//!   leads to them.
//! - The pods come from the real kube-apiserver of the Kubernetes tests, with those
//!   container ids in their status; a `client` pod "on another node" sits in a `remote`
//!   namespace behind a routed veth the sensor does not attach to.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use sensor_e2e::{
    ApiServer, Netns, Sensor, Veth,
    bridge::{Bridge, BridgePod, tcp_roundtrip_paths},
    privileged, run, unique, wait_until,
};
use serde_json::{Value, json};

/// The sensor's node name (`Sensor::start` passes `--node-name e2e-node`).
const NODE: &str = "e2e-node";

/// Declared first, dropped first: the API server's processes live in `node`, the pods'
/// veths end on the bridge.
struct Cluster {
    api: ApiServer,
    pods: Vec<(String, BridgePod)>,
    remote_veth: Veth,
    remote: Netns,
    bridge: Bridge,
    node: Netns,
}

impl Cluster {
    /// Node, bridge (`cni…`), remote namespace, API server, namespace `shop` and the remote
    /// pod `shop/client` (app=client).
    fn setup(subnet: u8) -> Self {
        let node = Netns::new("node");
        let remote = Netns::new("rmt");
        let bridge = Bridge::new(&node, "cni", subnet);
        // "rmt*" is not among the sensor's interfaces: the remote side carries no programs.
        let remote_veth = Veth::new(&node, &remote, &unique("rmt"), subnet);
        remote_veth.route_via_node(&node, &remote);
        run(
            "ip",
            &[
                "-n",
                &remote.name,
                "route",
                "add",
                "10.78.0.0/16",
                "via",
                &remote_veth.node_ip.to_string(),
            ],
        );
        let api = ApiServer::start(&node);
        let cluster = Self { api, pods: Vec::new(), remote_veth, remote, bridge, node };
        cluster.api.apply(&json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"team": "web"}},
        }));
        cluster.api.add_running_pod(
            "shop",
            "client",
            &json!({"app": "client"}),
            "other-node",
            &cluster.remote_veth.pod_ip.to_string(),
        );
        cluster
    }

    /// A pod on the bridge (its sandbox, cgroup and veth), not yet in the API.
    fn sandbox(&mut self, name: &str, host: u8) -> &BridgePod {
        let pod = BridgePod::new(&self.node, &self.bridge, host);
        self.pods.push((name.to_owned(), pod));
        &self.pods.last().expect("pushed").1
    }

    fn pod(&self, name: &str) -> &BridgePod {
        &self.pods.iter().find(|(n, _)| n == name).expect("pod").1
    }

    fn pod_mut(&mut self, name: &str) -> &mut BridgePod {
        &mut self.pods.iter_mut().find(|(n, _)| n == name).expect("pod").1
    }

    /// `shop/<name>` with `labels`, on this node, running with the sandbox's IP and
    /// container id.
    fn publish(&self, name: &str, labels: &Value) {
        let pod = self.pod(name);
        self.api.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "example.invalid/app:1"}]},
        }));
        self.api.set_pod_running("shop", name, &[&pod.ip.to_string()], &pod.container_id);
    }

    fn start(&self) -> Sensor {
        let config = format!(
            "mode: enforce\nkubernetes:\n  kubeconfig: {}\n  initial_sync_timeout_seconds: 30\n",
            self.api.kubeconfig().display()
        );
        Sensor::start(&self.node, &config, &[])
    }

    fn remote_path(&self) -> PathBuf {
        self.remote.path()
    }

    /// TCP round trip between two pods of the bridge.
    fn pod_to_pod(&self, from: &str, to: &str, port: u16) -> bool {
        let (from, to) = (self.pod(from), self.pod(to));
        tcp_roundtrip_paths(&from.netns_path(), &to.netns_path(), SocketAddr::from((to.ip, port)))
    }

    /// TCP round trip from the remote client to a pod of the bridge.
    fn remote_to_pod(&self, to: &str, port: u16) -> bool {
        let to = self.pod(to);
        tcp_roundtrip_paths(&self.remote_path(), &to.netns_path(), SocketAddr::from((to.ip, port)))
    }

    /// TCP round trip from a pod of the bridge to the remote client.
    fn pod_to_remote(&self, from: &str, port: u16) -> bool {
        let addr = SocketAddr::from((self.remote_veth.pod_ip, port));
        tcp_roundtrip_paths(&self.pod(from).netns_path(), &self.remote_path(), addr)
    }

    fn wait(&self, what: &str, sensor: &Sensor, probe: impl Fn() -> bool) {
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(what, Duration::from_secs(30), || probe().then_some(()))
        }));
        if found.is_err() {
            panic!("{what}: never happened; sensor log:\n{}", sensor.log());
        }
    }
}

/// `db` accepts TCP 5432 from `web` only; `web` may send to `db` and to `client` on 8080.
fn policies() -> [Value; 2] {
    [
        json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "db-ingress", "namespace": "shop"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{
                    "fromEndpoints": [{"matchLabels": {"app": "web"}}],
                    "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}],
                }],
            },
        }),
        json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "web-egress", "namespace": "shop"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "egress": [
                    {"toEndpoints": [{"matchLabels": {"app": "db"}}]},
                    {
                        "toEndpoints": [{"matchLabels": {"app": "client"}}],
                        "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}],
                    },
                ],
            },
        }),
    ]
}

fn tcp_flow(port: u16, verdict: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["flow"]["verdict"] == verdict && v["flow"]["l4"]["TCP"]["destination_port"] == port
}

/// The "found the pod's interface" log line of `pod`, if logged.
fn found_line(log: &str, pod: &str) -> Option<String> {
    let field = format!("pod={pod} ");
    log.lines()
        .find(|l| l.contains("found the pod's interface") && l.contains(&field))
        .map(str::to_owned)
}

/// A `key=value` number of a log line.
fn field(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(&format!("{key}="))? + key.len() + 1..];
    rest.split(|c: char| c.is_whitespace() || c == ',').next()?.parse().ok()
}

/// The rules each check below relies on, asserted in both tests.
fn assert_enforced(cluster: &Cluster, sensor: &Sensor) {
    // Between two pods on the same bridge.
    assert!(cluster.pod_to_pod("web", "db", 5432), "web → db 5432 denied:\n{}", sensor.log());
    assert!(!cluster.pod_to_pod("web", "db", 5433), "web → db 5433 passed (db-ingress)");
    // Between a pod of the bridge and a peer outside it, both ways.
    assert!(!cluster.remote_to_pod("db", 5432), "client → db 5432 passed (db-ingress)");
    assert!(cluster.pod_to_remote("web", 8080), "web → client 8080 denied:\n{}", sensor.log());
    assert!(!cluster.pod_to_remote("web", 8081), "web → client 8081 passed (web-egress)");
}

#[test]
fn pods_behind_a_bridge_are_found_from_their_namespace_counted_and_enforced() {
    if !privileged() {
        return;
    }
    let mut cluster = Cluster::setup(210);
    cluster.sandbox("web", 2);
    cluster.sandbox("db", 3);
    // No host route to either pod: the node has only the bridge's subnet route.
    let routes = cluster.node.exec(&["ip", "route", "show"]);
    assert!(!routes.contains("10.78.210.2 ") && !routes.contains("10.78.210.3 "), "{routes}");
    cluster.publish("web", &json!({"app": "web"}));
    cluster.publish("db", &json!({"app": "db"}));
    for policy in policies() {
        cluster.api.apply(&policy);
    }
    let sensor = cluster.start();
    cluster.wait("web → db 5433 denied", &sensor, || !cluster.pod_to_pod("web", "db", 5433));
    assert_enforced(&cluster, &sensor);

    // Each pod was found through its container's cgroup, at the veth enslaved to the bridge.
    let log = sensor.log();
    for name in ["web", "db"] {
        let line = found_line(&log, &format!("shop/{name}"))
            .unwrap_or_else(|| panic!("no discovery line for shop/{name}:\n{log}"));
        let pod = cluster.pod(name);
        assert!(line.contains(&pod.host_if), "{line}");
        assert!(line.contains("via=container"), "{line}");
        assert!(line.contains(&cluster.bridge.name), "bridge not named: {line}");
        eprintln!(
            "shop/{name}: discovery {:?} ms",
            field(&line, "discovery_ms").expect("discovery_ms")
        );
    }
    // The bridge matches `interfaces` (cni*) but carries no programs: its ports do.
    assert!(
        log.contains("bridge matches `interfaces` but carries no programs")
            && log.contains(&cluster.bridge.name),
        "{log}"
    );
    let m = sensor.metrics();
    assert_eq!(m.get("sensor_endpoints_unattached", &[]), Some(0.0), "{}", m.text);

    // Flows are counted per pod, each at its own veth.
    let dropped = sensor.wait_event("web → db 5433 DROPPED", tcp_flow(5433, "DROPPED"));
    let f = &dropped["flow"];
    assert_eq!(f["source"]["pod_name"], "web", "{dropped}");
    assert_eq!(f["destination"]["pod_name"], "db", "{dropped}");
    assert_eq!(f["interface"]["name"], cluster.pod("db").host_if.as_str(), "{dropped}");
    let forwarded = sensor.wait_event("web → db 5432 FORWARDED at web's veth", |v| {
        tcp_flow(5432, "FORWARDED")(v)
            && v["flow"]["interface"]["name"] == cluster.pod("web").host_if.as_str()
            && v["flow"]["destination"]["pod_name"] == "db"
    });
    assert_eq!(forwarded["flow"]["source"]["pod_name"], "web", "{forwarded}");
    let to_client = sensor.wait_event("web → client 8081 DROPPED", tcp_flow(8081, "DROPPED"));
    assert_eq!(to_client["flow"]["source"]["pod_name"], "web", "{to_client}");
    assert_eq!(to_client["flow"]["destination"]["pod_name"], "client", "{to_client}");
    let from_client = sensor.wait_event("client → db 5432 DROPPED", |v| {
        tcp_flow(5432, "DROPPED")(v) && v["flow"]["source"]["pod_name"] == "client"
    });
    assert_eq!(from_client["flow"]["destination"]["pod_name"], "db", "{from_client}");
    let m = sensor.metrics();
    for ifname in [&cluster.pod("web").host_if, &cluster.pod("db").host_if] {
        let packets = m.sum("sensor_interface_packets_total", &[("interface", ifname.as_str())]);
        assert!(packets > 0.0, "no packets counted on {ifname}: {}", m.text);
    }

    // The db sandbox goes (its namespace, and with it its veth, vanish) while the API still
    // lists the pod: the programs are detached, the pod is reported unattached, no error.
    cluster.pod_mut("db").kill();
    sensor.wait_metric("sensor_endpoints_unattached", &[], |v| v == Some(1.0));
    let log = sensor.log();
    let warning = log
        .lines()
        .find(|l| l.contains("endpoint not attached") && l.contains("shop/db"))
        .unwrap_or_else(|| panic!("no warning naming shop/db:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        log.contains("detached tc programs") && log.contains(&cluster.pod("db").host_if),
        "{log}"
    );
    assert!(!log.contains("ERROR"), "an error after the namespace vanished:\n{log}");
    // The other pod is untouched.
    assert!(cluster.pod_to_remote("web", 8080), "web → client 8080 denied after db went");
    assert!(!cluster.pod_to_remote("web", 8081), "web → client 8081 passed after db went");
}

#[test]
fn a_pod_added_to_a_bridge_while_running_is_found_and_enforced() {
    if !privileged() {
        return;
    }
    let mut cluster = Cluster::setup(220);
    cluster.sandbox("web", 2);
    cluster.publish("web", &json!({"app": "web"}));
    for policy in policies() {
        cluster.api.apply(&policy);
    }
    let sensor = cluster.start();
    cluster.wait("web → client 8081 denied", &sensor, || !cluster.pod_to_remote("web", 8081));

    // The db pod arrives: its sandbox first (CNI ADD), then the API says it runs.
    cluster.sandbox("db", 3);
    let published = Instant::now();
    cluster.publish("db", &json!({"app": "db"}));
    let line = wait_until("shop/db discovered", Duration::from_secs(30), || {
        found_line(&sensor.log(), "shop/db")
    });
    let logged = published.elapsed();
    cluster.wait("web → db 5433 denied", &sensor, || !cluster.pod_to_pod("web", "db", 5433));
    let enforced = published.elapsed();
    eprintln!(
        "new bridge pod: discovery {:?} ms (in the agent), {:?} ms after it was first looked for; \
         logged {logged:?} and enforced {enforced:?} after the API update",
        field(&line, "discovery_ms"),
        field(&line, "since_first_seen_ms"),
    );
    assert!(line.contains(&cluster.pod("db").host_if) && line.contains("via=container"), "{line}");
    assert!(logged < Duration::from_secs(5), "discovery took {logged:?}");
    assert_enforced(&cluster, &sensor);
    let m = sensor.metrics();
    assert_eq!(m.get("sensor_endpoints_unattached", &[]), Some(0.0), "{}", m.text);

    // A local pod whose sandbox never shows up: reported, by name, and counted.
    cluster.api.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ghost", "namespace": "shop", "labels": {"app": "ghost"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "example.invalid/app:1"}]},
    }));
    let ghost = Ipv4Addr::new(10, 78, 220, 9).to_string();
    cluster.api.set_pod_running("shop", "ghost", &[&ghost], &sensor_e2e::bridge::container_id());
    sensor.wait_metric("sensor_endpoints_unattached", &[], |v| v == Some(1.0));
    let log = sensor.log();
    assert!(
        log.lines().any(|l| l.contains("endpoint not attached") && l.contains("shop/ghost")),
        "{log}"
    );
}

/// The endpoints file may omit `interface`: a local pod named by its container (or by its
/// namespace path) is found the same way; `policy check` says which local pods it cannot
/// find, and that nothing is enforced for them here.
#[test]
fn an_endpoints_file_without_interfaces_is_resolved_and_policy_check_names_what_is_not_enforced() {
    if !privileged() {
        return;
    }
    let node = Netns::new("node");
    let bridge = Bridge::new(&node, "cni", 230);
    let web = BridgePod::new(&node, &bridge, 2);
    let db = BridgePod::new(&node, &bridge, 3);
    let dir = sensor_e2e::TempDir::new("cni");
    let endpoints = dir.path().join("endpoints.yaml");
    std::fs::write(
        &endpoints,
        format!(
            "endpoints:\n\
             - {{namespace: shop, name: web, labels: {{app: web}}, ips: [{}], containers: [\"containerd://{}\"]}}\n\
             - {{namespace: shop, name: db, labels: {{app: db}}, ips: [{}], netns: {}}}\n\
             - {{namespace: shop, name: gone, labels: {{app: gone}}, ips: [10.78.230.9], netns: /run/netns/se2e-no-such-netns}}\n",
            web.ip,
            web.container_id,
            db.ip,
            db.netns_path().display()
        ),
    )
    .expect("write endpoints");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("mkdir");
    std::fs::write(
        policies.join("db.yaml"),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: db-ingress, namespace: shop}\n\
         spec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: web}}]\n    \
         toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]\n",
    )
    .expect("write policy");
    let config = format!(
        "mode: enforce\npolicy_dir: {}\nendpoints_file: {}\n",
        policies.display(),
        endpoints.display()
    );
    let sensor = Sensor::start(&node, &config, &[]);
    let to_db = |port| {
        tcp_roundtrip_paths(&web.netns_path(), &db.netns_path(), SocketAddr::from((db.ip, port)))
    };
    wait_until("web → db 5433 denied", Duration::from_secs(30), || (!to_db(5433)).then_some(()));
    assert!(to_db(5432), "web → db 5432 denied:\n{}", sensor.log());
    let log = sensor.log();
    let db_line = found_line(&log, "shop/db").unwrap_or_else(|| panic!("{log}"));
    assert!(db_line.contains("via=netns /proc/"), "{db_line}");
    let web_line = found_line(&log, "shop/web").unwrap_or_else(|| panic!("{log}"));
    assert!(web_line.contains("via=container"), "{web_line}");
    sensor.wait_metric("sensor_endpoints_unattached", &[], |v| v == Some(1.0));

    // `policy check` on this node (in its namespace): the missing one is named, "not
    // enforced here"; the others are found as the agent found them.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", node.path().display()))
        .arg("--")
        .arg(sensor_e2e::sensor::sensor_bin())
        .args(["policy", "check", "--endpoints-file"])
        .arg(&endpoints)
        .arg(&policies)
        .output()
        .expect("run policy check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let gone = text
        .lines()
        .find(|l| l.contains("shop/gone"))
        .unwrap_or_else(|| panic!("shop/gone not reported:\n{text}"));
    assert!(gone.contains("not enforced here"), "{gone}");
    for found in ["shop/web", "shop/db"] {
        assert!(
            !text.lines().any(|l| l.contains(found) && l.contains("not enforced here")),
            "{text}"
        );
    }
    assert!(text.contains(&format!("endpoint shop/db (interface {}", db.host_if)), "{text}");
}
