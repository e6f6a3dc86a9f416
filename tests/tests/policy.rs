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

use sensor_e2e::{
    Netns, Sensor, Veth, packet::IcmpSocket, privileged, sensor::sensor_bin,
    traffic::tcp_roundtrip, unique,
};

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
    setup_with(subnet, true)
}

/// Without the client in the endpoints file its address is outside the cluster: CIDR rules
/// and the `world` entity apply to it.
fn setup_with(subnet: u8, client_is_endpoint: bool) -> Pods {
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
    let client_line = format!(
        "- {{namespace: shop, name: client, labels: {{app: client}}, ips: [{}], interface: {ci}}}\n",
        client_veth.pod_ip
    );
    fs::write(
        dir.join("endpoints.yaml"),
        format!(
            "endpoints:\n{}- {{namespace: shop, name: server, labels: {{app: server}}, ips: [{}], interface: {si}}}\n",
            if client_is_endpoint { client_line.as_str() } else { "" },
            server_veth.pod_ip
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
        tcp_roundtrip(&self.client, &self.server, SocketAddr::from((self.server_veth.pod_ip, port)))
    }
}

impl Pods {
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
    // The server's replies passed above, but a new connection from the server is its egress,
    // which the policy denies.
    let to_client = SocketAddr::from((pods.client_veth.pod_ip, 8080));
    assert!(!tcp_roundtrip(&pods.server, &pods.client, to_client), "server opened a connection");
    let reverse = sensor.wait_event("server egress drop", |v| {
        v["flow"]["verdict"] == "DROPPED" && v["flow"]["traffic_direction"] == "EGRESS"
    });
    assert_eq!(reverse["flow"]["source"]["pod_name"], "server", "{reverse}");

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

    // Host policies are checked by the same command.
    fs::remove_file(dir.join("bad.yaml")).expect("rm");
    fs::write(dir.join("host.yaml"), "apiVersion: sensor.dev/v1alpha1\nkind: HostPolicy\nmetadata: {name: web}\nspec:\n  selector: {namespaces: [shop]}\n  files: [{prefix: /etc/, access: [write]}]\n  noRoot: {}\n").expect("host");
    let out = Command::new(sensor_bin())
        .args(["policy", "check"])
        .arg(dir.join("p.yaml"))
        .arg(dir.join("host.yaml"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("ok: HostPolicy web")
            && stdout.contains("1 file")
            && stdout.contains("noRoot"),
        "{stdout}"
    );
    fs::write(dir.join("host.yaml"), "apiVersion: sensor.dev/v1alpha1\nkind: HostPolicy\nmetadata: {name: web}\nspec:\n  binds: [{port: 90, endPort: 80}]\n").expect("host");
    let out = Command::new(sensor_bin())
        .args(["policy", "check"])
        .arg(dir.join("host.yaml"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("host.yaml:5") && stderr.contains("endPort"), "{stderr}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn cidr_rules_with_except_and_port_ranges_apply_to_addresses_outside_the_cluster() {
    if !privileged() {
        return;
    }
    let pods = setup_with(50, false);
    let client_net = "10.77.50.0/24";
    pods.write_policy(
        "cidr.yaml",
        &format!(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: from-cidr, namespace: shop}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromCIDRSet: [{{cidr: 10.77.0.0/16, except: [10.77.200.0/24]}}]
    toPorts: [{{ports: [{{port: \"8000\", endPort: 8010, protocol: TCP}}]}}]
  - fromCIDRSet: [{{cidr: 10.0.0.0/8, except: [{client_net}]}}]
    toPorts: [{{ports: [{{port: \"9000\", protocol: TCP}}]}}]
"
        ),
    );
    let sensor = pods.start("enforce");
    assert!(pods.tcp_roundtrip(8000), "start of the range denied:\n{}", sensor.log());
    assert!(pods.tcp_roundtrip(8010), "end of the range denied");
    assert!(!pods.tcp_roundtrip(8011), "port past endPort allowed");
    // 10.0.0.0/8 contains the client, but its /24 is excepted.
    assert!(!pods.tcp_roundtrip(9000), "excepted CIDR allowed");
    let allowed = sensor.wait_event("allowed CIDR flow", |v| {
        flow_to(8000, "FORWARDED")(v) && v["flow"]["traffic_direction"] == "INGRESS"
    });
    // The client's identity is the most specific prefix any rule names: its excepted /24.
    let labels = allowed["flow"]["source"]["labels"].to_string();
    assert!(
        labels.contains("cidr:10.77.50.0/24") && labels.contains("reserved:world"),
        "{allowed}"
    );
    assert_eq!(allowed["flow"]["ingress_allowed_by"][0]["name"], "from-cidr", "{allowed}");
}

#[test]
fn audit_annotation_records_audit_in_enforce_mode() {
    if !privileged() {
        return;
    }
    let pods = setup(60);
    pods.write_policy(
        "server.yaml",
        &SERVER_POLICY.replace(
            "metadata: {name: server-ingress, namespace: shop}",
            "metadata:\n  name: server-ingress\n  namespace: shop\n  annotations: {policy.sensor.dev/audit: \"true\"}",
        ),
    );
    let sensor = pods.start("enforce");
    assert_eq!(pods.udp_delivered(9090, 3), 3, "an audit-mode policy dropped traffic");
    sensor.wait_event("AUDIT flow under an audited policy", flow_to(9090, "AUDIT"));
    assert!(pods.tcp_roundtrip(8080));
    let m = sensor.metrics();
    assert_eq!(m.get("cilium_drop_count_total", &[]), None, "{}", m.text);
}

#[test]
fn ipv6_flows_are_enforced_like_ipv4() {
    if !privileged() {
        return;
    }
    let pods = setup(70);
    let v6 = |ns: &Netns, dev: &str, addr: &str| {
        ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=0",
            &format!("net.ipv6.conf.{dev}.disable_ipv6=0"),
        ]);
        sensor_e2e::run("ip", &["-n", &ns.name, "-6", "addr", "add", addr, "dev", dev, "nodad"]);
    };
    v6(&pods.node, &pods.client_veth.host_if, "fd00:77:70::1/64");
    v6(&pods.node, &pods.server_veth.host_if, "fd00:77:71::1/64");
    v6(&pods.client, "eth0", "fd00:77:70::2/64");
    v6(&pods.server, "eth0", "fd00:77:71::2/64");
    pods.node.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    sensor_e2e::run(
        "ip",
        &["-n", &pods.client.name, "-6", "route", "add", "fd00:77::/32", "via", "fd00:77:70::1"],
    );
    sensor_e2e::run(
        "ip",
        &["-n", &pods.server.name, "-6", "route", "add", "fd00:77::/32", "via", "fd00:77:71::1"],
    );
    // The endpoints gain their IPv6 addresses.
    let eps = fs::read_to_string(pods.dir.join("endpoints.yaml")).expect("endpoints");
    let eps = eps
        .replace(
            &format!("ips: [{}]", pods.client_veth.pod_ip),
            &format!("ips: [{}, \"fd00:77:70::2\"]", pods.client_veth.pod_ip),
        )
        .replace(
            &format!("ips: [{}]", pods.server_veth.pod_ip),
            &format!("ips: [{}, \"fd00:77:71::2\"]", pods.server_veth.pod_ip),
        );
    fs::write(pods.dir.join("endpoints.yaml"), eps).expect("endpoints");
    pods.write_policy("server.yaml", SERVER_POLICY);
    let sensor = pods.start("enforce");

    let server6: std::net::IpAddr = "fd00:77:71::2".parse().expect("v6");
    sensor_e2e::wait_until("IPv6 route to the server", Duration::from_secs(10), || {
        tcp_roundtrip(&pods.client, &pods.server, SocketAddr::new(server6, 8080)).then_some(())
    });
    assert!(
        !tcp_roundtrip(&pods.client, &pods.server, SocketAddr::new(server6, 8081)),
        "IPv6 to a denied port connected"
    );
    let dropped = sensor.wait_event("IPv6 drop", |v| {
        v["flow"]["verdict"] == "DROPPED" && v["flow"]["IP"]["ipVersion"] == "IPv6"
    });
    assert_eq!(dropped["flow"]["IP"]["destination"], "fd00:77:71::2", "{dropped}");
    assert_eq!(dropped["flow"]["source"]["pod_name"], "client", "{dropped}");
    let forwarded = sensor.wait_event("IPv6 forward", |v| {
        v["flow"]["verdict"] == "FORWARDED"
            && v["flow"]["IP"]["ipVersion"] == "IPv6"
            && v["flow"]["traffic_direction"] == "INGRESS"
    });
    assert_eq!(forwarded["flow"]["policy_match_type"], 2, "{forwarded}");
}

#[test]
fn established_connection_keeps_flowing_across_a_policy_reload() {
    if !privileged() {
        return;
    }
    let pods = setup(80);
    pods.write_policy("server.yaml", SERVER_POLICY);
    let sensor = pods.start("enforce");
    let addr = SocketAddr::from((pods.server_veth.pod_ip, 8080));
    let listener = pods.server.enter(|| TcpListener::bind(addr).expect("bind"));
    let echo = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut buf = [0_u8; 4];
        for _ in 0..2 {
            if conn.read_exact(&mut buf).is_err() || conn.write_all(&buf).is_err() {
                return;
            }
        }
    });
    let mut conn = pods
        .client
        .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut buf = [0_u8; 4];
    conn.write_all(b"one!").expect("write");
    conn.read_exact(&mut buf).expect("echo before reload");

    let revision = sensor.metrics().get("sensor_policy_revision", &[]).expect("revision");
    pods.write_policy(
        "server.yaml",
        &SERVER_POLICY.replace("\"8080\"", "\"8080\"}, {port: \"9000\""),
    );
    sensor.wait_metric("sensor_policy_revision", &[], |v| v > Some(revision));
    conn.write_all(b"two!").expect("write after reload");
    conn.read_exact(&mut buf).expect("established connection broken by the reload");
    assert_eq!(&buf, b"two!");
    echo.join().expect("echo thread");
}

#[test]
fn counters_and_flow_records_match_the_packets_sent() {
    if !privileged() {
        return;
    }
    let pods = setup(90);
    pods.write_policy(
        "server.yaml",
        &SERVER_POLICY
            .replace("protocol: TCP}]}]", "protocol: TCP}, {port: \"7000\", protocol: UDP}]}]"),
    );
    let sensor = pods.start("enforce");
    assert_eq!(pods.udp_delivered(7000, 10), 10);
    assert_eq!(pods.udp_delivered(9090, 7), 0);
    sensor.wait_metric(
        "cilium_drop_count_total",
        &[("direction", "INGRESS"), ("reason", "Policy denied")],
        |v| v == Some(7.0),
    );
    let m = sensor.metrics();
    assert_eq!(
        m.get("cilium_forward_count_total", &[("direction", "INGRESS")]),
        Some(10.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get("cilium_forward_count_total", &[("direction", "EGRESS")]),
        Some(17.0),
        "{}",
        m.text
    );
    // Frames: 14 Ethernet + 20 IPv4 + 8 UDP + 4 payload.
    assert_eq!(
        m.get("cilium_drop_bytes_total", &[("direction", "INGRESS")]),
        Some(7.0 * 46.0),
        "{}",
        m.text
    );
    // One record per dropped packet, one per new allowed flow (not one per packet).
    sensor.wait_metric(
        "hubble_drop_total",
        &[("reason", "POLICY_DENIED"), ("protocol", "UDP")],
        |v| v == Some(7.0),
    );
    let records = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        sensor.events().iter().filter(|v| pred(v)).count()
    };
    assert_eq!(records(&|v| flow_to(9090, "DROPPED")(v)), 7);
    assert_eq!(
        records(&|v| flow_to(7000, "FORWARDED")(v) && v["flow"]["traffic_direction"] == "INGRESS"),
        1
    );
    assert_eq!(
        m.get("hubble_port_distribution_total", &[("protocol", "UDP"), ("port", "7000")])
            .map(|v| v >= 1.0),
        Some(true),
        "{}",
        m.text
    );
}

#[test]
fn idle_flows_are_garbage_collected_and_decided_again() {
    if !privileged() {
        return;
    }
    let pods = setup(100);
    let config = format!(
        "mode: enforce\npolicy_dir: {}\nendpoints_file: {}\nconntrack: {{non_tcp_timeout_seconds: 1, gc_interval_seconds: 1}}\n",
        pods.dir.join("policies").display(),
        pods.dir.join("endpoints.yaml").display()
    );
    let sensor = Sensor::start(&pods.node, &config, &[]);
    let addr = SocketAddr::from((pods.server_veth.pod_ip, 7100));
    let receiver = pods.server.enter(|| UdpSocket::bind(addr).expect("bind"));
    receiver.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let sender =
        pods.client.enter(|| UdpSocket::bind((pods.client_veth.pod_ip, 0)).expect("bind sender"));
    let mut buf = [0_u8; 8];
    let new_flow_records = || {
        sensor
            .events()
            .iter()
            .filter(|v| {
                flow_to(7100, "FORWARDED")(v) && v["flow"]["traffic_direction"] == "INGRESS"
            })
            .count()
    };
    sender.send_to(b"one", addr).expect("send");
    receiver.recv_from(&mut buf).expect("first datagram");
    sensor_e2e::wait_until("first flow record", Duration::from_secs(10), || {
        (new_flow_records() == 1).then_some(())
    });
    // Both ends' entries (client egress, server ingress) expire after 1 s idle.
    sensor.wait_metric("sensor_conntrack_gc_deleted_total", &[], |v| v >= Some(2.0));
    sensor.wait_metric("sensor_conntrack_entries", &[], |v| v == Some(0.0));
    // Same 5-tuple again: a new flow, decided and recorded again.
    sender.send_to(b"two", addr).expect("send");
    receiver.recv_from(&mut buf).expect("second datagram");
    sensor_e2e::wait_until("second new-flow record", Duration::from_secs(10), || {
        (new_flow_records() == 2).then_some(())
    });
}

#[test]
fn hubble_metrics_take_context_options_and_forget_vanished_pods() {
    if !privileged() {
        return;
    }
    let pods = setup(110);
    pods.write_policy("server.yaml", SERVER_POLICY);
    let config = format!(
        "mode: enforce\npolicy_dir: {}\nendpoints_file: {}\nhubble_metrics_stale_pod_seconds: 1\n\
         hubble_metrics:\n- flow:sourceContext=namespace;destinationContext=pod\n\
         - drop:labelsContext=source_pod,destination_namespace\n",
        pods.dir.join("policies").display(),
        pods.dir.join("endpoints.yaml").display()
    );
    let sensor = Sensor::start(&pods.node, &config, &[]);
    assert_eq!(pods.udp_delivered(9090, 4), 0);
    let drop_labels =
        [("source_pod", "client"), ("destination_namespace", "shop"), ("reason", "POLICY_DENIED")];
    sensor.wait_metric("hubble_drop_total", &drop_labels, |v| v == Some(4.0));
    let m = sensor.metrics();
    let flow = [("source", "shop"), ("destination", "shop/server"), ("verdict", "DROPPED")];
    assert_eq!(m.get("hubble_flows_processed_total", &flow), Some(4.0), "{}", m.text);
    // Only the configured metrics exist.
    assert!(!m.text.contains("hubble_tcp_flags"), "{}", m.text);
    assert!(!m.text.contains("hubble_policy_verdicts"), "{}", m.text);

    // The pods leave: their series go after the configured delay.
    fs::write(pods.dir.join("endpoints.yaml"), "endpoints: []\n").expect("endpoints");
    sensor.wait_metric("hubble_drop_total", &[("source_pod", "client")], |v| v.is_none());
    sensor.wait_metric("hubble_flows_processed_total", &[("destination", "shop/server")], |v| {
        v.is_none()
    });
}

#[test]
fn a_policy_too_large_for_its_map_is_rejected_whole_and_the_previous_set_stays() {
    if !privileged() {
        return;
    }
    let pods = setup(110);
    pods.write_policy("server.yaml", SERVER_POLICY);
    let config = format!(
        "mode: enforce\npolicy_dir: {}\nendpoints_file: {}\npolicy_map_max_entries: 8\n",
        pods.dir.join("policies").display(),
        pods.dir.join("endpoints.yaml").display()
    );
    let sensor = Sensor::start(&pods.node, &config, &[]);
    let pressure = sensor
        .metrics()
        .get("cilium_bpf_map_pressure", &[("map_name", "policy_allow")])
        .expect("policy_allow pressure exported");
    assert!(pressure > 0.0 && pressure <= 1.0, "pressure {pressure}");
    assert!(pods.tcp_roundtrip(8080), "8080 allowed by the first policy");

    // Twenty ports need twenty allow entries: more than the map holds per generation.
    let ports: Vec<String> =
        (9000..9020).map(|p| format!("{{port: \"{p}\", protocol: TCP}}")).collect();
    let large = SERVER_POLICY.replace(
        "{port: \"8080\", protocol: TCP}",
        &format!("{{port: \"8080\", protocol: TCP}}, {}", ports.join(", ")),
    );
    pods.write_policy("server.yaml", &large);
    sensor
        .wait_metric("sensor_policy_reloads_total", &[("outcome", "rejected")], |v| v >= Some(1.0));
    assert!(
        sensor.log().contains("policy_map_max_entries"),
        "the error must say which bound to raise:\n{}",
        sensor.log()
    );
    // Nothing of the large policy applied, the small one still in force.
    assert!(!pods.tcp_roundtrip(9000), "a rejected policy was half applied");
    assert!(pods.tcp_roundtrip(8080), "previous policy not in force after a rejection");
}

/// A DROPPED or FORWARDED ICMPv4 record of `icmp_type` in `direction`.
fn icmp_flow(
    verdict: &'static str,
    direction: &'static str,
    icmp_type: u8,
) -> impl Fn(&serde_json::Value) -> bool {
    move |v| {
        v["flow"]["verdict"] == verdict
            && v["flow"]["traffic_direction"] == direction
            && v["flow"]["l4"]["ICMPv4"]["type"] == icmp_type
    }
}

#[test]
fn icmps_rules_allow_echo_requests_by_type_and_replies_pass_through_conntrack() {
    if !privileged() {
        return;
    }
    let pods = setup(120);
    // Only TCP 8080 from the client: once a rule has L4 parts, ICMP is not allowed.
    pods.write_policy("server.yaml", SERVER_POLICY);
    let sensor = pods.start("enforce");
    let (server_ip, client_ip) = (pods.server_veth.pod_ip, pods.client_veth.pod_ip);
    let client = pods.client.enter(IcmpSocket::new).expect("raw ICMP socket in the client");
    // Echo id 0: a request in the opposite direction then has the very ports a reply has, so
    // only the ICMP types in the conntrack key tell them apart (GHSA-c66w-hq56-4q97).
    let id = 0;

    let replies = (0..3).filter(|seq| client.request(server_ip, 8, 0, id, *seq)).count();
    assert_eq!(replies, 0, "ping passed a policy without an icmps rule");
    sensor.wait_metric(
        "hubble_drop_total",
        &[("reason", "POLICY_DENIED"), ("protocol", "ICMPv4")],
        |v| v == Some(3.0),
    );
    let dropped = sensor.wait_event("dropped echo request", icmp_flow("DROPPED", "INGRESS", 8));
    assert_eq!(dropped["flow"]["drop_reason_desc"], "POLICY_DENIED", "{dropped}");
    assert_eq!(dropped["flow"]["destination"]["pod_name"], "server", "{dropped}");
    let records = sensor.events().iter().filter(|v| icmp_flow("DROPPED", "INGRESS", 8)(v)).count();
    assert_eq!(records, 3, "one record per dropped echo request");

    // Allow echo requests from the client by type: as a number for IPv4 and by Cilium's name
    // for IPv6, in a rule of their own (icmps and toPorts do not share a rule).
    let revision = sensor.metrics().get("sensor_policy_revision", &[]).expect("revision");
    pods.write_policy(
        "server.yaml",
        &SERVER_POLICY.replace(
            "  egress: [{}]",
            "  - fromEndpoints: [{matchLabels: {app: client}}]
    icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
  egress: [{}]",
        ),
    );
    sensor.wait_metric("sensor_policy_revision", &[], |v| v > Some(revision));
    assert!(
        sensor.log().lines().all(|l| !l.contains("icmps")),
        "icmps must not be reported as unenforced:\n{}",
        sensor.log()
    );
    // The server's egress is default-deny: its echo replies pass only through conntrack.
    let replies = (3..6).filter(|seq| client.request(server_ip, 8, 0, id, *seq)).count();
    assert_eq!(
        replies,
        3,
        "allowed echo requests or their replies were dropped:\n{}",
        sensor.log()
    );
    let allowed = sensor.wait_event("forwarded echo request", icmp_flow("FORWARDED", "INGRESS", 8));
    let f = &allowed["flow"];
    assert_eq!(f["policy_match_type"], 2, "L3-L4 match: {allowed}");
    assert_eq!(f["ingress_allowed_by"][0]["name"], "server-ingress", "{allowed}");
    assert_eq!(f["source"]["pod_name"], "client", "{allowed}");
    assert!(
        sensor.events().iter().all(|v| !icmp_flow("DROPPED", "EGRESS", 0)(v)),
        "an echo reply was dropped"
    );

    // The rule names one type: other ICMP types and other protocols stay denied (an icmps rule
    // read as L3-only would let them through).
    assert!(!client.request(server_ip, 13, 14, id, 0), "timestamp request passed");
    let other = sensor.wait_event("dropped timestamp request", icmp_flow("DROPPED", "INGRESS", 13));
    assert_eq!(other["flow"]["drop_reason_desc"], "POLICY_DENIED", "{other}");
    assert!(!pods.tcp_roundtrip(9000), "an icmps rule allowed TCP");

    // The client's tracked echo exchange must not let an echo request in the opposite
    // direction (same id) pass as a reply: the server's egress denies it, and its own
    // conntrack entry is found by its replies only.
    let server = pods.server.enter(IcmpSocket::new).expect("raw ICMP socket in the server");
    assert!(!server.request(client_ip, 8, 0, id, 0), "the server's echo request passed");
    let reverse = sensor.wait_event("server echo request drop", icmp_flow("DROPPED", "EGRESS", 8));
    assert_eq!(reverse["flow"]["source"]["pod_name"], "server", "{reverse}");
}

/// (link id, program id) of every link pinned under `pins/links`.
fn pinned_links(pins: &std::path::Path) -> std::collections::BTreeSet<(u32, u32)> {
    use aya::programs::links::{FdLink, PinnedLink};
    fs::read_dir(pins.join("links"))
        .expect("links pin dir")
        .filter_map(Result::ok)
        .filter_map(|e| PinnedLink::from_pin(e.path()).ok())
        .filter_map(|l| FdLink::from(l).info().ok())
        .map(|i| (i.id(), i.program_id()))
        .collect()
}

/// Links in the whole kernel that run one of `programs`.
fn links_running(programs: &std::collections::BTreeSet<u32>) -> usize {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| programs.contains(&l.program_id()))
        .count()
}

/// Restart without a gap: the agent is killed with SIGKILL; the pinned programs keep
/// enforcing the last policy with their conntrack state (denied traffic stays dropped, an
/// established allowed connection keeps flowing). A new agent adopts the same links and
/// programs (none loaded or attached twice) and applies a policy changed while it was down.
#[test]
fn kill9_keeps_enforcing_and_a_restart_adopts_the_pins() {
    if !privileged() {
        return;
    }
    let pods = setup(130);
    pods.write_policy("server.yaml", SERVER_POLICY);
    let mut sensor = pods.start("enforce");
    sensor_e2e::wait_until("port 8080 allowed", Duration::from_secs(10), || {
        pods.tcp_roundtrip(8080).then_some(())
    });
    assert!(!pods.tcp_roundtrip(9090), "9090 must be denied");

    // An established, allowed connection, kept open across the kill and the restart.
    let addr = SocketAddr::from((pods.server_veth.pod_ip, 8080));
    let listener = pods.server.enter(|| TcpListener::bind(addr).expect("bind 8080"));
    let mut client = pods
        .client
        .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .expect("connect 8080");
    let (mut server, _) = listener.accept().expect("accept");
    drop(listener);
    for conn in [&client, &server] {
        conn.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    }
    let mut exchange = |round: u8| {
        let mut buf = [0_u8; 3];
        client.write_all(&[round; 3]).is_ok()
            && server.read_exact(&mut buf).is_ok()
            && server.write_all(&buf).is_ok()
            && client.read_exact(&mut buf).is_ok()
            && buf == [round; 3]
    };
    assert!(exchange(1), "established connection before the kill");

    let pins = sensor.pins();
    let links_before = pinned_links(pins.path());
    let programs: std::collections::BTreeSet<u32> = links_before.iter().map(|l| l.1).collect();
    // 22 host hooks + ingress and egress on both veths.
    assert_eq!(links_before.len(), 26, "{links_before:?}");
    assert_eq!(links_running(&programs), 26, "links not pinned");

    sensor.kill9();
    // The agent is gone; the kernel keeps enforcing.
    assert!(exchange(2), "the established connection stopped while the agent was down");
    assert!(!pods.tcp_roundtrip(9090), "denied traffic passed while the agent was down");
    assert_eq!(pinned_links(pins.path()), links_before, "pins changed while down");

    // Changed while down: 9090 allowed as well.
    pods.write_policy(
        "server.yaml",
        &SERVER_POLICY.replace(
            "{port: \"8080\", protocol: TCP}",
            "{port: \"8080\", protocol: TCP}, {port: \"9090\", protocol: TCP}",
        ),
    );
    let config = format!(
        "mode: enforce\npolicy_dir: {}\nendpoints_file: {}\n",
        pods.dir.join("policies").display(),
        pods.dir.join("endpoints.yaml").display()
    );
    let sensor = Sensor::start_with_pins(&pods.node, &config, &[], pins);
    assert!(sensor.log().contains("adopting pinned programs"), "{}", sensor.log());
    sensor_e2e::wait_until("9090 allowed after the restart", Duration::from_secs(10), || {
        pods.tcp_roundtrip(9090).then_some(())
    });
    assert!(exchange(3), "the established connection broke across the restart");
    let links_after = pinned_links(sensor.pins().path());
    assert_eq!(links_after, links_before, "links were re-attached instead of adopted");
    assert_eq!(links_running(&programs), 26, "duplicate links after the restart");
    // New flows are reported again (the adopted ring buffer is read).
    let port = pods.server_veth.pod_ip.to_string();
    sensor.wait_event("a flow to 9090 after the restart", |v| {
        v["flow"]["IP"]["destination"].as_str() == Some(port.as_str())
            && v["flow"]["l4"]["TCP"]["destination_port"].as_u64() == Some(9090)
    });
}

// ---- Datapath cases of issue 13 (r06, r08, r09, r10), each in enforce and detect mode ------

/// A connected client/server pair on `port`, with the server side accepted.
fn connected(pods: &Pods, port: u16) -> (TcpStream, TcpStream) {
    let addr = SocketAddr::from((pods.server_veth.pod_ip, port));
    let listener = pods.server.enter(|| TcpListener::bind(addr).expect("bind"));
    let client = pods
        .client
        .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .expect("connect");
    let (server, _) = listener.accept().expect("accept");
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    }
    (client, server)
}

/// r06: a half-closed TCP connection keeps its conntrack entry past the closing timeout:
/// the server answers after the client's FIN, later than the closing timeout, and the answer
/// arrives (the server's egress is default-deny, so it passes only as a reply).
fn half_closed_connection_keeps_working(mode: &str, subnet: u8) {
    let pods = setup(subnet);
    pods.write_policy("server.yaml", SERVER_POLICY);
    let config = format!(
        "mode: {mode}\npolicy_dir: {}\nendpoints_file: {}\n\
         conntrack: {{tcp_closing_timeout_seconds: 1, gc_interval_seconds: 1}}\n",
        pods.dir.join("policies").display(),
        pods.dir.join("endpoints.yaml").display()
    );
    let sensor = Sensor::start(&pods.node, &config, &[]);
    let (mut client, mut server) = connected(&pods, 8080);
    client.write_all(b"request").expect("write");
    client.shutdown(std::net::Shutdown::Write).expect("shutdown(SHUT_WR)");
    let mut got = Vec::new();
    server.read_to_end(&mut got).expect("read until the client's FIN");
    assert_eq!(got, b"request");
    // Three sweeps after the FIN: with the old rule (closing on the first FIN, 1 s) the entries
    // would be gone by now.
    let runs = sensor.metrics().get("sensor_conntrack_gc_runs_total", &[]).unwrap_or(0.0);
    sensor.wait_metric("sensor_conntrack_gc_runs_total", &[], |v| v >= Some(runs + 3.0));
    let entries = sensor.metrics().get("sensor_conntrack_entries", &[]);
    assert!(entries >= Some(2.0), "half-closed connection lost its entries: {entries:?}");
    server.write_all(b"answer").expect("answer");
    let mut buf = [0_u8; 6];
    client.read_exact(&mut buf).expect("the answer after the half-close");
    assert_eq!(&buf, b"answer");
    let denied = sensor.events().into_iter().find(|v| {
        v["flow"]["traffic_direction"] == "EGRESS"
            && v["flow"]["is_reply"] == false
            && v["flow"]["source"]["pod_name"] == "server"
    });
    assert!(denied.is_none(), "the answer was decided as a new flow: {denied:?}");
    // Both FINs: the entries go after the closing timeout.
    drop(server);
    drop(client);
    sensor.wait_metric("sensor_conntrack_entries", &[], |v| v == Some(0.0));
}

#[test]
fn r06_half_closed_tcp_keeps_its_entry_enforce() {
    if !privileged() {
        return;
    }
    half_closed_connection_keeps_working("enforce", 140);
}

#[test]
fn r06_half_closed_tcp_keeps_its_entry_detect() {
    if !privileged() {
        return;
    }
    half_closed_connection_keeps_working("detect", 142);
}

const ONLY_443: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: only-443, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]
";

/// An audit-mode policy of `kind` (`ingress` or `ingressDeny`) for TCP `port` from the client.
fn audit_policy(name: &str, kind: &str, port: u16) -> String {
    format!(
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: {name}
  namespace: shop
  annotations: {{policy.sensor.dev/audit: \"true\"}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  {kind}:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]
"
    )
}

/// Names in one of a record's `*_by` lists.
fn named(record: &serde_json::Value, list: &str) -> Vec<String> {
    record["flow"][list]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// r08: audit policies never weaken enforcement. An audit deny of 8080 and an audit allow of
/// 8080 leave the enforcing policy's default deny of 8080 in force; an audit deny of 443 only
/// turns the allowed connection into AUDIT; attribution names exactly the deciding policy.
fn audit_never_weakens(mode: &str, subnet: u8) {
    let pods = setup(subnet);
    pods.write_policy("enforcing.yaml", ONLY_443);
    pods.write_policy("audit.yaml", &audit_policy("trial-deny-8080", "ingressDeny", 8080));
    pods.write_policy("audit-allow.yaml", &audit_policy("trial-allow-8080", "ingress", 8080));
    pods.write_policy("audit-443.yaml", &audit_policy("trial-deny-443", "ingressDeny", 443));
    let sensor = pods.start(mode);
    let enforce = mode == "enforce";
    assert_eq!(pods.tcp_roundtrip(8080), !enforce, "{mode}: 8080 is denied by only-443");
    let verdict = if enforce { "DROPPED" } else { "AUDIT" };
    let r = sensor.wait_event("the 8080 verdict", |v| {
        flow_to(8080, verdict)(v) && v["flow"]["traffic_direction"] == "INGRESS"
    });
    for list in ["ingress_allowed_by", "egress_allowed_by", "ingress_denied_by"] {
        assert!(named(&r, list).is_empty(), "{list} must be empty (default deny): {r}");
    }
    if enforce {
        assert_eq!(r["flow"]["drop_reason_desc"], "POLICY_DENIED", "{r}");
    }
    // 443: allowed by only-443, and the audit deny makes it a would-be drop.
    assert!(pods.tcp_roundtrip(443), "{mode}: an audit policy dropped 443:\n{}", sensor.log());
    let r = sensor.wait_event("the 443 verdict", |v| {
        flow_to(443, "AUDIT")(v) && v["flow"]["traffic_direction"] == "INGRESS"
    });
    assert_eq!(named(&r, "ingress_denied_by"), ["trial-deny-443"], "{r}");
    assert!(named(&r, "ingress_allowed_by").is_empty(), "{r}");
    let m = sensor.metrics();
    let forwarded_8080 = sensor
        .events()
        .into_iter()
        .find(|v| flow_to(8080, "FORWARDED")(v) && v["flow"]["traffic_direction"] == "INGRESS");
    assert!(forwarded_8080.is_none(), "8080 forwarded under an audit allow: {forwarded_8080:?}");
    let drops = m.sum("hubble_drop_total", &[("reason", "POLICY_DENIED")]);
    assert_eq!(drops >= 1.0, enforce, "{}", m.text);
}

#[test]
fn r08_audit_policies_never_weaken_enforcement_enforce() {
    if !privileged() {
        return;
    }
    audit_never_weakens("enforce", 144);
}

#[test]
fn r08_audit_policies_never_weaken_enforcement_detect() {
    if !privileged() {
        return;
    }
    audit_never_weakens("detect", 146);
}

/// r09: one TCP connection counts one policy verdict, at the endpoint the policy selects
/// (the server's ingress), and none for the client no policy selects.
fn one_verdict_per_connection(mode: &str, subnet: u8) {
    let pods = setup(subnet);
    pods.write_policy(
        "server.yaml",
        &SERVER_POLICY.replace("  egress: [{}]   # default-deny egress: the server's replies pass only through conntrack\n", ""),
    );
    let config = format!(
        "mode: {mode}\npolicy_dir: {}\nendpoints_file: {}\nhubble_metrics: [policy]\n",
        pods.dir.join("policies").display(),
        pods.dir.join("endpoints.yaml").display()
    );
    let sensor = Sensor::start(&pods.node, &config, &[]);
    assert!(pods.tcp_roundtrip(8080), "allowed connection failed");
    // The records of both FINs come after every earlier record of the connection.
    let fins = |v: &serde_json::Value| {
        v["flow"]["l4"]["TCP"]["flags"]["FIN"] == true
            && v["flow"]["interface"]["name"] == pods.server_veth.host_if.as_str()
    };
    wait_until_count(&sensor, "a FIN record at the server", 1, &fins);
    let forwarded = [("direction", "ingress"), ("match", "l3-l4"), ("action", "forwarded")];
    sensor.wait_metric("hubble_policy_verdicts_total", &forwarded, |v| v == Some(1.0));
    let m = sensor.metrics();
    assert_eq!(m.sum("hubble_policy_verdicts_total", &[]), 1.0, "{}", m.text);
    assert_eq!(m.get("hubble_policy_verdicts_total", &[("direction", "egress")]), None);
}

fn wait_until_count(
    sensor: &Sensor,
    what: &str,
    n: usize,
    pred: &dyn Fn(&serde_json::Value) -> bool,
) {
    sensor_e2e::wait_until(what, Duration::from_secs(10), || {
        (sensor.events().iter().filter(|v| pred(v)).count() >= n).then_some(())
    });
}

#[test]
fn r09_policy_verdicts_count_one_per_connection_at_selected_endpoints_enforce() {
    if !privileged() {
        return;
    }
    one_verdict_per_connection("enforce", 148);
}

#[test]
fn r09_policy_verdicts_count_one_per_connection_at_selected_endpoints_detect() {
    if !privileged() {
        return;
    }
    one_verdict_per_connection("detect", 150);
}

/// r10: after a policy change that denies open connections, each is decided again on its
/// next packet in either direction: the client's data never reaches the server again, and a
/// server that sends first neither gets through nor opens a path for the client's packets.
fn conntrack_follows_policy(mode: &str, subnet: u8) {
    let pods = setup(subnet);
    let before = SERVER_POLICY.replace(
        "  egress: [{}]   # default-deny egress: the server's replies pass only through conntrack\n",
        "",
    );
    pods.write_policy("server.yaml", &before);
    let sensor = pods.start(mode);
    let enforce = mode == "enforce";
    let (mut client_a, mut server_a) = connected(&pods, 8080);
    let (mut client_b, mut server_b) = connected(&pods, 8080);
    let mut buf = [0_u8; 4];
    for (c, s) in [(&mut client_a, &mut server_a), (&mut client_b, &mut server_b)] {
        c.write_all(b"one!").expect("write");
        s.read_exact(&mut buf).expect("data before the change");
    }
    let revision = sensor.metrics().get("sensor_policy_revision", &[]).expect("revision");
    pods.write_policy("server.yaml", &before.replace("\"8080\"", "\"9000\""));
    sensor.wait_metric("sensor_policy_revision", &[], |v| v > Some(revision));
    for s in [&server_a, &server_b] {
        s.set_read_timeout(Some(Duration::from_millis(1500))).expect("timeout");
    }
    for c in [&client_a, &client_b] {
        c.set_read_timeout(Some(Duration::from_millis(1500))).expect("timeout");
    }
    // A: the client sends first, then the server sends (which opened a path before).
    client_a.write_all(b"two!").expect("write");
    server_a.write_all(b"back").expect("server write");
    // B: the server sends first, then the client.
    server_b.write_all(b"back").expect("server write");
    client_b.write_all(b"two!").expect("write");
    for (what, c, s) in [("A", &mut client_a, &mut server_a), ("B", &mut client_b, &mut server_b)] {
        let to_server = s.read_exact(&mut buf).is_ok();
        let to_client = c.read_exact(&mut buf).is_ok();
        assert_eq!(to_server, !enforce, "{mode} {what}: client data after the change");
        assert_eq!(to_client, !enforce, "{mode} {what}: server data after the change");
    }
    let verdict = if enforce { "DROPPED" } else { "AUDIT" };
    let r = sensor.wait_event("the connection decided again", |v| {
        v["flow"]["verdict"] == verdict
            && v["flow"]["traffic_direction"] == "INGRESS"
            && (v["flow"]["l4"]["TCP"]["destination_port"] == 8080
                || v["flow"]["l4"]["TCP"]["source_port"] == 8080)
    });
    assert_eq!(r["flow"]["ingress_allowed_by"], serde_json::Value::Null, "{r}");
    // No server packet was recorded as a new egress connection.
    let new_egress = sensor.events().into_iter().find(|v| {
        v["flow"]["traffic_direction"] == "EGRESS"
            && v["flow"]["is_reply"] == false
            && v["flow"]["source"]["pod_name"] == "server"
    });
    assert!(new_egress.is_none(), "server data became a new egress flow: {new_egress:?}");
}

#[test]
fn r10_conntrack_follows_policy_changes_in_both_directions_enforce() {
    if !privileged() {
        return;
    }
    conntrack_follows_policy("enforce", 152);
}

#[test]
fn r10_conntrack_follows_policy_changes_in_both_directions_detect() {
    if !privileged() {
        return;
    }
    conntrack_follows_policy("detect", 154);
}

// ---- issue 13: the policy language as Kubernetes and Cilium read it ----------------------

/// Gives both pods and their node-side interfaces IPv6 addresses (fd00:77:<subnet>::/64
/// for the client, fd00:77:<subnet+1>::/64 for the server) with routes through the node.
fn enable_ipv6(pods: &Pods, subnet: u8) -> (std::net::IpAddr, std::net::IpAddr) {
    let v6 = |ns: &Netns, dev: &str, addr: &str| {
        ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=0",
            &format!("net.ipv6.conf.{dev}.disable_ipv6=0"),
        ]);
        sensor_e2e::run("ip", &["-n", &ns.name, "-6", "addr", "add", addr, "dev", dev, "nodad"]);
    };
    let (c, s) = (subnet, subnet + 1);
    v6(&pods.node, &pods.client_veth.host_if, &format!("fd00:77:{c}::1/64"));
    v6(&pods.node, &pods.server_veth.host_if, &format!("fd00:77:{s}::1/64"));
    v6(&pods.client, "eth0", &format!("fd00:77:{c}::2/64"));
    v6(&pods.server, "eth0", &format!("fd00:77:{s}::2/64"));
    pods.node.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    for (ns, sub) in [(&pods.client, c), (&pods.server, s)] {
        sensor_e2e::run(
            "ip",
            &[
                "-n",
                &ns.name,
                "-6",
                "route",
                "add",
                "fd00:77::/32",
                "via",
                &format!("fd00:77:{sub}::1"),
            ],
        );
    }
    (format!("fd00:77:{c}::2").parse().expect("v6"), format!("fd00:77:{s}::2").parse().expect("v6"))
}

fn write_endpoints(pods: &Pods, yaml: &str) {
    let tmp = pods.dir.join(".endpoints.tmp");
    fs::write(&tmp, yaml).expect("endpoints");
    fs::rename(&tmp, pods.dir.join("endpoints.yaml")).expect("rename endpoints");
}

/// r01, enforce and detect: `0.0.0.0/0` never matches IPv6 and `::/0` never IPv4, and the
/// record names the family's world, not the other family's prefix.
#[test]
fn r01_cidr_rules_never_cross_address_families() {
    if !privileged() {
        return;
    }
    for mode in ["enforce", "detect"] {
        let pods = setup(110);
        let (client6, server6) = enable_ipv6(&pods, 110);
        // The server is not an endpoint: it is the world.
        write_endpoints(
            &pods,
            &format!(
                "endpoints:\n- {{namespace: shop, name: cli, labels: {{app: client}}, ips: [{}, \"{client6}\"], interface: {}}}\n",
                pods.client_veth.pod_ip, pods.client_veth.host_if
            ),
        );
        let policy = |cidr: &str| {
            format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: egress-world, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n  - toCIDR: [\"{cidr}\"]\n    toPorts: [{{ports: [{{port: \"8443\", protocol: TCP}}]}}]\n"
            )
        };
        pods.write_policy("p.yaml", &policy("0.0.0.0/0"));
        let sensor = pods.start(mode);
        let v4 = SocketAddr::from((pods.server_veth.pod_ip, 8443));
        let v6 = SocketAddr::new(server6, 8443);
        assert!(tcp_roundtrip(&pods.client, &pods.server, v4), "{mode}: IPv4 world denied");
        let six = tcp_roundtrip(&pods.client, &pods.server, v6);
        assert_eq!(six, mode == "detect", "{mode}: 0.0.0.0/0 decided an IPv6 flow");
        let verdict = if mode == "enforce" { "DROPPED" } else { "AUDIT" };
        let record = sensor.wait_event("IPv6 flow outside 0.0.0.0/0", |v| {
            v["flow"]["verdict"] == verdict && v["flow"]["IP"]["ipVersion"] == "IPv6"
        });
        let labels = record["flow"]["destination"]["labels"].to_string();
        assert!(labels.contains("reserved:world-ipv6") && !labels.contains("0.0.0.0"), "{record}");
        let forwarded = sensor.wait_event("IPv4 flow to the world", |v| {
            flow_to(8443, "FORWARDED")(v) && v["flow"]["IP"]["ipVersion"] == "IPv4"
        });
        let labels = forwarded["flow"]["destination"]["labels"].to_string();
        assert!(labels.contains("reserved:world-ipv4") && !labels.contains("::/0"), "{forwarded}");

        let revision = sensor.metrics().get("sensor_policy_revision", &[]).expect("revision");
        pods.write_policy("p.yaml", &policy("::/0"));
        sensor.wait_metric("sensor_policy_revision", &[], |v| v > Some(revision));
        assert!(tcp_roundtrip(&pods.client, &pods.server, v6), "{mode}: IPv6 world denied");
        let four = tcp_roundtrip(&pods.client, &pods.server, v4);
        assert_eq!(four, mode == "detect", "{mode}: ::/0 decided an IPv4 flow");
        let record = sensor.wait_event("IPv4 flow outside ::/0", |v| {
            v["flow"]["verdict"] == verdict && v["flow"]["IP"]["ipVersion"] == "IPv4"
        });
        let labels = record["flow"]["destination"]["labels"].to_string();
        assert!(labels.contains("reserved:world-ipv4") && !labels.contains("::/0"), "{record}");
    }
}

/// r02, enforce and detect: a port given by name allows that container port of the selected
/// pod and nothing else; re-resolved when the pod's ports change.
#[test]
fn r02_named_ports_resolve_against_the_selected_pods_container_ports() {
    if !privileged() {
        return;
    }
    for mode in ["enforce", "detect"] {
        let pods = setup(114);
        let endpoints = |server_ports: &str| {
            format!(
                "endpoints:\n- {{namespace: shop, name: srv, labels: {{app: server}}, ips: [{}], interface: {}, ports: [{server_ports}]}}\n- {{namespace: shop, name: cli, labels: {{app: client}}, ips: [{}], interface: {}}}\n",
                pods.server_veth.pod_ip,
                pods.server_veth.host_if,
                pods.client_veth.pod_ip,
                pods.client_veth.host_if
            )
        };
        write_endpoints(&pods, &endpoints("{name: http, containerPort: 8080, protocol: TCP}"));
        pods.write_policy(
            "named.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: named, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{protocol: TCP, port: http}]\n",
        );
        let sensor = pods.start(mode);
        assert!(pods.tcp_roundtrip(8080), "{mode}: the named port is denied:\n{}", sensor.log());
        let enforce = mode == "enforce";
        assert_eq!(pods.tcp_roundtrip(9999), !enforce, "{mode}: TCP to another port");
        assert_eq!(pods.udp_delivered(9999, 3), if enforce { 0 } else { 3 }, "{mode}: UDP");
        let verdict = if enforce { "DROPPED" } else { "AUDIT" };
        sensor.wait_event("TCP 9999 verdict", |v| {
            flow_to(9999, verdict)(v) && v["flow"]["l4"]["TCP"].is_object()
        });
        sensor.wait_event("UDP 9999 verdict", |v| {
            flow_to(9999, verdict)(v) && v["flow"]["l4"]["UDP"].is_object()
        });
        // The pod's port named http moves: the policy follows it.
        let revision = sensor.metrics().get("sensor_policy_revision", &[]).expect("revision");
        write_endpoints(&pods, &endpoints("{name: http, containerPort: 9999}"));
        sensor.wait_metric("sensor_policy_revision", &[], |v| v > Some(revision));
        assert!(pods.tcp_roundtrip(9999), "{mode}: the moved named port is denied");
        assert_eq!(
            pods.tcp_roundtrip(8080),
            !enforce,
            "{mode}: the old number is no longer the named port"
        );
        // No port of that name: nothing is allowed, never "all ports".
        let revision = sensor.metrics().get("sensor_policy_revision", &[]).expect("revision");
        write_endpoints(&pods, &endpoints("{name: metrics, containerPort: 9090}"));
        sensor.wait_metric("sensor_policy_revision", &[], |v| v > Some(revision));
        for port in [8080, 9090, 9999] {
            assert_eq!(pods.tcp_roundtrip(port), !enforce, "{mode}: port {port}");
        }
    }
}

const R05_POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: prefixed, namespace: shop}
spec:
  endpointSelector: {matchLabels: {\"k8s:app\": server}}
  ingress:
  - fromEndpoints: [{matchLabels: {\"k8s:app\": client}}]
    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]
";

/// r05, enforce and detect: selectors written with Cilium's source prefixes select the pods
/// they name, in endpointSelector and in fromEndpoints.
#[test]
fn r05_source_prefixed_selectors_select_their_pods() {
    if !privileged() {
        return;
    }
    for mode in ["enforce", "detect"] {
        let pods = setup(118);
        pods.write_policy("prefixed.yaml", R05_POLICY);
        let sensor = pods.start(mode);
        assert!(pods.tcp_roundtrip(8080), "{mode}: fromEndpoints k8s:app dropped allowed traffic");
        let enforce = mode == "enforce";
        assert_eq!(pods.tcp_roundtrip(9090), !enforce, "{mode}: the server is not enforced");
        let verdict = if enforce { "DROPPED" } else { "AUDIT" };
        let record = sensor.wait_event("9090 verdict", flow_to(9090, verdict));
        assert_eq!(record["flow"]["destination"]["pod_name"], "server", "{record}");
    }
    // `policy check` shows the server as selected and default-deny.
    let dir = std::env::temp_dir().join(unique("se2e-r05-"));
    fs::create_dir_all(&dir).expect("dir");
    fs::write(dir.join("p.yaml"), R05_POLICY).expect("policy");
    fs::write(dir.join("e.yaml"), "endpoints:\n- {namespace: shop, name: srv, labels: {app: server}, ips: [10.99.2.2], interface: vs}\n- {namespace: shop, name: cli, labels: {app: client}, ips: [10.99.1.2], interface: vc}\n").expect("endpoints");
    let out = Command::new(sensor_bin())
        .args(["policy", "check"])
        .arg(dir.join("p.yaml"))
        .arg("--endpoints-file")
        .arg(dir.join("e.yaml"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{stdout}");
    let server = stdout.split("\nendpoint ").find(|s| s.starts_with("shop/srv")).expect("srv");
    assert!(server.contains("ingress default-deny"), "{stdout}");
    assert!(server.contains("k8s:app=client") && server.contains("TCP/8080"), "{stdout}");
    // A typo in a source prefix is an error naming the line, not a silent select-nothing.
    let dir = std::env::temp_dir().join(unique("se2e-r05b-"));
    fs::create_dir_all(&dir).expect("dir");
    fs::write(dir.join("p.yaml"), R05_POLICY.replace("\"k8s:app\": client", "\"k8:app\": client"))
        .expect("policy");
    let out = Command::new(sensor_bin())
        .args(["policy", "check"])
        .arg(dir.join("p.yaml"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = fs::remove_dir_all(&dir);
    assert!(
        !out.status.success() && stderr.contains("p.yaml:7") && stderr.contains("k8"),
        "{stderr}"
    );
}

/// r13: `k8s:io.kubernetes.pod.namespace` is the peer's namespace, `k8s:app` its label.
#[test]
fn r13_namespace_label_with_source_selects_pods_of_another_namespace() {
    if !privileged() {
        return;
    }
    let pods = setup(122);
    write_endpoints(
        &pods,
        &format!(
            "endpoints:\n- {{namespace: shop, name: srv, labels: {{app: server}}, ips: [{}], interface: {}}}\n- {{namespace: tools, name: probe, labels: {{app: probe}}, ips: [{}], interface: {}}}\n",
            pods.server_veth.pod_ip,
            pods.server_veth.host_if,
            pods.client_veth.pod_ip,
            pods.client_veth.host_if
        ),
    );
    pods.write_policy(
        "p.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: from-other-namespace, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {\"k8s:io.kubernetes.pod.namespace\": tools, \"k8s:app\": probe}\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n",
    );
    let sensor = pods.start("enforce");
    assert!(pods.tcp_roundtrip(8080), "tools/probe denied:\n{}", sensor.log());
    assert!(!pods.tcp_roundtrip(8081), "8081 allowed");
    let record = sensor.wait_event("allowed", |v| {
        flow_to(8080, "FORWARDED")(v) && v["flow"]["traffic_direction"] == "INGRESS"
    });
    assert_eq!(record["flow"]["source"]["namespace"], "tools", "{record}");
}

/// r07: a NetworkPolicy without `podSelector` selects every pod of its namespace.
#[test]
fn r07_network_policy_without_pod_selector_applies_to_the_namespace() {
    if !privileged() {
        return;
    }
    let pods = setup(126);
    pods.write_policy(
        "no-selector.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: no-selector, namespace: shop}\nspec:\n  policyTypes: [Ingress]\n  ingress:\n  - ports: [{protocol: TCP, port: 8080}]\n",
    );
    let sensor = pods.start("enforce");
    assert!(pods.tcp_roundtrip(8080), "8080 denied:\n{}", sensor.log());
    assert!(!pods.tcp_roundtrip(9090), "the server is not selected");
    // The client is selected too: the server cannot reach its 9090.
    let to_client = SocketAddr::from((pods.client_veth.pod_ip, 9090));
    assert!(!tcp_roundtrip(&pods.server, &pods.client, to_client), "the client is not selected");
}

/// r11: start-up is a reload: an unsupported kind (a CCNP with nodeSelector) and a file that
/// does not parse are reported with file and line and skipped; the rest is enforced.
/// `policy check` still fails on them.
#[test]
fn r11_startup_skips_unsupported_and_broken_files_and_enforces_the_rest() {
    if !privileged() {
        return;
    }
    let pods = setup(130);
    pods.write_policy(
        "node-ssh.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: node-ssh-only}\nspec:\n  nodeSelector: {matchLabels: {}}\n  ingress:\n  - toPorts: [{ports: [{port: \"22\", protocol: TCP}]}]\n",
    );
    pods.write_policy(
        "web-deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-deny, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress: []\n",
    );
    pods.write_policy("broken.yaml", "apiVersion: cilium.io/v2\nkind: [\n");
    let sensor = pods.start("enforce");
    assert!(!pods.tcp_roundtrip(8080), "web-deny is not enforced");
    sensor.wait_event("web-deny drop", flow_to(8080, "DROPPED"));
    assert_eq!(sensor.metrics().get("sensor_policy_rejected_files", &[]), Some(2.0));
    let log = sensor.log();
    assert!(log.contains("node-ssh.yaml:5") && log.contains("not supported"), "{log}");
    assert!(log.contains("broken.yaml:"), "{log}");
    // A file fixed later is picked up; the broken one stays reported.
    pods.write_policy(
        "node-ssh.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-8080, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress: [{ports: [{port: 8080}]}]\n",
    );
    sensor.wait_metric("sensor_policy_rejected_files", &[], |v| v == Some(1.0));
    sensor_e2e::wait_until("8080 allowed", Duration::from_secs(10), || {
        pods.tcp_roundtrip(8080).then_some(())
    });
    let out = Command::new(sensor_bin())
        .args(["policy", "check"])
        .arg(pods.dir.join("policies"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("broken.yaml"), "{stderr}");
}

/// r12: a port that is neither 1-65535 nor an IANA service name is rejected like the API
/// server does, naming the offending line.
#[test]
fn r12_invalid_ports_are_rejected_with_their_line() {
    let dir = std::env::temp_dir().join(unique("se2e-r12-"));
    fs::create_dir_all(&dir).expect("dir");
    fs::write(
        dir.join("policy.yaml"),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: broken-port\n  namespace: shop\nspec:\n  endpointSelector:\n    matchLabels:\n      app: web\n  ingress:\n  - toPorts:\n    - ports:\n      - port: \"70000\"\n        protocol: TCP\n",
    )
    .expect("policy");
    let out = Command::new(sensor_bin())
        .args(["policy", "check"])
        .arg(dir.join("policy.yaml"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("policy.yaml:13") && stderr.contains("70000"), "{stderr}");
}
