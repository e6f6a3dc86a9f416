//! Raw `sys_enter` / `sys_exit`: denied syscalls, and opens file rules name. x86_64 syscall
//! numbers and `pt_regs` layout. (Unlink and rename are not hooked yet: the path walk for
//! them exceeds the verifier's budget inside this program.)
//!
//! Opens are decided at exit, from the opened file itself, so the path is canonical (relative
//! paths, `..` and symlinks resolved by the kernel); a Blocked open kills the process before
//! it returns to user space, so it never reads or writes through the descriptor.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use sensor_common::host::{
    ACCESS_CREATE, ACCESS_EXEC, ACCESS_KINDS, ACCESS_READ, ACCESS_WRITE, Action, EventKind,
    FILE_OP_EXEC, FILE_OP_OPEN, FLAG_PATH_TRUNCATED, FLAG_SCRIPT, FileEvent, FileMasks, HoldEvent,
    LossCounter, OpenArgs, RULE_FAILED_OPENS, RULE_SYSCALLS_MAX_ENTRIES, RULES_BIT_INDEX,
    SYSCALL_STR_LEN, SavedSyscall, SyscallArgsEvent, SyscallEvent, SyscallInterest,
};

use super::{
    EXEC_RULES, FILE_RULES, OPEN_ARGS, SCRIPT_PENDING, SYSCALL_RULES, add_identity, config,
    count_loss, current_scope, decide, emit, fill_header, kill_current,
    path::{KPath, current_file, field_u64, lookup_key, task_root_and_pwd, write_path},
};

const SYS_OPEN: u32 = 2;
const SYS_CREAT: u32 = 85;
const SYS_OPENAT: u32 = 257;
const SYS_OPENAT2: u32 = 437;

/// `struct pt_regs` offsets (x86_64): the syscall's argument registers and number.
const REG_DI: u32 = 112;
const REG_SI: u32 = 104;
const REG_DX: u32 = 96;
const REG_R10: u32 = 56;
const REG_R8: u32 = 72;
const REG_R9: u32 = 64;
const REG_ORIG_AX: u32 = 120;

const O_ACCMODE: u64 = 3;
const O_WRONLY: u64 = 1;
const O_RDWR: u64 = 2;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const O_PATH: u64 = 0o10000000;

/// A file record under construction; unlink.rs sends the whole as a [`HoldEvent`] when the
/// call is held.
#[map]
pub static FILE_SCRATCH: PerCpuArray<HoldEvent> = PerCpuArray::with_max_entries(1, 0);

/// Syscalls the rules name (filled by the agent from the loaded rules).
#[map]
static RULE_SYSCALLS: HashMap<u32, SyscallInterest> =
    HashMap::with_max_entries(RULE_SYSCALLS_MAX_ENTRIES, 0);

/// A rule-watched syscall's arguments from entry, per thread, until its exit.
#[map]
static SYSCALL_ARGS: HashMap<u32, SavedSyscall> = HashMap::with_max_entries(8192, 0);

#[map]
static SYSCALL_SCRATCH: PerCpuArray<SyscallArgsEvent> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn reg(regs: *const u8, offset: u32) -> u64 {
    field_u64(regs, offset).unwrap_or(0)
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let Some(config) = config() else {
        return 0;
    };
    let Some(scope) = current_scope(config) else {
        return 0;
    };
    let regs: *const u8 = ctx.arg::<u64>(0) as *const u8;
    let id = ctx.arg::<u64>(1) as u32;

    // SAFETY: the value is copied out at once.
    if let Some(masks) = unsafe { SYSCALL_RULES.get(&id) }.copied()
        && let Some((action, policy)) = decide(config, scope, masks.audit, masks.block)
    {
        let action = if action == Action::Blocked { Action::Killed } else { action };
        let mut event = SyscallEvent { header: Default::default(), nr: id, _pad: 0 };
        fill_header(&mut event.header, EventKind::Syscall as u32, action, policy);
        emit(&event);
        if action == Action::Killed {
            kill_current();
            return 0;
        }
    }

    let arg = |offset| reg(regs, offset);
    // SAFETY: the value is copied out at once.
    if id != RULE_FAILED_OPENS
        && let Some(interest) = unsafe { RULE_SYSCALLS.get(&id) }.copied()
        && interest.observe & scope != 0
    {
        let saved = SavedSyscall {
            nr: id,
            strings: interest.strings,
            args: [arg(REG_DI), arg(REG_SI), arg(REG_DX), arg(REG_R10), arg(REG_R8), arg(REG_R9)],
        };
        let tid = bpf_get_current_pid_tgid() as u32;
        if SYSCALL_ARGS.insert(&tid, &saved, 0).is_err() {
            count_loss(LossCounter::OpenArgsFull);
        }
        return 0;
    }
    match id {
        SYS_OPENAT => remember_open(scope, arg(REG_DX), arg(REG_SI), arg(REG_DI) as i32),
        SYS_OPEN => remember_open(scope, arg(REG_SI), arg(REG_DI), AT_FDCWD),
        SYS_CREAT => remember_open(scope, O_WRONLY | O_CREAT | O_TRUNC, arg(REG_DI), AT_FDCWD),
        SYS_OPENAT2 => {
            // struct open_how starts with the u64 flags (user memory).
            // SAFETY: checked read of user memory.
            let flags =
                unsafe { aya_ebpf::helpers::bpf_probe_read_user(arg(REG_DX) as *const u64) }
                    .unwrap_or(0);
            remember_open(scope, flags, arg(REG_SI), arg(REG_DI) as i32);
        }
        _ => {}
    }
    0
}

/// `openat`'s "relative to the working directory" descriptor.
const AT_FDCWD: i32 = -100;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg::<u64>(0) as *const u8;
    let id = reg(regs, REG_ORIG_AX) as u32;
    if super::hold::is_held_syscall(id) {
        super::hold::exit(ctx.arg::<u64>(1) as i64);
        return rule_syscall_exit(&ctx, id);
    }
    if !matches!(id, SYS_OPENAT | SYS_OPEN | SYS_CREAT | SYS_OPENAT2) {
        return rule_syscall_exit(&ctx, id);
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(open) = (unsafe { OPEN_ARGS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = OPEN_ARGS.remove(&tid);
    let fd = ctx.arg::<u64>(1) as i64;
    if fd < 0 {
        failed_open(&open, fd);
        return 0;
    }
    let Some(config) = config() else {
        return 0;
    };
    if config.offsets_valid != 1 {
        return 0;
    }
    let Some(event) = FILE_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, used by this program only until it returns.
    let event = unsafe { &mut (*event).file };
    let o = &config.offsets;
    let file = current_file(o, fd as u32);
    if file.is_null() {
        return 0;
    }
    let (root, _) = task_root_and_pwd(o);
    let target = KPath::at(o, file.wrapping_add(o.file_path as usize));
    let (len, cut) = write_path(o, target, root, &mut event.path);
    // A process started from a `#!` script: the script it opens is checked as an executable.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is copied out at once.
    let script = unsafe { SCRIPT_PENDING.get(&tgid) }.is_some();
    let mut acc = (0_u64, 0_u64, 0_u32);
    let mut observe = 0;
    if let Some(key) = lookup_key(event.path.as_ptr(), len) {
        if let Some(masks) = FILE_RULES.get(key) {
            let (audit, block) = masks_for(masks, open.access);
            acc.0 |= audit;
            acc.1 |= block;
            observe = masks.observe;
        }
        if script && let Some(masks) = EXEC_RULES.get(key) {
            acc.0 |= masks.audit;
            acc.1 |= masks.block;
            if (masks.audit | masks.block) & open.scope != 0 {
                acc.2 |= FLAG_SCRIPT;
            }
        }
    }
    // The object itself: a hard link, bind mount, chroot or /proc/<pid>/root path reaches
    // the same inode.
    // Checked by `open_identity` just before this program (its own verifier budget).
    let identity = super::identity::take(file);
    let kinds = open.access | if script { 1 << ACCESS_EXEC } else { 0 };
    if let Some(identity) = &identity {
        add_identity(config, open.scope, identity, kinds, &mut acc);
    }
    if script
        && let Some(identity) = &identity
        && let Some(masks) = identity.masks
        && (masks.audit[ACCESS_EXEC] | masks.block[ACCESS_EXEC]) & open.scope != 0
    {
        acc.2 |= FLAG_SCRIPT;
    }
    let (action, policy) = match decide(config, open.scope, acc.0, acc.1) {
        Some(decided) => decided,
        // No policy decides, but the rules engine watches this path in this cgroup.
        None if observe & open.scope != 0 => (Action::Observed, 0),
        // Falco's `fd.name` is the path as passed: a rule's prefix may name it (a path
        // through a symlinked directory) where the resolved path is elsewhere.
        None if passed_path_observed(&open, event) => (Action::Observed, 0),
        None => return 0,
    };
    fill_header(&mut event.header, EventKind::File as u32, action, policy);
    event.header.flags |= acc.2;
    if cut {
        event.header.flags |= FLAG_PATH_TRUNCATED;
    }
    if acc.2 & FLAG_SCRIPT != 0 {
        event.op = FILE_OP_EXEC;
        event.access = open.access | (1 << ACCESS_EXEC);
        let _ = SCRIPT_PENDING.remove(&tgid);
    } else {
        event.op = FILE_OP_OPEN;
        event.access = open.access;
    }
    event.path_len = len;
    event.open_flags = open.flags;
    event.fd = fd as i32;
    event.dirfd = open.dirfd;
    // The path as the process passed it (Falco's fd.nameraw), still in its memory at exit.
    // SAFETY: checked read of user memory into the event's own buffer.
    event.path2_len = match unsafe {
        aya_ebpf::helpers::bpf_probe_read_user_str_bytes(
            open.filename as *const u8,
            &mut event.path2[..sensor_common::host::MAX_PATH_LEN],
        )
    } {
        Ok(raw) => raw.len() as u32,
        Err(_) => 0,
    };
    emit(event);
    if action == Action::Blocked {
        kill_current();
    }
    0
}

/// For an open in a cgroup the rules watch whose resolved path is under none of their
/// prefixes: whether the absolute path the process passed is (read into `path2`, which the
/// event carries anyway). Lexical only: `..` in the passed path is not resolved here.
#[inline(always)]
fn passed_path_observed(open: &OpenArgs, event: &mut FileEvent) -> bool {
    const RULES: u64 = (1 << RULES_BIT_INDEX) | (1 << (RULES_BIT_INDEX + 32));
    if open.scope & RULES == 0 {
        return false;
    }
    // SAFETY: checked read of user memory into the event's own buffer.
    let len = match unsafe {
        aya_ebpf::helpers::bpf_probe_read_user_str_bytes(
            open.filename as *const u8,
            &mut event.path2[..sensor_common::host::MAX_PATH_LEN],
        )
    } {
        Ok(raw) if raw.first() == Some(&b'/') => raw.len() as u32,
        _ => return false,
    };
    let Some(key) = lookup_key(event.path2.as_ptr(), len) else {
        return false;
    };
    FILE_RULES.get(key).is_some_and(|masks| masks.observe & open.scope != 0)
}

/// A failed open, sent when the rules need failed opens from this scope: no file, so no
/// canonical path; the path as the process passed it, the flags, and the error as `fd`.
#[inline(always)]
fn failed_open(open: &OpenArgs, ret: i64) {
    // SAFETY: the value is copied out at once.
    let Some(interest) = (unsafe { RULE_SYSCALLS.get(&RULE_FAILED_OPENS) }).copied() else {
        return;
    };
    if interest.observe & open.scope == 0 {
        return;
    }
    let Some(event) = FILE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, used by this program only until it returns.
    let event = unsafe { &mut (*event).file };
    fill_header(&mut event.header, EventKind::File as u32, Action::Observed, 0);
    event.op = FILE_OP_OPEN;
    event.access = open.access;
    event.path_len = 0;
    event.open_flags = open.flags;
    event.fd = ret as i32;
    event.dirfd = open.dirfd;
    // SAFETY: checked read of user memory into the event's own buffer.
    event.path2_len = match unsafe {
        aya_ebpf::helpers::bpf_probe_read_user_str_bytes(
            open.filename as *const u8,
            &mut event.path2[..sensor_common::host::MAX_PATH_LEN],
        )
    } {
        Ok(raw) => raw.len() as u32,
        Err(_) => 0,
    };
    emit(event);
}

/// The exit of a syscall the rules named: its arguments (kept at entry), result and string
/// arguments go to user space.
#[inline(always)]
fn rule_syscall_exit(ctx: &RawTracePointContext, id: u32) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(saved) = (unsafe { SYSCALL_ARGS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = SYSCALL_ARGS.remove(&tid);
    if saved.nr != id {
        return 0;
    }
    let Some(event) = SYSCALL_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, used by this program only until it returns.
    let event = unsafe { &mut *event };
    fill_header(&mut event.header, EventKind::SyscallArgs as u32, Action::Observed, 0);
    event.nr = id;
    event.ret = ctx.arg::<u64>(1) as i64;
    event.args = saved.args;
    event.str_mask = 0;
    event.str_len = [0; 2];
    let mut slot = 0;
    let mut i = 0;
    while i < 6 {
        if slot < 2 && saved.strings & (1 << i) != 0 {
            // SAFETY: checked read of user memory into the event's own buffer.
            let len = match unsafe {
                aya_ebpf::helpers::bpf_probe_read_user_str_bytes(
                    saved.args[i] as *const u8,
                    &mut event.strs[slot][..SYSCALL_STR_LEN],
                )
            } {
                Ok(s) => s.len() as u32,
                Err(_) => 0,
            };
            event.str_len[slot] = len;
            event.str_mask |= 1 << i;
            slot += 1;
        }
        i += 1;
    }
    emit(event);
    0
}

#[inline(always)]
fn remember_open(scope: u64, flags: u64, filename: u64, dirfd: i32) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let args =
        OpenArgs { scope, access: access_of(flags), flags: flags as u32, filename, dirfd, _pad: 0 };
    if OPEN_ARGS.insert(&tid, &args, 0).is_err() {
        count_loss(LossCounter::OpenArgsFull);
    }
}

/// `1 << ACCESS_*` bits for open flags.
#[inline(always)]
fn access_of(flags: u64) -> u32 {
    // An O_PATH descriptor reads nothing; reopening it (/proc/self/fd) or executing it
    // (execveat) is an open or exec of its own, checked then.
    if flags & O_PATH != 0 {
        return 0;
    }
    let mut access = match flags & O_ACCMODE {
        O_WRONLY => 1 << ACCESS_WRITE,
        O_RDWR => (1 << ACCESS_READ) | (1 << ACCESS_WRITE),
        _ => 1 << ACCESS_READ,
    };
    if flags & O_CREAT != 0 {
        access |= 1 << ACCESS_CREATE;
    }
    if flags & O_TRUNC != 0 {
        access |= 1 << ACCESS_WRITE;
    }
    access
}

/// The audit and block masks of the access kinds in `access`.
#[inline(always)]
fn masks_for(masks: &FileMasks, access: u32) -> (u64, u64) {
    let (mut audit, mut block) = (0, 0);
    let mut kind = 0;
    while kind < ACCESS_KINDS {
        // Branch-free: an unknown `access` would otherwise fork the verifier's states per kind.
        let select = u64::from((access >> kind) & 1).wrapping_neg();
        audit |= masks.audit[kind] & select;
        block |= masks.block[kind] & select;
        kind += 1;
    }
    (audit, block)
}
