//! tc counters: exact packet and byte counts per interface and direction, and interfaces that
//! appear and disappear while the sensor runs.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use sensor_e2e::{Netns, Sensor, Veth, privileged, unique};

const PAYLOAD: usize = 100;
/// Ethernet (14) + IPv4 (20) + UDP (8) + payload: the frame length the tc hook sees.
const FRAME: f64 = (14 + 20 + 8 + PAYLOAD) as f64;

/// Sends `count` datagrams from a socket in `from` to `to`, and receives them all in `at`.
fn send_udp(from: &Netns, from_ip: std::net::Ipv4Addr, at: &Netns, to: SocketAddr, count: usize) {
    let receiver = at.enter(|| UdpSocket::bind(to).expect("bind receiver"));
    receiver.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let sender = from.enter(|| UdpSocket::bind((from_ip, 0)).expect("bind sender"));
    let mut buf = [0_u8; 2048];
    for i in 0..count {
        sender.send_to(&[i as u8; PAYLOAD], to).expect("send");
        // Lock-step: never more than one datagram in flight, so none can be dropped.
        let (n, _) = receiver.recv_from(&mut buf).expect("datagram arrives");
        assert_eq!(n, PAYLOAD);
    }
}

fn packets(sensor: &Sensor, iface: &str, direction: &str, want: f64) {
    let labels = [("interface", iface), ("direction", direction)];
    sensor.wait_metric("sensor_interface_packets_total", &labels, |v| v == Some(want));
    sensor.wait_metric("sensor_interface_bytes_total", &labels, |v| v == Some(want * FRAME));
}

#[test]
fn counts_exact_packets_and_bytes_per_interface_and_direction() {
    if !privileged() {
        return;
    }
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let iface = unique("veth");
    let veth = Veth::new(&node, &pod, &iface, 1);
    let sensor = Sensor::start(&node, "mode: detect\n", &[]);
    sensor.wait_metric("sensor_interface_attached", &[("interface", &iface)], |v| v == Some(1.0));

    // Pod → node: ingress on the host-side interface.
    send_udp(&pod, veth.pod_ip, &node, SocketAddr::from((veth.node_ip, 7000)), 100);
    packets(&sensor, &iface, "ingress", 100.0);
    // Node → pod: egress. Ingress must not move.
    send_udp(&node, veth.node_ip, &pod, SocketAddr::from((veth.pod_ip, 7001)), 37);
    packets(&sensor, &iface, "egress", 37.0);
    packets(&sensor, &iface, "ingress", 100.0);
}

#[test]
fn picks_up_interfaces_created_after_start_and_drops_deleted_ones() {
    if !privileged() {
        return;
    }
    let node = Netns::new("node");
    let sensor = Sensor::start(&node, "", &["--interfaces", "vethx*,se*"]);
    let m = sensor.metrics();
    assert_eq!(m.get("sensor_ready", &[]), Some(1.0), "{}", m.text);

    let pod = Netns::new("pod");
    let iface = unique("se");
    let veth = Veth::new(&node, &pod, &iface, 2);
    sensor.wait_metric("sensor_interface_attached", &[("interface", &iface)], |v| v == Some(1.0));
    send_udp(&pod, veth.pod_ip, &node, SocketAddr::from((veth.node_ip, 7002)), 25);
    packets(&sensor, &iface, "ingress", 25.0);

    // An interface that does not match the patterns is left alone.
    let other_pod = Netns::new("pod");
    let other = unique("zz");
    let other_veth = Veth::new(&node, &other_pod, &other, 3);
    send_udp(&other_pod, other_veth.pod_ip, &node, SocketAddr::from((other_veth.node_ip, 7003)), 5);
    let m = sensor.metrics();
    assert_eq!(m.get("sensor_interface_attached", &[("interface", &other)]), None, "{}", m.text);
    assert_eq!(m.get("sensor_interface_packets_total", &[("interface", &other)]), None);

    // Deleting the pod namespace deletes the veth: the sensor forgets it.
    drop(pod);
    sensor.wait_metric("sensor_interface_attached", &[("interface", &iface)], |v| v.is_none());
    sensor.wait_metric("sensor_interface_packets_total", &[("interface", &iface)], |v| v.is_none());
}
