//! Container and pod attribution end to end, for every cgroup layout the runtimes make:
//! cgroups the test creates, named as containerd, CRI-O, Docker and Podman name theirs under
//! the systemd and cgroupfs drivers, and cgroups made inside a container's cgroup (systemd or
//! Docker inside the container). A HostPolicy scoped to the pod must reach every one of them.

use std::{
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sensor_e2e::{Cgroup, Sensor, pod::ContainerPod, privileged};

fn policy(data: &str, action: &str) -> String {
    format!(
        "apiVersion: sensor.dev/v1alpha1
kind: HostPolicy
metadata: {{name: attribution}}
spec:
  selector: {{namespaces: [shop], podSelector: {{matchLabels: {{app: web}}}}}}
  action: {action}
  files: [{{prefix: {data}/secret/, access: [read]}}]
"
    )
}

/// Runs `cat <file>` in `cgroup`; returns whether it succeeded.
fn cat_in(cgroup: &Cgroup, file: &str) -> bool {
    let mut child = cgroup
        .spawn(Command::new("/bin/cat").arg(file).stdout(Stdio::null()).stderr(Stdio::null()));
    child.wait().expect("wait").success()
}

fn exec_in(sensor: &Sensor, cgroup: u64, comm: &str) -> serde_json::Value {
    sensor.wait_event(&format!("{comm} exec in cgroup {cgroup}"), |v| {
        v["process_exec"]["process"]["cgroup_id"] == cgroup
            && v["process_exec"]["process"]["comm"] == comm
    })
}

fn file_record(sensor: &Sensor, cgroup: u64, action: &str) -> serde_json::Value {
    sensor.wait_event(&format!("{action} file record in cgroup {cgroup}"), |v| {
        v["process_file"]["process"]["cgroup_id"] == cgroup && v["process_file"]["action"] == action
    })
}

/// A cgroup path below the test's parent, from the container id.
type Layout = fn(&str) -> String;

/// The cgroup layouts of the runtimes (and drivers), each with the runtime the record names.
fn layouts() -> Vec<(&'static str, Layout)> {
    vec![
        ("containerd", |id| {
            format!(
                "kubepods-besteffort-pod0b9d2a4e_1111_2222_3333_444455556666.slice:cri-containerd:{id}"
            )
        }),
        ("containerd", |id| {
            format!("kubepods.slice/kubepods-burstable.slice/cri-containerd-{id}.scope")
        }),
        ("cri-o", |id| format!("kubepods.slice/crio-{id}.scope")),
        ("cri-o", |id| format!("kubepods.slice/kubepods-pod1.slice:crio:{id}")),
        ("cri-o", |id| {
            format!("kubepods/besteffort/pod0b9d2a4e-1111-2222-3333-444455556666/crio-{id}")
        }),
        ("docker", |id| format!("system.slice/docker-{id}.scope")),
        ("docker", |id| format!("docker/{id}")),
        ("podman", |id| format!("machine.slice/libpod-{id}.scope")),
        ("podman", |id| format!("libpod_parent/libpod-{id}")),
        ("cri", |id| format!("kubepods/burstable/pod0b9d2a4e-1111-2222-3333-444455556666/{id}")),
    ]
}

#[test]
fn every_runtime_naming_gets_its_container_pod_and_policy() {
    if !privileged() {
        return;
    }
    for (runtime, leaf) in layouts() {
        let pod = ContainerPod::named("se2e-attr-", leaf);
        let data = pod.data();
        fs::create_dir_all(pod.dir.join("policies")).expect("mkdir");
        fs::write(pod.dir.join("policies/host.yaml"), policy(&data, "Audit")).expect("policy");
        let config = format!(
            "mode: detect\npolicy_dir: {}\nendpoints_file: {}\n",
            pod.dir.join("policies").display(),
            pod.dir.join("endpoints.yaml").display()
        );
        let sensor = Sensor::start(&pod.node, &config, &[]);
        sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v >= Some(1.0));
        let path = pod.cgroup.path.display().to_string();
        assert!(cat_in(&pod.cgroup, &format!("{data}/secret/token")), "{path}");
        let id = pod.cgroup.id();
        let exec = exec_in(&sensor, id, "cat");
        let process = &exec["process_exec"]["process"];
        assert_eq!(process["container"]["id"], pod.container_id, "{path}: {exec}");
        assert_eq!(process["container"]["runtime"], runtime, "{path}: {exec}");
        assert_eq!(process["pod"]["name"], "web-1", "{path}: {exec}");
        let audit = file_record(&sensor, id, "audit");
        assert_eq!(audit["process_file"]["policy_name"], "attribution", "{path}: {audit}");
    }
}

/// Cgroups made inside the container's (`init.scope` of a systemd in the container, a
/// Docker-in-Docker container, deep nesting) keep the container, the pod and the policy, and
/// are in the kernel's scope map within milliseconds of their mkdir.
#[test]
fn child_cgroups_inherit_container_pod_and_enforcement() {
    if !privileged() {
        return;
    }
    let pod = ContainerPod::new("se2e-nest-");
    let data = pod.data();
    fs::create_dir_all(pod.dir.join("policies")).expect("mkdir");
    fs::write(pod.dir.join("policies/host.yaml"), policy(&data, "Block")).expect("policy");
    let config = format!(
        "mode: enforce\npolicy_dir: {}\nendpoints_file: {}\n",
        pod.dir.join("policies").display(),
        pod.dir.join("endpoints.yaml").display()
    );
    let sensor = Sensor::start(&pod.node, &config, &[]);
    sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v == Some(1.0));
    let secret = format!("{data}/secret/token");
    assert!(!cat_in(&pod.cgroup, &secret), "control: blocked in the container's own cgroup");

    let deep = "a/".repeat(20);
    let nested = [
        "init.scope".to_owned(),
        format!("docker/{}", "d".repeat(64)),
        format!("system.slice/docker-{}.scope", "e".repeat(64)),
        format!("{deep}leaf"),
    ];
    let mut children = Vec::new();
    for relative in &nested {
        let before = sensor.metrics().get("sensor_host_watched_cgroups", &[]).unwrap_or(0.0);
        let made = Instant::now();
        let child = pod.cgroup.child(relative);
        // Event-driven: the mkdir wakes a rescan (measured 8-40 ms here); the periodic one is
        // 1 s apart, so all four under 300 ms by chance is under 1 %.
        let made_dirs = relative.split('/').count() as f64;
        sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v >= Some(before + made_dirs));
        let latency = made.elapsed();
        eprintln!("{relative}: scoped {:.1} ms after mkdir", latency.as_secs_f64() * 1e3);
        assert!(latency < Duration::from_millis(300), "{relative}: {latency:?}");
        assert!(!cat_in(&child, &secret), "{relative}: read must be blocked");
        let id = child.id();
        let blocked = file_record(&sensor, id, "blocked");
        let process = &blocked["process_file"]["process"];
        assert_eq!(process["container"]["id"], pod.container_id, "{relative}: {blocked}");
        assert_eq!(process["pod"]["name"], "web-1", "{relative}: {blocked}");
        let exec = exec_in(&sensor, id, "cat");
        assert_eq!(
            exec["process_exec"]["process"]["container"]["id"], pod.container_id,
            "{relative}: {exec}"
        );
        children.push(child);
    }
    // Dropped innermost first, before the container's cgroup.
    while let Some(child) = children.pop() {
        drop(child);
    }
}

/// `ip netns exec` gives the agent a mount namespace with `/sys` remounted: no cgroup v2
/// hierarchy, no bpffs. The agent mounts what it needs and still attributes and enforces.
#[test]
fn starts_under_ip_netns_exec_and_attributes() {
    if !privileged() {
        return;
    }
    let pod = ContainerPod::new("se2e-ipns-");
    let data = pod.data();
    fs::create_dir_all(pod.dir.join("policies")).expect("mkdir");
    fs::write(pod.dir.join("policies/host.yaml"), policy(&data, "Audit")).expect("policy");
    let config = pod.dir.join("config.yaml");
    fs::write(
        &config,
        format!(
            "mode: detect\npolicy_dir: {}\nendpoints_file: {}\n",
            pod.dir.join("policies").display(),
            pod.dir.join("endpoints.yaml").display()
        ),
    )
    .expect("config");
    let wrapper: Vec<String> =
        ["ip", "netns", "exec", pod.node.name.as_str()].iter().map(|s| (*s).to_owned()).collect();
    let argv: Vec<String> = [
        "run",
        "--config",
        &config.display().to_string(),
        "--metrics-addr",
        &format!("127.0.0.1:{}", sensor_e2e::sensor::PORT),
        "--node-name",
        "e2e-node",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let sensor = Sensor::start_argv(&pod.node, &wrapper, &argv);
    assert!(sensor.log().contains("no cgroup v2 hierarchy"), "{}", sensor.log());
    sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v >= Some(1.0));
    assert!(cat_in(&pod.cgroup, &format!("{data}/secret/token")));
    let id = pod.cgroup.id();
    let exec = exec_in(&sensor, id, "cat");
    assert_eq!(exec["process_exec"]["process"]["container"]["id"], pod.container_id, "{exec}");
    assert_eq!(exec["process_exec"]["process"]["pod"]["name"], "web-1", "{exec}");
    file_record(&sensor, id, "audit");
}

/// A node-level check that the scanner is not fooled: a host cgroup named like a container
/// of no known pod is attributed to that container but selected by no pod policy.
#[test]
fn a_container_of_no_known_pod_is_not_policed() {
    if !privileged() {
        return;
    }
    let pod = ContainerPod::new("se2e-unk-");
    let data = pod.data();
    let stranger = Cgroup::named(&format!("cri-containerd-{}.scope", "c".repeat(64)));
    fs::create_dir_all(pod.dir.join("policies")).expect("mkdir");
    fs::write(pod.dir.join("policies/host.yaml"), policy(&data, "Block")).expect("policy");
    let config = format!(
        "mode: enforce\npolicy_dir: {}\nendpoints_file: {}\n",
        pod.dir.join("policies").display(),
        pod.dir.join("endpoints.yaml").display()
    );
    let sensor = Sensor::start(&pod.node, &config, &[]);
    sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v >= Some(1.0));
    assert!(cat_in(&stranger, &format!("{data}/secret/token")), "not the pod's container");
    let exec = exec_in(&sensor, stranger.id(), "cat");
    assert_eq!(exec["process_exec"]["process"]["container"]["id"], "c".repeat(64), "{exec}");
    assert!(exec["process_exec"]["process"].get("pod").is_none(), "{exec}");
}
