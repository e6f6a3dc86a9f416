//! BPF-LSM blocking: where the kernel runs BPF-LSM ("bpf" in its active LSM list and the
//! program type loads), the Block rules of file operations and execs are decided in LSM hooks
//! that deny the call before it happens (`-EPERM`, records say `blocked`). Where it does not,
//! or a hook is missing, the tracepoint programs keep deciding those operations after the fact
//! (the process is killed, records say `killed`). One start-up line says which path each
//! operation takes. Unlink, rmdir, rename, link and truncate move entirely to their hooks
//! (their `sys_enter_*` tracepoints are not attached); opens and execs keep their tracepoint
//! programs, which record them, and the hooks add the denial.
//!
//! Each hook's link is pinned beside the other host links (`lsm_<hook>`): it stays attached
//! while the agent restarts, an adopting start keeps it, `sensor cleanup` removes it.

use aya::{
    Btf, Ebpf,
    programs::{
        Lsm, ProgramError,
        links::{FdLink, PinnedLink},
    },
};
use sensor_common::host::{
    FILE_OP_EXEC, FILE_OP_LINK, FILE_OP_OPEN, FILE_OP_RENAME, FILE_OP_TRUNCATE, FILE_OP_UNLINK,
};

use crate::{
    features::{Feature, KernelFeatures},
    pins::Pins,
};

/// One LSM hook: the program in the eBPF object, the kernel hook, and the `FILE_OP_*`
/// operations whose Block it decides.
#[derive(Debug, Clone, Copy)]
pub struct LsmHook {
    pub program: &'static str,
    pub hook: &'static str,
    pub ops: u32,
    /// What still decides when the hook is missing.
    pub fallback: &'static str,
}

const fn op(op: u32) -> u32 {
    1 << op
}

/// The hooks, in attach order.
pub const LSM_HOOKS: [LsmHook; 8] = [
    LsmHook {
        program: "lsm_file_open",
        hook: "file_open",
        ops: op(FILE_OP_OPEN),
        fallback: "opens are killed after the call (raw sys_exit)",
    },
    LsmHook {
        program: "lsm_bprm_check",
        hook: "bprm_check_security",
        ops: op(FILE_OP_EXEC),
        fallback: "execs are killed at sched_process_exec",
    },
    LsmHook {
        program: "lsm_path_unlink",
        hook: "path_unlink",
        ops: op(FILE_OP_UNLINK),
        fallback: "unlinks are killed at syscall entry",
    },
    LsmHook {
        program: "lsm_path_rmdir",
        hook: "path_rmdir",
        // rmdir records as an unlink: both hooks must be there for the operation to move.
        ops: op(FILE_OP_UNLINK),
        fallback: "rmdirs are killed at syscall entry",
    },
    LsmHook {
        program: "lsm_path_rename",
        hook: "path_rename",
        ops: op(FILE_OP_RENAME),
        fallback: "renames are killed at syscall entry",
    },
    LsmHook {
        program: "lsm_path_link",
        hook: "path_link",
        ops: op(FILE_OP_LINK),
        fallback: "hard links are killed at syscall entry",
    },
    LsmHook {
        program: "lsm_path_truncate",
        hook: "path_truncate",
        ops: op(FILE_OP_TRUNCATE),
        fallback: "truncate(2) is killed at syscall entry",
    },
    LsmHook {
        program: "lsm_file_truncate",
        hook: "file_truncate",
        ops: 0,
        fallback: "ftruncate and O_TRUNC are decided at file_open (write access)",
    },
];

/// What the LSM path covers on this kernel.
#[derive(Debug, Default, Clone)]
pub struct LsmState {
    /// Bit `1 << FILE_OP_*` per operation an attached hook decides and records.
    pub ops: u32,
    /// Kernel hook names attached (or adopted).
    pub attached: Vec<&'static str>,
    /// Hooks that could not be used, with the reason, for the start-up line.
    pub missing: Vec<(&'static str, String)>,
}

impl LsmState {
    /// `blocked-before: file_open,...; killed-after: ...`, for the start-up log line.
    pub fn summary(&self) -> String {
        let missing: Vec<String> =
            self.missing.iter().map(|(hook, why)| format!("{hook} ({why})")).collect();
        format!(
            "denied before the call (BPF-LSM): [{}]; not via BPF-LSM: [{}]",
            self.attached.join(", "),
            missing.join("; ")
        )
    }
}

impl LsmState {
    /// The `syscalls/sys_enter_*` tracepoint programs whose operations an attached hook now
    /// decides and records: the agent does not attach them (they would kill at syscall entry
    /// a call the hook denies anyway, and record it twice).
    pub fn replaced_tracepoints(&self) -> Vec<&'static str> {
        let by_op: [(u32, &[&'static str]); 4] = [
            (FILE_OP_UNLINK, &["sys_enter_unlinkat", "sys_enter_unlink", "sys_enter_rmdir"]),
            (FILE_OP_RENAME, &["sys_enter_rename", "sys_enter_renameat", "sys_enter_renameat2"]),
            (FILE_OP_LINK, &["sys_enter_link", "sys_enter_linkat"]),
            (FILE_OP_TRUNCATE, &["sys_enter_truncate"]),
        ];
        by_op
            .iter()
            .filter(|(o, _)| self.ops & op(*o) != 0)
            .flat_map(|(_, names)| names.iter().copied())
            .collect()
    }
}

fn link_name(hook: &LsmHook) -> String {
    format!("lsm_{}", hook.hook)
}

/// Attaches (or, on an adopting start, keeps the pinned links of) every LSM hook the kernel
/// offers. Never fails the start: a hook that does not load or attach is listed in
/// [`LsmState::missing`] and its operations stay on the tracepoint path.
pub fn start(ebpf: &mut Ebpf, pins: &Pins, adopt: bool, features: &KernelFeatures) -> LsmState {
    let mut state = LsmState::default();
    if !features.has(Feature::BpfLsm) {
        state.missing.push((
            "all",
            "BPF-LSM is not active on this kernel (CONFIG_BPF_LSM and \"bpf\" in lsm=)".to_owned(),
        ));
        return state;
    }
    if adopt {
        let mut missing_ops = 0;
        for hook in &LSM_HOOKS {
            if PinnedLink::from_pin(pins.link(&link_name(hook))).is_ok() {
                state.ops |= hook.ops;
                state.attached.push(hook.hook);
            } else {
                missing_ops |= hook.ops;
                state.missing.push((hook.hook, format!("not pinned: {}", hook.fallback)));
            }
        }
        state.ops &= !missing_ops;
        return state;
    }
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => {
            state.missing.push(("all", format!("reading kernel BTF: {e}")));
            return state;
        }
    };
    let mut missing_ops = 0;
    for hook in &LSM_HOOKS {
        match attach_one(ebpf, &btf, pins, hook) {
            Ok(()) => {
                state.ops |= hook.ops;
                state.attached.push(hook.hook);
            }
            Err(why) => {
                missing_ops |= hook.ops;
                state.missing.push((hook.hook, format!("{why}; {}", hook.fallback)));
            }
        }
    }
    // An operation moves off the tracepoint path only when every hook it needs is there.
    state.ops &= !missing_ops;
    state
}

/// Loads, attaches and pins one hook; a short reason when it cannot (the verifier's log, if
/// any, goes to the debug log only).
fn attach_one(ebpf: &mut Ebpf, btf: &Btf, pins: &Pins, hook: &LsmHook) -> Result<(), String> {
    let program: &mut Lsm = ebpf
        .program_mut(hook.program)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| format!("program {} missing from the eBPF object", hook.program))?;
    program.load(hook.hook, btf).map_err(|e| short(hook, &e))?;
    let id = program.attach().map_err(|e| short(hook, &e))?;
    let link = program.take_link(id).map_err(|e| short(hook, &e))?;
    let link = FdLink::from(link);
    link.pin(pins.link(&link_name(hook)))
        .map(drop)
        .map_err(|e| format!("pinning under {}: {e}", pins.dir().display()))
}

/// One line for a hook that did not load: what is missing, never a verifier dump.
fn short(hook: &LsmHook, err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError { io_error, verifier_log } => {
            tracing::debug!(hook = hook.hook, "verifier log:\n{verifier_log}");
            format!("the kernel refused the program ({io_error})")
        }
        ProgramError::Btf(e) => format!("the kernel has no {} hook ({e})", hook.hook),
        other => other.to_string(),
    }
}
