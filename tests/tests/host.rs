//! Host security end to end: real processes in test cgroups named like containerd's, an
//! endpoints file naming their pod, and HostPolicy files; the real kernel hooks decide.

use std::{
    fs,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    process::{Command, ExitStatus},
    time::Duration,
};

use sensor_e2e::{Sensor, pod::ContainerPod, privileged};

/// The test pod (see [`ContainerPod`]) with `policies/` and a `data/bin/` of executables.
struct Pod(ContainerPod);

impl std::ops::Deref for Pod {
    type Target = ContainerPod;
    fn deref(&self) -> &ContainerPod {
        &self.0
    }
}

fn pod() -> Pod {
    let pod = ContainerPod::new("se2e-host-");
    for sub in ["policies", "data/bin"] {
        fs::create_dir_all(pod.dir.join(sub)).expect("mkdir");
    }
    fs::copy("/bin/true", pod.dir.join("data/bin/true")).expect("copy true");
    Pod(pod)
}

impl Pod {
    fn start(&self, mode: &str, policy: &str) -> Sensor {
        fs::write(self.dir.join("policies/host.yaml"), policy).expect("policy");
        let config = format!(
            "mode: {mode}\npolicy_dir: {}\nendpoints_file: {}\n",
            self.dir.join("policies").display(),
            self.dir.join("endpoints.yaml").display()
        );
        let sensor = Sensor::start(&self.node, &config, &[]);
        if !policy.is_empty() {
            // The policy is in force for our container once its cgroup is watched.
            sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v >= Some(1.0));
        }
        sensor
    }

    /// Runs `sh -c script` inside the container's cgroup.
    fn sh(&self, script: &str) -> (ExitStatus, String) {
        let child = self.cgroup.spawn(
            Command::new("/bin/sh")
                .args(["-c", script])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null()),
        );
        let out = child.wait_with_output().expect("wait");
        (out.status, String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn probe_bind(&self, proto: &str, port: u16) -> i32 {
        let mut child = self.cgroup.spawn(
            Command::new(env!("CARGO_BIN_EXE_host-probe"))
                .args(["bind", proto, &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        );
        child.wait().expect("wait").code().unwrap_or(-1)
    }
}

fn policy(data: &str, action: &str) -> String {
    format!(
        "apiVersion: sensor.dev/v1alpha1
kind: HostPolicy
metadata: {{name: web-hardening}}
spec:
  selector: {{namespaces: [shop], podSelector: {{matchLabels: {{app: web}}}}}}
  action: {action}
  files: [{{prefix: {data}/secret/, access: [read, write, create]}}]
  executables: [{{prefix: {data}/bin/}}]
  binds: [{{port: 2222, protocol: TCP}}]
"
    )
}

fn file_events(sensor: &Sensor) -> Vec<serde_json::Value> {
    sensor.events().into_iter().filter(|v| v.get("process_file").is_some()).collect()
}

#[test]
fn exec_in_a_containerd_cgroup_is_attributed_to_its_container_and_pod() {
    if !privileged() {
        return;
    }
    let pod = pod();
    let sensor = pod.start("detect", "");
    let (status, _) = pod.sh("exit 0");
    assert!(status.success());
    let cgroup_id = pod.cgroup.id();
    let event = sensor.wait_event("exec in the container", |v| {
        v["process_exec"]["process"]["cgroup_id"] == cgroup_id
    });
    let process = &event["process_exec"]["process"];
    assert_eq!(process["container"]["id"], pod.container_id, "{event}");
    assert_eq!(process["container"]["runtime"], "containerd", "{event}");
    assert_eq!(process["pod"]["namespace"], "shop", "{event}");
    assert_eq!(process["pod"]["name"], "web-1", "{event}");
    assert_eq!(process["pod"]["pod_labels"]["app"], "web", "{event}");
    assert_eq!(process["arguments"], "-c exit 0", "{event}");
    // The test runner itself is a host process: no container.
    assert!(event["process_exec"]["parent"].get("container").is_none(), "{event}");
}

#[test]
fn enforce_mode_blocks_file_access_executables_and_binds_in_scope_only() {
    if !privileged() {
        return;
    }
    let pod = pod();
    let data = pod.data();
    let sensor = pod.start("enforce", &policy(&data, "Block"));

    // Read through a relative path and through `..`: the canonical path matches; the reader is
    // killed before it returns from open().
    for script in
        [format!("cd {data}/secret && cat token"), format!("cat {data}/secret/../secret/token")]
    {
        let (status, out) = pod.sh(&script);
        assert!(!status.success() && out.is_empty(), "{script}: {status:?} {out:?}");
    }
    let blocked = sensor_e2e::wait_until("two blocked reads", Duration::from_secs(10), || {
        let events: Vec<_> = file_events(&sensor)
            .into_iter()
            .filter(|v| v["process_file"]["action"] == "blocked")
            .collect();
        (events.len() >= 2).then_some(events)
    });
    for event in &blocked {
        let body = &event["process_file"];
        assert_eq!(body["path"], format!("{data}/secret/token"), "{event}");
        assert_eq!(body["access"], serde_json::json!(["read"]), "{event}");
        assert_eq!(body["policy_name"], "web-hardening", "{event}");
        assert_eq!(body["process"]["pod"]["name"], "web-1", "{event}");
    }
    // Creating a file there is blocked too.
    let (status, _) = pod.sh(&format!("cd {data} && echo x > secret/new"));
    assert!(!status.success());

    // Outside the policy's scope (this test process, a host process) nothing is touched.
    assert_eq!(fs::read_to_string(format!("{data}/secret/token")).expect("read"), "s3cr3t");

    // Executables under the forbidden prefix die before their first instruction.
    let mut child = pod.cgroup.spawn(&mut Command::new(format!("{data}/bin/true")));
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    sensor.wait_event("blocked exec", |v| {
        v["process_exec"]["action"] == "blocked"
            && v["process_exec"]["process"]["binary"] == format!("{data}/bin/true")
    });

    // Binding the forbidden port fails with EPERM; another port works and is reported.
    assert_eq!(pod.probe_bind("tcp", 2222), 13, "bind 2222 must fail with EPERM");
    assert_eq!(pod.probe_bind("tcp", 2223), 0, "bind 2223 must work");
    sensor.wait_event("blocked bind", |v| {
        v["process_socket"]["action"] == "blocked" && v["process_socket"]["port"] == 2222
    });
    sensor.wait_event("observed bind", |v| {
        v["process_socket"]["action"] == "observed"
            && v["process_socket"]["operation"] == "bind"
            && v["process_socket"]["port"] == 2223
    });
    let m = sensor.metrics();
    assert!(
        m.get("sensor_host_events_total", &[("type", "file"), ("action", "blocked")])
            .is_some_and(|v| v >= 3.0),
        "{}",
        m.text
    );
}

#[test]
fn detect_mode_reports_would_block_and_lets_everything_run() {
    if !privileged() {
        return;
    }
    let pod = pod();
    let data = pod.data();
    let sensor = pod.start("detect", &policy(&data, "Block"));
    let (status, out) = pod.sh(&format!("cd {data}/secret && cat token"));
    assert!(status.success() && out == "s3cr3t", "{status:?} {out:?}");
    let mut child = pod.cgroup.spawn(&mut Command::new(format!("{data}/bin/true")));
    assert!(child.wait().expect("wait").success());
    assert_eq!(pod.probe_bind("tcp", 2222), 0, "detect mode must not block binds");
    sensor.wait_event("would-block read", |v| {
        v["process_file"]["action"] == "would_block"
            && v["process_file"]["path"] == format!("{data}/secret/token")
    });
    sensor.wait_event("would-block exec", |v| v["process_exec"]["action"] == "would_block");
    sensor.wait_event("would-block bind", |v| v["process_socket"]["action"] == "would_block");
}

#[test]
fn opens_outside_watched_prefixes_produce_no_events_and_root_can_be_forbidden() {
    if !privileged() {
        return;
    }
    let pod = pod();
    let data = pod.data();
    let policy = format!("{}  noRoot: {{action: Block}}\n", policy(&data, "Audit"));
    let sensor = pod.start("enforce", &policy);
    // A tight open() loop outside every watched prefix, as an unprivileged user (root would
    // be killed by noRoot).
    let mut child = pod.cgroup.spawn(
        Command::new("/bin/sh")
            .args(["-c", "i=0; while [ $i -lt 2000 ]; do read x < /etc/hostname; i=$((i+1)); done"])
            .uid(65534)
            .gid(65534),
    );
    assert!(child.wait().expect("wait").success());
    // Root in the pod is killed at exec.
    let (status, _) = pod.sh("exit 0");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    sensor.wait_event("blocked root exec", |v| {
        v["process_exec"]["action"] == "blocked" && v["process_exec"]["process"]["uid"] == 0
    });
    // Audited files are reported (the token is world-readable), and nothing was reported for
    // the 2000 opens of /etc/hostname.
    let mut reader = pod.cgroup.spawn(
        Command::new("/bin/cat")
            .arg(format!("{data}/secret/token"))
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::null()),
    );
    assert!(reader.wait().expect("wait").success());
    sensor.wait_event("audited read", |v| v["process_file"]["action"] == "audit");
    let files = file_events(&sensor);
    assert!(
        files.iter().all(|v| v["process_file"]["path"] != "/etc/hostname"),
        "opens outside watched prefixes were reported"
    );
    assert_eq!(files.len(), 1, "{files:?}");
}

#[test]
fn unlink_rename_connect_and_denied_syscalls() {
    if !privileged() {
        return;
    }
    let pod = pod();
    let data = pod.data();
    fs::write(format!("{data}/secret/old"), "x").expect("old");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let policy = format!(
        "apiVersion: sensor.dev/v1alpha1
kind: HostPolicy
metadata: {{name: no-tampering}}
spec:
  selector: {{podSelector: {{matchLabels: {{app: web}}}}}}
  action: Block
  files: [{{prefix: {data}/secret/, access: [delete, rename]}}]
  syscalls: [{{names: [unshare]}}]
"
    );
    let sensor = pod.start("enforce", &policy);

    // Relative unlink from inside the directory: decided on cwd + name, the caller is killed
    // at syscall entry ("killed": the kernel may still complete that one unlink).
    let (status, _) = pod.sh(&format!("cd {data}/secret && exec rm -f token"));
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{status:?}\n{}\n{:?}",
        sensor.log(),
        sensor.events().iter().filter(|v| v.get("process_exec").is_none()).collect::<Vec<_>>()
    );
    let event = sensor.wait_event("blocked unlink", |v| {
        v["process_file"]["operation"] == "unlink" && v["process_file"]["action"] == "killed"
    });
    assert_eq!(event["process_file"]["path"], format!("{data}/secret/token"), "{event}");
    assert_eq!(event["process_file"]["access"], serde_json::json!(["delete"]), "{event}");

    let (status, _) = pod.sh(&format!("exec mv {data}/secret/old {data}/moved"));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let event = sensor.wait_event("blocked rename", |v| {
        v["process_file"]["operation"] == "rename" && v["process_file"]["action"] == "killed"
    });
    assert_eq!(event["process_file"]["new_path"], format!("{data}/moved"), "{event}");

    // A denied syscall kills the caller.
    let (status, _) = pod.sh("exec unshare -U true");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    sensor.wait_event("blocked syscall", |v| {
        v["process_syscall"]["syscall"] == "unshare" && v["process_syscall"]["action"] == "killed"
    });

    // Connects from the pod are reported.
    let mut child = pod.cgroup.spawn(Command::new(env!("CARGO_BIN_EXE_host-probe")).args([
        "connect",
        "tcp",
        &port.to_string(),
    ]));
    assert!(child.wait().expect("wait").success());
    sensor.wait_event("observed connect", |v| {
        v["process_socket"]["operation"] == "connect" && v["process_socket"]["port"] == port
    });
    drop(listener);
}
