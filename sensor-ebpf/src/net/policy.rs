//! Policy decision for a new flow: endpoint → remote identity (ipcache) → deny entries →
//! allow entries. All lookups use the live generation, read once per packet by the caller,
//! so a packet never mixes two policy sets.
//!
//! Two layers: enforcing policies alone give the verdict; audit-mode policies
//! (`POLICY_AUDIT_LAYER` entries, looked up only for endpoints they select) can only turn a
//! forwarded packet into a would-be drop (AUDIT), never allow or drop anything.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
};
use sensor_common::net::{
    DROP_POLICY_DENIED, DROP_POLICY_DENY, ENDPOINTS_MAX_ENTRIES, EP_AUDIT_INGRESS,
    EP_AUDIT_SELECTED_INGRESS, EP_ENFORCE_INGRESS, EP_SELECTED_INGRESS, EndpointInfo, EndpointKey,
    IDENTITY_ANY, IDENTITY_WORLD, IPCACHE_MAX_ENTRIES, IpCacheKey, MATCH_NONE, NetConfig,
    POLICY_AUDIT_LAYER, POLICY_INGRESS, POLICY_MAX_ENTRIES, POLICY_PREFIX_FULL, PolicyKey,
    PolicyValue, VERDICT_AUDIT, VERDICT_DROPPED, VERDICT_FORWARDED,
};

use super::{NET_CONFIG, parse::Tuple};

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
    /// A policy selects the endpoint in this direction: the decision is a policy verdict.
    pub selected: bool,
    pub endpoint_id: u32,
    pub local_identity: u32,
    pub remote_identity: u32,
    /// 1 + index of the deciding policy, 0 for none.
    pub policy: u32,
}

impl Decision {
    const fn forwarded() -> Self {
        Self {
            verdict: VERDICT_FORWARDED,
            drop_reason: 0,
            match_type: MATCH_NONE,
            selected: false,
            endpoint_id: 0,
            local_identity: 0,
            remote_identity: 0,
            policy: 0,
        }
    }

    /// A drop in enforce mode, a would-be drop (AUDIT) in detect mode.
    #[inline(always)]
    fn deny(&mut self, config: &NetConfig, reason: u8, policy: u32) {
        self.verdict = if config.enforce != 0 { VERDICT_DROPPED } else { VERDICT_AUDIT };
        self.drop_reason = reason;
        self.policy = policy;
    }
}

/// The endpoint behind `ifindex` in the live generation, if it is one.
#[inline(always)]
fn endpoint(generation: u32, ifindex: u32) -> Option<EndpointInfo> {
    // SAFETY: the value is copied out at once; userspace may replace it meanwhile.
    unsafe { ENDPOINTS.get(&EndpointKey { generation, ifindex }) }.copied()
}

/// The endpoint flags of one direction, shifted to their ingress positions.
#[inline(always)]
const fn direction_flags(endpoint: &EndpointInfo, direction: u8) -> u32 {
    endpoint.flags >> direction
}

/// The live policy configuration. Read once per decision: BPF-to-BPF calls take at most five
/// arguments, so the callees below read it themselves rather than take it (LLVM would pass
/// its fields one by one).
#[inline(always)]
fn config() -> NetConfig {
    NET_CONFIG.get(0).copied().unwrap_or(NetConfig::default())
}

/// A packet whose L4 identity is unknown (`reason` is its drop reason): an endpoint that a
/// policy selects in this direction fails closed (DROPPED in enforce mode, AUDIT in detect
/// mode); one only audit policies select records AUDIT; any other passes (FORWARDED).
#[inline(never)]
pub fn fail_closed(ifindex: u32, direction: u8, reason: u8) -> Decision {
    let config = &config();
    let mut d = Decision::forwarded();
    let Some(endpoint) = endpoint(config.generation, ifindex) else {
        return d;
    };
    d.endpoint_id = endpoint.endpoint_id;
    d.local_identity = endpoint.identity;
    let flags = direction_flags(&endpoint, direction);
    if flags & EP_SELECTED_INGRESS != 0 {
        d.deny(config, reason, 0);
    } else if flags & EP_AUDIT_SELECTED_INGRESS != 0 {
        d.verdict = VERDICT_AUDIT;
        d.drop_reason = reason;
    }
    d
}

/// Looks `t` up in one policy map and layer: the remote identity first, then any peer.
#[inline(always)]
fn lookup(
    map: &LpmTrie<PolicyKey, PolicyValue>,
    generation: u32,
    d: &Decision,
    direction: u8,
    t: &Tuple,
) -> Option<PolicyValue> {
    let mut data = PolicyKey {
        generation,
        endpoint_id: d.endpoint_id,
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
}

// A BPF-to-BPF call, not inlined: its stack frame (lookup keys) is not added to every
// caller's, which keeps the tc programs under the 512-byte stack limit.
///
/// The caller read `NET_CONFIG` for the conntrack revision before this reads it again: a
/// policy change in between leaves an entry stamped with the older revision, which only makes
/// its next packet decide again.
#[inline(never)]
pub fn decide(ifindex: u32, direction: u8, t: &Tuple) -> Decision {
    let config = &config();
    let generation = config.generation;
    let mut d = Decision::forwarded();
    let remote = if direction == POLICY_INGRESS { t.saddr } else { t.daddr };
    d.remote_identity = IPCACHE
        .get(&Key::new(32 + 128, IpCacheKey { generation, addr: remote }))
        .copied()
        .unwrap_or(IDENTITY_WORLD);
    let Some(endpoint) = endpoint(generation, ifindex) else {
        return d; // not an endpoint we know: observe only
    };
    d.endpoint_id = endpoint.endpoint_id;
    d.local_identity = endpoint.identity;
    let flags = direction_flags(&endpoint, direction);
    if flags & (EP_SELECTED_INGRESS | EP_AUDIT_SELECTED_INGRESS) == 0 {
        return d; // no policy selects this endpoint in this direction
    }
    d.selected = true;

    // Enforcing policies alone decide what passes.
    let allowed = if flags & EP_SELECTED_INGRESS == 0 {
        None
    } else if let Some(deny) = lookup(&POLICY_DENY, generation, &d, direction, t) {
        d.deny(config, DROP_POLICY_DENY, deny.policy);
        return d;
    } else {
        let allow = lookup(&POLICY_ALLOW, generation, &d, direction, t);
        if let Some(allow) = allow {
            d.match_type = allow.match_type;
            d.policy = allow.policy;
        } else if flags & EP_ENFORCE_INGRESS != 0 {
            d.deny(config, DROP_POLICY_DENIED, 0);
            return d;
        }
        allow
    };

    // Audit policies add what they would drop if they were enforced with the others.
    if flags & EP_AUDIT_SELECTED_INGRESS == 0 {
        return d;
    }
    let audit = direction | POLICY_AUDIT_LAYER;
    if let Some(deny) = lookup(&POLICY_DENY, generation, &d, audit, t) {
        d.verdict = VERDICT_AUDIT;
        d.drop_reason = DROP_POLICY_DENY;
        d.policy = deny.policy;
    } else if flags & (EP_ENFORCE_INGRESS | EP_AUDIT_INGRESS) != 0
        && allowed.is_none()
        && lookup(&POLICY_ALLOW, generation, &d, audit, t).is_none()
    {
        d.verdict = VERDICT_AUDIT;
        d.drop_reason = DROP_POLICY_DENIED;
    }
    d
}
