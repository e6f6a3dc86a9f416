//! The bench's world: Ctrl-C handling, network namespaces and veth pairs (removed on drop),
//! cgroups (emptied and removed on drop), child processes (killed on drop), the sensor in the
//! node namespace with a pin directory of its own (`sensor cleanup` on drop), sysctl guards,
//! and the machine description for the report.
//!
//! Everything lives in namespaces, cgroups, bpffs directories and temp directories this
//! process creates (`sbench-<pid>-*`), with addresses from 10.200.0.0/16 on interfaces it
//! made; nothing touches the machine's own interfaces.

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

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A progress line on stderr, with the seconds since the first one.
pub fn progress(msg: std::fmt::Arguments<'_>) {
    let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("bench: [{t:6.1} s] {msg}");
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

/// Whether `name` is `sbench-<pid>-…` of a process that is gone (a run killed with SIGKILL).
fn is_stale(name: &str) -> bool {
    let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
        return false;
    };
    pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists()
}

/// Removes what a killed run left: `sbench-<pid>-*` namespaces, pin directories (with
/// `sensor cleanup`, which detaches their links) and cgroups whose process is gone.
pub fn remove_stale(sensor_bin: &Path) {
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if is_stale(name) {
                eprintln!("bench: removing stale namespace {name}");
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }
    for (root, what) in [(PathBuf::from(BPFFS), "pin directory"), (cgroup2_root(), "cgroup")] {
        let Ok(entries) = fs::read_dir(&root) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_stale(&name) {
                continue;
            }
            eprintln!("bench: removing stale {what} {}", entry.path().display());
            if what == "cgroup" {
                remove_cgroup_tree(&entry.path());
            } else {
                cleanup_pins(sensor_bin, &entry.path());
            }
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

/// Where bpffs is mounted (the sensor mounts it when missing).
const BPFFS: &str = "/sys/fs/bpf";

/// `sensor cleanup --bpf-pin-dir DIR`: removes the pins, which detaches the links the sensor
/// left attached (its programs stay in the kernel through them after SIGTERM, by design).
fn cleanup_pins(sensor_bin: &Path, dir: &Path) {
    if !dir.exists() {
        return;
    }
    let result = output(Command::new(sensor_bin).arg("cleanup").arg("--bpf-pin-dir").arg(dir));
    if let Err(e) = result {
        eprintln!("bench: {e}");
    }
    let _ = fs::remove_dir(dir);
}

/// The real sensor binary running in the node namespace with a config file and a pin
/// directory of its own; stopping it (drop) also removes its pins, so no program of it stays
/// attached after the configuration that started it.
pub struct Sensor {
    proc: Option<Proc>,
    node: PathBuf,
    bin: PathBuf,
    pins: PathBuf,
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
        // Config and log go to a directory of their own: the sensor reloads on any change in
        // the directories it watches (the policy directory and the endpoints file's), so a log
        // written there would make it reload after each of its own log lines.
        let own = dir.join(format!("agent-{tag}"));
        fs::create_dir_all(&own)?;
        let config = own.join("sensor.yaml");
        fs::write(&config, config_yaml)?;
        let log = own.join("sensor.log");
        let pins = PathBuf::from(BPFFS).join(format!("{PREFIX}{}-{tag}", std::process::id()));
        // A previous start of this configuration in this run was stopped and cleaned up; a
        // leftover would be adopted instead of loaded: remove it.
        cleanup_pins(bin, &pins);
        let mut cmd = node.command(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--metrics-addr", &format!("127.0.0.1:{SENSOR_PORT}")])
            .args(["--node-name", "bench-node"])
            .arg("--bpf-pin-dir")
            .arg(&pins)
            // Records go to the config's outputs (stdout by default): a sink nobody reads.
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        let proc = Proc::spawn(&mut cmd, "sensor")?;
        let mut sensor =
            Self { proc: Some(proc), node: node.path(), bin: bin.to_path_buf(), pins, log };
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            sensor.check_alive()?;
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
        self.proc.as_ref().map_or(0, Proc::pid)
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let Some(proc) = self.proc.as_mut() else { bail!("sensor already stopped") };
        if let Err(e) = proc.check_alive() {
            bail!("{e}; log:\n{}", self.log_text());
        }
        Ok(())
    }

    /// The sensor's /metrics text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        match self.get("/metrics")? {
            (200, body) => Ok(body),
            (code, body) => bail!("GET /metrics: HTTP {code}: {body}"),
        }
    }

    /// Polls /metrics until the sum of `name`'s samples satisfies `pred`, for at most
    /// `timeout`; returns that sum.
    pub fn wait_metric(
        &mut self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        let end = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let value = metric_sum(&self.metrics()?, name);
            if pred(value) {
                return Ok(value);
            }
            if Instant::now() > end {
                bail!("metric {name} still {value} after {timeout:?}");
            }
            sleep(Duration::from_millis(50))?;
        }
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

impl Drop for Sensor {
    fn drop(&mut self) {
        // SIGTERM (the agent keeps its pins), then remove the pins: links detach.
        drop(self.proc.take());
        cleanup_pins(&self.bin, &self.pins);
    }
}

/// Sum of every sample of metric `name` (any labels) in Prometheus text; counters may be
/// given with or without their `_total` suffix.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    let total = format!("{name}_total");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name || metric == total).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid
/// hosts), from mountinfo.
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// A cgroup v2 leaf `<root>/sbench-<pid>-cg/<leaf>` for the bench's processes (the leaf named
/// like a container runtime's scope when a host policy should select it); its processes are
/// killed and the directories removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(leaf: &str) -> anyhow::Result<Self> {
        let parent = cgroup2_root().join(format!("{PREFIX}{}-cg", std::process::id()));
        if !parent.exists() {
            fs::create_dir(&parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let path = parent.join(leaf);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// The file a process writes "0" to in order to move itself here.
    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
        if let Some(parent) = self.path.parent() {
            // Fails while another leaf of this run is still there; the last one removes it.
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Kills a cgroup's processes and removes it (rmdir fails with EBUSY until they are gone:
/// polled for 5 s at most).
fn remove_cgroup(path: &Path) {
    let _ = fs::write(path.join("cgroup.kill"), "1");
    let end = Instant::now() + Duration::from_secs(5);
    while fs::remove_dir(path).is_err() && path.exists() {
        if Instant::now() > end {
            eprintln!("bench: could not remove cgroup {}", path.display());
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stale run's cgroup directory and its leaves.
fn remove_cgroup_tree(path: &Path) {
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            remove_cgroup(&entry.path());
        }
    }
    remove_cgroup(path);
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
    // BPF links already attached before the bench starts (another agent, a leftover of a
    // killed test): they run in every configuration, the baselines included.
    let links = Command::new("bpftool")
        .args(["link", "show", "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v.as_array().cloned())
        .map_or_else(
            || "unknown (bpftool missing)".to_owned(),
            |links| {
                let mut types: Vec<&str> =
                    links.iter().filter_map(|l| l["type"].as_str()).collect();
                types.sort_unstable();
                types.dedup();
                format!("{} ({})", links.len(), types.join(", "))
            },
        );
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
        ("bpf_links_at_start", links),
        ("spectre_v2", read("/sys/devices/system/cpu/vulnerabilities/spectre_v2")),
    ]
}
