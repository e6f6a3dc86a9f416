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
}

impl RulesRuntime {
    pub fn new(paths: Vec<PathBuf>, min_priority: Priority, metrics: Metrics) -> Self {
        Self { paths, min_priority, current: Arc::default(), metrics }
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
