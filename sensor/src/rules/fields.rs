//! The Falco fields we can fill from our host events, their types, and extraction from the
//! enriched event view without allocating (computed strings go into a reused scratch buffer).

use std::{collections::HashMap, time::Instant};

use crate::host::{
    process::{ProcessInfo, ProcessTable},
    record::{Detail, Enriched},
};

/// Event classes: what `evt.type` can be for our events. Several syscalls share a class
/// (the open hook decides at exit from the opened file and does not carry which of open,
/// openat, openat2 or creat it was).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Class {
    Exec = 0,
    Exit = 1,
    Open = 2,
    Unlink = 3,
    Rename = 4,
    Bind = 5,
    Connect = 6,
}

pub const CLASSES: usize = 7;
pub const ALL_CLASSES: u16 = (1 << CLASSES) - 1;

impl Class {
    pub const ALL: [Self; CLASSES] =
        [Self::Exec, Self::Exit, Self::Open, Self::Unlink, Self::Rename, Self::Bind, Self::Connect];

    pub const fn bit(self) -> u16 {
        1 << self as u8
    }

    /// The `evt.type` we print for the class.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Exec => "execve",
            Self::Exit => "procexit",
            Self::Open => "openat",
            Self::Unlink => "unlinkat",
            Self::Rename => "renameat2",
            Self::Bind => "bind",
            Self::Connect => "connect",
        }
    }

    /// The class of an `evt.type` name, None for syscalls we do not observe.
    pub fn of_name(name: &str) -> Option<Self> {
        Some(match name {
            "execve" | "execveat" => Self::Exec,
            "procexit" => Self::Exit,
            "open" | "openat" | "openat2" | "creat" => Self::Open,
            "unlink" | "unlinkat" => Self::Unlink,
            "rename" | "renameat" | "renameat2" => Self::Rename,
            "bind" => Self::Bind,
            "connect" => Self::Connect,
            _ => return None,
        })
    }

    /// The class of an event; syscall-policy events have none (rules do not see them).
    pub fn of(e: &Enriched) -> Option<Self> {
        Some(match &e.detail {
            Detail::Exec { .. } => Self::Exec,
            Detail::Exit => Self::Exit,
            Detail::File(op) => match op.operation {
                "open" => Self::Open,
                "rename" => Self::Rename,
                _ => Self::Unlink,
            },
            Detail::Sock(op) if op.operation == "bind" => Self::Bind,
            Detail::Sock(_) => Self::Connect,
            Detail::Syscall { .. } => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Str,
    Int,
    Bool,
}

/// Ancestors walked for `proc.aname` without an index.
pub const MAX_ANCESTORS: u8 = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    EvtType,
    EvtTime,
    EvtDir,
    EvtIsOpenRead,
    EvtIsOpenWrite,
    EvtHostname,
    ProcName,
    ProcExe,
    ProcExepath,
    ProcCmdline,
    ProcArgs,
    ProcPid,
    ProcTid,
    ProcPpid,
    ProcPname,
    ProcPexepath,
    ProcPcmdline,
    /// `proc.aname[N]`; 0 is the process itself. None: any ancestor.
    ProcAname(Option<u8>),
    ProcCwd,
    UserUid,
    UserName,
    GroupGid,
    FdName,
    FdDirectory,
    FdFilename,
    FdTypechar,
    FdType,
    FdSport,
    FdLport,
    FdRport,
    FdSip,
    FdRip,
    FdL4proto,
    ContainerId,
    ContainerFullId,
    ContainerName,
    ContainerRuntime,
    K8sNsName,
    K8sPodName,
    K8sPodLabels,
    K8sPodLabel(String),
}

/// Every field name we know, for documentation and `rules check`.
pub const NAMES: &[&str] = &[
    "evt.type",
    "evt.time",
    "evt.dir",
    "evt.is_open_read",
    "evt.is_open_write",
    "evt.hostname",
    "proc.name",
    "proc.exe",
    "proc.exepath",
    "proc.cmdline",
    "proc.args",
    "proc.pid",
    "proc.tid",
    "thread.tid",
    "proc.ppid",
    "proc.pname",
    "proc.pexepath",
    "proc.pcmdline",
    "proc.aname[N]",
    "proc.cwd",
    "user.uid",
    "user.name",
    "group.gid",
    "fd.name",
    "fd.directory",
    "fd.filename",
    "fd.typechar",
    "fd.type",
    "fd.sport",
    "fd.lport",
    "fd.rport",
    "fd.sip",
    "fd.rip",
    "fd.l4proto",
    "container.id",
    "container.full_id",
    "container.name",
    "container.runtime",
    "k8s.ns.name",
    "k8s.pod.name",
    "k8s.pod.labels",
    "k8s.pod.label[KEY]",
];

impl Field {
    /// Parses a field name as written in a condition or output; None when unknown.
    pub fn parse(name: &str) -> Option<Self> {
        let (base, arg) = match name.split_once('[') {
            Some((base, rest)) => (base, Some(rest.strip_suffix(']')?)),
            None => (name, None),
        };
        let field = match (base, arg) {
            ("evt.type", None) => Self::EvtType,
            ("evt.time", None) => Self::EvtTime,
            ("evt.dir", None) => Self::EvtDir,
            ("evt.is_open_read", None) => Self::EvtIsOpenRead,
            ("evt.is_open_write", None) => Self::EvtIsOpenWrite,
            ("evt.hostname", None) => Self::EvtHostname,
            ("proc.name", None) => Self::ProcName,
            ("proc.exe", None) => Self::ProcExe,
            ("proc.exepath", None) => Self::ProcExepath,
            ("proc.cmdline", None) => Self::ProcCmdline,
            ("proc.args", None) => Self::ProcArgs,
            ("proc.pid", None) => Self::ProcPid,
            ("proc.tid" | "thread.tid", None) => Self::ProcTid,
            ("proc.ppid", None) => Self::ProcPpid,
            ("proc.pname", None) => Self::ProcPname,
            ("proc.pexepath", None) => Self::ProcPexepath,
            ("proc.pcmdline", None) => Self::ProcPcmdline,
            ("proc.aname", None) => Self::ProcAname(None),
            ("proc.aname", Some(n)) => Self::ProcAname(Some(n.parse().ok()?)),
            ("proc.cwd", None) => Self::ProcCwd,
            ("user.uid", None) => Self::UserUid,
            ("user.name", None) => Self::UserName,
            ("group.gid", None) => Self::GroupGid,
            ("fd.name", None) => Self::FdName,
            ("fd.directory", None) => Self::FdDirectory,
            ("fd.filename", None) => Self::FdFilename,
            ("fd.typechar", None) => Self::FdTypechar,
            ("fd.type", None) => Self::FdType,
            ("fd.sport", None) => Self::FdSport,
            ("fd.lport", None) => Self::FdLport,
            ("fd.rport", None) => Self::FdRport,
            ("fd.sip", None) => Self::FdSip,
            ("fd.rip", None) => Self::FdRip,
            ("fd.l4proto", None) => Self::FdL4proto,
            ("container.id", None) => Self::ContainerId,
            ("container.full_id", None) => Self::ContainerFullId,
            ("container.name", None) => Self::ContainerName,
            ("container.runtime", None) => Self::ContainerRuntime,
            ("k8s.ns.name", None) => Self::K8sNsName,
            ("k8s.pod.name", None) => Self::K8sPodName,
            ("k8s.pod.labels", None) => Self::K8sPodLabels,
            ("k8s.pod.label", Some(key)) => Self::K8sPodLabel(key.to_owned()),
            _ => return None,
        };
        Some(field)
    }

    pub const fn kind(&self) -> Type {
        match self {
            Self::EvtTime
            | Self::ProcPid
            | Self::ProcTid
            | Self::ProcPpid
            | Self::UserUid
            | Self::GroupGid
            | Self::FdSport
            | Self::FdLport
            | Self::FdRport => Type::Int,
            Self::EvtIsOpenRead | Self::EvtIsOpenWrite => Type::Bool,
            _ => Type::Str,
        }
    }
}

/// A field's value for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    /// Not available for this event (Falco's `<NA>`, JSON null).
    Missing,
}

/// User names from the host's /etc/passwd, re-read at most every 10 s when a uid is unknown.
#[derive(Debug)]
pub struct Users {
    path: std::path::PathBuf,
    by_uid: HashMap<u32, String>,
    read_at: Option<Instant>,
}

impl Default for Users {
    fn default() -> Self {
        Self::new("/etc/passwd")
    }
}

impl Users {
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        let mut users = Self { path: path.into(), by_uid: HashMap::new(), read_at: None };
        users.reload();
        users
    }

    fn reload(&mut self) {
        self.read_at = Some(Instant::now());
        let Ok(text) = std::fs::read_to_string(&self.path) else { return };
        self.by_uid = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split(':');
                let name = parts.next()?;
                let uid = parts.nth(1)?.parse().ok()?;
                Some((uid, name.to_owned()))
            })
            .collect();
    }

    /// Makes sure `uid` was looked up recently (call before evaluating).
    pub fn prepare(&mut self, uid: u32) {
        if !self.by_uid.contains_key(&uid)
            && self.read_at.is_none_or(|t| t.elapsed().as_secs() >= 10)
        {
            self.reload();
        }
    }

    pub fn name(&self, uid: u32) -> Option<&str> {
        self.by_uid.get(&uid).map(String::as_str)
    }
}

/// Everything extraction reads.
pub struct Ctx<'a> {
    pub event: &'a Enriched,
    pub class: Class,
    pub processes: &'a ProcessTable,
    pub users: &'a Users,
    pub hostname: &'a str,
}

impl<'a> Ctx<'a> {
    /// Ancestor `n` (0 = the process, 1 = the parent); None past what the table knows.
    pub fn ancestor(&self, n: u8) -> Option<(&'a str, &'a ProcessInfo)> {
        match n {
            0 => Some((&self.event.header.comm, &self.event.process)),
            1 => (self.event.header.ppid != 0 || self.event.process.ppid != 0)
                .then_some((self.event.parent.comm.as_str(), &self.event.parent)),
            _ => {
                let mut info = &self.event.parent;
                for _ in 1..n {
                    if info.ppid == 0 {
                        return None;
                    }
                    info = self.processes.peek(info.ppid)?;
                }
                Some((info.comm.as_str(), info))
            }
        }
    }

    /// The value of `field`; computed strings are built in `scratch`.
    pub fn get<'s>(&self, field: &'s Field, scratch: &'s mut String) -> Val<'s>
    where
        'a: 's,
    {
        let e = self.event;
        let h = &e.header;
        let file = match &e.detail {
            Detail::File(op) => Some(op),
            _ => None,
        };
        let sock = match &e.detail {
            Detail::Sock(op) => Some(op),
            _ => None,
        };
        let opt = |v: Option<&'s str>| v.map_or(Val::Missing, Val::Str);
        match field {
            Field::EvtType => Val::Str(self.class.name()),
            Field::EvtTime => Val::Int(i64::try_from(e.wall_ns).unwrap_or(0)),
            Field::EvtDir => Val::Str("<"),
            Field::EvtIsOpenRead => file
                .filter(|f| f.operation == "open")
                .map_or(Val::Missing, |f| Val::Bool(f.access.contains(&"read"))),
            Field::EvtIsOpenWrite => {
                file.filter(|f| f.operation == "open").map_or(Val::Missing, |f| {
                    Val::Bool(f.access.contains(&"write") || f.access.contains(&"create"))
                })
            }
            Field::EvtHostname => Val::Str(self.hostname),
            Field::ProcName => Val::Str(&h.comm),
            Field::ProcExe => opt(e.process.args.first().map(String::as_str)),
            Field::ProcExepath => non_empty(&e.process.binary),
            Field::ProcCmdline => {
                cmdline(scratch, &h.comm, &e.process.args);
                Val::Str(scratch)
            }
            Field::ProcArgs => {
                scratch.clear();
                for (i, a) in e.process.args.iter().skip(1).enumerate() {
                    if i > 0 {
                        scratch.push(' ');
                    }
                    scratch.push_str(a);
                }
                Val::Str(scratch)
            }
            Field::ProcPid => Val::Int(i64::from(h.pid)),
            Field::ProcTid => Val::Int(i64::from(h.tid)),
            Field::ProcPpid => match if h.ppid != 0 { h.ppid } else { e.process.ppid } {
                0 => Val::Missing,
                p => Val::Int(i64::from(p)),
            },
            Field::ProcPname => match self.ancestor(1) {
                Some((comm, _)) if !comm.is_empty() => Val::Str(comm),
                _ => Val::Missing,
            },
            Field::ProcPexepath => match self.ancestor(1) {
                Some((_, info)) => non_empty(&info.binary),
                None => Val::Missing,
            },
            Field::ProcPcmdline => match self.ancestor(1) {
                Some((comm, info)) if !comm.is_empty() => {
                    cmdline(scratch, comm, &info.args);
                    Val::Str(scratch)
                }
                _ => Val::Missing,
            },
            Field::ProcAname(n) => match self.ancestor(n.unwrap_or(1)) {
                Some((comm, _)) if !comm.is_empty() => Val::Str(comm),
                _ => Val::Missing,
            },
            Field::ProcCwd => non_empty(&e.process.cwd),
            Field::UserUid => Val::Int(i64::from(h.uid)),
            Field::UserName => opt(self.users.name(h.uid)),
            Field::GroupGid => Val::Int(i64::from(h.gid)),
            Field::FdName => match (file, sock) {
                (Some(f), _) => Val::Str(&f.path),
                (_, Some(s)) => {
                    use std::fmt::Write as _;
                    scratch.clear();
                    let _ = match s.address {
                        std::net::IpAddr::V4(a) => write!(scratch, "{a}:{}", s.port),
                        std::net::IpAddr::V6(a) => write!(scratch, "[{a}]:{}", s.port),
                    };
                    Val::Str(scratch)
                }
                _ => Val::Missing,
            },
            Field::FdDirectory => match file {
                Some(f) => Val::Str(match f.path.rfind('/') {
                    Some(0) => "/",
                    Some(i) => &f.path[..i],
                    None => "",
                }),
                None => Val::Missing,
            },
            Field::FdFilename => {
                opt(file.map(|f| f.path.rsplit_once('/').map_or(f.path.as_str(), |(_, n)| n)))
            }
            Field::FdTypechar => match (file, sock) {
                (Some(_), _) => Val::Str("f"),
                (_, Some(s)) if s.address.is_ipv4() => Val::Str("4"),
                (_, Some(_)) => Val::Str("6"),
                _ => Val::Missing,
            },
            Field::FdType => match (file, sock) {
                (Some(_), _) => Val::Str("file"),
                (_, Some(s)) if s.address.is_ipv4() => Val::Str("ipv4"),
                (_, Some(_)) => Val::Str("ipv6"),
                _ => Val::Missing,
            },
            // A bind is the server side: its port is the server and the local port.
            Field::FdSport => sock.map_or(Val::Missing, |s| Val::Int(i64::from(s.port))),
            Field::FdLport => sock
                .filter(|s| s.operation == "bind")
                .map_or(Val::Missing, |s| Val::Int(i64::from(s.port))),
            Field::FdRport => sock
                .filter(|s| s.operation == "connect")
                .map_or(Val::Missing, |s| Val::Int(i64::from(s.port))),
            Field::FdSip | Field::FdRip => {
                let want_connect = *field == Field::FdRip;
                match sock.filter(|s| !want_connect || s.operation == "connect") {
                    Some(s) => {
                        use std::fmt::Write as _;
                        scratch.clear();
                        let _ = write!(scratch, "{}", s.address);
                        Val::Str(scratch)
                    }
                    None => Val::Missing,
                }
            }
            Field::FdL4proto => match sock.map(|s| s.protocol) {
                Some("TCP") => Val::Str("tcp"),
                Some("UDP") => Val::Str("udp"),
                Some(_) => Val::Str("unknown"),
                None => Val::Missing,
            },
            Field::ContainerId => {
                Val::Str(e.container.as_ref().map_or("host", |c| c.id.get(..12).unwrap_or(&c.id)))
            }
            Field::ContainerFullId => Val::Str(e.container.as_ref().map_or("host", |c| &c.id)),
            // No runtime socket: a container's name is unknown; host processes are `host`.
            Field::ContainerName => {
                if e.container.is_some() {
                    Val::Missing
                } else {
                    Val::Str("host")
                }
            }
            Field::ContainerRuntime => opt(e.container.as_ref().map(|c| c.runtime)),
            Field::K8sNsName => opt(e.pod.as_ref().map(|p| p.namespace.as_str())),
            Field::K8sPodName => opt(e.pod.as_ref().map(|p| p.name.as_str())),
            Field::K8sPodLabels => match &e.pod {
                Some(p) => {
                    scratch.clear();
                    for (i, (k, v)) in p.pod_labels.iter().enumerate() {
                        if i > 0 {
                            scratch.push_str(", ");
                        }
                        scratch.push_str(k);
                        scratch.push(':');
                        scratch.push_str(v);
                    }
                    Val::Str(scratch)
                }
                None => Val::Missing,
            },
            Field::K8sPodLabel(key) => {
                opt(e.pod.as_ref().and_then(|p| p.pod_labels.get(key)).map(String::as_str))
            }
        }
    }
}

fn non_empty(s: &str) -> Val<'_> {
    if s.is_empty() { Val::Missing } else { Val::Str(s) }
}

/// Falco's `proc.cmdline`: the name, then the arguments after argv[0].
fn cmdline(out: &mut String, comm: &str, args: &[String]) {
    out.clear();
    out.push_str(comm);
    for a in args.iter().skip(1) {
        out.push(' ');
        out.push_str(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_arguments() {
        assert_eq!(Field::parse("proc.aname[3]"), Some(Field::ProcAname(Some(3))));
        assert_eq!(Field::parse("proc.aname"), Some(Field::ProcAname(None)));
        assert_eq!(Field::parse("k8s.pod.label[app]"), Some(Field::K8sPodLabel("app".into())));
        assert_eq!(Field::parse("proc.aname[x]"), None);
        assert_eq!(Field::parse("fd.num"), None);
        assert_eq!(Field::parse("user.uid").map(|f| f.kind()), Some(Type::Int));
        for name in NAMES {
            let concrete = name.replace("[N]", "[2]").replace("[KEY]", "[app]");
            assert!(Field::parse(&concrete).is_some(), "{name}");
        }
    }

    #[test]
    fn users_come_from_a_passwd_file() {
        let path = std::env::temp_dir().join(format!("sensor-passwd-{}", std::process::id()));
        std::fs::write(&path, "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/:/bin/sh\n")
            .expect("write");
        let mut users = Users::new(&path);
        users.prepare(1000);
        assert_eq!(users.name(0), Some("root"));
        assert_eq!(users.name(1000), Some("web"));
        assert_eq!(users.name(5), None);
        let _ = std::fs::remove_file(path);
    }
}
