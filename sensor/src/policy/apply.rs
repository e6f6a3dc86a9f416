//! Writes a [`Compiled`] policy into the kernel maps so that no packet sees a mix of two
//! policy sets: entries go in under the idle generation, then one write to `NET_CONFIG`
//! switches packets over, then the old generation is removed.
//!
//! The LPM tries are written and cleared in batches (`BPF_MAP_UPDATE_BATCH`,
//! `BPF_MAP_DELETE_BATCH`): the keys each generation got are remembered, so removing a
//! generation is one delete call per map instead of a walk of every key with `get_next_key`
//! and one delete each. A generation whose content is not known (maps adopted from pins at
//! start, or an apply that failed half-way) is cleared by the walk.

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use aya::maps::{
    Array, HashMap, IterableMap, MapData,
    lpm_trie::{Key, LpmTrie},
};
use sensor_common::net::{
    ENDPOINTS_MAX_ENTRIES, EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_AUDIT_SELECTED_EGRESS,
    EP_AUDIT_SELECTED_INGRESS, EP_ENFORCE_EGRESS, EP_ENFORCE_INGRESS, EP_SELECTED_EGRESS,
    EP_SELECTED_INGRESS, EndpointInfo, EndpointKey, IPCACHE_MAX_ENTRIES, IpCacheKey, NetConfig,
    POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, PolicyKey, PolicyValue,
};

use super::{
    batch,
    compile::{Compiled, EntryMeta, PolicyEntry},
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "policy needs {needed} entries in map {map}, which holds {capacity} per generation (raise policy_map_max_entries); \
         nothing was applied"
    )]
    TooLarge { map: &'static str, needed: usize, capacity: u32 },
    #[error("writing map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
    #[error("writing map {map} (batch): {source}")]
    Batch { map: &'static str, source: std::io::Error },
}

/// The keys one generation holds in each map, as this process wrote them.
#[derive(Default)]
struct Written {
    endpoints: Vec<EndpointKey>,
    ipcache: Vec<Key<IpCacheKey>>,
    allow: Vec<Key<PolicyKey>>,
    deny: Vec<Key<PolicyKey>>,
}

pub struct PolicyMaps {
    pub config: Array<MapData, NetConfig>,
    pub endpoints: HashMap<MapData, EndpointKey, EndpointInfo>,
    pub ipcache: LpmTrie<MapData, IpCacheKey, u32>,
    pub allow: LpmTrie<MapData, PolicyKey, PolicyValue>,
    pub deny: LpmTrie<MapData, PolicyKey, PolicyValue>,
    /// The live generation and revision, as last written to `config`.
    state: NetConfig,
    /// Entries one generation of POLICY_ALLOW / POLICY_DENY may hold.
    policy_capacity: u32,
    /// Per generation: the keys it holds, or `None` when unknown (cleared by a walk).
    written: [Option<Written>; 2],
}

/// What an apply wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub revision: u32,
    pub endpoints: usize,
    pub ipcache: usize,
    pub allow: usize,
    pub deny: usize,
}

impl PolicyMaps {
    pub fn new(
        config: Array<MapData, NetConfig>,
        endpoints: HashMap<MapData, EndpointKey, EndpointInfo>,
        ipcache: LpmTrie<MapData, IpCacheKey, u32>,
        allow: LpmTrie<MapData, PolicyKey, PolicyValue>,
        deny: LpmTrie<MapData, PolicyKey, PolicyValue>,
        policy_capacity: u32,
    ) -> Self {
        let state = config.get(&0, 0).unwrap_or_default();
        Self {
            config,
            endpoints,
            ipcache,
            allow,
            deny,
            state,
            policy_capacity,
            written: [None, None],
        }
    }

    /// Fill ratio of each map for what `applied` wrote, as `cilium_bpf_map_pressure` reports.
    /// Policy maps count against one generation's share, the bound a policy must fit in.
    pub fn pressure(&self, applied: &Applied) -> [(&'static str, f64); 4] {
        let ratio = |used: usize, capacity: u32| used as f64 / f64::from(capacity.max(1));
        [
            ("endpoints", ratio(applied.endpoints, ENDPOINTS_MAX_ENTRIES)),
            ("ipcache", ratio(applied.ipcache, IPCACHE_MAX_ENTRIES)),
            ("policy_allow", ratio(applied.allow, self.policy_capacity)),
            ("policy_deny", ratio(applied.deny, self.policy_capacity)),
        ]
    }

    /// Applies `compiled`; `ifindex_of` resolves interface names (endpoints whose interface
    /// does not exist yet are left out until the next apply).
    pub fn apply(
        &mut self,
        compiled: &Compiled,
        enforce: bool,
        ifindex_of: impl Fn(&str) -> Option<u32>,
    ) -> Result<Applied, ApplyError> {
        let half = |max: u32| max / 2;
        check("ENDPOINTS", compiled.local.len(), half(ENDPOINTS_MAX_ENTRIES))?;
        check("IPCACHE", compiled.ipcache.len(), half(IPCACHE_MAX_ENTRIES))?;
        check("POLICY_ALLOW", compiled.allow.len(), self.policy_capacity)?;
        check("POLICY_DENY", compiled.deny.len(), self.policy_capacity)?;

        let next = 1 - self.state.generation;
        // Leftovers of an apply that failed half-way are not live: clear them first.
        self.clear(next)?;
        let written = self.write(compiled, next, &ifindex_of);
        let endpoints = match written {
            Ok(written) => {
                let n = written.endpoints.len();
                self.written[gen_index(next)] = Some(written);
                n
            }
            Err(err) => {
                self.written[gen_index(next)] = None;
                let _ = self.clear(next);
                return Err(err);
            }
        };
        let state = NetConfig {
            generation: next,
            revision: self.state.revision.wrapping_add(1),
            enforce: u32::from(enforce),
            _pad: 0,
        };
        self.config
            .set(0, &state, 0)
            .map_err(|source| ApplyError::Map { map: "NET_CONFIG", source })?;
        let old = self.state.generation;
        self.state = state;
        self.clear(old)?;
        Ok(Applied {
            revision: state.revision,
            endpoints,
            ipcache: compiled.ipcache.len(),
            allow: compiled.allow.len(),
            deny: compiled.deny.len(),
        })
    }

    fn write(
        &mut self,
        compiled: &Compiled,
        generation: u32,
        ifindex_of: &impl Fn(&str) -> Option<u32>,
    ) -> Result<Written, ApplyError> {
        let mut written = Written::default();
        for ep in &compiled.local {
            let Some(ifindex) = ifindex_of(&ep.interface) else { continue };
            let flags = [
                (ep.enforce_ingress, EP_ENFORCE_INGRESS),
                (ep.enforce_egress, EP_ENFORCE_EGRESS),
                (ep.audit_ingress, EP_AUDIT_INGRESS),
                (ep.audit_egress, EP_AUDIT_EGRESS),
                (ep.selected.ingress, EP_SELECTED_INGRESS),
                (ep.selected.egress, EP_SELECTED_EGRESS),
                (ep.audit_selected.ingress, EP_AUDIT_SELECTED_INGRESS),
                (ep.audit_selected.egress, EP_AUDIT_SELECTED_EGRESS),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |acc, (_, bit)| acc | bit);
            let info = EndpointInfo { endpoint_id: ep.id, identity: ep.identity, flags, _pad: 0 };
            let key = EndpointKey { generation, ifindex };
            // Recorded before the write: a failed apply clears what it may have written.
            written.endpoints.push(key);
            self.endpoints
                .insert(&key, &info, 0)
                .map_err(|source| ApplyError::Map { map: "ENDPOINTS", source })?;
        }
        let (keys, values): (Vec<_>, Vec<_>) = compiled
            .ipcache
            .iter()
            .map(|(cidr, identity)| {
                let data = IpCacheKey { generation, addr: cidr.octets() };
                (Key::new(32 + u32::from(cidr.len), data), *identity)
            })
            .unzip();
        update_trie(&mut self.ipcache, "IPCACHE", &keys, &values)?;
        written.ipcache = keys;
        for (entries, map, name, out) in [
            (&compiled.allow, &mut self.allow, "POLICY_ALLOW", &mut written.allow),
            (&compiled.deny, &mut self.deny, "POLICY_DENY", &mut written.deny),
        ] {
            let (keys, values): (Vec<_>, Vec<_>) =
                entries.iter().map(|(entry, meta)| policy_key(entry, meta, generation)).unzip();
            update_trie(map, name, &keys, &values)?;
            *out = keys;
        }
        Ok(written)
    }

    /// Removes every entry of `generation` from the four maps: the keys it was given, in
    /// batches, or by walking every key when they are not known.
    fn clear(&mut self, generation: u32) -> Result<(), ApplyError> {
        if let Some(written) = self.written[gen_index(generation)].take() {
            let deleted = self.delete_written(&written);
            if deleted.is_ok() {
                self.written[gen_index(generation)] = Some(Written::default());
                return Ok(());
            }
            // A key that was not there (or any other failure): fall back to the walk.
        }
        self.walk_clear(generation);
        self.written[gen_index(generation)] = Some(Written::default());
        Ok(())
    }

    fn delete_written(&mut self, w: &Written) -> std::io::Result<()> {
        for key in &w.endpoints {
            let _ = self.endpoints.remove(key);
        }
        delete_trie(&mut self.ipcache, &w.ipcache)?;
        delete_trie(&mut self.allow, &w.allow)?;
        delete_trie(&mut self.deny, &w.deny)
    }

    fn walk_clear(&mut self, generation: u32) {
        let stale: Vec<_> = self
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation == generation)
            .collect();
        for key in stale {
            let _ = self.endpoints.remove(&key);
        }
        let stale: Vec<_> = self
            .ipcache
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().generation == generation)
            .collect();
        for key in stale {
            let _ = self.ipcache.remove(&key);
        }
        for map in [&mut self.allow, &mut self.deny] {
            let stale: Vec<_> = map
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.data().generation == generation)
                .collect();
            for key in stale {
                let _ = map.remove(&key);
            }
        }
    }
}

const fn gen_index(generation: u32) -> usize {
    (generation & 1) as usize
}

fn raw_fd<K: aya::Pod, V: aya::Pod>(map: &LpmTrie<MapData, K, V>) -> RawFd {
    IterableMap::map(map).fd().as_fd().as_raw_fd()
}

/// Writes `keys → values` into an LPM trie in one batch, or one by one where the kernel has
/// no batch ops for it.
fn update_trie<K: aya::Pod, V: aya::Pod>(
    map: &mut LpmTrie<MapData, K, V>,
    name: &'static str,
    keys: &[Key<K>],
    values: &[V],
) -> Result<(), ApplyError> {
    match batch::update(raw_fd(map), keys, values) {
        Ok(()) => Ok(()),
        Err(err) if batch::is_unsupported(&err) => {
            for (key, value) in keys.iter().zip(values) {
                map.insert(key, value, 0)
                    .map_err(|source| ApplyError::Map { map: name, source })?;
            }
            Ok(())
        }
        Err(source) => Err(ApplyError::Batch { map: name, source }),
    }
}

/// Deletes `keys` from an LPM trie in one batch, or one by one without batch ops (then a
/// missing key is not an error).
fn delete_trie<K: aya::Pod, V: aya::Pod>(
    map: &mut LpmTrie<MapData, K, V>,
    keys: &[Key<K>],
) -> std::io::Result<()> {
    match batch::delete(raw_fd(map), keys) {
        Err(err) if batch::is_unsupported(&err) => {
            for key in keys {
                let _ = map.remove(key);
            }
            Ok(())
        }
        other => other,
    }
}

fn check(map: &'static str, needed: usize, capacity: u32) -> Result<(), ApplyError> {
    if needed > capacity as usize {
        return Err(ApplyError::TooLarge { map, needed, capacity });
    }
    Ok(())
}

fn policy_key(
    entry: &PolicyEntry,
    meta: &EntryMeta,
    generation: u32,
) -> (Key<PolicyKey>, PolicyValue) {
    let (prefix, protocol, port) = match (entry.protocol, entry.port) {
        (None, _) => (POLICY_PREFIX_ANY_PROTO, 0, 0),
        (Some(p), None) => (POLICY_PREFIX_ANY_PORT, p, 0),
        (Some(p), Some((value, bits))) => (POLICY_PREFIX_ANY_PORT + u32::from(bits), p, value),
    };
    let data = PolicyKey {
        generation,
        endpoint_id: entry.endpoint_id,
        identity: entry.identity,
        direction: entry.direction,
        protocol,
        port: port.to_be_bytes(),
    };
    let value = PolicyValue {
        match_type: meta.match_type,
        audit: u8::from(meta.audit),
        _pad: 0,
        policy: u32::try_from(meta.policy + 1).unwrap_or(0),
    };
    (Key::new(prefix, data), value)
}
