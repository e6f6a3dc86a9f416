//! The agent's view of live processes, filled from exec events and emptied by exit events, so
//! events that carry only a pid can name the binary, its arguments and its parent.

use std::collections::HashMap;

/// Processes remembered at most; beyond it new ones are looked up in /proc instead.
const MAX_PROCESSES: usize = 65_536;
/// Ancestors read from /proc at most per event: deeper than any real process tree, and a
/// bound on the work one event can cause.
pub const MAX_ANCESTRY: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub binary: String,
    pub args: Vec<String>,
    pub cwd: String,
    pub ppid: u32,
    /// The task's comm (what Falco calls `proc.name`).
    pub comm: String,
    /// The exec record's `FLAG_EXE_*` bits (the executable's origin); 0 when the process
    /// was found in `/proc` instead.
    pub exe_flags: u32,
}

#[derive(Debug, Default)]
pub struct ProcessTable {
    by_pid: HashMap<u32, ProcessInfo>,
}

impl ProcessTable {
    pub fn exec(&mut self, pid: u32, info: ProcessInfo) {
        if self.by_pid.len() < MAX_PROCESSES || self.by_pid.contains_key(&pid) {
            self.by_pid.insert(pid, info);
        }
    }

    pub fn exit(&mut self, pid: u32) -> Option<ProcessInfo> {
        self.by_pid.remove(&pid)
    }

    /// A process's information: remembered from its exec, or read from /proc for processes
    /// that started before the agent (empty when it is already gone).
    pub fn get(&self, pid: u32) -> ProcessInfo {
        if let Some(info) = self.by_pid.get(&pid) {
            return info.clone();
        }
        from_proc(pid).unwrap_or_default()
    }

    /// Makes sure `pid` and its ancestors are remembered: those that started before the
    /// agent (or forked without exec) are read from /proc once and kept until their exit
    /// event, so `proc.aname[N]`, `proc.apid[N]` and `proc.pname` know them. Stops at the
    /// first remembered ancestor (its own ancestors were filled when it was), at pid 0, or
    /// after [`MAX_ANCESTRY`] levels. Returns how many were read from /proc.
    pub fn fill_ancestry(&mut self, pid: u32) -> usize {
        let mut pid = pid;
        let mut read = 0;
        for _ in 0..MAX_ANCESTRY {
            if pid == 0 || self.by_pid.contains_key(&pid) || self.by_pid.len() >= MAX_PROCESSES {
                break;
            }
            let Some(info) = from_proc(pid) else { break };
            let parent = info.ppid;
            self.by_pid.insert(pid, info);
            read += 1;
            // A pid that is its own ancestor cannot happen; guard the walk anyway.
            if parent == pid {
                break;
            }
            pid = parent;
        }
        read
    }

    /// A remembered process, without the /proc fallback (for ancestry walks).
    pub fn peek(&self, pid: u32) -> Option<&ProcessInfo> {
        self.by_pid.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

fn from_proc(pid: u32) -> Option<ProcessInfo> {
    if pid == 0 {
        return None;
    }
    let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let binary = std::fs::read_link(dir.join("exe")).ok()?.display().to_string();
    let args = std::fs::read(dir.join("cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let cwd =
        std::fs::read_link(dir.join("cwd")).map(|p| p.display().to_string()).unwrap_or_default();
    let ppid = std::fs::read_to_string(dir.join("stat"))
        .ok()
        .and_then(|stat| {
            // pid (comm) state ppid ...; comm may hold spaces and parentheses.
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0);
    let comm = std::fs::read_to_string(dir.join("comm"))
        .map(|c| c.trim_end_matches('\n').to_owned())
        .unwrap_or_default();
    Some(ProcessInfo { binary, args, cwd, ppid, comm, exe_flags: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestry_is_filled_from_proc_once_and_forgotten_on_exit() {
        let mut table = ProcessTable::default();
        let me = std::process::id();
        let read = table.fill_ancestry(me);
        assert!(read >= 2, "this process and its parent chain up to pid 1: {read}");
        let parent = table.peek(me).expect("filled").ppid;
        assert!(table.peek(parent).is_some(), "the parent too");
        assert_eq!(table.fill_ancestry(me), 0, "cached");
        table.exit(me);
        assert_eq!(table.fill_ancestry(me), 1, "read again after its exit");
    }

    #[test]
    fn exits_forget_and_proc_fills_in() {
        let mut table = ProcessTable::default();
        table.exec(7, ProcessInfo { binary: "/bin/x".into(), ..ProcessInfo::default() });
        assert_eq!(table.get(7).binary, "/bin/x");
        assert!(table.exit(7).is_some());
        assert!(table.is_empty());
        // This test process is alive: /proc knows it.
        let me = table.get(std::process::id());
        assert!(!me.binary.is_empty());
        assert!(me.ppid > 0);
    }
}
