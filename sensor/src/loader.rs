//! The embedded eBPF object: loading it and attaching the host (tracepoint) programs.

use aya::{Ebpf, EbpfLoader, programs::TracePoint};

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

/// Loads and attaches the `sched/sched_process_exec` tracepoint program.
pub fn attach_exec(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let program: &mut TracePoint = ebpf
        .program_mut(EXEC_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .ok_or(LoadError::MissingProgram(EXEC_PROGRAM))?;
    let fail = |what: &str| {
        let what = what.to_owned();
        move |source| LoadError::Program { what, source }
    };
    program.load().map_err(fail("loading sched_process_exec"))?;
    program
        .attach("sched", "sched_process_exec")
        .map_err(fail("attaching tracepoint sched/sched_process_exec"))?;
    Ok(())
}
