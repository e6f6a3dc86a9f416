//! Packet parsing for the tc programs: Ethernet → IPv4/IPv6 (bounded extension headers) →
//! TCP, UDP, SCTP, ICMP, ICMPv6. Reads go through `bpf_skb_load_bytes`, which bounds-checks;
//! every header must also lie inside the IP length (frame padding is not packet data).
//! Fragments are reported as such: the first one with its L4 identity, later ones with their
//! addresses only (`super::frag` gives them the first one's identity).

use aya_ebpf::programs::TcContext;
use sensor_common::net::{
    FAMILY_IPV4, FAMILY_IPV6, NetCounter, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
/// IPv6 extension headers followed; a longer chain is counted as `Ipv6ExtLimit`.
const MAX_IPV6_EXT: usize = 6;

/// The flow a packet belongs to, in the packet's own direction.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub family: u8,
    pub protocol: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Conntrack ports: L4 ports, or the ICMP echo id on the requester's side.
    pub sport: u16,
    pub dport: u16,
    /// Conntrack ICMP types (see `CtKey::icmp_types`).
    pub icmp_types: [u8; 2],
    /// An ICMP echo reply: it may only pass as the reply of a tracked request, and never
    /// starts a conntrack entry of its own (one would let a later request in the opposite
    /// direction pass as its "reply" without a policy check).
    pub reply_only: bool,
    /// The destination port policy matches on; the message type for ICMP and ICMPv6.
    pub policy_port: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

impl Tuple {
    pub const fn new() -> Self {
        Self {
            family: 0,
            protocol: 0,
            tcp_flags: 0,
            icmp_type: 0,
            icmp_code: 0,
            sport: 0,
            dport: 0,
            icmp_types: [0; 2],
            reply_only: false,
            policy_port: 0,
            saddr: [0; 16],
            daddr: [0; 16],
        }
    }

    /// The connection as its other side sends it: addresses, ports and conntrack ICMP types
    /// swapped, and the policy port of that direction (the request type for ICMP echo).
    #[inline(always)]
    pub fn reversed(&self) -> Self {
        let mut r = *self;
        r.saddr = self.daddr;
        r.daddr = self.saddr;
        r.sport = self.dport;
        r.dport = self.sport;
        r.icmp_types = [self.icmp_types[1], self.icmp_types[0]];
        r.policy_port = if matches!(self.protocol, PROTO_ICMP | PROTO_ICMPV6) {
            u16::from(r.icmp_types[0])
        } else {
            r.dport
        };
        r.reply_only = false;
        r
    }
}

/// Where a fragment sits in its datagram (RFC 791 / RFC 8200 section 4.5).
#[derive(Clone, Copy)]
pub struct Fragment {
    /// Identification: 16 bits for IPv4, 32 for IPv6.
    pub id: u32,
    /// Offset of its data in the datagram's fragmentable part, in bytes.
    pub offset: u32,
    /// Bytes of the fragmentable part it carries.
    pub len: u32,
    /// The "more fragments" flag: not the last fragment.
    pub more: bool,
    /// IPv4's protocol, or the next header of IPv6's fragment header: with the addresses
    /// and the id, what names the datagram.
    pub protocol: u8,
}

/// What a parsed frame is.
pub enum Parsed {
    /// A whole IP packet, its L4 identity in the tuple.
    Packet,
    /// A fragment: the first one (offset 0) with its L4 identity in the tuple, a later one
    /// with addresses only.
    Fragment(Fragment),
    /// ARP keeps the link working: not a flow, never policy-checked.
    Arp,
}

#[inline(always)]
fn load<T>(ctx: &TcContext, offset: usize, err: NetCounter) -> Result<T, NetCounter> {
    ctx.load::<T>(offset).map_err(|_| err)
}

#[inline(always)]
fn load_be16(ctx: &TcContext, offset: usize, err: NetCounter) -> Result<u16, NetCounter> {
    Ok(u16::from_be(load::<u16>(ctx, offset, err)?))
}

/// Parses a frame into `t`; on error `t` keeps what was read (addresses, protocol), for
/// the record of a packet that fails closed.
#[inline(always)]
pub fn parse(ctx: &TcContext, t: &mut Tuple) -> Result<Parsed, NetCounter> {
    let ethertype = load_be16(ctx, 12, NetCounter::TruncatedL3)?;
    let (l4, end, fragment) = match ethertype {
        ETH_P_IP => parse_ipv4(ctx, t)?,
        ETH_P_IPV6 => parse_ipv6(ctx, t)?,
        ETH_P_ARP => return Ok(Parsed::Arp),
        _ => return Err(NetCounter::NonIp),
    };
    let Some(fragment) = fragment else {
        parse_l4(ctx, l4, end, t)?;
        return Ok(Parsed::Packet);
    };
    // A first fragment must hold the whole minimal L4 header (RFC 1858's tiny fragment
    // attack puts the flags or the ports in a later fragment).
    if fragment.offset == 0 && parse_l4(ctx, l4, end, t).is_err() {
        return Err(NetCounter::FragmentTiny);
    }
    Ok(Parsed::Fragment(fragment))
}

/// The end of the IP packet: `ETH_HLEN + header + payload` from the IP length field, which
/// must fit in the frame. A length of 0 (IPv4 and IPv6 BIG TCP / jumbograms) means "the frame".
#[inline(always)]
fn ip_end(ctx: &TcContext, length: usize) -> Result<usize, NetCounter> {
    let frame = ctx.len() as usize;
    if length == 0 {
        return Ok(frame);
    }
    let end = ETH_HLEN + length;
    if end > frame {
        return Err(NetCounter::TruncatedL3);
    }
    Ok(end)
}

/// The L4 offset, the end of the IP packet and, for a fragment, where it sits.
type L3 = (usize, usize, Option<Fragment>);

/// Fills addresses (as IPv4-mapped IPv6) and protocol.
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, t: &mut Tuple) -> Result<L3, NetCounter> {
    let version_ihl = load::<u8>(ctx, ETH_HLEN, NetCounter::TruncatedL3)?;
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return Err(NetCounter::BadIpHeader);
    }
    let total = usize::from(load_be16(ctx, ETH_HLEN + 2, NetCounter::TruncatedL3)?);
    if total != 0 && total < ihl {
        return Err(NetCounter::BadIpHeader);
    }
    // The whole header, options included, must be in the frame.
    let _ = load::<u8>(ctx, ETH_HLEN + ihl - 1, NetCounter::TruncatedL3)?;
    let end = ip_end(ctx, total)?;
    let id_frag = load::<[u8; 4]>(ctx, ETH_HLEN + 4, NetCounter::TruncatedL3)?;
    let src = load::<[u8; 4]>(ctx, ETH_HLEN + 12, NetCounter::TruncatedL3)?;
    let dst = load::<[u8; 4]>(ctx, ETH_HLEN + 16, NetCounter::TruncatedL3)?;
    t.family = FAMILY_IPV4;
    t.protocol = load::<u8>(ctx, ETH_HLEN + 9, NetCounter::TruncatedL3)?;
    t.saddr = v4_mapped(src);
    t.daddr = v4_mapped(dst);
    let l4 = ETH_HLEN + ihl;
    if end < l4 {
        return Err(NetCounter::BadIpHeader);
    }
    let frag = u16::from_be_bytes([id_frag[2], id_frag[3]]);
    // Fragment offset (13 bits, 8-byte units) or "more fragments": a fragment.
    if frag & 0x3fff == 0 {
        return Ok((l4, end, None));
    }
    let fragment = Fragment {
        id: u32::from(u16::from_be_bytes([id_frag[0], id_frag[1]])),
        offset: u32::from(frag & 0x1fff) * 8,
        len: (end - l4) as u32,
        more: frag & 0x2000 != 0,
        protocol: t.protocol,
    };
    Ok((l4, end, Some(fragment)))
}

/// Reads the 2 bytes starting an extension header at `offset`, inside the packet.
#[inline(always)]
fn ext_header(ctx: &TcContext, offset: usize, end: usize) -> Result<[u8; 2], NetCounter> {
    if offset + 2 > end {
        return Err(NetCounter::TruncatedL3);
    }
    load::<[u8; 2]>(ctx, offset, NetCounter::TruncatedL3)
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, t: &mut Tuple) -> Result<L3, NetCounter> {
    let version = load::<u8>(ctx, ETH_HLEN, NetCounter::TruncatedL3)?;
    if version >> 4 != 6 {
        return Err(NetCounter::BadIpHeader);
    }
    let payload = usize::from(load_be16(ctx, ETH_HLEN + 4, NetCounter::TruncatedL3)?);
    let mut next = load::<u8>(ctx, ETH_HLEN + 6, NetCounter::TruncatedL3)?;
    t.family = FAMILY_IPV6;
    t.protocol = next;
    t.saddr = load::<[u8; 16]>(ctx, ETH_HLEN + 8, NetCounter::TruncatedL3)?;
    t.daddr = load::<[u8; 16]>(ctx, ETH_HLEN + 24, NetCounter::TruncatedL3)?;
    let end = ip_end(ctx, if payload == 0 { 0 } else { 40 + payload })?;
    let mut offset = ETH_HLEN + 40;
    let mut fragment: Option<Fragment> = None;
    // One more round than headers followed: the last one finds the upper-layer protocol.
    for _ in 0..=MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units, minus one.
            0 | 43 | 60 => {
                let hdr = ext_header(ctx, offset, end)?;
                next = hdr[0];
                offset += (usize::from(hdr[1]) + 1) * 8;
            }
            // Authentication header: length in 4-byte units, minus two.
            51 => {
                let hdr = ext_header(ctx, offset, end)?;
                next = hdr[0];
                offset += (usize::from(hdr[1]) + 2) * 4;
            }
            // Fragment header: next header, reserved, offset (13 bits, 8-byte units) with the
            // M flag in bit 0, identification.
            44 => {
                if fragment.is_some() || offset + 8 > end {
                    return Err(if fragment.is_some() {
                        NetCounter::Ipv6ExtInvalid
                    } else {
                        NetCounter::TruncatedL3
                    });
                }
                let hdr = load::<[u8; 8]>(ctx, offset, NetCounter::TruncatedL3)?;
                next = hdr[0];
                offset += 8;
                let frag = u16::from_be_bytes([hdr[2], hdr[3]]);
                // Offset 0 without M is an atomic fragment (RFC 6946): a whole packet.
                if frag & 0xfff9 != 0 {
                    let later = frag & 0xfff8 != 0;
                    fragment = Some(Fragment {
                        id: u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
                        offset: u32::from(frag & 0xfff8),
                        len: (end - offset) as u32,
                        more: frag & 1 != 0,
                        protocol: next,
                    });
                    t.protocol = next;
                    if later {
                        // No upper-layer header here: the first fragment names it.
                        return Ok((offset, end, fragment));
                    }
                }
            }
            // Extension headers we do not walk: Mobility, HIP, Shim6, experimental.
            135 | 139 | 140 | 253 | 254 => return Err(NetCounter::Ipv6ExtInvalid),
            _ => {
                t.protocol = next;
                if offset > end {
                    return Err(NetCounter::TruncatedL3);
                }
                return Ok((offset, end, fragment));
            }
        }
    }
    Err(NetCounter::Ipv6ExtLimit)
}

/// Minimum L4 header lengths: TCP without options, UDP, SCTP's common header, ICMP/ICMPv6
/// type, code, checksum and the 4-byte field every message has.
const fn l4_header_len(protocol: u8) -> usize {
    match protocol {
        PROTO_TCP => 20,
        PROTO_SCTP => 12,
        PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => 8,
        _ => 0,
    }
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, l4: usize, end: usize, t: &mut Tuple) -> Result<(), NetCounter> {
    // The whole minimal header must lie inside the IP packet (not just in the frame, which
    // may carry padding), else no L4 flow is attributed.
    let need = l4_header_len(t.protocol);
    if need > 0
        && (l4 + need > end || load::<u8>(ctx, l4 + need - 1, NetCounter::TruncatedL4).is_err())
    {
        return Err(NetCounter::TruncatedL4);
    }
    match t.protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            t.sport = load_be16(ctx, l4, NetCounter::TruncatedL4)?;
            t.dport = load_be16(ctx, l4 + 2, NetCounter::TruncatedL4)?;
            t.policy_port = t.dport;
            if t.protocol == PROTO_TCP {
                t.tcp_flags = load::<u8>(ctx, l4 + 13, NetCounter::TruncatedL4)?;
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let hdr = load::<[u8; 2]>(ctx, l4, NetCounter::TruncatedL4)?;
            t.icmp_type = hdr[0];
            t.icmp_code = hdr[1];
            // Policy matches the type, like Cilium's `icmps` rules.
            t.policy_port = u16::from(hdr[0]);
            t.icmp_types = [hdr[0], 0];
            let (request, reply) = if t.protocol == PROTO_ICMP { (8, 0) } else { (128, 129) };
            // Echo id as a port and the request type, mirrored between request and reply,
            // so replies find the request's conntrack entry and nothing else does.
            if t.icmp_type == request || t.icmp_type == reply {
                let id = load_be16(ctx, l4 + 4, NetCounter::TruncatedL4)?;
                if t.icmp_type == request {
                    t.sport = id;
                } else {
                    t.dport = id;
                    t.icmp_types = [0, request];
                    t.reply_only = true;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]
}
