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
    assert!(fields["evt.time"].as_i64().is_some_and(|t| t > 1_700_000_000_000_000_000), "{alert}");
    assert_eq!(
        fields,
        &serde_json::json!({
            "proc.name": "sh",
            "proc.cmdline": cmdline,
            "container.id": &s.container_id[..12],
            "k8s.ns.name": "shop",
            "k8s.pod.name": "web-1",
            "user.name": "root",
            "evt.time": fields["evt.time"],
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
        serde_json::json!({
            "fd.name": format!("{data}/secret/token"),
            "proc.name": "cat",
            "evt.time": read["output_fields"]["evt.time"],
        }),
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
         - rule: tty\n  desc: d\n  condition: evt.buffer bcontains 00\n  output: x\n  priority: notice\n",
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
        text.contains("skipped ") && text.contains("a.yaml:6: tty: unknown field `evt.buffer`"),
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

/// The Falco-style corpus (`tests/rules/falco_style_rules.yaml`): every rule fires on a real
/// action in the test container, with Falco's output fields.
#[test]
fn falco_style_corpus_every_rule_fires_on_a_real_action() {
    if !privileged() {
        return;
    }
    let s = setup();
    let data = s.data();
    let dir = fs::canonicalize(&s.dir).expect("canonical").display().to_string();
    // The pod's container: image, privileged and start time, as the Kubernetes source fills.
    fs::write(
        s.dir.join("endpoints.yaml"),
        format!(
            "endpoints:\n- namespace: shop\n  name: web-1\n  labels: {{app: web}}\n  containers: [\"containerd://{id}\"]\n  container_info:\n  - id: \"containerd://{id}\"\n    name: web\n    image: docker.io/library/nginx:1.25\n    image_id: docker.io/library/nginx@sha256:abcd\n    privileged: true\n    started_at: \"2026-05-01T10:00:00Z\"\n",
            id = s.container_id
        ),
    )
    .expect("endpoints");
    // Trigger programs: renamed copies of `true`, and a script with a child of its name.
    let bin = s.dir.join("bin");
    fs::create_dir_all(bin.join("twin")).expect("mkdir");
    for name in ["corpus-shell", "corpus-other", "corpus-image", "corpus marker"] {
        fs::copy("/bin/true", bin.join(name)).expect("copy");
    }
    fs::copy("/bin/true", bin.join("twin/corpus-twin")).expect("copy");
    fs::write(bin.join("corpus-twin"), format!("#!/bin/sh\n{}/twin/corpus-twin\n", bin.display()))
        .expect("script");
    Command::new("chmod").args(["+x"]).arg(bin.join("corpus-twin")).status().expect("chmod");
    fs::write(s.dir.join("victim"), "x").expect("victim");
    let corpus = fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules/falco_style_rules.yaml"),
    )
    .expect("corpus");
    let sensor = s.start(&corpus);
    sensor.wait_metric("sensor_rules_loaded", &[], |v| v == Some(16.0));
    sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v >= Some(1.0));
    let b = bin.display();
    let redirect = "use Socket; socket(L,PF_INET,SOCK_STREAM,0) or die; \
        bind(L,pack_sockaddr_in(0,inet_aton(q{127.0.0.1}))) or die; listen(L,1); \
        my ($p)=sockaddr_in(getsockname(L)); socket(C,PF_INET,SOCK_STREAM,0) or die; \
        connect(C,pack_sockaddr_in($p,inet_aton(q{127.0.0.1}))) or die; \
        open(STDOUT, q{>&}, \\*C) or die; sleep 2;";
    s.sh(&format!(
        "cd {dir} && true corpus-marker 2>&1; {b}/corpus-shell; {b}/corpus-twin; \
         cat data/../data/secret/token >/dev/null; : > corpus.log; \
         ln -s {data}/secret/token link1; ln {data}/secret/token hard1; chmod u+s victim; \
         perl -e 'syscall(101, 0, 0, 0, 0)'; perl -e 'socket(S, 17, 3, 0) or die'; \
         perl -e '{redirect}'; perl -e 'my $a = q{{}}; syscall(313, -1, $a, 0); sleep 1'; mkdir corpus-dir; \
         unshare -U true; {b}/corpus-image; {b}/corpus-other list-marker; \
         '{b}/corpus marker' list-marker"
    ));
    let cid = &s.container_id[..12];
    let fired = |rule: &str| {
        sensor.wait_event(rule, |v| v["rule"] == rule && v["output_fields"]["container.id"] == cid)
    };
    let f = |a: &serde_json::Value, k: &str| a["output_fields"][k].clone();

    let a = fired("Corpus terminal shell");
    assert_eq!(a["tags"], serde_json::json!(["T1059", "container", "maturity_stable", "shell"]));
    assert_eq!(f(&a, "container.name"), "web", "{a}");
    assert!(f(&a, "user.loginuid").is_i64(), "{a}");
    assert!(f(&a, "proc.tty").is_i64(), "{a}");
    assert!(f(&a, "evt.arg.flags").is_string(), "{a}");
    assert!(
        a["output"]
            .as_str()
            .is_some_and(|o| o.contains(&format!("container_id={cid} container_name=web"))),
        "{a}"
    );

    let a = fired("Corpus lowercased name");
    assert_eq!(f(&a, "proc.name"), "corpus-shell", "{a}");
    assert_eq!(f(&a, "proc.pexe"), "/bin/sh", "{a}");

    let a = fired("Corpus same name as parent");
    assert_eq!(f(&a, "proc.pname"), "corpus-twin", "{a}");

    let a = fired("Corpus traversal read");
    assert_eq!(f(&a, "fd.name"), format!("{data}/secret/token"), "{a}");
    assert_eq!(f(&a, "fd.nameraw"), "data/../data/secret/token", "{a}");
    assert_eq!(f(&a, "fd.realname"), format!("{data}/secret/token"), "{a}");
    assert!(f(&a, "fd.num").as_i64().is_some_and(|n| n >= 0), "{a}");

    let a = fired("Corpus truncate");
    assert_eq!(f(&a, "fd.name"), format!("{dir}/corpus.log"), "{a}");
    assert_eq!(f(&a, "evt.arg.flags"), "O_WRONLY|O_CREAT|O_TRUNC", "{a}");
    assert_eq!(f(&a, "evt.res"), "SUCCESS", "{a}");

    let a = fired("Corpus symlink");
    assert_eq!(f(&a, "evt.arg.target"), format!("{data}/secret/token"), "{a}");
    assert_eq!(f(&a, "evt.arg.linkpath"), "link1", "{a}");
    assert_eq!(f(&a, "evt.res"), "SUCCESS", "{a}");

    let a = fired("Corpus hardlink");
    assert_eq!(f(&a, "evt.arg.oldpath"), format!("{data}/secret/token"), "{a}");
    assert_eq!(f(&a, "evt.arg.newpath"), "hard1", "{a}");

    let a = fired("Corpus setuid bit");
    assert_eq!(f(&a, "evt.arg.filename"), "victim", "{a}");
    assert!(f(&a, "evt.arg.mode").as_str().is_some_and(|m| m.contains("S_ISUID")), "{a}");

    let a = fired("Corpus ptrace traceme");
    assert_eq!(f(&a, "evt.arg.request"), "PTRACE_TRACEME", "{a}");
    assert_eq!(f(&a, "proc.name"), "perl", "{a}");

    let a = fired("Corpus packet socket");
    assert!(f(&a, "evt.args").as_str().is_some_and(|m| m.starts_with("domain=AF_PACKET")), "{a}");

    let a = fired("Corpus redirect to network");
    assert_eq!(f(&a, "evt.rawres"), 1, "{a}");
    assert_eq!(f(&a, "fd.type"), "ipv4", "{a}");
    assert_eq!(f(&a, "fd.l4proto"), "tcp", "{a}");
    assert!(f(&a, "fd.name").as_str().is_some_and(|n| n.contains("->127.0.0.1:")), "{a}");

    let a = fired("Corpus module load");
    // EBADF for the bad descriptor, or ENOSYS on a kernel built without modules.
    let res = f(&a, "evt.res");
    assert!(res == "EBADF" || res == "ENOSYS", "{a}");
    assert!(f(&a, "evt.rawres").as_i64().is_some_and(|r| r == -9 || r == -38), "{a}");
    assert!(
        f(&a, "thread.cap_effective").as_str().is_some_and(|c| c.contains("CAP_SYS_MODULE")),
        "{a}"
    );

    let a = fired("Corpus mkdir");
    assert_eq!(f(&a, "evt.arg.path"), "corpus-dir", "{a}");

    let a = fired("Corpus namespace change");
    assert_eq!(f(&a, "evt.arg.flags"), "0x10000000", "{a}");

    let a = fired("Corpus image");
    assert_eq!(f(&a, "container.image.repository"), "docker.io/library/nginx", "{a}");
    assert_eq!(f(&a, "container.image.tag"), "1.25", "{a}");
    assert_eq!(f(&a, "container.image.digest"), "sha256:abcd", "{a}");
    assert_eq!(f(&a, "container.start_ts"), 1_777_629_600_000_000_000_i64, "{a}");

    // Enabled by an override, condition appended, the list extended after its use.
    sensor_e2e::wait_until("both marker alerts", std::time::Duration::from_secs(10), || {
        let names: Vec<_> = alerts(&sensor, "Corpus marker list")
            .into_iter()
            .filter(|v| v["output_fields"]["container.id"] == cid)
            .map(|v| v["output_fields"]["proc.name"].clone())
            .collect();
        (names.contains(&"corpus-other".into()) && names.contains(&"corpus marker".into()))
            .then_some(())
    });
    let marker: Vec<_> = alerts(&sensor, "Corpus marker list")
        .into_iter()
        .filter(|v| v["output_fields"]["container.id"] == cid)
        .collect();
    assert_eq!(marker.len(), 2, "{marker:?}");
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

/// Falco's `open_file_failed` macro (fd.num = -1, evt.res an error name): failed opens reach
/// the rules, with the path as passed (absolute, and relative joined with the working
/// directory); a rule that requires a descriptor (`fd.num >= 0`) does not see them.
#[test]
fn failed_opens_reach_rules_that_can_match_them() {
    if !privileged() {
        return;
    }
    let s = setup();
    let data = s.data();
    let sensor = s.start(&format!(
        "- macro: open_file_failed
  condition: (evt.type in (open,openat,openat2) and fd.typechar='f' and fd.num=-1 and evt.res startswith E)
- rule: Test failed open
  desc: test
  condition: open_file_failed and container.id != host and fd.name startswith {data}/missing/
  output: failed %fd.name res=%evt.res rawres=%evt.rawres fd=%fd.num raw=%fd.nameraw by %proc.name
  priority: NOTICE
- rule: Test opened
  desc: test
  condition: evt.type in (open,openat,openat2) and fd.num >= 0 and fd.name startswith {data}/missing/
  output: opened %fd.name
  priority: NOTICE
"
    ));
    sensor.wait_metric("sensor_rules_loaded", &[], |v| v == Some(2.0));
    sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v >= Some(1.0));
    s.sh(&format!(
        "cat {data}/missing/abs 2>/dev/null; cd {data} && cat missing/rel 2>/dev/null; true"
    ));
    for (name, raw) in [("abs", format!("{data}/missing/abs")), ("rel", "missing/rel".to_owned())] {
        let path = format!("{data}/missing/{name}");
        let alert = sensor.wait_event(&format!("failed open of {name}"), |v| {
            v["rule"] == "Test failed open" && v["output_fields"]["fd.name"] == path.as_str()
        });
        let f = &alert["output_fields"];
        assert_eq!(
            (&f["evt.res"], &f["evt.rawres"], &f["fd.num"], &f["fd.nameraw"], &f["proc.name"]),
            (
                &serde_json::json!("ENOENT"),
                &serde_json::json!(-2),
                &serde_json::json!(-1),
                &serde_json::json!(raw),
                &serde_json::json!("cat")
            ),
            "{alert}"
        );
    }
    assert!(alerts(&sensor, "Test opened").is_empty(), "a failed open matched fd.num >= 0");
}

/// `proc.is_exe_from_memfd` from the exec record: a program run from a memfd (gone by the
/// time the agent could look in /proc) is flagged, the same program from a file is not.
#[test]
fn exec_from_memfd_is_flagged_by_the_kernel_record() {
    if !privileged() {
        return;
    }
    let s = setup();
    let sensor = s.start(
        "- rule: Test memfd exec
  desc: test
  condition: evt.type in (execve, execveat) and container.id != host and proc.is_exe_from_memfd = true
  output: memfd %proc.name %proc.exepath flags=%evt.arg.flags upper=%proc.is_exe_upper_layer
  priority: CRITICAL
- rule: Test file exec
  desc: test
  condition: evt.type in (execve, execveat) and container.id != host and proc.is_exe_from_memfd = false and proc.name = true
  output: file %proc.name %proc.exepath
  priority: NOTICE
",
    );
    sensor.wait_metric("sensor_rules_loaded", &[], |v| v == Some(2.0));
    s.sh("/usr/bin/python3 -c \"import os; fd=os.memfd_create('e2e'); \
         os.write(fd, open('/bin/true','rb').read()); \
         os.execv('/proc/self/fd/%d' % fd, ['memfd-true'])\"; /bin/true");
    let alert = sensor.wait_event("memfd exec alert", |v| v["rule"] == "Test memfd exec");
    let f = &alert["output_fields"];
    let flags = f["evt.arg.flags"].as_str().unwrap_or_default();
    assert!(flags.split('|').any(|x| x == "EXE_FROM_MEMFD"), "{alert}");
    assert_eq!(f["proc.is_exe_upper_layer"], false, "{alert}");
    sensor.wait_event("file exec alert", |v| v["rule"] == "Test file exec");
    assert_eq!(alerts(&sensor, "Test memfd exec").len(), 1, "only the memfd exec is flagged");
}

/// Falco's `fd.name` is the path as passed: a rule on a path through a symlinked directory
/// fires although the kernel resolves the open elsewhere (outside every rule prefix).
#[test]
fn rule_on_the_passed_path_through_a_symlinked_directory_fires() {
    if !privileged() {
        return;
    }
    let s = setup();
    let data = s.data();
    let dir = fs::canonicalize(&s.dir).expect("canonical").display().to_string();
    std::os::unix::fs::symlink(format!("{data}/secret"), s.dir.join("link")).expect("symlink");
    let sensor = s.start(&format!(
        "- rule: Test link read
  desc: test
  condition: evt.type in (open,openat,openat2) and evt.is_open_read=true and fd.num >= 0 and fd.name startswith {dir}/link/
  output: read %fd.name real=%fd.realname
  priority: NOTICE
"
    ));
    sensor.wait_metric("sensor_rules_loaded", &[], |v| v == Some(1.0));
    sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v >= Some(1.0));
    s.sh(&format!("cat {dir}/link/token >/dev/null"));
    let alert = sensor.wait_event("read through the link", |v| v["rule"] == "Test link read");
    let f = &alert["output_fields"];
    assert_eq!(f["fd.name"], format!("{dir}/link/token"), "{alert}");
    assert_eq!(f["fd.realname"], format!("{data}/secret/token"), "{alert}");
}

/// `accept`/`accept4`/`listen` (Falco's `inbound` macro) from the raw syscall hooks, sent only
/// because a loaded rule names them: the accepted connection's server and client ends.
#[test]
fn accept_and_listen_reach_rules_that_name_them() {
    if !privileged() {
        return;
    }
    let s = setup();
    let sensor = s.start(
        "- rule: Test inbound
  desc: test
  condition: evt.type in (accept,accept4,listen) and evt.dir=< and container.id != host and (fd.typechar = 4 or fd.typechar = 6) and evt.rawres >= 0 and fd.snet in (\"127.0.0.0/8\")
  output: inbound %evt.type %fd.name sip=%fd.sip sport=%fd.sport cip=%fd.cip
  priority: NOTICE
",
    );
    sensor.wait_metric("sensor_rules_loaded", &[], |v| v == Some(1.0));
    sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v >= Some(1.0));
    s.sh("perl -e 'use Socket; socket(L,PF_INET,SOCK_STREAM,0) or die; \
         bind(L,pack_sockaddr_in(0,inet_aton(q{127.0.0.1}))) or die; listen(L,1) or die; \
         my ($p)=sockaddr_in(getsockname(L)); socket(C,PF_INET,SOCK_STREAM,0) or die; \
         connect(C,pack_sockaddr_in($p,inet_aton(q{127.0.0.1}))) or die; \
         accept(A,L) or die; sleep 2;'");
    let listen = sensor.wait_event("listen", |v| {
        v["rule"] == "Test inbound" && v["output_fields"]["evt.type"] == "listen"
    });
    let port = listen["output_fields"]["fd.sport"].as_i64().expect("listen port");
    let accept = sensor.wait_event("accept", |v| {
        v["rule"] == "Test inbound"
            && v["output_fields"]["evt.type"].as_str().is_some_and(|t| t.starts_with("accept"))
    });
    let f = &accept["output_fields"];
    assert_eq!(
        (f["fd.sport"].as_i64(), &f["fd.sip"]),
        (Some(port), &serde_json::json!("127.0.0.1")),
        "{accept}"
    );
    assert_eq!(f["fd.cip"], "127.0.0.1", "{accept}");
}
