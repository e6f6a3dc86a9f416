//! Network namespaces and veth pairs made with `ip`, removed on drop.

use std::{fs::File, net::Ipv4Addr, path::PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::{run, unique};

/// A named network namespace (`ip netns add`) with loopback up and IPv6 off, so the only
/// packets on its links are the ones a test sends.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(&format!("se2e-{tag}-"));
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that entered this namespace. Sockets created there stay in the
    /// namespace when returned, so a test can send and receive from any thread.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path()).expect("open netns file");
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into test namespace");
                f()
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its interfaces, and with them both ends of each veth.
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A veth pair: `host_if` in the node namespace, `eth0` in the pod namespace, a /30 between
/// them and static neighbour entries (no ARP on the wire).
pub struct Veth {
    pub host_if: String,
    pub node_ip: Ipv4Addr,
    pub pod_ip: Ipv4Addr,
    pub node_mac: [u8; 6],
    pub pod_mac: [u8; 6],
}

impl Veth {
    /// `subnet` picks 10.77.<subnet>.0/30.
    pub fn new(node: &Netns, pod: &Netns, host_if: &str, subnet: u8) -> Self {
        let node_ip = Ipv4Addr::new(10, 77, subnet, 1);
        let pod_ip = Ipv4Addr::new(10, 77, subnet, 2);
        let node_mac = format!("02:77:{subnet:02x}:00:00:01");
        let pod_mac = format!("02:77:{subnet:02x}:00:00:02");
        let (n, p) = (node.name.as_str(), pod.name.as_str());
        run(
            "ip",
            &[
                "-n", n, "link", "add", host_if, "address", &node_mac, "type", "veth", "peer",
                "name", "eth0", "address", &pod_mac, "netns", p,
            ],
        );
        run("ip", &["-n", n, "addr", "add", &format!("{node_ip}/30"), "dev", host_if]);
        run("ip", &["-n", p, "addr", "add", &format!("{pod_ip}/30"), "dev", "eth0"]);
        run(
            "ip",
            &[
                "-n",
                n,
                "neigh",
                "add",
                &pod_ip.to_string(),
                "lladdr",
                &pod_mac,
                "dev",
                host_if,
                "nud",
                "permanent",
            ],
        );
        run(
            "ip",
            &[
                "-n",
                p,
                "neigh",
                "add",
                &node_ip.to_string(),
                "lladdr",
                &node_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        );
        run("ip", &["-n", n, "link", "set", host_if, "up"]);
        run("ip", &["-n", p, "link", "set", "eth0", "up"]);
        Self {
            host_if: host_if.to_owned(),
            node_ip,
            pod_ip,
            node_mac: [0x02, 0x77, subnet, 0, 0, 1],
            pod_mac: [0x02, 0x77, subnet, 0, 0, 2],
        }
    }

    /// Lets the pod reach other test pods (10.77.0.0/16) through the node namespace, which
    /// routes between its veths.
    pub fn route_via_node(&self, node: &Netns, pod: &Netns) {
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        run(
            "ip",
            &["-n", &pod.name, "route", "add", "10.77.0.0/16", "via", &self.node_ip.to_string()],
        );
    }
}
