//! The Falco fields we can fill from our host events, their types, and extraction from the
//! enriched event view without allocating (computed strings go into a reused scratch buffer).

use sensor_common::host::{FLAG_EXE_CHECKED, FLAG_EXE_FROM_MEMFD, FLAG_EXE_UPPER_LAYER};
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
    // One class per syscall of [`super::syscalls::SPECS`].
    Ptrace = 7,
    Symlink = 8,
    Symlinkat = 9,
    Link = 10,
    Linkat = 11,
    Socket = 12,
    Dup = 13,
    Dup2 = 14,
    Dup3 = 15,
    InitModule = 16,
    FinitModule = 17,
    Chmod = 18,
    Fchmod = 19,
    Fchmodat = 20,
    Mkdir = 21,
    Mkdirat = 22,
    Setns = 23,
    Unshare = 24,
    Setuid = 25,
    Mount = 26,
    Userfaultfd = 27,
    Accept = 28,
    Accept4 = 29,
    Listen = 30,
    Recvfrom = 31,
    Recvmsg = 32,
}

pub const CLASSES: usize = 33;
/// A set of [`Class`]es, one bit each.
pub type ClassMask = u64;
pub const ALL_CLASSES: ClassMask = (1 << CLASSES) - 1;

impl Class {
    pub const ALL: [Self; CLASSES] = [
        Self::Exec,
        Self::Exit,
        Self::Open,
        Self::Unlink,
        Self::Rename,
        Self::Bind,
        Self::Connect,
        Self::Ptrace,
        Self::Symlink,
        Self::Symlinkat,
        Self::Link,
        Self::Linkat,
        Self::Socket,
        Self::Dup,
        Self::Dup2,
        Self::Dup3,
        Self::InitModule,
        Self::FinitModule,
        Self::Chmod,
        Self::Fchmod,
        Self::Fchmodat,
        Self::Mkdir,
        Self::Mkdirat,
        Self::Setns,
        Self::Unshare,
        Self::Setuid,
        Self::Mount,
        Self::Userfaultfd,
        Self::Accept,
        Self::Accept4,
        Self::Listen,
        Self::Recvfrom,
        Self::Recvmsg,
    ];

    pub const fn bit(self) -> ClassMask {
        1 << self as u8
    }

    /// The `evt.type` we print for the class.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exec => "execve",
            Self::Exit => "procexit",
            Self::Open => "openat",
            Self::Unlink => "unlinkat",
            Self::Rename => "renameat2",
            Self::Bind => "bind",
            Self::Connect => "connect",
            other => super::syscalls::by_class(other).map_or("unknown", |s| s.name),
        }
    }

    /// Whether events of the class come from the rules' own syscall table (and are seen as an
    /// enter and an exit event).
    pub fn is_syscall(self) -> bool {
        self as u8 >= Self::Ptrace as u8
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
            other => {
                return super::syscalls::SPECS.iter().find(|s| s.name == other).map(|s| s.class);
            }
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
            Detail::SyscallArgs(op) => super::syscalls::by_nr(op.nr)?.class,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Str,
    Int,
    Bool,
    /// An address compared with networks (`fd.net`, `fd.snet`): the value is the address.
    Net,
    /// An address compared with host names (`fd.sip.name`): the value is the address.
    Dns,
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
    // Event.
    EvtNum,
    EvtRes,
    EvtRawres,
    /// `evt.arg.NAME` (the argument by Falco's name for it).
    EvtArg(String),
    /// `evt.arg[N]`.
    EvtArgIndex(u8),
    EvtArgs,
    // Process, from /proc when the event does not carry it.
    ProcTty,
    ProcSname,
    ProcVpid,
    ProcEnv,
    ProcDuration,
    ProcPexe,
    /// `proc.aexe[N]`.
    ProcAexe(u8),
    /// `proc.aexepath[N]`.
    ProcAexepath(u8),
    ProcIsExeUpperLayer,
    ProcIsExeFromMemfd,
    ProcExeInoCtime,
    ProcExeInoMtime,
    ProcExeInoCtimeDurationProcStart,
    ProcIsVpgidLeader,
    ThreadCapEffective,
    ThreadCapPermitted,
    UserLoginuid,
    UserLoginname,
    GroupName,
    // File descriptor.
    FdNum,
    FdNameraw,
    /// The path with symlinks resolved by the kernel (ours; `fd.name` is the path as the
    /// process passed it, joined with its working directory, as in Falco).
    FdRealname,
    FdConnected,
    FdNameChanged,
    FdPort,
    FdSockfamily,
    /// `fd.ip`, `fd.cip`, `fd.lip`: the event's address.
    FdIp,
    FdCip,
    FdLip,
    /// `fd.net`, `fd.cnet`, `fd.snet`, `fd.lnet`, `fd.rnet`: the address, tested with networks.
    FdNet(u8),
    /// `fd.sip.name`, `fd.rip.name`, `fd.cip.name`, `fd.lip.name`.
    FdIpName(u8),
    // Container metadata (endpoints file or Kubernetes pod).
    ContainerImage,
    ContainerImageRepository,
    ContainerImageTag,
    ContainerImageDigest,
    ContainerPrivileged,
    ContainerStartTs,
    /// Output only: `%container.info` (Falco prints the container's id and name).
    ContainerInfo,
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
    "evt.num",
    "evt.res",
    "evt.rawres",
    "evt.arg.NAME",
    "evt.arg[N]",
    "evt.args",
    "proc.tty",
    "proc.sname",
    "proc.vpid",
    "proc.env",
    "proc.duration",
    "proc.pexe",
    "proc.aexe[N]",
    "proc.aexepath[N]",
    "proc.is_exe_upper_layer",
    "proc.is_exe_from_memfd",
    "proc.exe_ino.ctime",
    "proc.exe_ino.mtime",
    "proc.exe_ino.ctime_duration_proc_start",
    "proc.is_vpgid_leader",
    "thread.cap_effective",
    "thread.cap_permitted",
    "user.loginuid",
    "user.loginname",
    "group.name",
    "fd.num",
    "fd.nameraw",
    "fd.realname",
    "fd.connected",
    "fd.name_changed",
    "fd.port",
    "fd.sockfamily",
    "fd.ip",
    "fd.cip",
    "fd.lip",
    "fd.net",
    "fd.cnet",
    "fd.snet",
    "fd.lnet",
    "fd.rnet",
    "fd.sip.name",
    "fd.cip.name",
    "fd.rip.name",
    "fd.lip.name",
    "container.image",
    "container.image.repository",
    "container.image.tag",
    "container.image.digest",
    "container.privileged",
    "container.start_ts",
    "container.info",
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
            ("evt.num", None) => Self::EvtNum,
            ("evt.res", None) => Self::EvtRes,
            ("evt.rawres", None) => Self::EvtRawres,
            ("evt.arg", Some(n)) => Self::EvtArgIndex(n.parse().ok()?),
            ("evt.args", None) => Self::EvtArgs,
            ("proc.tty", None) => Self::ProcTty,
            ("proc.sname", None) => Self::ProcSname,
            ("proc.vpid", None) => Self::ProcVpid,
            ("proc.env", None) => Self::ProcEnv,
            ("proc.duration", None) => Self::ProcDuration,
            ("proc.pexe", None) => Self::ProcPexe,
            ("proc.aexe", Some(n)) => Self::ProcAexe(n.parse().ok()?),
            ("proc.aexepath", Some(n)) => Self::ProcAexepath(n.parse().ok()?),
            ("proc.is_exe_upper_layer", None) => Self::ProcIsExeUpperLayer,
            ("proc.is_exe_from_memfd", None) => Self::ProcIsExeFromMemfd,
            ("proc.exe_ino.ctime", None) => Self::ProcExeInoCtime,
            ("proc.exe_ino.mtime", None) => Self::ProcExeInoMtime,
            ("proc.exe_ino.ctime_duration_proc_start", None) => {
                Self::ProcExeInoCtimeDurationProcStart
            }
            ("proc.is_vpgid_leader", None) => Self::ProcIsVpgidLeader,
            ("thread.cap_effective", None) => Self::ThreadCapEffective,
            ("thread.cap_permitted", None) => Self::ThreadCapPermitted,
            ("user.loginuid", None) => Self::UserLoginuid,
            ("user.loginname", None) => Self::UserLoginname,
            ("group.name", None) => Self::GroupName,
            ("fd.num", None) => Self::FdNum,
            ("fd.nameraw", None) => Self::FdNameraw,
            ("fd.realname", None) => Self::FdRealname,
            ("fd.connected", None) => Self::FdConnected,
            ("fd.name_changed", None) => Self::FdNameChanged,
            ("fd.port", None) => Self::FdPort,
            ("fd.sockfamily", None) => Self::FdSockfamily,
            ("fd.ip", None) => Self::FdIp,
            ("fd.cip", None) => Self::FdCip,
            ("fd.lip", None) => Self::FdLip,
            ("fd.net", None) => Self::FdNet(0),
            ("fd.cnet", None) => Self::FdNet(1),
            ("fd.snet", None) => Self::FdNet(2),
            ("fd.lnet", None) => Self::FdNet(3),
            ("fd.rnet", None) => Self::FdNet(4),
            ("fd.sip.name", None) => Self::FdIpName(0),
            ("fd.cip.name", None) => Self::FdIpName(1),
            ("fd.rip.name", None) => Self::FdIpName(2),
            ("fd.lip.name", None) => Self::FdIpName(3),
            ("container.image", None) => Self::ContainerImage,
            ("container.image.repository", None) => Self::ContainerImageRepository,
            ("container.image.tag", None) => Self::ContainerImageTag,
            ("container.image.digest", None) => Self::ContainerImageDigest,
            ("container.privileged", None) => Self::ContainerPrivileged,
            ("container.start_ts", None) => Self::ContainerStartTs,
            ("container.info", None) => Self::ContainerInfo,
            (arg, None) if arg.starts_with("evt.arg.") && arg.len() > "evt.arg.".len() => {
                Self::EvtArg(arg["evt.arg.".len()..].to_owned())
            }
            _ => return None,
        };
        Some(field)
    }

    /// Whether extracting the field reads `/proc` (or the descriptor tables): evaluated last.
    pub fn reads_proc(&self) -> bool {
        matches!(
            self,
            Self::ProcTty
                | Self::ProcSname
                | Self::ProcVpid
                | Self::ProcEnv
                | Self::ProcDuration
                | Self::ProcIsExeUpperLayer
                | Self::ProcIsExeFromMemfd
                | Self::ProcExeInoCtime
                | Self::ProcExeInoMtime
                | Self::ProcExeInoCtimeDurationProcStart
                | Self::ProcIsVpgidLeader
                | Self::ThreadCapEffective
                | Self::ThreadCapPermitted
                | Self::EvtArg(_)
                | Self::EvtArgIndex(_)
                | Self::EvtArgs
        )
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
            | Self::FdRport
            | Self::EvtNum
            | Self::EvtRawres
            | Self::ProcTty
            | Self::ProcVpid
            | Self::ProcDuration
            | Self::ProcExeInoCtime
            | Self::ProcExeInoMtime
            | Self::ProcExeInoCtimeDurationProcStart
            | Self::UserLoginuid
            | Self::FdNum
            | Self::FdPort
            | Self::ContainerStartTs => Type::Int,
            Self::EvtIsOpenRead
            | Self::EvtIsOpenWrite
            | Self::ProcIsExeUpperLayer
            | Self::ProcIsExeFromMemfd
            | Self::ProcIsVpgidLeader
            | Self::FdConnected
            | Self::FdNameChanged
            | Self::ContainerPrivileged => Type::Bool,
            Self::FdNet(_) => Type::Net,
            Self::FdIpName(_) => Type::Dns,
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
    /// Group names from the `group` file beside the passwd file.
    by_gid: HashMap<u32, String>,
    read_at: Option<Instant>,
    /// The last uid found in `by_uid`.
    last: Option<u32>,
}

impl Default for Users {
    fn default() -> Self {
        Self::new("/etc/passwd")
    }
}

impl Users {
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        let mut users = Self {
            path: path.into(),
            by_uid: HashMap::new(),
            by_gid: HashMap::new(),
            read_at: None,
            last: None,
        };
        users.reload();
        users
    }

    fn reload(&mut self) {
        self.read_at = Some(Instant::now());
        self.last = None;
        let ids = |text: &str| -> HashMap<u32, String> {
            text.lines()
                .filter_map(|line| {
                    let mut parts = line.split(':');
                    let name = parts.next()?;
                    let id = parts.nth(1)?.parse().ok()?;
                    Some((id, name.to_owned()))
                })
                .collect()
        };
        if let Ok(text) = std::fs::read_to_string(&self.path) {
            self.by_uid = ids(&text);
        }
        if let Ok(text) = std::fs::read_to_string(self.path.with_file_name("group")) {
            self.by_gid = ids(&text);
        }
    }

    /// The name of group `gid`.
    pub fn group(&self, gid: u32) -> Option<&str> {
        self.by_gid.get(&gid).map(String::as_str)
    }

    /// Makes sure `uid` was looked up recently (call before evaluating).
    pub fn prepare(&mut self, uid: u32) {
        // Most events come from the uid of the one before.
        if self.last == Some(uid) {
            return;
        }
        if self.by_uid.contains_key(&uid) {
            self.last = Some(uid);
            return;
        }
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
    /// Falco's `evt.num`: this event's number, from 1, in the order the evaluator saw them.
    pub num: u64,
    /// Which of Falco's two events of a syscall this view is (`evt.dir`).
    pub dir: Dir,
}

/// Falco's event direction: `>` for a syscall's enter event, `<` for its exit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Enter,
    Exit,
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

    /// The process's `FLAG_EXE_*` bits when its exec record carried them.
    fn exe_origin(&self) -> Option<u32> {
        let flags = self.event.process.exe_flags;
        (flags & FLAG_EXE_CHECKED != 0).then_some(flags)
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
        if let Detail::SyscallArgs(op) = &e.detail
            && let Some(spec) = super::syscalls::by_nr(op.nr)
            && let Some(val) = self.syscall_field(field, op, spec, scratch)
        {
            return val;
        }
        match field {
            Field::EvtType => Val::Str(self.class.name()),
            Field::EvtTime => Val::Int(i64::try_from(e.wall_ns).unwrap_or(0)),
            Field::EvtDir => Val::Str(match self.dir {
                Dir::Enter => ">",
                Dir::Exit => "<",
            }),
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
                (Some(f), _) => Val::Str(falco_path(f, h.pid, scratch)),
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
                Some(f) => {
                    let path = falco_path(f, h.pid, scratch);
                    Val::Str(match path.rfind('/') {
                        Some(0) => "/",
                        Some(i) => &path[..i],
                        None => "",
                    })
                }
                None => Val::Missing,
            },
            Field::FdFilename => match file {
                Some(f) => {
                    let path = falco_path(f, h.pid, scratch);
                    Val::Str(path.rsplit_once('/').map_or(path, |(_, n)| n))
                }
                None => Val::Missing,
            },
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
            // The name the pod gives the container (no runtime socket: unknown otherwise);
            // host processes are `host`.
            Field::ContainerName => match &e.container {
                Some(c) => {
                    c.info.as_ref().and_then(|i| i.name.as_deref()).map_or(Val::Missing, Val::Str)
                }
                None => Val::Str("host"),
            },
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
            _ => self.get_more(field, scratch),
        }
    }

    /// The fields beyond the event's own data: results, arguments, /proc, container
    /// metadata.
    fn get_more<'s>(&self, field: &'s Field, scratch: &'s mut String) -> Val<'s>
    where
        'a: 's,
    {
        use std::fmt::Write as _;

        use super::procfs;
        let e = self.event;
        let h = &e.header;
        let pid = h.pid;
        let file = match &e.detail {
            Detail::File(op) => Some(op),
            _ => None,
        };
        let sock = match &e.detail {
            Detail::Sock(op) => Some(op),
            _ => None,
        };
        let int = |v: Option<i64>| v.map_or(Val::Missing, Val::Int);
        let info = e.container.as_ref().and_then(|c| c.info.as_ref());
        let owned = |scratch: &'s mut String, v: Option<String>| match v {
            Some(v) => {
                *scratch = v;
                Val::Str(scratch)
            }
            None => Val::Missing,
        };
        match field {
            Field::EvtNum => Val::Int(i64::try_from(self.num).unwrap_or(i64::MAX)),
            // A failed open carries the error as its descriptor.
            Field::EvtRes => match file.and_then(|f| f.fd) {
                Some(fd) if fd < 0 => {
                    *scratch = super::syscalls::errno_name(i64::from(fd));
                    Val::Str(scratch)
                }
                _ => Val::Str("SUCCESS"),
            },
            Field::EvtRawres => match file.and_then(|f| f.fd) {
                Some(fd) => Val::Int(i64::from(fd)),
                None => Val::Int(0),
            },
            Field::EvtArg(name) => self.arg(name, scratch),
            Field::EvtArgIndex(i) => match self.arg_names().get(usize::from(*i)) {
                Some(name) => self.arg(name, scratch),
                None => Val::Missing,
            },
            Field::EvtArgs => {
                let mut out = String::new();
                for name in self.arg_names() {
                    let mut tmp = String::new();
                    let shown = match self.arg(name, &mut tmp) {
                        Val::Str(s) => s.to_owned(),
                        Val::Int(i) => i.to_string(),
                        Val::Bool(b) => b.to_string(),
                        Val::Missing => continue,
                    };
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    let _ = write!(out, "{name}={shown}");
                }
                owned(scratch, Some(out))
            }
            Field::ProcTty => int(procfs::tty(pid)),
            Field::ProcSname => owned(scratch, procfs::session(pid).and_then(procfs::comm)),
            Field::ProcVpid => int(procfs::vpid(pid)),
            Field::ProcEnv => owned(scratch, procfs::env(pid)),
            Field::ProcDuration => match procfs::start_boot_ns(pid) {
                Some(start) => {
                    Val::Int((i64::try_from(h.boot_ns).unwrap_or(i64::MAX) - start).max(0))
                }
                None => Val::Missing,
            },
            Field::ProcPexe => match self.ancestor(1) {
                Some((_, info)) => info.args.first().map_or(Val::Missing, |a| Val::Str(a)),
                None => Val::Missing,
            },
            Field::ProcAexe(n) => match self.ancestor(*n) {
                Some((_, info)) => info.args.first().map_or(Val::Missing, |a| Val::Str(a)),
                None => Val::Missing,
            },
            Field::ProcAexepath(n) => match self.ancestor(*n) {
                Some((_, info)) => non_empty(&info.binary),
                None => Val::Missing,
            },
            // From the exec record when the kernel read the executable's origin.
            Field::ProcIsExeUpperLayer => match self.exe_origin() {
                Some(f) => Val::Bool(f & FLAG_EXE_UPPER_LAYER != 0),
                None => procfs::exe_upper_layer(pid).map_or(Val::Missing, Val::Bool),
            },
            Field::ProcIsExeFromMemfd => match self.exe_origin() {
                Some(f) => Val::Bool(f & FLAG_EXE_FROM_MEMFD != 0),
                None => procfs::exe_from_memfd(pid).map_or(Val::Missing, Val::Bool),
            },
            Field::ProcExeInoCtime => int(procfs::exe_times(pid).map(|t| t.0)),
            Field::ProcExeInoMtime => int(procfs::exe_times(pid).map(|t| t.1)),
            Field::ProcExeInoCtimeDurationProcStart => {
                // Process start (wall clock) minus the executable's ctime.
                match (procfs::exe_times(pid), procfs::start_boot_ns(pid)) {
                    (Some((ctime, _)), Some(start_boot)) => {
                        let boot = i64::try_from(h.boot_ns).unwrap_or(0);
                        let start_wall =
                            i64::try_from(e.wall_ns).unwrap_or(0) - (boot - start_boot);
                        Val::Int(start_wall - ctime)
                    }
                    _ => Val::Missing,
                }
            }
            Field::ProcIsVpgidLeader => match (procfs::pgrp(pid), procfs::vpid(pid)) {
                // Compared in the root namespace: the group leader's pid is the pgid.
                (Some(pgrp), Some(_)) => Val::Bool(pgrp == pid),
                _ => Val::Missing,
            },
            Field::ThreadCapEffective => owned(scratch, procfs::caps(h.tid, "CapEff")),
            Field::ThreadCapPermitted => owned(scratch, procfs::caps(h.tid, "CapPrm")),
            // The task's audit login uid as the kernel record carries it (-1 when unset).
            Field::UserLoginuid => match h.loginuid {
                u32::MAX => Val::Int(-1),
                uid => Val::Int(i64::from(uid)),
            },
            Field::UserLoginname => match h.loginuid {
                u32::MAX => Val::Missing,
                uid => self.users.name(uid).map_or(Val::Missing, Val::Str),
            },
            Field::GroupName => self.users.group(h.gid).map_or(Val::Missing, Val::Str),
            // Falco: -1 for a failed open.
            Field::FdNum => match file {
                Some(f) => f.fd.map_or(Val::Missing, |fd| Val::Int(i64::from(fd.max(-1)))),
                None => Val::Missing,
            },
            Field::FdNameraw => match file {
                Some(f) => f.raw_path.as_deref().map_or(Val::Missing, Val::Str),
                None => Val::Missing,
            },
            Field::FdRealname => file.map_or(Val::Missing, |f| Val::Str(&f.path)),
            Field::FdConnected => {
                sock.map_or(Val::Missing, |s| Val::Bool(s.operation == "connect"))
            }
            Field::FdNameChanged => sock.map_or(Val::Missing, |_| Val::Bool(false)),
            Field::FdPort => sock.map_or(Val::Missing, |s| Val::Int(i64::from(s.port))),
            Field::FdSockfamily => sock.map_or(Val::Missing, |_| Val::Str("ip")),
            // The one address our socket events carry: the server's on connect, the local
            // one on bind.
            Field::FdIp | Field::FdNet(0) => match sock {
                Some(s) => {
                    scratch.clear();
                    let _ = write!(scratch, "{}", s.address);
                    Val::Str(scratch)
                }
                None => Val::Missing,
            },
            Field::FdCip | Field::FdNet(1) | Field::FdIpName(1) => Val::Missing,
            Field::FdLip | Field::FdNet(3) | Field::FdIpName(3) => match sock {
                Some(s) if s.operation == "bind" => {
                    scratch.clear();
                    let _ = write!(scratch, "{}", s.address);
                    Val::Str(scratch)
                }
                _ => Val::Missing,
            },
            Field::FdNet(_) | Field::FdIpName(_) => match sock {
                Some(s) if s.operation == "connect" => {
                    scratch.clear();
                    let _ = write!(scratch, "{}", s.address);
                    Val::Str(scratch)
                }
                _ => Val::Missing,
            },
            Field::ContainerImage => {
                info.and_then(|i| i.image.as_deref()).map_or(Val::Missing, Val::Str)
            }
            Field::ContainerImageRepository => {
                info.and_then(|i| i.image_parts().0).map_or(Val::Missing, Val::Str)
            }
            Field::ContainerImageTag => {
                info.and_then(|i| i.image_parts().1).map_or(Val::Missing, Val::Str)
            }
            Field::ContainerImageDigest => {
                info.and_then(|i| i.image_parts().2).map_or(Val::Missing, Val::Str)
            }
            Field::ContainerPrivileged => match &e.container {
                Some(_) => info.and_then(|i| i.privileged).map_or(Val::Missing, Val::Bool),
                None => Val::Bool(false),
            },
            Field::ContainerStartTs => info
                .and_then(|i| i.started_at.as_deref())
                .and_then(rfc3339_ns)
                .map_or(Val::Missing, Val::Int),
            Field::ContainerInfo => {
                // Falco's default: the container id and name (`%container.info`).
                scratch.clear();
                let id = e.container.as_ref().map_or("host", |c| c.id.get(..12).unwrap_or(&c.id));
                let name = match (&e.container, info.and_then(|i| i.name.as_deref())) {
                    (None, _) => "host",
                    (Some(_), Some(n)) => n,
                    (Some(_), None) => "<NA>",
                };
                let _ = write!(scratch, "container_id={id} container_name={name}");
                Val::Str(scratch)
            }
            _ => Val::Missing,
        }
    }

    /// Falco's argument names for this event, in order (`evt.arg[N]`, `evt.args`).
    pub fn arg_names(&self) -> &'static [&'static str] {
        match self.class {
            Class::Open => &["fd", "dirfd", "name", "flags", "mode"],
            Class::Exec => &["res", "exe", "args", "cwd", "flags"],
            Class::Unlink => &["res", "name"],
            Class::Rename => &["res", "oldpath", "newpath"],
            Class::Bind | Class::Connect => &["res", "addr"],
            Class::Exit => &[],
            _ => &[],
        }
    }

    /// The fields a rule-named syscall event answers itself: its type, direction, result,
    /// arguments (Falco's names for this direction), and the descriptor it names. None:
    /// the field is the process's or the container's, answered as for any event.
    fn syscall_field<'s>(
        &self,
        field: &'s Field,
        op: &'s crate::decode::SyscallArgsOp,
        spec: &'static super::syscalls::Spec,
        scratch: &'s mut String,
    ) -> Option<Val<'s>>
    where
        'a: 's,
    {
        use std::fmt::Write as _;

        use super::syscalls::Param;
        let params = match self.dir {
            Dir::Enter => spec.enter,
            Dir::Exit => spec.exit,
        };
        let exit = self.dir == Dir::Exit;
        // The descriptor the event is about: the first `fd`-like argument, or the result of
        // a call that returns one.
        let fd: Option<i64> = match spec.class {
            // After a dup the old descriptor may already be closed: the exit event's
            // descriptor is the new one (the same open file).
            Class::Dup | Class::Dup2 | Class::Dup3 if exit && op.ret >= 0 => Some(op.ret),
            Class::Dup | Class::Dup2 | Class::Dup3 | Class::Setns | Class::Fchmod => {
                Some(op.args[0] as i32 as i64)
            }
            Class::FinitModule => Some(op.args[0] as i32 as i64),
            Class::Socket | Class::Accept | Class::Accept4 if exit && op.ret >= 0 => Some(op.ret),
            Class::Listen | Class::Recvfrom | Class::Recvmsg => Some(op.args[0] as i32 as i64),
            _ => None,
        };
        let sock = || fd.and_then(|fd| super::procfs::fd_target(self.event.header.pid, fd));
        // On the accepting side the local end is the server (Falco's `fd.sip`, `fd.sport`).
        if matches!(spec.class, Class::Accept | Class::Accept4 | Class::Listen)
            && let Some(Ok(s)) = sock()
        {
            let (server, client) = (s.local, s.remote);
            let ip = |scratch: &'s mut String, a: std::net::SocketAddr| {
                *scratch = a.ip().to_string();
                Val::Str(scratch)
            };
            match field {
                Field::FdSip | Field::FdLip | Field::FdNet(2 | 3) => {
                    return Some(ip(scratch, server));
                }
                Field::FdCip | Field::FdRip | Field::FdNet(1 | 4) => {
                    return Some(ip(scratch, client));
                }
                Field::FdIp | Field::FdNet(0) => {
                    // Either end: the client's, unless it is unknown (a listener).
                    let a = if client.ip().is_unspecified() { server } else { client };
                    return Some(ip(scratch, a));
                }
                Field::FdSport | Field::FdLport => return Some(Val::Int(i64::from(server.port()))),
                Field::FdRport => return Some(Val::Int(i64::from(client.port()))),
                Field::FdConnected => return Some(Val::Bool(!client.ip().is_unspecified())),
                _ => {}
            }
        }
        let users = self.users;
        let param_val = |p: &Param, scratch: &'s mut String| param_value(op, users, p, scratch);
        let name_of = |p: &Param| match *p {
            Param::Res(n) | Param::Arg(n, _, _) => n,
        };
        Some(match field {
            Field::EvtType => Val::Str(spec.name),
            Field::EvtRes if exit => {
                if op.ret < 0 {
                    *scratch = super::syscalls::errno_name(op.ret);
                    Val::Str(scratch)
                } else {
                    Val::Str("SUCCESS")
                }
            }
            Field::EvtRawres if exit => Val::Int(op.ret),
            Field::EvtRes | Field::EvtRawres => Val::Missing,
            Field::EvtArg(name) => match params.iter().find(|p| name_of(p) == name) {
                Some(p) => param_val(p, scratch),
                None => Val::Missing,
            },
            Field::EvtArgIndex(i) => match params.get(usize::from(*i)) {
                Some(p) => param_val(p, scratch),
                None => Val::Missing,
            },
            Field::EvtArgs => {
                let mut out = String::new();
                for p in params {
                    let mut tmp = String::new();
                    let shown = match param_value(op, users, p, &mut tmp) {
                        Val::Str(s) => s.to_owned(),
                        Val::Int(i) => i.to_string(),
                        Val::Bool(b) => b.to_string(),
                        Val::Missing => continue,
                    };
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    let _ = write!(out, "{}={shown}", name_of(p));
                }
                *scratch = out;
                Val::Str(scratch)
            }
            Field::FdNum => fd.map_or(Val::Missing, Val::Int),
            Field::FdType | Field::FdTypechar => {
                let (ty, ch) = match sock() {
                    Some(Ok(s)) if s.v6 => ("ipv6", "6"),
                    Some(Ok(_)) => ("ipv4", "4"),
                    Some(Err(t)) if t.starts_with('/') => ("file", "f"),
                    Some(Err(t)) if t.starts_with("pipe:") => ("pipe", "p"),
                    Some(Err(t)) if t.starts_with("socket:") => ("unix", "u"),
                    _ => return Some(Val::Missing),
                };
                Val::Str(if *field == Field::FdType { ty } else { ch })
            }
            Field::FdL4proto => match sock() {
                Some(Ok(s)) => Val::Str(s.proto),
                _ => Val::Missing,
            },
            Field::FdName => match sock() {
                Some(Ok(s)) => {
                    *scratch = format!("{}->{}", s.local, s.remote);
                    Val::Str(scratch)
                }
                Some(Err(t)) => {
                    *scratch = t;
                    Val::Str(scratch)
                }
                None => Val::Missing,
            },
            Field::FdSip | Field::FdRip | Field::FdIp | Field::FdNet(0 | 2 | 4) => match sock() {
                Some(Ok(s)) => {
                    *scratch = s.remote.ip().to_string();
                    Val::Str(scratch)
                }
                _ => Val::Missing,
            },
            Field::FdCip | Field::FdLip | Field::FdNet(1 | 3) => match sock() {
                Some(Ok(s)) => {
                    *scratch = s.local.ip().to_string();
                    Val::Str(scratch)
                }
                _ => Val::Missing,
            },
            Field::FdSport | Field::FdRport | Field::FdPort => match sock() {
                Some(Ok(s)) => Val::Int(i64::from(s.remote.port())),
                _ => Val::Missing,
            },
            Field::FdLport => match sock() {
                Some(Ok(s)) => Val::Int(i64::from(s.local.port())),
                _ => Val::Missing,
            },
            Field::FdDirectory
            | Field::FdFilename
            | Field::FdNameraw
            | Field::FdRealname
            | Field::EvtIsOpenRead
            | Field::EvtIsOpenWrite => Val::Missing,
            _ => return None,
        })
    }

    /// `evt.arg.NAME` for this event.
    fn arg<'s>(&self, name: &str, scratch: &'s mut String) -> Val<'s>
    where
        'a: 's,
    {
        use std::fmt::Write as _;
        let e = self.event;
        match (&e.detail, name) {
            (Detail::File(f), "fd") if f.operation == "open" => {
                f.fd.map_or(Val::Missing, |fd| Val::Int(i64::from(fd)))
            }
            (Detail::File(f), "dirfd") if f.operation == "open" => match f.dirfd {
                Some(-100) => Val::Str("AT_FDCWD"),
                Some(d) => Val::Int(i64::from(d)),
                None => Val::Missing,
            },
            (Detail::File(f), "name" | "path" | "filename") if f.operation != "rename" => {
                Val::Str(&f.path)
            }
            (Detail::File(f), "flags") if f.operation == "open" => match f.open_flags {
                Some(flags) => {
                    open_flags(scratch, flags);
                    Val::Str(scratch)
                }
                None => Val::Missing,
            },
            (Detail::File(f), "oldpath") if f.operation == "rename" => Val::Str(&f.path),
            (Detail::File(f), "newpath") if f.operation == "rename" => {
                f.new_path.as_deref().map_or(Val::Missing, Val::Str)
            }
            (Detail::File(_) | Detail::Sock(_), "res") => Val::Int(0),
            (Detail::Exec { .. }, "res") => Val::Int(0),
            (Detail::Exec { .. }, "exe") => {
                e.process.args.first().map_or(Val::Missing, |a| Val::Str(a))
            }
            (Detail::Exec { .. }, "cwd") => non_empty(&e.process.cwd),
            (Detail::Exec { .. }, "args") => {
                scratch.clear();
                for (i, a) in e.process.args.iter().skip(1).enumerate() {
                    if i > 0 {
                        scratch.push(' ');
                    }
                    scratch.push_str(a);
                }
                Val::Str(scratch)
            }
            (Detail::Exec { .. }, "flags") => {
                match super::procfs::exe_flags(
                    e.header.pid,
                    e.header.uid,
                    (e.process.exe_flags & FLAG_EXE_CHECKED != 0).then_some(e.process.exe_flags),
                ) {
                    Some(flags) => {
                        *scratch = flags;
                        Val::Str(scratch)
                    }
                    None => Val::Missing,
                }
            }
            (Detail::Sock(s), "addr") => {
                scratch.clear();
                let _ = match s.address {
                    std::net::IpAddr::V4(a) => write!(scratch, "{a}:{}", s.port),
                    std::net::IpAddr::V6(a) => write!(scratch, "[{a}]:{}", s.port),
                };
                Val::Str(scratch)
            }
            _ => Val::Missing,
        }
    }
}

/// One parameter of a rule-named syscall, printed as Falco prints its type.
fn param_value<'t>(
    op: &'t crate::decode::SyscallArgsOp,
    users: &'t Users,
    p: &super::syscalls::Param,
    scratch: &'t mut String,
) -> Val<'t> {
    use std::fmt::Write as _;

    use super::syscalls::{Kind, Param};
    match *p {
        Param::Res(_) => Val::Int(op.ret),
        Param::Arg(_, i, kind) => {
            let raw = op.args[i];
            match kind {
                Kind::Str => op
                    .strings
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map_or(Val::Missing, |(_, s)| Val::Str(s)),
                Kind::Int => Val::Int(raw as i32 as i64),
                Kind::Hex => {
                    scratch.clear();
                    let _ = write!(scratch, "{raw:#x}");
                    Val::Str(scratch)
                }
                Kind::Mode => {
                    super::syscalls::mode(scratch, raw);
                    Val::Str(scratch)
                }
                Kind::PtraceRequest => super::syscalls::ptrace_request(raw)
                    .map_or_else(|| Val::Int(raw as i64), Val::Str),
                Kind::SocketDomain => super::syscalls::socket_domain(raw)
                    .map_or_else(|| Val::Int(raw as i64), Val::Str),
                Kind::Uid => match users.name(raw as u32) {
                    Some(name) => Val::Str(name),
                    None => Val::Int(raw as i64),
                },
            }
        }
    }
}

/// Falco's rendering of open flags: `O_RDONLY`, `O_WRONLY` or `O_RDWR`, then the other
/// flags set, joined with `|` (`O_WRONLY|O_CREAT|O_TRUNC`).
pub fn open_flags(out: &mut String, flags: u32) {
    const NAMES: [(u32, &str); 12] = [
        (0o100, "O_CREAT"),
        (0o200, "O_EXCL"),
        (0o400, "O_NOCTTY"),
        (0o1000, "O_TRUNC"),
        (0o2000, "O_APPEND"),
        (0o4000, "O_NONBLOCK"),
        (0o10000, "O_DSYNC"),
        (0o40000, "O_DIRECT"),
        (0o200000, "O_DIRECTORY"),
        (0o400000, "O_NOFOLLOW"),
        (0o2000000, "O_CLOEXEC"),
        (0o20000000, "O_TMPFILE"),
    ];
    out.clear();
    out.push_str(match flags & 3 {
        1 => "O_WRONLY",
        2 => "O_RDWR",
        _ => "O_RDONLY",
    });
    for (bit, name) in NAMES {
        // O_TMPFILE includes O_DIRECTORY's bit.
        if flags & bit == bit {
            out.push('|');
            out.push_str(name);
        }
    }
}

/// Falco's `fd.name` for a file event: the path as the process passed it, joined with its
/// working directory and normalised lexically (symlinks not resolved). When the kernel could
/// not read the path the process passed (or it is relative to a directory descriptor), the
/// resolved path stands in. Computed once per event by the enrichment.
pub fn falco_name(f: &crate::decode::FileOp, pid: u32) -> String {
    let Some(raw) = f.raw_path.as_deref().filter(|r| !r.is_empty()) else {
        return f.path.clone();
    };
    if raw.starts_with('/') {
        return crate::decode::normalize(raw);
    }
    if f.dirfd.is_some_and(|d| d != -100) {
        return f.path.clone();
    }
    match super::procfs::cwd(pid) {
        Some(cwd) => crate::decode::normalize(&format!("{cwd}/{raw}")),
        None => f.path.clone(),
    }
}

/// `fd.name` of a file event (see [`falco_name`]).
fn falco_path<'s>(f: &'s crate::decode::FileOp, _pid: u32, _scratch: &'s mut String) -> &'s str {
    f.falco_name.as_deref().unwrap_or(&f.path)
}

/// `2024-05-01T10:00:00Z` (Kubernetes' `startedAt`; fractions and offsets accepted) →
/// nanoseconds since the epoch.
fn rfc3339_ns(t: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let month = time::Month::try_from(u8::try_from(mo).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?)
        .ok()?;
    let mut rest = &t[19..];
    let mut frac_ns = 0_i64;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        let mut v: i64 = f[..digits.min(9)].parse().unwrap_or(0);
        for _ in digits.min(9)..9 {
            v *= 10;
        }
        frac_ns = v;
        rest = &f[digits..];
    }
    let offset_s = match rest.as_bytes().first() {
        Some(b'Z' | b'z') | None => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let v = oh * 3600 + om * 60;
            if sign == b'+' { v } else { -v }
        }
        _ => return None,
    };
    let days = i64::from(date.to_julian_day()) - 2_440_588;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some(secs * 1_000_000_000 + frac_ns)
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
        assert_eq!(Field::parse("evt.buffer"), None);
        assert_eq!(Field::parse("evt.arg.request"), Some(Field::EvtArg("request".into())));
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
