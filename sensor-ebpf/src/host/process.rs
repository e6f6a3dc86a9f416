//! Process start and end: `sched/sched_process_exec` (with executable, working directory and
//! arguments read from the new image) and `sched/sched_process_exit`. Exec is where forbidden
//! executables and root processes are killed, before their first instruction.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user},
    macros::{map, raw_tracepoint, tracepoint},
    maps::PerCpuArray,
    programs::{RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use sensor_common::host::{
    ACCESS_EXEC, Action, EventKind, ExecEvent, ExitEvent, FLAG_ARGS_TRUNCATED, FLAG_CWD_TRUNCATED,
    FLAG_EXE_CHECKED, FLAG_EXE_FROM_MEMFD, FLAG_EXE_OVERLAY, FLAG_EXE_UPPER_LAYER,
    FLAG_PATH_TRUNCATED, KernelOffsets, MAX_ARGS_LEN, MAX_PATH_LEN, OVERLAYFS_SUPER_MAGIC,
};

use super::{
    EXEC_RULES, HOST_SCOPES, SCRIPT_PENDING, add_identity, config, decide, emit, fill_header,
    generation_mask, kill_current,
    path::{KPath, current_task, field_ptr, field_u64, lookup_key, task_root_and_pwd, write_path},
};

/// The executable's `struct file`, the key of its identity result.
#[derive(Clone, Copy)]
struct ExeFile {
    file: *const u8,
}

#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// What `exec_path` wrote into [`EXEC_SCRATCH`]'s `exe`, for the same hook call.
#[repr(C)]
struct ExePathSlot {
    pid_tgid: u64,
    file: u64,
    len: u32,
    truncated: u32,
    /// `FLAG_EXE_*` bits for the executable ([`exe_origin`]).
    origin: u32,
    _pad: u32,
}

#[map]
static EXE_PATH_SLOT: PerCpuArray<ExePathSlot> = PerCpuArray::with_max_entries(1, 0);

/// Raw `sched_process_exec`, attached before [`sched_process_exec`]: writes the executable's
/// canonical path into the exec record's scratch (a path walk of its own: the recording
/// program's budget holds only the working directory's).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn exec_path(_ctx: RawTracePointContext) -> i32 {
    let Some(config) = config() else {
        return 0;
    };
    if config.offsets_valid != 1 || (bpf_get_current_pid_tgid() >> 32) as u32 == config.self_tgid {
        return 0;
    }
    let (Some(event), Some(slot)) = (EXEC_SCRATCH.get_ptr_mut(0), EXE_PATH_SLOT.get_ptr_mut(0))
    else {
        return 0;
    };
    // SAFETY: per-CPU scratch and slot, handed to the next program of this hook call.
    let (event, slot) = unsafe { (&mut *event, &mut *slot) };
    let o = &config.offsets;
    let mm = field_ptr(current_task(), o.task_mm);
    let exe_file = field_ptr(mm, o.mm_exe_file);
    if exe_file.is_null() {
        return 0;
    }
    let (root, _) = task_root_and_pwd(o);
    let exe = KPath::at(o, exe_file.wrapping_add(o.file_path as usize));
    let (len, cut) = write_path(o, exe, root, &mut event.exe);
    slot.pid_tgid = bpf_get_current_pid_tgid();
    slot.file = exe_file as u64;
    slot.len = len;
    slot.truncated = u32::from(cut);
    slot.origin = exe_origin(o, exe_file);
    0
}

/// Where the executable comes from, as Falco's execve `flags` say: a memfd (the dentry name
/// `memfd_create` gives, `memfd:NAME`), an overlay's upper (container-written) layer or a
/// lower one. `FLAG_EXE_CHECKED` when the dentry could be read.
#[inline(always)]
fn exe_origin(o: &KernelOffsets, exe_file: *const u8) -> u32 {
    let dentry = field_ptr(exe_file, o.file_path + o.path_dentry);
    if dentry.is_null() {
        return 0;
    }
    let mut flags = FLAG_EXE_CHECKED;
    let name = field_ptr(dentry, o.dentry_name_ptr);
    let mut prefix = [0_u8; 6];
    // SAFETY: the helper checks the kernel address and bounds the copy by `prefix`.
    if !name.is_null()
        && unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_buf(name, &mut prefix) }.is_ok()
        && prefix == *b"memfd:"
    {
        flags |= FLAG_EXE_FROM_MEMFD;
    }
    let inode = field_ptr(dentry, o.dentry_inode);
    let sb = field_ptr(inode, o.inode_sb);
    if !sb.is_null() && field_u64(sb, o.sb_magic) == Some(OVERLAYFS_SUPER_MAGIC) {
        flags |= FLAG_EXE_OVERLAY;
        if o.ovl_inode_upper != u32::MAX && !field_ptr(inode, o.ovl_inode_upper).is_null() {
            flags |= FLAG_EXE_UPPER_LAYER;
        }
    }
    flags
}

/// The executable path `exec_path` left for `file` in this hook call: length, cut flag and
/// the executable's `FLAG_EXE_*` origin bits.
#[inline(always)]
fn take_exe_path(file: *const u8) -> Option<(u32, bool, u32)> {
    let slot = EXE_PATH_SLOT.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, read and cleared by the program of the same hook call.
    let slot = unsafe { &mut *slot };
    if slot.pid_tgid != bpf_get_current_pid_tgid() || slot.file != file as u64 {
        return None;
    }
    slot.pid_tgid = 0;
    Some((slot.len, slot.truncated != 0, slot.origin))
}

/// Raw `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`:
/// the new image is in place (credentials committed), its first instruction not yet run.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let Some(event) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, used by this program only until it returns.
    let event = unsafe { &mut *event };
    let Some(config) = config() else {
        return 0;
    };
    if (bpf_get_current_pid_tgid() >> 32) as u32 == config.self_tgid {
        return 0;
    }
    fill_header(&mut event.header, EventKind::Exec as u32, Action::Observed, 0);
    event.filename_len = 0;
    event.exe_len = 0;
    event.cwd_len = 0;
    event.args_len = 0;
    let mut interpreted = false;
    let mut exe_path = None;
    if config.offsets_valid == 1 {
        let o = &config.offsets;
        let bprm: *const u8 = ctx.arg::<u64>(2) as *const u8;
        let filename = field_ptr(bprm, o.binprm_filename);
        // binfmt_script and binfmt_misc set `interp` to the interpreter they run instead.
        interpreted = !filename.is_null() && filename != field_ptr(bprm, o.binprm_interp);
        let (filename_len, filename_cut) = read_filename(filename, &mut event.filename);
        event.filename_len = filename_len;
        if filename_cut {
            event.header.flags |= FLAG_PATH_TRUNCATED;
        }
        let task = current_task();
        let (root, pwd) = task_root_and_pwd(o);
        let mm = field_ptr(task, o.task_mm);
        let exe_file = field_ptr(mm, o.mm_exe_file);
        // `exec_path` wrote the executable's path into this scratch just before.
        if !exe_file.is_null()
            && let Some((len, cut, origin)) = take_exe_path(exe_file)
        {
            event.exe_len = len;
            event.header.flags |= origin;
            if cut {
                event.header.flags |= FLAG_PATH_TRUNCATED;
            }
        }
        if !exe_file.is_null() {
            exe_path = Some(ExeFile { file: exe_file });
        }
        let (len, cut) = write_path(o, pwd, root, &mut event.cwd);
        event.cwd_len = len;
        if cut {
            event.header.flags |= FLAG_CWD_TRUNCATED;
        }
        read_args(o, mm, event);
    }

    // Forbidden executables and root in a selected container: decided here, killed here.
    let cgroup_id = event.header.cgroup_id;
    // SAFETY: the value is a plain u64 copied out at once.
    let scope =
        unsafe { HOST_SCOPES.get(&cgroup_id) }.copied().unwrap_or(0) & generation_mask(config);
    let tgid = event.header.pid;
    if interpreted && scope != 0 {
        // The script itself is not open any more: its interpreter's open of it is checked.
        let _ = SCRIPT_PENDING.insert(&tgid, &scope, 0);
    } else {
        let _ = SCRIPT_PENDING.remove(&tgid);
    }
    if scope != 0 {
        let mut acc = (0_u64, 0_u64, 0_u32);
        if let Some(key) = lookup_key(event.exe.as_ptr(), event.exe_len)
            && let Some(masks) = EXEC_RULES.get(key)
        {
            acc.0 |= masks.audit;
            acc.1 |= masks.block;
        }
        if event.filename[0] == b'/'
            && let Some(key) = lookup_key(event.filename.as_ptr(), event.filename_len)
            && let Some(masks) = EXEC_RULES.get(key)
        {
            acc.0 |= masks.audit;
            acc.1 |= masks.block;
        }
        if let Some(exe) = exe_path {
            // The executable as an object: any name, hard link, bind mount or descriptor.
            // Checked by `exec_identity` just before this program (its own verifier budget).
            if let Some(identity) = super::identity::take(exe.file) {
                add_identity(config, scope, &identity, 1 << ACCESS_EXEC, &mut acc);
            }
        }
        event.header.flags |= acc.2;
        let mut verdict = decide(config, scope, acc.0, acc.1);
        // Root as the kernel checks it: effective uid 0, real uid 0, or every capability.
        let caps = super::current_caps(config);
        let root = event.header.euid == 0
            || event.header.uid == 0
            || (config.cap_full != 0 && caps & config.cap_full == config.cap_full);
        if verdict.is_none() && root {
            verdict = decide(config, scope, config.noroot_audit, config.noroot_block);
        }
        if let Some((action, policy)) = verdict {
            event.header.action = action as u32;
            event.header.policy = policy;
            if action == Action::Blocked {
                kill_current();
            }
        }
    }
    emit(event);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Only the thread group's end matters to the agent's process table.
    if (pid_tgid >> 32) as u32 != pid_tgid as u32 {
        return 0;
    }
    let Some(config) = config() else {
        return 0;
    };
    if (pid_tgid >> 32) as u32 == config.self_tgid {
        return 0;
    }
    let _ = SCRIPT_PENDING.remove(&((pid_tgid >> 32) as u32));
    let mut event = ExitEvent { header: Default::default() };
    fill_header(&mut event.header, EventKind::Exit as u32, Action::Observed, 0);
    if !emit(&event) {
        // Counted in EVENT_LOSS; the log line tells an operator why host events have gaps.
        // (Logged here: the exec program is near the verifier's budget.)
        warn!(&ctx, "host event ring buffer full: events lost");
    }
    0
}

/// Copies `bprm->filename` (the name exec was given) into `dst`; returns its length and
/// whether it was cut.
#[inline(always)]
fn read_filename(src: *const u8, dst: &mut [u8; MAX_PATH_LEN]) -> (u32, bool) {
    if src.is_null() {
        return (0, false);
    }
    // SAFETY: the helper bounds the copy by `dst` and checks the source address.
    match unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(src, dst) } {
        Ok(bytes) => (bytes.len() as u32, bytes.len() + 1 >= MAX_PATH_LEN),
        Err(_) => (0, false),
    }
}

/// Copies the new image's argument area (NUL-separated strings) from its memory.
#[inline(always)]
fn read_args(o: &sensor_common::host::KernelOffsets, mm: *const u8, event: &mut ExecEvent) {
    let (Some(start), Some(end)) = (field_u64(mm, o.mm_arg_start), field_u64(mm, o.mm_arg_end))
    else {
        return;
    };
    if end <= start {
        return;
    }
    let mut len = end - start;
    if len > MAX_ARGS_LEN as u64 {
        len = MAX_ARGS_LEN as u64;
        event.header.flags |= FLAG_ARGS_TRUNCATED;
    }
    let len = len as u32 & (MAX_ARGS_LEN as u32 * 2 - 1);
    if len > MAX_ARGS_LEN as u32 {
        return;
    }
    // SAFETY: copies at most MAX_ARGS_LEN bytes of user memory into the args buffer.
    let ok = unsafe {
        bpf_probe_read_user(event.args.as_mut_ptr().cast::<c_void>(), len, start as *const c_void)
    } == 0;
    event.args_len = if ok { len } else { 0 };
}
