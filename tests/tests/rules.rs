//! Falco rules end to end: real processes in a test cgroup named like a containerd container
//! (with an endpoints file naming its pod), rule files on disk, Falco JSON alerts on stdout.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use sensor_e2e::{Sensor, pod::ContainerPod, privileged, unique};

/// The test pod (see [`ContainerPod`]) with a `rules/` directory.
struct Setup(ContainerPod);

impl std::ops::Deref for Setup {
    type Target = ContainerPod;
    fn deref(&self) -> &ContainerPod {
        &self.0
    }
}

fn setup() -> Setup {
    let pod = ContainerPod::new("se2e-rules-");
    fs::create_dir_all(pod.dir.join("rules")).expect("mkdir");
    Setup(pod)
}

impl Setup {
    fn rules_file(&self) -> PathBuf {
        self.dir.join("rules/test_rules.yaml")
    }

    fn start(&self, rules: &str) -> Sensor {
        fs::write(self.rules_file(), rules).expect("rules");
        let config = format!(
            "endpoints_file: {}\nrules_files: [{}]\n",
            self.dir.join("endpoints.yaml").display(),
            self.dir.join("rules").display()
        );
        Sensor::start(&self.node, &config, &[])
    }

    fn sh(&self, script: &str) {
        let child = self.cgroup.spawn(
            Command::new("/bin/sh")
                .args(["-c", script])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{script}");
    }
}

fn rules(data: &str) -> String {
    format!(
        "- macro: spawned_process
  condition: evt.type in (execve, execveat)
- rule: Test shell in container
  desc: test
  condition: spawned_process and container.id != host and proc.name = sh and proc.args contains e2e-marker
  output: shell %proc.name %proc.cmdline in %container.id (%k8s.ns.name/%k8s.pod.name) by %user.name
  priority: NOTICE
  tags: [container, shell]
- rule: Test secret read
  desc: test
  condition: evt.type in (open, openat) and evt.is_open_read = true and fd.name startswith {data}/secret/
  output: read %fd.name by %proc.name
  priority: WARNING
- rule: Test disabled
  desc: test
  condition: spawned_process and proc.name = sh
  output: never %proc.name
  priority: CRITICAL
  enabled: false
"
    )
}

fn alerts(sensor: &Sensor, rule: &str) -> Vec<serde_json::Value> {
    sensor.events().into_iter().filter(|v| v["rule"] == rule).collect()
}

#[test]
fn shell_in_container_and_file_read_fire_falco_alerts_disabled_rule_does_not() {
    if !privileged() {
        return;
    }
    let s = setup();
    let data = s.data();
    let sensor = s.start(&rules(&data));
    sensor.wait_metric("sensor_rules_loaded", &[], |v| v == Some(2.0));
    // The file rule asks for opens under the data dir from every cgroup.
    sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v >= Some(1.0));
    s.sh("true e2e-marker; cat secret/token >/dev/null"
        .replace("secret", &format!("{data}/secret"))
        .as_str());

    let alert = sensor.wait_event("shell alert", |v| v["rule"] == "Test shell in container");
    assert_eq!(alert["priority"], "Notice", "{alert}");
    assert_eq!(alert["source"], "syscall", "{alert}");
    assert_eq!(alert["hostname"], "e2e-node", "{alert}");
    assert_eq!(alert["tags"], serde_json::json!(["container", "shell"]), "{alert}");
    let time = alert["time"].as_str().expect("time");
    assert!(time.len() == 30 && time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    let fields = &alert["output_fields"];
    let cmdline = format!("sh -c true e2e-marker; cat {data}/secret/token >/dev/null");
    assert_eq!(
        fields,
        &serde_json::json!({
            "proc.name": "sh",
            "proc.cmdline": cmdline,
            "container.id": &s.container_id[..12],
            "k8s.ns.name": "shop",
            "k8s.pod.name": "web-1",
            "user.name": "root",
        }),
        "{alert}"
    );
    let output = alert["output"].as_str().expect("output");
    assert!(
        output.ends_with(&format!(
            ": Notice shell sh {cmdline} in {} (shop/web-1) by root",
            &s.container_id[..12]
        )),
        "{output}"
    );

    let read = sensor.wait_event("file read alert", |v| v["rule"] == "Test secret read");
    assert_eq!(read["priority"], "Warning", "{read}");
    assert_eq!(
        read["output_fields"],
        serde_json::json!({"fd.name": format!("{data}/secret/token"), "proc.name": "cat"}),
        "{read}"
    );
    let m = sensor.metrics();
    assert_eq!(
        m.get(
            "falcosecurity_falco_rules_matches_total",
            &[
                ("rule_name", "Test shell in container"),
                ("priority", "5"),
                ("source", "syscall"),
                ("tag_shell", "true")
            ]
        ),
        Some(1.0)
    );
    assert!(alerts(&sensor, "Test disabled").is_empty(), "disabled rule fired");
    // Opens the rules asked for do not become Tetragon records.
    assert!(
        sensor.events().iter().all(|v| v.get("process_file").is_none()),
        "rule-only opens leaked as process_file records"
    );
}

#[test]
fn bad_rules_file_on_reload_keeps_the_previous_rules_and_a_good_one_applies() {
    if !privileged() {
        return;
    }
    let s = setup();
    let data = s.data();
    let sensor = s.start(&rules(&data));
    sensor.wait_metric("sensor_rules_loaded", &[], |v| v == Some(2.0));
    fs::write(s.rules_file(), "- rule: broken\n  desc: d\n  condition: proc.name = (sh\n  output: x\n  priority: notice\n")
        .expect("bad rules");
    sensor
        .wait_metric("sensor_rules_reloads_total", &[("outcome", "rejected")], |v| v >= Some(1.0));
    // The metric counts the rejection before the agent logs it: wait for the line.
    sensor_e2e::wait_until("the rejection in the log", std::time::Duration::from_secs(10), || {
        sensor.log().contains("test_rules.yaml:1: rule `broken`: condition:").then_some(())
    });
    assert!(sensor.log().contains("previous rules stay"), "{}", sensor.log());
    // The previous rules still fire.
    s.sh("true e2e-marker");
    sensor.wait_event("shell alert after a rejected reload", |v| {
        v["rule"] == "Test shell in container"
    });

    // A good file replaces them: the shell rule is gone, a new one fires.
    fs::write(
        s.rules_file(),
        "- rule: Renamed shell\n  desc: d\n  condition: evt.type = execve and proc.name = sh and proc.args contains second-marker\n  output: again %proc.name\n  priority: info\n",
    )
    .expect("good rules");
    sensor.wait_metric("sensor_rules_loaded", &[], |v| v == Some(1.0));
    s.sh("true second-marker");
    let alert = sensor.wait_event("alert from reloaded rules", |v| v["rule"] == "Renamed shell");
    assert_eq!(alert["priority"], "Informational", "{alert}");
    assert_eq!(alerts(&sensor, "Test shell in container").len(), 1);
}

#[test]
fn rules_check_lists_loaded_and_skipped_rules_and_fails_on_a_bad_file() {
    let dir = std::env::temp_dir().join(unique("se2e-rcheck-"));
    fs::create_dir_all(&dir).expect("mkdir");
    let good = dir.join("a.yaml");
    fs::write(
        &good,
        "- rule: ok\n  desc: d\n  condition: evt.type = execve\n  output: x\n  priority: notice\n\
         - rule: tty\n  desc: d\n  condition: proc.tty != 0\n  output: x\n  priority: notice\n",
    )
    .expect("write");
    let out = Command::new(sensor_e2e::sensor::sensor_bin())
        .args(["rules", "check"])
        .arg(&good)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("loaded  ") && text.contains("a.yaml:1: ok [Notice, enabled]"), "{text}");
    assert!(
        text.contains("skipped ") && text.contains("a.yaml:6: tty: unknown field `proc.tty`"),
        "{text}"
    );

    let shipped =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/sensor_rules.yaml");
    let out = Command::new(sensor_e2e::sensor::sensor_bin())
        .args(["rules", "check"])
        .arg(&shipped)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("0 running") && text.contains("0 skipped"),
        "{text}"
    );

    let bad = dir.join("b.yaml");
    fs::write(&bad, "- rule: x\n  desc: d\n  condition: a and\n  output: x\n  priority: notice\n")
        .expect("write");
    let out = Command::new(sensor_e2e::sensor::sensor_bin())
        .args(["rules", "check"])
        .arg(&good)
        .arg(&bad)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bad file must fail");
    assert!(err.contains("b.yaml:1: rule `x`: condition:"), "{err}");
    fs::remove_dir_all(&dir).expect("cleanup");
}

/// Sum of every `sensor_*_reloads_total` sample (rules and policy, applied and rejected).
fn reloads(sensor: &Sensor) -> f64 {
    let m = sensor.metrics();
    m.text
        .lines()
        .filter(|l| l.starts_with("sensor_") && l.contains("reloads_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// B2: only the configured inputs reload. A log file (or anything else) written in the rules
/// and policy directories moves no reload metric; a change to the rules file reloads once.
#[test]
fn only_configured_files_trigger_a_reload() {
    if !privileged() {
        return;
    }
    let s = setup();
    let policies = s.dir.join("policies");
    fs::create_dir_all(&policies).expect("mkdir");
    fs::write(s.rules_file(), rules(&s.data())).expect("rules");
    // The rules directory (as configured by `setup`) and a rules file given by path, with a
    // sibling YAML file that is not configured.
    let single = s.dir.join("single");
    fs::create_dir_all(&single).expect("mkdir");
    fs::write(single.join("rules.yaml"), rules(&s.data())).expect("rules");
    let config = format!(
        "endpoints_file: {}\npolicy_dir: {}\nrules_files: [{}, {}]\n",
        s.dir.join("endpoints.yaml").display(),
        policies.display(),
        s.dir.join("rules").display(),
        single.join("rules.yaml").display()
    );
    let sensor = Sensor::start(&s.node, &config, &[]);
    let applied = [("outcome", "applied")];
    assert_eq!(sensor.metrics().get("sensor_rules_reloads_total", &applied), Some(1.0));
    let before = reloads(&sensor);
    for i in 0..100 {
        for dir in [s.dir.join("rules"), single.clone(), policies.clone(), s.dir.clone()] {
            let mut log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("sensor.log"))
                .expect("log");
            std::io::Write::write_all(&mut log, format!("line {i}\n").as_bytes()).expect("write");
        }
        fs::write(single.join("other.yaml"), format!("# {i}\n")).expect("sibling");
        fs::write(s.dir.join("rules/.test_rules.yaml.swp"), format!("{i}")).expect("swap");
    }
    // Longer than the settle window (≤ 500 ms) and a periodic scan.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(reloads(&sensor), before, "writes to other files reloaded:\n{}", sensor.log());

    fs::write(single.join("rules.yaml"), rules(&s.data()) + "\n# changed\n").expect("change");
    sensor.wait_metric("sensor_rules_reloads_total", &applied, |v| v == Some(2.0));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(sensor.metrics().get("sensor_rules_reloads_total", &applied), Some(2.0));
    assert_eq!(reloads(&sensor), before + 1.0, "exactly one reload");
}

/// B5: `proc.aname[N]`, `proc.apid`, `proc.pname` of ancestors that started before the agent
/// come from /proc: a process tree started first, then a child exec'd once the agent runs.
#[test]
fn ancestors_started_before_the_agent_are_known() {
    if !privileged() {
        return;
    }
    let s = setup();
    let tag = unique("a");
    let bin = s.dir.join("bin");
    fs::create_dir_all(&bin).expect("mkdir");
    let (pre, mid, leaf) =
        (format!("se2e-pre{tag}"), format!("se2e-mid{tag}"), format!("se2e-lf{tag}"));
    // comm is at most 15 bytes.
    let comm = |n: &str| n.chars().take(15).collect::<String>();
    fs::copy("/bin/true", bin.join(&leaf)).expect("copy true");
    let flag = s.dir.join("go");
    fs::write(
        bin.join(&mid),
        format!(
            "#!/bin/sh\nn=0\nwhile [ ! -e {flag} ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done\n{leaf}\ntrue\n",
            flag = flag.display(),
            leaf = bin.join(&leaf).display()
        ),
    )
    .expect("mid");
    fs::write(bin.join(&pre), format!("#!/bin/sh\n{}\ntrue\n", bin.join(&mid).display()))
        .expect("pre");
    for f in [&pre, &mid] {
        Command::new("chmod").arg("755").arg(bin.join(f)).status().expect("chmod");
    }
    // The tree starts before the agent, in the container's cgroup.
    let mut tree =
        s.cgroup.spawn(Command::new(bin.join(&pre)).stdout(Stdio::null()).stderr(Stdio::null()));
    let rules = format!(
        "- rule: Ancestor before the agent\n  desc: t\n  condition: evt.type = execve and \
         proc.name = {leaf} and proc.aname[2] = {pre} and proc.pname = {mid} and proc.aname[1] = {mid}\n  \
         output: \"leaf=%proc.name parent=%proc.pname a2=%proc.aname[2]\"\n  priority: WARNING\n",
        leaf = comm(&leaf),
        pre = comm(&pre),
        mid = comm(&mid),
    );
    let sensor = s.start(&rules);
    fs::write(&flag, "").expect("flag");
    assert!(tree.wait().expect("wait").success());
    let alert = sensor.wait_event("the alert naming the pre-existing ancestors", |v| {
        v["rule"] == "Ancestor before the agent"
    });
    assert_eq!(alert["output_fields"]["proc.aname[2]"], comm(&pre), "{alert}");
    assert_eq!(alert["output_fields"]["proc.pname"], comm(&mid), "{alert}");
}
