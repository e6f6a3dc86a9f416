//! Policy update family: time from writing a policy file with N CIDR rules (100, 1,000,
//! 10,000) to its enforcement, observed in the datapath: a helper in the client namespace
//! renames the new file into the policy directory and opens new connections until the first
//! one is dropped (the new file no longer allows the client), then renames the allowing file
//! back and waits until connections pass again. The agent's own timings of each reload
//! (debounce and load) come from its log.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    COMPARE_SUFFIX, Ctx, add,
    env::{self, RR_PORT, Sensor, check_interrupted},
    load,
    report::{Figure, Target},
    scenario,
};

const FAMILY: &str = "policy_update";
const SIZES: [usize; 3] = [100, 1_000, 10_000];
const BASELINE: &str = "100-rules";

/// The sensor under test, then (with `--compare-bin`) the other one, its configurations
/// suffixed `COMPARE_SUFFIX`.
pub fn run(ctx: &Ctx, figs: &mut Vec<Figure>) -> anyhow::Result<()> {
    run_with(ctx, figs, ctx.sensor_bin, "")?;
    if let Some(other) = ctx.compare_bin {
        run_with(ctx, figs, other, COMPARE_SUFFIX)?;
    }
    Ok(())
}

fn run_with(
    ctx: &Ctx,
    figs: &mut Vec<Figure>,
    bin: &std::path::Path,
    suffix: &str,
) -> anyhow::Result<()> {
    env::progress(format_args!("policy update latency{suffix}"));
    let t = ctx.topo;
    let dir = ctx.dir.join(format!("policy-update{suffix}"));
    let policies = dir.join("policies");
    fs::create_dir_all(&policies)?;
    fs::write(dir.join("endpoints.yaml"), scenario::endpoints_100(t))?;
    fs::write(policies.join("bench.yaml"), scenario::policy_cidr(SIZES[0], true))?;
    let yaml = format!(
        "mode: enforce\npolicy_dir: {}\nendpoints_file: {}\n",
        policies.display(),
        dir.join("endpoints.yaml").display()
    );
    let _server = load::start_server(&t.server, t.server_ip, RR_PORT)?;
    let mut sensor = Sensor::start(bin, &t.node, &dir, "policy-update", &yaml)?;
    let addr = format!("{}:{}", t.server_ip, RR_PORT + 1);
    let dest = policies.join("bench.yaml");
    // Written where the sensor watches nothing (it watches the policy directory and the
    // endpoints file's directory), so only the rename is a change.
    let staging = dir.join("staging");
    fs::create_dir_all(&staging)?;
    let tmp = staging.join("bench.yaml.tmp");
    // (policy text, expected outcome) → milliseconds until the datapath shows it, and the
    // agent's (settle, reload) milliseconds.
    let apply = |sensor: &Sensor, text: &str, expect: &str| -> anyhow::Result<(f64, (f64, f64))> {
        check_interrupted()?;
        fs::write(&tmp, text)?;
        let reloads = reload_timings(&sensor.log_text()).len();
        let out = load::run_helper(
            &t.client,
            &["update", &addr, &tmp.display().to_string(), &dest.display().to_string(), expect],
        )?;
        let ms = out.parse().with_context(|| format!("bad update helper output {out:?}"))?;
        // The log line follows the map switch the helper saw: poll for it (2 s at most).
        let end = Instant::now() + Duration::from_secs(2);
        loop {
            let timings = reload_timings(&sensor.log_text());
            if timings.len() > reloads {
                return Ok((ms, timings[timings.len() - 1]));
            }
            if Instant::now() > end {
                bail!("no `policy reloaded` log line after the change");
            }
            env::sleep(Duration::from_millis(10))?;
        }
    };
    for n in SIZES {
        let config = format!("{n}-rules{suffix}");
        // The compared sensor's figures are ratios to this sensor's at the same size.
        let baseline = if suffix.is_empty() { BASELINE.to_owned() } else { format!("{n}-rules") };
        let allow = scenario::policy_cidr(n, true);
        let deny = scenario::policy_cidr(n, false);
        apply(&sensor, &allow, "allow")
            .with_context(|| format!("{n} rules never allowed the client"))?;
        for _ in 0..ctx.opts.runs {
            let (ms, agent) =
                apply(&sensor, &deny, "drop").with_context(|| format!("{n} rules, drop"))?;
            let mut f = Figure::new(FAMILY, "to_drop", &config, "ms").baseline(&baseline);
            if n == 1_000 && suffix.is_empty() {
                f = f.target(Target::AtMost(100.0));
            }
            add(figs, f, ms);
            add_agent(figs, &config, &baseline, agent);
            let (ms, agent) =
                apply(&sensor, &allow, "allow").with_context(|| format!("{n} rules, allow"))?;
            add(
                figs,
                Figure::new(FAMILY, "to_allow", &config, "ms")
                    .baseline(&baseline)
                    .note("20 ms probe resolution"),
                ms,
            );
            add_agent(figs, &config, &baseline, agent);
        }
        sensor.check_alive()?;
    }
    Ok(())
}

/// The agent's (settle, reload) timings of one apply.
fn add_agent(figs: &mut Vec<Figure>, config: &str, baseline: &str, (settle, reload): (f64, f64)) {
    add(figs, Figure::new(FAMILY, "settle", config, "ms").baseline(baseline), settle);
    add(figs, Figure::new(FAMILY, "reload", config, "ms").baseline(baseline), reload);
}

/// (settle_ms, reload_ms) of every `policy reloaded` line of the agent's log.
fn reload_timings(log: &str) -> Vec<(f64, f64)> {
    let field = |line: &str, key: &str| -> Option<f64> {
        let rest = line.split(key).nth(1)?;
        rest.split(|c: char| c.is_whitespace() || c == ',').next()?.parse().ok()
    };
    log.lines()
        .filter(|l| l.contains("policy reloaded"))
        .filter_map(|l| Some((field(l, "settle_ms=")?, field(l, "reload_ms=")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reload_timings_are_read_from_the_log() {
        let log = "2026-11-23T18:19:29Z  INFO sensor::agent: policy applied applied=Applied { revision: 1 }\n\
                   2026-11-23T18:19:30Z  INFO sensor::agent: policy reloaded applied=Applied { revision: 2, endpoints: 1 } settle_ms=20.4 reload_ms=31.25\n";
        assert_eq!(super::reload_timings(log), vec![(20.4, 31.25)]);
    }
}
