//! Operations that change a directory: unlink, rmdir, rename (source and destination, also
//! `RENAME_EXCHANGE`), link, symlink and truncate, one small `syscalls/sys_enter_*` tracepoint
//! program each (a path walk inside the raw `sys_enter` program exceeds the verifier's budget).
//!
//! Decided at entry, and the kernel still completes that one call (no BPF-LSM here): a Block
//! match kills the process (`Action::Killed`). Each path is matched by its spelling (joined to
//! the working directory or directory descriptor when relative; `..` not resolved in the
//! kernel) and, when it names an entry of the working directory itself (one component, or
//! `AT_EMPTY_PATH`), by the identity of that directory and its ancestors.
//!
//! Every other path (several components, absolute, or relative to a directory descriptor in
//! the `*at()` forms whose program has no room for an identity walk) is held: see hold.rs.
//! The agent resolves it in the task's own view once the call has returned, with the task
//! stopped, and kills it when it reached a protected object.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{
        bpf_probe_read_kernel as read_kernel_raw, bpf_probe_read_user, bpf_probe_read_user_str,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::host::{
    ACCESS_CREATE, ACCESS_DELETE, ACCESS_READ, ACCESS_RENAME, ACCESS_WRITE, Action, EventKind,
    FILE_OP_LINK, FILE_OP_RENAME, FILE_OP_SYMLINK, FILE_OP_TRUNCATE, FILE_OP_UNLINK,
    FLAG_PATH_TRUNCATED, FLAG_PATH2_TRUNCATED, FileEvent, MAX_COMPONENT_LEN,
    MAX_DIR_IDENTITY_DEPTH, MAX_PATH_LEN, PATH_SLOT_LEN, ROLE_BELOW, ROLE_SELF,
};

use super::{
    FILE_RULES, HostConfig, add_identity, decide, emit, fill_header, kill_current,
    path::{
        Identity, KPath, current_file, identity_walk, inode_key, lookup_key, task_root_and_pwd,
        write_user_path,
    },
    scoped_config,
    syscalls::FILE_SCRATCH,
};

const AT_FDCWD: i64 = -100;
const AT_EMPTY_PATH: u64 = 0x1000;

const DELETE: u32 = 1 << ACCESS_DELETE;
const RENAME: u32 = 1 << ACCESS_RENAME;
const CREATE: u32 = 1 << ACCESS_CREATE;
const WRITE: u32 = 1 << ACCESS_WRITE;
/// Every file access kind: making a new name for a protected object is an access to it.
const ANY: u32 = (1 << ACCESS_READ) | WRITE | CREATE | DELETE | RENAME;

/// What the second path of an operation is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Second {
    None,
    /// A path the operation changes (rename or link destination): resolved and matched.
    Matched,
    /// A string the operation stores (a symlink's target): reported as given.
    Text,
}

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
    let one = Path { dfd: dfd(&ctx, 16), ptr: arg(&ctx, 24), kinds: DELETE };
    check::<true>(FILE_OP_UNLINK, one, Path::NONE, Second::None)
}

#[tracepoint]
pub fn sys_enter_unlink(ctx: TracePointContext) -> u32 {
    check::<true>(FILE_OP_UNLINK, Path::cwd(arg(&ctx, 16), DELETE), Path::NONE, Second::None)
}

#[tracepoint]
pub fn sys_enter_rmdir(ctx: TracePointContext) -> u32 {
    check::<true>(FILE_OP_UNLINK, Path::cwd(arg(&ctx, 16), DELETE), Path::NONE, Second::None)
}

#[tracepoint]
pub fn sys_enter_truncate(ctx: TracePointContext) -> u32 {
    check::<true>(FILE_OP_TRUNCATE, Path::cwd(arg(&ctx, 16), WRITE), Path::NONE, Second::None)
}

#[tracepoint]
pub fn sys_enter_rename(ctx: TracePointContext) -> u32 {
    let to = Path::cwd(arg(&ctx, 24), RENAME | CREATE | WRITE);
    check::<true>(FILE_OP_RENAME, Path::cwd(arg(&ctx, 16), RENAME), to, Second::Matched)
}

#[tracepoint]
pub fn sys_enter_renameat(ctx: TracePointContext) -> u32 {
    let from = Path { dfd: dfd(&ctx, 16), ptr: arg(&ctx, 24), kinds: RENAME };
    let to = Path { dfd: dfd(&ctx, 32), ptr: arg(&ctx, 40), kinds: RENAME | CREATE | WRITE };
    check::<false>(FILE_OP_RENAME, from, to, Second::Matched)
}

/// renameat2 (also `RENAME_EXCHANGE`, `RENAME_NOREPLACE`, `RENAME_WHITEOUT`).
#[tracepoint]
pub fn sys_enter_renameat2(ctx: TracePointContext) -> u32 {
    // The flags are not read: with `RENAME_EXCHANGE` the source is replaced too, so the
    // source is always matched as a destination (a flag-dependent match exceeds the
    // verifier's budget here). Without it, renaming a protected file away also changes it.
    let from = Path { dfd: dfd(&ctx, 16), ptr: arg(&ctx, 24), kinds: RENAME | CREATE | WRITE };
    let to = Path { dfd: dfd(&ctx, 32), ptr: arg(&ctx, 40), kinds: RENAME | CREATE | WRITE };
    check::<false>(FILE_OP_RENAME, from, to, Second::Matched)
}

#[tracepoint]
pub fn sys_enter_link(ctx: TracePointContext) -> u32 {
    let to = Path::cwd(arg(&ctx, 24), CREATE);
    check::<true>(FILE_OP_LINK, Path::cwd(arg(&ctx, 16), ANY), to, Second::Matched)
}

/// linkat; with `AT_EMPTY_PATH` the existing file is the descriptor itself.
#[tracepoint]
pub fn sys_enter_linkat(ctx: TracePointContext) -> u32 {
    let mut from = Path { dfd: dfd(&ctx, 16), ptr: arg(&ctx, 24), kinds: ANY };
    if arg(&ctx, 48) & AT_EMPTY_PATH != 0 {
        from.kinds |= EMPTY_PATH;
    }
    let to = Path { dfd: dfd(&ctx, 32), ptr: arg(&ctx, 40), kinds: CREATE };
    check::<false>(FILE_OP_LINK, from, to, Second::Matched)
}

/// symlink: the new link is what is created; its target is only text.
#[tracepoint]
pub fn sys_enter_symlink(ctx: TracePointContext) -> u32 {
    let target = Path::cwd(arg(&ctx, 16), 0);
    check::<true>(FILE_OP_SYMLINK, Path::cwd(arg(&ctx, 24), CREATE), target, Second::Text)
}

#[tracepoint]
pub fn sys_enter_symlinkat(ctx: TracePointContext) -> u32 {
    let target = Path::cwd(arg(&ctx, 16), 0);
    let link = Path { dfd: dfd(&ctx, 24), ptr: arg(&ctx, 32), kinds: CREATE };
    check::<false>(FILE_OP_SYMLINK, link, target, Second::Text)
}

/// `kinds` bit (above the access kinds) for "the path is empty: the descriptor is the file".
const EMPTY_PATH: u32 = 1 << 16;

/// One path argument: directory descriptor, user pointer, and the access kinds it asks for.
#[derive(Clone, Copy)]
struct Path {
    dfd: i64,
    ptr: u64,
    kinds: u32,
}

impl Path {
    const NONE: Self = Self { dfd: AT_FDCWD, ptr: 0, kinds: 0 };

    fn cwd(ptr: u64, kinds: u32) -> Self {
        Self { dfd: AT_FDCWD, ptr, kinds }
    }
}

/// True when bytes `from..to` of `buf` hold no `/` (one path component).
#[inline(always)]
fn one_component(buf: &[u8; PATH_SLOT_LEN], from: u32, to: u32) -> bool {
    let mut i = 0;
    while i < MAX_COMPONENT_LEN as u32 {
        let at = from + i;
        if at >= to {
            return true;
        }
        match buf.get(at as usize) {
            Some(b'/') | None => return false,
            Some(_) => {}
        }
        i += 1;
    }
    false
}

/// What matching one path found, for the second path of the same call.
struct Matched {
    len: u32,
    truncated: bool,
    /// Bytes of the slot the starting directory took (relative paths), 0 otherwise.
    base_len: u32,
    /// The starting directory's identity check (relative one-component paths).
    identity: Option<Identity>,
    /// Decided by identity in the kernel; otherwise held (see hold.rs).
    decided: bool,
    /// The starting directory's identity (relative paths): (ino, dev).
    base_key: (u64, u32),
}

/// (ino, dev) of the object at `path`, (0, 0) when unknown.
#[inline(always)]
fn key_of(config: &HostConfig, path: KPath) -> (u64, u32) {
    inode_key(&config.offsets, path.dentry, 0).map_or((0, 0), |k| (k.ino, k.dev))
}

/// Writes one path into `out` and matches it by spelling and identity into `acc`.
#[inline(always)]
fn match_path<const IDENTITY: bool>(
    config: &HostConfig,
    scope: u64,
    path: Path,
    out: &mut [u8; PATH_SLOT_LEN],
    acc: &mut (u64, u64, u32),
) -> Matched {
    let o = &config.offsets;
    let kinds = path.kinds & 0xffff;
    if IDENTITY && path.kinds & EMPTY_PATH != 0 && path.dfd >= 0 {
        // The descriptor's own file: its identity, exactly.
        let file = current_file(o, path.dfd as u32);
        if !file.is_null() {
            let target = KPath::at(o, file.wrapping_add(o.file_path as usize));
            let identity = identity_walk::<MAX_DIR_IDENTITY_DEPTH>(o, target, ROLE_SELF);
            add_identity(config, scope, &identity, kinds, acc);
            let (root, _) = super::path::task_root_and_pwd(o);
            let (len, truncated) = super::path::write_path(o, target, root, out);
            return Matched {
                len,
                truncated,
                base_len: 0,
                identity: None,
                decided: true,
                base_key: (0, 0),
            };
        }
    }
    let written = write_user_path(o, path.dfd, path.ptr as *const u8, out);
    add_spelling(out, written.len, kinds, acc);
    let mut identity = None;
    if IDENTITY
        && let Some(base) = written.base
        && one_component(out, written.base_len, written.len)
    {
        // An entry of the starting directory: that directory's identity decides.
        let found = identity_walk::<MAX_DIR_IDENTITY_DEPTH>(o, base, ROLE_BELOW);
        add_identity(config, scope, &found, kinds, acc);
        identity = Some(found);
    }
    Matched {
        len: written.len,
        truncated: written.truncated,
        base_len: if written.base.is_some() { written.base_len } else { 0 },
        decided: identity.is_some(),
        base_key: written.base.map_or((0, 0), |b| key_of(config, b)),
        identity,
    }
}

/// Adds the masks of the path rules the spelled path in `out` matches.
#[inline(always)]
fn add_spelling(out: &[u8; PATH_SLOT_LEN], len: u32, kinds: u32, acc: &mut (u64, u64, u32)) {
    if let Some(m) = lookup_key(out.as_ptr(), len).and_then(|key| FILE_RULES.get(key)) {
        let (audit, block) = file_masks_for(m, kinds);
        acc.0 |= audit;
        acc.1 |= block;
    }
}

/// Writes and matches the second path of a rename or link without a second directory walk
/// (over the verifier's budget in one program): absolute as given; relative to the same
/// directory as the first path by reusing the first path's directory part (and identity);
/// relative to another directory, as given (unmatched, reported relative).
#[inline(always)]
fn match_second<const IDENTITY: bool>(
    config: &HostConfig,
    scope: u64,
    one: Path,
    first: &Matched,
    two: Path,
    event: &mut FileEvent,
    acc: &mut (u64, u64, u32),
) -> Matched {
    let kinds = two.kinds & 0xffff;
    let mut lead = 0_u8;
    // SAFETY: reads one byte of user memory through the checked helper.
    unsafe { bpf_probe_read_user((&raw mut lead).cast::<c_void>(), 1, two.ptr as *const c_void) };
    let same_base = lead != b'/' && two.dfd == one.dfd && first.base_len > 0;
    let at = if same_base { first.base_len & (MAX_PATH_LEN as u32 - 1) } else { 0 };
    if same_base {
        // SAFETY: copies `at` < MAX_PATH_LEN bytes between two slots of PATH_SLOT_LEN.
        unsafe {
            read_kernel_raw(
                event.path2.as_mut_ptr().cast::<c_void>(),
                at,
                event.path.as_ptr().cast::<c_void>(),
            )
        };
    }
    let room = if same_base { MAX_COMPONENT_LEN as u32 } else { MAX_PATH_LEN as u32 };
    // SAFETY: `at` < MAX_PATH_LEN, and `room` bytes from it stay inside the slot.
    let n = unsafe {
        bpf_probe_read_user_str(
            event.path2.as_mut_ptr().add(at as usize).cast::<c_void>(),
            room,
            two.ptr as *const c_void,
        )
    };
    // Relative to its own directory: that directory's identity, for the agent to check (the
    // `*at()` programs have no room for it: the agent then takes the descriptor unchecked).
    let base_key = if same_base {
        first.base_key
    } else if lead == b'/' || !IDENTITY {
        (0, 0)
    } else {
        key_of(config, task_root_and_pwd(&config.offsets).1)
    };
    let mut second = Matched {
        len: at,
        truncated: true,
        base_len: if same_base { at } else { 0 },
        identity: None,
        decided: false,
        base_key,
    };
    if n <= 0 {
        return second;
    }
    let added = n as u32 - 1;
    let len = (at + added) & (MAX_PATH_LEN as u32 - 1);
    second.len = len;
    second.truncated = added + 1 >= room;
    if lead == b'/' || same_base {
        add_spelling(&event.path2, len, kinds, acc);
    }
    if same_base
        && one_component(&event.path2, at, len)
        && let Some(identity) = &first.identity
    {
        add_identity(config, scope, identity, kinds, acc);
        second.decided = true;
    }
    second
}

#[inline(always)]
fn file_masks_for(m: &sensor_common::host::FileMasks, kinds: u32) -> (u64, u64) {
    let (mut audit, mut block) = (0, 0);
    let mut kind = 0;
    while kind < sensor_common::host::ACCESS_KINDS {
        // Branch-free: an unknown `kinds` would otherwise fork the verifier's states per kind.
        let select = u64::from((kinds >> kind) & 1).wrapping_neg();
        audit |= m.audit[kind] & select;
        block |= m.block[kind] & select;
        kind += 1;
    }
    (audit, block)
}

#[inline(always)]
fn check<const IDENTITY: bool>(op: u32, one: Path, two: Path, second: Second) -> u32 {
    let Some((config, scope)) = scoped_config() else {
        return 0;
    };
    let Some(hold) = FILE_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, used by this program only until it returns.
    let hold = unsafe { &mut *hold };
    let event = &mut hold.file;
    let mut acc = (0_u64, 0_u64, 0_u32);
    let first = match_path::<IDENTITY>(config, scope, one, &mut event.path, &mut acc);
    let (len, cut) = (first.len, first.truncated);
    let (mut len2, mut cut2) = (0, false);
    let mut held = !first.decided;
    hold.kinds = [one.kinds & 0xffff, 0];
    hold.dfd = [one.dfd as i32, two.dfd as i32];
    hold.base_len = [first.base_len, 0];
    (hold.base_ino[0], hold.base_dev[0]) = first.base_key;
    (hold.base_ino[1], hold.base_dev[1]) = (0, 0);
    event.path2[0] = 0;
    match second {
        Second::None => {}
        Second::Matched => {
            let m = match_second::<IDENTITY>(config, scope, one, &first, two, event, &mut acc);
            (len2, cut2) = (m.len, m.truncated);
            held |= !m.decided;
            hold.kinds[1] = two.kinds & 0xffff;
            hold.base_len[1] = m.base_len;
            (hold.base_ino[1], hold.base_dev[1]) = m.base_key;
        }
        Second::Text => {
            // SAFETY: the helper writes at most MAX_PATH_LEN bytes into the slot.
            let n = unsafe {
                aya_ebpf::helpers::generated::bpf_probe_read_user_str(
                    event.path2.as_mut_ptr().cast(),
                    MAX_PATH_LEN as u32,
                    two.ptr as *const core::ffi::c_void,
                )
            };
            if n > 0 {
                len2 = n as u32 - 1;
                cut2 = len2 + 1 >= MAX_PATH_LEN as u32;
            }
        }
    }
    event.op = op;
    event.access = (one.kinds | if second == Second::Matched { two.kinds } else { 0 }) & 0xffff;
    event.path_len = len;
    event.path2_len = len2;
    let mut flags = acc.2;
    if cut {
        flags |= FLAG_PATH_TRUNCATED;
    }
    if cut2 {
        flags |= FLAG_PATH2_TRUNCATED;
    }
    let decided = decide(config, scope, acc.0, acc.1);
    if let Some((action, policy)) = decided {
        // Killing at syscall entry does not stop the call itself: say so in the event.
        let action = if action == Action::Blocked { Action::Killed } else { action };
        fill_header(&mut event.header, EventKind::File as u32, action, policy);
        event.header.flags |= flags;
        emit(event);
        if action == Action::Killed {
            kill_current();
            return 0;
        }
    }
    if held && config.holds == 1 && config.hold_block & scope != 0 {
        hold.scope = scope;
        super::hold::send(hold, flags);
    }
    0
}
