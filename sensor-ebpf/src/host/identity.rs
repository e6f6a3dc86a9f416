//! Identity checks of opened and executed files, each its own program attached to the same
//! hook just before the program that records the event (`sched_process_exec`, raw
//! `sys_exit`): the ancestor walk gets the verifier's whole budget, and the recording program
//! picks the result up from a per-CPU slot keyed by thread and object. A Block match kills
//! here too, so enforcement does not depend on the recording program running.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
};
use sensor_common::host::{
    ACCESS_EXEC, HostConfig, InodeMasks, MAX_IDENTITY_DEPTH, OpenArgs, ROLE_SELF,
};

use super::{
    OPEN_ARGS, SCRIPT_PENDING, config, inode_masks_for, kill_current,
    path::{Identity, KPath, current_file, current_task, field_ptr, field_u64, identity_walk},
    scoped_config,
};

/// One identity result, for the recording program of the same hook call.
#[repr(C)]
pub struct IdentitySlot {
    pid_tgid: u64,
    /// The `struct file` checked.
    object: u64,
    found: u32,
    complete: u32,
    masks: InodeMasks,
}

#[map]
static IDENTITY_SLOT: PerCpuArray<IdentitySlot> = PerCpuArray::with_max_entries(1, 0);

const SYS_OPEN: u32 = 2;
const SYS_CREAT: u32 = 85;
const SYS_OPENAT: u32 = 257;
const SYS_OPENAT2: u32 = 437;
/// `struct pt_regs` offset of `orig_ax` (x86_64).
const REG_ORIG_AX: u32 = 120;

/// The identity result for `object` left by this hook call's identity program, if any.
#[inline(always)]
pub fn take(object: *const u8) -> Option<Identity> {
    let slot = IDENTITY_SLOT.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot; read and cleared by the program of the same hook call.
    let slot = unsafe { &mut *slot };
    if slot.pid_tgid != bpf_get_current_pid_tgid() || slot.object != object as u64 {
        return None;
    }
    slot.pid_tgid = 0;
    // SAFETY: the slot lives in map memory for the program's run.
    let masks: &'static InodeMasks = unsafe { &*core::ptr::addr_of!(slot.masks) };
    Some(Identity { masks: (slot.found == 1).then_some(masks), complete: slot.complete == 1 })
}

/// Walks `file`'s identity and leaves the result in the slot; kills on a Block match of
/// `kinds` in `scope` (enforce mode). Returns nothing: the recording program reports.
#[inline(always)]
fn check(config: &HostConfig, scope: u64, file: *const u8, kinds: u32) {
    let o = &config.offsets;
    let Some(slot) = IDENTITY_SLOT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, this program's until it returns.
    let slot = unsafe { &mut *slot };
    let target = KPath::at(o, file.wrapping_add(o.file_path as usize));
    let identity = identity_walk::<MAX_IDENTITY_DEPTH>(o, target, ROLE_SELF);
    slot.pid_tgid = bpf_get_current_pid_tgid();
    slot.object = file as u64;
    slot.complete = u32::from(identity.complete);
    slot.found = 0;
    let mut block = 0;
    if let Some(masks) = identity.masks {
        slot.found = 1;
        slot.masks = *masks;
        block = inode_masks_for(masks, kinds).1;
    } else if !identity.complete {
        block = config.walk_block;
    }
    if config.enforce == 1 && block & scope != 0 {
        kill_current();
    }
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn exec_identity(_ctx: RawTracePointContext) -> i32 {
    let Some((config, scope)) = scoped_config() else {
        return 0;
    };
    let o = &config.offsets;
    let mm = field_ptr(current_task(), o.task_mm);
    let exe_file = field_ptr(mm, o.mm_exe_file);
    if !exe_file.is_null() {
        check(config, scope, exe_file, 1 << ACCESS_EXEC);
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn open_identity(ctx: RawTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg::<u64>(0) as *const u8;
    let id = field_u64(regs, REG_ORIG_AX).unwrap_or(0) as u32;
    if !matches!(id, SYS_OPENAT | SYS_OPEN | SYS_CREAT | SYS_OPENAT2) {
        return 0;
    }
    let fd = ctx.arg::<u64>(1) as i64;
    if fd < 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: the value is copied out at once (the recording program removes it).
    let Some(open): Option<OpenArgs> = (unsafe { OPEN_ARGS.get(&tid) }).copied() else {
        return 0;
    };
    let Some(config) = config() else {
        return 0;
    };
    if config.offsets_valid != 1 {
        return 0;
    }
    let file = current_file(&config.offsets, fd as u32);
    if file.is_null() {
        return 0;
    }
    // SAFETY: the value is read at once.
    let script = unsafe { SCRIPT_PENDING.get(&((pid_tgid >> 32) as u32)) }.is_some();
    let kinds = open.access | if script { 1 << ACCESS_EXEC } else { 0 };
    check(config, open.scope, file, kinds);
    0
}
