//! Network policy end to end: CiliumNetworkPolicy / NetworkPolicy files and an endpoints file,
//! compiled into the kernel; real TCP and UDP between two pod namespaces routed through a node
//! namespace. Enforce mode drops, detect mode audits, replies of allowed connections pass,
//! changes apply on file write, and a bad file leaves the previous policy in force.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use sensor_e2e::{Netns, Sensor, Veth, privileged, sensor::sensor_bin, unique};

struct Pods {
    node: Netns,
    client: Netns,
    server: Netns,
    client_veth: Veth,
    server_veth: Veth,
    dir: PathBuf,
}

impl Drop for Pods {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

const SERVER_POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]
  egress: [{}]   # default-deny egress: the server's replies pass only through conntrack
";

fn setup(subnet: u8) -> Pods {
    let node = Netns::new("node");
    let client = Netns::new("cli");
    let server = Netns::new("srv");
    let (ci, si) = (unique("vethc"), unique("veths"));
    let client_veth = Veth::new(&node, &client, &ci, subnet);
    let server_veth = Veth::new(&node, &server, &si, subnet + 1);
    client_veth.route_via_node(&node, &client);
    server_veth.route_via_node(&node, &server);
    let dir = std::env::temp_dir().join(unique("se2e-pol-"));
    fs::create_dir_all(dir.join("policies")).expect("policy dir");
    fs::write(
        dir.join("endpoints.yaml"),
        format!(
            "endpoints:
- {{namespace: shop, name: client, labels: {{app: client}}, ips: [{}], interface: {ci}}}
- {{namespace: shop, name: server, labels: {{app: server}}, ips: [{}], interface: {si}}}
",
            client_veth.pod_ip, server_veth.pod_ip
        ),
    )
    .expect("endpoints file");
    Pods { node, client, server, client_veth, server_veth, dir }
}

impl Pods {
    fn start(&self, mode: &str) -> Sensor {
        let config = format!(
            "mode: {mode}\npolicy_dir: {}\nendpoints_file: {}\n",
            self.dir.join("policies").display(),
            self.dir.join("endpoints.yaml").display()
        );
        Sensor::start(&self.node, &config, &[])
    }

    fn write_policy(&self, name: &str, text: &str) {
        // Write then rename, as editors and ConfigMap updates do: the watcher sees one change.
        let tmp = self.dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).expect("write policy");
        fs::rename(&tmp, self.dir.join("policies").join(name)).expect("rename policy");
    }

    /// A TCP round trip client → server:port; true when the echo came back.
    fn tcp_roundtrip(&self, port: u16) -> bool {
        let addr = SocketAddr::from((self.server_veth.pod_ip, port));
        let listener = self.server.enter(|| TcpListener::bind(addr).expect("bind server"));
        let server = std::thread::spawn(move || {
            listener.set_nonblocking(false).ok();
            if let Ok((mut conn, _)) = listener.accept() {
                conn.set_read_timeout(Some(Duration::from_secs(3))).ok();
                let mut buf = [0_u8; 4];
                if conn.read_exact(&mut buf).is_ok() {
                    let _ = conn.write_all(&buf);
                }
            }
        });
        let client =
            self.client.enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)));
        let ok = match client {
            Ok(mut conn) => {
                conn.set_read_timeout(Some(Duration::from_secs(3))).ok();
                let mut buf = [0_u8; 4];
                conn.write_all(b"ping").is_ok()
                    && conn.read_exact(&mut buf).is_ok()
                    && &buf == b"ping"
            }
            Err(_) => false,
        };
        if !ok {
            // Unblock the accept so the thread ends.
            let _ =
                self.server.enter(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)));
        }
        let _ = server.join();
        ok
    }

    /// Sends `count` UDP datagrams client → server:port; returns how many arrived.
    fn udp_delivered(&self, port: u16, count: usize) -> usize {
        let addr = SocketAddr::from((self.server_veth.pod_ip, port));
        let receiver = self.server.enter(|| UdpSocket::bind(addr).expect("bind receiver"));
        receiver.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        let sender = self
            .client
            .enter(|| UdpSocket::bind((self.client_veth.pod_ip, 0)).expect("bind sender"));
        let mut got = 0;
        let mut buf = [0_u8; 64];
        for _ in 0..count {
            sender.send_to(b"data", addr).expect("send");
            if receiver.recv_from(&mut buf).is_ok() {
                got += 1;
            }
        }
        got
    }
}

fn flow_to(port: u16, verdict: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |v| {
        v["flow"]["verdict"] == verdict
            && (v["flow"]["l4"]["TCP"]["destination_port"] == port
                || v["flow"]["l4"]["UDP"]["destination_port"] == port)
    }
}

#[test]
fn enforce_mode_drops_denied_flows_and_lets_allowed_connections_and_replies_through() {
    if !privileged() {
        return;
    }
    let pods = setup(10);
    pods.write_policy("server.yaml", SERVER_POLICY);
    let sensor = pods.start("enforce");

    // Allowed: client → server:8080/TCP, and the server's replies despite its egress deny.
    assert!(pods.tcp_roundtrip(8080), "allowed TCP connection failed:\n{}", sensor.log());
    let forwarded = flow_to(8080, "FORWARDED");
    let allowed = sensor.wait_event("FORWARDED flow into the server on 8080", |v| {
        forwarded(v) && v["flow"]["traffic_direction"] == "INGRESS"
    });
    let f = &allowed["flow"];
    assert_eq!(f["traffic_direction"], "INGRESS", "{allowed}");
    assert_eq!(f["source"]["pod_name"], "client", "{allowed}");
    assert_eq!(f["destination"]["pod_name"], "server", "{allowed}");
    assert_eq!(f["destination"]["namespace"], "shop", "{allowed}");
    assert_eq!(f["policy_match_type"], 2, "L3-L4 match: {allowed}");
    assert_eq!(f["IP"]["source"], pods.client_veth.pod_ip.to_string());
    assert_eq!(f["l4"]["TCP"]["flags"]["SYN"], true, "{allowed}");

    // Denied: a port no rule allows. Nothing arrives, and the drop is reported.
    assert_eq!(pods.udp_delivered(9090, 5), 0, "denied UDP was delivered");
    let dropped = sensor.wait_event("DROPPED flow to 9090", flow_to(9090, "DROPPED"));
    assert_eq!(dropped["flow"]["drop_reason_desc"], "POLICY_DENIED", "{dropped}");
    assert_eq!(dropped["flow"]["event_type"]["type"], 1, "{dropped}");
    assert!(!pods.tcp_roundtrip(8081), "TCP to a denied port connected");

    let m = sensor.metrics();
    assert!(
        m.get("hubble_drop_total", &[("reason", "POLICY_DENIED"), ("protocol", "UDP")])
            .is_some_and(|v| v >= 5.0),
        "{}",
        m.text
    );
    assert!(
        m.get(
            "hubble_policy_verdicts_total",
            &[("direction", "ingress"), ("match", "l3-l4"), ("action", "forwarded")]
        )
        .is_some_and(|v| v >= 1.0),
        "{}",
        m.text
    );
    assert!(
        m.get("hubble_flows_processed_total", &[("type", "Drop"), ("verdict", "DROPPED")])
            .is_some(),
        "{}",
        m.text
    );
    assert_eq!(
        m.get("hubble_lost_events_total", &[("source", "perf_event_ring_buffer")]),
        Some(0.0)
    );
}

#[test]
fn detect_mode_audits_instead_of_dropping() {
    if !privileged() {
        return;
    }
    let pods = setup(20);
    pods.write_policy("server.yaml", SERVER_POLICY);
    let sensor = pods.start("detect");
    assert_eq!(pods.udp_delivered(9090, 5), 5, "detect mode must not drop");
    let audited = sensor.wait_event("AUDIT flow to 9090", flow_to(9090, "AUDIT"));
    assert!(audited["flow"].get("drop_reason_desc").is_none(), "{audited}");
    let m = sensor.metrics();
    assert!(
        m.get("hubble_policy_verdicts_total", &[("action", "audit")]).is_some_and(|v| v >= 1.0),
        "{}",
        m.text
    );
    assert_eq!(m.get("hubble_drop_total", &[("reason", "POLICY_DENIED")]), None, "{}", m.text);
}

#[test]
fn deny_rules_beat_allow_and_network_policy_is_enforced() {
    if !privileged() {
        return;
    }
    let pods = setup(30);
    // Allow everything from the client with a NetworkPolicy, then deny 8081 with Cilium.
    pods.write_policy(
        "allow.yaml",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
",
    );
    pods.write_policy(
        "deny.yaml",
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-8081, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
  - fromEndpoints: [{}]
    toPorts: [{ports: [{port: \"8081\", protocol: TCP}]}]
",
    );
    let sensor = pods.start("enforce");
    assert!(pods.tcp_roundtrip(8080), "NetworkPolicy allow failed:\n{}", sensor.log());
    assert!(!pods.tcp_roundtrip(8081), "deny rule did not win over allow");
    let denied = sensor.wait_event("POLICY_DENY drop", flow_to(8081, "DROPPED"));
    assert_eq!(denied["flow"]["drop_reason_desc"], "POLICY_DENY", "{denied}");
}

#[test]
fn policy_changes_apply_on_write_and_a_bad_file_keeps_the_previous_set() {
    if !privileged() {
        return;
    }
    let pods = setup(40);
    pods.write_policy("server.yaml", SERVER_POLICY);
    let sensor = pods.start("enforce");
    assert!(!pods.tcp_roundtrip(9000), "9000 must start denied");
    let revision = sensor.metrics().get("sensor_policy_revision", &[]).expect("revision");

    // Allow 9000 as well: applied without restart.
    pods.write_policy(
        "server.yaml",
        &SERVER_POLICY.replace("\"8080\"", "\"8080\"}, {port: \"9000\""),
    );
    sensor.wait_metric("sensor_policy_revision", &[], |v| v > Some(revision));
    assert!(
        pods.tcp_roundtrip(9000),
        "9000 still denied after the policy change:\n{}",
        sensor.log()
    );

    // A file that does not parse: rejected, previous set stays (8080 and 9000 allowed).
    let revision = sensor.metrics().get("sensor_policy_revision", &[]).expect("revision");
    pods.write_policy("broken.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromCIDR: [999.1.1.1/8]\n");
    sensor
        .wait_metric("sensor_policy_reloads_total", &[("outcome", "rejected")], |v| v >= Some(1.0));
    assert!(
        sensor.log().contains("broken.yaml:7"),
        "error must name file and line:\n{}",
        sensor.log()
    );
    assert_eq!(sensor.metrics().get("sensor_policy_revision", &[]), Some(revision));
    assert!(pods.tcp_roundtrip(9000), "previous policy not in force after a bad file");
    assert!(!pods.tcp_roundtrip(9001), "previous policy not in force after a bad file");
}

#[test]
fn policy_check_reports_endpoints_and_rejects_bad_files() {
    let dir = std::env::temp_dir().join(unique("se2e-chk-"));
    fs::create_dir_all(&dir).expect("dir");
    fs::write(dir.join("p.yaml"), SERVER_POLICY).expect("policy");
    fs::write(
        dir.join("eps.yaml"),
        "endpoints:\n- {namespace: shop, name: server, labels: {app: server}, ips: [10.77.9.2], interface: vs1}\n- {namespace: shop, name: client, labels: {app: client}, ips: [10.77.9.3]}\n",
    )
    .expect("endpoints");
    let out = Command::new(sensor_bin())
        .args(["policy", "check"])
        .arg(dir.join("p.yaml"))
        .arg("--endpoints-file")
        .arg(dir.join("eps.yaml"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("endpoint shop/server"), "{stdout}");
    assert!(stdout.contains("ingress default-deny, egress default-deny"), "{stdout}");
    assert!(
        stdout.contains("allow ingress from")
            && stdout.contains("app=client")
            && stdout.contains("TCP/8080"),
        "{stdout}"
    );

    fs::write(dir.join("bad.yaml"), "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"80\", protocol: QUIC}]}]\n").expect("bad");
    let out = Command::new(sensor_bin()).args(["policy", "check"]).arg(&dir).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad.yaml:7") && stderr.contains("QUIC"), "{stderr}");
    let _ = fs::remove_dir_all(&dir);
}
