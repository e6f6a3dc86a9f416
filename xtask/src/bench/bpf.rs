//! BPF program and map figures of a running sensor, read from /proc/<pid>/fdinfo (run_time_ns,
//! run_cnt, memlock) with names from `bpftool --json` when it is installed; and the stats floor:
//! an empty tc program run through BPF_PROG_TEST_RUN while kernel.bpf_stats_enabled is on.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
};

use anyhow::{Context as _, bail};

/// One loaded program's cumulative stats.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

fn fdinfo_fields(text: &str) -> BTreeMap<&str, &str> {
    text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect()
}

/// Every BPF program (prog_id → stats) and map (map_id → memlock bytes) the process holds an
/// fd to.
pub fn process_objects(pid: u32) -> anyhow::Result<(BTreeMap<u32, ProgStats>, BTreeMap<u32, u64>)> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut progs = BTreeMap::new();
    let mut maps = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else { continue };
        let f = fdinfo_fields(&text);
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
        // Link fds name their program too (prog_id) but carry no stats: skip them.
        if f.contains_key("link_id") {
            continue;
        }
        if let Some(id) = f.get("prog_id").and_then(|v| v.parse().ok()) {
            progs.insert(
                id,
                ProgStats {
                    run_time_ns: num("run_time_ns").unwrap_or(0),
                    run_cnt: num("run_cnt").unwrap_or(0),
                },
            );
        } else if let Some(id) = f.get("map_id").and_then(|v| v.parse().ok()) {
            maps.insert(id, num("memlock").unwrap_or(0));
        }
    }
    Ok((progs, maps))
}

/// id → (name, type) from `bpftool {prog|map} show --json`; empty when bpftool is missing.
pub fn names(kind: &str) -> BTreeMap<u32, (String, String)> {
    let Ok(out) = Command::new("bpftool").args([kind, "show", "--json"]).output() else {
        return BTreeMap::new();
    };
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(&out.stdout) else {
        return BTreeMap::new();
    };
    items
        .iter()
        .filter_map(|v| {
            let id = u32::try_from(v["id"].as_u64()?).ok()?;
            let name = v["name"].as_str().unwrap_or("").to_owned();
            let ty = v["type"].as_str().unwrap_or("").to_owned();
            Some((id, (name, ty)))
        })
        .collect()
}

unsafe extern "C" {
    /// libc's `syscall(2)` (std links libc; xtask keeps its dependencies minimal).
    fn syscall(num: i64, ...) -> i64;
}

#[cfg(target_arch = "x86_64")]
const SYS_BPF: i64 = 321;
#[cfg(target_arch = "aarch64")]
const SYS_BPF: i64 = 280;

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// `union bpf_attr`, as raw bytes: only the leading fields are set and the kernel accepts a
/// shorter attribute than its own as long as it is zero past what it reads.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_ne_bytes(b)
    }
}

fn bpf(cmd: i64, attr: &mut Attr) -> anyhow::Result<i64> {
    // SAFETY: attr is a valid, writable buffer of the size passed.
    let ret = unsafe { syscall(SYS_BPF, cmd, attr.0.as_mut_ptr(), attr.0.len() as u32) };
    if ret < 0 {
        bail!("bpf({cmd}) failed: {}", std::io::Error::last_os_error());
    }
    Ok(ret)
}

/// An empty tc program: `r0 = -1 (TC_ACT_UNSPEC); exit`.
pub struct EmptyProg {
    fd: OwnedFd,
}

impl EmptyProg {
    pub fn load() -> anyhow::Result<Self> {
        // BPF_ALU64|BPF_MOV|BPF_K dst=r0 imm=-1; BPF_JMP|BPF_EXIT.
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = c"GPL";
        let mut attr = Attr::new();
        attr.u32(0, BPF_PROG_TYPE_SCHED_CLS)
            .u32(4, 2)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64);
        attr.0[48..58].copy_from_slice(b"bench_empt");
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading the empty program")?;
        let fd = i32::try_from(fd)?;
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Runs the program `repeat` times on a small IPv4 frame; returns the kernel's average
    /// duration per run in ns (its own timer, independent of bpf_stats).
    pub fn test_run(&self, repeat: u32) -> anyhow::Result<u32> {
        let mut frame = [0_u8; 64];
        frame[12] = 0x08; // ethertype IPv4
        frame[14] = 0x45; // version 4, 20-byte header
        let mut attr = Attr::new();
        attr.u32(0, u32::try_from(self.fd.as_raw_fd())?)
            .u32(8, frame.len() as u32)
            .u64(16, frame.as_ptr() as u64)
            .u32(32, repeat);
        bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
        Ok(attr.get_u32(36))
    }

    pub fn stats(&self) -> anyhow::Result<ProgStats> {
        let path = format!("/proc/self/fdinfo/{}", self.fd.as_raw_fd());
        let text = fs::read_to_string(&path)?;
        let f = fdinfo_fields(&text);
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(ProgStats { run_time_ns: num("run_time_ns"), run_cnt: num("run_cnt") })
    }
}
