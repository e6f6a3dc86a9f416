//! IP fragments, as Cilium tracks them: the first fragment's L4 identity (ports, ICMP type)
//! is kept per interface, source, destination, protocol and identification in a bounded LRU
//! map; later fragments take it, so conntrack and policy decide them like their first
//! fragment. A later fragment without a tracked first fragment, or one that overlaps the
//! first fragment's data, has no trustworthy L4 identity: the caller fails it closed.
//!
//! Only packets with "more fragments" or a fragment offset come here: the unfragmented path
//! pays nothing.

use aya_ebpf::{macros::map, maps::LruHashMap};
use sensor_common::net::{
    FRAGMENT_TIMEOUT_NS, FRAGMENTS_MAX_ENTRIES, FragKey, FragValue, NetCounter,
};

use super::parse::{Fragment, Tuple};

#[map]
static FRAGMENTS: LruHashMap<FragKey, FragValue> =
    LruHashMap::with_max_entries(FRAGMENTS_MAX_ENTRIES, 0);

#[inline(always)]
fn key(ifindex: u32, t: &Tuple, f: &Fragment) -> FragKey {
    FragKey {
        ifindex,
        id: f.id,
        protocol: f.protocol,
        family: t.family,
        _pad: [0; 2],
        saddr: t.saddr,
        daddr: t.daddr,
    }
}

/// A first fragment (its L4 identity already in `t`): remembers that identity for the later
/// fragments. A second first fragment of a datagram still in flight overlaps the first one.
// Not inlined: only fragments pay for this frame and its code.
#[inline(never)]
pub fn first(ifindex: u32, t: &Tuple, f: &Fragment, now: u64) -> Result<(), NetCounter> {
    let key = key(ifindex, t, f);
    if let Some(seen) = FRAGMENTS.get_ptr(&key) {
        // SAFETY: a live map value, read field by field.
        let (complete, first_ns) = unsafe { ((*seen).complete, (*seen).first_ns) };
        if complete == 0 && now.wrapping_sub(first_ns) < FRAGMENT_TIMEOUT_NS {
            return Err(NetCounter::FragmentOverlap);
        }
    }
    let value = FragValue {
        first_ns: now,
        sport: t.sport,
        dport: t.dport,
        policy_port: t.policy_port,
        first_end: u16::try_from(f.len).unwrap_or(u16::MAX),
        protocol: t.protocol,
        icmp_type: t.icmp_type,
        icmp_code: t.icmp_code,
        reply_only: u8::from(t.reply_only),
        icmp_types: t.icmp_types,
        complete: u8::from(!f.more),
        _pad: 0,
    };
    // A failed insert leaves the later fragments unmatched: they fail closed.
    let _ = FRAGMENTS.insert(&key, &value, 0);
    Ok(())
}

/// A later fragment: fills `t` with its first fragment's L4 identity.
#[inline(never)]
pub fn later(ifindex: u32, t: &mut Tuple, f: &Fragment, now: u64) -> Result<(), NetCounter> {
    let Some(seen) = FRAGMENTS.get_ptr_mut(&key(ifindex, t, f)) else {
        return Err(NetCounter::FragmentNotFound);
    };
    // SAFETY: a live map value; two CPUs may update `complete` at once, both to 1.
    unsafe {
        if now.wrapping_sub((*seen).first_ns) >= FRAGMENT_TIMEOUT_NS {
            return Err(NetCounter::FragmentNotFound);
        }
        if f.offset < u32::from((*seen).first_end) {
            return Err(NetCounter::FragmentOverlap);
        }
        if !f.more {
            (*seen).complete = 1;
        }
        t.protocol = (*seen).protocol;
        t.sport = (*seen).sport;
        t.dport = (*seen).dport;
        t.policy_port = (*seen).policy_port;
        t.icmp_type = (*seen).icmp_type;
        t.icmp_code = (*seen).icmp_code;
        t.icmp_types = (*seen).icmp_types;
        t.reply_only = (*seen).reply_only != 0;
    }
    Ok(())
}
