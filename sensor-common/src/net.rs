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

// ---- Flows, conntrack and policy -------------------------------------------------------------

/// Array of one [`NetConfig`]: which generation of the policy maps is live.
pub const NET_CONFIG_MAP: &str = "NET_CONFIG";
/// Hash of [`EndpointKey`] → [`EndpointInfo`]: the local endpoint behind an interface.
pub const ENDPOINTS_MAP: &str = "ENDPOINTS";
/// LPM trie of [`IpCacheKey`] → identity (u32): remote address → security identity.
pub const IPCACHE_MAP: &str = "IPCACHE";
/// LPM tries of [`PolicyKey`] → [`PolicyValue`]: allow entries and deny entries.
pub const POLICY_ALLOW_MAP: &str = "POLICY_ALLOW";
pub const POLICY_DENY_MAP: &str = "POLICY_DENY";
/// LRU hash of [`CtKey`] → [`CtEntry`].
pub const CONNTRACK_MAP: &str = "CONNTRACK";
/// Ring buffer of [`FlowEvent`] records (separate from host events).
pub const NET_EVENTS_MAP: &str = "NET_EVENTS";
/// Per-CPU array of u64 indexed by [`NetCounter`].
pub const NET_COUNTERS_MAP: &str = "NET_COUNTERS";

pub const ENDPOINTS_MAX_ENTRIES: u32 = 2 * 1024;
pub const IPCACHE_MAX_ENTRIES: u32 = 2 * 65_536;
pub const POLICY_MAX_ENTRIES: u32 = 2 * 65_536;
pub const CONNTRACK_MAX_ENTRIES: u32 = 131_072;
pub const NET_EVENTS_BYTES: u32 = 1 << 22;

/// Reserved identities (Cilium's numbers).
pub const IDENTITY_ANY: u32 = 0;
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;

/// Hubble's verdict numbers.
pub const VERDICT_FORWARDED: u8 = 1;
pub const VERDICT_DROPPED: u8 = 2;
pub const VERDICT_AUDIT: u8 = 4;
/// Hubble's drop reasons: no allow rule matched / an explicit deny rule matched.
pub const DROP_POLICY_DENIED: u8 = 133;
pub const DROP_POLICY_DENY: u8 = 181;

/// Hubble's policy match types.
pub const MATCH_NONE: u8 = 0;
pub const MATCH_L3_ONLY: u8 = 1;
pub const MATCH_L3_L4: u8 = 2;
pub const MATCH_L4_ONLY: u8 = 3;
pub const MATCH_ALL: u8 = 4;

/// [`EndpointInfo::flags`]: a policy selects the endpoint in this direction (default deny).
pub const EP_ENFORCE_INGRESS: u32 = 1;
pub const EP_ENFORCE_EGRESS: u32 = 2;
/// [`EndpointInfo::flags`]: only audit-mode policies make this direction default-deny, so a
/// packet no rule allows is recorded as AUDIT even in enforce mode.
pub const EP_AUDIT_INGRESS: u32 = 4;
pub const EP_AUDIT_EGRESS: u32 = 8;

/// A flow with traffic gets a record at least this often (like Cilium's monitor aggregation).
pub const FLOW_REPORT_INTERVAL_NS: u64 = 5_000_000_000;

/// Policy direction, from the endpoint's point of view (tc ingress on the host-side veth sees
/// the pod's egress).
pub const POLICY_INGRESS: u8 = 0;
pub const POLICY_EGRESS: u8 = 1;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// Generation (0 or 1) of ENDPOINTS/IPCACHE/POLICY_* entries packets must use.
    pub generation: u32,
    /// Bumped on every policy change; conntrack entries of an older revision are re-checked.
    pub revision: u32,
    /// 1 in enforce mode: denied packets are dropped. 0: they pass with verdict AUDIT.
    pub enforce: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub generation: u32,
    pub ifindex: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    pub endpoint_id: u32,
    pub identity: u32,
    pub flags: u32,
    pub _pad: u32,
}

/// LPM data: generation, then the address (IPv4 as ::ffff:a.b.c.d), prefix counted from the
/// start of the struct (so a /24 IPv4 prefix has prefix length 32 + 96 + 24).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpCacheKey {
    pub generation: u32,
    pub addr: [u8; 16],
}

/// LPM data for policy entries; the prefix length decides what is wildcarded:
/// 96 bits = endpoint, identity and direction fixed (any protocol, any port);
/// 104 = protocol fixed, any port; 104 + n = the first n bits of the port fixed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    pub generation: u32,
    pub endpoint_id: u32,
    pub identity: u32,
    pub direction: u8,
    pub protocol: u8,
    /// Big-endian, so prefixes cover port ranges. For ICMP and ICMPv6, the message type
    /// (Cilium's `icmps` rules).
    pub port: [u8; 2],
}

pub const POLICY_PREFIX_ANY_PROTO: u32 = 8 * 12 + 8; // generation, endpoint, identity, direction
pub const POLICY_PREFIX_ANY_PORT: u32 = POLICY_PREFIX_ANY_PROTO + 8;
pub const POLICY_PREFIX_FULL: u32 = POLICY_PREFIX_ANY_PORT + 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// One of the `MATCH_*` constants.
    pub match_type: u8,
    /// 1 when every policy behind this entry is in audit mode (deny entries only).
    pub audit: u8,
    pub _pad: u16,
    /// 1 + index of the (first) policy behind the entry, for flow records; 0 for none.
    pub policy: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub ifindex: u32,
    pub protocol: u8,
    pub family: u8,
    /// ICMP and ICMPv6 message types, swapped with ports and addresses in a reversed key:
    /// an echo request is `[request type, 0]` and its reply `[0, request type]`, so a reply
    /// finds its request and nothing else does; other types are `[type, 0]`, so allowing one
    /// type never lets another through conntrack. Zero for other protocols.
    pub icmp_types: [u8; 2],
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub first_ns: u64,
    pub last_ns: u64,
    /// When the last flow record for this connection was emitted.
    pub last_report_ns: u64,
    pub packets_fwd: u64,
    pub bytes_fwd: u64,
    pub packets_rev: u64,
    pub bytes_rev: u64,
    pub revision: u32,
    /// The decision at the last policy check, repeated in later records.
    pub policy: u32,
    pub endpoint_id: u32,
    pub local_identity: u32,
    pub remote_identity: u32,
    pub verdict: u8,
    pub direction: u8,
    /// TCP flags seen in either direction (OR of the flag byte).
    pub tcp_flags: u8,
    pub match_type: u8,
}

/// One flow observation: a new flow's verdict, or a dropped packet.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowEvent {
    /// [`crate::host::EventKind::Flow`].
    pub kind: u32,
    pub ifindex: u32,
    pub boot_ns: u64,
    pub endpoint_id: u32,
    pub local_identity: u32,
    pub remote_identity: u32,
    pub verdict: u8,
    pub drop_reason: u8,
    pub match_type: u8,
    /// `POLICY_INGRESS` or `POLICY_EGRESS` of the local endpoint.
    pub direction: u8,
    pub protocol: u8,
    pub family: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub sport: u16,
    pub dport: u16,
    pub icmp_code: u8,
    /// 1 when the packet goes against the direction of the connection's first packet.
    pub is_reply: u8,
    pub _pad: [u8; 2],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// 1 + index of the policy that allowed or denied the flow; 0 for none.
    pub policy: u32,
}

/// Per-CPU hash of [`VerdictKey`] → [`IfaceCounters`]: every packet by final verdict.
pub const VERDICT_COUNTERS_MAP: &str = "VERDICT_COUNTERS";

/// `reason` 0 = forwarded, else the drop reason; `direction` is `POLICY_INGRESS`/`EGRESS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    pub reason: u8,
    pub direction: u8,
    pub _pad: u16,
}

/// Slots of [`NET_COUNTERS_MAP`]: packets the parser could not attribute, and losses.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetCounter {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): counted per interface only.
    NonIp = 0,
    TruncatedL3 = 1,
    TruncatedL4 = 2,
    BadIpHeader = 3,
    /// A non-first fragment: no L4 header to classify.
    Fragment = 4,
    /// More IPv6 extension headers than the parser follows.
    Ipv6ExtLimit = 5,
    /// The flow event ring buffer was full: an event was lost.
    RingbufFull = 6,
    /// A conntrack insert failed.
    CtInsertFailed = 7,
}

pub const NET_COUNTER_SLOTS: u32 = 8;

impl NetCounter {
    pub const ALL: [Self; 8] = [
        Self::NonIp,
        Self::TruncatedL3,
        Self::TruncatedL4,
        Self::BadIpHeader,
        Self::Fragment,
        Self::Ipv6ExtLimit,
        Self::RingbufFull,
        Self::CtInsertFailed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::NonIp => "non_ip",
            Self::TruncatedL3 => "truncated_l3",
            Self::TruncatedL4 => "truncated_l4",
            Self::BadIpHeader => "bad_ip_header",
            Self::Fragment => "fragment",
            Self::Ipv6ExtLimit => "ipv6_ext_limit",
            Self::RingbufFull => "ringbuf_full",
            Self::CtInsertFailed => "ct_insert_failed",
        }
    }
}

#[cfg(feature = "user")]
mod pod_flow {
    // SAFETY (all): repr(C), Copy, integer fields with explicit padding.
    unsafe impl aya::Pod for super::NetConfig {}
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::IpCacheKey {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::VerdictKey {}
}

const _: () = assert!(core::mem::size_of::<PolicyKey>() == 16);
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 80);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 80);
