//! The agent's view of live processes, filled from exec events and emptied by exit events, so
//! events that carry only a pid can name the binary, its arguments and its parent.

use std::collections::HashMap;

/// Processes remembered at most; beyond it new ones are looked up in /proc instead.
const MAX_PROCESSES: usize = 65_536;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub binary: String,
    pub args: Vec<String>,
    pub cwd: String,
    pub ppid: u32,
    /// The task's comm (what Falco calls `proc.name`).
    pub comm: String,
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
    Some(ProcessInfo { binary, args, cwd, ppid, comm })
}

#[cfg(test)]
mod tests {
    use super::*;

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
