//! The live policy: loads files, compiles, applies, and on any error keeps what is in force.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

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

    /// Watches the policy directory and the endpoints file (see [`crate::watch`]: only
    /// policy inputs and the kubelet's `..data` switch trigger a reload); each change sends a
    /// unit on `changes` (the Kubernetes sources share it).
    pub fn watch(&self, changes: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
        let inputs = crate::watch::Inputs::new(
            self.policy_dir.iter().chain(self.endpoints_file.iter()).cloned(),
        );
        crate::watch::watch(inputs, changes)
    }
}

fn ifindex_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}
