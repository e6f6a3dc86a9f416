//! A bridge CNI in miniature (flannel's `cni0`, the reference `bridge` plugin): a bridge in
//! the node namespace with an address of the pod subnet (so the node has only the subnet
//! route, no per-pod host route), and pods whose veth's node-side end is enslaved to it.
//!
//! Each pod is a process in a cgroup named like a containerd container
//! (`cri-containerd-<id>.scope`) that made its own network namespace (`unshare --net`), as a
//! pod sandbox does: the namespace has no name under `/run/netns`, so the sensor can only
//! find it through the container's cgroup. Everything is removed on drop.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use nix::sched::{CloneFlags, setns};

use crate::{Cgroup, Netns, run, unique, wait_until};

/// A bridge in `node` holding 10.78.`subnet`.1/24.
pub struct Bridge {
    pub name: String,
    pub subnet: u8,
}

impl Bridge {
    /// `name_prefix` should match the sensor's `interfaces` when the test wants to show the
    /// bridge itself carries no programs (e.g. `cni`, as flannel's `cni0`).
    pub fn new(node: &Netns, name_prefix: &str, subnet: u8) -> Self {
        let name = unique(name_prefix);
        let n = node.name.as_str();
        // A fixed address: a bridge without one takes its lowest port's, and changes it when
        // that port goes, leaving the pods' ARP entries for the gateway stale for seconds.
        let mac = format!("02:78:{subnet:02x}:00:00:01");
        run("ip", &["-n", n, "link", "add", &name, "address", &mac, "type", "bridge"]);
        run("ip", &["-n", n, "addr", "add", &format!("10.78.{subnet}.1/24"), "dev", &name]);
        run("ip", &["-n", n, "link", "set", &name, "up"]);
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        Self { name, subnet }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.subnet, 1)
    }
}

/// A pod on a [`Bridge`]: its sandbox process, cgroup and veth.
pub struct BridgePod {
    child: Child,
    /// The container id the cgroup is named after (64 hex digits).
    pub container_id: String,
    /// Node-side end of the veth (enslaved to the bridge).
    pub host_if: String,
    pub ip: Ipv4Addr,
    cgroup: Option<Cgroup>,
}

impl BridgePod {
    /// A pod at 10.78.`bridge.subnet`.`host` behind `bridge`, with a route to 10.0.0.0/8 via
    /// the bridge's address.
    pub fn new(node: &Netns, bridge: &Bridge, host: u8) -> Self {
        let container_id = container_id();
        let cgroup = Cgroup::named(&format!("cri-containerd-{container_id}.scope"));
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--", "sleep", "600"]).stdin(Stdio::null());
        let child = cgroup.spawn(&mut cmd);
        let pid = child.id();
        let own = std::fs::metadata("/proc/self/ns/net").expect("own netns").ino();
        wait_until("the pod process's own network namespace", Duration::from_secs(5), || {
            let ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
            (ns != own).then_some(())
        });
        let host_if = unique("veth");
        let ip = Ipv4Addr::new(10, 78, bridge.subnet, host);
        let pod = Self { child, container_id, host_if: host_if.clone(), ip, cgroup: Some(cgroup) };
        let n = node.name.as_str();
        let pid = pid.to_string();
        run(
            "ip",
            &[
                "-n", n, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
                &pid,
            ],
        );
        run("ip", &["-n", n, "link", "set", &host_if, "master", &bridge.name, "up"]);
        pod.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        pod.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        pod.exec(&["ip", "link", "set", "lo", "up"]);
        pod.exec(&["ip", "link", "set", "eth0", "up"]);
        pod.exec(&["ip", "route", "add", "10.0.0.0/8", "via", &bridge.gateway().to_string()]);
        pod
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/proc/<pid>/ns/net` of the sandbox process.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    /// Runs a command in the pod's network namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let net = format!("--net={}", self.netns_path().display());
        let mut full = vec![net.as_str(), "--"];
        full.extend_from_slice(args);
        run("nsenter", &full)
    }

    /// Kills the sandbox: its namespace, and with it both ends of its veth, vanish.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.cgroup.take();
    }
}

impl Drop for BridgePod {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A containerd-style container id (64 hex digits), unique per process and call.
pub fn container_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}{:08x}{:08x}{:032x}", 0xc41_u64, std::process::id(), n, u128::from(nanos))
}

/// Runs `f` on a thread that entered the network namespace at `path`.
pub fn enter_path<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into test namespace");
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    })
}

/// A TCP round trip from the namespace at `from` to a listener on `addr` in the one at `to`
/// (as [`crate::traffic::tcp_roundtrip`], for namespaces known by path).
pub fn tcp_roundtrip_paths(from: &Path, to: &Path, addr: SocketAddr) -> bool {
    let listener = enter_path(to, || TcpListener::bind(addr).expect("bind server"));
    let server = std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            conn.set_read_timeout(Some(Duration::from_secs(3))).ok();
            let mut buf = [0_u8; 4];
            if conn.read_exact(&mut buf).is_ok() {
                let _ = conn.write_all(&buf);
            }
        }
    });
    let client = enter_path(from, || TcpStream::connect_timeout(&addr, Duration::from_secs(2)));
    let ok = match client {
        Ok(mut conn) => {
            conn.set_read_timeout(Some(Duration::from_secs(3))).ok();
            let mut buf = [0_u8; 4];
            conn.write_all(b"ping").is_ok() && conn.read_exact(&mut buf).is_ok() && &buf == b"ping"
        }
        Err(_) => false,
    };
    if !ok {
        let _ = enter_path(to, || TcpStream::connect_timeout(&addr, Duration::from_millis(200)));
    }
    let _ = server.join();
    ok
}
