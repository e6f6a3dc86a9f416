//! `sensor rules check FILE...`: loads the files as the agent would and lists the rules that
//! load (enabled or not) and those skipped, with reasons.

use std::fmt::Write as _;

use super::{Priority, RulesError};
use crate::cli::RulesCheckArgs;

pub fn check(args: &RulesCheckArgs) -> Result<String, RulesError> {
    let min = args.min_priority.unwrap_or(Priority::Debug);
    let set = super::load(&args.paths, min)?;
    let mut out = String::new();
    let enabled = set.rules.iter().filter(|r| r.enabled).count();
    let _ = writeln!(
        out,
        "{} files; {} rules loaded ({} enabled, {} running at priority {} or above), {} skipped",
        set.files.len(),
        set.rules.len(),
        enabled,
        set.active(),
        min.name(),
        set.skipped.len()
    );
    for rule in &set.rules {
        let state = if rule.enabled { "enabled" } else { "disabled" };
        let _ = writeln!(
            out,
            "loaded  {}: {} [{}, {}]",
            rule.origin,
            rule.name,
            rule.priority.name(),
            state
        );
    }
    for skipped in &set.skipped {
        let _ = writeln!(out, "skipped {}: {}: {}", skipped.origin, skipped.name, skipped.reason);
    }
    // What keeps the skipped rules out, each construct with the number of rules it blocks.
    let mut counts: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for skipped in &set.skipped {
        for blocker in &skipped.blockers {
            counts.entry(blocker).or_default().push(&skipped.name);
        }
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    for (blocker, rules) in counts {
        let _ = writeln!(out, "blocker {blocker}: {} rules ({})", rules.len(), rules.join("; "));
    }
    let _ = writeln!(
        out,
        "kernel interest: file opens under {:?}, cgroups {:?}, syscalls {:?}",
        set.interest.prefixes,
        set.interest.cgroups,
        set.interest
            .syscalls
            .iter()
            .map(|nr| match *nr {
                sensor_common::host::RULE_FAILED_OPENS => "failed opens",
                nr => super::syscalls::by_nr(nr).map_or("?", |s| s.name),
            })
            .collect::<Vec<_>>()
    );
    Ok(out)
}
