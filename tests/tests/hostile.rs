//! Hostile and malformed packets: crafted frames sent with an `AF_PACKET` socket out of a pod's
//! interface cross the sensor's tc ingress on the host side. Each kind is counted exactly under
//! `sensor_net_unclassified_packets_total{reason}`, none becomes an L4 flow, and the sensor
//! keeps serving and tracking normal traffic afterwards.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use sensor_e2e::{
    Netns, Sensor, Veth,
    packet::{FrameSocket, checksum},
    privileged, unique,
};

/// Frames of each kind sent.
const N: usize = 3;

struct Frames {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

impl Frames {
    fn ethernet(&self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(14 + payload.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// An IPv4 header (`ihl` words, `total` length, fragment field) followed by `l4`.
    fn ipv4_raw(&self, ihl: u8, total: u16, frag: u16, protocol: u8, l4: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x40 | ihl, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0x12, 0x34]); // identification
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.extend_from_slice(&[64, protocol, 0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        // Options up to the header length the IHL claims, when it claims more than 20 bytes.
        ip.resize(ip.len().max(usize::from(ihl) * 4), 0);
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        ip.extend_from_slice(l4);
        self.ethernet(0x0800, &ip)
    }

    /// A well-formed IPv4 packet around `l4` (whose length the total length covers).
    fn ipv4(&self, protocol: u8, l4: &[u8]) -> Vec<u8> {
        let total = u16::try_from(20 + l4.len()).expect("small");
        self.ipv4_raw(5, total, 0, protocol, l4)
    }

    /// An IPv6 packet from fd00:77::2 to fd00:77::1: `next` header, then `rest`.
    fn ipv6(&self, next: u8, rest: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&u16::try_from(rest.len()).expect("small").to_be_bytes());
        ip.extend_from_slice(&[next, 64]);
        ip.extend_from_slice(&[0xfd, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        ip.extend_from_slice(&[0xfd, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip.extend_from_slice(rest);
        self.ethernet(0x86dd, &ip)
    }
}

/// A UDP header and payload from port 40000 to `port`.
fn udp(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = 40000_u16.to_be_bytes().to_vec();
    u.extend_from_slice(&port.to_be_bytes());
    u.extend_from_slice(&u16::try_from(8 + payload.len()).expect("small").to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// The kinds of malformed frame, with the reason each must be counted under.
fn hostile_frames(f: &Frames) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let full_ipv4 = f.ipv4(17, &udp(7000, b"data"));
    // Eight destination-options headers (8 bytes each) before UDP: more than the parser follows.
    let mut chain = Vec::new();
    for _ in 0..8 {
        chain.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // next: options again; PadN
    }
    chain[8 * 7] = 17;
    chain.extend_from_slice(&udp(7000, b"data"));
    // Fragment header: next UDP, offset 1480 bytes (185 units), more fragments.
    let mut later_fragment = vec![17, 0];
    later_fragment.extend_from_slice(&((185_u16 << 3) | 1).to_be_bytes());
    later_fragment.extend_from_slice(&[0, 0, 0x12, 0x34]);
    later_fragment.extend_from_slice(&[0xab; 32]);
    // A UDP packet whose IP length covers 4 bytes of UDP, padded to Ethernet's 60-byte minimum
    // as NICs do: the padding must not be read as the rest of the header.
    let mut padded_udp = f.ipv4_raw(5, 24, 0, 17, &udp(7000, b"")[..4]);
    padded_udp.resize(60, 0);
    vec![
        ("truncated IPv4 header", "truncated_l3", full_ipv4[..14 + 12].to_vec()),
        ("IPv4 longer than its frame", "truncated_l3", {
            let mut p = f.ipv4_raw(5, 200, 0, 17, &udp(7000, b"data"));
            p.truncate(14 + 20 + 12);
            p
        }),
        ("IHL below 5", "bad_ip_header", f.ipv4_raw(4, 40, 0, 17, &[0; 20])),
        ("total length below the header", "bad_ip_header", f.ipv4_raw(5, 12, 0, 17, &[0; 8])),
        ("IPv4 version 5 header", "bad_ip_header", {
            let mut p = full_ipv4.clone();
            p[14] = 0x55;
            p
        }),
        ("IPv6 extension header chain", "ipv6_ext_limit", f.ipv6(60, &chain)),
        (
            "IPv4 non-first fragment",
            "fragment_not_found",
            f.ipv4_raw(5, 20 + 32, 185, 17, &udp(7000, &[0xab; 24])),
        ),
        ("IPv6 non-first fragment", "fragment_not_found", f.ipv6(44, &later_fragment)),
        ("truncated TCP", "truncated_l4", f.ipv4(6, &[0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0])),
        ("truncated UDP", "truncated_l4", f.ipv4(17, &udp(7000, b"")[..6])),
        ("truncated UDP with padding", "truncated_l4", padded_udp),
        ("truncated ICMP", "truncated_l4", f.ipv4(1, &[8, 0, 0xf7, 0xff])),
        ("garbage ethertype", "non_ip", f.ethernet(0x88b5, &[0xde, 0xad, 0xbe, 0xef, 0, 0])),
    ]
}

fn unclassified(sensor: &Sensor, reason: &str) -> f64 {
    sensor
        .metrics()
        .get("sensor_net_unclassified_packets_total", &[("reason", reason)])
        .unwrap_or_else(|| panic!("no sensor_net_unclassified_packets_total{{reason={reason}}}"))
}

#[test]
fn malformed_frames_are_counted_by_reason_and_never_become_flows() {
    if !privileged() {
        return;
    }
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let iface = unique("vethh");
    let veth = Veth::new(&node, &pod, &iface, 130);
    let sensor = Sensor::start(&node, "mode: enforce\n", &[]);
    sensor.wait_metric("sensor_interface_attached", &[("interface", &iface)], |v| v == Some(1.0));

    let frames = hostile_frames(&Frames {
        dst_mac: veth.node_mac,
        src_mac: veth.pod_mac,
        src: veth.pod_ip,
        dst: veth.node_ip,
    });
    let reasons = [
        "non_ip",
        "truncated_l3",
        "truncated_l4",
        "bad_ip_header",
        "fragment_not_found",
        "ipv6_ext_limit",
    ];
    let before: Vec<f64> = reasons.iter().map(|r| unclassified(&sensor, r)).collect();
    let ingress = [("interface", iface.as_str()), ("direction", "ingress")];
    let packets_before =
        sensor.metrics().get("sensor_interface_packets_total", &ingress).unwrap_or(0.0);

    let socket = pod.enter(|| FrameSocket::new("eth0")).expect("AF_PACKET socket in the pod");
    for (what, _, frame) in &frames {
        for _ in 0..N {
            let sent = socket.send(frame).unwrap_or_else(|e| panic!("sending {what}: {e}"));
            assert_eq!(sent, frame.len(), "{what}");
        }
    }

    // Every frame crossed the hook, and each kind landed under its reason, exactly.
    let total = (frames.len() * N) as f64;
    sensor.wait_metric("sensor_interface_packets_total", &ingress, |v| {
        v == Some(packets_before + total)
    });
    for (reason, before) in reasons.iter().zip(&before) {
        let kinds: Vec<&str> =
            frames.iter().filter(|(_, r, _)| r == reason).map(|(what, _, _)| *what).collect();
        let want = before + (kinds.len() * N) as f64;
        let got = unclassified(&sensor, reason);
        assert_eq!(got, want, "reason {reason} (frames: {kinds:?})\n{}", sensor.metrics().text);
    }

    // Still alive and serving.
    assert_eq!(sensor.get("/healthz").0, 200, "{}", sensor.log());

    // A normal TCP connection from the pod still works and is tracked as a flow.
    let addr = SocketAddr::from((veth.node_ip, 8080));
    let listener = node.enter(|| TcpListener::bind(addr).expect("bind in node"));
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let mut buf = [0_u8; 4];
        conn.read_exact(&mut buf).expect("read");
        conn.write_all(&buf).expect("echo");
    });
    let mut conn = pod
        .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .expect("TCP connection after the hostile frames");
    conn.set_read_timeout(Some(Duration::from_secs(3))).ok();
    conn.write_all(b"ping").expect("write");
    let mut buf = [0_u8; 4];
    conn.read_exact(&mut buf).expect("echo back");
    assert_eq!(&buf, b"ping");
    server.join().expect("server thread");
    sensor.wait_event("flow record of the TCP connection", |v| {
        v["flow"]["l4"]["TCP"]["destination_port"] == 8080
    });

    // Records come in order through one ring buffer: everything before the TCP connection's
    // record is the hostile phase, which must have produced no flow at all.
    let flows: Vec<serde_json::Value> =
        sensor.events().into_iter().filter(|v| v.get("flow").is_some()).collect();
    let strays: Vec<&serde_json::Value> = flows
        .iter()
        .filter(|v| {
            v["flow"]["l4"]["TCP"]["destination_port"] != 8080
                && v["flow"]["l4"]["TCP"]["source_port"] != 8080
        })
        .collect();
    assert!(strays.is_empty(), "malformed frames were attributed to flows: {strays:?}");
    assert_eq!(sensor.get("/healthz").0, 200);
}
