//! Figures (samples of one quantity), their statistics and ratios to a baseline figure from the
//! same invocation, written as target/bench/report.json and report.md.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::Context as _;
use serde_json::{Value, json};

/// One measured quantity in one configuration, with every sample.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Measurement family (one module under bench/), e.g. "datapath".
    pub family: &'static str,
    /// What is measured, e.g. "tcp_rr_1".
    pub name: String,
    /// Configuration, e.g. "no-sensor", "enforce-10k-cidr".
    pub config: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    /// The configuration whose figure of the same name is the baseline (ratio = this median /
    /// that median); None when this figure is itself a baseline or has none.
    pub baseline: Option<String>,
    /// The goal for this figure, as text (a goal, not an assertion).
    pub target: Option<Target>,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Target {
    /// Median at most this many units.
    AtMost(f64),
    /// Median at least this many units.
    AtLeast(f64),
    /// Ratio at least this, and median above the same figure in another configuration.
    RatioAtLeastAndAbove(f64, &'static str),
    /// Ratio at most this.
    RatioAtMost(f64),
}

impl Figure {
    pub fn new(family: &'static str, name: &str, config: &str, unit: &'static str) -> Self {
        Self {
            family,
            name: name.to_owned(),
            config: config.to_owned(),
            unit,
            samples: Vec::new(),
            baseline: None,
            target: None,
            note: None,
        }
    }

    pub fn baseline(mut self, config: &str) -> Self {
        if config != self.config {
            self.baseline = Some(config.to_owned());
        }
        self
    }

    pub fn target(mut self, t: Target) -> Self {
        self.target = Some(t);
        self
    }

    pub fn note(mut self, n: impl Into<String>) -> Self {
        self.note = Some(n.into());
        self
    }

    pub fn stats(&self) -> Option<Stats> {
        Stats::of(&self.samples)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        Some(Self {
            n: s.len(),
            median: quantile(&s, 0.5),
            p25: quantile(&s, 0.25),
            p75: quantile(&s, 0.75),
            min: s[0],
            max: s[s.len() - 1],
        })
    }
}

/// Linear interpolation between closest ranks, on sorted input.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

pub struct Report {
    pub quick: bool,
    pub machine: Vec<(&'static str, String)>,
    pub methods: Vec<String>,
    pub figures: Vec<Figure>,
}

impl Report {
    fn find(&self, f: &Figure, config: &str) -> Option<&Figure> {
        self.figures.iter().find(|g| g.family == f.family && g.name == f.name && g.config == config)
    }

    fn ratio(&self, f: &Figure) -> Option<f64> {
        let base = self.find(f, f.baseline.as_deref()?)?.stats()?.median;
        let own = f.stats()?.median;
        (base != 0.0).then(|| own / base)
    }

    /// (goal text, met?) for a figure with a target; a goal in units also gives the median's
    /// ratio to it.
    fn goal(&self, f: &Figure) -> Option<(String, Option<bool>)> {
        let median = f.stats().map(|s| s.median);
        let ratio = self.ratio(f);
        let of_goal =
            |v: f64| median.map_or_else(String::new, |m| format!(" ({:.2} × goal)", m / v));
        Some(match f.target.as_ref()? {
            Target::AtMost(v) => {
                (format!("≤ {} {}{}", goal_num(*v), f.unit, of_goal(*v)), median.map(|m| m <= *v))
            }
            Target::AtLeast(v) => {
                (format!("≥ {} {}{}", goal_num(*v), f.unit, of_goal(*v)), median.map(|m| m >= *v))
            }
            Target::RatioAtMost(r) => (format!("≤ {r:.2} × baseline"), ratio.map(|x| x <= *r)),
            Target::RatioAtLeastAndAbove(r, other) => {
                let above = self
                    .find(f, other)
                    .and_then(Figure::stats)
                    .zip(median)
                    .map(|(o, m)| m > o.median);
                (
                    format!("≥ {r:.2} × baseline and > {other}"),
                    ratio.zip(above).map(|(x, a)| x >= *r && a),
                )
            }
        })
    }

    pub fn to_json(&self) -> Value {
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                let s = f.stats();
                let goal = self.goal(f);
                json!({
                    "family": f.family,
                    "name": f.name,
                    "config": f.config,
                    "unit": f.unit,
                    "samples": f.samples,
                    "n": s.map(|s| s.n),
                    "median": s.map(|s| s.median),
                    "p25": s.map(|s| s.p25),
                    "p75": s.map(|s| s.p75),
                    "min": s.map(|s| s.min),
                    "max": s.map(|s| s.max),
                    "baseline": f.baseline,
                    "ratio_to_baseline": self.ratio(f),
                    "target": goal.as_ref().map(|g| g.0.clone()),
                    "target_met": goal.and_then(|g| g.1),
                    "note": f.note,
                })
            })
            .collect();
        let machine: serde_json::Map<String, Value> =
            self.machine.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        json!({
            "quick": self.quick,
            "machine": machine,
            "methods": self.methods,
            "figures": figures,
        })
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Sensor benchmark ({})\n",
            if self.quick { "quick run" } else { "full run" }
        );
        for (k, v) in &self.machine {
            let _ = writeln!(md, "- **{k}**: {v}");
        }
        let _ = writeln!(
            md,
            "\nEach figure: median, p25–p75 and min–max over n runs; the ratio is this median \
             over the median of the same figure in the baseline configuration, measured in the \
             same invocation. Targets are the issue's goals, not assertions.\n"
        );
        let mut families: Vec<&str> = Vec::new();
        for f in &self.figures {
            if !families.contains(&f.family) {
                families.push(f.family);
            }
        }
        for family in families {
            let _ = writeln!(md, "## {family}\n");
            let _ = writeln!(
                md,
                "| figure | config | median | p25–p75 | min–max | n | ratio (baseline) | target |"
            );
            let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---|---|");
            for f in self.figures.iter().filter(|f| f.family == family) {
                let Some(s) = f.stats() else { continue };
                let ratio = match (self.ratio(f), &f.baseline) {
                    (Some(r), Some(b)) => format!("{r:.3} ({b})"),
                    (None, Some(b)) => format!("– ({b})"),
                    _ => "baseline".to_owned(),
                };
                let target = self.goal(f).map_or_else(String::new, |(text, met)| {
                    let mark = match met {
                        Some(true) => "met",
                        Some(false) => "NOT met",
                        None => "n/a",
                    };
                    format!("{text}: {mark}")
                });
                let name = match &f.note {
                    Some(n) => format!("{} ({n})", f.name),
                    None => f.name.clone(),
                };
                let _ = writeln!(
                    md,
                    "| {name} | {} | {} {} | {}–{} | {}–{} | {} | {ratio} | {target} |",
                    f.config,
                    num(s.median),
                    f.unit,
                    num(s.p25),
                    num(s.p75),
                    num(s.min),
                    num(s.max),
                    s.n,
                );
            }
            md.push('\n');
        }
        let _ = writeln!(md, "## Method\n");
        for m in &self.methods {
            let _ = writeln!(md, "- {m}");
        }
        md
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("report.json"), serde_json::to_string_pretty(&self.to_json())? + "\n")?;
        fs::write(dir.join("report.md"), self.to_markdown())?;
        Ok(())
    }
}

/// A goal as written: whole numbers without decimals.
fn goal_num(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { num(v) }
}

/// Three significant digits for small values, whole numbers for large ones.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let s = Stats::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).expect("stats");
        assert_eq!((s.median, s.p25, s.p75, s.min, s.max), (3.0, 2.0, 4.0, 1.0, 5.0));
        let s = Stats::of(&[1.0, 2.0]).expect("stats");
        assert_eq!(s.median, 1.5);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn ratio_uses_the_baseline_config_of_the_same_figure() {
        let mut base = Figure::new("datapath", "rr", "no-sensor", "tx/s");
        base.samples = vec![100.0, 100.0];
        let mut f = Figure::new("datapath", "rr", "enforce", "tx/s")
            .baseline("no-sensor")
            .target(Target::RatioAtLeastAndAbove(0.95, "nft"));
        f.samples = vec![96.0, 98.0];
        let mut nft = Figure::new("datapath", "rr", "nft", "tx/s").baseline("no-sensor");
        nft.samples = vec![90.0];
        let figures = vec![base, f, nft];
        let r = Report { quick: true, machine: vec![], methods: vec![], figures };
        assert_eq!(r.ratio(&r.figures[1]), Some(0.97));
        assert_eq!(r.goal(&r.figures[1]).and_then(|g| g.1), Some(true));
        assert!(r.to_markdown().contains("0.970 (no-sensor)"));
    }
}
