//! Ring buffer records → typed events. Pure functions over byte slices, so they are unit-tested
//! without a kernel.

use std::mem::size_of;

use std::net::{IpAddr, Ipv6Addr};

use sensor_common::{
    host::{EXEC_FLAG_PATH_TRUNCATED, EventKind, ExecEvent, MAX_PATH_LEN},
    net::{FAMILY_IPV4, FlowEvent},
};

/// A process started (execve succeeded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The executable path as passed to execve.
    pub binary: String,
    /// True when `binary` was cut at the kernel-side limit.
    pub binary_truncated: bool,
    /// The task's comm (its name, up to 15 bytes) after exec.
    pub comm: String,
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
    /// 1 + index of the deciding policy in the compile that was live; 0 for none.
    pub policy: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    Exec(Exec),
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
        k if k == EventKind::Flow as u32 => decode_flow(record).map(HostEvent::Flow),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn decode_exec(record: &[u8]) -> Result<Exec, DecodeError> {
    let expected = size_of::<ExecEvent>();
    if record.len() != expected {
        return Err(DecodeError::BadSize { kind: "exec", got: record.len(), expected });
    }
    // SAFETY: the length was checked; ExecEvent is plain old data valid for any bytes, and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    let raw: ExecEvent = unsafe { record.as_ptr().cast::<ExecEvent>().read_unaligned() };
    let path_len = (raw.filename_len as usize).min(MAX_PATH_LEN);
    Ok(Exec {
        boot_ns: raw.boot_ns,
        cgroup_id: raw.cgroup_id,
        pid: raw.pid,
        tid: raw.tid,
        uid: raw.uid,
        gid: raw.gid,
        binary: String::from_utf8_lossy(until_nul(&raw.filename[..path_len])).into_owned(),
        binary_truncated: raw.flags & EXEC_FLAG_PATH_TRUNCATED != 0,
        comm: String::from_utf8_lossy(until_nul(&raw.comm)).into_owned(),
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
        policy: raw.policy,
    })
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.iter().position(|&b| b == 0).map_or(bytes, |end| &bytes[..end])
}

#[cfg(test)]
mod tests {
    use sensor_common::host::COMM_LEN;

    use super::*;

    fn raw_exec(path: &[u8], flags: u32) -> Vec<u8> {
        let mut event = ExecEvent {
            kind: EventKind::Exec as u32,
            flags,
            boot_ns: 42,
            cgroup_id: 7,
            pid: 100,
            tid: 101,
            uid: 1000,
            gid: 1001,
            filename_len: u32::try_from(path.len()).expect("short"),
            _pad: 0,
            comm: [0; COMM_LEN],
            filename: [0; MAX_PATH_LEN],
        };
        event.comm[..4].copy_from_slice(b"true");
        event.filename[..path.len()].copy_from_slice(path);
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
        assert_eq!(exec.binary, "/usr/bin/true");
        assert_eq!(exec.comm, "true");
        assert_eq!((exec.pid, exec.tid, exec.uid, exec.gid), (100, 101, 1000, 1001));
        assert_eq!(exec.cgroup_id, 7);
        assert!(!exec.binary_truncated);
    }

    #[test]
    fn marks_truncation() {
        let Ok(HostEvent::Exec(exec)) =
            decode_host(&raw_exec(b"/very/long", EXEC_FLAG_PATH_TRUNCATED))
        else {
            panic!("not an exec")
        };
        assert!(exec.binary_truncated);
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
