//! Host security: process, file and socket events with container and pod attribution, and
//! HostPolicy enforcement compiled into the kernel maps.

pub mod apply;
pub mod cgroups;
pub mod compile;
pub mod hold;
pub mod identity;
pub mod lsm;
pub mod offsets;
pub mod policy;
pub mod process;
pub mod record;

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use self::{
    apply::{HostApplyError, HostMaps},
    cgroups::Inventory,
    policy::HostPolicy,
};
use crate::policy::Endpoints;

/// What event enrichment reads: the node's cgroups, the endpoints, and policy names by bit.
#[derive(Debug, Default)]
pub struct HostView {
    pub inventory: Inventory,
    pub endpoints: Endpoints,
    /// Policy names of generation 0 (bits 0..32) and 1 (bits 32..64).
    pub names: [Vec<String>; 2],
}

impl HostView {
    /// Name of the policy behind `policy` (1 + mask bit) in an event.
    pub fn policy_name(&self, policy: u32) -> Option<&str> {
        let bit = policy.checked_sub(1)? as usize;
        self.names[bit / 32].get(bit % 32).map(String::as_str)
    }
}

pub struct HostRuntime {
    maps: HostMaps,
    policies: Vec<HostPolicy>,
    /// What the loaded rules need the kernel to send.
    rules: crate::rules::Interest,
    cgroup_root: PathBuf,
    pub view: Arc<RwLock<HostView>>,
    /// Wakes a rescan when a cgroup is made inside a container (see
    /// [`cgroups::SubtreeWatcher`]); None when inotify is unavailable.
    pub subtrees: Option<cgroups::SubtreeWatcher>,
    /// When the identity entries were last resolved (files come and go in protected trees).
    resolved_at: std::time::Instant,
    /// What held calls are decided against (kept with the identity entries).
    pub holds: Arc<RwLock<hold::HoldView>>,
}

/// How often [`HostRuntime::rescan`] resolves the policies' paths to identities again.
const RESOLVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// One process of each watched container cgroup: their roots are where rule paths resolve.
fn container_pids(
    cgroup_root: &std::path::Path,
    scopes: &std::collections::HashMap<u64, u64>,
    inventory: &Inventory,
) -> Vec<u32> {
    scopes
        .keys()
        .filter_map(|id| inventory.by_id.get(id))
        .filter(|c| c.container.is_some())
        .filter_map(|c| {
            let procs = cgroup_root.join(c.path.trim_start_matches('/')).join("cgroup.procs");
            std::fs::read_to_string(procs).ok()?.lines().next()?.trim().parse().ok()
        })
        .collect()
}

impl HostRuntime {
    pub fn new(maps: HostMaps, cgroup_root: PathBuf) -> Self {
        Self {
            maps,
            policies: Vec::new(),
            rules: crate::rules::Interest::default(),
            cgroup_root,
            view: Arc::default(),
            subtrees: None,
            resolved_at: std::time::Instant::now(),
            holds: Arc::default(),
        }
    }

    /// See [`HostMaps::scrub_stale`].
    pub fn scrub_stale(&mut self) -> Result<usize, apply::HostApplyError> {
        self.maps.scrub_stale()
    }

    /// Compiles `policies` against the node's cgroups now and applies them as one change.
    pub fn apply(
        &mut self,
        policies: Vec<HostPolicy>,
        endpoints: Endpoints,
    ) -> Result<(), HostApplyError> {
        let inventory = Inventory::scan(&self.cgroup_root);
        if let Some(subtrees) = &mut self.subtrees {
            subtrees.sync(&inventory);
        }
        let generation = self.maps.next_generation();
        let mut compiled =
            compile::compile(&policies, &endpoints, &inventory, generation, &self.rules);
        let pids = container_pids(&self.cgroup_root, &compiled.scopes, &inventory);
        let resolved = self.resolve(&policies, generation, &pids);
        compiled.inode = resolved.entries.clone();
        self.resolved_at = std::time::Instant::now();
        let names = compiled.names.clone();
        let hold_block = compiled.hold_block;
        self.maps.apply(compiled)?;
        self.set_hold_view(hold::HoldView {
            inode: resolved.entries,
            names: resolved.names,
            hold_block,
        });
        self.policies = policies;
        let mut view = self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        view.inventory = inventory;
        view.endpoints = endpoints;
        view.names[generation as usize] = names;
        Ok(())
    }

    /// Scans the cgroups again (containers start and stop) and updates which are watched.
    /// Returns the number of watched cgroups.
    pub fn rescan(&mut self) -> Result<usize, HostApplyError> {
        let inventory = Inventory::scan(&self.cgroup_root);
        if let Some(subtrees) = &mut self.subtrees {
            subtrees.sync(&inventory);
        }
        let endpoints =
            self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner).endpoints.clone();
        let compiled = compile::compile(
            &self.policies,
            &endpoints,
            &inventory,
            self.maps.live_generation(),
            &self.rules,
        );
        let watched = compiled.scopes.len();
        if self.resolved_at.elapsed() >= RESOLVE_EVERY {
            self.resolved_at = std::time::Instant::now();
            let pids = container_pids(&self.cgroup_root, &compiled.scopes, &inventory);
            let resolved = self.resolve(&self.policies, self.maps.live_generation(), &pids);
            if resolved.entries != self.maps.live().inode {
                self.maps.update_inodes(resolved.entries.clone())?;
            }
            let hold_block = self.maps.live().hold_block;
            self.set_hold_view(hold::HoldView {
                inode: resolved.entries,
                names: resolved.names,
                hold_block,
            });
        }
        if compiled.scopes != self.maps.live().scopes {
            self.maps.update_scopes(compiled.scopes)?;
        }
        self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner).inventory = inventory;
        Ok(watched)
    }

    /// Feeds the rules' interest to the kernel filter (a full apply with a generation flip).
    pub fn set_rules_interest(
        &mut self,
        interest: crate::rules::Interest,
    ) -> Result<(), HostApplyError> {
        if interest == self.rules {
            return Ok(());
        }
        let previous = std::mem::replace(&mut self.rules, interest);
        let endpoints =
            self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner).endpoints.clone();
        let policies = self.policies.clone();
        if let Err(err) = self.apply(policies, endpoints) {
            self.rules = previous;
            return Err(err);
        }
        Ok(())
    }

    fn set_hold_view(&self, view: hold::HoldView) {
        let mut current = self.holds.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != view {
            *current = view;
        }
    }

    /// See [`HostMaps::set_holds`].
    pub fn set_holds(&mut self, on: bool) -> Result<(), HostApplyError> {
        self.maps.set_holds(on)
    }

    /// The cgroup v2 mount the scans walk.
    pub fn cgroup_root(&self) -> &std::path::Path {
        &self.cgroup_root
    }

    /// The identity entries of `policies`, logging trees too large to enter whole.
    fn resolve(
        &self,
        policies: &[HostPolicy],
        generation: u32,
        pids: &[u32],
    ) -> identity::Resolved {
        let resolved = identity::resolve(policies, generation, pids);
        if resolved.skipped > 0 {
            tracing::warn!(
                skipped = resolved.skipped,
                limit = identity::MAX_MEMBERS,
                "protected trees hold more objects than the identity map takes: the rest match \
                 through their directories only (hard links to them are not seen)"
            );
        }
        resolved
    }

    pub fn watched_cgroups(&self) -> usize {
        self.maps.live().scopes.len()
    }
}
