//! Paths from kernel structures: a dentry walked up to the task's root (crossing mounts), as
//! `d_path` does, using field offsets the agent read from the kernel's BTF.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task, bpf_probe_read_kernel as read_kernel_raw, bpf_probe_read_user,
            bpf_probe_read_user_str,
        },
    },
    macros::map,
    maps::{PerCpuArray, lpm_trie::Key},
};
use sensor_common::host::{
    InodeKey, InodeMasks, KernelOffsets, MAX_COMPONENT_LEN, MAX_PATH_DEPTH, MAX_PATH_LEN,
    PATH_KEY_LEN, PATH_SLOT_LEN, PathKey, ROLE_BELOW,
};

use super::INODE_RULES;

/// Scratch for writing a path backwards from its end; sized so a masked offset plus one
/// component always stays inside.
const SCRATCH_LEN: usize = MAX_PATH_LEN + MAX_COMPONENT_LEN;
const SCRATCH_MASK: u32 = MAX_PATH_LEN as u32 - 1;
const AT_FDCWD: i64 = -100;

#[map]
static KEY_SCRATCH: PerCpuArray<Key<PathKey>> = PerCpuArray::with_max_entries(1, 0);

/// Reads a pointer-sized field at `base + offset`; null when unreadable.
#[inline(always)]
pub fn field_ptr(base: *const u8, offset: u32) -> *const u8 {
    if base.is_null() {
        return core::ptr::null();
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a fault returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<*const u8>()) }
        .unwrap_or(core::ptr::null())
}

#[inline(always)]
pub fn field_u32(base: *const u8, offset: u32) -> Option<u32> {
    // SAFETY: as in `field_ptr`.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<u32>()) }.ok()
}

#[inline(always)]
pub fn field_u64(base: *const u8, offset: u32) -> Option<u64> {
    // SAFETY: as in `field_ptr`.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<u64>()) }.ok()
}

#[inline(always)]
pub fn current_task() -> *const u8 {
    // SAFETY: returns the current task_struct's address; only read through probe helpers.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// A `struct path`: its vfsmount and dentry.
#[derive(Clone, Copy)]
pub struct KPath {
    pub mnt: *const u8,
    pub dentry: *const u8,
}

impl KPath {
    #[inline(always)]
    pub fn at(o: &KernelOffsets, path: *const u8) -> Self {
        Self { mnt: field_ptr(path, o.path_mnt), dentry: field_ptr(path, o.path_dentry) }
    }
}

/// The current task's root and working directory.
#[inline(always)]
pub fn task_root_and_pwd(o: &KernelOffsets) -> (KPath, KPath) {
    let fs = field_ptr(current_task(), o.task_fs);
    (
        KPath::at(o, fs.wrapping_add(o.fs_root as usize)),
        KPath::at(o, fs.wrapping_add(o.fs_pwd as usize)),
    )
}

/// The `struct file` behind descriptor `fd` of the current task, or null.
#[inline(always)]
pub fn current_file(o: &KernelOffsets, fd: u32) -> *const u8 {
    let files = field_ptr(current_task(), o.task_files);
    let fdt = field_ptr(files, o.files_fdt);
    let Some(max_fds) = field_u32(fdt, o.fdt_max_fds) else {
        return core::ptr::null();
    };
    if fd >= max_fds {
        return core::ptr::null();
    }
    let fds = field_ptr(fdt, o.fdt_fd);
    field_ptr(fds, fd.wrapping_mul(8))
}

/// Walk state kept in map memory (volatile): values the verifier loads from memory are not
/// tracked precisely, so the loop's states converge instead of multiplying per iteration.
#[repr(C)]
pub struct Scratch {
    pos: u32,
    truncated: u32,
    /// Offsets pass through here so the compiler cannot drop the masks the verifier needs.
    offset: u32,
    _pad: u32,
    buf: [u8; SCRATCH_LEN],
}

#[map]
static PATH_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Writes the path of `target` relative to `root` into `out` (a slot of `PATH_SLOT_LEN`
/// bytes, NUL-terminated); returns its length and whether the top was cut.
#[inline(always)]
pub fn write_path(
    o: &KernelOffsets,
    target: KPath,
    root: KPath,
    out: &mut [u8; PATH_SLOT_LEN],
) -> (u32, bool) {
    let Some(scratch) = PATH_SCRATCH.get_ptr_mut(0) else {
        return (0, true);
    };
    let end = MAX_PATH_LEN as u32;
    // SAFETY: per-CPU scratch, used by this program only until it returns; the volatile
    // accesses keep `pos` and `truncated` in memory (see `Scratch`).
    let (pos_ptr, truncated_ptr, buf) = unsafe {
        (
            core::ptr::addr_of_mut!((*scratch).pos),
            core::ptr::addr_of_mut!((*scratch).truncated),
            core::ptr::addr_of_mut!((*scratch).buf).cast::<u8>(),
        )
    };
    let set_pos = |v: u32| unsafe { core::ptr::write_volatile(pos_ptr, v) };
    let get_pos = || unsafe { core::ptr::read_volatile(pos_ptr) };
    let set_truncated = || unsafe { core::ptr::write_volatile(truncated_ptr, 1) };
    // SAFETY: as above.
    let offset_ptr = unsafe { core::ptr::addr_of_mut!((*scratch).offset) };
    // An offset the compiler cannot reason about, masked into the scratch.
    let opaque = |v: u32| unsafe {
        core::ptr::write_volatile(offset_ptr, v);
        core::ptr::read_volatile(offset_ptr) & SCRATCH_MASK
    };
    set_pos(end);
    unsafe { core::ptr::write_volatile(truncated_ptr, 0) };
    let mut dentry = target.dentry;
    let mut vfsmnt = target.mnt;
    let mut mount = vfsmnt.wrapping_sub(o.mount_mnt as usize);
    let mut finished = false;
    for _ in 0..MAX_PATH_DEPTH {
        if dentry.is_null() || (dentry == root.dentry && vfsmnt == root.mnt) {
            finished = true;
            break;
        }
        if dentry == field_ptr(vfsmnt, o.vfsmount_root) {
            // At the root of this mount: continue from where it is mounted.
            let parent = field_ptr(mount, o.mount_parent);
            if parent.is_null() || parent == mount {
                finished = true;
                break;
            }
            dentry = field_ptr(mount, o.mount_mountpoint);
            mount = parent;
            vfsmnt = parent.wrapping_add(o.mount_mnt as usize);
            continue;
        }
        let parent = field_ptr(dentry, o.dentry_parent);
        let pseudo = parent == dentry && get_pos() == end;
        if parent.is_null() || (parent == dentry && !pseudo) {
            finished = true;
            break;
        }
        let name = field_ptr(dentry, o.dentry_name_ptr);
        let raw_len = field_u32(dentry, o.dentry_name_len).unwrap_or(0);
        if raw_len >= MAX_COMPONENT_LEN as u32 {
            set_truncated();
        }
        let len = raw_len & (MAX_COMPONENT_LEN as u32 - 1);
        if pseudo {
            // A file of no directory (memfd, anonymous inode): its own parent. Its name alone,
            // e.g. `memfd:payload`, names it (as `d_path` does, without the slash).
            if len > 0 && len < end {
                let at = opaque(end - len);
                // SAFETY: `at + len` stays inside the scratch (mask plus one component).
                unsafe {
                    read_kernel_raw(
                        buf.add(at as usize).cast::<c_void>(),
                        len,
                        name.cast::<c_void>(),
                    )
                };
                set_pos(end - len);
            }
            finished = true;
            break;
        }
        let pos = get_pos();
        if len + 2 > pos || pos > end {
            set_truncated();
            finished = true;
            break;
        }
        let at = opaque(pos - len);
        // SAFETY: `at + len` stays inside the scratch (mask plus one component of room).
        unsafe {
            read_kernel_raw(buf.add(at as usize).cast::<c_void>(), len, name.cast::<c_void>())
        };
        let slash = opaque(pos - len - 1);
        // SAFETY: `slash` is masked inside the scratch.
        unsafe { *buf.add(slash as usize) = b'/' };
        set_pos(slash);
        dentry = parent;
    }
    if !finished {
        set_truncated();
    }
    if get_pos() >= end {
        set_pos(end - 1);
        // SAFETY: inside the scratch.
        unsafe { *buf.add(end as usize - 1) = b'/' };
    }
    let pos = opaque(get_pos());
    let len = opaque(end.wrapping_sub(pos)) & (MAX_PATH_LEN as u32 - 1);
    // SAFETY: copies `len` < MAX_PATH_LEN bytes from inside the scratch into `out`.
    unsafe {
        read_kernel_raw(
            out.as_mut_ptr().cast::<c_void>(),
            len,
            buf.add(pos as usize).cast::<c_void>(),
        )
    };
    out[len as usize & (MAX_PATH_LEN - 1)] = 0;
    // SAFETY: as above.
    (len, unsafe { core::ptr::read_volatile(truncated_ptr) } != 0)
}

/// The identity of the inode behind `dentry`, or None (a negative dentry).
#[inline(always)]
pub fn inode_key(o: &KernelOffsets, dentry: *const u8, role: u32) -> Option<InodeKey> {
    let inode = field_ptr(dentry, o.dentry_inode);
    if inode.is_null() {
        return None;
    }
    let ino = field_u64(inode, o.inode_ino)?;
    let sb = field_ptr(inode, o.inode_sb);
    let dev = field_u32(sb, o.sb_dev)?;
    Some(InodeKey { ino, dev, role })
}

/// What an identity check found: the masks of the nearest protected object (the target
/// itself, or its nearest protected ancestor), and whether the walk reached the top.
pub struct Identity {
    pub masks: Option<&'static InodeMasks>,
    pub complete: bool,
}

/// Checks `target` (as [`sensor_common::host::ROLE_SELF`], or [`ROLE_BELOW`] for a directory whose entries an
/// operation changes) and its ancestors (dentry parents, crossing mounts up to the mount tree's
/// top, past the task's root: a chroot or a bind mount does not hide where an object lives)
/// against [`INODE_RULES`]. Stops at the first entry: the agent folds enclosing rules into it.
#[inline(always)]
pub fn identity_walk<const DEPTH: u32>(
    o: &KernelOffsets,
    target: KPath,
    first_role: u32,
) -> Identity {
    let lookup = |dentry: *const u8, role: u32| -> Option<&'static InodeMasks> {
        let key = inode_key(o, dentry, role)?;
        // SAFETY: map values live until removed; the agent removes entries only after a
        // generation flip, and the masks are read at once.
        unsafe { INODE_RULES.get(&key) }
    };
    if let Some(masks) = lookup(target.dentry, first_role) {
        return Identity { masks: Some(masks), complete: true };
    }
    let mut dentry = target.dentry;
    let mut vfsmnt = target.mnt;
    let mut mount = vfsmnt.wrapping_sub(o.mount_mnt as usize);
    for _ in 0..DEPTH {
        if dentry.is_null() {
            return Identity { masks: None, complete: true };
        }
        if dentry == field_ptr(vfsmnt, o.vfsmount_root) {
            let parent = field_ptr(mount, o.mount_parent);
            if parent.is_null() || parent == mount {
                return Identity { masks: None, complete: true };
            }
            dentry = field_ptr(mount, o.mount_mountpoint);
            mount = parent;
            vfsmnt = parent.wrapping_add(o.mount_mnt as usize);
        } else {
            let parent = field_ptr(dentry, o.dentry_parent);
            if parent.is_null() || parent == dentry {
                return Identity { masks: None, complete: true };
            }
            dentry = parent;
        }
        if let Some(masks) = lookup(dentry, ROLE_BELOW) {
            return Identity { masks: Some(masks), complete: true };
        }
    }
    Identity { masks: None, complete: false }
}

/// The directory a syscall's relative path starts from: `dfd`, or the working directory for
/// `AT_FDCWD`; and the task's root (where absolute paths start).
#[inline(always)]
pub fn user_path_base(o: &KernelOffsets, dfd: i64) -> (KPath, KPath) {
    let (root, pwd) = task_root_and_pwd(o);
    let base = if dfd == AT_FDCWD || dfd < 0 {
        pwd
    } else {
        let file = current_file(o, dfd as u32);
        KPath::at(o, file.wrapping_add(o.file_path as usize))
    };
    (root, base)
}

/// A path a syscall named, written out.
pub struct UserPath {
    pub len: u32,
    pub truncated: bool,
    /// The directory the path starts from (`dfd` or the working directory), when relative.
    pub base: Option<KPath>,
    /// Bytes of `out` the base directory took (the relative part follows).
    pub base_len: u32,
}

/// Writes the path a syscall named (user memory): absolute as given, or relative to the
/// directory descriptor `dfd` (`AT_FDCWD`: the working directory). `..` is not resolved here
/// (userspace normalises what it reports).
#[inline(always)]
pub fn write_user_path(
    o: &KernelOffsets,
    dfd: i64,
    user_path: *const u8,
    out: &mut [u8; PATH_SLOT_LEN],
) -> UserPath {
    let mut first = 0_u8;
    // SAFETY: reads one byte of user memory through the checked helper.
    unsafe {
        bpf_probe_read_user((&raw mut first).cast::<c_void>(), 1, user_path.cast::<c_void>())
    };
    if first == b'/' {
        // SAFETY: the helper writes at most MAX_PATH_LEN bytes into `out`.
        let n = unsafe {
            bpf_probe_read_user_str(
                out.as_mut_ptr().cast::<c_void>(),
                MAX_PATH_LEN as u32,
                user_path.cast::<c_void>(),
            )
        };
        if n <= 0 {
            return UserPath { len: 0, truncated: true, base: None, base_len: 0 };
        }
        let len = n as u32 - 1;
        return UserPath {
            len,
            truncated: len + 1 >= MAX_PATH_LEN as u32,
            base: None,
            base_len: 0,
        };
    }
    let (root, base) = user_path_base(o, dfd);
    let (mut len, truncated) = write_path(o, base, root, out);
    if len > 1 {
        out[len as usize & (MAX_PATH_LEN - 1)] = b'/';
        len += 1;
    }
    let at = len as usize & (MAX_PATH_LEN - 1);
    // SAFETY: `at` < MAX_PATH_LEN and the copy is at most one component: inside the slot.
    let n = unsafe {
        bpf_probe_read_user_str(
            out.as_mut_ptr().add(at).cast::<c_void>(),
            MAX_COMPONENT_LEN as u32,
            user_path.cast::<c_void>(),
        )
    };
    if n <= 0 {
        return UserPath { len, truncated: true, base: Some(base), base_len: len };
    }
    let added = n as u32 - 1;
    UserPath {
        len: (len + added) & (MAX_PATH_LEN as u32 - 1),
        truncated: truncated || added + 1 >= MAX_COMPONENT_LEN as u32,
        base: Some(base),
        base_len: len,
    }
}

/// The LPM lookup key for a NUL-terminated path of `len` bytes in `path`: matches prefix
/// rules, and exact rules (whose keys include the NUL).
#[inline(always)]
pub fn lookup_key(path: *const u8, len: u32) -> Option<&'static Key<PathKey>> {
    let key = KEY_SCRATCH.get_ptr_mut(0)?;
    let mut with_nul = len + 1;
    if with_nul > PATH_KEY_LEN as u32 {
        with_nul = PATH_KEY_LEN as u32;
    }
    // SAFETY: per-CPU scratch; the copy is bounded by the key's data size.
    unsafe {
        (*key).prefix_len = with_nul * 8;
        read_kernel_raw(
            core::ptr::addr_of_mut!((*key).data).cast::<c_void>(),
            with_nul,
            path.cast::<c_void>(),
        );
        Some(&*key)
    }
}
