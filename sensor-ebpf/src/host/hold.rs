//! Hold and decide: a directory-changing call whose path the kernel cannot decide by identity
//! (several components, or absolute: the parent directory is only known after a path walk the
//! kernel does not expose here, with no BPF-LSM, kprobes or fentry) is sent to the agent at
//! entry ([`send`], from the `syscalls/sys_enter_*` programs in unlink.rs). When the call
//! returns successfully ([`exit`], from the raw `sys_exit` program) the task is stopped with
//! `SIGSTOP` before it reaches user space again (both modes), and the agent, having resolved
//! the path in the task's own view, kills it or continues it.
//!
//! Fail closed: a record that cannot be sent (hold ring full) kills the task at the call's
//! successful return instead of stopping it (counted, [`LossCounter::HoldLost`]).

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, generated::bpf_send_signal,
};
use sensor_common::host::{
    Action, EventKind, HOLD_PENDING_LOST, HOLD_PENDING_SENT, HoldEvent, HoldExit, LossCounter,
};

use super::{HOLD_EVENTS, HOLD_PENDING, SIGSTOP, config, count_loss, fill_header, kill_current};

/// x86_64 numbers of the calls unlink.rs may hold.
const SYS_TRUNCATE: u32 = 76;
const SYS_RENAME: u32 = 82;
const SYS_RMDIR: u32 = 84;
const SYS_LINK: u32 = 86;
const SYS_UNLINK: u32 = 87;
const SYS_SYMLINK: u32 = 88;
const SYS_UNLINKAT: u32 = 263;
const SYS_RENAMEAT: u32 = 264;
const SYS_LINKAT: u32 = 265;
const SYS_SYMLINKAT: u32 = 266;
const SYS_RENAMEAT2: u32 = 316;

#[inline(always)]
pub fn is_held_syscall(id: u32) -> bool {
    matches!(
        id,
        SYS_TRUNCATE
            | SYS_RENAME
            | SYS_RMDIR
            | SYS_LINK
            | SYS_UNLINK
            | SYS_SYMLINK
            | SYS_UNLINKAT
            | SYS_RENAMEAT
            | SYS_LINKAT
            | SYS_SYMLINKAT
            | SYS_RENAMEAT2
    )
}

/// Sends `event` (paths, kinds and bases filled in; `flags` added to its header) as the hold record of the current call and
/// remembers the call for its exit.
#[inline(always)]
pub fn send(event: &mut HoldEvent, flags: u32) {
    let enforce = config().is_some_and(|c| c.enforce == 1);
    let action = if enforce { Action::Killed } else { Action::WouldBlock };
    fill_header(&mut event.file.header, EventKind::Hold as u32, action, 0);
    event.file.header.flags |= flags;
    let tid = bpf_get_current_pid_tgid() as u32;
    let flags = if HOLD_EVENTS.output(event, 0).is_ok() {
        HOLD_PENDING_SENT
    } else {
        count_loss(LossCounter::HoldLost);
        HOLD_PENDING_LOST
    };
    // An LRU map: a full one forgets the oldest call (whose exit was missed), not this one.
    let _ = HOLD_PENDING.insert(&tid, &flags, 0);
}

/// At the return of a call [`is_held_syscall`] names: stops the task (success) and
/// tells the agent; kills it when the agent cannot be told.
#[inline(always)]
pub fn exit(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(flags) = (unsafe { HOLD_PENDING.get(&tid) }).copied() else {
        return;
    };
    let _ = HOLD_PENDING.remove(&tid);
    let Some(config) = config() else {
        return;
    };
    // Detect mode holds too: a short-lived task (`rm`, `mv`) is gone before the agent could
    // resolve its path in the task's own view, and the decision must be the same in both
    // modes; the agent always continues it there.
    let stop = ret >= 0 && config.holds == 1;
    if flags & HOLD_PENDING_LOST != 0 {
        if ret >= 0 && config.enforce == 1 {
            kill_current();
        }
        return;
    }
    let Some(mut slot) = HOLD_EVENTS.reserve::<HoldExit>(0) else {
        count_loss(LossCounter::HoldLost);
        if stop {
            kill_current();
        }
        return;
    };
    let record = HoldExit {
        kind: EventKind::HoldExit as u32,
        pid: (pid_tgid >> 32) as u32,
        tid,
        stopped: u32::from(stop),
        ret,
        // SAFETY: the helper has no preconditions.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
    };
    if stop {
        // SAFETY: signals the current task's thread group only; delivered (the task stops)
        // on its way back to user space, after this call has completed.
        unsafe { bpf_send_signal(SIGSTOP) };
    }
    slot.write(record);
    slot.submit(0);
}
