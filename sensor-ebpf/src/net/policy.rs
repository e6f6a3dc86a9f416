//! Policy decision for a new flow: endpoint → remote identity (ipcache) → deny entries →
//! allow entries. All lookups use the live generation, read once per packet by the caller,
//! so a packet never mixes two policy sets.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
};
use sensor_common::net::{
    DROP_POLICY_DENIED, DROP_POLICY_DENY, ENDPOINTS_MAX_ENTRIES, EP_AUDIT_EGRESS, EP_AUDIT_INGRESS,
    EP_ENFORCE_EGRESS, EP_ENFORCE_INGRESS, EndpointInfo, EndpointKey, IDENTITY_ANY, IDENTITY_WORLD,
    IPCACHE_MAX_ENTRIES, IpCacheKey, MATCH_NONE, NetConfig, POLICY_INGRESS, POLICY_MAX_ENTRIES,
    POLICY_PREFIX_FULL, PolicyKey, PolicyValue, VERDICT_AUDIT, VERDICT_DROPPED, VERDICT_FORWARDED,
};

use super::parse::Tuple;

/// `BPF_F_NO_PREALLOC`: required for LPM tries.
const NO_PREALLOC: u32 = 1;

#[map]
static ENDPOINTS: HashMap<EndpointKey, EndpointInfo> =
    HashMap::with_max_entries(ENDPOINTS_MAX_ENTRIES, 0);

#[map]
static IPCACHE: LpmTrie<IpCacheKey, u32> =
    LpmTrie::with_max_entries(IPCACHE_MAX_ENTRIES, NO_PREALLOC);

#[map]
static POLICY_ALLOW: LpmTrie<PolicyKey, PolicyValue> =
    LpmTrie::with_max_entries(POLICY_MAX_ENTRIES, NO_PREALLOC);

#[map]
static POLICY_DENY: LpmTrie<PolicyKey, PolicyValue> =
    LpmTrie::with_max_entries(POLICY_MAX_ENTRIES, NO_PREALLOC);

pub struct Decision {
    pub verdict: u8,
    pub drop_reason: u8,
    pub match_type: u8,
    pub endpoint_id: u32,
    pub local_identity: u32,
    pub remote_identity: u32,
    /// 1 + index of the deciding policy, 0 for none.
    pub policy: u32,
}

#[inline(always)]
pub fn decide(config: &NetConfig, ifindex: u32, direction: u8, t: &Tuple) -> Decision {
    let generation = config.generation;
    let mut d = Decision {
        verdict: VERDICT_FORWARDED,
        drop_reason: 0,
        match_type: MATCH_NONE,
        endpoint_id: 0,
        local_identity: 0,
        remote_identity: 0,
        policy: 0,
    };
    let remote = if direction == POLICY_INGRESS { t.saddr } else { t.daddr };
    d.remote_identity = IPCACHE
        .get(&Key::new(32 + 128, IpCacheKey { generation, addr: remote }))
        .copied()
        .unwrap_or(IDENTITY_WORLD);
    // SAFETY: the value is copied out at once; userspace may replace it meanwhile.
    let Some(endpoint) = (unsafe { ENDPOINTS.get(&EndpointKey { generation, ifindex }) }).copied()
    else {
        return d; // not an endpoint we know: observe only
    };
    d.endpoint_id = endpoint.endpoint_id;
    d.local_identity = endpoint.identity;
    let lookup = |map: &LpmTrie<PolicyKey, PolicyValue>| {
        let mut data = PolicyKey {
            generation,
            endpoint_id: endpoint.endpoint_id,
            identity: d.remote_identity,
            direction,
            protocol: t.protocol,
            port: t.policy_port.to_be_bytes(),
        };
        if let Some(v) = map.get(&Key::new(POLICY_PREFIX_FULL, data)) {
            return Some(*v);
        }
        data.identity = IDENTITY_ANY;
        map.get(&Key::new(POLICY_PREFIX_FULL, data)).copied()
    };
    let (enforced, audit_only) = if direction == POLICY_INGRESS {
        (EP_ENFORCE_INGRESS, EP_AUDIT_INGRESS)
    } else {
        (EP_ENFORCE_EGRESS, EP_AUDIT_EGRESS)
    };
    let audit = if let Some(deny) = lookup(&POLICY_DENY) {
        d.drop_reason = DROP_POLICY_DENY;
        d.policy = deny.policy;
        deny.audit != 0
    } else if endpoint.flags & enforced == 0 {
        return d; // no policy selects this endpoint in this direction
    } else if let Some(allow) = lookup(&POLICY_ALLOW) {
        d.match_type = allow.match_type;
        d.policy = allow.policy;
        return d;
    } else {
        d.drop_reason = DROP_POLICY_DENIED;
        endpoint.flags & audit_only != 0
    };
    d.verdict = if config.enforce != 0 && !audit { VERDICT_DROPPED } else { VERDICT_AUDIT };
    d
}
