//! What rule fields read from `/proc/<pid>` when the event does not carry it: the
//! controlling terminal, session, namespace pid, login uid, environment, capabilities, the
//! executable's inode times and layer. Read lazily, only when a condition or an output asks,
//! and `None` once the process is gone (Falco's `<NA>`).

use std::{fs, os::unix::fs::MetadataExt as _, path::PathBuf};

fn dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// `/proc/<pid>/stat` fields after the comm: index 0 is field 3 (`state`) of proc(5).
fn stat_field(pid: u32, index: usize) -> Option<i64> {
    let stat = fs::read_to_string(dir(pid).join("stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(index)?.parse().ok()
}

/// `tty_nr` (Falco's `proc.tty`: 0 without a controlling terminal).
pub fn tty(pid: u32) -> Option<i64> {
    stat_field(pid, 4)
}

/// The session id.
pub fn session(pid: u32) -> Option<u32> {
    stat_field(pid, 3).and_then(|s| u32::try_from(s).ok())
}

/// The process group id.
pub fn pgrp(pid: u32) -> Option<u32> {
    stat_field(pid, 2).and_then(|s| u32::try_from(s).ok())
}

/// Start time, nanoseconds since boot (`starttime` is in clock ticks).
pub fn start_boot_ns(pid: u32) -> Option<i64> {
    let ticks = stat_field(pid, 19)?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz } else { 100 };
    Some(ticks.saturating_mul(1_000_000_000 / hz))
}

/// A field of `/proc/<pid>/status` (`CapEff`, `NSpid`, ...), its value text.
fn status(pid: u32, key: &str) -> Option<String> {
    let text = fs::read_to_string(dir(pid).join("status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_owned()))
}

/// The pid in the process's own pid namespace (the last `NSpid`).
pub fn vpid(pid: u32) -> Option<i64> {
    status(pid, "NSpid")?.split_whitespace().last()?.parse().ok()
}

/// Capability names, as libsinsp prints them: `CAP_CHOWN CAP_DAC_OVERRIDE ...`.
pub fn caps(pid: u32, which: &str) -> Option<String> {
    let mask = u64::from_str_radix(&status(pid, which)?, 16).ok()?;
    Some(cap_names(mask))
}

/// Capability bit → name (linux/capability.h).
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The names of the capabilities set in `mask`, space-separated.
pub fn cap_names(mask: u64) -> String {
    let mut out = String::new();
    for (bit, name) in CAP_NAMES.iter().enumerate() {
        if mask & (1 << bit) != 0 {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(name);
        }
    }
    out
}

/// The audit login uid; unset (`4294967295`) is -1 as Falco prints it.
pub fn loginuid(pid: u32) -> Option<i64> {
    let text = fs::read_to_string(dir(pid).join("loginuid")).ok()?;
    let uid: u64 = text.trim().parse().ok()?;
    Some(if uid == u64::from(u32::MAX) { -1 } else { uid as i64 })
}

/// The environment, `NAME=value` entries separated by spaces (Falco's `proc.env`).
pub fn env(pid: u32) -> Option<String> {
    let raw = fs::read(dir(pid).join("environ")).ok()?;
    let parts: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    Some(parts.join(" "))
}

/// The comm of a pid.
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(dir(pid).join("comm")).ok().map(|c| c.trim_end_matches('\n').to_owned())
}

/// Where `/proc/<pid>/exe` points, as seen in the process's mount namespace.
pub fn exe_link(pid: u32) -> Option<String> {
    fs::read_link(dir(pid).join("exe")).ok().map(|p| p.display().to_string())
}

/// Whether the executable is a memfd (`memfd_create` then `execveat`/`fexecve`).
pub fn exe_from_memfd(pid: u32) -> Option<bool> {
    exe_link(pid).map(|l| l.starts_with("/memfd:"))
}

/// The executable inode's change and modification times, nanoseconds since the epoch.
pub fn exe_times(pid: u32) -> Option<(i64, i64)> {
    let meta = fs::metadata(dir(pid).join("exe")).ok()?;
    Some((
        meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    ))
}

/// Whether the executable lives in the upper (writable) layer of the overlay filesystem that
/// is the process's root: the file exists under the mount's `upperdir`. False when the root
/// is not an overlay (Falco: the field applies to overlayfs only).
pub fn exe_upper_layer(pid: u32) -> Option<bool> {
    let exe = exe_link(pid)?;
    let mountinfo = fs::read_to_string(dir(pid).join("mountinfo")).ok()?;
    for line in mountinfo.lines() {
        // id parent maj:min root mountpoint opts ... - fstype source superopts
        let mut parts = line.split(" - ");
        let (Some(left), Some(right)) = (parts.next(), parts.next()) else { continue };
        if left.split_whitespace().nth(4) != Some("/") {
            continue;
        }
        let mut r = right.split_whitespace();
        if r.next() != Some("overlay") {
            continue;
        }
        let opts = r.nth(1).unwrap_or("");
        let Some(upper) = opts.split(',').find_map(|o| o.strip_prefix("upperdir=")) else {
            continue;
        };
        return Some(std::path::Path::new(&format!("{upper}{exe}")).exists());
    }
    Some(false)
}

/// Falco's execve `flags` argument: `EXE_WRITABLE`, `EXE_UPPER_LAYER`, `EXE_LOWER_LAYER`
/// (the root is an overlay), `EXE_FROM_MEMFD`, joined with `|`; empty when none applies.
/// `origin`: the exec record's `FLAG_EXE_*` bits when the kernel read them (then only the
/// writable test reads `/proc`).
pub fn exe_flags(pid: u32, uid: u32, origin: Option<u32>) -> Option<String> {
    use sensor_common::host::{FLAG_EXE_FROM_MEMFD, FLAG_EXE_OVERLAY, FLAG_EXE_UPPER_LAYER};
    let mut flags = Vec::new();
    // The process may be gone already: then only the record's bits are known.
    let meta = fs::metadata(dir(pid).join("exe"));
    if origin.is_none() && meta.is_err() {
        return None;
    }
    if let Ok(meta) = meta {
        let mode = meta.mode();
        if mode & 0o002 != 0 || (meta.uid() == uid && mode & 0o200 != 0) || uid == 0 {
            flags.push("EXE_WRITABLE");
        }
    }
    if let Some(origin) = origin {
        if origin & FLAG_EXE_UPPER_LAYER != 0 {
            flags.push("EXE_UPPER_LAYER");
        } else if origin & FLAG_EXE_OVERLAY != 0 {
            flags.push("EXE_LOWER_LAYER");
        }
        if origin & FLAG_EXE_FROM_MEMFD != 0 {
            flags.push("EXE_FROM_MEMFD");
        }
        return Some(flags.join("|"));
    }
    if let Some(upper) = exe_upper_layer(pid) {
        let overlay = upper || root_is_overlay(pid);
        if upper {
            flags.push("EXE_UPPER_LAYER");
        } else if overlay {
            flags.push("EXE_LOWER_LAYER");
        }
    }
    if exe_from_memfd(pid) == Some(true) {
        flags.push("EXE_FROM_MEMFD");
    }
    Some(flags.join("|"))
}

fn root_is_overlay(pid: u32) -> bool {
    fs::read_to_string(dir(pid).join("mountinfo")).is_ok_and(|m| {
        m.lines().any(|l| {
            let mut parts = l.split(" - ");
            let (Some(left), Some(right)) = (parts.next(), parts.next()) else { return false };
            left.split_whitespace().nth(4) == Some("/") && right.starts_with("overlay ")
        })
    })
}

/// The working directory now (a process may have changed it since its exec).
pub fn cwd(pid: u32) -> Option<String> {
    fs::read_link(dir(pid).join("cwd")).ok().map(|p| p.display().to_string())
}

/// An internet socket behind a descriptor, from `/proc/<pid>/net/{tcp,udp}{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InetSocket {
    pub v6: bool,
    /// `tcp` or `udp`.
    pub proto: &'static str,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
}

/// What a descriptor is: `Ok(socket)` for an internet socket, `Err(target)` with the
/// `/proc/<pid>/fd/<fd>` link target otherwise (`/path`, `pipe:[..]`, `socket:[..]` of
/// another family).
pub fn fd_target(pid: u32, fd: i64) -> Option<Result<InetSocket, String>> {
    let target = fs::read_link(dir(pid).join(format!("fd/{fd}"))).ok()?.display().to_string();
    let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) else {
        return Some(Err(target));
    };
    for (file, proto, v6) in
        [("tcp", "tcp", false), ("tcp6", "tcp", true), ("udp", "udp", false), ("udp6", "udp", true)]
    {
        let Ok(table) = fs::read_to_string(dir(pid).join("net").join(file)) else { continue };
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(9) != Some(&inode) {
                continue;
            }
            let (Some(local), Some(remote)) =
                (cols.get(1).and_then(|a| hex_addr(a)), cols.get(2).and_then(|a| hex_addr(a)))
            else {
                continue;
            };
            return Some(Ok(InetSocket { v6, proto, local, remote }));
        }
    }
    Some(Err(target))
}

/// `0100007F:1F90` (IPv4, little-endian words) or 32 hex digits (IPv6) and a port.
fn hex_addr(text: &str) -> Option<std::net::SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip: std::net::IpAddr = match addr.len() {
        8 => std::net::Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.swap_bytes()).into(),
        32 => {
            let mut bytes = [0_u8; 16];
            for word in 0..4 {
                let w = u32::from_str_radix(&addr[word * 8..word * 8 + 8], 16).ok()?;
                bytes[word * 4..word * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(v6.into(), Into::into)
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads() {
        let me = std::process::id();
        assert!(tty(me).is_some());
        assert!(session(me).is_some());
        assert!(start_boot_ns(me).is_some_and(|t| t > 0));
        assert!(vpid(me).is_some());
        assert_eq!(exe_from_memfd(me), Some(false));
        assert!(exe_times(me).is_some_and(|(c, m)| c > 0 && m > 0));
        assert!(caps(me, "CapEff").is_some());
        assert_eq!(cap_names((1 << 21) | 1), "CAP_CHOWN CAP_SYS_ADMIN");
        assert!(loginuid(me).is_some());
        assert!(tty(u32::MAX).is_none());
        assert_eq!(
            hex_addr("0100007F:1F90"),
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8080)))
        );
    }

    #[test]
    fn a_connected_socket_is_found_by_its_descriptor() {
        use std::os::fd::AsRawFd as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let sock = fd_target(std::process::id(), i64::from(client.as_raw_fd()))
            .expect("fd")
            .expect("inet socket");
        assert_eq!(sock.proto, "tcp");
        assert_eq!(sock.remote.port(), port);
        assert!(!sock.v6);
    }
}
