//! The embedded eBPF object: loading it and attaching the host (tracepoint) programs.

use std::hash::{Hash as _, Hasher as _};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::{
        CgroupAttachMode, CgroupSockAddr, RawTracePoint, TracePoint,
        links::{FdLink, PinnedLink},
    },
};

use crate::pins::Pins;

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

/// The maps whose contents outlive the agent: pinned, and adopted by the next start.
/// (Per-CPU scratch maps, `.rodata` and the log buffer belong to one load of the programs.)
pub const STATE_MAPS: [&str; 22] = {
    use sensor_common::{host as h, net as n};
    [
        n::IFACE_STATS_MAP,
        n::NET_CONFIG_MAP,
        n::ENDPOINTS_MAP,
        n::IPCACHE_MAP,
        n::POLICY_ALLOW_MAP,
        n::POLICY_DENY_MAP,
        n::CONNTRACK_MAP,
        n::NET_EVENTS_MAP,
        n::NET_COUNTERS_MAP,
        n::VERDICT_COUNTERS_MAP,
        h::HOST_EVENTS_MAP,
        h::EVENT_LOSS_MAP,
        h::HOST_CONFIG_MAP,
        h::HOST_SCOPES_MAP,
        h::EXEC_RULES_MAP,
        h::FILE_RULES_MAP,
        h::BIND_RULES_MAP,
        h::SYSCALL_RULES_MAP,
        h::OPEN_ARGS_MAP,
        h::INODE_RULES_MAP,
        h::HOLD_EVENTS_MAP,
        h::HOLD_PENDING_MAP,
    ]
};

/// Host hooks, by the name of their link pin (the program's name).
pub const HOST_LINKS: [&str; 22] = [
    "exec_path",
    "exec_identity",
    "open_identity",
    "sched_process_exec",
    "sched_process_exit",
    "sys_enter_unlinkat",
    "sys_enter_unlink",
    "sys_enter_rmdir",
    "sys_enter_rename",
    "sys_enter_renameat",
    "sys_enter_renameat2",
    "sys_enter_link",
    "sys_enter_linkat",
    "sys_enter_symlink",
    "sys_enter_symlinkat",
    "sys_enter_truncate",
    "sys_enter",
    "sys_exit",
    "bind4",
    "bind6",
    "connect4",
    "connect6",
];

/// Identifies the pins a start may adopt: the object's bytes and the map sizes.
pub fn stamp(conntrack_entries: u32, policy_entries: u32) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    EBPF_OBJECT.hash(&mut hasher);
    conntrack_entries.hash(&mut hasher);
    policy_entries.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Creates the maps (or opens the pinned ones under `pins`) and relocates the programs; the
/// verifier runs per program on `load()`. `policy_entries` is per generation: the policy maps
/// hold two during an update.
pub fn load_object(
    conntrack_entries: u32,
    policy_entries: u32,
    pins: &Pins,
) -> Result<Ebpf, LoadError> {
    use sensor_common::net::{CONNTRACK_MAP, POLICY_ALLOW_MAP, POLICY_DENY_MAP};
    if EBPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let policy_map_size = policy_entries.saturating_mul(2);
    let paths: Vec<_> = STATE_MAPS.iter().map(|m| (*m, pins.map(m))).collect();
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(CONNTRACK_MAP, conntrack_entries)
        .map_max_entries(POLICY_ALLOW_MAP, policy_map_size)
        .map_max_entries(POLICY_DENY_MAP, policy_map_size);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    Ok(loader.load(EBPF_OBJECT)?)
}

/// One map's bound: its size as declared and what the kernel charges for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapMemory {
    pub name: String,
    pub max_entries: u32,
    /// `max_entries × (key + value)` (ring buffers: their size in bytes).
    pub declared_bytes: u64,
    /// `memlock` from the map fd's fdinfo: what the kernel accounts (per-CPU values included).
    pub memlock_bytes: u64,
}

/// The memory every map of the object takes, largest first.
pub fn map_memory(ebpf: &Ebpf) -> Vec<MapMemory> {
    let mut out: Vec<MapMemory> = ebpf
        .maps()
        .filter_map(|(name, map)| {
            let data = map_data(map)?;
            let info = data.info().ok()?;
            let (key, value, entries) =
                (u64::from(info.key_size()), u64::from(info.value_size()), info.max_entries());
            let declared_bytes = if matches!(map, Map::RingBuf(_)) {
                u64::from(entries)
            } else {
                u64::from(entries) * (key + value)
            };
            use std::os::fd::{AsFd as _, AsRawFd as _};
            let fd = data.fd().as_fd().as_raw_fd();
            let memlock_bytes = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| l.strip_prefix("memlock:")?.trim().parse().ok())
                })
                .unwrap_or(0);
            Some(MapMemory {
                name: name.to_owned(),
                max_entries: entries,
                declared_bytes,
                memlock_bytes,
            })
        })
        .collect();
    out.sort_by(|a, b| b.memlock_bytes.cmp(&a.memlock_bytes).then(a.name.cmp(&b.name)));
    out
}

const fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::RingBuf(m)
        | Map::PerfEventArray(m)
        | Map::Unsupported(m) => Some(m),
        _ => None,
    }
}

fn fail(what: &str) -> impl FnOnce(aya::programs::ProgramError) -> LoadError {
    let what = what.to_owned();
    move |source| LoadError::Program { what, source }
}

/// The host program `name` of the object, as program type `P`.
fn host_program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, LoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(LoadError::MissingProgram(name))
}

/// Pins a link taken from its program (every host hook makes a bpf link).
fn pin_taken<L>(pins: &Pins, name: &str, link: L) -> Result<(), LoadError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::error::Error + Send + Sync + 'static,
{
    let link = FdLink::try_from(link).map_err(|e| LoadError::Program {
        what: format!("{name}: the kernel gave no bpf link to pin"),
        source: aya::programs::ProgramError::IOError(std::io::Error::other(e)),
    })?;
    pin_link(pins, name, link)
}

fn pin_link(pins: &Pins, name: &str, link: FdLink) -> Result<(), LoadError> {
    link.pin(pins.link(name)).map(drop).map_err(|e| LoadError::Program {
        what: format!("pinning the {name} link under {}", pins.dir().display()),
        source: aya::programs::ProgramError::IOError(std::io::Error::other(e)),
    })
}

/// Keeps the pinned host links (an adopting start): checks each one is still there, but for
/// the tracepoints of `skip` (operations a BPF-LSM hook decides, see [`crate::host::lsm`]).
pub fn adopt_host(pins: &Pins, skip: &[&str]) -> Result<(), LoadError> {
    for name in HOST_LINKS.into_iter().filter(|n| !skip.contains(n)) {
        PinnedLink::from_pin(pins.link(name)).map_err(|e| LoadError::Program {
            what: format!("adopting the pinned {name} link"),
            source: aya::programs::ProgramError::IOError(std::io::Error::other(e)),
        })?;
    }
    Ok(())
}

/// Loads and attaches the host programs: exec/exit tracepoints, raw `sys_enter`/`sys_exit`
/// for file rules and denied syscalls, and the socket hooks on the cgroup v2 root. Each link
/// is pinned under `pins`: it stays attached when the agent exits, until `sensor cleanup`.
/// The tracepoints named in `skip` are left out: a BPF-LSM hook decides their operations
/// before they happen (and records them), see [`crate::host::lsm`].
pub fn attach_host(
    ebpf: &mut Ebpf,
    cgroup_root: &std::path::Path,
    pins: &Pins,
    skip: &[&str],
) -> Result<(), LoadError> {
    // Every program is loaded before failing, so one start names every program the verifier
    // rejects (with the first one's verifier log).
    let mut failed: Vec<(&str, aya::programs::ProgramError)> = Vec::new();
    // Tracepoints: exit, and one small program per unlink/rename/link/symlink syscall.
    for (category, name) in [
        ("sched", "sched_process_exit"),
        ("syscalls", "sys_enter_unlinkat"),
        ("syscalls", "sys_enter_unlink"),
        ("syscalls", "sys_enter_rmdir"),
        ("syscalls", "sys_enter_rename"),
        ("syscalls", "sys_enter_renameat"),
        ("syscalls", "sys_enter_renameat2"),
        ("syscalls", "sys_enter_link"),
        ("syscalls", "sys_enter_linkat"),
        ("syscalls", "sys_enter_symlink"),
        ("syscalls", "sys_enter_symlinkat"),
        ("syscalls", "sys_enter_truncate"),
    ] {
        if skip.contains(&name) {
            continue;
        }
        let program: &mut TracePoint = host_program(ebpf, name)?;
        if let Err(err) = program.load() {
            failed.push((name, err));
            continue;
        }
        let id = program
            .attach(category, name)
            .map_err(fail(&format!("attaching tracepoint {category}/{name}")))?;
        let link = program.take_link(id).map_err(fail(&format!("taking the {name} link")))?;
        pin_taken(pins, name, link)?;
    }
    // Raw: exec needs the `linux_binprm` argument; sys_enter/sys_exit see every syscall. The
    // identity checks attach first: a hook runs its programs in attach order, and the
    // recording program reads what the identity program found.
    for (name, hook) in [
        ("exec_path", "sched_process_exec"),
        ("exec_identity", "sched_process_exec"),
        ("sched_process_exec", "sched_process_exec"),
        ("sys_enter", "sys_enter"),
        ("open_identity", "sys_exit"),
        ("sys_exit", "sys_exit"),
    ] {
        let program: &mut RawTracePoint = host_program(ebpf, name)?;
        if let Err(err) = program.load() {
            failed.push((name, err));
            continue;
        }
        let id = program.attach(hook).map_err(fail(&format!("attaching raw tracepoint {hook}")))?;
        let link = program.take_link(id).map_err(fail(&format!("taking the {name} link")))?;
        pin_taken(pins, name, link)?;
    }
    let names: Vec<&str> = failed.iter().map(|(n, _)| *n).collect();
    if let Some((name, source)) = failed.into_iter().next() {
        return Err(LoadError::Program {
            what: format!("loading {name} (the verifier rejected: {})", names.join(", ")),
            source,
        });
    }
    let cgroup = std::fs::File::open(cgroup_root).map_err(|e| LoadError::Program {
        what: format!("opening cgroup {}", cgroup_root.display()),
        source: aya::programs::ProgramError::IOError(e),
    })?;
    for name in ["bind4", "bind6", "connect4", "connect6"] {
        let program: &mut CgroupSockAddr = host_program(ebpf, name)?;
        program.load().map_err(fail(&format!("loading {name}")))?;
        let id = program
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(fail(&format!("attaching cgroup/{name} to {}", cgroup_root.display())))?;
        let link = program.take_link(id).map_err(fail(&format!("taking the {name} link")))?;
        pin_taken(pins, name, link)?;
    }
    Ok(())
}
