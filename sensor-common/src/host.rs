//! Host events (exec, exit, file, socket, syscall) and the maps host policies compile into.
//!
//! Scoping: every watched cgroup has a policy mask in [`HOST_SCOPES_MAP`]; a rule's value holds
//! the masks of the policies that name it. A hook acts only when both masks share a bit of the
//! live generation, so an unwatched process costs one hash lookup.

/// Ring buffer carrying host event records.
pub const HOST_EVENTS_MAP: &str = "HOST_EVENTS";
/// Default size of [`HOST_EVENTS_MAP`] in bytes (power of two, multiple of the page size).
pub const HOST_EVENTS_BYTES: u32 = 1 << 22;
/// Per-CPU array of u64, indexed by [`LossCounter`]: events the kernel could not hand over.
pub const EVENT_LOSS_MAP: &str = "EVENT_LOSS";
/// Array with one [`HostConfig`].
pub const HOST_CONFIG_MAP: &str = "HOST_CONFIG";
/// Hash of cgroup id (u64) → policy mask (u64).
pub const HOST_SCOPES_MAP: &str = "HOST_SCOPES";
/// LPM tries of [`PathKey`] → [`RuleMasks`] (executables) and [`FileMasks`] (files).
pub const EXEC_RULES_MAP: &str = "EXEC_RULES";
pub const FILE_RULES_MAP: &str = "FILE_RULES";
/// Hash of [`BindKey`] → [`RuleMasks`].
pub const BIND_RULES_MAP: &str = "BIND_RULES";
/// Hash of syscall number (u32) → [`RuleMasks`].
pub const SYSCALL_RULES_MAP: &str = "SYSCALL_RULES";
/// Per-thread scratch between a syscall's entry and exit: tid (u32) → [`OpenArgs`].
pub const OPEN_ARGS_MAP: &str = "OPEN_ARGS";
/// Syscalls the loaded rules need (nr → [`SyscallInterest`]): the kernel sends a
/// [`SyscallArgsEvent`] for these only, so an event type no rule names costs nothing.
pub const RULE_SYSCALLS_MAP: &str = "RULE_SYSCALLS";
/// Most syscalls the rules can ask for at once.
pub const RULE_SYSCALLS_MAX_ENTRIES: u32 = 64;
/// A `RULE_SYSCALLS` key that is no syscall number: present when the rules need failed
/// opens (`evt.res != SUCCESS`); its `observe` bits say from which scopes.
pub const RULE_FAILED_OPENS: u32 = 0xFFFF_FF00;
/// Bytes kept of a string argument (a path) of a [`SyscallArgsEvent`].
pub const SYSCALL_STR_LEN: usize = 256;
/// Hash of [`InodeKey`] → [`InodeMasks`]: the objects rules protect, by identity.
pub const INODE_RULES_MAP: &str = "INODE_RULES";
/// Hash of thread group id (u32) → policy scope (u64): processes started from an interpreted
/// file (`#!` script), whose next opens are checked against executable rules (the script).
pub const SCRIPT_PENDING_MAP: &str = "SCRIPT_PENDING";
/// Ring buffer of [`HoldEvent`] and [`HoldExit`] records: operations on a path the kernel
/// cannot decide by identity, held (the task stopped at the call's return) until the agent
/// decides. Separate from [`HOST_EVENTS_MAP`] so a flood of events cannot delay a decision.
pub const HOLD_EVENTS_MAP: &str = "HOLD_EVENTS";
/// Size of [`HOLD_EVENTS_MAP`] in bytes.
pub const HOLD_EVENTS_BYTES: u32 = 1 << 21;
/// LRU hash of thread id (u32) → `HOLD_PENDING_*` bits: a held call between its entry
/// (record sent) and its exit (task stopped).
pub const HOLD_PENDING_MAP: &str = "HOLD_PENDING";
pub const HOLD_PENDING_MAX_ENTRIES: u32 = 8192;
/// [`HOLD_PENDING_MAP`] value bit: the entry record could not be sent (ring full): at a
/// successful exit the task is killed in enforce mode (fail closed), counted as
/// [`LossCounter::HoldLost`].
pub const HOLD_PENDING_LOST: u32 = 1;
/// [`HOLD_PENDING_MAP`] value bit: a record was sent.
pub const HOLD_PENDING_SENT: u32 = 2;

pub const HOST_SCOPES_MAX_ENTRIES: u32 = 16 * 1024;
pub const PATH_RULES_MAX_ENTRIES: u32 = 16 * 1024;
pub const BIND_RULES_MAX_ENTRIES: u32 = 2 * 65_536;
pub const SYSCALL_RULES_MAX_ENTRIES: u32 = 1024;
/// Protected inodes (both generations): rule targets and the files of protected trees.
pub const INODE_RULES_MAX_ENTRIES: u32 = 64 * 1024;
pub const SCRIPT_PENDING_MAX_ENTRIES: u32 = 8192;

/// Host policies per generation: each owns one bit of a 32-bit half of the masks; the last
/// bit of each half ([`RULES_BIT_INDEX`]) is reserved for the rules engine.
pub const MAX_HOST_POLICIES: usize = 31;
/// Bit (within a generation's half) meaning "the loaded rules want this": set in the scope
/// of cgroups the rules watch and in [`FileMasks::observe`] of path prefixes they name.
pub const RULES_BIT_INDEX: usize = 31;

/// Bytes of a path kept per event (the kernel's `PATH_MAX`); longer paths are cut at the top
/// and flagged.
pub const MAX_PATH_LEN: usize = 4096;
/// Room for one more path component after [`MAX_PATH_LEN`]: lets the kernel write a
/// component at any offset below [`MAX_PATH_LEN`] without a per-byte bound check.
pub const PATH_SLOT_LEN: usize = MAX_PATH_LEN + MAX_COMPONENT_LEN;
/// Bytes of one path component copied (`NAME_MAX` is 255); longer names are cut and flagged.
pub const MAX_COMPONENT_LEN: usize = 256;
/// Path components walked up from a dentry for the record; deeper paths are cut (flagged) at
/// the top. (Decisions do not depend on it: see [`MAX_IDENTITY_DEPTH`].)
pub const MAX_PATH_DEPTH: u32 = 32;
/// Ancestors (dentries, crossing mounts) an identity check of an opened or executed file
/// walks up (its own program); a deeper object in a Block scope is decided as blocked
/// ([`FLAG_WALK_INCOMPLETE`]).
pub const MAX_IDENTITY_DEPTH: u32 = 256;
/// Ancestors the identity check of a directory an unlink, rename, link or symlink changes walks
/// up (inside the operation's program, beside its path walk).
pub const MAX_DIR_IDENTITY_DEPTH: u32 = 48;
/// Bytes of the NUL-separated argument list kept per exec.
pub const MAX_ARGS_LEN: usize = 1024;
/// Bytes of a path an LPM rule key holds (the kernel's LPM limit is 256 bytes of data).
pub const PATH_KEY_LEN: usize = 252;
/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;

/// Slots of [`EVENT_LOSS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossCounter {
    /// `bpf_ringbuf_reserve` failed on the host events ring buffer (it was full).
    HostRingbufFull = 0,
    /// The per-thread open scratch map was full: an open in a watched cgroup went unchecked.
    OpenArgsFull = 1,
    /// An identity walk did not reach the top within [`MAX_IDENTITY_DEPTH`] in a Block scope:
    /// the operation was decided as blocked (fail closed).
    WalkIncomplete = 2,
    /// A held operation's record could not be sent (hold ring full): in enforce mode the task
    /// was killed at the call's return (fail closed).
    HoldLost = 3,
}

pub const LOSS_COUNTERS: u32 = 4;

/// Record kinds, the first field of every ring buffer record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    /// A [`crate::net::FlowEvent`] on the network ring buffer.
    Flow = 2,
    Exit = 3,
    File = 4,
    Sock = 5,
    Syscall = 6,
    /// A syscall a rule names, with its arguments and result ([`SyscallArgsEvent`]).
    SyscallArgs = 7,
    /// A [`HoldEvent`] on [`HOLD_EVENTS_MAP`]: a call to decide once it returns.
    Hold = 8,
    /// A [`HoldExit`] on [`HOLD_EVENTS_MAP`]: that call returned (and the task stopped).
    HoldExit = 9,
}

/// What the kernel did about a host event ([`EventHeader::action`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reported because it happened (exec, exit), no policy involved.
    Observed = 0,
    /// A policy with action Audit matched.
    Audit = 1,
    /// A Block policy matched in detect mode: reported, the operation went ahead.
    WouldBlock = 2,
    /// A Block policy matched in enforce mode: the operation did not happen (the bind failed,
    /// or the process was killed before it could use what it asked for).
    Blocked = 3,
    /// A Block policy matched in enforce mode at syscall entry: the process was killed, but
    /// the kernel may still complete that one call (unlink, rename, denied syscalls).
    Killed = 4,
}

/// [`EventHeader::flags`] bits.
pub const FLAG_PATH_TRUNCATED: u32 = 1;
pub const FLAG_PATH2_TRUNCATED: u32 = 1 << 1;
pub const FLAG_ARGS_TRUNCATED: u32 = 1 << 2;
pub const FLAG_CWD_TRUNCATED: u32 = 1 << 3;
/// The event was cut short: the kernel could not read some of its fields.
pub const FLAG_INCOMPLETE: u32 = 1 << 4;
/// The decision matched the object by identity (device and inode), not by its path.
pub const FLAG_IDENTITY: u32 = 1 << 5;
/// The identity walk could not finish: decided as blocked in a Block scope (fail closed).
pub const FLAG_WALK_INCOMPLETE: u32 = 1 << 6;
/// Exec of an interpreted file: the record is about the script the interpreter opened.
pub const FLAG_SCRIPT: u32 = 1 << 7;
/// Decided by the agent after a hold: the task was stopped at the call's return while the
/// agent resolved the path in the task's own view (see [`HoldEvent`]).
pub const FLAG_HELD: u32 = 1 << 8;
/// A held call the agent could not resolve (parent gone, process gone, timeout, record lost):
/// decided closed.
pub const FLAG_HOLD_UNRESOLVED: u32 = 1 << 9;
/// Exec record: the program read the executable's origin; the `FLAG_EXE_*` bits below hold
/// (Falco's `proc.is_exe_from_memfd`, `proc.is_exe_upper_layer`, execve `flags`).
pub const FLAG_EXE_CHECKED: u32 = 1 << 16;
/// Exec record: the executable is a memfd (its dentry's name starts with `memfd:`).
pub const FLAG_EXE_FROM_MEMFD: u32 = 1 << 17;
/// Exec record: the executable's filesystem is overlayfs.
pub const FLAG_EXE_OVERLAY: u32 = 1 << 18;
/// Exec record: the overlay inode has an upper (writable layer) dentry.
pub const FLAG_EXE_UPPER_LAYER: u32 = 1 << 19;
/// `OVERLAYFS_SUPER_MAGIC` (`super_block.s_magic` of an overlay mount).
pub const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// Access kinds of file rules, the index into [`FileMasks`] arrays.
pub const ACCESS_READ: usize = 0;
pub const ACCESS_WRITE: usize = 1;
pub const ACCESS_CREATE: usize = 2;
pub const ACCESS_DELETE: usize = 3;
pub const ACCESS_RENAME: usize = 4;
pub const ACCESS_KINDS: usize = 5;
/// Index of executable rules in [`InodeMasks`] (after the file access kinds).
pub const ACCESS_EXEC: usize = 5;
/// Entries of [`InodeMasks`] arrays: the file access kinds and exec.
pub const INODE_KINDS: usize = 6;

/// [`FileEvent::op`].
pub const FILE_OP_OPEN: u32 = 1;
pub const FILE_OP_UNLINK: u32 = 2;
pub const FILE_OP_RENAME: u32 = 3;
/// `link`/`linkat`: path is the existing file, path2 the new name.
pub const FILE_OP_LINK: u32 = 4;
/// `symlink`/`symlinkat`: path is the new link, path2 its target as given.
pub const FILE_OP_SYMLINK: u32 = 5;
/// `truncate`/`ftruncate`.
pub const FILE_OP_TRUNCATE: u32 = 6;
/// An interpreter opened the `#!` script it was started for ([`FLAG_SCRIPT`]).
pub const FILE_OP_EXEC: u32 = 7;

/// [`SockEvent::op`].
pub const SOCK_OP_BIND: u32 = 1;
pub const SOCK_OP_CONNECT: u32 = 2;

/// Who did it: the first part of every host record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`].
    pub kind: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns()` at the hook.
    pub boot_ns: u64,
    /// cgroup v2 id of the task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// Thread group id (the pid users see) and thread id.
    pub pid: u32,
    pub tid: u32,
    /// Thread group id of the real parent.
    pub ppid: u32,
    /// Real user and group ids (`cred->uid`, `cred->gid`), in the initial user namespace.
    pub uid: u32,
    pub gid: u32,
    /// An [`Action`].
    pub action: u32,
    /// 1 + the index of the deciding policy's bit (0: none).
    pub policy: u32,
    /// Effective user and group ids (`cred->euid`, `cred->egid`): what permission checks use.
    pub euid: u32,
    pub egid: u32,
    /// `task->loginuid` (audit login uid); `u32::MAX` when unset or not compiled in.
    pub loginuid: u32,
    pub comm: [u8; COMM_LEN],
}

/// A process image was replaced (`sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Bytes in use of each buffer (no terminating NUL).
    pub exe_len: u32,
    pub cwd_len: u32,
    pub filename_len: u32,
    pub args_len: u32,
    /// The executable's canonical path (symlinks and `..` resolved), from the task's mm.
    pub exe: [u8; PATH_SLOT_LEN],
    /// The working directory at exec, canonical.
    pub cwd: [u8; PATH_SLOT_LEN],
    /// The path as passed to execve.
    pub filename: [u8; MAX_PATH_LEN],
    /// Arguments, NUL-separated, from the new process's memory.
    pub args: [u8; MAX_ARGS_LEN],
}

/// A thread group ended (`sched_process_exit` of its leader).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExitEvent {
    pub header: EventHeader,
}

/// An open, unlink or rename that a file rule matched.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileEvent {
    pub header: EventHeader,
    /// `FILE_OP_*`.
    pub op: u32,
    /// Bit `1 << ACCESS_*` per access kind the operation asked for.
    pub access: u32,
    pub path_len: u32,
    pub path2_len: u32,
    /// For opens: canonical (resolved from the opened file). For unlink and rename: the
    /// working directory joined with the path given, not normalised by the kernel.
    pub path: [u8; PATH_SLOT_LEN],
    /// Rename's new path; for an open, the path as the process passed it (Falco's
    /// `fd.nameraw`), read at exit from the caller's memory.
    pub path2: [u8; PATH_SLOT_LEN],
    /// An open's flags argument (`O_*`); 0 for other operations.
    pub open_flags: u32,
    /// The descriptor an open returned; -1 for other operations.
    pub fd: i32,
    /// An `openat`'s directory descriptor (`AT_FDCWD` = -100 for the working directory).
    pub dirfd: i32,
    pub _pad: u32,
}

/// A bind or connect from a watched cgroup (`cgroup/bind4|6`, `cgroup/connect4|6`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockEvent {
    pub header: EventHeader,
    /// `SOCK_OP_*`.
    pub op: u32,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub protocol: u32,
    /// AF_INET or AF_INET6.
    pub family: u32,
    /// Host byte order.
    pub port: u32,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
}

/// A syscall a syscall rule names.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallEvent {
    pub header: EventHeader,
    pub nr: u32,
    pub _pad: u32,
}

/// Agent-written settings, including kernel structure offsets read from the running kernel's
/// BTF (the programs walk `task_struct` → `fs_struct`/`mm_struct`/`files_struct` → dentries).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// Generation (0 or 1) of the policy mask half hooks must use.
    pub generation: u32,
    /// 1 in enforce mode: Block policies block. 0: they report would-block.
    pub enforce: u32,
    /// The agent's own thread group id: never reported or blocked.
    pub self_tgid: u32,
    /// 1 once the offsets below are filled in; path walks are skipped until then.
    pub offsets_valid: u32,
    /// Policies (mask bits) forbidding uid 0 at exec, per action.
    pub noroot_audit: u64,
    pub noroot_block: u64,
    /// The full capability set of this kernel (bits 0..=cap_last_cap): a process whose
    /// effective set holds all of it counts as root for noRoot.
    pub cap_full: u64,
    /// Policies (mask bits) with a Block file or executable rule: an identity walk that cannot
    /// finish in their scope fails closed.
    pub walk_block: u64,
    /// Policies (mask bits) with a Block file rule: in their scope a directory-changing call
    /// on a path the kernel cannot decide by identity is held for the agent ([`HoldEvent`]).
    pub hold_block: u64,
    /// 1 while the agent reads [`HOLD_EVENTS_MAP`]: only then are tasks stopped (a stopped
    /// task needs the agent to continue it). 0: such calls match by spelling only.
    pub holds: u32,
    pub _pad: u32,
    pub offsets: KernelOffsets,
}

/// Byte offsets of the kernel structure fields the programs read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_fs: u32,
    pub task_mm: u32,
    pub task_files: u32,
    pub fs_root: u32,
    pub fs_pwd: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_parent: u32,
    pub dentry_name_len: u32,
    pub dentry_name_ptr: u32,
    pub vfsmount_root: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub mm_exe_file: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub file_path: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub task_cred: u32,
    pub cred_euid: u32,
    pub cred_egid: u32,
    pub cred_cap_effective: u32,
    /// `task_struct.loginuid`; `u32::MAX` when the kernel has no audit.
    pub task_loginuid: u32,
    pub dentry_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub binprm_filename: u32,
    pub binprm_interp: u32,
    pub sb_magic: u32,
    /// From an overlay inode (`ovl_inode.vfs_inode`) to `ovl_inode.__upperdentry`;
    /// `u32::MAX` when the kernel's BTF has no `ovl_inode`.
    pub ovl_inode_upper: u32,
    /// `linux_binprm.file` (the BPF-LSM exec hook).
    pub binprm_file: u32,
    /// `file.f_mode` and `file.f_flags` (the BPF-LSM open hook).
    pub file_f_mode: u32,
    pub file_f_flags: u32,
    /// Keeps [`HostConfig`] free of implicit padding.
    pub _pad: u32,
}

/// Which policies audit and which block; both halves of the generation split are kept.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleMasks {
    pub audit: u64,
    pub block: u64,
}

/// [`RuleMasks`] per access kind (`ACCESS_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileMasks {
    pub audit: [u64; ACCESS_KINDS],
    pub block: [u64; ACCESS_KINDS],
    /// Rules-engine interest (any access): reported as `Action::Observed` when no policy
    /// audits or blocks the open.
    pub observe: u64,
}

/// Data of an LPM key over a path: prefix rules use the path's length in bits; exact rules
/// include the terminating NUL.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathKey {
    pub path: [u8; PATH_KEY_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BindKey {
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub protocol: u16,
    /// Host byte order.
    pub port: u16,
}

/// An object by identity: inode number and device (`sb->s_dev`, the kernel's encoding
/// `major << 20 | minor`), and the role the entry plays.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeKey {
    pub ino: u64,
    pub dev: u32,
    /// [`ROLE_SELF`]: masks for this object itself; [`ROLE_BELOW`]: for objects below it.
    pub role: u32,
}

pub const ROLE_SELF: u32 = 0;
pub const ROLE_BELOW: u32 = 1;

/// Policy masks per access kind (`ACCESS_*`, then [`ACCESS_EXEC`]). An entry holds the masks
/// of every rule covering the object (enclosing trees folded in by the agent), so the kernel
/// stops at the first entry it finds walking up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeMasks {
    pub audit: [u64; INODE_KINDS],
    pub block: [u64; INODE_KINDS],
}

/// What the rules want of one syscall: the cgroups (the rules' bit in both generations) and
/// which arguments are user strings to copy (bit i: argument i; the first two are copied).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallInterest {
    pub observe: u64,
    pub strings: u32,
    pub _pad: u32,
}

/// A rule-watched syscall's arguments, kept from entry to exit (per thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SavedSyscall {
    pub nr: u32,
    pub strings: u32,
    pub args: [u64; 6],
}

/// A syscall a rule names: number, raw arguments, result, and up to two string arguments
/// (read from the caller's memory at exit).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallArgsEvent {
    pub header: EventHeader,
    pub nr: u32,
    /// Which arguments `strs` hold (bit i: argument i), in argument order.
    pub str_mask: u32,
    /// The syscall's return value.
    pub ret: i64,
    pub args: [u64; 6],
    pub str_len: [u32; 2],
    pub strs: [[u8; SYSCALL_STR_LEN]; 2],
}

/// A directory-changing call (unlink, rmdir, rename, link, symlink, truncate) in the scope of a
/// Block file rule whose path the kernel cannot decide by identity (several components, or
/// absolute): sent at the call's entry, with its paths as the task gave them. In enforce mode
/// the task is stopped (`SIGSTOP`) when the call returns successfully ([`HoldExit`]); the
/// agent resolves each path's parent directory in the task's own view (its root, working
/// directory or directory descriptor, checked against the identities below), compares it with
/// the protected identities, then kills the task or continues it (`SIGCONT`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HoldEvent {
    /// The record as a file event (`header.kind` is [`EventKind::Hold`]).
    pub file: FileEvent,
    /// The task's policy scope (live generation).
    pub scope: u64,
    /// Per path: the identity of the directory a relative path starts from (0 when absolute).
    pub base_ino: [u64; 2],
    pub base_dev: [u32; 2],
    /// Per path: the directory descriptor argument (`AT_FDCWD` = -100: the working directory).
    pub dfd: [i32; 2],
    /// Per path: `1 << ACCESS_*` kinds the call asks for (0: no such path).
    pub kinds: [u32; 2],
    /// Per path: bytes of `file.path`/`file.path2` the starting directory's own path takes
    /// (the path as given follows); 0 when absolute or when only the given part is there.
    pub base_len: [u32; 2],
}

/// A held call returned ([`EventKind::HoldExit`] on [`HOLD_EVENTS_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HoldExit {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    /// 1: the task was sent `SIGSTOP` (enforce mode, the call succeeded).
    pub stopped: u32,
    /// The call's return value.
    pub ret: i64,
    pub boot_ns: u64,
}

/// What sys_enter_openat saw, for sys_exit_openat.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenArgs {
    pub scope: u64,
    pub access: u32,
    /// The open's flags argument.
    pub flags: u32,
    /// The caller's pathname pointer (user memory), read again at exit for `fd.nameraw`.
    pub filename: u64,
    /// `openat`'s directory descriptor; `AT_FDCWD` (-100) for the others.
    pub dirfd: i32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, every field is an integer or byte array, no padding (checked below).
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::ExitEvent {}
    unsafe impl aya::Pod for super::FileEvent {}
    unsafe impl aya::Pod for super::SockEvent {}
    unsafe impl aya::Pod for super::SyscallEvent {}
    unsafe impl aya::Pod for super::HostConfig {}
    unsafe impl aya::Pod for super::RuleMasks {}
    unsafe impl aya::Pod for super::FileMasks {}
    unsafe impl aya::Pod for super::PathKey {}
    unsafe impl aya::Pod for super::BindKey {}
    unsafe impl aya::Pod for super::OpenArgs {}
    unsafe impl aya::Pod for super::SyscallInterest {}
    unsafe impl aya::Pod for super::SavedSyscall {}
    unsafe impl aya::Pod for super::SyscallArgsEvent {}
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::InodeMasks {}
    unsafe impl aya::Pod for super::HoldEvent {}
    unsafe impl aya::Pod for super::HoldExit {}
}

// No implicit padding: each size equals the sum of its fields.
const _: () = assert!(core::mem::size_of::<EventHeader>() == 4 * 2 + 8 * 2 + 4 * 10 + COMM_LEN);
const _: () = assert!(
    core::mem::size_of::<ExecEvent>()
        == core::mem::size_of::<EventHeader>()
            + 16
            + 2 * PATH_SLOT_LEN
            + MAX_PATH_LEN
            + MAX_ARGS_LEN
);
const _: () = assert!(
    core::mem::size_of::<FileEvent>()
        == core::mem::size_of::<EventHeader>() + 16 + 2 * PATH_SLOT_LEN + 16
);
const _: () =
    assert!(core::mem::size_of::<SockEvent>() == core::mem::size_of::<EventHeader>() + 32);
const _: () = assert!(core::mem::size_of::<HostConfig>() == 64 + 40 * 4);
const _: () = assert!(
    core::mem::size_of::<HoldEvent>() == core::mem::size_of::<FileEvent>() + 8 + 16 + 8 * 4
);
const _: () = assert!(core::mem::size_of::<HoldExit>() == 32);
const _: () = assert!(core::mem::size_of::<InodeKey>() == 16);
const _: () = assert!(core::mem::size_of::<PathKey>() == PATH_KEY_LEN);
