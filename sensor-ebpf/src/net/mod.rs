//! tc programs on pod interfaces: per-interface counters, flow tracking, policy verdicts.
//!
//! Per packet: parse, one conntrack lookup (two for replies), and the policy lookups only for
//! a new flow or after a policy change. Observe-only results return `TC_ACT_UNSPEC` so later
//! programs still run; only an enforce-mode deny returns `TC_ACT_SHOT`.

mod parse;
mod policy;

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    helpers::bpf_ktime_get_boot_ns,
    macros::{classifier, map},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use sensor_common::{
    host::EventKind,
    net::{
        CONNTRACK_MAX_ENTRIES, CtEntry, CtKey, Direction, FlowEvent, IFACE_STATS_MAX_ENTRIES,
        IfaceCounters, IfaceKey, NET_COUNTER_SLOTS, NET_EVENTS_BYTES, NetConfig, NetCounter,
        POLICY_EGRESS, POLICY_INGRESS, VERDICT_DROPPED,
    },
};

use self::{parse::Tuple, policy::Decision};

/// `TC_ACT_UNSPEC`: no verdict, continue with the next program or the stack.
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
/// `BPF_NOEXIST`: insert only if the key is absent (another CPU may race us to it).
const BPF_NOEXIST: u64 = 1;

#[map]
static IFACE_STATS: PerCpuHashMap<IfaceKey, IfaceCounters> =
    PerCpuHashMap::with_max_entries(IFACE_STATS_MAX_ENTRIES, 0);

#[map]
static NET_CONFIG: Array<NetConfig> = Array::with_max_entries(1, 0);

#[map]
static CONNTRACK: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(CONNTRACK_MAX_ENTRIES, 0);

#[map]
static NET_EVENTS: RingBuf = RingBuf::with_byte_size(NET_EVENTS_BYTES, 0);

#[map]
static NET_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NET_COUNTER_SLOTS, 0);

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::Ingress)
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::Egress)
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context of a classifier is the kernel's `__sk_buff`, valid for the call.
    unsafe { (*skb).ifindex }
}

#[inline(always)]
fn handle(ctx: &TcContext, hook: Direction) -> i32 {
    let ifindex = ifindex(ctx);
    let bytes = u64::from(ctx.len());
    count_interface(ifindex, hook, bytes);
    let tuple = match parse::parse(ctx) {
        Ok(tuple) => tuple,
        Err(reason) => {
            count(reason);
            return TC_ACT_UNSPEC;
        }
    };
    let config = NET_CONFIG.get(0).copied().unwrap_or(NetConfig::default());
    // The host-side hook's ingress is the pod's egress and vice versa.
    let direction = match hook {
        Direction::Ingress => POLICY_EGRESS,
        Direction::Egress => POLICY_INGRESS,
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let key = ct_key(ifindex, &tuple, false);

    if let Some(entry) = CONNTRACK.get_ptr_mut(&key) {
        // SAFETY: a live map value. Updates are plain read-modify-writes: two CPUs updating
        // one flow at the same instant can lose a count (BPF has no 64-bit fetch-add here).
        unsafe {
            add(&raw mut (*entry).packets_fwd, 1);
            add(&raw mut (*entry).bytes_fwd, bytes);
            (*entry).last_ns = now;
            (*entry).tcp_flags |= tuple.tcp_flags;
            if (*entry).revision == config.revision {
                return TC_ACT_UNSPEC;
            }
        }
        // The policy changed since this flow was allowed: decide again.
        let decision = policy::decide(&config, ifindex, direction, &tuple);
        if decision.verdict == VERDICT_DROPPED {
            let _ = CONNTRACK.remove(&key);
            emit(ifindex, direction, &tuple, &decision, now);
            return TC_ACT_SHOT;
        }
        // SAFETY: as above.
        unsafe {
            (*entry).revision = config.revision;
            (*entry).verdict = decision.verdict;
        }
        return TC_ACT_UNSPEC;
    }

    if let Some(entry) = CONNTRACK.get_ptr_mut(&ct_key(ifindex, &tuple, true)) {
        // A reply of a flow that was allowed (or audited) when it started.
        // SAFETY: as above.
        unsafe {
            add(&raw mut (*entry).packets_rev, 1);
            add(&raw mut (*entry).bytes_rev, bytes);
            (*entry).last_ns = now;
            (*entry).tcp_flags |= tuple.tcp_flags;
        }
        return TC_ACT_UNSPEC;
    }

    let decision = policy::decide(&config, ifindex, direction, &tuple);
    emit(ifindex, direction, &tuple, &decision, now);
    if decision.verdict == VERDICT_DROPPED {
        // No conntrack entry for a dropped flow: every retry is decided (and reported) again.
        return TC_ACT_SHOT;
    }
    let entry = CtEntry {
        first_ns: now,
        last_ns: now,
        packets_fwd: 1,
        bytes_fwd: bytes,
        packets_rev: 0,
        bytes_rev: 0,
        revision: config.revision,
        verdict: decision.verdict,
        direction,
        tcp_flags: tuple.tcp_flags,
        _pad: 0,
    };
    if CONNTRACK.insert(&key, &entry, BPF_NOEXIST).is_err() {
        count(NetCounter::CtInsertFailed);
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn ct_key(ifindex: u32, t: &Tuple, reversed: bool) -> CtKey {
    let (saddr, daddr, sport, dport) = if reversed {
        (t.daddr, t.saddr, t.dport, t.sport)
    } else {
        (t.saddr, t.daddr, t.sport, t.dport)
    };
    CtKey { ifindex, protocol: t.protocol, family: t.family, _pad: 0, sport, dport, saddr, daddr }
}

#[inline(always)]
fn emit(ifindex: u32, direction: u8, t: &Tuple, d: &Decision, now: u64) {
    let Some(mut slot) = NET_EVENTS.reserve::<FlowEvent>(0) else {
        count(NetCounter::RingbufFull);
        return;
    };
    let e = slot.as_mut_ptr();
    // SAFETY: `e` points at reserved ring buffer memory of `size_of::<FlowEvent>()` bytes;
    // every field is written before submit (built in place: the stack is too small for a copy).
    unsafe {
        (*e).kind = EventKind::Flow as u32;
        (*e).ifindex = ifindex;
        (*e).boot_ns = now;
        (*e).endpoint_id = d.endpoint_id;
        (*e).local_identity = d.local_identity;
        (*e).remote_identity = d.remote_identity;
        (*e).verdict = d.verdict;
        (*e).drop_reason = d.drop_reason;
        (*e).match_type = d.match_type;
        (*e).direction = direction;
        (*e).protocol = t.protocol;
        (*e).family = t.family;
        (*e).tcp_flags = t.tcp_flags;
        (*e).icmp_type = t.icmp_type;
        (*e).sport = t.sport;
        (*e).dport = t.dport;
        (*e).icmp_code = t.icmp_code;
        (*e)._pad = [0; 3];
        (*e).saddr = t.saddr;
        (*e).daddr = t.daddr;
        (*e)._tail = 0;
    }
    slot.submit(0);
}

/// Adds to a counter in a shared (not per-CPU) map value.
///
/// # Safety
/// `field` must point into a live map value.
#[inline(always)]
unsafe fn add(field: *mut u64, value: u64) {
    // SAFETY: map values are 8-byte aligned and live for the program run.
    unsafe { *field = (*field).wrapping_add(value) };
}

#[inline(always)]
fn count(counter: NetCounter) {
    if let Some(slot) = NET_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn count_interface(ifindex: u32, direction: Direction, bytes: u64) {
    let key = IfaceKey { ifindex, direction: direction as u32 };
    if let Some(counters) = IFACE_STATS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value, only this CPU writes it while we run.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
        return;
    }
    let first = IfaceCounters { packets: 1, bytes };
    // A full map loses the count; userspace sizes it for the node.
    let _ = IFACE_STATS.insert(&key, &first, BPF_NOEXIST);
}
