//! Host family: the cost of the sensor's host hooks to a process, as ns per `open()+close()`
//! and per spawn+exec+wait of a copy of /bin/true, measured by a helper loop in a cgroup the
//! bench made, in four configurations: no sensor (baseline); sensor with a HostPolicy whose
//! file rule names another directory (`filtered-out`: the process is watched, its opens are
//! looked up and dropped in the kernel); every open audited (`audit-all`: the rule names the
//! opened file's directory, each open becomes an event); and the process outside every
//! policy's scope (`unscoped`: one hash lookup per syscall). Execs are always reported. With
//! the sensor: its CPU and RSS under each load.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    Ctx, add, bpf,
    env::{self, Cgroup, Sensor, SysctlGuard, check_interrupted, metric_sum},
    load,
    report::{Figure, Target},
    scenario,
};

const FAMILY: &str = "host";
const BASELINE: &str = "no-sensor";
const FILTERED: &str = "filtered-out";
const AUDIT: &str = "audit-all";
const UNSCOPED: &str = "unscoped";

/// (figure, helper role).
const LOADS: [(&str, &str); 2] = [("open_close", "open-close"), ("fork_exec", "exec")];

/// The host scene: a directory the policy watches and one it does not, each holding a small
/// file and a copy of /bin/true; a cgroup named like a containerd container that the
/// endpoints file puts in a pod the policy selects, and a plain cgroup no policy selects.
pub struct Scene {
    pub dir: PathBuf,
    /// Canonical paths (what the kernel reports).
    pub watched: PathBuf,
    pub other: PathBuf,
    pub pod: Cgroup,
    pub plain: Cgroup,
}

impl Scene {
    pub fn new(ctx: &Ctx) -> anyhow::Result<Self> {
        let dir = ctx.dir.join("host");
        let mut data = Vec::new();
        for sub in ["watched", "other"] {
            let d = dir.join("data").join(sub);
            fs::create_dir_all(&d)?;
            fs::write(d.join("f"), "x")?;
            fs::copy("/bin/true", d.join("true")).context("copying /bin/true")?;
            data.push(fs::canonicalize(&d)?);
        }
        fs::create_dir_all(dir.join("policies"))?;
        let container_id = format!("{:0>64x}", u128::from(std::process::id()) << 40 | 0xbe4c4);
        fs::write(
            dir.join("endpoints.yaml"),
            format!(
                "endpoints:\n- {{namespace: bench, name: hostbench, labels: {{app: hostbench}}, \
                 containers: [\"containerd://{container_id}\"]}}\n"
            ),
        )?;
        let watched = data.remove(0);
        fs::write(
            dir.join("policies/host.yaml"),
            format!(
                "apiVersion: sensor.dev/v1alpha1\n\
                 kind: HostPolicy\n\
                 metadata: {{name: bench-audit}}\n\
                 spec:\n  \
                   selector: {{namespaces: [bench], podSelector: {{matchLabels: {{app: hostbench}}}}}}\n  \
                   action: Audit\n  \
                   files: [{{prefix: {w}/, access: [read]}}]\n  \
                   executables: [{{prefix: {w}/}}]\n",
                w = watched.display()
            ),
        )?;
        let pod = Cgroup::new(&format!("cri-containerd-{container_id}.scope"))?;
        let plain = Cgroup::new("plain")?;
        Ok(Self { dir, watched, other: data.remove(0), pod, plain })
    }

    /// Starts the sensor (detect mode, no tc interface) with `outputs` (YAML of the config's
    /// `outputs:` list, or none: stdout) and waits until the pod's cgroup is watched.
    pub fn start_sensor(
        &self,
        ctx: &Ctx,
        tag: &str,
        outputs: Option<&str>,
    ) -> anyhow::Result<Sensor> {
        let mut yaml = format!(
            "mode: detect\ninterfaces: [\"sbench-none-*\"]\npolicy_dir: {}\nendpoints_file: {}\n",
            self.dir.join("policies").display(),
            self.dir.join("endpoints.yaml").display()
        );
        if let Some(outputs) = outputs {
            yaml.push_str("outputs:\n");
            yaml.push_str(outputs);
        }
        let mut sensor = Sensor::start(ctx.sensor_bin, &ctx.topo.node, &self.dir, tag, &yaml)?;
        sensor
            .wait_metric("sensor_host_watched_cgroups", Duration::from_secs(10), |v| v >= 1.0)
            .context("the bench's pod cgroup never became watched")?;
        Ok(sensor)
    }
}

/// Operations the helper runs before its clock starts (load.rs `CHUNK`).
const WARM_UP: f64 = 64.0;

/// (ns per operation, operations) of a helper loop (`role` open-close or exec) in `cgroup` on
/// `path`.
pub fn ns_per_op(
    ctx: &Ctx,
    role: &str,
    cgroup: &Cgroup,
    path: &Path,
) -> anyhow::Result<(f64, f64)> {
    let line = load::run_helper(
        &ctx.topo.client,
        &[
            role,
            &cgroup.procs().display().to_string(),
            &path.display().to_string(),
            &ctx.opts.host_secs.to_string(),
        ],
    )?;
    let (n, secs) = load::count_and_secs(&line)?;
    Ok((secs * 1e9 / n, n))
}

pub fn run(ctx: &Ctx, figs: &mut Vec<Figure>, scene: &Scene) -> anyhow::Result<()> {
    // (config, cgroup, directory holding the file opened and the program run)
    let with_sensor = [
        (FILTERED, &scene.pod, &scene.other),
        (AUDIT, &scene.pod, &scene.watched),
        (UNSCOPED, &scene.plain, &scene.watched),
    ];
    let rounds = ctx.opts.rounds;
    for round in 0..rounds {
        let n = ctx.opts.in_round(round);
        // Per round: the no-sensor runs, and one sensor start for the three others (they
        // differ only in which file and cgroup the helper uses), in alternating order.
        for group in super::round_order(&[false, true], round) {
            check_interrupted()?;
            if !group {
                env::progress(format_args!("host round {}/{rounds}, {BASELINE}", round + 1));
                for _ in 0..n {
                    for (name, role) in LOADS {
                        let f = Figure::new(FAMILY, name, BASELINE, "ns/op");
                        let file = if role == "exec" { "true" } else { "f" };
                        let (ns, _) = ns_per_op(ctx, role, &scene.pod, &scene.watched.join(file))?;
                        add(figs, f, ns);
                    }
                }
                continue;
            }
            env::progress(format_args!(
                "host round {}/{rounds}, {FILTERED}, {AUDIT}, {UNSCOPED}",
                round + 1
            ));
            let mut sensor = scene.start_sensor(ctx, "host", None)?;
            for _ in 0..n {
                for (config, cgroup, dir) in super::round_order(&with_sensor, round) {
                    for (name, role) in LOADS {
                        check_interrupted()?;
                        let file = dir.join(if role == "exec" { "true" } else { "f" });
                        let counted = config == AUDIT && name == "open_close";
                        let lost0 = if counted {
                            metric_sum(&sensor.metrics()?, "sensor_lost_events")
                        } else {
                            0.0
                        };
                        let (pid, t0, cpu0) =
                            (sensor.pid(), Instant::now(), scenario::cpu_seconds(sensor.pid())?);
                        let (ns, n) = ns_per_op(ctx, role, cgroup, &file)
                            .with_context(|| format!("{name} with {config}"))?;
                        let cpu = (scenario::cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64();
                        let mut f = Figure::new(FAMILY, name, config, "ns/op").baseline(BASELINE);
                        if name == "open_close" && config == FILTERED {
                            f = f.target(Target::RatioAtMost(1.10));
                        }
                        add(figs, f, ns);
                        let agent = |n: &str, unit| {
                            Figure::new("agent", &format!("{n}_{name}"), config, unit)
                                .baseline(FILTERED)
                        };
                        add(figs, agent("cpu", "% CPU"), cpu * 100.0);
                        add(figs, agent("rss", "MiB"), scenario::rss_mib(pid)?);
                        if counted {
                            // The share of the run's opens (warm-up included) the ring buffer
                            // could not take; other processes' lost events count too.
                            let lost = metric_sum(&sensor.metrics()?, "sensor_lost_events") - lost0;
                            add(
                                figs,
                                Figure::new(FAMILY, "open_close_events_lost", config, "%")
                                    .note("audited opens lost to a full ring buffer"),
                                100.0 * lost / (n + WARM_UP),
                            );
                        }
                    }
                }
            }
            for (config, cgroup, dir) in super::round_order(&with_sensor, round) {
                program_cost(ctx, &sensor, (config, cgroup, &dir.join("f")), figs, n)?;
            }
            sensor.check_alive()?;
        }
    }
    Ok(())
}

/// Time per run of the sensor's raw `sys_enter` / `sys_exit` programs (every syscall of the
/// machine runs both) over open+close loops, from kernel.bpf_stats_enabled (on only during
/// these runs; the figure includes the stats overhead, see `stats_floor`).
fn program_cost(
    ctx: &Ctx,
    sensor: &Sensor,
    (config, cgroup, file): (&str, &Cgroup, &Path),
    figs: &mut Vec<Figure>,
    n: usize,
) -> anyhow::Result<()> {
    let names = bpf::names("prog");
    let _stats = SysctlGuard::set("kernel.bpf_stats_enabled", "1")?;
    for _ in 0..n {
        let before = bpf::process_objects(sensor.pid())?.0;
        ns_per_op(ctx, "open-close", cgroup, file)?;
        let after = bpf::process_objects(sensor.pid())?.0;
        for (id, a) in &after {
            let (Some(b), Some((name, ty))) = (before.get(id), names.get(id)) else { continue };
            let runs = a.run_cnt - b.run_cnt;
            if ty != "raw_tracepoint" || runs < 1000 {
                continue;
            }
            add(
                figs,
                Figure::new("program", &format!("{name}_raw"), config, "ns").baseline(UNSCOPED),
                (a.run_time_ns - b.run_time_ns) as f64 / runs as f64,
            );
        }
    }
    Ok(())
}
