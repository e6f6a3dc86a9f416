//! Start-up reporting, health endpoints, and clean shutdown: after SIGTERM no tc filter, tcx
//! link or program of ours is left in the kernel.

use std::{collections::BTreeSet, time::Duration};

use aya::programs::links::LinkType;
use sensor_e2e::{Netns, Sensor, Veth, privileged, run, unique, wait_until};

/// Program names as the kernel keeps them (15 bytes: both sched_process_* share a prefix).
const OUR_PROGRAMS: [&str; 12] = [
    "sys_enter_unlin",
    "sys_enter_rmdir",
    "sys_enter_renam",
    "tc_ingress",
    "tc_egress",
    "sched_process_e",
    "sys_enter",
    "sys_exit",
    "bind4",
    "bind6",
    "connect4",
    "connect6",
];

fn loaded_program_ids() -> BTreeSet<(u32, String)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Links (of any type, or only of `kind`) that point at one of `programs`.
fn links_of(programs: &BTreeSet<u32>, kind: Option<LinkType>) -> usize {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| programs.contains(&l.program_id()))
        .filter(|l| kind.is_none_or(|k| l.link_type().is_ok_and(|t| t == k)))
        .count()
}

#[test]
fn sigterm_leaves_no_filter_link_or_program_behind() {
    if !privileged() {
        return;
    }
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let iface = unique("veth");
    let _veth = Veth::new(&node, &pod, &iface, 4);
    let before = loaded_program_ids();
    let mut sensor = Sensor::start(&node, "", &[]);
    sensor.wait_metric("sensor_interface_attached", &[("interface", &iface)], |v| v == Some(1.0));

    let ours: BTreeSet<u32> = loaded_program_ids()
        .difference(&before)
        .filter(|(_, name)| OUR_PROGRAMS.contains(&name.as_str()))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(ours.len(), 16, "expected our 16 programs loaded, got {ours:?}");
    assert_eq!(links_of(&ours, Some(LinkType::Tcx)), 2, "expected tcx ingress and egress links");
    assert_eq!(
        links_of(&ours, Some(LinkType::PerfEvent)),
        8,
        "expected exec, exit and six unlink/rename tracepoints"
    );
    assert_eq!(links_of(&ours, Some(LinkType::RawTracePoint)), 2, "expected sys_enter/sys_exit");
    assert_eq!(links_of(&ours, Some(LinkType::Cgroup)), 4, "expected bind and connect hooks");

    let status = sensor.terminate();
    assert!(status.success(), "sensor exit status {status}:\n{}", sensor.log());
    assert!(sensor.log().contains("stopped: programs detached"), "{}", sensor.log());

    // Program memory is freed after an RCU grace period: wait, with a deadline.
    wait_until("our programs to be unloaded", Duration::from_secs(10), || {
        let still: Vec<_> =
            loaded_program_ids().into_iter().filter(|(id, _)| ours.contains(id)).collect();
        still.is_empty().then_some(())
    });
    assert_eq!(links_of(&ours, None), 0, "links left behind");
    for direction in ["ingress", "egress"] {
        let filters = run("tc", &["-n", &node.name, "filter", "show", "dev", &iface, direction]);
        assert!(filters.trim().is_empty(), "tc {direction} filters left: {filters}");
    }
    let qdiscs = run("tc", &["-n", &node.name, "qdisc", "show", "dev", &iface]);
    assert!(!qdiscs.contains("clsact"), "clsact qdisc left: {qdiscs}");
    let pins = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().contains("sensor"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(pins, 0, "objects pinned under /sys/fs/bpf");
}

#[test]
fn reports_features_and_serves_health_endpoints() {
    if !privileged() {
        return;
    }
    let node = Netns::new("node");
    let sensor = Sensor::start(&node, "log_format: json\n", &[]);
    assert_eq!(sensor.get("/healthz").0, 200);
    assert_eq!(sensor.get("/readyz").0, 200);
    assert_eq!(sensor.get("/nope").0, 404);

    let m = sensor.metrics();
    for feature in ["tc", "tracepoint", "ringbuf"] {
        assert_eq!(
            m.get("sensor_kernel_feature", &[("feature", feature)]),
            Some(1.0),
            "{}",
            m.text
        );
    }
    for feature in [
        "tcx",
        "cgroup_skb",
        "cgroup_sock_addr",
        "raw_tracepoint",
        "bpf_send_signal",
        "bpf_lsm",
        "fentry",
    ] {
        assert!(
            m.get("sensor_kernel_feature", &[("feature", feature)]).is_some(),
            "{feature}: {}",
            m.text
        );
    }
    assert!(m.text.ends_with("# EOF\n"), "not OpenMetrics: {}", m.text);

    // --log-format json: every log line on stderr is a JSON object, the feature line included.
    let log = sensor.log();
    let features_line = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .find(|v| v["message"].as_str().is_some_and(|m| m.starts_with("kernel features:")))
        .unwrap_or_else(|| panic!("no feature line in log:\n{log}"));
    assert!(
        features_line["message"].as_str().is_some_and(|m| m.contains("ringbuf=yes")),
        "{features_line}"
    );
}

#[test]
fn missing_capabilities_are_named_and_nothing_is_loaded() {
    if !privileged() {
        return;
    }
    // Root without CAP_BPF and CAP_SYS_ADMIN: the bounding set caps what exec grants.
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set=-bpf,-sys_admin", "--inh-caps=-all", "--"])
        .arg(sensor_e2e::sensor::sensor_bin())
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing privileges"), "{stderr}");
    assert!(stderr.contains("CAP_BPF") && stderr.contains("CAP_SYS_ADMIN"), "{stderr}");
    assert!(!stderr.contains("CAP_NET_ADMIN"), "{stderr}");
}
