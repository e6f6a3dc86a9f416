//! The live rule set: loaded from `rules_files`, reloaded when they change; a set that does
//! not load leaves the previous one in force.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use tokio::sync::mpsc;

use super::{Priority, RuleSet, RulesError};
use crate::metrics::Metrics;

pub type Shared = Arc<RwLock<Arc<RuleSet>>>;

pub struct RulesRuntime {
    paths: Vec<PathBuf>,
    min_priority: Priority,
    pub current: Shared,
    metrics: Metrics,
    /// The kernel's `RULE_SYSCALLS` map: the syscalls the loaded rules name.
    syscalls: Option<SyscallMap>,
}

/// `RULE_SYSCALLS`: syscall number → what to send of it.
pub type SyscallMap =
    aya::maps::HashMap<aya::maps::MapData, u32, sensor_common::host::SyscallInterest>;

impl RulesRuntime {
    pub fn new(paths: Vec<PathBuf>, min_priority: Priority, metrics: Metrics) -> Self {
        Self { paths, min_priority, current: Arc::default(), metrics, syscalls: None }
    }

    /// Gives the runtime the kernel's `RULE_SYSCALLS` map, kept in step with each load.
    pub fn set_syscall_map(&mut self, map: SyscallMap) {
        self.syscalls = Some(map);
        let set =
            Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner));
        self.sync_syscalls(&set.interest.syscalls);
    }

    /// Makes `RULE_SYSCALLS` hold exactly `wanted` (the rules' bit in both generations, so
    /// the cgroups the rules watch are the ones sent).
    fn sync_syscalls(&mut self, wanted: &[u32]) {
        use sensor_common::host::{RULES_BIT_INDEX, SyscallInterest};
        let Some(map) = &mut self.syscalls else { return };
        let stale: Vec<u32> = map.keys().flatten().filter(|nr| !wanted.contains(nr)).collect();
        for nr in stale {
            if let Err(e) = map.remove(&nr) {
                tracing::warn!("rules: removing syscall {nr} from the kernel filter: {e}");
            }
        }
        for &nr in wanted {
            let strings = super::syscalls::by_nr(nr).map_or(0, |s| s.strings);
            let observe = (1_u64 << RULES_BIT_INDEX) | (1_u64 << (RULES_BIT_INDEX + 32));
            if let Err(e) = map.insert(&nr, &SyscallInterest { observe, strings, _pad: 0 }, 0) {
                tracing::warn!("rules: adding syscall {nr} to the kernel filter: {e}");
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Loads the files again; on success the new set is live and returned.
    pub fn reload(&mut self) -> Result<Arc<RuleSet>, RulesError> {
        let result = super::load(&self.paths, self.min_priority);
        let outcome = if result.is_ok() { "applied" } else { "rejected" };
        self.metrics.rules_reloads.get_or_create(&crate::metrics::OutcomeLabels { outcome }).inc();
        let set = Arc::new(result?);
        for skipped in &set.skipped {
            if skipped.quiet {
                tracing::info!(
                    "{}: rule `{}` skipped: {}",
                    skipped.origin,
                    skipped.name,
                    skipped.reason
                );
            } else {
                tracing::warn!(
                    "{}: rule `{}` skipped: {}",
                    skipped.origin,
                    skipped.name,
                    skipped.reason
                );
            }
        }
        for name in &set.unscoped {
            tracing::info!(
                "rule `{name}`: its file condition does not reduce to path prefixes; watching opens under / in {:?} cgroups",
                set.interest.cgroups
            );
        }
        self.sync_syscalls(&set.interest.syscalls);
        self.metrics.rules_loaded.set(set.active() as i64);
        self.metrics.rules_skipped.set(set.skipped.len() as i64);
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&set);
        Ok(set)
    }

    /// Watches the rule files (see [`crate::watch`]: only they, and the kubelet's `..data`
    /// switch beside them, trigger a reload); each change sends a unit.
    pub fn watch(&self) -> notify::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
        let (tx, rx) = mpsc::channel(1);
        let watcher = crate::watch::watch(crate::watch::Inputs::new(self.paths.clone()), tx)?;
        Ok((watcher, rx))
    }
}
