//! Event records as JSON lines (Tetragon's `process_exec` shape) on stdout.

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::{decode::Exec, sys::BootClock};

#[derive(Debug, Serialize)]
pub struct ExecRecord<'a> {
    pub process_exec: ProcessExec<'a>,
    pub node_name: &'a str,
    /// RFC 3339 with nanoseconds, UTC.
    pub time: String,
}

#[derive(Debug, Serialize)]
pub struct ProcessExec<'a> {
    pub process: Process<'a>,
}

#[derive(Debug, Serialize)]
pub struct Process<'a> {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub binary: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub binary_truncated: bool,
    pub comm: &'a str,
    pub cgroup_id: u64,
}

impl<'a> ExecRecord<'a> {
    pub fn new(exec: &'a Exec, node_name: &'a str, clock: BootClock) -> Self {
        Self {
            process_exec: ProcessExec {
                process: Process {
                    pid: exec.pid,
                    tid: exec.tid,
                    uid: exec.uid,
                    gid: exec.gid,
                    binary: &exec.binary,
                    binary_truncated: exec.binary_truncated,
                    comm: &exec.comm,
                    cgroup_id: exec.cgroup_id,
                },
            },
            node_name,
            time: clock.to_wall(exec.boot_ns).format(&Rfc3339).unwrap_or_default(),
        }
    }
}

/// Writes one JSON document per line.
pub struct JsonLines<W> {
    writer: W,
    line: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> JsonLines<W> {
    pub const fn new(writer: W) -> Self {
        Self { writer, line: Vec::new() }
    }

    /// Buffers `record`; call [`Self::flush`] after a batch.
    pub async fn write<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)?;
        self.line.push(b'\n');
        self.writer.write_all(&self.line).await
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exec_record_shape() {
        let exec = Exec {
            boot_ns: 0,
            cgroup_id: 9,
            pid: 1,
            tid: 1,
            uid: 0,
            gid: 0,
            binary: "/bin/sh".into(),
            binary_truncated: false,
            comm: "sh".into(),
        };
        let clock = BootClock::now().expect("clock");
        let mut out = JsonLines::new(Vec::new());
        out.write(&ExecRecord::new(&exec, "node-a", clock)).await.expect("write");
        let line = String::from_utf8(out.writer).expect("utf8");
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["process_exec"]["process"]["binary"], "/bin/sh");
        assert_eq!(v["process_exec"]["process"]["cgroup_id"], 9);
        assert_eq!(v["node_name"], "node-a");
        assert!(v["time"].as_str().expect("time").ends_with('Z'));
        assert!(v["process_exec"]["process"].get("binary_truncated").is_none());
    }
}
