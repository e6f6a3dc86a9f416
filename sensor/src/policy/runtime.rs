//! The live policy: loads files, compiles, applies, and on any error keeps what is in force.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::{
    Compiled, PolicyError,
    apply::{Applied, ApplyError, PolicyMaps},
};
use crate::metrics::{Metrics, OutcomeLabels};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] PolicyError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    HostApply(#[from] crate::host::apply::HostApplyError),
    #[error(
        "Kubernetes sources not listed yet: {}; the policy in force stays until they are",
        .0.join(", ")
    )]
    NotSynced(Vec<&'static str>),
}

pub struct PolicyRuntime {
    maps: PolicyMaps,
    /// Shared with the flow formatter for enrichment.
    pub compiled: Arc<RwLock<Compiled>>,
    enforce: bool,
    policy_dir: Option<PathBuf>,
    endpoints_file: Option<PathBuf>,
    metrics: Metrics,
    /// Host policies live in the same files and change with the same reload.
    pub host: Option<crate::host::HostRuntime>,
    /// The Kubernetes API sources and which interface names are pod interfaces (the agent's
    /// `interfaces` globs): their policies and endpoints join the files'.
    pub kubernetes: Option<(Arc<crate::kubernetes::KubeState>, crate::config::InterfaceMatcher)>,
}

impl PolicyRuntime {
    pub fn new(
        maps: PolicyMaps,
        enforce: bool,
        policy_dir: Option<PathBuf>,
        endpoints_file: Option<PathBuf>,
        metrics: Metrics,
    ) -> Self {
        Self {
            maps,
            compiled: Arc::new(RwLock::new(Compiled::default())),
            enforce,
            policy_dir,
            endpoints_file,
            metrics,
            host: None,
            kubernetes: None,
        }
    }

    /// Reads the files again and applies them; on error the policy in force stays.
    pub fn reload(&mut self) -> Result<Applied, ReloadError> {
        let result = self.try_reload();
        crate::sys::release_free_memory();
        let outcome = match &result {
            Ok(_) => "applied",
            // Nothing was loaded, let alone rejected: the reload waits for the API sources.
            Err(ReloadError::NotSynced(_)) => return result,
            Err(_) => "rejected",
        };
        self.metrics.policy_reloads.get_or_create(&OutcomeLabels { outcome }).inc();
        result
    }

    fn try_reload(&mut self) -> Result<Applied, ReloadError> {
        // Parse everything before applying anything: a bad file rejects the whole set.
        let (mut policies, mut warnings) = match &self.policy_dir {
            Some(dir) => super::load_policies(std::slice::from_ref(dir))?,
            None => (Vec::new(), Vec::new()),
        };
        let mut host_policies = match &self.policy_dir {
            Some(dir) if self.host.is_some() => crate::host::policy::load(dir)?,
            _ => Vec::new(),
        };
        let mut endpoints = match &self.endpoints_file {
            Some(file) => super::Endpoints::load(file).map_err(PolicyError::from)?,
            None => super::Endpoints::default(),
        };
        if let Some((kube, interfaces)) = &self.kubernetes {
            let unsynced = kube.unsynced();
            if !unsynced.is_empty() {
                return Err(ReloadError::NotSynced(unsynced));
            }
            let snapshot = kube.snapshot(|name| interfaces.matches(name));
            policies.extend(snapshot.policies);
            warnings.extend(snapshot.warnings);
            host_policies.extend(snapshot.host_policies);
            for skipped in endpoints.merge(snapshot.endpoints) {
                tracing::debug!("{skipped}");
            }
        }
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        let compiled = super::compile::compile(&policies, &endpoints);
        let applied = self.maps.apply(&compiled, self.enforce, ifindex_of)?;
        if let Some(host) = &mut self.host {
            let count = host_policies.len();
            host.apply(host_policies, endpoints)?;
            tracing::info!(
                policies = count,
                watched_cgroups = host.watched_cgroups(),
                "host policies applied"
            );
            self.metrics.host_watched_cgroups.set(host.watched_cgroups() as i64);
        }
        *self.compiled.write().unwrap_or_else(std::sync::PoisonError::into_inner) = compiled;
        self.record(&applied);
        Ok(applied)
    }

    /// Applies the current compile again (an endpoint's interface appeared or changed).
    pub fn reapply(&mut self) -> Result<Applied, ApplyError> {
        let compiled =
            self.compiled.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let applied = self.maps.apply(&compiled, self.enforce, ifindex_of)?;
        self.record(&applied);
        Ok(applied)
    }

    fn record(&self, applied: &Applied) {
        self.metrics.policy_revision.set(i64::from(applied.revision));
        for (map_name, ratio) in self.maps.pressure(applied) {
            self.metrics
                .map_pressure
                .get_or_create(&crate::metrics::MapLabels { map_name })
                .set(ratio);
        }
    }

    pub fn is_endpoint_interface(&self, name: &str) -> bool {
        let compiled = self.compiled.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        compiled.local.iter().any(|e| e.interface == name)
    }

    /// Watches the policy directory and the endpoints file's directory (editors replace
    /// files); each change sends a unit on `changes` (the Kubernetes sources share it).
    pub fn watch(&self, changes: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
        let inputs: Vec<PathBuf> =
            self.policy_dir.iter().chain(self.endpoints_file.iter()).cloned().collect();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| {
                    !e.kind.is_access() && e.paths.iter().any(|p| is_input(p, &inputs))
                }) {
                    // A full channel already holds a pending reload: nothing is lost.
                    let _ = changes.try_send(());
                }
            })?;
        for path in self.policy_dir.iter().chain(self.endpoints_file.iter()) {
            let dir = if path.is_dir() {
                path.clone()
            } else {
                path.parent().map_or_else(|| PathBuf::from("."), PathBuf::from)
            };
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        }
        Ok(watcher)
    }
}

/// Whether a changed path can change the policy: a YAML file, one of the configured paths, or
/// the kubelet's ConfigMap switch (`..data` and its timestamped targets). Anything else in
/// the watched directories (a log file, an editor's swap file) does not reload.
fn is_input(path: &std::path::Path, inputs: &[PathBuf]) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    inputs.iter().any(|i| i == path)
        || name.starts_with("..")
        || [".yaml", ".yml"].iter().any(|ext| name.ends_with(ext))
}

fn ifindex_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    #[test]
    fn only_policy_inputs_trigger_a_reload() {
        let inputs = [PathBuf::from("/etc/sensor/policies"), PathBuf::from("/etc/sensor/ep.conf")];
        for path in [
            "/etc/sensor/policies/allow.yaml",
            "/etc/sensor/policies/deny.yml",
            "/etc/sensor/ep.conf",
            "/etc/sensor/policies/..data",
            "/etc/sensor/policies/..2026_01_01_00_00_01.2",
        ] {
            assert!(super::is_input(Path::new(path), &inputs), "{path}");
        }
        for path in ["/etc/sensor/policies/sensor.log", "/etc/sensor/policies/.allow.yaml.swp"] {
            assert!(!super::is_input(Path::new(path), &inputs), "{path}");
        }
    }
}
