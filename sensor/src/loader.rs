//! The embedded eBPF object: loading it and attaching the host (tracepoint) programs.

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, CgroupSockAddr, RawTracePoint, TracePoint},
};

/// Built by `sensor/build.rs` from `sensor-ebpf`; empty when bpf-linker was missing at build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor"));

pub const EXEC_PROGRAM: &str = "sched_process_exec";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this binary was built without its eBPF object (bpf-linker was not on PATH); \
         build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("{what}: {source}")]
    Program { what: String, source: aya::programs::ProgramError },
}

/// Creates the maps and relocates the programs; the verifier runs per program on `load()`.
/// `policy_entries` is per generation: the policy maps hold two during an update.
pub fn load_object(conntrack_entries: u32, policy_entries: u32) -> Result<Ebpf, LoadError> {
    use sensor_common::net::{CONNTRACK_MAP, POLICY_ALLOW_MAP, POLICY_DENY_MAP};
    if EBPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let policy_map_size = policy_entries.saturating_mul(2);
    Ok(EbpfLoader::new()
        .map_max_entries(CONNTRACK_MAP, conntrack_entries)
        .map_max_entries(POLICY_ALLOW_MAP, policy_map_size)
        .map_max_entries(POLICY_DENY_MAP, policy_map_size)
        .load(EBPF_OBJECT)?)
}

fn fail(what: &str) -> impl FnOnce(aya::programs::ProgramError) -> LoadError {
    let what = what.to_owned();
    move |source| LoadError::Program { what, source }
}

/// Loads and attaches the host programs: exec/exit tracepoints, raw `sys_enter`/`sys_exit`
/// for file rules and denied syscalls, and the socket hooks on the cgroup v2 root. Links live
/// as long as the object: dropping it detaches everything.
pub fn attach_host(ebpf: &mut Ebpf, cgroup_root: &std::path::Path) -> Result<(), LoadError> {
    for name in ["sched_process_exec", "sched_process_exit"] {
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram(if name == EXEC_PROGRAM {
                EXEC_PROGRAM
            } else {
                "sched_process_exit"
            }))?;
        program.load().map_err(fail(&format!("loading {name}")))?;
        program
            .attach("sched", name)
            .map_err(fail(&format!("attaching tracepoint sched/{name}")))?;
    }
    // Unlink and rename: one small program per syscall.
    for (name, tracepoints) in [
        ("sys_enter_unlinkat", &["sys_enter_unlinkat"][..]),
        ("sys_enter_unlink", &["sys_enter_unlink"][..]),
        ("sys_enter_rmdir", &["sys_enter_rmdir"][..]),
        ("sys_enter_rename", &["sys_enter_rename"][..]),
        ("sys_enter_renameat", &["sys_enter_renameat"][..]),
        ("sys_enter_renameat2", &["sys_enter_renameat2"][..]),
    ] {
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram("unlink/rename tracepoint"))?;
        program.load().map_err(fail(&format!("loading {name}")))?;
        for tracepoint in tracepoints {
            program
                .attach("syscalls", tracepoint)
                .map_err(fail(&format!("attaching tracepoint syscalls/{tracepoint}")))?;
        }
    }
    for name in ["sys_enter", "sys_exit"] {
        let program: &mut RawTracePoint = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram(if name == "sys_enter" {
                "sys_enter"
            } else {
                "sys_exit"
            }))?;
        program.load().map_err(fail(&format!("loading {name}")))?;
        program.attach(name).map_err(fail(&format!("attaching raw tracepoint {name}")))?;
    }
    let cgroup = std::fs::File::open(cgroup_root).map_err(|e| LoadError::Program {
        what: format!("opening cgroup {}", cgroup_root.display()),
        source: aya::programs::ProgramError::IOError(e),
    })?;
    for name in ["bind4", "bind6", "connect4", "connect6"] {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram("cgroup sock_addr"))?;
        program.load().map_err(fail(&format!("loading {name}")))?;
        program
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(fail(&format!("attaching cgroup/{name} to {}", cgroup_root.display())))?;
    }
    Ok(())
}
