//! tc programs on pod interfaces: per-interface counters, flow tracking, policy verdicts.
//!
//! Per packet: parse, one conntrack lookup (the key is direction-normalised, so a reply finds
//! its connection with the same lookup), two per-CPU counter updates (the verdict counters an
//! inlined array access), the coarse clock, and the policy lookups only for a new flow or after
//! a policy change. The precise clock is read only for a flow record. Observe-only results return `TC_ACT_UNSPEC` so later
//! programs still run; only an enforce-mode deny returns `TC_ACT_SHOT`.
//!
//! Fail closed: a packet whose L4 identity cannot be known (a header cut short or malformed,
//! an IPv6 chain past the walk limit, a fragment without its first fragment, overlapping or
//! tiny fragments, a protocol that is not IP or ARP) is counted under its reason; to or from
//! an endpoint a policy selects in that direction it is dropped in enforce mode (AUDIT in
//! detect mode) and recorded with a Cilium drop reason.

mod frag;
mod parse;
mod policy;

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    helpers::{bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns},
    macros::{classifier, map},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use sensor_common::{
    host::EventKind,
    net::{
        CONNTRACK_MAX_ENTRIES, CT_FIN_FORWARD, CT_FIN_REPLY, CtEntry, CtKey, Direction,
        FLOW_REPORT_INTERVAL_NS, FlowEvent, IFACE_STATS_MAX_ENTRIES, IfaceCounters, IfaceKey,
        NET_COUNTER_SLOTS, NET_EVENTS_BYTES, NetConfig, NetCounter, POLICY_EGRESS, POLICY_INGRESS,
        VERDICT_DROPPED, VERDICT_FORWARDED, VERDICT_SLOTS, verdict_slot,
    },
};

use self::{
    parse::{Parsed, Tuple},
    policy::Decision,
};

/// `TC_ACT_UNSPEC`: no verdict, continue with the next program or the stack.
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
/// `BPF_NOEXIST`: insert only if the key is absent (another CPU may race us to it).
const BPF_NOEXIST: u64 = 1;
const TCP_FIN: u8 = 0x01;

#[map]
static IFACE_STATS: PerCpuHashMap<IfaceKey, IfaceCounters> =
    PerCpuHashMap::with_max_entries(IFACE_STATS_MAX_ENTRIES, 0);

#[map]
pub(crate) static NET_CONFIG: Array<NetConfig> = Array::with_max_entries(1, 0);

#[map]
static CONNTRACK: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(CONNTRACK_MAX_ENTRIES, 0);

#[map]
static NET_EVENTS: RingBuf = RingBuf::with_byte_size(NET_EVENTS_BYTES, 0);

#[map]
static VERDICT_COUNTERS: PerCpuArray<IfaceCounters> =
    PerCpuArray::with_max_entries(VERDICT_SLOTS, 0);

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
    // The host-side hook's ingress is the pod's egress and vice versa.
    let direction = match hook {
        Direction::Ingress => POLICY_EGRESS,
        Direction::Egress => POLICY_INGRESS,
    };
    let mut tuple = Tuple::new();
    let classified = match parse::parse(ctx, &mut tuple) {
        Ok(Parsed::Packet) => Ok(()),
        // Only fragments pay for fragment tracking.
        Ok(Parsed::Fragment(f)) => {
            // SAFETY: a helper without arguments.
            let now = unsafe { bpf_ktime_get_boot_ns() };
            if f.offset == 0 {
                frag::first(ifindex, &tuple, &f, now)
            } else {
                frag::later(ifindex, &mut tuple, &f, now)
            }
        }
        Ok(Parsed::Arp) => {
            // ARP keeps the link working: counted, never a flow, never dropped.
            count(NetCounter::NonIp);
            count_verdict(0, direction, bytes);
            return TC_ACT_UNSPEC;
        }
        Err(reason) => Err(reason),
    };
    let (action, drop_reason) = match classified {
        Ok(()) if is_neighbor_control(&tuple) => {
            // Neighbour discovery and multicast listener messages keep the link working; like
            // Cilium, policy does not apply to them and they are not flows.
            (TC_ACT_UNSPEC, 0)
        }
        Ok(()) => track(ifindex, direction, &tuple, bytes),
        Err(reason) => {
            count(reason);
            unclassified(ifindex, direction, &tuple, reason)
        }
    };
    count_verdict(drop_reason, direction, bytes);
    action
}

/// A packet the parser could not classify: an endpoint a policy selects in this direction
/// fails closed; the decision is recorded (with what was parsed of the packet) unless it is
/// a plain forward.
#[inline(always)]
fn unclassified(ifindex: u32, direction: u8, tuple: &Tuple, reason: NetCounter) -> (i32, u8) {
    let decision = policy::fail_closed(ifindex, direction, reason.drop_reason());
    if decision.verdict == VERDICT_FORWARDED {
        return (TC_ACT_UNSPEC, 0);
    }
    emit(ifindex, direction, tuple, &decision, false, Record::Drop);
    if decision.verdict == VERDICT_DROPPED {
        return (TC_ACT_SHOT, decision.drop_reason);
    }
    (TC_ACT_UNSPEC, 0)
}

/// ICMPv6 neighbour discovery (router/neighbour solicitation and advertisement, redirect) and
/// multicast listener discovery.
#[inline(always)]
const fn is_neighbor_control(t: &Tuple) -> bool {
    t.protocol == sensor_common::net::PROTO_ICMPV6 && matches!(t.icmp_type, 130..=137 | 143)
}

/// What a flow record is, for Hubble's event type.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Record {
    /// A policy decision for a connection: new, or decided again after a policy change.
    Verdict,
    /// A dropped (or would-be dropped) packet that is not a new decision.
    Drop,
    /// A report of an established connection (new TCP flag, or the report interval).
    Trace,
}

/// CLOCK_MONOTONIC_COARSE: conntrack's clock (idle timeouts and the report interval need
/// milliseconds, not a TSC read per packet).
#[inline(always)]
fn coarse_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Conntrack and policy for one parsed packet: returns the tc action and, for a drop, its
/// reason.
#[inline(always)]
fn track(ifindex: u32, direction: u8, tuple: &Tuple, bytes: u64) -> (i32, u8) {
    let config = NET_CONFIG.get(0).copied().unwrap_or(NetConfig::default());
    let (key, swapped) = ct_key(ifindex, tuple);
    let fin = tuple.tcp_flags & TCP_FIN != 0;

    if let Some(entry) = CONNTRACK.get_ptr_mut(&key) {
        let now = coarse_ns();
        // SAFETY: a live map value. Updates are plain read-modify-writes: two CPUs updating
        // one flow at the same instant can lose a count (BPF has no 64-bit fetch-add here).
        unsafe {
            // The packet's key needed the same swap as the first packet's: the connection's
            // own direction; else a packet against it, a reply while the connection is allowed
            // (or audited).
            let is_reply = swapped != ((*entry).key_reversed != 0);
            if is_reply {
                add(&raw mut (*entry).packets_rev, 1);
                add(&raw mut (*entry).bytes_rev, bytes);
                if fin {
                    (*entry).tcp_fin |= CT_FIN_REPLY;
                }
            } else {
                add(&raw mut (*entry).packets_fwd, 1);
                add(&raw mut (*entry).bytes_fwd, bytes);
                if fin {
                    (*entry).tcp_fin |= CT_FIN_FORWARD;
                }
            }
            (*entry).last_ns = now;
            return established(&config, entry, ifindex, tuple, now, is_reply);
        }
    }

    let decision = policy::decide(ifindex, direction, tuple);
    emit(ifindex, direction, tuple, &decision, false, Record::Verdict);
    if decision.verdict == VERDICT_DROPPED {
        // No conntrack entry for a dropped flow: every retry is decided (and reported) again.
        return (TC_ACT_SHOT, decision.drop_reason);
    }
    if tuple.reply_only {
        // An echo reply without a request: decided per packet, never tracked.
        return (TC_ACT_UNSPEC, 0);
    }
    let now = coarse_ns();
    let entry = CtEntry {
        first_ns: now,
        last_ns: now,
        last_report_ns: now,
        packets_fwd: 1,
        bytes_fwd: bytes,
        packets_rev: 0,
        bytes_rev: 0,
        revision: config.revision,
        policy: decision.policy,
        endpoint_id: decision.endpoint_id,
        local_identity: decision.local_identity,
        remote_identity: decision.remote_identity,
        verdict: decision.verdict,
        direction,
        tcp_flags: tuple.tcp_flags,
        match_type: decision.match_type,
        drop_reason: decision.drop_reason,
        tcp_fin: if fin { CT_FIN_FORWARD } else { 0 },
        key_reversed: u8::from(swapped),
        _pad: [0; 5],
    };
    if CONNTRACK.insert(&key, &entry, BPF_NOEXIST).is_err() {
        count(NetCounter::CtInsertFailed);
    }
    (TC_ACT_UNSPEC, 0)
}

/// A packet of a tracked connection, in either direction. After a policy change the
/// connection is decided again, in its own direction and orientation, whichever side sends
/// first; a connection policy now denies keeps its entry as DROPPED, so neither its packets
/// nor its "replies" pass until a later policy allows it again.
///
/// # Safety
/// `entry` must point at a live conntrack value.
#[inline(always)]
unsafe fn established(
    config: &NetConfig,
    entry: *mut CtEntry,
    ifindex: u32,
    tuple: &Tuple,
    now: u64,
    is_reply: bool,
) -> (i32, u8) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let direction = (*entry).direction;
        if (*entry).revision != config.revision {
            // The connection's own orientation: a reply is decided as its first packet was.
            let original = if is_reply { tuple.reversed() } else { *tuple };
            let decision = policy::decide(ifindex, direction, &original);
            let changed = (*entry).verdict != decision.verdict;
            remember(entry, &decision, config.revision);
            if changed {
                (*entry).last_report_ns = now;
                (*entry).tcp_flags |= tuple.tcp_flags;
                emit(ifindex, direction, tuple, &decision, is_reply, Record::Verdict);
                return action(&decision);
            }
        }
        if (*entry).verdict == VERDICT_DROPPED {
            emit(ifindex, direction, tuple, &stored(entry), is_reply, Record::Drop);
            return (TC_ACT_SHOT, (*entry).drop_reason);
        }
        maybe_report(entry, ifindex, tuple, now, is_reply);
    }
    (TC_ACT_UNSPEC, 0)
}

#[inline(always)]
const fn action(d: &Decision) -> (i32, u8) {
    if d.verdict == VERDICT_DROPPED { (TC_ACT_SHOT, d.drop_reason) } else { (TC_ACT_UNSPEC, 0) }
}

/// Stores a decision in a conntrack entry.
///
/// # Safety
/// `entry` must point at a live conntrack value.
#[inline(always)]
unsafe fn remember(entry: *mut CtEntry, d: &Decision, revision: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*entry).revision = revision;
        (*entry).verdict = d.verdict;
        (*entry).drop_reason = d.drop_reason;
        (*entry).match_type = d.match_type;
        (*entry).policy = d.policy;
        (*entry).endpoint_id = d.endpoint_id;
        (*entry).local_identity = d.local_identity;
        (*entry).remote_identity = d.remote_identity;
    }
}

/// The decision a conntrack entry holds.
///
/// # Safety
/// `entry` must point at a live conntrack value.
#[inline(always)]
unsafe fn stored(entry: *const CtEntry) -> Decision {
    // SAFETY: guaranteed by the caller.
    unsafe {
        Decision {
            verdict: (*entry).verdict,
            drop_reason: (*entry).drop_reason,
            match_type: (*entry).match_type,
            selected: false,
            endpoint_id: (*entry).endpoint_id,
            local_identity: (*entry).local_identity,
            remote_identity: (*entry).remote_identity,
            policy: (*entry).policy,
        }
    }
}

/// Emits a record for an established flow when a TCP flag shows up for the first time (SYN-ACK,
/// FIN, RST) or when the last record is older than the report interval; never per packet.
///
/// # Safety
/// `entry` must point at a live conntrack value.
#[inline(always)]
unsafe fn maybe_report(entry: *mut CtEntry, ifindex: u32, tuple: &Tuple, now: u64, is_reply: bool) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let new_flags = tuple.tcp_flags & !(*entry).tcp_flags;
        (*entry).tcp_flags |= tuple.tcp_flags;
        if new_flags == 0 && now.wrapping_sub((*entry).last_report_ns) < FLOW_REPORT_INTERVAL_NS {
            return;
        }
        (*entry).last_report_ns = now;
        let decision = stored(entry);
        emit(ifindex, (*entry).direction, tuple, &decision, is_reply, Record::Trace);
    }
}

/// The conntrack key of a packet in canonical orientation, and whether the packet's own key
/// was reversed to get it: a connection and its replies share one key and one lookup.
/// Equivalent to looking the packet's key up and then its reverse, as one entry never exists
/// under both (see `CtEntry`).
#[inline(always)]
fn ct_key(ifindex: u32, t: &Tuple) -> (CtKey, bool) {
    let mut key = CtKey {
        ifindex,
        protocol: t.protocol,
        family: t.family,
        icmp_types: t.icmp_types,
        sport: t.sport,
        dport: t.dport,
        saddr: t.saddr,
        daddr: t.daddr,
    };
    let swap = source_orders_after(&key);
    if swap {
        key.saddr = t.daddr;
        key.daddr = t.saddr;
        key.sport = t.dport;
        key.dport = t.sport;
        key.icmp_types = [t.icmp_types[1], t.icmp_types[0]];
    }
    (key, swap)
}

/// An address of a conntrack key as four native-endian words (for ordering only).
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    // SAFETY: `CtKey` is `repr(C)` with 4-byte alignment and its addresses at offsets 12 and
    // 28, so both are 4-byte aligned (asserted in sensor-common).
    unsafe { addr.as_ptr().cast::<[u32; 4]>().read() }
}

/// Whether the key's source side (address, port, conntrack ICMP type) orders after its
/// destination side; any total order does, as long as it is the same for both directions. A
/// tie (the same side twice) keeps the packet's orientation, so such a flow is never a reply
/// of itself.
#[inline(always)]
fn source_orders_after(k: &CtKey) -> bool {
    let (s, d) = (words(&k.saddr), words(&k.daddr));
    let mut i = 0;
    while i < 4 {
        if s[i] != d[i] {
            return s[i] > d[i];
        }
        i += 1;
    }
    if k.sport != k.dport {
        return k.sport > k.dport;
    }
    k.icmp_types[0] > k.icmp_types[1]
}

#[inline(always)]
fn emit(ifindex: u32, direction: u8, t: &Tuple, d: &Decision, is_reply: bool, record: Record) {
    let Some(mut slot) = NET_EVENTS.reserve::<FlowEvent>(0) else {
        count(NetCounter::RingbufFull);
        return;
    };
    // SAFETY: a helper without arguments. Records carry CLOCK_BOOTTIME, like host events.
    let now = unsafe { bpf_ktime_get_boot_ns() };
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
        (*e).is_reply = u8::from(is_reply);
        (*e).policy_verdict = u8::from(record == Record::Verdict && d.selected);
        (*e)._pad = 0;
        (*e).saddr = t.saddr;
        (*e).daddr = t.daddr;
        (*e).policy = d.policy;
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

/// Every packet by final verdict: forwarded (reason 0) or dropped (reason), per direction.
#[inline(always)]
fn count_verdict(reason: u8, direction: u8, bytes: u64) {
    if let Some(counters) = VERDICT_COUNTERS.get_ptr_mut(verdict_slot(reason, direction)) {
        // SAFETY: a per-CPU value, only this CPU writes it while we run.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
    }
}
