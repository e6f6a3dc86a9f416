//! `cargo xtask bench [--quick]` (DESIGN.md §8): measures the sensor against baselines taken
//! in the same invocation, only inside network namespaces it creates, and writes
//! target/bench/report.json and report.md.
//!
//! One module per measurement family; a family gets a [`Ctx`] and appends [`Figure`]s (each
//! naming the configuration it is compared with). To add one: a module with
//! `run(ctx, figs)`, a call in [`bench`], and a line in `methods`.

mod bpf;
mod datapath;
mod env;
mod host;
mod load;
mod pipeline;
mod policy_update;
mod report;
mod rules;
mod scenario;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};

pub use load::helper_main;
use report::{Figure, Report};

/// Repetitions and durations.
pub struct Options {
    /// Samples per figure (≥ 5).
    pub runs: usize,
    /// Rounds of a family with several configurations: each round visits every configuration
    /// (in reverse order every other round) and takes its share of the samples, so drift in
    /// the machine's load hits them alike.
    pub rounds: usize,
    /// Seconds per request/response and connection-rate run.
    pub secs: f64,
    /// Seconds per iperf3 run (whole seconds).
    pub iperf_secs: u32,
    /// Seconds per program-cost run (stats on).
    pub prog_secs: f64,
    /// Seconds per agent idle window (the settle before them is twice that).
    pub idle_secs: f64,
    /// Seconds per host loop run (open+close, spawn+exec).
    pub host_secs: f64,
    /// Seconds per offered-rate step of the pipeline search.
    pub step_secs: f64,
    /// Bisections after the pipeline search bracketed the zero-loss rate.
    pub bisections: usize,
    /// CPU seconds per rules engine pass.
    pub rules_secs: f64,
}

impl Options {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                runs: 5,
                rounds: 2,
                secs: 0.3,
                iperf_secs: 1,
                prog_secs: 0.3,
                idle_secs: 0.3,
                host_secs: 0.2,
                step_secs: 0.25,
                bisections: 1,
                rules_secs: 0.2,
            }
        } else {
            Self {
                runs: 7,
                rounds: 7,
                secs: 2.0,
                iperf_secs: 3,
                prog_secs: 2.0,
                idle_secs: 0.5,
                host_secs: 1.5,
                step_secs: 1.0,
                bisections: 3,
                rules_secs: 1.0,
            }
        }
    }

    /// Samples taken in `round`: the runs spread over the rounds, earlier rounds taking one
    /// more when they do not divide evenly.
    pub fn in_round(&self, round: usize) -> usize {
        self.runs / self.rounds + usize::from(round < self.runs % self.rounds)
    }
}

/// `items` in order in even rounds, reversed in odd ones.
pub fn round_order<T: Copy>(items: &[T], round: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if round % 2 == 1 {
        v.reverse();
    }
    v
}

/// What every family gets.
pub struct Ctx<'a> {
    pub topo: &'a env::Topology,
    pub sensor_bin: &'a Path,
    /// `--compare-bin`: another build of the sensor (e.g. landed main), run side by side in
    /// the same rounds under configurations suffixed [`COMPARE_SUFFIX`].
    pub compare_bin: Option<&'a Path>,
    /// The workspace (shipped rule files).
    pub root: &'a Path,
    /// Scratch directory for config, policy and log files (removed at the end).
    pub dir: &'a Path,
    pub opts: &'a Options,
}

/// Appends `v` to the figure with the same family, name and config, or adds `f` with it.
pub fn add(figs: &mut Vec<Figure>, f: Figure, v: f64) {
    match figs.iter_mut().find(|g| g.family == f.family && g.name == f.name && g.config == f.config)
    {
        Some(g) => g.samples.push(v),
        None => {
            let mut f = f;
            f.samples.push(v);
            figs.push(f);
        }
    }
}

/// Suffix of the configurations run with `--compare-bin`'s sensor.
pub const COMPARE_SUFFIX: &str = "@compare";

/// Families in the order they run.
const FAMILIES: [&str; 5] = ["datapath", "policy_update", "host", "pipeline", "rules"];

/// Command-line options: `[--quick] [--compare-bin PATH] [--only FAMILY,...]`.
struct Args {
    quick: bool,
    compare_bin: Option<PathBuf>,
    only: Option<Vec<String>>,
}

fn parse_args(args: &[String]) -> anyhow::Result<Args> {
    const USAGE: &str = "usage: cargo xtask bench [--quick] [--compare-bin PATH] [--only FAMILY,...] \
                         (families: datapath, policy_update, host, pipeline, rules)";
    let mut out = Args { quick: false, compare_bin: None, only: None };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => out.quick = true,
            "--compare-bin" => {
                let path = PathBuf::from(it.next().context(USAGE)?);
                if !path.is_file() {
                    bail!("--compare-bin {}: no such file", path.display());
                }
                out.compare_bin = Some(path);
            }
            "--only" => {
                let list: Vec<String> =
                    it.next().context(USAGE)?.split(',').map(str::to_owned).collect();
                if let Some(bad) = list.iter().find(|f| !FAMILIES.contains(&f.as_str())) {
                    bail!("--only: unknown family {bad:?}; {USAGE}");
                }
                out.only = Some(list);
            }
            _ => bail!("{USAGE}"),
        }
    }
    Ok(out)
}

pub fn bench(root: &Path, sensor_bin: &Path, args: &[String]) -> anyhow::Result<()> {
    let args = parse_args(args)?;
    let quick = args.quick;
    let wanted =
        |family: &str| args.only.as_ref().is_none_or(|only| only.iter().any(|f| f == family));
    if !super::bootstrap::is_root() {
        bail!(
            "cargo xtask bench needs root: it creates network namespaces and loads eBPF programs"
        );
    }
    env::progress(format_args!("start ({})", if quick { "quick" } else { "full" }));
    env::install_interrupt_handler();
    env::remove_stale(sensor_bin);
    let opts = Options::new(quick);
    let start = Instant::now();
    let mut machine = env::machine();
    let dir = env::TempDir::new("work")?;
    let topo = env::Topology::new()?;
    let ctx = Ctx {
        topo: &topo,
        sensor_bin,
        compare_bin: args.compare_bin.as_deref(),
        root,
        dir: &dir.0,
        opts: &opts,
    };
    let floor = bpf::EmptyProg::load()?;
    let mut figs = Vec::new();
    let mut timings = Vec::new();
    let mut timed = |name: &'static str, f: &mut dyn FnMut() -> anyhow::Result<()>| {
        let t = Instant::now();
        let r = f();
        timings.push(format!("{name} {:.0} s", t.elapsed().as_secs_f64()));
        r
    };
    let result = (|| {
        if wanted("datapath") {
            timed("datapath", &mut || datapath::run(&ctx, &mut figs, &floor))?;
        }
        if wanted("policy_update") {
            timed("policy_update", &mut || policy_update::run(&ctx, &mut figs))?;
        }
        if wanted("host") || wanted("pipeline") {
            let scene = host::Scene::new(&ctx)?;
            if wanted("host") {
                timed("host", &mut || host::run(&ctx, &mut figs, &scene))?;
            }
            if wanted("pipeline") {
                timed("pipeline", &mut || pipeline::run(&ctx, &mut figs, &scene))?;
            }
        }
        if wanted("rules") {
            timed("rules", &mut || rules::run(&ctx, &mut figs))?;
        }
        Ok(())
    })();
    timings.push(format!("total {:.0} s", start.elapsed().as_secs_f64()));
    machine.push(("duration", timings.join(", ")));
    let out: PathBuf = root.join("target/bench");
    let report = Report { quick, machine, methods: methods(&opts), figures: figs };
    // A partial report is still written when a family fails, then the error is returned.
    report.write(&out)?;
    eprintln!(
        "bench: wrote {} and report.md ({:.0} s)",
        out.join("report.json").display(),
        start.elapsed().as_secs_f64()
    );
    result
}

fn methods(o: &Options) -> Vec<String> {
    vec![
        format!(
            "Topology: client ns ↔ node ns ↔ server ns over two veth pairs (10.200.1.0/30, \
             10.200.2.0/30), routed by the node namespace; the sensor runs in the node namespace \
             (nsenter) and attaches to the host-side veths through its default `veth*` glob. \
             Every sensor start has a bpffs pin directory of its own, removed with `sensor \
             cleanup` when that configuration ends (links detached), so no program of one \
             configuration runs during another. Request/response and connection-rate runs last \
             {} s, iperf3 runs {} s, program-cost runs {} s.",
            o.secs, o.iperf_secs, o.prog_secs
        ),
        format!(
            "Samples: {} per figure. Interleaving: the datapath and host families run in {} \
             rounds; a round sets up each configuration (sensor started fresh, nftables rules \
             loaded), takes its share of the samples of each of its figures ({}) and tears it \
             down, visiting the configurations in reverse order every other round, so drift in \
             the machine's load hits every configuration alike.",
            o.runs,
            o.rounds,
            (0..o.rounds).map(|r| o.in_round(r).to_string()).collect::<Vec<_>>().join(", ")
        ),
        "Configurations: `no-sensor` (baseline); `detect` (sensor in detect mode, small \
         policy); `enforce` (client and server endpoints, one fromEndpoints allow on the bench \
         ports); `enforce-10k-cidr` (100 endpoints, the client outside them, a \
         CiliumNetworkPolicy with 10,000 fromCIDR /24 entries that match no bench traffic plus \
         one allowing the client's /24); `nftables-10k` (no sensor; the same 10,000 rules as \
         nftables rules with a counter each in the node namespace's forward chain, evaluated in \
         order for every packet, the server's replies accepted by conntrack after them)."
            .to_owned(),
        "Loads: `tcp_stream` is iperf3 -c (one stream, Gbit/s received); `tcp_rr_1` and \
         `tcp_rr_16` are 1 and 16 connections doing 1-byte request/1-byte response back to \
         back (transactions/s summed); `tcp_crr_4` is 4 loops of connect, 1-byte \
         request/response, close (connections/s). The client and server are xtask itself \
         (std threads), entered into the namespaces with nsenter. Every traffic process (iperf3 \
         and the helpers) is pinned to CPU 0 with taskset, so ping-pong does not depend on \
         waking an idle vCPU; the sensor is not pinned."
            .to_owned(),
        format!(
            "Host: a helper (xtask, pinned to CPU 0) moves itself into a cgroup the bench made \
             and loops for {} s after a 64-operation warm-up: `open_close` is File::open \
             (openat O_RDONLY|O_CLOEXEC) + close of a 1-byte file, `fork_exec` is \
             std::process::Command::status() of a copy of /bin/true (posix_spawn: clone with \
             CLONE_VM|CLONE_VFORK, execve, waitpid; stdio inherited); ns/op = run time / \
             operations. The cgroup is named like a containerd container that the endpoints file \
             puts in a pod; one HostPolicy (Audit) selects that pod and names one directory in \
             `files` (read) and `executables`. `filtered-out`: the helper opens and runs files of \
             another directory (its cgroup is watched: the open's path is resolved and looked up \
             in the kernel, then dropped; execs are always reported). `audit-all`: files of the \
             named directory (every open and exec is an event). `unscoped`: the named directory \
             from a cgroup no policy selects. The sensor (detect mode, no tc interface) writes \
             to stdout, which is /dev/null; it is started once per round for these three.",
            o.host_secs
        ),
        format!(
            "Pipeline: the sensor of the host configurations writes its records to a file \
             output (`outputs: [file]`, in the scratch directory, emptied before each step; the \
             realistic case of a node agent feeding a log shipper). A paced helper (pinned to \
             CPU 0, in the watched cgroup) opens an audited file of its own per step at a given \
             rate for {} s, catching up in bursts when it falls behind. A step is lossless when \
             the file holds one record per open (counted by the step's path once no record \
             arrived for 300 ms) and neither \
             `sensor_lost_events_total` nor `sensor_output_dropped_total` moved (other \
             processes' events count too: every exec on the machine is reported). Search per \
             run: from half the previous result (first run: 12,500/s) down until lossless, up \
             by doubling until a loss, then {} geometric bisections; `zero_loss_rate` is the \
             highest lossless step, `loss_at_2x` the share of opens missing from the file at \
             twice that rate (split into ring buffer losses and output queue drops). Baseline: \
             the helper's unpaced open rate with no sensor, half the runs before the sensor \
             starts and half after it stopped.",
            o.step_secs, o.bisections
        ),
        format!(
            "Rules: `sensor rules bench` (hidden subcommand; the same code as the ignored \
             `rules::tests::throughput` test) runs six synthetic enriched events (execs in and \
             out of a container, two opens, a bind) in turn through the rule set on one thread \
             for {} s of that thread's CPU time (time preempted by other work does not count): \
             `evaluate` is the agent's path (the first matching rule's alert built as JSON, one \
             event in six matching), `evaluate_no_alert` the same path on events no rule \
             matches, `match_only` the conditions alone. `shipped-all-enabled` is \
             deploy/rules/sensor_rules.yaml with every rule enabled, `corpus-all-enabled` \
             tests/rules/falco_style_rules.yaml (Falco-style: macros, lists, exceptions) with \
             it (25+ rules, the goal's set); baseline `no-rules` is the \
             same loop with an empty rule set (the harness and dispatch alone), alternating.",
            o.rules_secs
        ),
        format!(
            "Agent: RSS is VmRSS of /proc/<pid>/status at the end of each run; CPU is Δ(utime + \
             stime) of /proc/<pid>/stat over the run's wall time, in % of one CPU; idle is \
             windows of {} s with no traffic after a settle of twice that. Under host loads the \
             run is the helper's (its spawn included); in the pipeline, a step from the start \
             of the generator to the last record that reached the file. BPF map memory is the \
             sum of `memlock` over the map fds the sensor holds (/proc/<pid>/fdinfo), names \
             from bpftool.",
            o.idle_secs
        ),
        "Program cost: kernel.bpf_stats_enabled=1 only during these runs (its previous value \
         is restored), 16-stream request/response; per program Δrun_time_ns/Δrun_cnt from the \
         sensor's prog fds (fdinfo). `_raw` is that figure; `_net` subtracts the stats floor \
         measured just before in the same run: run_time_ns/run_cnt of an empty tc program \
         (r0 = TC_ACT_UNSPEC; exit) run 200,000 times through BPF_PROG_TEST_RUN with stats on. \
         The floor holds the sched_clock() pair and the counter update that stats add to every \
         run, plus the dispatch of an empty program. `sys_enter_raw` and `sys_exit_raw` are \
         the same reading for the raw syscall tracepoint programs (every syscall of the \
         machine runs both) over open+close loops in each host configuration, floor \
         included."
            .to_owned(),
        "Policy update: sensor in enforce mode with 100 endpoints; the client is allowed by a \
         policy with N unmatched fromCIDR entries plus its /24. A helper in the client \
         namespace renames a policy file with N + 1 unmatched entries (no allow), written in \
         a directory the sensor does not watch, into the policy directory and opens a new \
         connection after another (100 ms connect timeout) until one is dropped: `to_drop` is \
         the time from the rename to the start of that attempt. `to_allow` is the same for \
         renaming the allowing file back (20 ms probes). `settle` and `reload` are the \
         agent's own timings from its `policy reloaded` log line: from the first change \
         notification to the start of the load (the debounce: 20 ms without a further change, \
         500 ms at most), and the load itself (read, parse, compile, write the maps, switch)."
            .to_owned(),
        "Ratios: each figure's median over the median of the same figure in its baseline \
         configuration from this invocation (datapath and host: no-sensor; agent: detect, or \
         filtered-out under host loads; program: detect; policy update: 100 rules; pipeline: \
         no-sensor; rules: no-rules). Targets are the issue's goals, reported, never asserted; \
         a goal in units also shows the median's ratio to it."
            .to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_share_the_runs_and_alternate_the_order() {
        let quick = Options::new(true);
        assert_eq!((0..quick.rounds).map(|r| quick.in_round(r)).sum::<usize>(), quick.runs);
        assert_eq!((quick.in_round(0), quick.in_round(1)), (3, 2));
        let full = Options::new(false);
        assert!((0..full.rounds).all(|r| full.in_round(r) == 1));
        assert_eq!(round_order(&["a", "b", "c"], 0), ["a", "b", "c"]);
        assert_eq!(round_order(&["a", "b", "c"], 1), ["c", "b", "a"]);
    }

    #[test]
    fn metric_sums_add_every_label_set() {
        let text = "# TYPE sensor_lost_events counter\n\
                    sensor_lost_events_total{ring=\"host\",reason=\"ringbuf_full\"} 3\n\
                    sensor_lost_events_total{ring=\"host\",reason=\"open_scratch_full\"} 2\n\
                    sensor_lost_events_created 1.7e9\n\
                    sensor_host_watched_cgroups 1\n";
        assert_eq!(env::metric_sum(text, "sensor_lost_events"), 5.0);
        assert_eq!(env::metric_sum(text, "sensor_host_watched_cgroups"), 1.0);
        assert_eq!(env::metric_sum(text, "sensor_output_dropped"), 0.0);
    }
}
