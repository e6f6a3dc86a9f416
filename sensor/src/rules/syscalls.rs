//! The syscalls rules can name beyond exec, open, unlink, rename, bind and connect: their
//! x86_64 numbers, which arguments are strings the kernel copies, and Falco's parameter names
//! for their enter (`evt.dir=>`) and exit (`evt.dir=<`) events, with how each is printed.
//!
//! The kernel sends one event per call, at exit, with the arguments kept from entry and the
//! result ([`sensor_common::host::SyscallArgsEvent`]); the rules see it twice, as Falco's enter
//! event and then as its exit event.

use super::fields::Class;

/// How a parameter is taken from the event and printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string argument the kernel copied (a path).
    Str,
    /// A signed integer argument (descriptors, lengths).
    Int,
    /// Octal flags of `chmod`/`mkdir`: `0755(S_IRUSR|...)`.
    Mode,
    /// `ptrace` request: `PTRACE_ATTACH`.
    PtraceRequest,
    /// `socket` domain: `AF_PACKET`.
    SocketDomain,
    /// A uid, printed as the user name when known.
    Uid,
    /// Hex flags.
    Hex,
}

/// A parameter of Falco's event: a syscall argument, or the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    Arg(&'static str, usize, Kind),
    /// The return value, named (`res`, `fd`).
    Res(&'static str),
}

/// One syscall the rules can name.
#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    pub nr: u32,
    pub class: Class,
    /// Bit i: argument i is a user string the kernel copies (at most two).
    pub strings: u32,
    pub enter: &'static [Param],
    pub exit: &'static [Param],
}

use Kind::{Hex, Int, Mode, PtraceRequest, SocketDomain, Str, Uid};
use Param::{Arg, Res};

/// Every syscall with its numbers (x86_64) and Falco's parameters.
pub const SPECS: &[Spec] = &[
    // The inbound side of sockets (Falco's `inbound` macro): the descriptor's addresses come
    // from /proc/<pid>/net while the process holds it.
    Spec {
        name: "accept",
        nr: 43,
        class: Class::Accept,
        strings: 0,
        enter: &[],
        exit: &[Res("fd")],
    },
    Spec {
        name: "accept4",
        nr: 288,
        class: Class::Accept4,
        strings: 0,
        enter: &[Arg("flags", 3, Int)],
        exit: &[Res("fd")],
    },
    Spec {
        name: "listen",
        nr: 50,
        class: Class::Listen,
        strings: 0,
        enter: &[Arg("fd", 0, Int), Arg("backlog", 1, Int)],
        exit: &[Res("res")],
    },
    Spec {
        name: "recvfrom",
        nr: 45,
        class: Class::Recvfrom,
        strings: 0,
        enter: &[Arg("fd", 0, Int), Arg("size", 2, Int)],
        exit: &[Res("res")],
    },
    Spec {
        name: "recvmsg",
        nr: 47,
        class: Class::Recvmsg,
        strings: 0,
        enter: &[Arg("fd", 0, Int)],
        exit: &[Res("res"), Arg("size", 2, Int)],
    },
    Spec {
        name: "ptrace",
        nr: 101,
        class: Class::Ptrace,
        strings: 0,
        enter: &[Arg("request", 0, PtraceRequest), Arg("pid", 1, Int)],
        exit: &[Res("res"), Arg("addr", 2, Hex), Arg("data", 3, Hex)],
    },
    Spec {
        name: "symlink",
        nr: 88,
        class: Class::Symlink,
        strings: 0b11,
        enter: &[],
        exit: &[Res("res"), Arg("target", 0, Str), Arg("linkpath", 1, Str)],
    },
    Spec {
        name: "symlinkat",
        nr: 266,
        class: Class::Symlinkat,
        strings: 0b101,
        enter: &[],
        exit: &[
            Res("res"),
            Arg("target", 0, Str),
            Arg("linkdirfd", 1, Int),
            Arg("linkpath", 2, Str),
        ],
    },
    Spec {
        name: "link",
        nr: 86,
        class: Class::Link,
        strings: 0b11,
        enter: &[],
        exit: &[Res("res"), Arg("oldpath", 0, Str), Arg("newpath", 1, Str)],
    },
    Spec {
        name: "linkat",
        nr: 265,
        class: Class::Linkat,
        strings: 0b1010,
        enter: &[],
        exit: &[
            Res("res"),
            Arg("olddir", 0, Int),
            Arg("oldpath", 1, Str),
            Arg("newdir", 2, Int),
            Arg("newpath", 3, Str),
            Arg("flags", 4, Hex),
        ],
    },
    Spec {
        name: "socket",
        nr: 41,
        class: Class::Socket,
        strings: 0,
        enter: &[Arg("domain", 0, SocketDomain), Arg("type", 1, Int), Arg("proto", 2, Int)],
        exit: &[Res("fd")],
    },
    Spec {
        name: "dup",
        nr: 32,
        class: Class::Dup,
        strings: 0,
        enter: &[Arg("fd", 0, Int)],
        exit: &[Res("res"), Arg("oldfd", 0, Int)],
    },
    Spec {
        name: "dup2",
        nr: 33,
        class: Class::Dup2,
        strings: 0,
        enter: &[Arg("fd", 0, Int)],
        exit: &[Res("res"), Arg("oldfd", 0, Int), Arg("newfd", 1, Int)],
    },
    Spec {
        name: "dup3",
        nr: 292,
        class: Class::Dup3,
        strings: 0,
        enter: &[Arg("fd", 0, Int)],
        exit: &[Res("res"), Arg("oldfd", 0, Int), Arg("newfd", 1, Int), Arg("flags", 2, Hex)],
    },
    Spec {
        name: "init_module",
        nr: 175,
        class: Class::InitModule,
        strings: 0b100,
        enter: &[],
        exit: &[Res("res"), Arg("length", 1, Int), Arg("uargs", 2, Str)],
    },
    Spec {
        name: "finit_module",
        nr: 313,
        class: Class::FinitModule,
        strings: 0b10,
        enter: &[],
        exit: &[Res("res"), Arg("fd", 0, Int), Arg("uargs", 1, Str), Arg("flags", 2, Hex)],
    },
    Spec {
        name: "chmod",
        nr: 90,
        class: Class::Chmod,
        strings: 0b1,
        enter: &[],
        exit: &[Res("res"), Arg("filename", 0, Str), Arg("mode", 1, Mode)],
    },
    Spec {
        name: "fchmod",
        nr: 91,
        class: Class::Fchmod,
        strings: 0,
        enter: &[],
        exit: &[Res("res"), Arg("fd", 0, Int), Arg("mode", 1, Mode)],
    },
    Spec {
        name: "fchmodat",
        nr: 268,
        class: Class::Fchmodat,
        strings: 0b10,
        enter: &[],
        exit: &[Res("res"), Arg("dirfd", 0, Int), Arg("filename", 1, Str), Arg("mode", 2, Mode)],
    },
    Spec {
        name: "mkdir",
        nr: 83,
        class: Class::Mkdir,
        strings: 0b1,
        enter: &[Arg("mode", 1, Mode)],
        exit: &[Res("res"), Arg("path", 0, Str)],
    },
    Spec {
        name: "mkdirat",
        nr: 258,
        class: Class::Mkdirat,
        strings: 0b10,
        enter: &[],
        exit: &[Res("res"), Arg("dirfd", 0, Int), Arg("path", 1, Str), Arg("mode", 2, Mode)],
    },
    Spec {
        name: "setns",
        nr: 308,
        class: Class::Setns,
        strings: 0,
        enter: &[Arg("fd", 0, Int), Arg("nstype", 1, Hex)],
        exit: &[Res("res")],
    },
    Spec {
        name: "unshare",
        nr: 272,
        class: Class::Unshare,
        strings: 0,
        enter: &[Arg("flags", 0, Hex)],
        exit: &[Res("res")],
    },
    Spec {
        name: "setuid",
        nr: 105,
        class: Class::Setuid,
        strings: 0,
        enter: &[Arg("uid", 0, Uid)],
        exit: &[Res("res")],
    },
    Spec {
        name: "mount",
        nr: 165,
        class: Class::Mount,
        strings: 0b11,
        enter: &[Arg("flags", 3, Hex)],
        exit: &[Res("res"), Arg("dev", 0, Str), Arg("dir", 1, Str)],
    },
    Spec {
        name: "userfaultfd",
        nr: 323,
        class: Class::Userfaultfd,
        strings: 0,
        enter: &[],
        exit: &[Res("res"), Arg("flags", 0, Hex)],
    },
];

/// The spec of a syscall number.
pub fn by_nr(nr: u32) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.nr == nr)
}

/// The spec of a class (syscall classes only).
pub fn by_class(class: Class) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.class == class)
}

/// `ptrace` request names (linux/ptrace.h).
pub fn ptrace_request(request: u64) -> Option<&'static str> {
    Some(match request {
        0 => "PTRACE_TRACEME",
        1 => "PTRACE_PEEKTEXT",
        2 => "PTRACE_PEEKDATA",
        3 => "PTRACE_PEEKUSR",
        4 => "PTRACE_POKETEXT",
        5 => "PTRACE_POKEDATA",
        6 => "PTRACE_POKEUSR",
        7 => "PTRACE_CONT",
        8 => "PTRACE_KILL",
        9 => "PTRACE_SINGLESTEP",
        12 => "PTRACE_GETREGS",
        13 => "PTRACE_SETREGS",
        14 => "PTRACE_GETFPREGS",
        15 => "PTRACE_SETFPREGS",
        16 => "PTRACE_ATTACH",
        17 => "PTRACE_DETACH",
        18 => "PTRACE_GETFPXREGS",
        19 => "PTRACE_SETFPXREGS",
        24 => "PTRACE_SYSCALL",
        0x4200 => "PTRACE_SETOPTIONS",
        0x4201 => "PTRACE_GETEVENTMSG",
        0x4202 => "PTRACE_GETSIGINFO",
        0x4203 => "PTRACE_SETSIGINFO",
        0x4204 => "PTRACE_GETREGSET",
        0x4205 => "PTRACE_SETREGSET",
        0x4206 => "PTRACE_SEIZE",
        0x4207 => "PTRACE_INTERRUPT",
        0x4208 => "PTRACE_LISTEN",
        0x4209 => "PTRACE_PEEKSIGINFO",
        _ => return None,
    })
}

/// `socket` domain names (linux/socket.h).
pub fn socket_domain(domain: u64) -> Option<&'static str> {
    Some(match domain {
        0 => "AF_UNSPEC",
        1 => "AF_UNIX",
        2 => "AF_INET",
        10 => "AF_INET6",
        16 => "AF_NETLINK",
        17 => "AF_PACKET",
        _ => return None,
    })
}

/// `0755(S_IRUSR|S_IWUSR|...)`, as libsinsp prints a mode.
pub fn mode(out: &mut String, mode: u64) {
    use std::fmt::Write as _;
    const BITS: [(u64, &str); 12] = [
        (0o4000, "S_ISUID"),
        (0o2000, "S_ISGID"),
        (0o1000, "S_ISVTX"),
        (0o400, "S_IRUSR"),
        (0o200, "S_IWUSR"),
        (0o100, "S_IXUSR"),
        (0o40, "S_IRGRP"),
        (0o20, "S_IWGRP"),
        (0o10, "S_IXGRP"),
        (0o4, "S_IROTH"),
        (0o2, "S_IWOTH"),
        (0o1, "S_IXOTH"),
    ];
    out.clear();
    let _ = write!(out, "0{:o}(", mode & 0o7777);
    let mut first = true;
    for (bit, name) in BITS {
        if mode & bit != 0 {
            if !first {
                out.push('|');
            }
            out.push_str(name);
            first = false;
        }
    }
    out.push(')');
}

/// `E<NAME>` for a negative return value (`-2` → `ENOENT`), as Falco's `evt.res`.
pub fn errno_name(ret: i64) -> String {
    let errno = i32::try_from(-ret).unwrap_or(0);
    let name = match errno {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        4 => "EINTR",
        5 => "EIO",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        20 => "ENOTDIR",
        21 => "EISDIR",
        22 => "EINVAL",
        24 => "EMFILE",
        28 => "ENOSPC",
        30 => "EROFS",
        36 => "ENAMETOOLONG",
        38 => "ENOSYS",
        93 => "EPROTONOSUPPORT",
        95 => "EOPNOTSUPP",
        97 => "EAFNOSUPPORT",
        115 => "EINPROGRESS",
        _ => return format!("E{errno}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_formats() {
        assert_eq!(by_nr(101).map(|s| s.name), Some("ptrace"));
        assert_eq!(ptrace_request(16), Some("PTRACE_ATTACH"));
        assert_eq!(socket_domain(17), Some("AF_PACKET"));
        let mut m = String::new();
        mode(&mut m, 0o4755);
        assert_eq!(m, "04755(S_ISUID|S_IRUSR|S_IWUSR|S_IXUSR|S_IRGRP|S_IXGRP|S_IROTH|S_IXOTH)");
        assert_eq!(errno_name(-2), "ENOENT");
        for spec in SPECS {
            assert!(spec.strings.count_ones() <= 2, "{}", spec.name);
            assert_eq!(Class::of_name(spec.name), Some(spec.class), "{}", spec.name);
        }
    }
}
