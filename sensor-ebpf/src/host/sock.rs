//! `cgroup/bind4|6` and `cgroup/connect4|6` on the cgroup v2 root: binds and connects from
//! watched cgroups are reported, and a bind a Block policy forbids fails with EPERM.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use sensor_common::host::{Action, BindKey, EventKind, SOCK_OP_BIND, SOCK_OP_CONNECT, SockEvent};

use super::{BIND_RULES, config, current_scope, decide, emit, fill_header};

/// Return values of sock_addr programs.
const ALLOW: i32 = 1;
const DENY: i32 = 0;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    handle(&ctx, SOCK_OP_BIND, false)
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    handle(&ctx, SOCK_OP_BIND, true)
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    handle(&ctx, SOCK_OP_CONNECT, false)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    handle(&ctx, SOCK_OP_CONNECT, true)
}

/// `v6`: the hook is an IPv6 one (v4 hooks may not read the IPv6 fields).
#[inline(always)]
fn handle(ctx: &SockAddrContext, op: u32, v6: bool) -> i32 {
    let Some(config) = config() else {
        return ALLOW;
    };
    let Some(scope) = current_scope(config) else {
        return ALLOW;
    };
    // SAFETY: the context pointer is the kernel's bpf_sock_addr for this call.
    let sa = unsafe { &*ctx.sock_addr };
    let family = sa.user_family;
    let protocol = sa.protocol;
    let port = u16::from_be(sa.user_port as u16);
    let mut event = SockEvent {
        header: Default::default(),
        op,
        protocol,
        family,
        port: u32::from(port),
        addr: [0; 16],
    };
    if !v6 {
        event.addr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    } else {
        let ip6 = sa.user_ip6;
        let mut i = 0;
        while i < 4 {
            event.addr[i * 4..i * 4 + 4].copy_from_slice(&ip6[i].to_ne_bytes());
            i += 1;
        }
    }
    let mut verdict = (Action::Observed, 0);
    if op == SOCK_OP_BIND && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP) {
        let key = BindKey { protocol: protocol as u16, port };
        // SAFETY: the value is copied out at once.
        if let Some(masks) = unsafe { BIND_RULES.get(&key) }.copied()
            && let Some(decided) = decide(config, scope, masks.audit, masks.block)
        {
            verdict = decided;
        }
    }
    fill_header(&mut event.header, EventKind::Sock as u32, verdict.0, verdict.1);
    emit(&event);
    if verdict.0 == Action::Blocked { DENY } else { ALLOW }
}
