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
    /// Finds local endpoints' interfaces from their network namespaces (None: interfaces
    /// come only from the endpoints file and host routes, as in `policy check`).
    pub discovery: Option<crate::discovery::Resolver>,
    /// Each policy file's last version that parsed: a file that breaks keeps it in force.
    last_good: std::collections::BTreeMap<PathBuf, super::FileSet>,
    /// Whether the maps hold an apply of this runtime (the first reload always writes).
    applied_once: bool,
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
            discovery: None,
            last_good: std::collections::BTreeMap::new(),
            applied_once: false,
        }
    }

    /// Reads the files again and applies them; on error the policy in force stays. A policy
    /// file that does not parse is reported and skipped (its last good version, if any,
    /// stays in force): start-up and reloads behave the same. `Ok(None)`: nothing changed.
    pub fn reload(&mut self) -> Result<Option<Applied>, ReloadError> {
        let result = self.try_reload();
        crate::sys::release_free_memory();
        let outcome = match &result {
            Ok((_, 0)) => "applied",
            Ok(_) => "rejected",
            // Nothing was loaded, let alone rejected: the reload waits for the API sources.
            Err(ReloadError::NotSynced(_)) => return result.map(|(applied, _)| applied),
            Err(_) => "rejected",
        };
        self.metrics.policy_reloads.get_or_create(&OutcomeLabels { outcome }).inc();
        result.map(|(applied, _)| applied)
    }

    /// Loads and applies; returns what was written (`None`: the compiled policy did not
    /// change) and how many files were rejected.
    fn try_reload(&mut self) -> Result<(Option<Applied>, usize), ReloadError> {
        // Parse everything before applying anything; a bad file is skipped, not fatal.
        let (set, rejected) = match &self.policy_dir {
            Some(dir) => super::load_dir(dir, &mut self.last_good)?,
            None => Default::default(),
        };
        for r in &rejected {
            let kept =
                if r.kept_previous { "its previous version stays in force" } else { "skipped" };
            tracing::error!("policy file rejected ({kept}): {}", r.error);
        }
        self.metrics.policy_rejected_files.set(rejected.len() as i64);
        let super::FileSet { mut policies, mut warnings, host: mut host_policies } = set;
        if self.host.is_none() {
            host_policies.clear();
        }
        if host_policies.len() > sensor_common::host::MAX_HOST_POLICIES {
            return Err(ReloadError::Load(PolicyError::Parse(super::model::ParseError {
                origin: host_policies[sensor_common::host::MAX_HOST_POLICIES].origin.clone(),
                message: format!(
                    "too many host policies: at most {} are supported",
                    sensor_common::host::MAX_HOST_POLICIES
                ),
            })));
        }
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
        if let Some(resolver) = &mut self.discovery {
            resolver.resolve(&mut endpoints);
            self.metrics.endpoints_unattached.set(resolver.unattached.len() as i64);
        }
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        let compiled = super::compile::compile(&policies, &endpoints);
        for (index, count) in compiled.selected_count.iter().enumerate() {
            if *count == 0 {
                let p = &policies[index];
                tracing::debug!(origin = %p.origin, "policy {} selects no local endpoint", p.name);
            }
        }
        let unchanged = self.applied_once && {
            let current = self.compiled.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            *current == compiled
        };
        // An unchanged policy is not written again (no new revision); interfaces that
        // appeared meanwhile are handled by `reapply`.
        let applied = if unchanged {
            None
        } else {
            Some(self.maps.apply(&compiled, self.enforce, ifindex_of)?)
        };
        self.applied_once = true;
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
        if let Some(applied) = &applied {
            self.record(applied);
        }
        Ok((applied, rejected.len()))
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

    /// A reload is due for endpoint discovery: an interface not found yet is to be looked
    /// for again, or a found one went away (see [`crate::discovery::Resolver::due`]).
    pub fn discovery_due(&self) -> bool {
        self.discovery.as_ref().is_some_and(crate::discovery::Resolver::due)
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
