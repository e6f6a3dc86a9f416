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
    decode::{Header, HostEvent},
    sys::BootClock,
};

#[derive(Debug, Serialize)]
pub struct Container {
    pub id: String,
    pub runtime: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub pod_labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub binary: String,
    /// Arguments after argv[0], space-separated, as Tetragon prints them.
    pub arguments: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub arguments_truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub binary_truncated: bool,
    pub cwd: String,
    pub comm: String,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

#[derive(Debug, Serialize)]
pub struct Parent {
    pub pid: u32,
    pub binary: String,
    pub arguments: String,
}

#[derive(Debug, Serialize)]
pub struct Body {
    pub process: Process,
    pub parent: Parent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// `observed`, `audit`, `would_block` or `blocked`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Record {
    #[serde(flatten)]
    pub event: BTreeMap<&'static str, Body>,
    pub node_name: String,
    pub time: String,
}

pub struct HostFormatter {
    pub node_name: String,
    pub clock: BootClock,
    pub view: Arc<RwLock<HostView>>,
    pub processes: ProcessTable,
}

impl HostFormatter {
    /// The record for `event` and its type label; updates the process table.
    pub fn record(&mut self, event: HostEvent) -> Option<(&'static str, Record)> {
        let (kind, header, process_info, mut body) = match event {
            HostEvent::Exec(exec) => {
                let info = ProcessInfo {
                    binary: exec.binary.clone(),
                    args: exec.args.clone(),
                    cwd: exec.cwd.clone(),
                    ppid: exec.header.ppid,
                };
                self.processes.exec(exec.header.pid, info.clone());
                let mut body = self.body(&exec.header, &info);
                body.process.binary_truncated = exec.binary_truncated;
                body.process.arguments_truncated = exec.args_truncated;
                ("process_exec", exec.header, info, body)
            }
            HostEvent::Exit(header) => {
                let info = self.processes.exit(header.pid).unwrap_or_default();
                let body = self.body(&header, &info);
                ("process_exit", header, info, body)
            }
            HostEvent::File(op) => {
                let info = self.processes.get(op.header.pid);
                let mut body = self.body(&op.header, &info);
                body.operation = Some(op.operation);
                body.path = Some(op.path);
                // The kernel sends a rename's destination as given: resolve a relative one
                // against the process's working directory (as of its exec).
                body.new_path = op.new_path.map(|p| {
                    if p.starts_with('/') || info.cwd.is_empty() {
                        p
                    } else {
                        crate::decode::normalize(&format!("{}/{p}", info.cwd))
                    }
                });
                body.access = Some(op.access);
                ("process_file", op.header, info, body)
            }
            HostEvent::Sock(op) => {
                let info = self.processes.get(op.header.pid);
                let mut body = self.body(&op.header, &info);
                body.operation = Some(op.operation);
                body.protocol = Some(op.protocol);
                body.address = Some(op.address.to_string());
                body.port = Some(op.port);
                ("process_socket", op.header, info, body)
            }
            HostEvent::Syscall(op) => {
                let info = self.processes.get(op.header.pid);
                let mut body = self.body(&op.header, &info);
                body.syscall = Some(
                    super::policy::syscall_name(op.nr)
                        .map_or_else(|| op.nr.to_string(), str::to_owned),
                );
                ("process_syscall", op.header, info, body)
            }
            HostEvent::Flow(_) => return None,
        };
        let _ = process_info;
        body.policy_name = self
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .policy_name(header.policy)
            .map(str::to_owned);
        Some((
            kind,
            Record {
                event: BTreeMap::from([(kind, body)]),
                node_name: self.node_name.clone(),
                time: self.clock.to_wall(header.boot_ns).format(&Rfc3339).unwrap_or_default(),
            },
        ))
    }

    fn body(&mut self, header: &Header, info: &ProcessInfo) -> Body {
        let parent_info = self.processes.get(header.ppid);
        let (container, pod) = self.attribution(header.cgroup_id, header.pid);
        Body {
            process: Process {
                pid: header.pid,
                tid: header.tid,
                ppid: header.ppid,
                uid: header.uid,
                gid: header.gid,
                binary: info.binary.clone(),
                arguments: info.args.iter().skip(1).cloned().collect::<Vec<_>>().join(" "),
                arguments_truncated: false,
                binary_truncated: false,
                cwd: info.cwd.clone(),
                comm: header.comm.clone(),
                cgroup_id: header.cgroup_id,
                container,
                pod,
            },
            parent: Parent {
                pid: header.ppid,
                binary: parent_info.binary,
                arguments: parent_info.args.iter().skip(1).cloned().collect::<Vec<_>>().join(" "),
            },
            operation: None,
            path: None,
            new_path: None,
            access: None,
            protocol: None,
            address: None,
            port: None,
            syscall: None,
            action: header.action,
            policy_name: None,
        }
    }

    /// cgroup id → container → pod. An unknown cgroup is looked up through the process's
    /// `/proc/<pid>/cgroup` (a container that started since the last scan).
    fn attribution(&mut self, cgroup_id: u64, pid: u32) -> (Option<Container>, Option<Pod>) {
        let known = {
            let view = self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            view.inventory.by_id.get(&cgroup_id).cloned()
        };
        let info = known.or_else(|| {
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
        let pod = view
            .endpoints
            .endpoints
            .iter()
            .find(|e| {
                e.containers.iter().any(|c| super::cgroups::bare_container_id(c) == container.id)
            })
            .map(|e| Pod {
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                pod_labels: e.labels.clone(),
            });
        (Some(Container { id: container.id, runtime: container.runtime }), pod)
    }
}
