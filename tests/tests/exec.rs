//! Exec events: a process started in a test cgroup shows up as a JSON line with its path,
//! pid and cgroup id.

use std::process::Command;

use sensor_e2e::{Cgroup, Netns, Sensor, privileged};

#[test]
fn exec_in_a_cgroup_is_reported_with_path_pid_and_cgroup_id() {
    if !privileged() {
        return;
    }
    let node = Netns::new("node");
    let sensor = Sensor::start(&node, "", &[]);
    let cgroup = Cgroup::new();
    let cgroup_id = cgroup.id();

    let mut child = cgroup.spawn(Command::new("/bin/true").arg("hello"));
    let pid = u64::from(child.id());
    assert!(child.wait().expect("wait").success());

    let event = sensor.wait_event("exec event for /bin/true in the test cgroup", |v| {
        v["process_exec"]["process"]["cgroup_id"] == cgroup_id
    });
    let process = &event["process_exec"]["process"];
    // The canonical path: /bin is a symlink to /usr/bin on current distributions.
    let canonical = std::fs::canonicalize("/bin/true").expect("canonical /bin/true");
    assert_eq!(process["binary"], canonical.to_str().expect("utf8"), "{event}");
    assert_eq!(process["arguments"], "hello", "{event}");
    assert_eq!(process["ppid"], std::process::id(), "{event}");
    assert_eq!(
        event["process_exec"]["parent"]["binary"],
        std::env::current_exe().expect("exe").to_str().expect("utf8"),
        "{event}"
    );
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(process["cwd"], cwd.to_str().expect("utf8"), "{event}");
    assert_eq!(process["pid"], pid, "{event}");
    assert_eq!(process["comm"], "true", "{event}");
    assert_eq!(process["uid"], 0, "{event}");
    assert_eq!(event["node_name"], "e2e-node", "{event}");
    assert!(event["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{event}");

    let m = sensor.metrics();
    assert!(
        m.get("sensor_events_total", &[("type", "exec")]).is_some_and(|v| v >= 1.0),
        "{}",
        m.text
    );
    assert_eq!(m.get("sensor_lost_events_total", &[("ring", "host")]), Some(0.0), "{}", m.text);
}
