//! Datapath family: TCP throughput (iperf3), request/response with 1 and 16 streams and
//! connection rate through client ns → node ns → server ns, in five configurations: no sensor
//! (baseline), sensor in detect mode, enforce with a small allow policy, enforce with 10,000
//! CIDR rules and 100 endpoints, and nftables with the equivalent 10,000 rules. With the
//! sensor: its RSS and CPU idle and under each load, BPF map memory, and the per-packet cost
//! of each tc program from kernel.bpf_stats_enabled minus the stats floor.

use std::{collections::BTreeMap, fs, time::Instant};

use anyhow::{Context as _, bail};

use super::{
    COMPARE_SUFFIX, Ctx, add,
    bpf::{self, EmptyProg},
    env::{self, IPERF_PORT, Proc, RR_PORT, Sensor, SysctlGuard, check_interrupted},
    load,
    report::{Figure, Target},
    scenario,
};

const FAMILY: &str = "datapath";
const AGENT: &str = "agent";
pub const BASELINE: &str = "no-sensor";
const DETECT: &str = "detect";
const ENFORCE: &str = "enforce";
const ENFORCE_10K: &str = "enforce-10k-cidr";
const NFT_10K: &str = "nftables-10k";
const CONFIGS: [&str; 5] = [BASELINE, DETECT, ENFORCE, ENFORCE_10K, NFT_10K];
/// Configurations repeated with `--compare-bin`'s sensor (name + `COMPARE_SUFFIX`).
const COMPARED: [&str; 2] = [DETECT, ENFORCE_10K];

/// This run's configurations: the five, and the compared ones again with the other sensor.
fn configs(ctx: &Ctx) -> Vec<String> {
    let mut v: Vec<String> = CONFIGS.iter().map(|c| (*c).to_owned()).collect();
    if ctx.compare_bin.is_some() {
        v.extend(COMPARED.iter().map(|c| format!("{c}{COMPARE_SUFFIX}")));
    }
    v
}
const RULES: usize = 10_000;

/// The nftables table of the nftables configuration, deleted on drop.
struct NftTable<'a> {
    ctx: &'a Ctx<'a>,
}

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        let _ = self.ctx.topo.node.run(&["nft", "delete", "table", "inet", "sbench"]);
    }
}

fn setup<'a>(
    ctx: &'a Ctx<'a>,
    config: &str,
) -> anyhow::Result<(Option<Sensor>, Option<NftTable<'a>>)> {
    let t = ctx.topo;
    let dir = ctx.dir.join(config);
    let (config, bin) = match (config.strip_suffix(COMPARE_SUFFIX), ctx.compare_bin) {
        (Some(base), Some(other)) => (base, other),
        _ => (config, ctx.sensor_bin),
    };
    let policies = dir.join("policies");
    fs::create_dir_all(&policies)?;
    let sensor = |mode: &str, endpoints: String, policy: String| -> anyhow::Result<Sensor> {
        fs::write(dir.join("endpoints.yaml"), endpoints)?;
        fs::write(policies.join("bench.yaml"), policy)?;
        let yaml = format!(
            "mode: {mode}\npolicy_dir: {}\nendpoints_file: {}\n",
            policies.display(),
            dir.join("endpoints.yaml").display()
        );
        Sensor::start(bin, &t.node, &dir, config, &yaml)
    };
    Ok(match config {
        DETECT => {
            (Some(sensor("detect", scenario::endpoints_small(t), scenario::policy_small())?), None)
        }
        ENFORCE => {
            (Some(sensor("enforce", scenario::endpoints_small(t), scenario::policy_small())?), None)
        }
        ENFORCE_10K => (
            Some(sensor(
                "enforce",
                scenario::endpoints_100(t),
                scenario::policy_cidr(RULES, true),
            )?),
            None,
        ),
        NFT_10K => {
            let file = dir.join("rules.nft");
            fs::write(&file, scenario::nft_rules(RULES, t.server_ip))?;
            let guard = NftTable { ctx };
            t.node.run(&["nft", "-f", &file.display().to_string()])?;
            (None, Some(guard))
        }
        _ => (None, None),
    })
}

/// The loads, each returning one rate sample.
const LOADS: [(&str, &str); 4] = [
    ("tcp_stream", "Gbit/s"),
    ("tcp_rr_1", "tx/s"),
    ("tcp_rr_16", "tx/s"),
    ("tcp_crr_4", "conn/s"),
];

fn run_load(ctx: &Ctx, load: &str) -> anyhow::Result<f64> {
    let t = ctx.topo;
    let rr_addr = format!("{}:{RR_PORT}", t.server_ip);
    let crr_addr = format!("{}:{}", t.server_ip, RR_PORT + 1);
    let secs = ctx.opts.secs.to_string();
    match load {
        "tcp_stream" => {
            let out = env::output(t.client.pinned("iperf3").args([
                "-c",
                &t.server_ip.to_string(),
                "-p",
                &IPERF_PORT.to_string(),
                "-t",
                &ctx.opts.iperf_secs.to_string(),
                "-J",
            ]))?;
            let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
            v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .map(|b| b / 1e9)
                .context("no end.sum_received.bits_per_second in iperf3 output")
        }
        "tcp_rr_1" => load::rate(&load::run_helper(&t.client, &["rr", &rr_addr, "1", &secs])?),
        "tcp_rr_16" => load::rate(&load::run_helper(&t.client, &["rr", &rr_addr, "16", &secs])?),
        "tcp_crr_4" => load::rate(&load::run_helper(&t.client, &["crr", &crr_addr, "4", &secs])?),
        _ => bail!("unknown load {load}"),
    }
}

pub fn run(ctx: &Ctx, figs: &mut Vec<Figure>, floor: &EmptyProg) -> anyhow::Result<()> {
    let t = ctx.topo;
    let _server = load::start_server(&t.server, t.server_ip, RR_PORT)?;
    let _iperf = Proc::spawn(
        t.server
            .pinned("iperf3")
            .args(["-s", "-B", &t.server_ip.to_string(), "-p"])
            .arg(IPERF_PORT.to_string())
            .stdout(std::process::Stdio::null()),
        "iperf3 server",
    )?;
    wait_listening(&t.server, IPERF_PORT)?;
    // Rounds: every configuration once per round, set up and torn down each time (the sensor
    // started fresh and its pins removed), in reverse order every other round, so that drift
    // in the machine's load hits every configuration alike.
    let rounds = ctx.opts.rounds;
    for round in 0..rounds {
        let n = ctx.opts.in_round(round);
        let all = configs(ctx);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        for config in super::round_order(&all, round) {
            check_interrupted()?;
            env::progress(format_args!("datapath round {}/{rounds}, {config}", round + 1));
            let (mut sensor, nft) = setup(ctx, config)?;
            // Warm-up, and proof that the allowed traffic passes in this configuration.
            run_load(ctx, "tcp_rr_1")
                .with_context(|| format!("traffic does not pass with {config}"))?;
            if let Some(s) = &sensor {
                idle(ctx, s.pid(), config, figs, n)?;
            }
            for _ in 0..n {
                for (load, unit) in LOADS {
                    check_interrupted()?;
                    let before = sensor
                        .as_ref()
                        .map(|s| (s.pid(), Instant::now(), scenario::cpu_seconds(s.pid())));
                    let rate =
                        run_load(ctx, load).with_context(|| format!("{load} with {config}"))?;
                    let mut f = Figure::new(FAMILY, load, config, unit).baseline(BASELINE);
                    if load.starts_with("tcp_rr") && matches!(config, ENFORCE | ENFORCE_10K) {
                        f = f.target(Target::RatioAtLeastAndAbove(0.95, NFT_10K));
                    }
                    add(figs, f, rate);
                    if let Some((pid, start, Ok(cpu0))) = before {
                        let cpu =
                            (scenario::cpu_seconds(pid)? - cpu0) / start.elapsed().as_secs_f64();
                        add(figs, agent_fig(&format!("cpu_{load}"), config, "% CPU"), cpu * 100.0);
                        add(figs, rss_fig(&format!("rss_{load}"), config), scenario::rss_mib(pid)?);
                    }
                }
            }
            if let Some(s) = &mut sensor {
                s.check_alive()?;
                // A reload re-decides every flow on its next packet: none may happen here.
                let reloads = s.log_text().matches("policy reloaded").count();
                if reloads > 0 {
                    env::progress(format_args!("warning: {reloads} policy reloads with {config}"));
                }
                program_cost(ctx, s.pid(), config, figs, floor, n)?;
                for _ in 0..n {
                    map_memory(s.pid(), config, figs)?;
                }
            }
            // Tear down before the next configuration: sensor stopped and its pins removed
            // (links detached), nftables table deleted.
            drop(sensor);
            drop(nft);
        }
    }
    Ok(())
}

/// Polls until something listens on `port` in `ns` (5 s at most).
fn wait_listening(ns: &env::Netns, port: u16) -> anyhow::Result<()> {
    let end = Instant::now() + std::time::Duration::from_secs(5);
    while ns.run(&["ss", "-Htln", &format!("sport = :{port}")])?.trim().is_empty() {
        if Instant::now() > end {
            bail!("nothing listens on port {port} after 5 s");
        }
        env::sleep(std::time::Duration::from_millis(20))?;
    }
    Ok(())
}

fn agent_fig(name: &str, config: &str, unit: &'static str) -> Figure {
    Figure::new(AGENT, name, config, unit).baseline(DETECT)
}

fn rss_fig(name: &str, config: &str) -> Figure {
    let f = agent_fig(name, config, "MiB");
    if config == ENFORCE_10K {
        f.target(Target::AtMost(64.0)).note("100 endpoints, 10,000 rules")
    } else {
        f
    }
}

/// RSS and CPU with no traffic (`n` windows), after a short settle.
fn idle(ctx: &Ctx, pid: u32, config: &str, figs: &mut Vec<Figure>, n: usize) -> anyhow::Result<()> {
    env::sleep(std::time::Duration::from_secs_f64(ctx.opts.idle_secs * 2.0))?;
    for _ in 0..n {
        let (t0, c0) = (Instant::now(), scenario::cpu_seconds(pid)?);
        env::sleep(std::time::Duration::from_secs_f64(ctx.opts.idle_secs))?;
        let cpu = (scenario::cpu_seconds(pid)? - c0) / t0.elapsed().as_secs_f64();
        add(figs, agent_fig("cpu_idle", config, "% CPU"), cpu * 100.0);
        add(figs, rss_fig("rss_idle", config), scenario::rss_mib(pid)?);
    }
    Ok(())
}

/// Per-packet cost of each of the sensor's tc programs: Δrun_time_ns / Δrun_cnt over a
/// 16-stream request/response run with kernel.bpf_stats_enabled=1, minus the stats floor
/// (the same reading for an empty tc program, measured in between).
fn program_cost(
    ctx: &Ctx,
    pid: u32,
    config: &str,
    figs: &mut Vec<Figure>,
    floor: &EmptyProg,
    n: usize,
) -> anyhow::Result<()> {
    let names = bpf::names("prog");
    let rr_addr = format!("{}:{RR_PORT}", ctx.topo.server_ip);
    let secs = ctx.opts.prog_secs.to_string();
    let _stats = SysctlGuard::set("kernel.bpf_stats_enabled", "1")?;
    for _ in 0..n {
        let f0 = floor.stats()?;
        floor.test_run(200_000)?;
        let f1 = floor.stats()?;
        let floor_ns =
            (f1.run_time_ns - f0.run_time_ns) as f64 / (f1.run_cnt - f0.run_cnt).max(1) as f64;
        add(
            figs,
            Figure::new("program", "stats_floor", "empty-program", "ns")
                .note("empty tc program, BPF_PROG_TEST_RUN"),
            floor_ns,
        );
        let before = bpf::process_objects(pid)?.0;
        load::run_helper(&ctx.topo.client, &["rr", &rr_addr, "16", &secs])?;
        let after = bpf::process_objects(pid)?.0;
        for (id, a) in &after {
            let Some(b) = before.get(id) else { continue };
            let (name, ty) =
                names.get(id).cloned().unwrap_or_else(|| (format!("prog{id}"), String::new()));
            let runs = a.run_cnt - b.run_cnt;
            if runs < 1000 || !(ty.is_empty() || ty == "sched_cls") {
                continue;
            }
            let raw = (a.run_time_ns - b.run_time_ns) as f64 / runs as f64;
            let mut f =
                Figure::new("program", &format!("{name}_net"), config, "ns").baseline(DETECT);
            if config == ENFORCE_10K {
                f = f.target(Target::AtMost(100.0));
            }
            add(figs, f, raw - floor_ns);
            add(
                figs,
                Figure::new("program", &format!("{name}_raw"), config, "ns").baseline(DETECT),
                raw,
            );
        }
    }
    Ok(())
}

/// Sum of memlock over the maps the sensor holds (the kernel's accounting of map memory),
/// read as often as the other figures.
fn map_memory(pid: u32, config: &str, figs: &mut Vec<Figure>) -> anyhow::Result<()> {
    let maps = bpf::process_objects(pid)?.1;
    let names = bpf::names("map");
    let total: u64 = maps.values().sum();
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for (id, bytes) in &maps {
        let name = names.get(id).map_or_else(|| format!("map{id}"), |n| n.0.clone());
        *by_name.entry(name).or_default() += bytes;
    }
    let mut largest: Vec<(String, u64)> = by_name.into_iter().collect();
    largest.sort_by_key(|e| std::cmp::Reverse(e.1));
    let note = largest
        .iter()
        .take(4)
        .map(|(n, b)| format!("{n} {:.1} MiB", *b as f64 / 1048576.0))
        .collect::<Vec<_>>()
        .join(", ");
    add(
        figs,
        agent_fig("bpf_map_memlock", config, "MiB")
            .note(format!("{} maps; largest: {note}", maps.len())),
        total as f64 / 1048576.0,
    );
    Ok(())
}
