//! Unlink and rename: `syscalls/sys_enter_{unlink,unlinkat,rmdir,rename,renameat,renameat2}`
//! tracepoints, one small program each (a path walk inside the raw `sys_enter` program exceeds
//! the verifier's budget). Decided at entry on the path as given, joined to the working
//! directory or directory descriptor when relative; `..` is not resolved in the kernel. A
//! rename is matched on its source; its destination is sent as given.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use sensor_common::host::{
    ACCESS_DELETE, ACCESS_RENAME, Action, EventKind, FILE_OP_RENAME, FILE_OP_UNLINK,
    FLAG_PATH_TRUNCATED, FLAG_PATH2_TRUNCATED,
};

use super::{
    FILE_RULES, config, current_scope, decide, emit, fill_header, kill_current,
    path::{lookup_key, write_user_path},
    syscalls::FILE_SCRATCH,
};

const AT_FDCWD: i64 = -100;

/// A directory descriptor argument: an `int` the register holds zero-extended.
#[inline(always)]
fn dfd(ctx: &TracePointContext, offset: usize) -> i64 {
    i64::from(arg(ctx, offset) as u32 as i32)
}

/// Reads the u64 tracepoint field at `offset` (syscall arguments are 8 bytes wide).
#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: offsets come from the tracepoints' tracefs `format` files.
    unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0)
}

#[tracepoint]
pub fn sys_enter_unlinkat(ctx: TracePointContext) -> u32 {
    check(FILE_OP_UNLINK, dfd(&ctx, 16), arg(&ctx, 24), AT_FDCWD, 0)
}

#[tracepoint]
pub fn sys_enter_unlink(ctx: TracePointContext) -> u32 {
    check(FILE_OP_UNLINK, AT_FDCWD, arg(&ctx, 16), AT_FDCWD, 0)
}

#[tracepoint]
pub fn sys_enter_rmdir(ctx: TracePointContext) -> u32 {
    check(FILE_OP_UNLINK, AT_FDCWD, arg(&ctx, 16), AT_FDCWD, 0)
}

#[tracepoint]
pub fn sys_enter_rename(ctx: TracePointContext) -> u32 {
    check(FILE_OP_RENAME, AT_FDCWD, arg(&ctx, 16), AT_FDCWD, arg(&ctx, 24))
}

/// renameat and renameat2 share the first four fields.
#[tracepoint]
pub fn sys_enter_renameat2(ctx: TracePointContext) -> u32 {
    check(FILE_OP_RENAME, dfd(&ctx, 16), arg(&ctx, 24), dfd(&ctx, 32), arg(&ctx, 40))
}

#[tracepoint]
pub fn sys_enter_renameat(ctx: TracePointContext) -> u32 {
    check(FILE_OP_RENAME, dfd(&ctx, 16), arg(&ctx, 24), dfd(&ctx, 32), arg(&ctx, 40))
}

#[inline(always)]
fn check(op: u32, dfd: i64, path: u64, dfd2: i64, path2: u64) -> u32 {
    let Some(config) = config() else {
        return 0;
    };
    if config.offsets_valid != 1 {
        return 0;
    }
    let Some(scope) = current_scope(config) else {
        return 0;
    };
    let Some(event) = FILE_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, used by this program only until it returns.
    let event = unsafe { &mut *event };
    let o = &config.offsets;
    let kind = if op == FILE_OP_UNLINK { ACCESS_DELETE } else { ACCESS_RENAME };
    let (len, cut) = write_user_path(o, dfd, path as *const u8, &mut event.path);
    let verdict = lookup_key(event.path.as_ptr(), len)
        .and_then(|key| FILE_RULES.get(key))
        .and_then(|m| decide(config, scope, m.audit[kind], m.block[kind]));
    let (mut len2, mut cut2) = (0, false);
    event.path2[0] = 0;
    if op == FILE_OP_RENAME {
        // The new name as given: a second path walk in one program exceeds the verifier's
        // budget, so rules match the source and userspace resolves the destination.
        let _ = dfd2;
        // SAFETY: the helper writes at most MAX_PATH_LEN bytes into the slot.
        let n = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_user_str(
                event.path2.as_mut_ptr().cast(),
                sensor_common::host::MAX_PATH_LEN as u32,
                path2 as *const core::ffi::c_void,
            )
        };
        if n > 0 {
            len2 = n as u32 - 1;
            cut2 = len2 + 1 >= sensor_common::host::MAX_PATH_LEN as u32;
        }
    }
    let Some((action, policy)) = verdict else {
        return 0;
    };
    // Killing at syscall entry does not stop the call itself: say so in the event.
    let action = if action == Action::Blocked { Action::Killed } else { action };
    fill_header(&mut event.header, EventKind::File as u32, action, policy);
    if cut {
        event.header.flags |= FLAG_PATH_TRUNCATED;
    }
    if cut2 {
        event.header.flags |= FLAG_PATH2_TRUNCATED;
    }
    event.op = op;
    event.access = 1 << kind;
    event.path_len = len;
    event.path2_len = len2;
    emit(event);
    if action == Action::Killed {
        kill_current();
    }
    0
}
