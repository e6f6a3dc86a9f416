//! Host hooks: process exec and exit, file opens, unlinks and renames, binds and connects,
//! and denied syscalls, each scoped by the cgroup's policy mask before any other work.

mod hold;
mod identity;
mod lsm;
mod path;
mod process;
mod sock;
mod syscalls;
mod unlink;

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, generated::bpf_send_signal,
    },
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::host::{
    Action, BIND_RULES_MAX_ENTRIES, BindKey, EventHeader, FileMasks, HOLD_EVENTS_BYTES,
    HOLD_PENDING_MAX_ENTRIES, HOST_EVENTS_BYTES, HOST_SCOPES_MAX_ENTRIES, HostConfig,
    INODE_RULES_MAX_ENTRIES, InodeKey, InodeMasks, LOSS_COUNTERS, LossCounter, OpenArgs,
    PATH_RULES_MAX_ENTRIES, PathKey, RuleMasks, SCRIPT_PENDING_MAX_ENTRIES,
    SYSCALL_RULES_MAX_ENTRIES,
};

#[map]
static HOST_EVENTS: RingBuf = RingBuf::with_byte_size(HOST_EVENTS_BYTES, 0);

#[map]
static EVENT_LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_COUNTERS, 0);

#[map]
static HOST_CONFIG: Array<HostConfig> = Array::with_max_entries(1, 0);

#[map]
static HOST_SCOPES: HashMap<u64, u64> = HashMap::with_max_entries(HOST_SCOPES_MAX_ENTRIES, 0);

#[map]
static EXEC_RULES: LpmTrie<PathKey, RuleMasks> =
    LpmTrie::with_max_entries(PATH_RULES_MAX_ENTRIES, 0);

#[map]
static FILE_RULES: LpmTrie<PathKey, FileMasks> =
    LpmTrie::with_max_entries(PATH_RULES_MAX_ENTRIES, 0);

#[map]
static BIND_RULES: HashMap<BindKey, RuleMasks> =
    HashMap::with_max_entries(BIND_RULES_MAX_ENTRIES, 0);

#[map]
static SYSCALL_RULES: HashMap<u32, RuleMasks> =
    HashMap::with_max_entries(SYSCALL_RULES_MAX_ENTRIES, 0);

#[map]
static OPEN_ARGS: HashMap<u32, OpenArgs> = HashMap::with_max_entries(8192, 0);

#[map]
static INODE_RULES: HashMap<InodeKey, InodeMasks> =
    HashMap::with_max_entries(INODE_RULES_MAX_ENTRIES, 0);

#[map]
static HOLD_EVENTS: RingBuf = RingBuf::with_byte_size(HOLD_EVENTS_BYTES, 0);

#[map]
static HOLD_PENDING: LruHashMap<u32, u32> =
    LruHashMap::with_max_entries(HOLD_PENDING_MAX_ENTRIES, 0);

#[map]
static SCRIPT_PENDING: HashMap<u32, u64> = HashMap::with_max_entries(SCRIPT_PENDING_MAX_ENTRIES, 0);

const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;

#[inline(always)]
fn config() -> Option<&'static HostConfig> {
    HOST_CONFIG.get(0)
}

/// The prologue of the path-walking hooks: the config once the kernel offsets are known, and
/// the policies watching the current task (None: nothing to do).
#[inline(always)]
fn scoped_config() -> Option<(&'static HostConfig, u64)> {
    let config = config()?;
    if config.offsets_valid != 1 {
        return None;
    }
    Some((config, current_scope(config)?))
}

/// The live generation's half of a policy mask.
#[inline(always)]
fn generation_mask(config: &HostConfig) -> u64 {
    if config.generation == 0 { 0xffff_ffff } else { 0xffff_ffff << 32 }
}

/// The policies watching the current task, or None when none do (or it is the agent).
#[inline(always)]
fn current_scope(config: &HostConfig) -> Option<u64> {
    // SAFETY: the helper has no preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is a plain u64 copied out at once.
    let scope = unsafe { HOST_SCOPES.get(&cgroup_id) }.copied()? & generation_mask(config);
    if scope == 0 || (bpf_get_current_pid_tgid() >> 32) as u32 == config.self_tgid {
        return None;
    }
    Some(scope)
}

/// A matched rule's outcome for a task with `scope`: the action and 1 + the policy bit.
#[inline(always)]
fn decide(config: &HostConfig, scope: u64, audit: u64, block: u64) -> Option<(Action, u32)> {
    let block = block & scope;
    let audit = audit & scope;
    if block != 0 {
        let action = if config.enforce == 1 { Action::Blocked } else { Action::WouldBlock };
        Some((action, lowest_bit(block)))
    } else if audit != 0 {
        Some((Action::Audit, lowest_bit(audit)))
    } else {
        None
    }
}

/// 1 + index of the lowest set bit (the mask is non-zero).
#[inline(always)]
fn lowest_bit(mask: u64) -> u32 {
    let mut i = 0;
    while i < 64 {
        if mask & (1 << i) != 0 {
            return i + 1;
        }
        i += 1;
    }
    0
}

/// Fills the fields of `header` every host record shares.
#[inline(always)]
fn fill_header(header: &mut EventHeader, kind: u32, action: Action, policy: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    header.kind = kind;
    header.flags = 0;
    // SAFETY: the helpers have no preconditions.
    (header.boot_ns, header.cgroup_id) =
        unsafe { (bpf_ktime_get_boot_ns(), bpf_get_current_cgroup_id()) };
    header.pid = (pid_tgid >> 32) as u32;
    header.tid = pid_tgid as u32;
    header.uid = uid_gid as u32;
    header.gid = (uid_gid >> 32) as u32;
    header.action = action as u32;
    header.policy = policy;
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let creds = config().filter(|c| c.offsets_valid == 1).map(|c| task_creds(&c.offsets));
    let creds = creds.unwrap_or(TaskCreds {
        ppid: 0,
        euid: u32::MAX,
        egid: u32::MAX,
        loginuid: u32::MAX,
        caps: 0,
    });
    header.ppid = creds.ppid;
    header.euid = creds.euid;
    header.egid = creds.egid;
    header.loginuid = creds.loginuid;
}

/// The current task's parent and credentials as the kernel checks them.
#[derive(Clone, Copy)]
pub struct TaskCreds {
    /// Thread group id of the real parent.
    pub ppid: u32,
    pub euid: u32,
    pub egid: u32,
    pub loginuid: u32,
    /// `cred->cap_effective`.
    pub caps: u64,
}

#[inline(always)]
fn task_creds(o: &sensor_common::host::KernelOffsets) -> TaskCreds {
    use path::{current_task, field_ptr, field_u32, field_u64};
    let task = current_task();
    let parent = field_ptr(task, o.task_real_parent);
    let cred = field_ptr(task, o.task_cred);
    TaskCreds {
        ppid: field_u32(parent, o.task_tgid).unwrap_or(0),
        euid: field_u32(cred, o.cred_euid).unwrap_or(u32::MAX),
        egid: field_u32(cred, o.cred_egid).unwrap_or(u32::MAX),
        loginuid: if o.task_loginuid == u32::MAX {
            u32::MAX
        } else {
            field_u32(task, o.task_loginuid).unwrap_or(u32::MAX)
        },
        caps: field_u64(cred, o.cred_cap_effective).unwrap_or(0),
    }
}

/// Kills the current process (before it returns to user space) for a Blocked action.
#[inline(always)]
fn kill_current() {
    // SAFETY: the helper takes a signal number and acts on the current task only.
    unsafe { bpf_send_signal(SIGKILL) };
}

/// Copies `record` into the ring buffer, counting a loss when it is full; false then.
#[inline(always)]
fn emit<T>(record: &T) -> bool {
    if HOST_EVENTS.output(record, 0).is_err() {
        count_loss(LossCounter::HostRingbufFull);
        return false;
    }
    true
}

#[inline(always)]
fn count_loss(counter: LossCounter) {
    if let Some(slot) = EVENT_LOSS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *slot += 1 };
    }
}

/// The audit and block masks an identity entry holds for the kinds in `kinds`
/// (`1 << ACCESS_*`, `1 << ACCESS_EXEC`).
#[inline(always)]
fn inode_masks_for(masks: &InodeMasks, kinds: u32) -> (u64, u64) {
    let (mut audit, mut block) = (0, 0);
    let mut kind = 0;
    while kind < sensor_common::host::INODE_KINDS {
        // Branch-free: an unknown `kinds` would otherwise fork the verifier's states per kind.
        let select = u64::from((kinds >> kind) & 1).wrapping_neg();
        audit |= masks.audit[kind] & select;
        block |= masks.block[kind] & select;
        kind += 1;
    }
    (audit, block)
}

/// Adds what an identity check found to `(audit, block, flags)`: the entry's masks, or, when
/// the walk could not finish, every Block policy of the scope (fail closed, flagged, counted).
#[inline(always)]
fn add_identity(
    config: &HostConfig,
    scope: u64,
    identity: &path::Identity,
    kinds: u32,
    acc: &mut (u64, u64, u32),
) {
    use sensor_common::host::{FLAG_IDENTITY, FLAG_WALK_INCOMPLETE};
    if let Some(masks) = identity.masks {
        let (audit, block) = inode_masks_for(masks, kinds);
        if (audit | block) & scope != 0 {
            acc.0 |= audit;
            acc.1 |= block;
            acc.2 |= FLAG_IDENTITY;
        }
    } else if !identity.complete && config.walk_block & scope != 0 {
        acc.1 |= config.walk_block;
        acc.2 |= FLAG_WALK_INCOMPLETE;
        count_loss(LossCounter::WalkIncomplete);
    }
}

/// The current task's effective capabilities (0 before the offsets are known).
#[inline(always)]
fn current_caps(config: &HostConfig) -> u64 {
    if config.offsets_valid != 1 {
        return 0;
    }
    task_creds(&config.offsets).caps
}
