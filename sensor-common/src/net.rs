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
/// Hubble's drop reasons (flow.proto `DropReason`, the positive form of Cilium's `DROP_*`
/// codes): no allow rule matched / an explicit deny rule matched.
pub const DROP_POLICY_DENIED: u8 = 133;
pub const DROP_POLICY_DENY: u8 = 181;
/// `INVALID_PACKET_DROPPED` (Cilium `DROP_INVALID`, "Invalid packet"): an IP header that is
/// cut short or malformed, or fragments that overlap.
pub const DROP_INVALID: u8 = 134;
/// `CT_TRUNCATED_OR_INVALID_HEADER` (Cilium `DROP_CT_INVALID_HDR`): an L4 header too short for
/// its ports and flags, also in a first fragment (a "tiny fragment", RFC 1858).
pub const DROP_CT_INVALID_HDR: u8 = 135;
/// `INVALID_IPV6_EXTENSION_HEADER` (Cilium `DROP_INVALID_EXTHDR`): an IPv6 extension header
/// chain longer than the parser walks, or an extension header it does not know.
pub const DROP_INVALID_EXTHDR: u8 = 156;
/// `UNSUPPORTED_L2_PROTOCOL` (Cilium `DROP_UNSUPPORTED_L2`): neither IPv4, IPv6 nor ARP.
pub const DROP_UNSUPPORTED_L2: u8 = 166;
/// `FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND` (Cilium `DROP_FRAG_NOT_FOUND`): a non-first
/// fragment whose first fragment was not seen (lost, out of order, or never sent).
pub const DROP_FRAG_NOT_FOUND: u8 = 175;

/// Hubble's policy match types.
pub const MATCH_NONE: u8 = 0;
pub const MATCH_L3_ONLY: u8 = 1;
pub const MATCH_L3_L4: u8 = 2;
pub const MATCH_L4_ONLY: u8 = 3;
pub const MATCH_ALL: u8 = 4;

/// [`EndpointInfo::flags`], each an ingress bit with its egress twin one bit higher (so
/// `flags >> direction` tests either). An enforcing policy makes this direction default-deny.
pub const EP_ENFORCE_INGRESS: u32 = 1;
pub const EP_ENFORCE_EGRESS: u32 = 2;
/// [`EndpointInfo::flags`]: an audit-mode policy (`policy.sensor.dev/audit: "true"`) makes
/// this direction default-deny: packets no rule allows are would-be drops (AUDIT), never drops.
pub const EP_AUDIT_INGRESS: u32 = 4;
pub const EP_AUDIT_EGRESS: u32 = 8;
/// [`EndpointInfo::flags`]: an enforcing policy has rules (allow or deny) or default deny in
/// this direction. Such an endpoint fails closed: in enforce mode a packet whose L4 identity
/// cannot be known (bad header, fragment without its first fragment, ...) is dropped.
pub const EP_SELECTED_INGRESS: u32 = 16;
pub const EP_SELECTED_EGRESS: u32 = 32;
/// [`EndpointInfo::flags`]: an audit-mode policy has rules or default deny in this direction:
/// the audit entries (`POLICY_AUDIT_LAYER`) are looked up too, for would-be drops.
pub const EP_AUDIT_SELECTED_INGRESS: u32 = 64;
pub const EP_AUDIT_SELECTED_EGRESS: u32 = 128;

/// Or-ed into [`PolicyKey::direction`] for entries of audit-mode policies: they are kept
/// apart from enforcing entries, so an audit policy's allow never allows and its deny never
/// drops; both only decide would-be drops.
pub const POLICY_AUDIT_LAYER: u8 = 0x80;

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

// The datapath compares conntrack addresses as aligned 32-bit words.
const _: () = assert!(
    core::mem::align_of::<CtKey>() == 4
        && core::mem::offset_of!(CtKey, saddr) % 4 == 0
        && core::mem::offset_of!(CtKey, daddr) % 4 == 0
);

/// [`CtEntry::tcp_fin`]: a FIN was seen in the direction of the connection's first packet.
pub const CT_FIN_FORWARD: u8 = 1;
/// [`CtEntry::tcp_fin`]: a FIN was seen in the reply direction.
pub const CT_FIN_REPLY: u8 = 2;

/// A tracked connection, keyed by its [`CtKey`] in canonical orientation: of the key and its
/// reverse (addresses, ports and ICMP types swapped), the one whose source side
/// (address, port, ICMP type) orders first, so both directions of a connection find it with
/// one lookup; `key_reversed` says whether the first packet's key was swapped to get there.
/// Packets of either direction pass only while `verdict` (re-decided on the first packet after
/// each policy change) is not `VERDICT_DROPPED`.
///
/// Times are CLOCK_MONOTONIC_COARSE nanoseconds (`bpf_ktime_get_coarse_ns`, a few ms of
/// resolution): the datapath stamps every packet and the precise clock costs a TSC read.
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
    /// The drop reason of the last decision (0 unless `verdict` is DROPPED or AUDIT).
    pub drop_reason: u8,
    /// `CT_FIN_FORWARD` | `CT_FIN_REPLY`: a TCP connection is closing only once both sides
    /// sent FIN (a half-closed connection keeps its entry).
    pub tcp_fin: u8,
    /// 1 when the connection's first packet had to be reversed into the canonical key: a
    /// packet whose own key needed the same swap goes the connection's way, else it is a reply.
    pub key_reversed: u8,
    pub _pad: [u8; 5],
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
    /// 1 for a policy decision (a new connection, or one decided again after a policy change)
    /// at an endpoint a policy selects in this direction: Hubble's `PolicyVerdict` event.
    /// 0 for drops of an already denied connection, traces and would-be drops of packets that
    /// could not be classified.
    pub policy_verdict: u8,
    pub _pad: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// 1 + index of the policy that allowed or denied the flow; 0 for none.
    pub policy: u32,
}

/// Per-CPU array of [`IfaceCounters`] indexed by [`verdict_slot`]: every packet by final
/// verdict (an array lookup the verifier inlines, not a hash lookup per packet).
pub const VERDICT_COUNTERS_MAP: &str = "VERDICT_COUNTERS";
/// Entries of `VERDICT_COUNTERS`: every drop reason (a byte) in both directions.
pub const VERDICT_SLOTS: u32 = 512;

/// The `VERDICT_COUNTERS` index of a final verdict: `reason` 0 = forwarded, else the drop
/// reason; `direction` is `POLICY_INGRESS`/`EGRESS` (audit layer bit ignored).
#[inline(always)]
pub const fn verdict_slot(reason: u8, direction: u8) -> u32 {
    ((reason as u32) << 1) | (direction & 1) as u32
}

impl VerdictKey {
    /// The key a `VERDICT_COUNTERS` index stands for.
    pub const fn from_slot(slot: u32) -> Self {
        Self { reason: (slot >> 1) as u8, direction: (slot & 1) as u8, _pad: 0 }
    }
}

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
    /// A non-first fragment whose first fragment was not seen on this interface (lost,
    /// out of order, expired, or never sent): its L4 identity is unknown.
    FragmentNotFound = 4,
    /// More IPv6 extension headers than the parser follows.
    Ipv6ExtLimit = 5,
    /// The flow event ring buffer was full: an event was lost.
    RingbufFull = 6,
    /// A conntrack insert failed.
    CtInsertFailed = 7,
    /// A first fragment too short for its minimal L4 header (RFC 1858's tiny fragment).
    FragmentTiny = 8,
    /// A fragment overlapping the first fragment's data, or a second first fragment of a
    /// datagram still being tracked (RFC 1858, RFC 5722).
    FragmentOverlap = 9,
    /// An IPv6 extension header the parser does not walk (Mobility, HIP, Shim6, the
    /// experimental 253 and 254), or a second fragment header.
    Ipv6ExtInvalid = 10,
}

pub const NET_COUNTER_SLOTS: u32 = 11;

impl NetCounter {
    pub const ALL: [Self; 11] = [
        Self::NonIp,
        Self::TruncatedL3,
        Self::TruncatedL4,
        Self::BadIpHeader,
        Self::FragmentNotFound,
        Self::Ipv6ExtLimit,
        Self::RingbufFull,
        Self::CtInsertFailed,
        Self::FragmentTiny,
        Self::FragmentOverlap,
        Self::Ipv6ExtInvalid,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::NonIp => "non_ip",
            Self::TruncatedL3 => "truncated_l3",
            Self::TruncatedL4 => "truncated_l4",
            Self::BadIpHeader => "bad_ip_header",
            Self::FragmentNotFound => "fragment_not_found",
            Self::Ipv6ExtLimit => "ipv6_ext_limit",
            Self::RingbufFull => "ringbuf_full",
            Self::CtInsertFailed => "ct_insert_failed",
            Self::FragmentTiny => "fragment_tiny",
            Self::FragmentOverlap => "fragment_overlap",
            Self::Ipv6ExtInvalid => "ipv6_ext_invalid",
        }
    }

    /// The Hubble drop reason of a packet that could not be classified, for an endpoint
    /// that fails closed; 0 for counters that are not about one packet.
    pub const fn drop_reason(self) -> u8 {
        match self {
            Self::NonIp => DROP_UNSUPPORTED_L2,
            Self::TruncatedL3 | Self::BadIpHeader | Self::FragmentOverlap => DROP_INVALID,
            Self::TruncatedL4 | Self::FragmentTiny => DROP_CT_INVALID_HDR,
            Self::FragmentNotFound => DROP_FRAG_NOT_FOUND,
            Self::Ipv6ExtLimit | Self::Ipv6ExtInvalid => DROP_INVALID_EXTHDR,
            Self::RingbufFull | Self::CtInsertFailed => 0,
        }
    }
}

// ---- IP fragments ------------------------------------------------------------------------

/// LRU hash of [`FragKey`] → [`FragValue`]: the L4 identity of each fragmented datagram, from
/// its first fragment (Cilium's `cilium_ipv4_frag_datagrams`, for IPv6 too).
pub const FRAGMENTS_MAP: &str = "FRAGMENTS";
pub const FRAGMENTS_MAX_ENTRIES: u32 = 8192;
/// A datagram's fragments are matched this long after its first fragment (the kernel gives
/// up reassembly after 30 s for IPv4, 60 s for IPv6: `ipfrag_time`).
pub const FRAGMENT_TIMEOUT_NS: u64 = 60_000_000_000;

/// One fragmented datagram as seen on one interface: source, destination, protocol (the
/// fragment header's next header for IPv6) and identification (16 bits for IPv4, 32 for IPv6).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub ifindex: u32,
    pub id: u32,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// The first fragment's L4 identity, given to the datagram's later fragments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    /// When the first fragment was seen (CLOCK_BOOTTIME).
    pub first_ns: u64,
    pub sport: u16,
    pub dport: u16,
    pub policy_port: u16,
    /// Bytes of the fragmentable part the first fragment carried: a later fragment starting
    /// before this overlaps it.
    pub first_end: u16,
    /// The upper-layer protocol found in the first fragment.
    pub protocol: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub reply_only: u8,
    pub icmp_types: [u8; 2],
    /// 1 once the last fragment (no "more fragments" flag) was seen: a new first fragment
    /// with the same id then starts a new datagram instead of overlapping this one.
    pub complete: u8,
    pub _pad: u8,
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
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragValue {}
}

const _: () = assert!(core::mem::size_of::<PolicyKey>() == 16);
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 88);
const _: () = assert!(core::mem::size_of::<FragKey>() == 44);
const _: () = assert!(core::mem::size_of::<FragValue>() == 24);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 80);
