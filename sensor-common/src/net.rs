//! Network datapath: per-interface counters kept by the tc programs.

/// Per-CPU hash of [`IfaceKey`] → [`IfaceCounters`], filled by `tc_ingress` and `tc_egress`.
pub const IFACE_STATS_MAP: &str = "IFACE_STATS";
/// Capacity of [`IFACE_STATS_MAP`]: interfaces × 2 directions on one node.
pub const IFACE_STATS_MAX_ENTRIES: u32 = 4096;

/// Traffic direction as seen from the host side of an interface.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Packets arriving on the interface (sent by the pod behind a host-side veth).
    Ingress = 0,
    /// Packets leaving through the interface (towards the pod).
    Egress = 1,
}

impl Direction {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::Ingress),
            1 => Some(Self::Egress),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    pub ifindex: u32,
    /// A [`Direction`] as u32 (enums are not `Pod`).
    pub direction: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    pub packets: u64,
    /// Bytes as the tc hook sees them: the whole frame including the Ethernet header.
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, no padding (two u32 / two u64).
    unsafe impl aya::Pod for super::IfaceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfaceCounters {}
}
