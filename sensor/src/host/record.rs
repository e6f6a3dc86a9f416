//! Host events → JSON records in Tetragon's envelope (`process_exec`, `process_exit`, and
//! `process_file`, `process_socket`, `process_syscall` for policy and socket events), each with
//! the process, its parent, its container and pod, the action taken and the policy.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use super::{
    HostView,
    cgroups::{CgroupInfo, container_of},
    process::{ProcessInfo, ProcessTable},
};
use crate::{
    decode::{FileOp, Header, HostEvent, SockOp, SyscallArgsOp},
    sys::BootClock,
};

#[derive(Debug, Serialize)]
pub struct Container {
    pub id: String,
    pub runtime: &'static str,
    /// Image, privileged and start time from the pod (rules' `container.*` fields; not in
    /// the Tetragon record).
    #[serde(skip)]
    pub info: Option<crate::policy::endpoints::ContainerInfo>,
}

#[derive(Debug, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub pod_labels: BTreeMap<String, String>,
}

/// Credentials as the kernel checks them (Tetragon's `process_credentials`).
#[derive(Debug, Serialize)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
}

#[derive(Debug, Serialize)]
pub struct Process<'a> {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub process_credentials: Credentials,
    /// Audit login uid (`user.loginuid` in Falco); 4294967295 when unset.
    pub auid: u32,
    pub binary: &'a str,
    /// Arguments after argv[0], space-separated, as Tetragon prints them.
    pub arguments: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub arguments_truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub binary_truncated: bool,
    pub cwd: &'a str,
    pub comm: &'a str,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<&'a Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<&'a Pod>,
}

#[derive(Debug, Serialize)]
pub struct Parent<'a> {
    pub pid: u32,
    pub binary: &'a str,
    pub arguments: String,
}

#[derive(Debug, Serialize)]
pub struct Body<'a> {
    pub process: Process<'a>,
    pub parent: Parent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_path: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub new_path_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<&'a [&'static str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// `observed`, `audit`, `would_block`, `blocked` (the operation did not happen) or
    /// `killed` (the process was killed at the call; the call itself may have completed).
    pub action: &'static str,
    /// How the deciding rule matched: `path` (its spelling), `inode` (the object's identity),
    /// `walk_limit` (the ancestors could not all be checked: decided closed), `hold` (by
    /// identity, in user space, with the task stopped at the call's return) or
    /// `hold_unresolved` (held, and the path could not be resolved: decided closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Record<'a> {
    #[serde(flatten)]
    pub event: BTreeMap<&'static str, Body<'a>>,
    pub node_name: &'a str,
    pub time: String,
}

/// What happened, beyond who did it.
#[derive(Debug)]
pub enum Detail {
    Exec {
        binary_truncated: bool,
        args_truncated: bool,
    },
    Exit,
    File(FileOp),
    Sock(SockOp),
    Syscall {
        nr: u32,
    },
    /// A syscall a Falco rule names, with its arguments and result.
    SyscallArgs(SyscallArgsOp),
}

/// A host event with everything enrichment found: the process, its parent, container and
/// pod. Both the Tetragon record and the rules engine read this one view.
#[derive(Debug)]
pub struct Enriched {
    /// `process_exec`, `process_exit`, `process_file`, `process_socket`, `process_syscall`.
    pub kind: &'static str,
    pub header: Header,
    pub detail: Detail,
    pub process: ProcessInfo,
    pub parent: ProcessInfo,
    pub container: Option<Container>,
    pub pod: Option<Pod>,
    /// Wall clock, nanoseconds since the epoch.
    pub wall_ns: i128,
}

pub struct HostFormatter {
    pub node_name: String,
    pub clock: BootClock,
    pub view: Arc<RwLock<HostView>>,
    pub processes: ProcessTable,
    /// Woken when an event comes from a cgroup the last scan did not know (a container or a
    /// cgroup nested in one, created since): the agent rescans at once instead of at the next
    /// periodic scan, so the kernel's scope map covers it within milliseconds.
    pub unknown_cgroup: Arc<tokio::sync::Notify>,
}

/// [`Body::matched_by`] from a record's flags.
fn matched_by(flags: u32) -> &'static str {
    use sensor_common::host::{
        FLAG_HELD, FLAG_HOLD_UNRESOLVED, FLAG_IDENTITY, FLAG_WALK_INCOMPLETE,
    };
    if flags & FLAG_HOLD_UNRESOLVED != 0 {
        "hold_unresolved"
    } else if flags & FLAG_HELD != 0 {
        "hold"
    } else if flags & FLAG_WALK_INCOMPLETE != 0 {
        "walk_limit"
    } else if flags & FLAG_IDENTITY != 0 {
        "inode"
    } else {
        "path"
    }
}

fn joined_args(args: &[String]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().skip(1).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(a);
    }
    out
}

impl HostFormatter {
    /// Enriches `event` (None for flows); updates the process table.
    pub fn enrich(&mut self, event: HostEvent) -> Option<Enriched> {
        let (kind, header, process, detail) = match event {
            HostEvent::Exec(exec) => {
                let info = ProcessInfo {
                    binary: exec.binary,
                    args: exec.args,
                    cwd: exec.cwd,
                    ppid: exec.header.ppid,
                    comm: exec.header.comm.clone(),
                    exe_flags: exec.header.flags
                        & (sensor_common::host::FLAG_EXE_CHECKED
                            | sensor_common::host::FLAG_EXE_FROM_MEMFD
                            | sensor_common::host::FLAG_EXE_OVERLAY
                            | sensor_common::host::FLAG_EXE_UPPER_LAYER),
                };
                self.processes.exec(exec.header.pid, info.clone());
                let detail = Detail::Exec {
                    binary_truncated: exec.binary_truncated,
                    args_truncated: exec.args_truncated,
                };
                ("process_exec", exec.header, info, detail)
            }
            HostEvent::Exit(header) => {
                let info = self.processes.exit(header.pid).unwrap_or_default();
                ("process_exit", header, info, Detail::Exit)
            }
            HostEvent::File(op) => {
                let info = self.processes.get(op.header.pid);
                let mut op = op;
                // The kernel sends a rename's destination as given: resolve a relative one
                // against the process's working directory (as of its exec).
                op.new_path = op.new_path.map(|p| {
                    if p.starts_with('/') || info.cwd.is_empty() {
                        p
                    } else {
                        crate::decode::normalize(&format!("{}/{p}", info.cwd))
                    }
                });
                if op.operation == "open" {
                    op.falco_name = Some(crate::rules::fields::falco_name(&op, op.header.pid));
                }
                let header = op.header.clone();
                ("process_file", header, info, Detail::File(op))
            }
            HostEvent::Sock(op) => {
                let info = self.processes.get(op.header.pid);
                let header = op.header.clone();
                ("process_socket", header, info, Detail::Sock(op))
            }
            HostEvent::Syscall(op) => {
                let info = self.processes.get(op.header.pid);
                ("process_syscall", op.header, info, Detail::Syscall { nr: op.nr })
            }
            HostEvent::SyscallArgs(op) => {
                let info = self.processes.get(op.header.pid);
                let header = op.header.clone();
                ("process_syscall", header, info, Detail::SyscallArgs(op))
            }
            HostEvent::Flow(_) => return None,
        };
        // Events from before the agent started carry no ppid: the process table may know it.
        let ppid = if header.ppid != 0 { header.ppid } else { process.ppid };
        // Ancestors that started before the agent: read from /proc once, then remembered.
        self.processes.fill_ancestry(ppid);
        let parent = self.processes.get(ppid);
        let (container, pod) = self.attribution(header.cgroup_id, header.pid);
        let wall_ns = self.clock.to_wall(header.boot_ns).unix_timestamp_nanos();
        Some(Enriched { kind, header, detail, process, parent, container, pod, wall_ns })
    }

    /// The Tetragon record of an enriched event.
    pub fn record<'a>(&'a self, e: &'a Enriched) -> Record<'a> {
        let header = &e.header;
        let mut body = Body {
            process: Process {
                pid: header.pid,
                tid: header.tid,
                ppid: header.ppid,
                uid: header.uid,
                gid: header.gid,
                process_credentials: Credentials {
                    uid: header.uid,
                    gid: header.gid,
                    euid: header.euid,
                    egid: header.egid,
                },
                auid: header.loginuid,
                binary: &e.process.binary,
                arguments: joined_args(&e.process.args),
                arguments_truncated: false,
                binary_truncated: false,
                cwd: &e.process.cwd,
                comm: &header.comm,
                cgroup_id: header.cgroup_id,
                container: e.container.as_ref(),
                pod: e.pod.as_ref(),
            },
            parent: Parent {
                pid: header.ppid,
                binary: &e.parent.binary,
                arguments: joined_args(&e.parent.args),
            },
            operation: None,
            path: None,
            path_truncated: false,
            new_path: None,
            new_path_truncated: false,
            access: None,
            protocol: None,
            address: None,
            port: None,
            syscall: None,
            action: header.action,
            matched_by: None,
            policy_name: None,
        };
        match &e.detail {
            Detail::Exec { binary_truncated, args_truncated } => {
                body.process.binary_truncated = *binary_truncated;
                body.process.arguments_truncated = *args_truncated;
                body.matched_by = (header.policy != 0).then(|| matched_by(header.flags));
            }
            Detail::Exit => {}
            Detail::File(op) => {
                body.operation = Some(op.operation);
                body.matched_by = (header.policy != 0).then(|| matched_by(header.flags));
                body.path = Some(&op.path);
                body.path_truncated = op.path_truncated;
                body.new_path = op.new_path.as_deref();
                body.new_path_truncated =
                    header.flags & sensor_common::host::FLAG_PATH2_TRUNCATED != 0;
                body.access = Some(&op.access);
            }
            Detail::Sock(op) => {
                body.operation = Some(op.operation);
                body.protocol = Some(op.protocol);
                body.address = Some(op.address.to_string());
                body.port = Some(op.port);
            }
            Detail::SyscallArgs(op) => {
                body.syscall = Some(
                    crate::rules::syscalls::by_nr(op.nr)
                        .map_or_else(|| op.nr.to_string(), |s| s.name.to_owned()),
                );
            }
            Detail::Syscall { nr } => {
                body.syscall = Some(
                    super::policy::syscall_name(*nr).map_or_else(|| nr.to_string(), str::to_owned),
                );
            }
        }
        body.policy_name = self
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .policy_name(header.policy)
            .map(str::to_owned);
        Record {
            event: BTreeMap::from([(e.kind, body)]),
            node_name: &self.node_name,
            time: time::OffsetDateTime::from_unix_timestamp_nanos(e.wall_ns)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
                .format(&Rfc3339)
                .unwrap_or_default(),
        }
    }

    /// cgroup id → container → pod. An unknown cgroup is looked up through the process's
    /// `/proc/<pid>/cgroup` (a container that started since the last scan, or a cgroup made
    /// inside one, which inherits its container: see [`container_of`]), and wakes a rescan.
    fn attribution(&mut self, cgroup_id: u64, pid: u32) -> (Option<Container>, Option<Pod>) {
        let known = {
            let view = self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            view.inventory.by_id.get(&cgroup_id).cloned()
        };
        let info = known.or_else(|| {
            self.unknown_cgroup.notify_one();
            let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            let path = text.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned();
            let info = CgroupInfo { container: container_of(&path), path };
            self.view
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .inventory
                .by_id
                .insert(cgroup_id, info.clone());
            Some(info)
        });
        let Some(container) = info.and_then(|i| i.container) else {
            return (None, None);
        };
        let view = self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let endpoint = view.endpoints.endpoints.iter().find(|e| {
            e.containers.iter().any(|c| super::cgroups::bare_container_id(c) == container.id)
        });
        let pod = endpoint.map(|e| Pod {
            namespace: e.namespace.clone(),
            name: e.name.clone(),
            pod_labels: e.labels.clone(),
        });
        let info = endpoint.and_then(|e| {
            e.container_info
                .iter()
                .find(|i| super::cgroups::bare_container_id(&i.id) == container.id)
                .cloned()
        });
        (Some(Container { id: container.id, runtime: container.runtime, info }), pod)
    }
}
