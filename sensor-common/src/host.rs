//! Host events: process execution, sent through a ring buffer.

/// Ring buffer carrying [`ExecEvent`] records.
pub const HOST_EVENTS_MAP: &str = "HOST_EVENTS";
/// Default size of [`HOST_EVENTS_MAP`] in bytes (power of two, multiple of the page size).
pub const HOST_EVENTS_BYTES: u32 = 1 << 22;
/// Per-CPU array of u64, indexed by [`LossCounter`]: events the kernel could not hand over.
pub const EVENT_LOSS_MAP: &str = "EVENT_LOSS";

/// Bytes of executable path kept per event; longer paths are truncated and flagged.
pub const MAX_PATH_LEN: usize = 512;
/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;

/// Slots of [`EVENT_LOSS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossCounter {
    /// `bpf_ringbuf_reserve` failed on the host events ring buffer (it was full).
    HostRingbufFull = 0,
}

pub const LOSS_COUNTERS: u32 = 1;

/// Record kinds, the first field of every ring buffer record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    /// A [`crate::net::FlowEvent`] on the network ring buffer.
    Flow = 2,
}

/// Bit set in [`ExecEvent::flags`] when `filename` was cut at [`MAX_PATH_LEN`].
pub const EXEC_FLAG_PATH_TRUNCATED: u32 = 1;

/// One `sched_process_exec`: a process image was replaced.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    /// Always [`EventKind::Exec`].
    pub kind: u32,
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns()` at the hook: nanoseconds since boot, suspend included.
    pub boot_ns: u64,
    /// cgroup v2 id of the task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// Thread group id (the pid users see).
    pub pid: u32,
    /// Thread id that called execve.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of `filename` in use, without the terminating NUL.
    pub filename_len: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
    /// The path passed to execve (as the kernel resolved it for the binary handler).
    pub filename: [u8; MAX_PATH_LEN],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, every field is an integer or byte array, no padding (checked below).
    unsafe impl aya::Pod for super::ExecEvent {}
}

// The layout has no implicit padding: the sum of the fields equals the size.
const _: () =
    assert!(core::mem::size_of::<ExecEvent>() == 4 * 2 + 8 * 2 + 4 * 6 + COMM_LEN + MAX_PATH_LEN);
