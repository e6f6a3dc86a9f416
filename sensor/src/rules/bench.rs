//! `sensor rules bench` (hidden; `cargo xtask bench` runs it, and the ignored
//! `rules::tests::throughput` test): events per second per core through a rule set, on one
//! thread, with synthetic enriched events like the agent's (execs in and out of a container,
//! two opens, a bind). The clock is the thread's CPU time, so time the thread spends
//! preempted on a busy machine does not count against the engine.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use nix::time::{ClockId, clock_gettime};

use super::{Definitions, Evaluator, Priority, RuleSet, RulesError};
use crate::{
    cli::RulesBenchArgs,
    decode::{FileOp, Header, SockOp},
    host::{
        process::{ProcessInfo, ProcessTable},
        record::{Container, Detail, Enriched, Pod},
    },
};

/// One measurement.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub events: u64,
    /// Events some rule matched.
    pub matched: u64,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    /// Rules running (enabled, at or above the minimum priority).
    pub rules: usize,
}

impl Throughput {
    pub fn per_cpu_second(&self) -> f64 {
        self.events as f64 / self.cpu_seconds.max(1e-9)
    }
}

/// Events between two clock readings.
const BATCH: u64 = 4096;
/// Upper bound on the events of one measurement, whatever the clock says.
const MAX_EVENTS: u64 = 1 << 32;

/// Runs `events` in turn through `set` for `cpu_time` of this thread's CPU time. With
/// `alerts`, each event goes through [`Evaluator::evaluate`] (the agent's path: the first
/// matching rule's alert is built as JSON); without, through [`Evaluator::matches`] (the
/// conditions only).
pub fn measure(set: &RuleSet, events: &[Enriched], cpu_time: Duration, alerts: bool) -> Throughput {
    let mut evaluator = Evaluator::new("bench-node".into());
    let table = ProcessTable::default();
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    let (mut n, mut matched, mut cpu) = (0_u64, 0_u64, 0.0);
    while n < MAX_EVENTS && cpu < cpu_time.as_secs_f64() {
        for _ in 0..BATCH {
            let event = &events[(n % events.len() as u64) as usize];
            let hit = if alerts {
                evaluator.evaluate(set, event, &table).is_some()
            } else {
                evaluator.matches(set, event, &table)
            };
            matched += u64::from(hit);
            n += 1;
        }
        cpu = thread_cpu() - cpu0;
    }
    Throughput {
        events: n,
        matched,
        cpu_seconds: cpu,
        wall_seconds: wall0.elapsed().as_secs_f64(),
        rules: set.active(),
    }
}

fn thread_cpu() -> f64 {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

/// Loads rule files like the agent, optionally with every rule enabled (the shipped set
/// disables all of its rules).
pub fn load(
    paths: &[PathBuf],
    enable_all: bool,
    min_priority: Priority,
) -> Result<RuleSet, RulesError> {
    let mut defs = Definitions::default();
    for file in super::rule_files(paths)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|source| RulesError::Read { path: file.clone(), source })?;
        defs.load(&file, &text)?;
    }
    if enable_all {
        for rule in &mut defs.rules {
            rule.enabled = true;
        }
    }
    Ok(RuleSet::build(&defs, min_priority))
}

/// The CLI: one JSON line per pass: `evaluate` (the agent's path on [`sample_events`], one
/// in six matching, its alert built), `evaluate_no_alert` (the agent's path on
/// [`quiet_events`], which no rule of the shipped set or the corpus matches: the common
/// case), `match_only` (conditions only, on [`sample_events`]).
pub fn run(args: &RulesBenchArgs) -> Result<String, RulesError> {
    let set = load(&args.paths, args.enable_all, args.min_priority.unwrap_or(Priority::Debug))?;
    let (events, quiet) = (sample_events(), quiet_events());
    let cpu_time = Duration::from_secs_f64(args.seconds.clamp(0.01, 60.0));
    let mut out = String::new();
    for (path, events, alerts) in [
        ("evaluate", &events, true),
        ("evaluate_no_alert", &quiet, true),
        ("match_only", &events, false),
    ] {
        let t = measure(&set, events, cpu_time, alerts);
        out.push_str(
            &serde_json::json!({
                "path": path,
                "rules": t.rules,
                "events": t.events,
                "matched": t.matched,
                "cpu_seconds": t.cpu_seconds,
                "wall_seconds": t.wall_seconds,
                "events_per_cpu_second": t.per_cpu_second(),
            })
            .to_string(),
        );
        out.push('\n');
    }
    Ok(out)
}

/// Execs (in a container and on the host), two opens and a bind, as the agent enriches them;
/// one of them (a shell in a container) matches a shipped rule, so the alert path runs too.
pub fn sample_events() -> Vec<Enriched> {
    vec![
        exec("node", &["node", "server.js"], true),
        exec("sh", &["sh", "-c", "id"], true),
        exec("python3", &["python3", "app.py"], false),
        open("/var/lib/app/data.db", &["read", "write"]),
        open("/usr/lib/x86_64-linux-gnu/libc.so.6", &["read"]),
        bind(8080),
    ]
}

/// [`sample_events`] with the container shell replaced by a container `node`: the same
/// mix of event types, none of them matching.
pub fn quiet_events() -> Vec<Enriched> {
    let mut events = sample_events();
    events[1] = exec("node", &["node", "worker.js"], true);
    events
}

fn header(comm: &str) -> Header {
    Header {
        boot_ns: 1,
        cgroup_id: 7,
        pid: 100,
        tid: 100,
        ppid: 99,
        uid: 0,
        gid: 1000,
        euid: 0,
        egid: 1000,
        loginuid: u32::MAX,
        flags: 0,
        action: "observed",
        policy: 0,
        comm: comm.into(),
    }
}

fn process(binary: &str, args: &[&str], comm: &str, ppid: u32) -> ProcessInfo {
    ProcessInfo {
        binary: binary.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        cwd: "/work".into(),
        ppid,
        comm: comm.into(),
        exe_flags: sensor_common::host::FLAG_EXE_CHECKED,
    }
}

pub(super) fn exec(comm: &str, args: &[&str], in_container: bool) -> Enriched {
    Enriched {
        kind: "process_exec",
        header: header(comm),
        detail: Detail::Exec { binary_truncated: false, args_truncated: false },
        process: process(&format!("/usr/bin/{comm}"), args, comm, 99),
        parent: process("/usr/bin/bash", &["bash", "-l"], "bash", 98),
        container: in_container.then(|| Container {
            id: "abcdef0123456789".repeat(4),
            runtime: "containerd",
            info: None,
        }),
        pod: in_container.then(|| Pod {
            namespace: "shop".into(),
            name: "web-1".into(),
            pod_labels: BTreeMap::from([("app".into(), "web".into())]),
        }),
        wall_ns: 1_777_629_600_123_456_789,
    }
}

pub(super) fn open(path: &str, access: &[&'static str]) -> Enriched {
    let mut e = exec("cat", &["cat", path], false);
    e.kind = "process_file";
    e.detail = Detail::File(FileOp {
        header: e.header.clone(),
        operation: "open",
        access: access.to_vec(),
        path: path.into(),
        new_path: None,
        path_truncated: false,
        raw_path: Some(path.into()),
        open_flags: Some(0),
        fd: Some(3),
        dirfd: Some(-100),
        falco_name: Some(path.into()),
    });
    e
}

pub(super) fn bind(port: u16) -> Enriched {
    let mut e = exec("nc", &["nc", "-l"], true);
    e.kind = "process_socket";
    e.detail = Detail::Sock(SockOp {
        header: e.header.clone(),
        operation: "bind",
        protocol: "TCP",
        address: IpAddr::from([0, 0, 0, 0]),
        port,
    });
    e
}
