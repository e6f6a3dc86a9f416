//! `cargo xtask conformance [--cases N] [--seed S]`: the policy conformance suite at any
//! size. Builds the sensor, then runs the `conformance_many` end-to-end test (real sensor in
//! enforce mode, real probes between network namespaces, compared with the reference
//! evaluator in `tests/src/netpol_ref.rs`). Root only.

use std::path::Path;

use anyhow::{Context as _, bail};

/// Defaults: the CI sample runs 40 cases; this runs more.
const DEFAULT_CASES: u64 = 200;
const DEFAULT_SEED: u64 = 1;

/// Parses `--cases N` and `--seed S`.
fn parse(args: &[String]) -> anyhow::Result<(u64, u64)> {
    let (mut cases, mut seed) = (DEFAULT_CASES, DEFAULT_SEED);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = |name: &str, v: Option<&String>| -> anyhow::Result<u64> {
            v.with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} takes a number"))
        };
        match arg.as_str() {
            "--cases" => cases = value("--cases", it.next())?,
            "--seed" => seed = value("--seed", it.next())?,
            other => bail!("unknown argument {other:?} (--cases N, --seed S)"),
        }
    }
    Ok((cases, seed))
}

pub fn conformance(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let (cases, seed) = parse(args)?;
    if !crate::bootstrap::is_root() {
        bail!("the conformance suite loads eBPF programs and makes namespaces: run it as root");
    }
    let (tools, sensor) = crate::build(root)?;
    crate::status(
        crate::cargo(root, &tools)
            .args([
                "test",
                "--release",
                "--package",
                "sensor-e2e",
                "--test",
                "conformance",
                "--",
                "--ignored",
                "--exact",
                "conformance_many",
                "--nocapture",
            ])
            .env("SENSOR_BIN", sensor)
            .env("CONFORMANCE_CASES", cases.to_string())
            .env("CONFORMANCE_SEED", seed.to_string()),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_cases_and_seed() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(super::parse(&args(&[])).expect("defaults"), (200, 1));
        assert_eq!(super::parse(&args(&["--cases", "5", "--seed", "9"])).expect("ok"), (5, 9));
        assert!(super::parse(&args(&["--cases"])).is_err());
        assert!(super::parse(&args(&["--bogus"])).is_err());
    }
}
