//! BPF-LSM hooks: Block rules decided before the operation happens (the hook returns
//! `-EPERM`, the call fails, nothing changed), on kernels with "bpf" in their LSM list.
//!
//! The hooks get the kernel's own objects (the `struct file`, the dentry and its directory's
//! `struct path`), so identity is exact: the same [`INODE_RULES`](super::INODE_RULES) walk as
//! the tracepoint path (the object, then its ancestors as `ROLE_BELOW`), plus the same path
//! rules ([`FILE_RULES`](super::FILE_RULES), [`EXEC_RULES`](super::EXEC_RULES)) matched on
//! the canonical path written from the dentry. A Block in enforce mode returns `-EPERM` and
//! the record says `blocked`. Unlink, rmdir, rename, link and truncate are owned here when
//! attached (the agent then does not attach their `sys_enter_*` tracepoints): their audits
//! are recorded here too. Opens and execs keep their tracepoint records; only
//! the denial (and its record) is added here.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sensor_common::host::{
    ACCESS_CREATE, ACCESS_DELETE, ACCESS_EXEC, ACCESS_READ, ACCESS_RENAME, ACCESS_WRITE, Action,
    EventKind, FILE_OP_EXEC, FILE_OP_LINK, FILE_OP_OPEN, FILE_OP_RENAME, FILE_OP_TRUNCATE,
    FILE_OP_UNLINK, FLAG_PATH_TRUNCATED, FLAG_PATH2_TRUNCATED, HostConfig, MAX_DIR_IDENTITY_DEPTH,
    ROLE_SELF,
};

use super::{
    EXEC_RULES, FILE_RULES, add_identity, config, current_scope, decide, emit, fill_header,
    path::{KPath, field_ptr, field_u32, identity_walk, lookup_key, task_root_and_pwd, write_path},
    syscalls::FILE_SCRATCH,
};

const EPERM: i32 = 1;
/// `f_mode` bits (include/linux/fs.h).
const FMODE_READ: u32 = 1;
const FMODE_WRITE: u32 = 2;
const FMODE_EXEC: u32 = 0x20;
/// `O_TRUNC` in `f_flags`.
const O_TRUNC: u32 = 0o1000;

const READ: u32 = 1 << ACCESS_READ;
const WRITE: u32 = 1 << ACCESS_WRITE;
const CREATE: u32 = 1 << ACCESS_CREATE;
const DELETE: u32 = 1 << ACCESS_DELETE;
const RENAME: u32 = 1 << ACCESS_RENAME;
const EXEC: u32 = 1 << ACCESS_EXEC;
/// Every file access kind: a new name for a protected object is an access to it.
const ANY: u32 = READ | WRITE | CREATE | DELETE | RENAME;

/// The config and the task's scope when a rule could apply (offsets known, task watched).
/// `owned`: the operation's records come from here (the tracepoint program skips it), so
/// audits count too; otherwise only a Block in enforce mode matters here.
#[inline(always)]
fn watched(owned: bool) -> Option<(&'static HostConfig, u64)> {
    let config = config()?;
    if config.offsets_valid != 1 || (!owned && config.enforce != 1) {
        return None;
    }
    let scope = current_scope(config)?;
    if !owned && scope & config.walk_block == 0 {
        return None;
    }
    Some((config, scope))
}

/// Audit and block masks of the policies in `scope` that `target` (by identity and by its
/// canonical path) matches for `kinds`; writes the path into `out`.
/// `(audit, block, path length, truncated)`.
#[inline(always)]
fn match_object(
    config: &HostConfig,
    scope: u64,
    target: KPath,
    kinds: u32,
    out: &mut [u8; sensor_common::host::PATH_SLOT_LEN],
) -> (u64, u64, u32, bool) {
    let o = &config.offsets;
    let mut acc = (0_u64, 0_u64, 0_u32);
    let identity = identity_walk::<MAX_DIR_IDENTITY_DEPTH>(o, target, ROLE_SELF);
    add_identity(config, scope, &identity, kinds, &mut acc);
    let (root, _) = task_root_and_pwd(o);
    let (len, truncated) = write_path(o, target, root, out);
    if let Some(key) = lookup_key(out.as_ptr(), len) {
        if kinds & EXEC != 0
            && let Some(m) = EXEC_RULES.get(key)
        {
            acc.0 |= m.audit;
            acc.1 |= m.block;
        }
        if let Some(m) = FILE_RULES.get(key) {
            let mut kind = 0;
            while kind < sensor_common::host::ACCESS_KINDS {
                let select = u64::from((kinds >> kind) & 1).wrapping_neg();
                acc.0 |= m.audit[kind] & select;
                acc.1 |= m.block[kind] & select;
                kind += 1;
            }
        }
    }
    (acc.0 & scope, acc.1 & scope, len, truncated)
}

/// Decides one operation on up to two objects; records a match (every match when `owned`,
/// else only a Block) and denies a Block in enforce mode.
#[inline(always)]
fn decide_op(op: u32, owned: bool, one: KPath, kinds: u32, two: Option<(KPath, u32)>) -> i32 {
    let Some((config, scope)) = watched(owned) else {
        return 0;
    };
    let Some(event) = FILE_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, this program's until it returns.
    let event = unsafe { &mut (*event).file };
    let (mut audit, mut block, len, cut) = match_object(config, scope, one, kinds, &mut event.path);
    let (mut len2, mut cut2) = (0, false);
    let mut access = kinds;
    event.path2[0] = 0;
    if let Some((target, kinds2)) = two {
        let (a, b, l, c) = match_object(config, scope, target, kinds2, &mut event.path2);
        audit |= a;
        block |= b;
        (len2, cut2) = (l, c);
        access |= kinds2;
    }
    let Some((action, policy)) = decide(config, scope, audit, block) else {
        return 0;
    };
    if !owned && action != Action::Blocked {
        return 0;
    }
    fill_header(&mut event.header, EventKind::File as u32, action, policy);
    if cut {
        event.header.flags |= FLAG_PATH_TRUNCATED;
    }
    if cut2 {
        event.header.flags |= FLAG_PATH2_TRUNCATED;
    }
    event.op = op;
    event.access = access & 0xffff;
    event.path_len = len;
    event.path2_len = len2;
    event.open_flags = 0;
    event.fd = -1;
    event.dirfd = -100;
    emit(event);
    if action == Action::Blocked { -EPERM } else { 0 }
}

/// A dentry in the directory `dir` (a `const struct path *`).
#[inline(always)]
fn in_dir(config: &HostConfig, dir: *const u8, dentry: *const u8) -> KPath {
    KPath { mnt: field_ptr(dir, config.offsets.path_mnt), dentry }
}

/// `file_open(struct file *file)`: every open, exec's included (`FMODE_EXEC`).
#[lsm(hook = "file_open")]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    let Some(config) = config() else {
        return 0;
    };
    let o = &config.offsets;
    let mode = field_u32(file, o.file_f_mode).unwrap_or(0);
    let flags = field_u32(file, o.file_f_flags).unwrap_or(0);
    let mut kinds = 0;
    if mode & FMODE_READ != 0 {
        kinds |= READ;
    }
    if mode & FMODE_WRITE != 0 || flags & O_TRUNC != 0 {
        kinds |= WRITE;
    }
    let op = if mode & FMODE_EXEC != 0 {
        kinds |= EXEC;
        FILE_OP_EXEC
    } else {
        FILE_OP_OPEN
    };
    let target = KPath::at(o, file.wrapping_add(o.file_path as usize));
    decide_op(op, false, target, kinds, None)
}

/// `bprm_check_security(struct linux_binprm *bprm)`: the file about to run, once per
/// interpreter stage (a script, then its interpreter).
#[lsm(hook = "bprm_check_security")]
pub fn lsm_bprm_check(ctx: LsmContext) -> i32 {
    let bprm: *const u8 = ctx.arg(0);
    let Some(config) = config() else {
        return 0;
    };
    let o = &config.offsets;
    let file = field_ptr(bprm, o.binprm_file);
    if file.is_null() {
        return 0;
    }
    let target = KPath::at(o, file.wrapping_add(o.file_path as usize));
    decide_op(FILE_OP_EXEC, false, target, EXEC, None)
}

/// `path_unlink(const struct path *dir, struct dentry *dentry)`.
#[lsm(hook = "path_unlink")]
pub fn lsm_path_unlink(ctx: LsmContext) -> i32 {
    let Some(config) = config() else {
        return 0;
    };
    let target = in_dir(config, ctx.arg(0), ctx.arg(1));
    decide_op(FILE_OP_UNLINK, true, target, DELETE, None)
}

/// `path_rmdir(const struct path *dir, struct dentry *dentry)`.
#[lsm(hook = "path_rmdir")]
pub fn lsm_path_rmdir(ctx: LsmContext) -> i32 {
    let Some(config) = config() else {
        return 0;
    };
    let target = in_dir(config, ctx.arg(0), ctx.arg(1));
    decide_op(FILE_OP_UNLINK, true, target, DELETE, None)
}

/// `path_rename(old_dir, old_dentry, new_dir, new_dentry[, flags])`: both ends, each as a
/// destination too (with `RENAME_EXCHANGE` the source is replaced; 6.1 calls the hook once
/// per direction, later kernels pass the flag).
#[lsm(hook = "path_rename")]
pub fn lsm_path_rename(ctx: LsmContext) -> i32 {
    let Some(config) = config() else {
        return 0;
    };
    let from = in_dir(config, ctx.arg(0), ctx.arg(1));
    let to = in_dir(config, ctx.arg(2), ctx.arg(3));
    let kinds = RENAME | CREATE | WRITE;
    decide_op(FILE_OP_RENAME, true, from, kinds, Some((to, kinds)))
}

/// `path_link(struct dentry *old_dentry, const struct path *new_dir, struct dentry
/// *new_dentry)`: the existing object (any access: a new name reaches it) and the new name.
#[lsm(hook = "path_link")]
pub fn lsm_path_link(ctx: LsmContext) -> i32 {
    let Some(config) = config() else {
        return 0;
    };
    let new_dir: *const u8 = ctx.arg(1);
    // The old dentry lives on the same mount as the new one (no cross-mount links).
    let old = in_dir(config, new_dir, ctx.arg(0));
    let new = in_dir(config, new_dir, ctx.arg(2));
    decide_op(FILE_OP_LINK, true, old, ANY, Some((new, CREATE)))
}

/// `path_truncate(const struct path *path)`: truncate(2), and ftruncate/O_TRUNC on 6.1.
#[lsm(hook = "path_truncate")]
pub fn lsm_path_truncate(ctx: LsmContext) -> i32 {
    let Some(config) = config() else {
        return 0;
    };
    let target = KPath::at(&config.offsets, ctx.arg(0));
    decide_op(FILE_OP_TRUNCATE, true, target, WRITE, None)
}

/// `file_truncate(struct file *file)` (Linux >= 6.2): ftruncate and `O_TRUNC`.
#[lsm(hook = "file_truncate")]
pub fn lsm_file_truncate(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    let Some(config) = config() else {
        return 0;
    };
    let o = &config.offsets;
    let target = KPath::at(o, file.wrapping_add(o.file_path as usize));
    decide_op(FILE_OP_TRUNCATE, true, target, WRITE, None)
}
