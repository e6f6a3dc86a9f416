//! Conformance of the enforced policy with the reference evaluator (`sensor_e2e::netpol_ref`):
//! seeded cases of NetworkPolicy and CiliumNetworkPolicy over four pods in two namespaces,
//! each case applied to one running sensor (enforce mode) by rewriting its policy file, then
//! a full truth table of real probes (TCP and UDP to two ports, ICMP echo; IPv4 and IPv6)
//! between the pods' network namespaces, compared with the evaluator's verdicts.
//!
//! CI runs [`conformance_sample`]; `cargo xtask conformance --cases N --seed S` runs
//! [`conformance_many`] with `CONFORMANCE_CASES` and `CONFORMANCE_SEED`.

use std::{
    fs::{self, File},
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};
use sensor_e2e::{
    Netns, Sensor, TempDir, Veth,
    netpol_ref::{Family, Policy, Probe, Proto, Rng, World, all_probes, allowed, generate},
    privileged, run, unique, wait_until,
};

/// How long a probe waits for its answer (a denied probe costs this much, in parallel).
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// Four pods behind one node namespace, each listening on TCP and UDP 80 and 81 (both
/// families), with the sensor running in the node namespace.
struct Topology {
    pods: Vec<Netns>,
    _veths: Vec<Veth>,
    world: World,
    dir: TempDir,
    servers: Servers,
    sensor: Sensor,
    // Dropped last: deleting the node namespace removes every veth.
    node: Netns,
}

fn v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x78, u16::try_from(i).unwrap_or(0), 0, 0, 0, 0, 2)
}

impl Topology {
    fn new() -> Self {
        let node = Netns::new("cnode");
        node.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"]);
        node.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let mut pods = Vec::new();
        let mut veths = Vec::new();
        for i in 0..4_u8 {
            let pod = Netns::new("cpod");
            let host_if = unique("vethf");
            let veth = Veth::new(&node, &pod, &host_if, 200 + i);
            veth.route_via_node(&node, &pod);
            let six = |ns: &Netns, dev: &str, addr: &str| {
                ns.exec(&[
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=0",
                    &format!("net.ipv6.conf.{dev}.disable_ipv6=0"),
                ]);
                run("ip", &["-n", &ns.name, "-6", "addr", "add", addr, "dev", dev, "nodad"]);
            };
            six(&node, &host_if, &format!("fd00:78:{i}::1/64"));
            six(&pod, "eth0", &format!("fd00:78:{i}::2/64"));
            run(
                "ip",
                &[
                    "-n",
                    &pod.name,
                    "-6",
                    "route",
                    "add",
                    "fd00:78::/32",
                    "via",
                    &format!("fd00:78:{i}::1"),
                ],
            );
            // ICMP echo through datagram sockets (their ids are ours to choose).
            pod.exec(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
            pods.push(pod);
            veths.push(veth);
        }
        let world = World::standard(|i| veths[i].pod_ip, v6);
        let dir = TempDir::new("conf");
        fs::create_dir_all(dir.path().join("policies")).expect("policy dir");
        fs::write(dir.path().join("endpoints.yaml"), endpoints_yaml(&world, &veths))
            .expect("endpoints");
        let servers = Servers::start(&pods);
        let config = format!(
            "mode: enforce\npolicy_dir: {}\nendpoints_file: {}\n",
            dir.path().join("policies").display(),
            dir.path().join("endpoints.yaml").display()
        );
        let sensor = Sensor::start(&node, &config, &[]);
        Self { pods, _veths: veths, world, dir, servers, sensor, node }
    }

    /// Writes the case's policies as one file (one rename: one reload) and waits until the
    /// sensor has loaded it; panics when the sensor rejects a generated file.
    fn apply(&self, policies: &[Policy]) {
        let text: Vec<String> = policies.iter().map(Policy::render).collect();
        let reloads = || {
            let m = self.sensor.metrics();
            ["applied", "rejected"]
                .iter()
                .filter_map(|o| m.get("sensor_policy_reloads_total", &[("outcome", o)]))
                .sum::<f64>()
        };
        let before = reloads();
        let tmp = self.dir.path().join(".case.tmp");
        fs::write(&tmp, text.join("\n---\n")).expect("write case");
        fs::rename(&tmp, self.dir.path().join("policies/case.yaml")).expect("rename case");
        wait_until("the sensor to reload the case", Duration::from_secs(10), || {
            (reloads() > before).then_some(())
        });
        let rejected = self.sensor.metrics().get("sensor_policy_rejected_files", &[]);
        assert_eq!(
            rejected,
            Some(0.0),
            "the sensor rejected a generated policy:\n{}\n{}",
            text.join("\n---\n"),
            self.sensor.log()
        );
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.servers.stop();
        let _ = &self.node;
    }
}

fn endpoints_yaml(world: &World, veths: &[Veth]) -> String {
    let mut out = String::from("namespaces:\n");
    for ns in &world.namespaces {
        let labels: Vec<String> = ns.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        out.push_str(&format!("  {}: {{{}}}\n", ns.name, labels.join(", ")));
    }
    out.push_str("endpoints:\n");
    for (pod, veth) in world.pods.iter().zip(veths) {
        let labels: Vec<String> = pod.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let ports: Vec<String> = pod
            .ports
            .iter()
            .map(|(name, port, proto)| {
                format!("{{name: {name}, containerPort: {port}, protocol: {}}}", proto.name())
            })
            .collect();
        out.push_str(&format!(
            "- {{namespace: {}, name: {}, labels: {{{}}}, ips: [{}, \"{}\"], interface: {}, ports: [{}]}}\n",
            pod.namespace,
            pod.name,
            labels.join(", "),
            pod.v4,
            pod.v6,
            veth.host_if,
            ports.join(", ")
        ));
    }
    out
}

/// Echo servers in every pod: TCP and UDP on [`netpol_ref::PORTS`], dual stack.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(pods: &[Netns]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for pod in pods {
            for port in sensor_e2e::netpol_ref::PORTS {
                let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
                let (tcp, udp) = pod.enter(|| {
                    (
                        TcpListener::bind(any).expect("bind TCP"),
                        UdpSocket::bind(any).expect("bind UDP"),
                    )
                });
                tcp.set_nonblocking(true).expect("nonblocking");
                udp.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
                let s = Arc::clone(&stop);
                threads.push(std::thread::spawn(move || tcp_echo(&tcp, &s)));
                let s = Arc::clone(&stop);
                threads.push(std::thread::spawn(move || udp_echo(&udp, &s)));
            }
        }
        Self { stop, threads }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn tcp_echo(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                std::thread::spawn(move || {
                    let _ = conn.set_nonblocking(false);
                    conn.set_read_timeout(Some(Duration::from_secs(2))).ok();
                    let mut buf = [0_u8; 8];
                    if conn.read_exact(&mut buf).is_ok() {
                        let _ = conn.write_all(&buf);
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn udp_echo(socket: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0_u8; 64];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

/// Runs `f` on a thread inside the network namespace at `path`.
fn in_netns<T: Send>(path: &std::path::Path, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(path).expect("netns file");
    setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
    f()
}

static NEXT_ID: AtomicU16 = AtomicU16::new(1);

/// Sends one probe from the source pod's namespace; true when the answer came back.
fn send_probe(world: &World, pods: &[Netns], probe: &Probe) -> bool {
    let dst = world.pods[probe.to].addr(probe.family);
    let token: [u8; 8] = *b"conform!";
    in_netns(&pods[probe.from].path(), || match probe.proto {
        Proto::Tcp => {
            let Ok(mut conn) =
                TcpStream::connect_timeout(&SocketAddr::new(dst, probe.port), PROBE_TIMEOUT)
            else {
                return false;
            };
            conn.set_read_timeout(Some(PROBE_TIMEOUT)).ok();
            let mut buf = [0_u8; 8];
            conn.write_all(&token).is_ok() && conn.read_exact(&mut buf).is_ok() && buf == token
        }
        Proto::Udp => {
            let local: SocketAddr = match probe.family {
                Family::V4 => (Ipv4Addr::UNSPECIFIED, 0).into(),
                Family::V6 => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = UdpSocket::bind(local).expect("bind UDP probe");
            socket.set_read_timeout(Some(PROBE_TIMEOUT)).ok();
            let _ = socket.send_to(&token, SocketAddr::new(dst, probe.port));
            let mut buf = [0_u8; 64];
            matches!(socket.recv_from(&mut buf), Ok((8, _)) if buf[..8] == token)
        }
        Proto::Icmp => icmp_echo(dst),
    })
}

/// One ICMP echo through a datagram ICMP socket bound to an id of our own (so an earlier
/// case's conntrack entry never answers for this one).
fn icmp_echo(dst: IpAddr) -> bool {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed).max(1);
    let (domain, protocol, request, reply) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8_u8, 0_u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129),
    };
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM, protocol) };
    assert!(fd >= 0, "ICMP datagram socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: libc::suseconds_t::try_from(PROBE_TIMEOUT.as_micros()).unwrap_or(800_000),
    };
    // SAFETY: tv is a valid timeval for SO_RCVTIMEO.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let (bind, to) = sockaddrs(dst, id);
    // SAFETY: bind and to hold valid socket addresses of their stated lengths.
    let sent = unsafe {
        libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&bind.0).cast(), bind.1);
        let msg = [request, 0, 0, 0, 0, 0, 0, 1, b'c', b'o', b'n', b'f'];
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            std::ptr::from_ref(&to.0).cast(),
            to.1,
        )
    };
    if sent < 0 {
        return false;
    }
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut buf = [0_u8; 64];
    while Instant::now() < deadline {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return false;
        }
        if n >= 8 && buf[0] == reply {
            return true;
        }
    }
    false
}

/// (bind address with the echo id as port, destination) as raw sockaddrs.
fn sockaddrs(
    dst: IpAddr,
    id: u16,
) -> ((libc::sockaddr_storage, libc::socklen_t), (libc::sockaddr_storage, libc::socklen_t)) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let zero = || unsafe { std::mem::zeroed::<libc::sockaddr_storage>() };
    let (mut bind, mut to) = (zero(), zero());
    let len = match dst {
        IpAddr::V4(v4) => {
            let b = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: id.to_be(),
                sin_addr: libc::in_addr { s_addr: 0 },
                sin_zero: [0; 8],
            };
            let t = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from(v4).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe {
                std::ptr::write(std::ptr::from_mut(&mut bind).cast(), b);
                std::ptr::write(std::ptr::from_mut(&mut to).cast(), t);
            }
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            let mk = |port: u16, addr: [u8; 16]| libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: port.to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: addr },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe {
                std::ptr::write(std::ptr::from_mut(&mut bind).cast(), mk(id, [0; 16]));
                std::ptr::write(std::ptr::from_mut(&mut to).cast(), mk(0, v6.octets()));
            }
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    let len = libc::socklen_t::try_from(len).unwrap_or(0);
    ((bind, len), (to, len))
}

/// Runs every probe in parallel; returns the outcomes in the probes' order.
fn run_probes(topo: &Topology, probes: &[Probe]) -> Vec<bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|p| s.spawn(move || send_probe(&topo.world, &topo.pods, p)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(false)).collect()
    })
}

/// What a run found.
#[derive(Debug, Default)]
struct Report {
    cases: usize,
    probes: usize,
    disagreements: Vec<String>,
}

fn describe(world: &World, p: &Probe) -> String {
    let (a, b) = (&world.pods[p.from], &world.pods[p.to]);
    format!(
        "{}/{} -> {}/{} {:?} {}{}",
        a.namespace,
        a.name,
        b.namespace,
        b.name,
        p.family,
        p.proto.name(),
        if p.port > 0 { format!("/{}", p.port) } else { String::new() }
    )
}

/// Applies `cases` generated cases from `seed` and compares every probe with the evaluator.
/// A disagreement is probed once more before it counts (a lost packet is not a verdict).
fn run_cases(topo: &Topology, seed: u64, cases: usize) -> Report {
    let mut rng = Rng::new(seed);
    let probes = all_probes(&topo.world);
    let mut report = Report::default();
    for case in 0..cases {
        let policies = generate(&topo.world, &mut rng);
        topo.apply(&policies);
        let expected: Vec<bool> =
            probes.iter().map(|p| allowed(&topo.world, &policies, p)).collect();
        let got = run_probes(topo, &probes);
        let differ: Vec<Probe> =
            (0..probes.len()).filter(|i| got[*i] != expected[*i]).map(|i| probes[i]).collect();
        let again = run_probes(topo, &differ);
        let mut found = Vec::new();
        for (probe, passed) in differ.iter().zip(again) {
            let want = allowed(&topo.world, &policies, probe);
            if passed != want {
                found.push(format!(
                    "  {}: expected {}, got {}",
                    describe(&topo.world, probe),
                    if want { "allowed" } else { "denied" },
                    if passed { "allowed" } else { "denied" }
                ));
            }
        }
        if !found.is_empty() {
            let text: Vec<String> = policies.iter().map(Policy::render).collect();
            report.disagreements.push(format!(
                "seed {seed} case {case}:\n{}\npolicies:\n{}",
                found.join("\n"),
                text.join("\n---\n")
            ));
        }
        report.cases += 1;
        report.probes += probes.len();
    }
    report
}

fn check(report: &Report, started: Instant) {
    eprintln!(
        "conformance: {} cases, {} probes, {} cases with disagreements, {:.1}s",
        report.cases,
        report.probes,
        report.disagreements.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        report.disagreements.is_empty(),
        "the sensor disagrees with the reference evaluator:\n{}",
        report.disagreements.join("\n\n")
    );
}

#[test]
fn conformance_sample() {
    if !privileged() {
        return;
    }
    let started = Instant::now();
    let topo = Topology::new();
    // Without any policy everything passes: the probes themselves work.
    let probes = all_probes(&topo.world);
    let got = run_probes(&topo, &probes);
    let failed: Vec<String> = probes
        .iter()
        .zip(&got)
        .filter(|(_, ok)| !**ok)
        .map(|(p, _)| describe(&topo.world, p))
        .collect();
    assert!(failed.is_empty(), "probes fail without policy: {failed:?}\n{}", topo.sensor.log());
    let report = run_cases(&topo, 20_261_129, 40);
    check(&report, started);
}

/// `cargo xtask conformance --cases N --seed S`.
#[test]
#[ignore = "long: run through `cargo xtask conformance`"]
fn conformance_many() {
    if !privileged() {
        return;
    }
    let env = |name: &str, default: u64| {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let started = Instant::now();
    let topo = Topology::new();
    let cases = usize::try_from(env("CONFORMANCE_CASES", 200)).unwrap_or(200);
    let report = run_cases(&topo, env("CONFORMANCE_SEED", 1), cases);
    check(&report, started);
}
