//! Policy update family: time from writing a policy file with N CIDR rules (100, 1,000,
//! 10,000) to its enforcement, observed in the datapath: a helper in the client namespace
//! renames the new file into the policy directory and opens new connections until the first
//! one is dropped (the new file no longer allows the client), then renames the allowing file
//! back and waits until connections pass again.

use std::fs;

use anyhow::Context as _;

use super::{
    Ctx, add,
    env::{RR_PORT, Sensor, check_interrupted},
    load,
    report::{Figure, Target},
    scenario,
};

const FAMILY: &str = "policy_update";
const SIZES: [usize; 3] = [100, 1_000, 10_000];
const BASELINE: &str = "100-rules";

pub fn run(ctx: &Ctx, figs: &mut Vec<Figure>) -> anyhow::Result<()> {
    eprintln!("bench: policy update latency");
    let t = ctx.topo;
    let dir = ctx.dir.join("policy-update");
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
    let mut sensor = Sensor::start(ctx.sensor_bin, &t.node, &dir, "policy-update", &yaml)?;
    let addr = format!("{}:{}", t.server_ip, RR_PORT + 1);
    let dest = policies.join("bench.yaml");
    let tmp = dir.join(".bench.yaml.tmp");
    // (policy text, expected outcome) → milliseconds until the datapath shows it.
    let apply = |text: &str, expect: &str| -> anyhow::Result<f64> {
        check_interrupted()?;
        fs::write(&tmp, text)?;
        let out = load::run_helper(
            &t.client,
            &["update", &addr, &tmp.display().to_string(), &dest.display().to_string(), expect],
        )?;
        out.parse().with_context(|| format!("bad update helper output {out:?}"))
    };
    for n in SIZES {
        let config = format!("{n}-rules");
        let allow = scenario::policy_cidr(n, true);
        let deny = scenario::policy_cidr(n, false);
        apply(&allow, "allow").with_context(|| format!("{n} rules never allowed the client"))?;
        for _ in 0..ctx.opts.runs {
            let ms = apply(&deny, "drop").with_context(|| format!("{n} rules, drop"))?;
            let mut f = Figure::new(FAMILY, "to_drop", &config, "ms").baseline(BASELINE);
            if n == 1_000 {
                f = f.target(Target::AtMost(100.0));
            }
            add(figs, f, ms);
            let ms = apply(&allow, "allow").with_context(|| format!("{n} rules, allow"))?;
            add(
                figs,
                Figure::new(FAMILY, "to_allow", &config, "ms")
                    .baseline(BASELINE)
                    .note("20 ms probe resolution"),
                ms,
            );
        }
        sensor.check_alive()?;
    }
    Ok(())
}
