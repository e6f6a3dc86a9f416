//! Kernel feature probes, run once at start. The result is logged and exported as
//! `sensor_kernel_feature{feature}`; the baseline the agent cannot run without is enforced.

use std::fs;

use aya::{
    maps::MapType,
    programs::{LsmAttachType, ProgramType},
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
    util::KernelVersion,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// tc classifier programs (`BPF_PROG_TYPE_SCHED_CLS`).
    Tc,
    /// tcx links (Linux ≥ 6.6): no qdisc needed, detached when the link is closed.
    Tcx,
    CgroupSkb,
    CgroupSockAddr,
    Tracepoint,
    RawTracepoint,
    RingBuffer,
    /// `bpf_send_signal` from a tracepoint: kill a process from its syscall.
    SendSignal,
    /// BPF LSM programs, loadable and enabled in the kernel's LSM list.
    BpfLsm,
    /// fentry/fexit (BPF trampolines).
    Fentry,
}

impl Feature {
    pub const ALL: [Self; 10] = [
        Self::Tc,
        Self::Tcx,
        Self::CgroupSkb,
        Self::CgroupSockAddr,
        Self::Tracepoint,
        Self::RawTracepoint,
        Self::RingBuffer,
        Self::SendSignal,
        Self::BpfLsm,
        Self::Fentry,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Tc => "tc",
            Self::Tcx => "tcx",
            Self::CgroupSkb => "cgroup_skb",
            Self::CgroupSockAddr => "cgroup_sock_addr",
            Self::Tracepoint => "tracepoint",
            Self::RawTracepoint => "raw_tracepoint",
            Self::RingBuffer => "ringbuf",
            Self::SendSignal => "bpf_send_signal",
            Self::BpfLsm => "bpf_lsm",
            Self::Fentry => "fentry",
        }
    }

    /// What a user must provide when the feature is missing and required.
    const fn requirement(self) -> &'static str {
        match self {
            Self::Tc => "tc BPF classifiers (CONFIG_NET_CLS_BPF, CONFIG_NET_SCH_INGRESS)",
            Self::Tracepoint => "BPF tracepoints (CONFIG_BPF_EVENTS, CONFIG_TRACEPOINTS)",
            Self::RingBuffer => "BPF ring buffers (Linux >= 5.8)",
            _ => "",
        }
    }
}

/// The agent cannot start without these.
const BASELINE: [Feature; 3] = [Feature::Tc, Feature::Tracepoint, Feature::RingBuffer];

#[derive(Debug, Clone)]
pub struct KernelFeatures {
    pub kernel: String,
    pub available: Vec<(Feature, bool)>,
}

#[derive(Debug, thiserror::Error)]
#[error("kernel {kernel} lacks required feature: {missing}")]
pub struct MissingFeature {
    pub kernel: String,
    pub missing: String,
}

impl KernelFeatures {
    pub fn probe() -> Self {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        let available = Feature::ALL.iter().map(|&f| (f, probe_one(f))).collect();
        Self { kernel, available }
    }

    pub fn has(&self, feature: Feature) -> bool {
        self.available.iter().any(|&(f, ok)| f == feature && ok)
    }

    pub fn require_baseline(&self) -> Result<(), MissingFeature> {
        match BASELINE.iter().find(|&&f| !self.has(f)) {
            None => Ok(()),
            Some(f) => Err(MissingFeature {
                kernel: self.kernel.clone(),
                missing: f.requirement().to_owned(),
            }),
        }
    }

    /// `tc=yes tcx=yes ... fentry=no`, for the start-up log line.
    pub fn summary(&self) -> String {
        self.available
            .iter()
            .map(|(f, ok)| format!("{}={}", f.name(), if *ok { "yes" } else { "no" }))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn probe_one(feature: Feature) -> bool {
    let program = |t| is_program_supported(t).unwrap_or(false);
    match feature {
        Feature::Tc => program(ProgramType::SchedClassifier),
        // aya picks tcx by the same rule when attaching.
        Feature::Tcx => {
            program(ProgramType::SchedClassifier)
                && KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
        }
        Feature::CgroupSkb => program(ProgramType::CgroupSkb),
        Feature::CgroupSockAddr => program(ProgramType::CgroupSockAddr),
        Feature::Tracepoint => program(ProgramType::TracePoint),
        Feature::RawTracepoint => program(ProgramType::RawTracePoint),
        Feature::RingBuffer => is_map_supported(MapType::RingBuf).unwrap_or(false),
        Feature::SendSignal => {
            is_helper_supported(ProgramType::TracePoint, BpfHelper::BPF_FUNC_send_signal)
                .unwrap_or(false)
        }
        // The program type alone is not enough: "bpf" must be in the active LSM list.
        Feature::BpfLsm => program(ProgramType::Lsm(LsmAttachType::Mac)) && bpf_lsm_enabled(),
        Feature::Fentry => program(ProgramType::Tracing),
    }
}

fn bpf_lsm_enabled() -> bool {
    let from_securityfs = fs::read_to_string("/sys/kernel/security/lsm").ok();
    let from_cmdline = fs::read_to_string("/proc/cmdline").ok().and_then(|cmdline| {
        cmdline.split_whitespace().find_map(|arg| arg.strip_prefix("lsm=").map(str::to_owned))
    });
    from_securityfs
        .or(from_cmdline)
        .is_some_and(|list| list.trim().split(',').any(|lsm| lsm == "bpf"))
}
