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
mod load;
mod policy_update;
mod report;
mod scenario;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::bail;

pub use load::helper_main;
use report::{Figure, Report};

/// Repetitions and durations.
pub struct Options {
    /// Runs per figure (≥ 5).
    pub runs: usize,
    /// Seconds per request/response and connection-rate run.
    pub secs: f64,
    /// Seconds per iperf3 run (whole seconds).
    pub iperf_secs: u32,
    /// Seconds per program-cost run (stats on).
    pub prog_secs: f64,
}

impl Options {
    fn new(quick: bool) -> Self {
        if quick {
            Self { runs: 5, secs: 0.5, iperf_secs: 1, prog_secs: 0.5 }
        } else {
            Self { runs: 7, secs: 3.0, iperf_secs: 5, prog_secs: 2.0 }
        }
    }
}

/// What every family gets.
pub struct Ctx<'a> {
    pub topo: &'a env::Topology,
    pub sensor_bin: &'a Path,
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

pub fn bench(root: &Path, sensor_bin: &Path, args: &[String]) -> anyhow::Result<()> {
    let quick = match args {
        [] => false,
        [q] if q == "--quick" => true,
        _ => bail!("usage: cargo xtask bench [--quick]"),
    };
    if !super::bootstrap::is_root() {
        bail!(
            "cargo xtask bench needs root: it creates network namespaces and loads eBPF programs"
        );
    }
    env::install_interrupt_handler();
    env::remove_stale_namespaces();
    let opts = Options::new(quick);
    let start = Instant::now();
    let machine = env::machine();
    let dir = env::TempDir::new("work")?;
    let topo = env::Topology::new()?;
    let ctx = Ctx { topo: &topo, sensor_bin, dir: &dir.0, opts: &opts };
    let floor = bpf::EmptyProg::load()?;
    let mut figs = Vec::new();
    let result =
        datapath::run(&ctx, &mut figs, &floor).and_then(|()| policy_update::run(&ctx, &mut figs));
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
             {} runs per figure; request/response and connection-rate runs last {} s, iperf3 \
             runs {} s, program-cost runs {} s.",
            o.runs, o.secs, o.iperf_secs, o.prog_secs
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
        "Agent: RSS is VmRSS of /proc/<pid>/status at the end of each run; CPU is Δ(utime + \
         stime) of /proc/<pid>/stat over the run's wall time, in % of one CPU; idle is five \
         0.4 s windows with no traffic. BPF map memory is the sum of `memlock` over the map \
         fds the sensor holds (/proc/<pid>/fdinfo), names from bpftool."
            .to_owned(),
        "Program cost: kernel.bpf_stats_enabled=1 only during these runs (its previous value \
         is restored), 16-stream request/response; per program Δrun_time_ns/Δrun_cnt from the \
         sensor's prog fds (fdinfo). `_raw` is that figure; `_net` subtracts the stats floor \
         measured just before in the same run: run_time_ns/run_cnt of an empty tc program \
         (r0 = TC_ACT_UNSPEC; exit) run 200,000 times through BPF_PROG_TEST_RUN with stats on. \
         The floor holds the sched_clock() pair and the counter update that stats add to every \
         run, plus the dispatch of an empty program."
            .to_owned(),
        "Policy update: sensor in enforce mode with 100 endpoints; the client is allowed by a \
         policy with N unmatched fromCIDR entries plus its /24. A helper in the client \
         namespace renames a policy file with N + 1 unmatched entries (no allow) into the \
         policy directory and opens a new connection after another (100 ms connect timeout) \
         until one is dropped: `to_drop` is the time from the rename to the start of that \
         attempt. `to_allow` is the same for renaming the allowing file back (20 ms probes)."
            .to_owned(),
        "Ratios: each figure's median over the median of the same figure in its baseline \
         configuration from this invocation (datapath: no-sensor; agent and program: detect; \
         policy update: 100 rules). Targets are the issue's goals, reported, never asserted."
            .to_owned(),
    ]
}
