//! tc programs on pod interfaces: per-interface, per-direction packet and byte counters.
//!
//! Observe-only: they return `TC_ACT_UNSPEC` so programs attached after them still run.

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    macros::{classifier, map},
    maps::PerCpuHashMap,
    programs::TcContext,
};
use sensor_common::net::{Direction, IFACE_STATS_MAX_ENTRIES, IfaceCounters, IfaceKey};

/// `TC_ACT_UNSPEC`: no verdict, continue with the next program or the stack.
const TC_ACT_UNSPEC: i32 = -1;
/// `BPF_NOEXIST`: insert only if the key is absent (another CPU may race us to it).
const BPF_NOEXIST: u64 = 1;

#[map]
static IFACE_STATS: PerCpuHashMap<IfaceKey, IfaceCounters> =
    PerCpuHashMap::with_max_entries(IFACE_STATS_MAX_ENTRIES, 0);

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    count_packet(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    count_packet(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context of a classifier is the kernel's `__sk_buff`, valid for the call.
    unsafe { (*skb).ifindex }
}

#[inline(always)]
fn count_packet(ctx: &TcContext, direction: Direction) {
    let key = IfaceKey { ifindex: ifindex(ctx), direction: direction as u32 };
    let bytes = u64::from(ctx.len());
    if let Some(counters) = IFACE_STATS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value, only this CPU writes it while we run.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
        return;
    }
    let first = IfaceCounters { packets: 1, bytes };
    // A full map loses the count; userspace sizes it for the node and reports the entry count.
    let _ = IFACE_STATS.insert(&key, &first, BPF_NOEXIST);
}
