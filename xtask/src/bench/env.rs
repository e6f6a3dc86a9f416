//! The bench's world: Ctrl-C handling, network namespaces and veth pairs (removed on drop),
//! child processes (killed on drop), the sensor in the node namespace, sysctl guards, and the
//! machine description for the report.
//!
//! Everything lives in namespaces this process creates (`sbench-<pid>-*`), with addresses
//! from 10.200.0.0/16 on interfaces it made; nothing touches the machine's own interfaces.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

unsafe extern "C" {
    /// libc's `signal(2)`, which std links anyway (xtask keeps its dependencies minimal).
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

extern "C" fn on_signal(_: i32) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM only set a flag: every wait checks it and returns an error, so the guards
/// unwind and remove what the bench made.
pub fn install_interrupt_handler() {
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;
    for sig in [SIGINT, SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { signal(sig, on_signal) };
    }
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps in small steps, returning early with an error on Ctrl-C.
pub fn sleep(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Runs a command to completion; its stdout, or an error with its stderr.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    check_interrupted()?;
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    output(Command::new(program).args(args))
}

/// Prefix of every namespace the bench creates; the pid tells stale ones (from a run that was
/// killed with SIGKILL) from a concurrent run's.
const PREFIX: &str = "sbench-";

/// Removes `sbench-<pid>-*` namespaces whose process is gone.
pub fn remove_stale_namespaces() {
    let Ok(list) = run("ip", &["netns", "list"]) else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            eprintln!("bench: removing stale namespace {name}");
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// A named network namespace with loopback up and IPv6 off, deleted on drop (which destroys
/// its interfaces, and with them both ends of each veth).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.run(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])?;
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `program` run inside the namespace. nsenter only switches the network namespace
    /// (unlike `ip netns exec`, which also remounts /sys), and execs, so the child's pid is
    /// the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        cmd
    }

    /// Like [`Self::command`], pinned to CPU 0 (taskset): the bench's traffic ends share one
    /// CPU, so request/response does not depend on waking an idle vCPU (bimodal on VMs) and
    /// the other CPU stays for the sensor.
    pub fn pinned(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .args(["--", "taskset", "-c", "0"])
            .arg(program);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let (program, rest) = args.split_first().context("empty command")?;
        output(self.command(program).args(rest))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stdin(Stdio::null()).status();
    }
}

/// client ns ↔ node ns ↔ server ns: two veth pairs whose host-side ends (`veth…`, so they
/// match the sensor's default interface globs) sit in the node namespace, which routes.
pub struct Topology {
    pub node: Netns,
    pub client: Netns,
    pub server: Netns,
    pub client_if: String,
    pub server_if: String,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
}

/// The client's /24 (a CIDR rule that matches the bench traffic) and the bench ports.
pub const CLIENT_NET: &str = "10.200.1.0/24";
pub const IPERF_PORT: u16 = 7001;
pub const RR_PORT: u16 = 7002;
pub const CRR_PORT: u16 = 7003;

impl Topology {
    pub fn new() -> anyhow::Result<Self> {
        let node = Netns::new("node")?;
        let client = Netns::new("cli")?;
        let server = Netns::new("srv")?;
        let tag = std::process::id() % 100_000;
        let (client_if, server_if) = (format!("vethbc{tag}"), format!("vethbs{tag}"));
        let client_ip = veth(&node, &client, &client_if, 1)?;
        let server_ip = veth(&node, &server, &server_if, 2)?;
        node.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // Connection-rate runs open tens of thousands of connections: widen the client's
        // port range and let it reuse TIME_WAIT ports (both per namespace).
        client.run(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ])?;
        server.run(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
        Ok(Self { node, client, server, client_if, server_if, client_ip, server_ip })
    }
}

/// A veth pair: `host_if` in `node`, `eth0` in `pod`, 10.200.<subnet>.0/30 between them,
/// static neighbours, and a route from the pod to 10.200.0.0/16 through the node. Returns
/// the pod's address.
fn veth(node: &Netns, pod: &Netns, host_if: &str, subnet: u8) -> anyhow::Result<Ipv4Addr> {
    let node_ip = Ipv4Addr::new(10, 200, subnet, 1);
    let pod_ip = Ipv4Addr::new(10, 200, subnet, 2);
    let node_mac = format!("02:c8:{subnet:02x}:00:00:01");
    let pod_mac = format!("02:c8:{subnet:02x}:00:00:02");
    let (n, p) = (node.name.as_str(), pod.name.as_str());
    run(
        "ip",
        &[
            "-n", n, "link", "add", host_if, "address", &node_mac, "type", "veth", "peer", "name",
            "eth0", "address", &pod_mac, "netns", p,
        ],
    )?;
    run("ip", &["-n", n, "addr", "add", &format!("{node_ip}/30"), "dev", host_if])?;
    run("ip", &["-n", p, "addr", "add", &format!("{pod_ip}/30"), "dev", "eth0"])?;
    let (pod_s, node_s) = (pod_ip.to_string(), node_ip.to_string());
    run(
        "ip",
        &["-n", n, "neigh", "add", &pod_s, "lladdr", &pod_mac, "dev", host_if, "nud", "permanent"],
    )?;
    run(
        "ip",
        &["-n", p, "neigh", "add", &node_s, "lladdr", &node_mac, "dev", "eth0", "nud", "permanent"],
    )?;
    run("ip", &["-n", n, "link", "set", host_if, "up"])?;
    run("ip", &["-n", p, "link", "set", "eth0", "up"])?;
    run("ip", &["-n", p, "route", "add", "10.200.0.0/16", "via", &node_s])?;
    Ok(pod_ip)
}

/// A child process, killed (SIGTERM, then SIGKILL after a grace period) on drop.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, what: &str) -> anyhow::Result<Self> {
        check_interrupted()?;
        let child = cmd.stdin(Stdio::null()).spawn().with_context(|| format!("spawning {what}"))?;
        Ok(Self { child, what: what.to_owned() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has already exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.what);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let end = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{PREFIX}{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Port the sensor serves metrics on, on the node namespace's loopback.
const SENSOR_PORT: u16 = 9990;

/// The real sensor binary running in the node namespace with a config file.
pub struct Sensor {
    proc: Proc,
    node: PathBuf,
    pub log: PathBuf,
}

impl Sensor {
    pub fn start(
        bin: &Path,
        node: &Netns,
        dir: &Path,
        tag: &str,
        config_yaml: &str,
    ) -> anyhow::Result<Self> {
        let config = dir.join(format!("sensor-{tag}.yaml"));
        fs::write(&config, config_yaml)?;
        let log = dir.join(format!("sensor-{tag}.log"));
        let mut cmd = node.command(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--metrics-addr", &format!("127.0.0.1:{SENSOR_PORT}")])
            .args(["--node-name", "bench-node"])
            // Flow records are written as in production, to a sink nobody reads.
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        let proc = Proc::spawn(&mut cmd, "sensor")?;
        let mut sensor = Self { proc, node: node.path(), log };
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            if let Err(e) = sensor.proc.check_alive() {
                bail!("{e}; log:\n{}", sensor.log_text());
            }
            if sensor.get("/readyz").is_ok_and(|(code, _)| code == 200) {
                return Ok(sensor);
            }
            if Instant::now() > end {
                bail!("sensor not ready after 90 s; log:\n{}", sensor.log_text());
            }
            sleep(Duration::from_millis(100))?;
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.proc.check_alive().with_context(|| format!("log:\n{}", self.log_text()))
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (HTTP status, body) of a GET on the sensor's server, with curl in the node namespace.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.node.display()))
            .args(["--", "curl", "-s", "-m", "2", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{SENSOR_PORT}{path}"))
            .stdin(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
    }
}

/// Sets a sysctl (by /proc/sys path) and restores its previous value on drop.
pub struct SysctlGuard {
    path: PathBuf,
    previous: String,
}

impl SysctlGuard {
    pub fn set(key: &str, value: &str) -> anyhow::Result<Self> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let previous = fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned();
        fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { path, previous })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.previous) {
            eprintln!("bench: could not restore {}: {e}", self.path.display());
        }
    }
}

/// Kernel, CPU, virtualisation and BPF settings for the report header.
pub fn machine() -> Vec<(&'static str, String)> {
    let read = |p: &str| fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let hypervisor_flag = field("flags").split_whitespace().any(|f| f == "hypervisor");
    let detect =
        run("systemd-detect-virt", &[]).map(|s| s.trim().to_owned()).unwrap_or_else(|_| {
            // Exits 1 and prints "none" on bare metal; absent on minimal systems.
            "unavailable".to_owned()
        });
    let dmi = [read("/sys/class/dmi/id/sys_vendor"), read("/sys/class/dmi/id/product_name")]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let vm = if hypervisor_flag || !matches!(detect.as_str(), "none" | "unavailable" | "") {
        "yes"
    } else {
        "no"
    };
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let date = run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default();
    vec![
        ("date", date.trim().to_owned()),
        ("kernel", read("/proc/sys/kernel/osrelease")),
        ("cpu_model", field("model name")),
        ("cpus", cpus.to_string()),
        ("vm", vm.to_owned()),
        (
            "virtualization",
            format!(
                "systemd-detect-virt: {detect}; cpuinfo hypervisor flag: {hypervisor_flag}; dmi: {}",
                if dmi.is_empty() { "unavailable" } else { &dmi }
            ),
        ),
        ("bpf_jit_enable", read("/proc/sys/net/core/bpf_jit_enable")),
        ("spectre_v2", read("/sys/devices/system/cpu/vulnerabilities/spectre_v2")),
    ]
}
