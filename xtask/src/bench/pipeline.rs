//! Pipeline family: the highest rate of matching host events (audited opens) the agent
//! sustains with zero loss, found by stepping the rate a paced generator offers, and the loss
//! at twice that rate. The sensor writes its records to a file output (as a node agent
//! shipping to a log collector would); a step is lossless when the file holds one record per
//! open and neither `sensor_lost_events_total` (kernel ring buffer) nor
//! `sensor_output_dropped_total` (the output's queue) moved.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    Ctx, add,
    env::{self, Sensor, check_interrupted, metric_sum},
    host::{self, Scene},
    load,
    report::{Figure, Target},
    scenario,
};

const FAMILY: &str = "pipeline";
const BASELINE: &str = "no-sensor";
const CONFIG: &str = "audit-file-output";
/// The first run's first step; later runs start at half the previous result.
const FIRST_RATE: f64 = 12_500.0;
/// Doublings at most while looking for the first lossy rate (12.5k → 3.2M events/s).
const MAX_DOUBLINGS: usize = 8;
/// A step whose generator offered less than this share of the rate asked is limited by the
/// generator, not the agent.
const GENERATOR_SHARE: f64 = 0.97;

/// One step: `rate` asked for `secs`, what was offered and what arrived.
#[derive(Debug, Clone, Copy)]
struct Step {
    rate: f64,
    offered: f64,
    delivered: f64,
    ring_lost: f64,
    output_dropped: f64,
    cpu_pct: f64,
    rss_mib: f64,
}

impl Step {
    fn lossless(&self) -> bool {
        self.delivered >= self.offered && self.ring_lost == 0.0 && self.output_dropped == 0.0
    }

    fn generator_limited(&self, secs: f64) -> bool {
        self.offered < GENERATOR_SHARE * self.rate * secs
    }

    /// Loss in % of the opens offered: records that never reached the file.
    fn loss_pct(&self) -> f64 {
        100.0 * (self.offered - self.delivered).max(0.0) / self.offered.max(1.0)
    }
}

/// Counts the records naming one path appended to the output file since the last reset.
struct Records {
    file: PathBuf,
    needle: String,
    offset: u64,
    partial: Vec<u8>,
    count: u64,
}

impl Records {
    fn new(file: PathBuf) -> Self {
        Self { file, needle: String::new(), offset: 0, partial: Vec::new(), count: 0 }
    }

    /// Counts `path` from now on, and empties the file (the sensor appends: its next write
    /// lands at the new end) so that it does not grow step after step.
    fn reset(&mut self, path: &Path) -> anyhow::Result<()> {
        if let Ok(f) = fs::OpenOptions::new().write(true).open(&self.file) {
            f.set_len(0).with_context(|| format!("truncating {}", self.file.display()))?;
        }
        self.needle = format!("\"{}\"", path.display());
        (self.offset, self.count) = (0, 0);
        self.partial.clear();
        Ok(())
    }

    /// Reads what was appended and returns the count of complete lines naming the path.
    fn update(&mut self) -> anyhow::Result<u64> {
        let Ok(mut f) = fs::File::open(&self.file) else { return Ok(self.count) };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(self.count);
        };
        let needle = self.needle.as_bytes();
        self.count += self.partial[..last]
            .split(|&b| b == b'\n')
            .filter(|line| line.windows(needle.len()).any(|w| w == needle))
            .count() as u64;
        self.partial.drain(..=last);
        Ok(self.count)
    }
}

struct Run<'a> {
    ctx: &'a Ctx<'a>,
    scene: &'a Scene,
    sensor: &'a mut Sensor,
    records: Records,
    steps: usize,
}

impl Run<'_> {
    /// Offers `rate` audited opens per second for `step_secs` on a file of its own (records
    /// of an earlier step cannot count), then waits until every record is in the output file,
    /// or none arrived for 300 ms (10 s at most). The agent's CPU is taken from the start to
    /// the last record seen.
    fn step(&mut self, rate: f64) -> anyhow::Result<Step> {
        check_interrupted()?;
        self.steps += 1;
        let target = self.scene.watched.join(format!("step-{}", self.steps));
        fs::write(&target, "x")?;
        self.records.reset(&target)?;
        let m0 = self.sensor.metrics()?;
        let pid = self.sensor.pid();
        let (t0, cpu0) = (Instant::now(), scenario::cpu_seconds(pid)?);
        let line = load::run_helper(
            &self.ctx.topo.client,
            &[
                "paced",
                &self.scene.pod.procs().display().to_string(),
                &target.display().to_string(),
                &format!("{rate:.0}"),
                &self.ctx.opts.step_secs.to_string(),
            ],
        )?;
        let (offered, _) = load::count_and_secs(&line)?;
        let end = Instant::now() + Duration::from_secs(10);
        let (mut last, mut progress_at) = (0, Instant::now());
        let mut cpu_at_progress = scenario::cpu_seconds(pid)?;
        loop {
            let n = self.records.update()?;
            if n > last {
                (last, progress_at) = (n, Instant::now());
                cpu_at_progress = scenario::cpu_seconds(pid)?;
            }
            if n as f64 >= offered || progress_at.elapsed() > Duration::from_millis(300) {
                break;
            }
            if Instant::now() > end {
                break;
            }
            env::sleep(Duration::from_millis(20))?;
        }
        let cpu = (cpu_at_progress - cpu0) / (progress_at - t0).as_secs_f64();
        let m1 = self.sensor.metrics()?;
        let delta = |name: &str| metric_sum(&m1, name) - metric_sum(&m0, name);
        let step = Step {
            rate,
            offered,
            delivered: self.records.update()? as f64,
            ring_lost: delta("sensor_lost_events"),
            output_dropped: delta("sensor_output_dropped"),
            cpu_pct: cpu * 100.0,
            rss_mib: scenario::rss_mib(pid)?,
        };
        env::progress(format_args!(
            "pipeline {rate:.0}/s: offered {offered:.0}, delivered {:.0}, ring lost {:.0}, \
             output dropped {:.0}",
            step.delivered, step.ring_lost, step.output_dropped
        ));
        Ok(step)
    }

    /// The highest lossless rate: from `start` down until lossless, up by doubling until a
    /// loss, then `bisections` geometric bisections. Returns (best step, first lossy rate, or
    /// None when the generator could not offer more).
    fn search(&mut self, start: f64, bisections: usize) -> anyhow::Result<(Step, Option<f64>)> {
        let secs = self.ctx.opts.step_secs;
        let mut rate = start;
        let mut good = None;
        let mut bad = None;
        for _ in 0..MAX_DOUBLINGS {
            let s = self.step(rate)?;
            if s.lossless() {
                good = Some(s);
                break;
            }
            bad = Some(rate);
            rate /= 2.0;
        }
        let Some(mut good) = good else {
            anyhow::bail!("loss even at {rate:.0} events/s");
        };
        let mut limited = good.generator_limited(secs);
        for _ in 0..MAX_DOUBLINGS {
            if bad.is_some() || limited {
                break;
            }
            let s = self.step(good.rate * 2.0)?;
            if s.lossless() {
                limited = s.generator_limited(secs);
                good = s;
            } else {
                bad = Some(s.rate);
            }
        }
        if let Some(mut hi) = bad {
            for _ in 0..bisections {
                let s = self.step((good.rate * hi).sqrt())?;
                if s.lossless() {
                    good = s;
                } else {
                    hi = s.rate;
                }
            }
        }
        Ok((good, if limited { None } else { bad }))
    }
}

pub fn run(ctx: &Ctx, figs: &mut Vec<Figure>, scene: &Scene) -> anyhow::Result<()> {
    let runs = ctx.opts.runs;
    let open = scene.watched.join("f");
    // Baseline: what the generator offers unpaced, without the sensor (half the runs before
    // the sensor starts, half after it stopped).
    let baseline = |figs: &mut Vec<Figure>, n: usize| -> anyhow::Result<()> {
        for _ in 0..n {
            let (ns, _) = host::ns_per_op(ctx, "open-close", &scene.pod, &open)?;
            add(
                figs,
                Figure::new(FAMILY, "zero_loss_rate", BASELINE, "events/s")
                    .note("no sensor: the generator's unpaced open rate"),
                1e9 / ns,
            );
        }
        Ok(())
    };
    env::progress(format_args!("pipeline, {BASELINE}"));
    baseline(figs, runs.div_ceil(2))?;
    {
        env::progress(format_args!("pipeline, {CONFIG}"));
        // Not in a directory the sensor watches (see env::Sensor::start).
        let out_dir = scene.dir.join("output");
        fs::create_dir_all(&out_dir)?;
        let out = out_dir.join("events.json");
        let outputs =
            format!("- file: {{path: {}, max_size_mb: 4096, max_files: 1}}\n", out.display());
        let mut sensor = scene.start_sensor(ctx, "pipeline", Some(&outputs))?;
        let records = Records::new(out.clone());
        let mut r = Run { ctx, scene, sensor: &mut sensor, records, steps: 0 };
        let mut start = FIRST_RATE;
        for _ in 0..runs {
            let (best, lossy) = r.search(start, ctx.opts.bisections)?;
            start = (best.rate / 2.0).max(FIRST_RATE / 4.0);
            let note = if lossy.is_some() {
                "highest lossless step".to_owned()
            } else {
                "generator-limited: no loss at the highest rate it offered".to_owned()
            };
            add(
                figs,
                Figure::new(FAMILY, "zero_loss_rate", CONFIG, "events/s")
                    .baseline(BASELINE)
                    .target(Target::AtLeast(100_000.0))
                    .note(note),
                best.rate,
            );
            let agent = |n: &str, unit| Figure::new("agent", n, CONFIG, unit);
            add(figs, agent("cpu_pipeline_zero_loss", "% CPU"), best.cpu_pct);
            add(figs, agent("rss_pipeline_zero_loss", "MiB"), best.rss_mib);
            let twice = r.step(best.rate * 2.0)?;
            let pct = |v: f64| 100.0 * v / twice.offered.max(1.0);
            for (name, v, note) in [
                ("loss_at_2x", twice.loss_pct(), "records missing from the file"),
                ("loss_at_2x_ring", pct(twice.ring_lost), "kernel ring buffer full"),
                ("loss_at_2x_output", pct(twice.output_dropped), "file output queue full"),
            ] {
                add(figs, Figure::new(FAMILY, name, CONFIG, "%").note(note), v);
            }
            add(figs, agent("cpu_pipeline_2x", "% CPU"), twice.cpu_pct);
            add(figs, agent("rss_pipeline_2x", "MiB"), twice.rss_mib);
        }
        sensor.check_alive()?;
        // The sensor stops here; its file goes with the scratch directory.
        let _ = fs::remove_file(&out);
    }
    env::progress(format_args!("pipeline, {BASELINE}"));
    baseline(figs, runs / 2)
}
