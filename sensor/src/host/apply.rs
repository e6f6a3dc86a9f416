//! Writes a [`HostCompiled`] into the kernel maps so no hook sees a mix of two policy sets:
//! entries are written with both generations' bits, one write to `HOST_CONFIG` flips the
//! live generation, then the old bits and entries are removed.

use std::{collections::HashSet, hash::Hash};

use aya::maps::{Array, HashMap, MapData, MapError, lpm_trie::LpmTrie};
use sensor_common::host::{
    BIND_RULES_MAX_ENTRIES, BindKey, FileMasks, HOST_SCOPES_MAX_ENTRIES, HostConfig,
    INODE_RULES_MAX_ENTRIES, InodeKey, InodeMasks, KernelOffsets, PATH_RULES_MAX_ENTRIES, PathKey,
    RuleMasks, SYSCALL_RULES_MAX_ENTRIES,
};

use super::compile::HostCompiled;

#[derive(Debug, thiserror::Error)]
pub enum HostApplyError {
    #[error(
        "host policies need {needed} entries in map {map}, which holds {capacity}; nothing was applied"
    )]
    TooLarge { map: &'static str, needed: usize, capacity: u32 },
    #[error("writing map {map}: {source}")]
    Map { map: &'static str, source: MapError },
}

pub struct HostMaps {
    pub config: Array<MapData, HostConfig>,
    pub scopes: HashMap<MapData, u64, u64>,
    pub exec: LpmTrie<MapData, PathKey, RuleMasks>,
    pub file: LpmTrie<MapData, PathKey, FileMasks>,
    pub bind: HashMap<MapData, BindKey, RuleMasks>,
    pub syscall: HashMap<MapData, u32, RuleMasks>,
    pub inode: HashMap<MapData, InodeKey, InodeMasks>,
    state: HostConfig,
    live: HostCompiled,
}

trait Merge: Copy + Default {
    fn merge(self, other: Self) -> Self;
}

impl Merge for RuleMasks {
    fn merge(self, o: Self) -> Self {
        Self { audit: self.audit | o.audit, block: self.block | o.block }
    }
}

impl Merge for FileMasks {
    fn merge(mut self, o: Self) -> Self {
        for i in 0..self.audit.len() {
            self.audit[i] |= o.audit[i];
            self.block[i] |= o.block[i];
        }
        self.observe |= o.observe;
        self
    }
}

impl Merge for InodeMasks {
    fn merge(mut self, o: Self) -> Self {
        for i in 0..self.audit.len() {
            self.audit[i] |= o.audit[i];
            self.block[i] |= o.block[i];
        }
        self
    }
}

impl Merge for u64 {
    fn merge(self, o: Self) -> Self {
        self | o
    }
}

/// Writes `union(old, new)` for every key, or `new` only and deletes the rest (`final_pass`).
fn sync<K: Clone + Eq + Hash, V: Merge>(
    old: &std::collections::HashMap<K, V>,
    new: &std::collections::HashMap<K, V>,
    final_pass: bool,
    mut write: impl FnMut(&K, Option<V>) -> Result<(), MapError>,
) -> Result<(), MapError> {
    let keys: HashSet<&K> = old.keys().chain(new.keys()).collect();
    for key in keys {
        let n = new.get(key).copied();
        let o = old.get(key).copied();
        match (final_pass, n) {
            (true, Some(v)) => write(key, Some(v))?,
            (true, None) => match write(key, None) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e),
            },
            (false, _) => write(key, Some(o.unwrap_or_default().merge(n.unwrap_or_default())))?,
        }
    }
    Ok(())
}

impl HostMaps {
    pub fn new(
        config: Array<MapData, HostConfig>,
        scopes: HashMap<MapData, u64, u64>,
        exec: LpmTrie<MapData, PathKey, RuleMasks>,
        file: LpmTrie<MapData, PathKey, FileMasks>,
        bind: HashMap<MapData, BindKey, RuleMasks>,
        syscall: HashMap<MapData, u32, RuleMasks>,
        inode: HashMap<MapData, InodeKey, InodeMasks>,
    ) -> Self {
        // Maps adopted from a previous run (pinned) keep their live generation: the first
        // apply then fills the idle one and flips, as any other apply does.
        let generation = config.get(&0, 0).map(|c| c.generation).unwrap_or_default();
        Self {
            state: HostConfig { generation, ..HostConfig::default() },
            config,
            scopes,
            exec,
            file,
            bind,
            syscall,
            inode,
            live: HostCompiled::default(),
        }
    }

    /// Sets the fields that do not change with policies.
    pub fn init(
        &mut self,
        enforce: bool,
        self_tgid: u32,
        offsets: KernelOffsets,
    ) -> Result<(), HostApplyError> {
        self.state.enforce = u32::from(enforce);
        self.state.self_tgid = self_tgid;
        self.state.offsets = offsets;
        self.state.offsets_valid = 1;
        self.state.cap_full = full_capabilities();
        self.write_config()
    }

    /// Turns holding on (the agent reads the hold ring) or off (it stops reading: the kernel
    /// must not stop tasks nobody will continue).
    pub fn set_holds(&mut self, on: bool) -> Result<(), HostApplyError> {
        self.state.holds = u32::from(on);
        self.write_config()
    }

    /// The generation the next compile must target.
    pub fn next_generation(&self) -> u32 {
        1 - self.state.generation
    }

    /// The generation in force, for event attribution.
    pub fn live(&self) -> &HostCompiled {
        &self.live
    }

    pub fn live_generation(&self) -> u32 {
        self.state.generation
    }

    fn write_config(&mut self) -> Result<(), HostApplyError> {
        self.config
            .set(0, &self.state, 0)
            .map_err(|source| HostApplyError::Map { map: "HOST_CONFIG", source })
    }

    /// Applies `new` (compiled for [`Self::next_generation`]).
    pub fn apply(&mut self, new: HostCompiled) -> Result<(), HostApplyError> {
        let check = |map, needed: usize, capacity: u32| {
            if needed > capacity as usize {
                Err(HostApplyError::TooLarge { map, needed, capacity })
            } else {
                Ok(())
            }
        };
        check("HOST_SCOPES", self.live.scopes.len() + new.scopes.len(), HOST_SCOPES_MAX_ENTRIES)?;
        check("EXEC_RULES", self.live.exec.len() + new.exec.len(), PATH_RULES_MAX_ENTRIES)?;
        check("FILE_RULES", self.live.file.len() + new.file.len(), PATH_RULES_MAX_ENTRIES)?;
        check("BIND_RULES", self.live.bind.len() + new.bind.len(), BIND_RULES_MAX_ENTRIES)?;
        check(
            "SYSCALL_RULES",
            self.live.syscall.len() + new.syscall.len(),
            SYSCALL_RULES_MAX_ENTRIES,
        )?;
        check("INODE_RULES", self.live.inode.len() + new.inode.len(), INODE_RULES_MAX_ENTRIES)?;
        let old = std::mem::take(&mut self.live);
        for final_pass in [false, true] {
            if final_pass {
                self.state.generation = 1 - self.state.generation;
                self.state.noroot_audit = new.noroot.audit;
                self.state.noroot_block = new.noroot.block;
                self.state.walk_block = new.walk_block;
                self.state.hold_block = new.hold_block;
                self.write_config()?;
            }
            self.sync_all(&old, &new, final_pass)?;
        }
        self.live = new;
        Ok(())
    }

    /// Removes every entry the live set does not have: leftovers of a previous run whose maps
    /// were adopted (that run's live set is not known to this one). Call after the first apply;
    /// returns how many entries went.
    pub fn scrub_stale(&mut self) -> Result<usize, HostApplyError> {
        let err = |map| move |source| HostApplyError::Map { map, source };
        let mut removed = 0;
        let stale: Vec<u64> = self
            .scopes
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !self.live.scopes.contains_key(k))
            .collect();
        for k in &stale {
            self.scopes.remove(k).map_err(err("HOST_SCOPES"))?;
        }
        removed += stale.len();
        let exec_live: Vec<_> = self.live.exec.keys().map(|p| p.key()).collect();
        let stale: Vec<_> = self
            .exec
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !exec_live.iter().any(|l| l.prefix_len() == k.prefix_len() && l.data() == k.data())
            })
            .collect();
        for k in &stale {
            self.exec.remove(k).map_err(err("EXEC_RULES"))?;
        }
        removed += stale.len();
        let file_live: Vec<_> = self.live.file.keys().map(|p| p.key()).collect();
        let stale: Vec<_> = self
            .file
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !file_live.iter().any(|l| l.prefix_len() == k.prefix_len() && l.data() == k.data())
            })
            .collect();
        for k in &stale {
            self.file.remove(k).map_err(err("FILE_RULES"))?;
        }
        removed += stale.len();
        let stale: Vec<BindKey> = self
            .bind
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !self.live.bind.contains_key(k))
            .collect();
        for k in &stale {
            self.bind.remove(k).map_err(err("BIND_RULES"))?;
        }
        removed += stale.len();
        let stale: Vec<u32> = self
            .syscall
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !self.live.syscall.contains_key(k))
            .collect();
        for k in &stale {
            self.syscall.remove(k).map_err(err("SYSCALL_RULES"))?;
        }
        removed += stale.len();
        let stale: Vec<InodeKey> = self
            .inode
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !self.live.inode.contains_key(k))
            .collect();
        for k in &stale {
            self.inode.remove(k).map_err(err("INODE_RULES"))?;
        }
        removed += stale.len();
        Ok(removed)
    }

    /// Rewrites only the identity entries (files came or went in protected trees), for the
    /// live generation: new entries are written before stale ones are removed.
    pub fn update_inodes(
        &mut self,
        inodes: std::collections::HashMap<InodeKey, InodeMasks>,
    ) -> Result<(), HostApplyError> {
        if inodes.len() > INODE_RULES_MAX_ENTRIES as usize {
            return Err(HostApplyError::TooLarge {
                map: "INODE_RULES",
                needed: inodes.len(),
                capacity: INODE_RULES_MAX_ENTRIES,
            });
        }
        let map = |source| HostApplyError::Map { map: "INODE_RULES", source };
        let old = std::mem::take(&mut self.live.inode);
        let inode_map = &mut self.inode;
        sync(&old, &inodes, true, |k, v| match v {
            Some(v) => inode_map.insert(k, &v, 0),
            None => inode_map.remove(k),
        })
        .map_err(map)?;
        self.live.inode = inodes;
        Ok(())
    }

    /// Rewrites only the cgroup scopes (containers came or went), for the live generation.
    pub fn update_scopes(
        &mut self,
        scopes: std::collections::HashMap<u64, u64>,
    ) -> Result<(), HostApplyError> {
        check_scopes(scopes.len())?;
        let map = |source| HostApplyError::Map { map: "HOST_SCOPES", source };
        let old = std::mem::take(&mut self.live.scopes);
        let scopes_map = &mut self.scopes;
        sync(&old, &scopes, true, |k, v| match v {
            Some(v) => scopes_map.insert(k, &v, 0),
            None => scopes_map.remove(k),
        })
        .map_err(map)?;
        self.live.scopes = scopes;
        Ok(())
    }

    fn sync_all(
        &mut self,
        old: &HostCompiled,
        new: &HostCompiled,
        final_pass: bool,
    ) -> Result<(), HostApplyError> {
        let err = |map| move |source| HostApplyError::Map { map, source };
        let scopes = &mut self.scopes;
        sync(&old.scopes, &new.scopes, final_pass, |k, v| match v {
            Some(v) => scopes.insert(k, &v, 0),
            None => scopes.remove(k),
        })
        .map_err(err("HOST_SCOPES"))?;
        let to_map = |m: &std::collections::BTreeMap<_, _>| -> std::collections::HashMap<_, _> {
            m.iter().map(|(k, v): (&super::compile::PathPrefix, _)| (k.clone(), *v)).collect()
        };
        let exec = &mut self.exec;
        sync(&to_map(&old.exec), &to_map(&new.exec), final_pass, |k, v| match v {
            Some(v) => exec.insert(&k.key(), &v, 0),
            None => exec.remove(&k.key()),
        })
        .map_err(err("EXEC_RULES"))?;
        let file = &mut self.file;
        let file_map = |m: &std::collections::BTreeMap<super::compile::PathPrefix, FileMasks>| {
            m.iter().map(|(k, v)| (k.clone(), *v)).collect::<std::collections::HashMap<_, _>>()
        };
        sync(&file_map(&old.file), &file_map(&new.file), final_pass, |k, v| match v {
            Some(v) => file.insert(&k.key(), &v, 0),
            None => file.remove(&k.key()),
        })
        .map_err(err("FILE_RULES"))?;
        let bind = &mut self.bind;
        sync(&old.bind, &new.bind, final_pass, |k, v| match v {
            Some(v) => bind.insert(k, &v, 0),
            None => bind.remove(k),
        })
        .map_err(err("BIND_RULES"))?;
        let syscall = &mut self.syscall;
        sync(&old.syscall, &new.syscall, final_pass, |k, v| match v {
            Some(v) => syscall.insert(k, &v, 0),
            None => syscall.remove(k),
        })
        .map_err(err("SYSCALL_RULES"))?;
        let inode = &mut self.inode;
        sync(&old.inode, &new.inode, final_pass, |k, v| match v {
            Some(v) => inode.insert(k, &v, 0),
            None => inode.remove(k),
        })
        .map_err(err("INODE_RULES"))?;
        Ok(())
    }
}

/// Every capability this kernel has (bits 0..=`/proc/sys/kernel/cap_last_cap`); 0 when unknown
/// (then only uid 0 counts as root).
fn full_capabilities() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|last| *last < 64)
        .map_or(0, |last| if last == 63 { u64::MAX } else { (1_u64 << (last + 1)) - 1 })
}

fn check_scopes(needed: usize) -> Result<(), HostApplyError> {
    if needed > HOST_SCOPES_MAX_ENTRIES as usize {
        return Err(HostApplyError::TooLarge {
            map: "HOST_SCOPES",
            needed,
            capacity: HOST_SCOPES_MAX_ENTRIES,
        });
    }
    Ok(())
}
