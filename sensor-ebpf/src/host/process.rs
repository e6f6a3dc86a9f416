//! Process start and end: `sched/sched_process_exec` (with executable, working directory and
//! arguments read from the new image) and `sched/sched_process_exit`. Exec is where forbidden
//! executables and root processes are killed, before their first instruction.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use sensor_common::host::{
    Action, EventKind, ExecEvent, ExitEvent, FLAG_ARGS_TRUNCATED, FLAG_CWD_TRUNCATED,
    FLAG_PATH_TRUNCATED, MAX_ARGS_LEN, MAX_PATH_LEN,
};

use super::{
    EXEC_RULES, HOST_SCOPES, config, decide, emit, fill_header, generation_mask, kill_current,
    path::{
        KPath, current_task, field_ptr, field_u32, field_u64, lookup_key, task_root_and_pwd,
        write_path,
    },
};

#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// Offset of `__data_loc char[] filename` in the tracepoint record (tracefs `format` file).
const FILENAME_DATA_LOC: usize = 8;

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
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
    let (filename_len, filename_cut) = read_filename(&ctx, &mut event.filename);
    event.filename_len = filename_len;
    if filename_cut {
        event.header.flags |= FLAG_PATH_TRUNCATED;
    }
    event.exe_len = 0;
    event.cwd_len = 0;
    event.args_len = 0;
    if config.offsets_valid == 1 {
        let o = &config.offsets;
        let task = current_task();
        let parent = field_ptr(task, o.task_real_parent);
        event.header.ppid = field_u32(parent, o.task_tgid).unwrap_or(0);
        let (root, pwd) = task_root_and_pwd(o);
        let mm = field_ptr(task, o.task_mm);
        let exe_file = field_ptr(mm, o.mm_exe_file);
        if !exe_file.is_null() {
            let exe = KPath::at(o, exe_file.wrapping_add(o.file_path as usize));
            let (len, cut) = write_path(o, exe, root, &mut event.exe);
            event.exe_len = len;
            if cut {
                event.header.flags |= FLAG_PATH_TRUNCATED;
            }
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
    if scope != 0 {
        let mut verdict = None;
        if let Some(key) = lookup_key(event.exe.as_ptr(), event.exe_len)
            && let Some(masks) = EXEC_RULES.get(key)
        {
            verdict = decide(config, scope, masks.audit, masks.block);
        }
        if verdict.is_none()
            && event.filename[0] == b'/'
            && let Some(key) = lookup_key(event.filename.as_ptr(), event.filename_len)
            && let Some(masks) = EXEC_RULES.get(key)
        {
            verdict = decide(config, scope, masks.audit, masks.block);
        }
        if verdict.is_none() && event.header.uid == 0 {
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
    let mut event = ExitEvent { header: Default::default() };
    fill_header(&mut event.header, EventKind::Exit as u32, Action::Observed, 0);
    if !emit(&event) {
        // Counted in EVENT_LOSS; the log line tells an operator why host events have gaps.
        // (Logged here: the exec program is near the verifier's budget.)
        warn!(&ctx, "host event ring buffer full: events lost");
    }
    0
}

/// Copies the tracepoint's filename into `dst`; returns its length and whether it was cut.
#[inline(always)]
fn read_filename(ctx: &TracePointContext, dst: &mut [u8; MAX_PATH_LEN]) -> (u32, bool) {
    // SAFETY: the tracepoint record has a u32 __data_loc at this offset (checked in tracefs).
    let Ok(data_loc) = (unsafe { ctx.read_at::<u32>(FILENAME_DATA_LOC) }) else {
        return (0, false);
    };
    let offset = (data_loc & 0xffff) as usize;
    let src_len = (data_loc >> 16) as usize; // includes the NUL
    // SAFETY: offset and length come from the kernel's own record; the helper bounds the copy.
    let src = unsafe { ctx.as_ptr().cast::<u8>().add(offset) };
    match unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(src, dst) } {
        Ok(bytes) => (bytes.len() as u32, src_len > MAX_PATH_LEN),
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
