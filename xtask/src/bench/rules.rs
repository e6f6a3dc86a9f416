//! Rules family: events per second per core through the shipped Falco rule set
//! (deploy/rules/sensor_rules.yaml, every rule enabled) and through the Falco-style corpus
//! with it (tests/rules/falco_style_rules.yaml: 25+ rules with macros, long lists and
//! exceptions, the goal), in process, with `sensor rules bench`
//! (hidden subcommand): synthetic enriched events (execs in and out of a container, two
//! opens, a bind) on one thread, timed by the thread's CPU clock. Baseline: the same loop
//! with no rules (the harness and the engine's dispatch alone).

use std::process::Command;

use anyhow::{Context as _, bail};

use super::{
    Ctx, add,
    env::{self, check_interrupted},
    report::{Figure, Target},
};

const FAMILY: &str = "rules";
const BASELINE: &str = "no-rules";
const SHIPPED: &str = "shipped-all-enabled";
const CORPUS: &str = "corpus-all-enabled";
const RULES_FILE: &str = "deploy/rules/sensor_rules.yaml";
const CORPUS_FILE: &str = "tests/rules/falco_style_rules.yaml";

pub fn run(ctx: &Ctx, figs: &mut Vec<Figure>) -> anyhow::Result<()> {
    let file = ctx.root.join(RULES_FILE);
    let runs = ctx.opts.runs;
    env::progress(format_args!("rules engine"));
    for run in 0..runs {
        for config in super::round_order(&[BASELINE, SHIPPED, CORPUS], run) {
            check_interrupted()?;
            let mut cmd = Command::new(ctx.sensor_bin);
            cmd.args(["rules", "bench", "--seconds", &ctx.opts.rules_secs.to_string()]);
            if config == CORPUS {
                cmd.arg("--enable-all").arg(ctx.root.join(CORPUS_FILE)).arg(&file);
            } else if config == SHIPPED {
                cmd.arg("--enable-all").arg(&file);
            }
            let out = env::output(&mut cmd)?;
            for line in out.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(line).with_context(|| format!("rules bench: {line:?}"))?;
                let (Some(path), Some(rate)) =
                    (v["path"].as_str(), v["events_per_cpu_second"].as_f64())
                else {
                    bail!("rules bench: unexpected line {line:?}");
                };
                if config != BASELINE && v["rules"].as_u64().unwrap_or(0) == 0 {
                    bail!("rules bench: no rule of {} runs", file.display());
                }
                let mut f = Figure::new(FAMILY, path, config, "events/s/core").baseline(BASELINE);
                if config != BASELINE {
                    let share = v["matched"].as_f64().unwrap_or(0.0)
                        / v["events"].as_f64().unwrap_or(1.0).max(1.0);
                    f = f.target(Target::AtLeast(1_000_000.0)).note(format!(
                        "{} rules, {:.0} % of events matched",
                        v["rules"],
                        share * 100.0
                    ));
                }
                add(figs, f, rate);
            }
        }
    }
    Ok(())
}
