//! Bypass suite: for a denied (peer, port) pair, the client pod sends hand-made frames with an
//! `AF_PACKET` socket: a TCP SYN or a UDP datagram split into IPv4 and IPv6 fragments (2 and
//! 3 fragments, a tiny first fragment, overlapping fragments, a second first fragment, a later
//! fragment first or alone), IPv6 fragment header variants (atomic, followed by more extension
//! headers, doubled), IPv6 chains of 7 extension headers or an unknown one, and truncated L4
//! headers. The node routes them to the server pod, which a policy selects.
//!
//! In enforce mode every such packet is dropped at the server's interface, counted under its
//! reason (`hubble_drop_total`, `sensor_net_unclassified_packets_total`) and nothing reaches
//! the server's sockets or TCP stack. In detect mode the same frames pass and are recorded as
//! AUDIT with the reason enforce mode would have dropped them for; the ones the kernel accepts
//! reach the server, which proves the frames are real bypass attempts, not malformed noise.

use std::{
    fs,
    net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use sensor_e2e::{
    Netns, Sensor, Veth,
    packet::{
        FrameSocket,
        build::{
            NEXT_DEST_OPTS, NEXT_FRAGMENT, PROTO_TCP, PROTO_UDP, dest_opts, ethernet,
            fragment_header, ipv4, ipv6, tcp, tcp_syn, udp,
        },
    },
    privileged, unique, wait_until,
};

/// The port no rule allows from the client, for TCP and UDP.
const DENIED: u16 = 9090;
/// UDP ports the client may send to: the marker, and the target of an allowed-port variant.
const MARKER: u16 = 7000;
const ALLOWED: u16 = 7001;
const SPORT: u16 = 40_000;

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: only-client-8080, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: \"8080\", protocol: TCP}, {port: \"7000\", endPort: 7001, protocol: UDP}]}]
";

struct Topology {
    node: Netns,
    client: Netns,
    server: Netns,
    client_veth: Veth,
    server_veth: Veth,
    client6: Ipv6Addr,
    server6: Ipv6Addr,
    dir: PathBuf,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Enables IPv6 on `dev` in `ns` and gives it `addr`.
fn add_ipv6(ns: &Netns, dev: &str, addr: &str) {
    ns.exec(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=0",
        &format!("net.ipv6.conf.{dev}.disable_ipv6=0"),
    ]);
    sensor_e2e::run("ip", &["-n", &ns.name, "-6", "addr", "add", addr, "dev", dev, "nodad"]);
}

/// Client and server pods behind a routing node, IPv4 and IPv6, both in the endpoints file;
/// the policy selects the server.
fn topology(subnet: u8) -> Topology {
    let node = Netns::new("node");
    let client = Netns::new("cli");
    let server = Netns::new("srv");
    let (ci, si) = (unique("vethc"), unique("veths"));
    let client_veth = Veth::new(&node, &client, &ci, subnet);
    let server_veth = Veth::new(&node, &server, &si, subnet + 1);
    client_veth.route_via_node(&node, &client);
    server_veth.route_via_node(&node, &server);
    let (c6, s6) = (format!("fd00:77:{subnet}::2"), format!("fd00:77:{}::2", subnet + 1));
    add_ipv6(&node, &ci, &format!("fd00:77:{subnet}::1/64"));
    add_ipv6(&node, &si, &format!("fd00:77:{}::1/64", subnet + 1));
    add_ipv6(&client, "eth0", &format!("{c6}/64"));
    add_ipv6(&server, "eth0", &format!("{s6}/64"));
    node.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    for (ns, via) in
        [(&client, format!("fd00:77:{subnet}::1")), (&server, format!("fd00:77:{}::1", subnet + 1))]
    {
        sensor_e2e::run("ip", &["-n", &ns.name, "-6", "route", "add", "fd00:77::/32", "via", &via]);
    }
    let dir = std::env::temp_dir().join(unique("se2e-byp-"));
    fs::create_dir_all(dir.join("policies")).expect("policy dir");
    fs::write(
        dir.join("endpoints.yaml"),
        format!(
            "endpoints:\n\
             - {{namespace: shop, name: client, labels: {{app: client}}, ips: [{}, \"{c6}\"], interface: {ci}}}\n\
             - {{namespace: shop, name: server, labels: {{app: server}}, ips: [{}, \"{s6}\"], interface: {si}}}\n",
            client_veth.pod_ip, server_veth.pod_ip
        ),
    )
    .expect("endpoints file");
    fs::write(dir.join("policies").join("policy.yaml"), POLICY).expect("policy");
    Topology {
        node,
        client,
        server,
        client_veth,
        server_veth,
        client6: c6.parse().expect("v6"),
        server6: s6.parse().expect("v6"),
        dir,
    }
}

impl Topology {
    fn start(&self, mode: &str) -> Sensor {
        let config = format!(
            "mode: {mode}\npolicy_dir: {}\nendpoints_file: {}\n",
            self.dir.join("policies").display(),
            self.dir.join("endpoints.yaml").display()
        );
        let sensor = Sensor::start(&self.node, &config, &[]);
        sensor.wait_metric("sensor_policy_revision", &[], |v| v >= Some(1.0));
        sensor
    }

    /// (client, server) addresses of one family.
    fn addrs(&self, v6: bool) -> (IpAddr, IpAddr) {
        if v6 {
            (IpAddr::V6(self.client6), IpAddr::V6(self.server6))
        } else {
            (IpAddr::V4(self.client_veth.pod_ip), IpAddr::V4(self.server_veth.pod_ip))
        }
    }

    /// The server's TCP `InSegs`: every TCP segment (IPv4 or IPv6) its stack received.
    fn server_tcp_segments(&self) -> u64 {
        let snmp = self.server.exec(&["cat", "/proc/net/snmp"]);
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().expect("Tcp header"), tcp.next().expect("Tcp values"));
        let at = names.split_whitespace().position(|n| n == "InSegs").expect("InSegs");
        values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).expect("InSegs value")
    }

    /// A UDP socket of the server on `port` of one family, non-blocking.
    fn server_udp(&self, v6: bool, port: u16) -> UdpSocket {
        let (_, server) = self.addrs(v6);
        let socket =
            self.server.enter(|| UdpSocket::bind(SocketAddr::new(server, port)).expect("bind"));
        socket.set_nonblocking(true).expect("nonblocking");
        socket
    }

    /// A normal datagram client → server:MARKER (IPv4) and waits for it: once it arrived,
    /// frames the client sent before it have crossed the node too.
    fn marker(&self, receiver: &UdpSocket) {
        let (client, server) = self.addrs(false);
        let sender = self.client.enter(|| UdpSocket::bind((client, 0)).expect("bind sender"));
        let mut buf = [0_u8; 64];
        wait_until("the marker datagram", Duration::from_secs(10), || {
            sender.send_to(b"marker", (server, MARKER)).expect("send marker");
            std::thread::sleep(Duration::from_millis(20));
            receiver.recv_from(&mut buf).ok().map(drop)
        });
        while receiver.recv_from(&mut buf).is_ok() {}
    }
}

/// What a variant's frames reach when nothing drops them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reaches {
    /// The server's TCP stack (a SYN, after reassembly).
    Tcp,
    /// The server's UDP socket on this port.
    Udp(u16),
    /// Nothing: the kernel itself discards it (overlaps, truncated headers, ...).
    Nothing,
}

/// One frame and what the sensor must do with it at the server's interface: the Hubble drop
/// reason (None: it passes) and the unclassified-packet reason it is counted under, if any.
struct Frame {
    bytes: Vec<u8>,
    drop: Option<&'static str>,
    unclassified: Option<&'static str>,
}

struct Variant {
    name: &'static str,
    v6: bool,
    frames: Vec<Frame>,
    reaches: Reaches,
}

const POLICY_DENIED: &str = "POLICY_DENIED";
const INVALID: &str = "INVALID_PACKET_DROPPED";
const TRUNCATED: &str = "CT_TRUNCATED_OR_INVALID_HEADER";
const NOT_FOUND: &str = "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND";
const EXTHDR: &str = "INVALID_IPV6_EXTENSION_HEADER";

fn frame(bytes: Vec<u8>, drop: Option<&'static str>, unclassified: Option<&'static str>) -> Frame {
    Frame { bytes, drop, unclassified }
}

/// The variants, as IP packets from the client to the server.
fn variants(t: &Topology) -> Vec<Variant> {
    let (c4, s4) = t.addrs(false);
    let (c6, s6) = t.addrs(true);
    let syn4 = tcp_syn(c4, s4, (SPORT, DENIED));
    let syn4_allowed = tcp_syn(c4, s4, (SPORT + 1, 8080));
    let udp4 = udp(c4, s4, (SPORT, DENIED), &[0x55; 64]);
    let syn6 = tcp_syn(c6, s6, (SPORT, DENIED));
    let udp6 = udp(c6, s6, (SPORT, DENIED), &[0x66; 64]);
    // IPv4 fragment of `seg[range]` at its offset.
    let f4 = |id: u16, protocol: u8, seg: &[u8], from: usize, to: usize| {
        ipv4(c4, s4, protocol, id, (from, to < seg.len()), &seg[from..to])
    };
    // IPv6 fragment of `part[range]` (the fragmentable part) behind a fragment header.
    let f6 = |id: u32, next: u8, part: &[u8], from: usize, to: usize| {
        let mut rest = fragment_header(next, from, to < part.len(), id).to_vec();
        rest.extend_from_slice(&part[from..to]);
        ipv6(c6, s6, NEXT_FRAGMENT, &rest)
    };
    let chain = |n: usize, last: u8, payload: &[u8]| {
        let mut rest = Vec::new();
        for i in 0..n {
            rest.extend_from_slice(&dest_opts(if i + 1 == n { last } else { NEXT_DEST_OPTS }));
        }
        rest.extend_from_slice(payload);
        ipv6(c6, s6, NEXT_DEST_OPTS, &rest)
    };
    let seg_len = syn4.len(); // 40 bytes: 20 header + 20 options
    assert_eq!(seg_len, 40);
    let mut dest_then_udp = dest_opts(PROTO_UDP).to_vec();
    dest_then_udp.extend_from_slice(&udp6);
    let overlap = {
        // A first fragment to an allowed port passes; then a second first fragment and a
        // fragment over the first one's TCP header try to turn it into a SYN to the denied
        // port once reassembled.
        let mut second_first = syn4.clone();
        second_first.truncate(24);
        vec![
            frame(f4(0x4004, PROTO_TCP, &syn4_allowed, 0, 24), None, None),
            frame(
                ipv4(c4, s4, PROTO_TCP, 0x4004, (0, true), &second_first),
                Some(INVALID),
                Some("fragment_overlap"),
            ),
            frame(f4(0x4004, PROTO_TCP, &syn4, 8, 40), Some(INVALID), Some("fragment_overlap")),
        ]
    };
    vec![
        Variant {
            name: "IPv4 SYN in 2 fragments",
            v6: false,
            frames: vec![
                frame(f4(0x4001, PROTO_TCP, &syn4, 0, 24), Some(POLICY_DENIED), None),
                frame(f4(0x4001, PROTO_TCP, &syn4, 24, 40), Some(POLICY_DENIED), None),
            ],
            reaches: Reaches::Tcp,
        },
        Variant {
            name: "IPv4 SYN in 3 fragments",
            v6: false,
            frames: vec![
                frame(f4(0x4002, PROTO_TCP, &syn4, 0, 24), Some(POLICY_DENIED), None),
                frame(f4(0x4002, PROTO_TCP, &syn4, 24, 32), Some(POLICY_DENIED), None),
                frame(f4(0x4002, PROTO_TCP, &syn4, 32, 40), Some(POLICY_DENIED), None),
            ],
            reaches: Reaches::Tcp,
        },
        Variant {
            name: "IPv4 SYN with a tiny first fragment (8 bytes of TCP header)",
            v6: false,
            frames: vec![
                frame(f4(0x4003, PROTO_TCP, &syn4, 0, 8), Some(TRUNCATED), Some("fragment_tiny")),
                frame(
                    f4(0x4003, PROTO_TCP, &syn4, 8, 40),
                    Some(NOT_FOUND),
                    Some("fragment_not_found"),
                ),
            ],
            reaches: Reaches::Tcp,
        },
        Variant {
            name: "IPv4 overlapping fragments and a second first fragment",
            v6: false,
            frames: overlap,
            reaches: Reaches::Nothing,
        },
        Variant {
            name: "IPv4 SYN fragments out of order (later first)",
            v6: false,
            frames: vec![
                frame(
                    f4(0x4005, PROTO_TCP, &syn4, 24, 40),
                    Some(NOT_FOUND),
                    Some("fragment_not_found"),
                ),
                frame(f4(0x4005, PROTO_TCP, &syn4, 0, 24), Some(POLICY_DENIED), None),
            ],
            reaches: Reaches::Tcp,
        },
        Variant {
            name: "IPv4 UDP in 2 fragments",
            v6: false,
            frames: vec![
                frame(f4(0x4006, PROTO_UDP, &udp4, 0, 40), Some(POLICY_DENIED), None),
                frame(f4(0x4006, PROTO_UDP, &udp4, 40, 72), Some(POLICY_DENIED), None),
            ],
            reaches: Reaches::Udp(DENIED),
        },
        Variant {
            name: "IPv4 later fragment alone",
            v6: false,
            frames: vec![frame(
                f4(0x4007, PROTO_UDP, &udp4, 40, 72),
                Some(NOT_FOUND),
                Some("fragment_not_found"),
            )],
            reaches: Reaches::Nothing,
        },
        Variant {
            name: "IPv4 truncated TCP and UDP headers",
            v6: false,
            frames: vec![
                frame(
                    ipv4(c4, s4, PROTO_TCP, 0x4008, (0, false), &syn4[..12]),
                    Some(TRUNCATED),
                    Some("truncated_l4"),
                ),
                frame(
                    ipv4(c4, s4, PROTO_UDP, 0x4009, (0, false), &udp4[..6]),
                    Some(TRUNCATED),
                    Some("truncated_l4"),
                ),
            ],
            reaches: Reaches::Nothing,
        },
        Variant {
            name: "IPv6 UDP in 2 fragments",
            v6: true,
            frames: vec![
                frame(f6(0x6001, PROTO_UDP, &udp6, 0, 40), Some(POLICY_DENIED), None),
                frame(f6(0x6001, PROTO_UDP, &udp6, 40, 72), Some(POLICY_DENIED), None),
            ],
            reaches: Reaches::Udp(DENIED),
        },
        Variant {
            name: "IPv6 SYN in 3 fragments with a tiny first fragment",
            v6: true,
            frames: vec![
                frame(f6(0x6002, PROTO_TCP, &syn6, 0, 8), Some(TRUNCATED), Some("fragment_tiny")),
                frame(
                    f6(0x6002, PROTO_TCP, &syn6, 8, 24),
                    Some(NOT_FOUND),
                    Some("fragment_not_found"),
                ),
                frame(
                    f6(0x6002, PROTO_TCP, &syn6, 24, 40),
                    Some(NOT_FOUND),
                    Some("fragment_not_found"),
                ),
            ],
            // Linux discards an IPv6 first fragment without the whole upper-layer header
            // (RFC 8200 section 4.5); IPv4 reassembles it.
            reaches: Reaches::Nothing,
        },
        Variant {
            name: "IPv6 fragments with a destination options header in the fragmentable part",
            v6: true,
            frames: vec![
                frame(f6(0x6003, NEXT_DEST_OPTS, &dest_then_udp, 0, 40), Some(POLICY_DENIED), None),
                frame(
                    f6(0x6003, NEXT_DEST_OPTS, &dest_then_udp, 40, 80),
                    Some(POLICY_DENIED),
                    None,
                ),
            ],
            reaches: Reaches::Udp(DENIED),
        },
        Variant {
            name: "IPv6 overlapping fragments",
            v6: true,
            frames: vec![
                frame(f6(0x6004, PROTO_UDP, &udp6, 0, 40), Some(POLICY_DENIED), None),
                frame(
                    f6(0x6004, PROTO_UDP, &udp6, 16, 72),
                    Some(INVALID),
                    Some("fragment_overlap"),
                ),
            ],
            reaches: Reaches::Nothing,
        },
        Variant {
            name: "IPv6 atomic fragment (offset 0, no more fragments)",
            v6: true,
            frames: vec![frame(f6(0x6005, PROTO_UDP, &udp6, 0, 72), Some(POLICY_DENIED), None)],
            reaches: Reaches::Udp(DENIED),
        },
        Variant {
            name: "IPv6 two fragment headers",
            v6: true,
            frames: vec![frame(
                {
                    let mut part = fragment_header(PROTO_UDP, 0, true, 0x6007).to_vec();
                    part.extend_from_slice(&udp6);
                    f6(0x6006, NEXT_FRAGMENT, &part, 0, 40)
                },
                Some(EXTHDR),
                Some("ipv6_ext_invalid"),
            )],
            reaches: Reaches::Nothing,
        },
        Variant {
            name: "IPv6 UDP behind 7 destination options headers",
            v6: true,
            frames: vec![frame(chain(7, PROTO_UDP, &udp6), Some(EXTHDR), Some("ipv6_ext_limit"))],
            reaches: Reaches::Udp(DENIED),
        },
        Variant {
            name: "IPv6 UDP to an allowed port behind 7 destination options headers",
            v6: true,
            frames: vec![frame(
                chain(7, PROTO_UDP, &udp(c6, s6, (SPORT, ALLOWED), &[0x77; 16])),
                Some(EXTHDR),
                Some("ipv6_ext_limit"),
            )],
            reaches: Reaches::Udp(ALLOWED),
        },
        Variant {
            name: "IPv6 fragment header behind 6 destination options headers",
            v6: true,
            frames: vec![frame(
                {
                    let mut inner = fragment_header(PROTO_UDP, 0, true, 0x6008).to_vec();
                    inner.extend_from_slice(&udp6[..40]);
                    chain(6, NEXT_FRAGMENT, &inner)
                },
                Some(EXTHDR),
                Some("ipv6_ext_limit"),
            )],
            reaches: Reaches::Nothing,
        },
        Variant {
            name: "IPv6 unknown extension header (experimental 253)",
            v6: true,
            frames: vec![frame(
                {
                    let mut rest = vec![PROTO_UDP, 0, 0, 0, 0, 0, 0, 0];
                    rest.extend_from_slice(&udp6);
                    ipv6(c6, s6, 253, &rest)
                },
                Some(EXTHDR),
                Some("ipv6_ext_invalid"),
            )],
            reaches: Reaches::Nothing,
        },
        Variant {
            name: "IPv6 truncated TCP header",
            v6: true,
            frames: vec![frame(
                ipv6(c6, s6, PROTO_TCP, &tcp(c6, s6, (SPORT, DENIED), 0x02, &[], &[])[..12]),
                Some(TRUNCATED),
                Some("truncated_l4"),
            )],
            reaches: Reaches::Nothing,
        },
    ]
}

/// Per-reason totals of the counters a variant moves.
fn counts(sensor: &Sensor, v: &Variant) -> Vec<(String, f64)> {
    let m = sensor.metrics();
    let mut out = Vec::new();
    for f in &v.frames {
        if let Some(reason) = f.drop {
            let key = format!("drop:{reason}");
            if !out.iter().any(|(k, _)| *k == key) {
                out.push((key, m.sum("hubble_drop_total", &[("reason", reason)])));
            }
        }
        if let Some(reason) = f.unclassified {
            let key = format!("unclassified:{reason}");
            if !out.iter().any(|(k, _)| *k == key) {
                out.push((
                    key,
                    m.sum("sensor_net_unclassified_packets_total", &[("reason", reason)]),
                ));
            }
        }
    }
    out
}

/// What each counter must have grown by once the variant's frames crossed both interfaces:
/// hubble drops count at the server's interface; unclassified packets at both (the client's
/// and the node's side of the route), except drops that are policy decisions.
fn expected(v: &Variant, enforce: bool) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    let mut add = |key: String, n: f64| match out.iter_mut().find(|(k, _)| *k == key) {
        Some((_, total)) => *total += n,
        None => out.push((key, n)),
    };
    for f in &v.frames {
        if let Some(reason) = f.drop {
            add(format!("drop:{reason}"), if enforce { 1.0 } else { 0.0 });
        }
        if let Some(reason) = f.unclassified {
            add(format!("unclassified:{reason}"), 2.0);
        }
    }
    out
}

fn run_variants(mode: &str, subnet: u8) {
    let t = topology(subnet);
    let sensor = t.start(mode);
    let enforce = mode == "enforce";
    let socket = t.client.enter(|| FrameSocket::new("eth0")).expect("AF_PACKET socket");
    let marker = t.server_udp(false, MARKER);
    // The IPv6 route through the node works (neighbour discovery done) before frames go out.
    let probe = t.server_udp(true, MARKER);
    wait_until("IPv6 path client → server", Duration::from_secs(10), || {
        let sender = t
            .client
            .enter(|| UdpSocket::bind(SocketAddr::new(IpAddr::V6(t.client6), 0)).expect("bind"));
        sender.send_to(b"probe", (IpAddr::V6(t.server6), MARKER)).expect("send");
        std::thread::sleep(Duration::from_millis(50));
        probe.recv_from(&mut [0_u8; 16]).ok().map(drop)
    });

    for v in variants(&t) {
        let before = counts(&sensor, &v);
        let tcp_before = t.server_tcp_segments();
        let target = match v.reaches {
            Reaches::Udp(port) => Some(t.server_udp(v.v6, port)),
            _ => None,
        };
        for f in &v.frames {
            let bytes = ethernet(t.client_veth.node_mac, t.client_veth.pod_mac, &f.bytes);
            socket.send(&bytes).unwrap_or_else(|e| panic!("{}: sending: {e}", v.name));
        }
        // Each frame is counted under its reason, exactly.
        let want = expected(&v, enforce);
        wait_until(&format!("{mode}: counters of {:?}", v.name), Duration::from_secs(10), || {
            let now = counts(&sensor, &v);
            let done = want.iter().all(|(key, n)| {
                let b = before.iter().find(|(k, _)| k == key).map_or(0.0, |(_, x)| *x);
                let a = now.iter().find(|(k, _)| k == key).map_or(0.0, |(_, x)| *x);
                (a - b - n).abs() < 0.5
            });
            done.then_some(())
        });
        t.marker(&marker);
        let mut buf = [0_u8; 256];
        let received = |socket: &UdpSocket, buf: &mut [u8]| -> Option<usize> {
            socket.recv_from(buf).ok().map(|(n, _)| n)
        };
        if enforce {
            if let Some(socket) = &target {
                assert_eq!(
                    received(socket, &mut buf),
                    None,
                    "{}: a datagram was delivered",
                    v.name
                );
            }
            assert_eq!(
                t.server_tcp_segments(),
                tcp_before,
                "{}: a TCP segment reached the server",
                v.name
            );
        } else {
            match v.reaches {
                Reaches::Udp(_) => {
                    let socket = target.as_ref().expect("socket");
                    wait_until(
                        &format!("detect: {:?} delivered", v.name),
                        Duration::from_secs(5),
                        || received(socket, &mut buf),
                    );
                }
                Reaches::Tcp => {
                    wait_until(
                        &format!("detect: {:?} reached the server's TCP", v.name),
                        Duration::from_secs(5),
                        || (t.server_tcp_segments() > tcp_before).then_some(()),
                    );
                }
                Reaches::Nothing => {}
            }
        }
    }

    // Records: drops (enforce) or AUDIT with the would-be reason (detect), at the server.
    let verdict = if enforce { "DROPPED" } else { "AUDIT" };
    for reason in [TRUNCATED, NOT_FOUND, INVALID, EXTHDR] {
        let record = sensor.wait_event(&format!("{verdict} record with {reason}"), |r| {
            r["flow"]["verdict"] == verdict && r["flow"]["drop_reason_desc"] == reason
        });
        let f = &record["flow"];
        assert_eq!(f["traffic_direction"], "INGRESS", "{record}");
        assert_eq!(f["destination"]["pod_name"], "server", "{record}");
    }
    let m = sensor.metrics();
    if enforce {
        assert!(
            m.sum(
                "cilium_drop_count_total",
                &[("reason", "First logical datagram fragment not found")]
            ) >= 4.0,
            "{}",
            m.text
        );
    } else {
        assert_eq!(m.sum("hubble_drop_total", &[]), 0.0, "detect mode dropped:\n{}", m.text);
    }
}

#[test]
fn enforce_mode_drops_every_bypass_variant_under_its_reason() {
    if !privileged() {
        return;
    }
    run_variants("enforce", 150);
}

#[test]
fn detect_mode_records_every_bypass_variant_as_a_would_be_drop() {
    if !privileged() {
        return;
    }
    run_variants("detect", 160);
}

/// Fragments the kernel makes itself (a 3000-byte datagram over a 1500-byte MTU) are tracked,
/// not failed closed: to an allowed port they arrive, to a denied one every fragment is a
/// policy drop, for IPv4 and IPv6.
#[test]
fn kernel_fragmented_datagrams_follow_their_first_fragment() {
    if !privileged() {
        return;
    }
    let t = topology(170);
    let sensor = t.start("enforce");
    let payload = vec![0x42_u8; 3000];
    for v6 in [false, true] {
        let (client, server) = t.addrs(v6);
        let allowed = t.server_udp(v6, ALLOWED);
        let denied = t.server_udp(v6, DENIED);
        let sender = t.client.enter(|| UdpSocket::bind(SocketAddr::new(client, 0)).expect("bind"));
        let mut buf = vec![0_u8; 4096];
        let n = wait_until(
            "the fragmented datagram to the allowed port",
            Duration::from_secs(10),
            || {
                sender.send_to(&payload, (server, ALLOWED)).expect("send");
                std::thread::sleep(Duration::from_millis(50));
                allowed.recv_from(&mut buf).ok().map(|(n, _)| n)
            },
        );
        assert_eq!(n, payload.len(), "v6={v6}: reassembled datagram");
        let before = sensor.metrics().sum("hubble_drop_total", &[("reason", POLICY_DENIED)]);
        sender.send_to(&payload, (server, DENIED)).expect("send");
        // 3 fragments at 1500 bytes of MTU, each a policy drop (none "not found").
        sensor.wait_metric(
            "hubble_drop_total",
            &[("reason", POLICY_DENIED), ("protocol", "UDP")],
            |v| v.is_some_and(|v| v >= before + 3.0),
        );
        t.marker(&t.server_udp(false, MARKER));
        assert!(denied.recv_from(&mut buf).is_err(), "v6={v6}: denied datagram delivered");
    }
    let m = sensor.metrics();
    assert_eq!(m.sum("hubble_drop_total", &[("reason", NOT_FOUND)]), 0.0, "{}", m.text);
    assert_eq!(
        m.sum("sensor_net_unclassified_packets_total", &[("reason", "fragment_not_found")]),
        0.0
    );
}
