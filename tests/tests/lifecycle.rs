//! Start-up reporting, health endpoints, and shutdown: SIGTERM leaves the programs attached
//! through their pins (a restart or rolling upgrade adopts them, with no enforcement gap), and
//! `sensor cleanup` then leaves no tc filter, tcx link, program or pin of ours in the kernel.

use std::{collections::BTreeSet, time::Duration};

use aya::programs::links::LinkType;
use sensor_e2e::{Netns, Sensor, Veth, privileged, run, unique, wait_until};

/// Program names as the kernel keeps them (15 bytes: both sched_process_* share a prefix).
/// Links (and programs) one sensor attaches: 2 tcx, 4 cgroup, 12 tracepoints, 6 raw tracepoints.
const LINKS: usize = 24;

const OUR_PROGRAMS: [&str; 19] = [
    "sys_enter_unlin",
    "sys_enter_link",
    "sys_enter_linka",
    "sys_enter_symli",
    "sys_enter_trunc",
    "exec_path",
    "exec_identity",
    "open_identity",
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

/// Program ids of the links pinned under `pins/links`.
fn pinned_link_programs(pins: &std::path::Path) -> BTreeSet<u32> {
    use aya::programs::links::{FdLink, PinnedLink};
    std::fs::read_dir(pins.join("links"))
        .expect("links pin dir")
        .filter_map(Result::ok)
        .filter_map(|e| PinnedLink::from_pin(e.path()).ok())
        .filter_map(|l| FdLink::from(l).info().ok())
        .map(|i| i.program_id())
        .collect()
}

#[test]
fn sigterm_keeps_pins_and_cleanup_leaves_no_filter_link_or_program_behind() {
    if !privileged() {
        return;
    }
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let iface = unique("veth");
    let _veth = Veth::new(&node, &pod, &iface, 4);
    let mut sensor = Sensor::start(&node, "", &[]);
    sensor.wait_metric("sensor_interface_attached", &[("interface", &iface)], |v| v == Some(1.0));

    // Ours are the programs our pinned links run (other agents may load theirs meanwhile:
    // the machine is shared).
    let ours: BTreeSet<u32> = pinned_link_programs(sensor.pins().path());
    let names: BTreeSet<String> = loaded_program_ids()
        .into_iter()
        .filter(|(id, _)| ours.contains(id))
        .map(|(_, name)| name)
        .collect();
    assert_eq!(ours.len(), LINKS, "expected our {LINKS} programs loaded, got {ours:?} {names:?}");
    assert!(names.iter().all(|n| OUR_PROGRAMS.contains(&n.as_str())), "{names:?}");
    assert_eq!(links_of(&ours, Some(LinkType::Tcx)), 2, "expected tcx ingress and egress links");
    assert_eq!(
        links_of(&ours, Some(LinkType::PerfEvent)),
        12,
        "expected exit and eleven unlink/rmdir/rename/link/symlink/truncate tracepoints"
    );
    assert_eq!(
        links_of(&ours, Some(LinkType::RawTracePoint)),
        6,
        "expected sys_enter, sys_exit, open_identity and the three sched_process_exec programs"
    );
    assert_eq!(links_of(&ours, Some(LinkType::Cgroup)), 4, "expected bind and connect hooks");

    let status = sensor.terminate();
    assert!(status.success(), "sensor exit status {status}:\n{}", sensor.log());
    assert!(sensor.log().contains("stopped: programs stay attached"), "{}", sensor.log());
    // SIGTERM keeps everything attached through the pins (DESIGN: no gap across a restart).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(links_of(&ours, Some(LinkType::Tcx)), 2, "tcx links gone after SIGTERM");
    assert_eq!(links_of(&ours, None), LINKS, "links gone after SIGTERM");

    let pins = sensor.pins();
    let pin_dir = pins.path().to_owned();
    assert!(pin_dir.join("links").is_dir(), "no pins under {}", pin_dir.display());
    let (status, out) = pins.cleanup();
    assert!(status.success(), "sensor cleanup: {status} {out}");
    // LINKS links + 2 tc programs + the state maps.
    assert!(out.starts_with("removed "), "{out}");
    let removed: usize =
        out.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_default();
    assert!(removed >= LINKS + 2, "{out}");
    assert!(!pin_dir.exists(), "{} left after cleanup", pin_dir.display());

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
    // Cleanup of an absent directory is not an error (uninstall twice).
    let (status, out) = pins.cleanup();
    assert!(status.success() && out.starts_with("removed 0 "), "{status} {out}");
}

/// An upgrade (here: other map sizes, so the pins cannot be adopted) loads the new programs,
/// attaches them, then detaches the old ones: afterwards exactly one set of links runs, all
/// of them new, and the old programs are gone.
#[test]
fn a_start_with_another_object_replaces_every_link_once() {
    if !privileged() {
        return;
    }
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let iface = unique("veth");
    let _veth = Veth::new(&node, &pod, &iface, 5);
    let mut first = Sensor::start(&node, "", &[]);
    first.wait_metric("sensor_interface_attached", &[("interface", &iface)], |v| v == Some(1.0));
    let pins = first.pins();
    let old = pinned_link_programs(pins.path());
    assert_eq!(old.len(), LINKS, "{old:?}");
    assert!(first.terminate().success(), "{}", first.log());

    let second = Sensor::start_with_pins(&node, "conntrack: {max_entries: 65536}\n", &[], pins);
    second.wait_metric("sensor_interface_attached", &[("interface", &iface)], |v| v == Some(1.0));
    assert!(second.log().contains(&format!("replacing={LINKS}")), "{}", second.log());
    let new = pinned_link_programs(second.pins().path());
    assert_eq!(new.len(), LINKS, "{new:?}");
    assert!(new.is_disjoint(&old), "old programs still pinned: {old:?} {new:?}");
    wait_until("the old links to be detached", Duration::from_secs(10), || {
        (links_of(&old, None) == 0).then_some(())
    });
    assert_eq!(links_of(&new, None), LINKS, "expected exactly one set of links");
    assert_eq!(links_of(&new, Some(LinkType::Tcx)), 2);
}

#[test]
fn startup_log_states_map_memory() {
    if !privileged() {
        return;
    }
    let node = Netns::new("node");
    let sensor = Sensor::start(&node, "conntrack: {max_entries: 65536}\n", &[]);
    let log = sensor.log();
    let line = log
        .lines()
        .find(|l| l.contains("eBPF maps take"))
        .unwrap_or_else(|| panic!("no map memory line in:\n{log}"));
    let mib: f64 = line
        .split("eBPF maps take ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {line}"));
    // Conntrack alone is 65536 entries of about 100 bytes: several MiB; far below a GiB.
    assert!(mib > 1.0 && mib < 1024.0, "{line}");
    assert!(line.contains("CONNTRACK="), "largest maps not named: {line}");
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
    // The HTTP surface is read-only: anything but GET/HEAD is refused.
    for (method, path) in [("POST", "/metrics"), ("PUT", "/readyz"), ("DELETE", "/healthz")] {
        assert_eq!(sensor.request(method, path), 405, "{method} {path}");
    }
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
