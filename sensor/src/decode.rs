//! Ring buffer records → typed events. Pure functions over byte slices, so they are unit-tested
//! without a kernel.

use std::mem::size_of;

use std::net::{IpAddr, Ipv6Addr};

use sensor_common::{
    host::{
        Action, EventHeader, EventKind, ExecEvent, ExitEvent, FILE_OP_EXEC, FILE_OP_LINK,
        FILE_OP_OPEN, FILE_OP_RENAME, FILE_OP_SYMLINK, FILE_OP_TRUNCATE, FLAG_ARGS_TRUNCATED,
        FLAG_CWD_TRUNCATED, FLAG_PATH_TRUNCATED, FileEvent, SOCK_OP_BIND, SockEvent,
        SyscallArgsEvent, SyscallEvent,
    },
    net::{FAMILY_IPV4, FlowEvent},
};

/// Who did it, common to every host event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    /// 0 when the kernel could not read it.
    pub ppid: u32,
    /// Real user and group ids.
    pub uid: u32,
    pub gid: u32,
    /// Effective user and group ids (what the kernel's permission checks use).
    pub euid: u32,
    pub egid: u32,
    /// Audit login uid (`u32::MAX`: unset).
    pub loginuid: u32,
    /// `FLAG_*` bits of the record.
    pub flags: u32,
    /// `observed`, `audit`, `would_block`, `blocked` or `killed`.
    pub action: &'static str,
    /// 1 + the deciding policy's mask bit; 0 for none.
    pub policy: u32,
    /// The task's comm (its name, up to 15 bytes).
    pub comm: String,
}

/// A process started (execve succeeded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub header: Header,
    /// The executable's canonical path (the path as passed when the kernel could not tell).
    pub binary: String,
    /// The path as passed to execve.
    pub filename: String,
    pub binary_truncated: bool,
    pub cwd: String,
    pub cwd_truncated: bool,
    pub args: Vec<String>,
    pub args_truncated: bool,
}

/// A file operation a file rule matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOp {
    pub header: Header,
    /// `open`, `unlink`, `rename`, `link`, `symlink`, `truncate`, or `exec` (an interpreter
    /// opened the `#!` script it was started for).
    pub operation: &'static str,
    /// Access kinds asked for: read, write, create, delete, rename, exec.
    pub access: Vec<&'static str>,
    /// Absolute; canonical for opens, lexically normalised for the others.
    pub path: String,
    /// Rename and link: the new name; symlink: the link's target as given.
    pub new_path: Option<String>,
    pub path_truncated: bool,
    /// An open's path as the process passed it (Falco's `fd.nameraw`); None when unknown.
    pub raw_path: Option<String>,
    /// An open's `O_*` flags.
    pub open_flags: Option<u32>,
    /// The descriptor an open returned.
    pub fd: Option<i32>,
    /// An `openat`'s directory descriptor (-100: the working directory).
    pub dirfd: Option<i32>,
    /// Falco's `fd.name` for an open (the path as passed, joined with the working directory),
    /// filled by the enrichment.
    pub falco_name: Option<String>,
}

/// A bind or connect from a watched cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SockOp {
    pub header: Header,
    /// `bind` or `connect`.
    pub operation: &'static str,
    pub protocol: &'static str,
    pub address: IpAddr,
    pub port: u16,
}

/// A syscall a syscall rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallOp {
    pub header: Header,
    pub nr: u32,
}

/// A syscall a Falco rule names (ptrace, symlink, dup, ...): its raw arguments, result and
/// string arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallArgsOp {
    pub header: Header,
    pub nr: u32,
    pub ret: i64,
    pub args: [u64; 6],
    /// The string arguments the kernel copied, by argument index.
    pub strings: Vec<(usize, String)>,
}

/// A flow's first packet (or a dropped packet) with the verdict the kernel reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub boot_ns: u64,
    pub ifindex: u32,
    pub endpoint_id: u32,
    pub local_identity: u32,
    pub remote_identity: u32,
    pub verdict: u8,
    pub drop_reason: u8,
    pub match_type: u8,
    /// `POLICY_INGRESS` or `POLICY_EGRESS` of the local endpoint.
    pub direction: u8,
    pub protocol: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub source_port: u16,
    pub destination_port: u16,
    /// The packet goes against the connection's first packet.
    pub is_reply: bool,
    /// A policy decision at an endpoint a policy selects (Hubble's `PolicyVerdict` event);
    /// false for drops of an already denied connection, traces and unclassified packets.
    pub policy_verdict: bool,
    /// 1 + index of the deciding policy in the compile that was live; 0 for none.
    pub policy: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    Exec(Exec),
    Exit(Header),
    File(FileOp),
    Sock(SockOp),
    Syscall(SyscallOp),
    SyscallArgs(SyscallArgsOp),
    Flow(Flow),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short for a header")]
    TooShort(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("{kind} record has {got} bytes, expected {expected}")]
    BadSize { kind: &'static str, got: usize, expected: usize },
}

impl DecodeError {
    /// Short label for the `sensor_event_decode_errors_total{reason}` metric.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::TooShort(_) => "too_short",
            Self::UnknownKind(_) => "unknown_kind",
            Self::BadSize { .. } => "bad_size",
        }
    }
}

pub fn decode_host(record: &[u8]) -> Result<HostEvent, DecodeError> {
    let kind_bytes: [u8; 4] = record
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(DecodeError::TooShort(record.len()))?;
    let kind = u32::from_ne_bytes(kind_bytes);
    match kind {
        k if k == EventKind::Exec as u32 => decode_exec(record).map(HostEvent::Exec),
        k if k == EventKind::Exit as u32 => {
            read::<ExitEvent>(record, "exit").map(|raw| HostEvent::Exit(header(&raw.header)))
        }
        k if k == EventKind::File as u32 => decode_file(record).map(HostEvent::File),
        k if k == EventKind::Sock as u32 => decode_sock(record).map(HostEvent::Sock),
        k if k == EventKind::Syscall as u32 => read::<SyscallEvent>(record, "syscall")
            .map(|raw| HostEvent::Syscall(SyscallOp { header: header(&raw.header), nr: raw.nr })),
        k if k == EventKind::SyscallArgs as u32 => read::<SyscallArgsEvent>(record, "syscall args")
            .map(|raw| {
                let mut strings = Vec::new();
                let mut slot = 0;
                for i in 0..6 {
                    if raw.str_mask & (1 << i) != 0 && slot < 2 {
                        strings.push((i, text(&raw.strs[slot], raw.str_len[slot] as usize)));
                        slot += 1;
                    }
                }
                HostEvent::SyscallArgs(SyscallArgsOp {
                    header: header(&raw.header),
                    nr: raw.nr,
                    ret: raw.ret,
                    args: raw.args,
                    strings,
                })
            }),
        k if k == EventKind::Flow as u32 => decode_flow(record).map(HostEvent::Flow),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Copies a record of exactly `size_of::<T>()` bytes out of the ring buffer.
fn read<T: aya::Pod>(record: &[u8], kind: &'static str) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if record.len() != expected {
        return Err(DecodeError::BadSize { kind, got: record.len(), expected });
    }
    // SAFETY: the length was checked; T is plain old data valid for any bytes, and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { record.as_ptr().cast::<T>().read_unaligned() })
}

fn header(raw: &EventHeader) -> Header {
    let action = match raw.action {
        a if a == Action::Audit as u32 => "audit",
        a if a == Action::WouldBlock as u32 => "would_block",
        a if a == Action::Blocked as u32 => "blocked",
        a if a == Action::Killed as u32 => "killed",
        _ => "observed",
    };
    Header {
        boot_ns: raw.boot_ns,
        cgroup_id: raw.cgroup_id,
        pid: raw.pid,
        tid: raw.tid,
        ppid: raw.ppid,
        uid: raw.uid,
        gid: raw.gid,
        euid: raw.euid,
        egid: raw.egid,
        loginuid: raw.loginuid,
        flags: raw.flags,
        action,
        policy: raw.policy,
        comm: text(&raw.comm, raw.comm.len()),
    }
}

/// The first `len` bytes (up to a NUL) as text; invalid UTF-8 is replaced, not dropped.
fn text(bytes: &[u8], len: usize) -> String {
    String::from_utf8_lossy(until_nul(&bytes[..len.min(bytes.len())])).into_owned()
}

fn decode_exec(record: &[u8]) -> Result<Exec, DecodeError> {
    let raw: ExecEvent = read(record, "exec")?;
    let filename = text(&raw.filename, raw.filename_len as usize);
    let exe = text(&raw.exe, raw.exe_len as usize);
    let args_bytes = &raw.args[..(raw.args_len as usize).min(raw.args.len())];
    let args = args_bytes
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Ok(Exec {
        header: header(&raw.header),
        binary: if exe.is_empty() { filename.clone() } else { exe },
        filename,
        binary_truncated: raw.header.flags & FLAG_PATH_TRUNCATED != 0,
        cwd: text(&raw.cwd, raw.cwd_len as usize),
        cwd_truncated: raw.header.flags & FLAG_CWD_TRUNCATED != 0,
        args,
        args_truncated: raw.header.flags & FLAG_ARGS_TRUNCATED != 0,
    })
}

fn decode_file(record: &[u8]) -> Result<FileOp, DecodeError> {
    use sensor_common::host::ACCESS_KINDS;
    const NAMES: [&str; ACCESS_KINDS + 1] = ["read", "write", "create", "delete", "rename", "exec"];
    let raw: FileEvent = read(record, "file")?;
    let operation = match raw.op {
        FILE_OP_OPEN => "open",
        FILE_OP_RENAME => "rename",
        FILE_OP_LINK => "link",
        FILE_OP_SYMLINK => "symlink",
        FILE_OP_TRUNCATE => "truncate",
        FILE_OP_EXEC => "exec",
        _ => "unlink",
    };
    let path = text(&raw.path, raw.path_len as usize);
    // Rename and link destinations come absolute (joined to their directory descriptor in
    // the kernel); a symlink's target is text, reported as given.
    let new_path = matches!(raw.op, FILE_OP_RENAME | FILE_OP_LINK | FILE_OP_SYMLINK).then(|| {
        let p = text(&raw.path2, raw.path2_len as usize);
        if p.starts_with('/') && raw.op != FILE_OP_SYMLINK { normalize(&p) } else { p }
    });
    Ok(FileOp {
        header: header(&raw.header),
        operation,
        access: (0..=ACCESS_KINDS)
            .filter(|k| raw.access & (1 << k) != 0)
            .map(|k| NAMES[k])
            .collect(),
        // Opens come canonical from the kernel; the other operations' paths as given. A
        // failed open has no file: its path is the one the process passed.
        path: if raw.op == FILE_OP_OPEN && raw.fd < 0 && raw.path_len == 0 {
            let passed = text(&raw.path2, raw.path2_len as usize);
            if passed.starts_with('/') { normalize(&passed) } else { passed }
        } else if matches!(raw.op, FILE_OP_OPEN | FILE_OP_EXEC) || !path.starts_with('/') {
            path
        } else {
            normalize(&path)
        },
        new_path,
        path_truncated: raw.header.flags & FLAG_PATH_TRUNCATED != 0,
        raw_path: (raw.op == FILE_OP_OPEN && raw.path2_len > 0)
            .then(|| text(&raw.path2, raw.path2_len as usize)),
        open_flags: (raw.op == FILE_OP_OPEN).then_some(raw.open_flags),
        fd: (raw.op == FILE_OP_OPEN).then_some(raw.fd),
        dirfd: (raw.op == FILE_OP_OPEN).then_some(raw.dirfd),
        falco_name: None,
    })
}

/// Removes `.`, `..` and repeated slashes from an absolute path, lexically.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

fn decode_sock(record: &[u8]) -> Result<SockOp, DecodeError> {
    let raw: SockEvent = read(record, "socket")?;
    let address = if raw.family == libc::AF_INET as u32 {
        IpAddr::from([raw.addr[0], raw.addr[1], raw.addr[2], raw.addr[3]])
    } else {
        IpAddr::from(raw.addr)
    };
    Ok(SockOp {
        header: header(&raw.header),
        operation: if raw.op == SOCK_OP_BIND { "bind" } else { "connect" },
        protocol: match raw.protocol {
            6 => "TCP",
            17 => "UDP",
            _ => "other",
        },
        address,
        port: raw.port as u16,
    })
}

fn decode_flow(record: &[u8]) -> Result<Flow, DecodeError> {
    let expected = size_of::<FlowEvent>();
    if record.len() != expected {
        return Err(DecodeError::BadSize { kind: "flow", got: record.len(), expected });
    }
    // SAFETY: length checked; FlowEvent is plain old data valid for any bytes.
    let raw: FlowEvent = unsafe { record.as_ptr().cast::<FlowEvent>().read_unaligned() };
    let addr = |octets: [u8; 16]| {
        let v6 = Ipv6Addr::from(octets);
        match v6.to_ipv4_mapped() {
            Some(v4) if raw.family == FAMILY_IPV4 => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        }
    };
    Ok(Flow {
        boot_ns: raw.boot_ns,
        ifindex: raw.ifindex,
        endpoint_id: raw.endpoint_id,
        local_identity: raw.local_identity,
        remote_identity: raw.remote_identity,
        verdict: raw.verdict,
        drop_reason: raw.drop_reason,
        match_type: raw.match_type,
        direction: raw.direction,
        protocol: raw.protocol,
        tcp_flags: raw.tcp_flags,
        icmp_type: raw.icmp_type,
        icmp_code: raw.icmp_code,
        source: addr(raw.saddr),
        destination: addr(raw.daddr),
        source_port: raw.sport,
        destination_port: raw.dport,
        is_reply: raw.is_reply != 0,
        policy_verdict: raw.policy_verdict != 0,
        policy: raw.policy,
    })
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.iter().position(|&b| b == 0).map_or(bytes, |end| &bytes[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_exec(path: &[u8], flags: u32) -> Vec<u8> {
        // SAFETY: all-zero bytes are a valid ExecEvent (plain integers and arrays).
        let mut event: ExecEvent = unsafe { std::mem::zeroed() };
        event.header = EventHeader {
            kind: EventKind::Exec as u32,
            flags,
            boot_ns: 42,
            cgroup_id: 7,
            pid: 100,
            tid: 101,
            ppid: 99,
            uid: 1000,
            gid: 1001,
            ..EventHeader::default()
        };
        event.header.comm[..4].copy_from_slice(b"true");
        event.filename[..path.len()].copy_from_slice(path);
        event.filename_len = u32::try_from(path.len()).expect("short");
        let args = b"true\0--version\0";
        event.args[..args.len()].copy_from_slice(args);
        event.args_len = args.len() as u32;
        // SAFETY: ExecEvent is repr(C) plain data without padding.
        unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<ExecEvent>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_exec() {
        let Ok(HostEvent::Exec(exec)) = decode_host(&raw_exec(b"/usr/bin/true", 0)) else {
            panic!("not an exec")
        };
        assert_eq!(exec.binary, "/usr/bin/true", "falls back to the filename");
        assert_eq!(exec.header.comm, "true");
        let h = &exec.header;
        assert_eq!((h.pid, h.tid, h.ppid, h.uid, h.gid), (100, 101, 99, 1000, 1001));
        assert_eq!(h.cgroup_id, 7);
        assert_eq!(exec.args, ["true", "--version"]);
        assert!(!exec.binary_truncated);
    }

    #[test]
    fn marks_truncation() {
        let Ok(HostEvent::Exec(exec)) = decode_host(&raw_exec(b"/very/long", FLAG_PATH_TRUNCATED))
        else {
            panic!("not an exec")
        };
        assert!(exec.binary_truncated);
    }

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize("/etc/../etc//./shadow"), "/etc/shadow");
        assert_eq!(normalize("/../x"), "/x");
        assert_eq!(normalize("/"), "/");
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(decode_host(&[1, 0]), Err(DecodeError::TooShort(2)));
        assert_eq!(decode_host(&[9, 0, 0, 0, 0, 0, 0, 0]), Err(DecodeError::UnknownKind(9)));
        let mut cut = raw_exec(b"/bin/sh", 0);
        cut.truncate(100);
        assert!(matches!(decode_host(&cut), Err(DecodeError::BadSize { got: 100, .. })));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        let Ok(HostEvent::Exec(exec)) = decode_host(&raw_exec(b"/tmp/\xff", 0)) else {
            panic!("not an exec")
        };
        assert_eq!(exec.binary, "/tmp/\u{fffd}");
    }
}
