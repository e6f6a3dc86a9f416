//! Writes a [`Compiled`] policy into the kernel maps so that no packet sees a mix of two
//! policy sets: entries go in under the idle generation, then one write to `NET_CONFIG`
//! switches packets over, then the old generation is removed.

use aya::maps::{
    Array, HashMap, MapData,
    lpm_trie::{Key, LpmTrie},
};
use sensor_common::net::{
    ENDPOINTS_MAX_ENTRIES, EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_AUDIT_SELECTED_EGRESS,
    EP_AUDIT_SELECTED_INGRESS, EP_ENFORCE_EGRESS, EP_ENFORCE_INGRESS, EP_SELECTED_EGRESS,
    EP_SELECTED_INGRESS, EndpointInfo, EndpointKey, IPCACHE_MAX_ENTRIES, IpCacheKey, NetConfig,
    POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, PolicyKey, PolicyValue,
};

use super::compile::{Compiled, EntryMeta, PolicyEntry};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "policy needs {needed} entries in map {map}, which holds {capacity} per generation (raise policy_map_max_entries); \
         nothing was applied"
    )]
    TooLarge { map: &'static str, needed: usize, capacity: u32 },
    #[error("writing map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
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
        Self { config, endpoints, ipcache, allow, deny, state, policy_capacity }
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
            Ok(n) => n,
            Err(err) => {
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
    ) -> Result<usize, ApplyError> {
        let mut endpoints = 0;
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
            self.endpoints
                .insert(&EndpointKey { generation, ifindex }, &info, 0)
                .map_err(|source| ApplyError::Map { map: "ENDPOINTS", source })?;
            endpoints += 1;
        }
        for (cidr, identity) in &compiled.ipcache {
            let key =
                Key::new(32 + u32::from(cidr.len), IpCacheKey { generation, addr: cidr.octets() });
            self.ipcache
                .insert(&key, identity, 0)
                .map_err(|source| ApplyError::Map { map: "IPCACHE", source })?;
        }
        for (entries, map, name) in [
            (&compiled.allow, &mut self.allow, "POLICY_ALLOW"),
            (&compiled.deny, &mut self.deny, "POLICY_DENY"),
        ] {
            for (entry, meta) in entries {
                let (key, value) = policy_key(entry, meta, generation);
                map.insert(&key, &value, 0)
                    .map_err(|source| ApplyError::Map { map: name, source })?;
            }
        }
        Ok(endpoints)
    }

    /// Removes every entry of `generation` from the four maps.
    fn clear(&mut self, generation: u32) -> Result<(), ApplyError> {
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
        Ok(())
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
