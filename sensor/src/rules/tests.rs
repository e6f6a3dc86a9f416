//! Rules engine unit tests: files, overrides, errors with lines, every operator, fields,
//! exceptions, output; events are built by hand (the e2e tests use the kernel).

use std::path::Path;

// The synthetic events are the rules bench's: one set of constructors for both.
use super::{
    bench::{bind, exec, open},
    *,
};

fn set(text: &str) -> RuleSet {
    from_text(Path::new("r.yaml"), text, Priority::Debug).expect("loads")
}

fn rule(name: &str, cond: &str) -> String {
    format!(
        "- rule: {name}\n  desc: d\n  condition: {cond}\n  output: \"x %proc.name\"\n  priority: NOTICE\n"
    )
}

fn eval_one(set: &RuleSet, e: &Enriched) -> Option<String> {
    let users = Users::new("/nonexistent");
    let mut ev = Evaluator::with_users("node-a".into(), users);
    ev.evaluate(set, e, &ProcessTable::default()).map(|m| m.rule.name.clone())
}

fn matches(cond: &str, e: &Enriched) -> bool {
    let s = set(&format!("{}{}", LISTS, rule("r", &format!("'{cond}'"))));
    assert!(s.skipped.is_empty(), "{cond}: {:?}", s.skipped);
    eval_one(&s, e).is_some()
}

const LISTS: &str = "- list: shells\n  items: [sh, bash]\n- list: more_shells\n  items: [shells, zsh]\n- macro: spawned_process\n  condition: evt.type in (execve, execveat)\n- macro: container\n  condition: container.id != host\n";

#[test]
fn every_operator() {
    let sh = exec("sh", &["sh", "-c", "Echo Hi"], true);
    let f = open("/etc/shadow", &["read"]);
    for (cond, event, want) in [
        ("proc.name = sh", &sh, true),
        ("proc.name == sh", &sh, true),
        ("proc.name != sh", &sh, false),
        ("proc.pid < 101 and proc.pid <= 100 and proc.pid > 99 and proc.pid >= 100", &sh, true),
        ("proc.pid > 100", &sh, false),
        ("proc.name in (more_shells)", &sh, true),
        ("proc.name in (zsh, ksh)", &sh, false),
        ("proc.name intersects (bash, sh)", &sh, true),
        ("fd.name pmatch (/etc)", &f, true),
        ("fd.name pmatch (/et)", &f, false),
        ("fd.name pmatch (/e*)", &f, true),
        ("fd.name startswith /etc/", &f, true),
        ("fd.name endswith shadow", &f, true),
        ("proc.cmdline contains Echo", &sh, true),
        ("proc.cmdline contains echo", &sh, false),
        ("proc.cmdline icontains echo", &sh, true),
        ("fd.name glob /etc/sha*", &f, true),
        ("fd.name glob /et?/x", &f, false),
        ("fd.name exists", &f, true),
        ("fd.name exists", &sh, false),
        ("not proc.name = bash", &sh, true),
        ("(proc.name = bash or proc.name = sh) and container", &sh, true),
        ("spawned_process and container and proc.name in (shells)", &sh, true),
        ("evt.is_open_read = true and evt.is_open_write = false", &f, true),
        ("user.uid = 0 and group.gid = 1000", &sh, true),
    ] {
        assert_eq!(matches(cond, event), want, "{cond}");
    }
}

#[test]
fn fields_of_exec_file_and_socket_events() {
    let s = set(
        "- rule: all\n  desc: d\n  condition: evt.type in (execve, open, bind)\n  output: \"%evt.type %proc.name %proc.exe %proc.exepath %proc.cmdline %proc.args %proc.pid %proc.ppid %proc.pname %proc.pcmdline %proc.aname[1] %proc.aname[0] %proc.cwd %user.uid %user.name %group.gid %fd.name %fd.directory %fd.filename %fd.sport %fd.lport %fd.l4proto %container.id %container.name %k8s.ns.name %k8s.pod.name %k8s.pod.labels %evt.time\"\n  priority: info\n  tags: [a, b]\n",
    );
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    let mut ev = Evaluator::with_users("node-a".into(), Users::new("/nonexistent"));
    let table = ProcessTable::default();
    let m = ev.evaluate(&s, &exec("sh", &["sh", "-c", "id"], true), &table).expect("exec matches");
    let v: serde_json::Value = serde_json::from_str(&m.json).expect("json");
    assert_eq!(v["rule"], "all");
    assert_eq!(v["priority"], "Informational");
    assert_eq!(v["source"], "syscall");
    assert_eq!(v["hostname"], "node-a");
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(v["time"], "2026-05-01T10:00:00.123456789Z");
    let of = &v["output_fields"];
    assert_eq!(of["evt.type"], "execve");
    assert_eq!(of["proc.exe"], "sh");
    assert_eq!(of["proc.exepath"], "/usr/bin/sh");
    assert_eq!(of["proc.cmdline"], "sh -c id");
    assert_eq!(of["proc.args"], "-c id");
    assert_eq!(of["proc.pid"], 100);
    assert_eq!(of["proc.ppid"], 99);
    assert_eq!(of["proc.pname"], "bash");
    assert_eq!(of["proc.pcmdline"], "bash -l");
    assert_eq!(of["proc.aname[1]"], "bash");
    assert_eq!(of["proc.aname[0]"], "sh");
    assert_eq!(of["proc.cwd"], "/work");
    assert_eq!(of["user.uid"], 0);
    assert_eq!(of["user.name"], serde_json::Value::Null, "no passwd file");
    assert_eq!(of["fd.name"], serde_json::Value::Null);
    assert_eq!(of["container.id"], "abcdef012345");
    assert_eq!(of["container.name"], serde_json::Value::Null);
    assert_eq!(of["k8s.ns.name"], "shop");
    assert_eq!(of["k8s.pod.labels"], "app:web");
    assert_eq!(of["evt.time"], 1_777_629_600_123_456_789_i64);
    assert!(
        v["output"]
            .as_str()
            .expect("text")
            .starts_with("10:00:00.123456789: Informational execve sh sh /usr/bin/sh"),
        "{}",
        v["output"]
    );
    assert!(m.text.contains("<NA>"), "{}", m.text);

    let m = ev.evaluate(&s, &open("/etc/shadow", &["read"]), &table).expect("open");
    let v: serde_json::Value = serde_json::from_str(&m.json).expect("json");
    let of = &v["output_fields"];
    assert_eq!(
        (of["evt.type"].as_str(), of["fd.directory"].as_str(), of["fd.filename"].as_str()),
        (Some("openat"), Some("/etc"), Some("shadow"))
    );
    assert_eq!(of["container.id"], "host");
    assert_eq!(of["container.name"], "host");
    assert_eq!(of["k8s.ns.name"], serde_json::Value::Null);

    let m = ev.evaluate(&s, &bind(8080), &table).expect("bind");
    let v: serde_json::Value = serde_json::from_str(&m.json).expect("json");
    let of = &v["output_fields"];
    assert_eq!((of["fd.sport"].as_i64(), of["fd.lport"].as_i64()), (Some(8080), Some(8080)));
    assert_eq!(
        (of["fd.l4proto"].as_str(), of["fd.name"].as_str()),
        (Some("tcp"), Some("0.0.0.0:8080"))
    );
}

#[test]
fn unknown_fields_and_event_types_skip_only_that_rule() {
    let s = set(&format!(
        "{}{}{}{}",
        rule("good", "proc.name = sh"),
        rule("tty", "evt.buffer contains x"),
        rule("ptrace", "evt.type = sendto"),
        "- rule: quiet\n  desc: d\n  condition: evt.is_open_exec = true\n  output: x\n  priority: debug\n  skip-if-unknown-filter: true\n",
    ));
    assert_eq!(s.rules.len(), 1);
    let reasons: Vec<_> =
        s.skipped.iter().map(|k| (k.name.as_str(), k.reason.as_str(), k.origin.line)).collect();
    assert_eq!(
        reasons,
        [
            ("tty", "unknown field `evt.buffer`", 6),
            ("ptrace", "no event type we observe: evt.type only names sendto", 11),
            ("quiet", "unknown field `evt.is_open_exec`", 16),
        ]
    );
    assert!(s.skipped[2].quiet);
    let out = set(&rule("o", "proc.name = sh").replace("x %proc.name", "%container.mounts"));
    assert_eq!(out.skipped[0].reason, "unknown field `container.mounts (in output)`");
}

#[test]
fn syntax_errors_reject_the_file_with_line() {
    let text = format!("{}{}", rule("good", "proc.name = sh"), rule("bad", "'proc.name = (sh'"));
    let err = from_text(Path::new("r.yaml"), &text, Priority::Debug).expect_err("bad");
    assert_eq!(err.origin.line, 6, "{err}");
    assert!(err.to_string().starts_with("r.yaml:6: rule `bad`: condition:"), "{err}");
    let err = from_text(
        Path::new("r.yaml"),
        "- rule: x\n  desc: d\n  condition: a\n  output: o\n  priority: LOUD\n",
        Priority::Debug,
    )
    .expect_err("bad priority");
    assert!(err.to_string().contains("unknown priority `LOUD`"), "{err}");
    let err =
        from_text(Path::new("r.yaml"), "- rule: x\n  desc: d\n  condition: [a\n", Priority::Debug)
            .expect_err("bad yaml");
    assert_eq!(err.origin.line, 4, "{err}");
    let err = from_text(
        Path::new("r.yaml"),
        "- rule: x\n  desc: d\n  output: o\n  priority: debug\n",
        Priority::Debug,
    )
    .expect_err("missing condition");
    assert!(err.to_string().contains("missing `condition`"), "{err}");
    let err =
        from_text(Path::new("r.yaml"), "- foo: x\n", Priority::Debug).expect_err("unknown item");
    assert!(err.to_string().contains("unknown item"), "{err}");
}

#[test]
fn override_append_replace_and_enabled() {
    let mut defs = Definitions::default();
    defs.load(
        Path::new("base.yaml"),
        &format!(
            "- list: shells\n  items: [sh]\n- macro: m\n  condition: proc.name in (shells)\n{}{}",
            rule("r1", "m"),
            rule("r2", "proc.name = zsh")
        ),
    )
    .expect("base");
    defs.load(
        Path::new("local.yaml"),
        "- list: shells\n  items: [bash]\n  override: {items: append}\n\
         - rule: r1\n  condition: and user.uid = 0\n  override: {condition: append}\n\
         - rule: r2\n  priority: CRITICAL\n  tags: [t]\n  override: {priority: replace, tags: replace}\n\
         - rule: r2\n  enabled: false\n\
         - macro: m\n  condition: or proc.name = zsh\n  append: true\n",
    )
    .expect("local");
    let s = RuleSet::build(&defs, Priority::Debug);
    assert_eq!(defs.lists[0].1.items, ["sh", "bash"]);
    assert_eq!(defs.rules[0].condition, "m and user.uid = 0");
    assert_eq!(defs.rules[1].priority, Priority::Critical);
    assert!(!defs.rules[1].enabled);
    assert_eq!(s.active(), 1);
    let mut bash = exec("bash", &["bash"], false);
    assert_eq!(eval_one(&s, &bash), Some("r1".into()));
    bash.header.uid = 5;
    assert_eq!(eval_one(&s, &bash), None, "appended uid condition");
    assert_eq!(eval_one(&s, &exec("zsh", &["zsh"], false)), Some("r1".into()), "macro append");

    let mut bad = defs.clone();
    let err = bad
        .load(
            Path::new("l2.yaml"),
            "- rule: nope\n  condition: x\n  override: {condition: append}\n",
        )
        .expect_err("undefined");
    assert!(err.to_string().contains("not defined earlier"), "{err}");
    let err = bad
        .load(
            Path::new("l2.yaml"),
            "- rule: r1\n  priority: debug\n  override: {priority: append}\n",
        )
        .expect_err("priority cannot append");
    assert!(err.to_string().contains("not allowed"), "{err}");
}

#[test]
fn exceptions_single_and_tuples() {
    let s = set(
        "- rule: r\n  desc: d\n  condition: evt.type = execve\n  output: o\n  priority: warning\n  exceptions:\n  - name: names\n    fields: proc.name\n    values: [cat, ls]\n  - name: pairs\n    fields: [proc.name, proc.pname]\n    comps: [=, in]\n    values: [[sh, [bash, zsh]]]\n",
    );
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    assert_eq!(eval_one(&s, &exec("cat", &["cat"], false)), None);
    assert_eq!(eval_one(&s, &exec("sh", &["sh"], false)), None, "sh under bash is excepted");
    assert_eq!(eval_one(&s, &exec("id", &["id"], false)), Some("r".into()));
}

#[test]
fn minimum_priority_first_match_and_interest() {
    let text = format!(
        "{}{}{}",
        rule(
            "file",
            "'evt.type = open and fd.name startswith /srv/data/ and container.id != host'"
        ),
        rule("any-file", "'evt.type = open and proc.name = cat'"),
        rule("exec", "evt.type = execve").replace("NOTICE", "DEBUG"),
    );
    let s = from_text(Path::new("r.yaml"), &text, Priority::Notice).expect("loads");
    assert_eq!(s.active(), 2, "debug rule below the minimum");
    assert_eq!(s.interest.prefixes, ["/", "/srv/data/"]);
    assert_eq!(s.interest.cgroups, Cgroups::All);
    assert_eq!(s.unscoped, ["any-file"]);
    let only = from_text(Path::new("r.yaml"), &rule("file", "'evt.type in (open, openat) and (fd.directory = /etc or fd.name in (/root/x, /root/y)) and container'").replace("- rule", "- macro: container\n  condition: container.id != host\n- rule"), Priority::Debug).expect("loads");
    assert_eq!(only.interest.prefixes, ["/etc/", "/root/x", "/root/y"]);
    assert_eq!(only.interest.cgroups, Cgroups::Containers);
    let execs = set(&rule("exec", "evt.type = execve"));
    assert_eq!(execs.interest, Interest::default(), "execs need no kernel filter");
}

#[test]
fn shipped_rules_load_disabled_and_compile() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/sensor_rules.yaml");
    let s = load(&[path], Priority::Debug).expect("shipped rules load");
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    assert!(s.rules.len() >= 6, "{}", s.rules.len());
    assert!(s.rules.iter().all(|r| !r.enabled), "shipped disabled");
    assert_eq!(s.active(), 0);
}

/// Events per second through the shipped rule set (all enabled), one core (the same
/// measurement as `sensor rules bench`, which `cargo xtask bench` runs). Run with
/// `cargo test --release -p sensor rules::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "micro-benchmark; run explicitly with --release"]
fn throughput() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/sensor_rules.yaml");
    let s = bench::load(&[path], true, Priority::Debug).expect("load");
    for alerts in [true, false] {
        let t =
            bench::measure(&s, &bench::sample_events(), std::time::Duration::from_secs(1), alerts);
        println!(
            "{} events through {} rules in {:.3}s of CPU ({}): {:.0} events/s/core ({} matched)",
            t.events,
            t.rules,
            t.cpu_seconds,
            if alerts { "alerts built" } else { "conditions only" },
            t.per_cpu_second(),
            t.matched
        );
    }
}

#[test]
fn falco_constructs_bare_values_escapes_transformers_and_field_comparison() {
    let sh = exec("sh", &["sh", "-c", "echo a 2>&1 > /dev/null"], true);
    let f = open("/etc/shadow", &["read"]);
    for (cond, event, want) in [
        // Bare values hold `<`, `>` and `&` (Falco's BareStr).
        ("evt.type = execve and evt.dir=<", &sh, true),
        ("evt.type = execve and evt.dir = >", &sh, false),
        ("proc.args contains 2>&1", &sh, true),
        ("proc.args contains >", &sh, true),
        // Escapes: \x41 is one byte; \" inside "...".
        (r#"proc.name = "s\x68""#, &sh, true),
        (r#"proc.args contains "a\x20""#, &sh, true),
        // Transformers and val().
        ("toupper(proc.name) = SH", &sh, true),
        ("tolower(toupper(proc.name)) = sh", &sh, true),
        ("basename(fd.name) = shadow", &f, true),
        ("proc.name = val(proc.name)", &sh, true),
        ("proc.exepath != val(proc.name)", &sh, true),
        ("b64(proc.name) = sh", &sh, true),
        // Bytes, regex (anchored), iglob.
        ("proc.name bcontains 68", &sh, true),
        ("proc.name bstartswith 7368", &sh, true),
        ("proc.name bstartswith 68", &sh, false),
        (r#"proc.name regex "s.""#, &sh, true),
        (r#"proc.name regex "h""#, &sh, false),
        ("fd.name iglob /ETC/SHA*", &f, true),
        // Output-only fields answer in conditions too.
        ("evt.num > 0 and not evt.num = 0", &sh, true),
        ("evt.res = SUCCESS and evt.rawres >= 0", &f, true),
        ("fd.num >= 0 and evt.arg.flags contains O_RDONLY", &f, true),
    ] {
        assert_eq!(matches(cond, event), want, "{cond}");
    }
}

#[test]
fn list_items_are_pasted_as_falco_does_quotes_and_forward_references() {
    let s = set(&format!(
        "- list: outer\n  items: [inner_late, '\"(sh)\"']\n- list: inner_late\n  items: [bash]\n{}{}",
        rule("quoted", "proc.name in (outer) and proc.args contains quoted"),
        rule("late", "proc.name in (outer)"),
    ));
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    assert_eq!(eval_one(&s, &exec("bash", &["bash"], false)).as_deref(), Some("late"));
    assert_eq!(eval_one(&s, &exec("(sh)", &["(sh)"], false)).as_deref(), Some("late"));
    assert_eq!(eval_one(&s, &exec("sh", &["sh"], false)), None);
}

#[test]
fn unsupported_constructs_skip_one_rule_and_bad_escapes_reject() {
    let s = set(&format!(
        "{}{}{}",
        rule("modifier", "evt.type = execve and proc.name startswith oneof (a, b)"),
        rule("buffer", "evt.type = execve and evt.buffer bcontains 00"),
        rule("ok", "evt.type = execve"),
    ));
    let skipped: Vec<_> = s.skipped.iter().map(|k| (k.name.as_str(), k.reason.as_str())).collect();
    assert_eq!(s.rules.len(), 1);
    assert!(skipped.iter().any(|(n, r)| *n == "modifier" && r.contains("oneof")), "{skipped:?}");
    assert!(skipped.iter().any(|(n, r)| *n == "buffer" && r.contains("evt.buffer")), "{skipped:?}");
    // As in libsinsp, an unknown escape is a syntax error.
    let err =
        from_text(Path::new("r.yaml"), &rule("bad", r#"proc.name = "a\qb""#), Priority::Debug)
            .expect_err("bad escape");
    assert!(err.to_string().contains("escape"), "{err}");
}

#[test]
fn networks_and_output_fields_and_sorted_tags() {
    let b = bind(8080);
    assert!(matches("fd.net = 0.0.0.0/0 and not fd.net in (10.0.0.0/8)", &b));
    let s = set(
        "- rule: t\n  desc: d\n  condition: evt.type = execve\n  output: \"x %proc.name %container.info\"\n  priority: NOTICE\n  tags: [zeta, T1059, alpha]\n",
    );
    let users = Users::new("/nonexistent");
    let mut ev = Evaluator::with_users("node-a".into(), users);
    let m = ev.evaluate(&s, &exec("sh", &["sh"], true), &ProcessTable::default()).expect("matches");
    let v: serde_json::Value = serde_json::from_str(&m.json).expect("json");
    assert_eq!(v["tags"], serde_json::json!(["T1059", "alpha", "zeta"]));
    assert_eq!(v["output_fields"]["evt.time"], 1_777_629_600_123_456_789_i64);
    assert!(v["output_fields"].get("container.id").is_some(), "{v}");
    assert!(v["output"].as_str().is_some_and(|o| o.contains("container_id=")), "{v}");
}

#[test]
fn bench_events_match_as_the_bench_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let s = bench::load(
        &[
            root.join("tests/rules/falco_style_rules.yaml"),
            root.join("deploy/rules/sensor_rules.yaml"),
        ],
        true,
        Priority::Debug,
    )
    .expect("load");
    assert!(s.active() >= 25, "{} rules", s.active());
    let table = ProcessTable::default();
    let mut ev = Evaluator::new("n".into());
    let hits = |ev: &mut Evaluator, events: &[Enriched]| {
        events
            .iter()
            .filter_map(|e| ev.evaluate(&s, e, &table))
            .map(|m| m.rule.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(hits(&mut ev, &bench::sample_events()), ["Shell in container"]);
    assert!(hits(&mut ev, &bench::quiet_events()).is_empty());
}

#[test]
fn alert_json_is_falcos_member_order_with_sorted_output_fields() {
    let s = set(&format!(
        "{}- rule: r\n  desc: d\n  condition: evt.type = execve\n  output: \"x %proc.name %user.uid %container.id \\\"q\\\" %proc.name\"\n  priority: NOTICE\n  tags: [b, a]\n",
        LISTS
    ));
    let mut ev = Evaluator::with_users("node \"a\"".into(), Users::new("/nonexistent"));
    let e = exec("sh", &["sh", "-c", "id"], true);
    let m = ev.evaluate(&s, &e, &ProcessTable::default()).expect("match");
    let abc = "abcdef0123456789".repeat(4);
    assert_eq!(
        m.json,
        format!(
            "{{\"hostname\":\"node \\\"a\\\"\",\"output\":\"10:00:00.123456789: Notice x sh 0 {} \\\"q\\\" sh\",\
             \"output_fields\":{{\"container.id\":\"{}\",\"evt.time\":1777629600123456789,\"proc.name\":\"sh\",\"user.uid\":0}},\
             \"priority\":\"Notice\",\"rule\":\"r\",\"source\":\"syscall\",\"tags\":[\"a\",\"b\"],\
             \"time\":\"2026-05-01T10:00:00.123456789Z\"}}",
            &abc[..12],
            &abc[..12]
        )
    );
    assert_eq!(m.text, format!("10:00:00.123456789: Notice x sh 0 {} \"q\" sh", &abc[..12]));
}
