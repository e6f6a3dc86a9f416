//! Batched map writes: `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (Linux 5.6+; LPM
//! tries through the kernel's generic batch ops), one `bpf()` call for many entries instead of
//! one per entry. aya 0.16 has no batch API, so the two commands are issued here with the
//! `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
//!
//! A kernel or map type without batch ops answers `EINVAL` (or `ENOTSUPP`/`EOPNOTSUPP`):
//! callers fall back to one call per entry ([`is_unsupported`]).

use std::{io, mem::size_of, os::fd::RawFd};

const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// The kernel's internal `ENOTSUPP`, which batch ops of some map types return to userspace.
const ENOTSUPP: i32 = 524;

/// `union bpf_attr`'s `batch` member (fields in the kernel's order).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Whether `err` says the map type (or the kernel) has no batch ops.
pub fn is_unsupported(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP))
}

/// Writes `keys[i] → values[i]` in one call (`elem_flags` 0: create or replace).
///
/// `K` and `V` must be the map's key and value layouts exactly (`repr(C)`, the map's
/// `key_size` and `value_size`), as for a single-element update.
///
/// # Errors
/// The kernel's error; entries before the failing one are written.
pub fn update<K: Copy, V: Copy>(fd: RawFd, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: count(keys.len())?,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    call(BPF_MAP_UPDATE_BATCH, &mut attr)
}

/// Deletes `keys` in one call.
///
/// # Errors
/// The kernel's error (`ENOENT` for a key that is not there); keys before it are deleted.
pub fn delete<K: Copy>(fd: RawFd, keys: &[K]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        count: count(keys.len())?,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    call(BPF_MAP_DELETE_BATCH, &mut attr)
}

fn count(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))
}

fn call(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr.batch` of the size passed; the kernel reads `count`
    // keys (and values) of the map's sizes from the pointers, which the callers' slices hold,
    // and writes back only `attr.count` (entries processed).
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<BatchAttr>())
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
