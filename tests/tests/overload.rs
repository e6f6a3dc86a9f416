//! Overload: a flood of host events (a tight exec loop and a tight open loop on an audited
//! path, in a test container's cgroup) and of new flows (UDP to many ports between two test
//! namespaces), all at once. The agent's memory stays bounded, `/metrics` keeps answering
//! within a second, every event is either reported or counted as lost, and the agent reports
//! normally once the flood is over.

use std::{
    fs,
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use sensor_e2e::{Cgroup, Netns, Sensor, Veth, privileged, unique, wait_until};

const EXECS: usize = 2000;
const OPENS: usize = 50_000;
const PORTS: u16 = 5000;
const FIRST_PORT: u16 = 20_000;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn metric_sum(sensor: &Sensor, name: &str) -> f64 {
    let m = sensor.metrics();
    assert!(m.text.contains(&format!("# TYPE {name} counter")), "{name} missing:\n{}", m.text);
    m.text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_total")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_flood_of_host_events_and_flows_is_bounded_counted_and_survived() {
    if !privileged() {
        return;
    }
    let dir = Dir(std::env::temp_dir().join(unique("se2e-flood-")));
    for sub in ["policies", "data/flood", "data/bin"] {
        fs::create_dir_all(dir.0.join(sub)).expect("mkdir");
    }
    let data = fs::canonicalize(dir.0.join("data")).expect("canonical").display().to_string();
    let target = format!("{data}/flood/file");
    fs::write(&target, "x").expect("flood file");
    let flood_bin = format!("{data}/bin/flood-true");
    fs::copy("/bin/true", &flood_bin).expect("copy true");
    let after_bin = format!("{data}/bin/after-true");
    fs::copy("/bin/true", &after_bin).expect("copy true");
    let container_id = format!("{:0>64x}", u128::from(std::process::id()) << 40 | 0xf100d);
    fs::write(
        dir.0.join("endpoints.yaml"),
        format!(
            "endpoints:\n- {{namespace: shop, name: web-1, labels: {{app: web}}, containers: [\"containerd://{container_id}\"]}}\n"
        ),
    )
    .expect("endpoints");
    fs::write(
        dir.0.join("policies/host.yaml"),
        format!(
            "apiVersion: sensor.dev/v1alpha1
kind: HostPolicy
metadata: {{name: flood-audit}}
spec:
  selector: {{namespaces: [shop], podSelector: {{matchLabels: {{app: web}}}}}}
  action: Audit
  files: [{{prefix: {data}/flood/, access: [read]}}]
"
        ),
    )
    .expect("policy");
    let cgroup = Cgroup::named(&format!("cri-containerd-{container_id}.scope"));

    let node = Netns::new("node");
    let client = Netns::new("cli");
    let server = Netns::new("srv");
    let client_veth = Veth::new(&node, &client, &unique("vethc"), 210);
    let server_veth = Veth::new(&node, &server, &unique("veths"), 211);
    client_veth.route_via_node(&node, &client);
    server_veth.route_via_node(&node, &server);

    let config = format!(
        "policy_dir: {}\nendpoints_file: {}\n",
        dir.0.join("policies").display(),
        dir.0.join("endpoints.yaml").display()
    );
    let sensor = Sensor::start(&node, &config, &[]);
    sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v >= Some(1.0));
    let pid = sensor.pid();
    let rss_before = rss_kib(pid);
    let host_lost_before = metric_sum(&sensor, "sensor_lost_events");
    let net_lost_before = metric_sum(&sensor, "hubble_lost_events");
    // Lines the stdout output dropped (its queue full) are counted there, never silently.
    let output_dropped_before = metric_sum(&sensor, "sensor_output_dropped");

    let started = Instant::now();
    let flood_done = std::sync::atomic::AtomicBool::new(false);
    let (sent, worst_metrics) = std::thread::scope(|s| {
        let execs = s.spawn(|| {
            let script = format!("i=0; while [ $i -lt {EXECS} ]; do {flood_bin}; i=$((i+1)); done");
            let mut child = cgroup.spawn(Command::new("/bin/sh").args(["-c", &script]));
            assert!(child.wait().expect("wait exec loop").success());
        });
        let opens = s.spawn(|| {
            let script = format!(
                "import os\nfor _ in range({OPENS}):\n    os.close(os.open({target:?}, os.O_RDONLY))\n"
            );
            let mut child = cgroup.spawn(Command::new("python3").args(["-c", &script]));
            assert!(child.wait().expect("wait open loop").success());
        });
        let flows = s.spawn(|| {
            let sender =
                client.enter(|| UdpSocket::bind((client_veth.pod_ip, 0)).expect("bind sender"));
            let mut sent = 0_usize;
            for port in FIRST_PORT..FIRST_PORT + PORTS {
                let to = SocketAddr::from((server_veth.pod_ip, port));
                if sender.send_to(b"flood", to).is_ok() {
                    sent += 1;
                }
            }
            sent
        });
        // /metrics while the flood runs: curl's own time_total, every 200 ms.
        let prober = s.spawn(|| {
            let mut worst = 0.0_f64;
            let mut probes = 0;
            while !flood_done.load(std::sync::atomic::Ordering::Acquire)
                && started.elapsed() < Duration::from_secs(120)
            {
                let (status, secs) = sensor.get_timed("/metrics");
                assert_eq!(status, 200, "/metrics failed during the flood");
                worst = worst.max(secs);
                probes += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            (worst, probes)
        });
        execs.join().expect("exec loop");
        opens.join().expect("open loop");
        let sent = flows.join().expect("flows");
        flood_done.store(true, std::sync::atomic::Ordering::Release);
        (sent, prober.join().expect("prober"))
    });
    let flood_secs = started.elapsed().as_secs_f64();
    let (worst, probes) = worst_metrics;
    eprintln!(
        "flood: {EXECS} execs, {OPENS} opens, {sent}/{PORTS} datagrams in {flood_secs:.1}s; \
         /metrics worst {worst:.3}s over {probes} probes"
    );
    assert!(probes >= 1, "no /metrics probe ran during the flood");
    assert!(worst < 1.0, "/metrics took {worst:.3}s during the flood");

    // Every operation is either a record or a counted loss (in the kernel, or a line the
    // stdout output dropped). Losses are not attributed to a process, so the other processes
    // of the machine can only add to them: records of ours plus every loss must reach the
    // number of operations (and records alone never exceed it).
    let count = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        sensor.events().iter().filter(|v| pred(v)).count()
    };
    let execs_seen =
        || count(&|v| v["process_exec"]["process"]["binary"].as_str() == Some(flood_bin.as_str()));
    let opens_seen = || count(&|v| v["process_file"]["path"].as_str() == Some(target.as_str()));
    let server_ip = server_veth.pod_ip.to_string();
    let flows_seen = || {
        count(&|v| {
            v["flow"]["IP"]["destination"].as_str() == Some(server_ip.as_str())
                && v["flow"]["l4"]["UDP"]["destination_port"].as_u64().is_some_and(|p| {
                    (u64::from(FIRST_PORT)..u64::from(FIRST_PORT + PORTS)).contains(&p)
                })
        })
    };
    let mut last = (0, 0, 0, 0.0, 0.0);
    let accounted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("every flood event reported or counted lost", Duration::from_secs(60), || {
            let output_dropped =
                metric_sum(&sensor, "sensor_output_dropped") - output_dropped_before;
            let host_lost =
                metric_sum(&sensor, "sensor_lost_events") - host_lost_before + output_dropped;
            let net_lost =
                metric_sum(&sensor, "hubble_lost_events") - net_lost_before + output_dropped;
            last = (execs_seen(), opens_seen(), flows_seen(), host_lost, net_lost);
            let (e, o, f, hl, nl) = last;
            let host_ok = (e + o) as f64 + hl >= (EXECS + OPENS) as f64;
            // Each datagram is a new flow at the client's interface at least.
            let net_ok = f as f64 + nl >= sent as f64;
            (host_ok && net_ok).then_some(())
        })
    }));
    let (e, o, f, hl, nl) = last;
    eprintln!("records: {e} execs, {o} opens, {f} flows; lost: {hl} host events, {nl} flow events");
    assert!(
        accounted.is_ok(),
        "uncounted losses: {e}/{EXECS} execs + {o}/{OPENS} opens + {hl} lost host events, \
         {f} flow records + {nl} lost for {sent} datagrams"
    );
    assert!(e <= EXECS && o <= OPENS, "duplicate records: {e} execs, {o} opens");

    let rss_after = rss_kib(pid);
    eprintln!("agent VmRSS: {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 200 * 1024 && rss_after < 512 * 1024,
        "agent RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // Recovered: a normal event after the flood is reported.
    let mut child = cgroup.spawn(&mut Command::new(&after_bin));
    assert!(child.wait().expect("wait").success());
    sensor.wait_event("an exec after the flood", |v| {
        v["process_exec"]["process"]["binary"].as_str() == Some(after_bin.as_str())
    });
    assert_eq!(sensor.get("/healthz").0, 200);
}
