//! Process execution: `sched/sched_process_exec` → [`ExecEvent`] in the host ring buffer.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use sensor_common::host::{
    COMM_LEN, EXEC_FLAG_PATH_TRUNCATED, EventKind, ExecEvent, HOST_EVENTS_BYTES, LOSS_COUNTERS,
    LossCounter, MAX_PATH_LEN,
};

#[map]
static HOST_EVENTS: RingBuf = RingBuf::with_byte_size(HOST_EVENTS_BYTES, 0);

#[map]
static EVENT_LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_COUNTERS, 0);

/// Offset of `__data_loc char[] filename` in the tracepoint record (tracefs `format` file).
const FILENAME_DATA_LOC: usize = 8;

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let Some(mut entry) = HOST_EVENTS.reserve::<ExecEvent>(0) else {
        count_loss(LossCounter::HostRingbufFull);
        warn!(&ctx, "host event ring buffer full: exec event lost");
        return 0;
    };
    let event = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: `event` points at reserved ring buffer memory of `size_of::<ExecEvent>()` bytes;
    // every field is written before submit.
    unsafe {
        (*event).kind = EventKind::Exec as u32;
        (*event).flags = 0;
        (*event).boot_ns = bpf_ktime_get_boot_ns();
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).pid = (pid_tgid >> 32) as u32;
        (*event).tid = pid_tgid as u32;
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).comm = ctx.command().unwrap_or([0; COMM_LEN]);
        (*event)._pad = 0;
        let (len, truncated) = read_filename(&ctx, &mut (*event).filename);
        (*event).filename_len = len;
        if truncated {
            (*event).flags |= EXEC_FLAG_PATH_TRUNCATED;
        }
    }
    entry.submit(0);
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
    match unsafe { bpf_probe_read_kernel_str_bytes(src, dst) } {
        Ok(bytes) => (bytes.len() as u32, src_len > MAX_PATH_LEN),
        Err(_) => (0, false),
    }
}

#[inline(always)]
fn count_loss(counter: LossCounter) {
    if let Some(slot) = EVENT_LOSS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *slot += 1 };
    }
}
