//! Packet parsing for the tc programs: Ethernet → IPv4/IPv6 (bounded extension headers) →
//! TCP, UDP, SCTP, ICMP, ICMPv6. Reads go through `bpf_skb_load_bytes`, which bounds-checks.

use aya_ebpf::programs::TcContext;
use sensor_common::net::{
    FAMILY_IPV4, FAMILY_IPV6, NetCounter, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
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

#[inline(always)]
fn load<T>(ctx: &TcContext, offset: usize, err: NetCounter) -> Result<T, NetCounter> {
    ctx.load::<T>(offset).map_err(|_| err)
}

#[inline(always)]
fn load_be16(ctx: &TcContext, offset: usize, err: NetCounter) -> Result<u16, NetCounter> {
    Ok(u16::from_be(load::<u16>(ctx, offset, err)?))
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Tuple, NetCounter> {
    let ethertype = load_be16(ctx, 12, NetCounter::TruncatedL3)?;
    let mut t = Tuple {
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
    };
    let (l4, end) = match ethertype {
        ETH_P_IP => parse_ipv4(ctx, &mut t)?,
        ETH_P_IPV6 => parse_ipv6(ctx, &mut t)?,
        _ => return Err(NetCounter::NonIp),
    };
    parse_l4(ctx, l4, end, &mut t)?;
    Ok(t)
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

/// Fills addresses (as IPv4-mapped IPv6) and protocol; returns the L4 offset and the end of
/// the IP packet.
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, t: &mut Tuple) -> Result<(usize, usize), NetCounter> {
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
    let frag = load_be16(ctx, ETH_HLEN + 6, NetCounter::TruncatedL3)?;
    let src = load::<[u8; 4]>(ctx, ETH_HLEN + 12, NetCounter::TruncatedL3)?;
    let dst = load::<[u8; 4]>(ctx, ETH_HLEN + 16, NetCounter::TruncatedL3)?;
    t.family = FAMILY_IPV4;
    t.protocol = load::<u8>(ctx, ETH_HLEN + 9, NetCounter::TruncatedL3)?;
    t.saddr = v4_mapped(src);
    t.daddr = v4_mapped(dst);
    // Only the first fragment carries the L4 header; later ones cannot be classified.
    if frag & 0x1fff != 0 {
        return Err(NetCounter::Fragment);
    }
    Ok((ETH_HLEN + ihl, end))
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, t: &mut Tuple) -> Result<(usize, usize), NetCounter> {
    let version = load::<u8>(ctx, ETH_HLEN, NetCounter::TruncatedL3)?;
    if version >> 4 != 6 {
        return Err(NetCounter::BadIpHeader);
    }
    let payload = usize::from(load_be16(ctx, ETH_HLEN + 4, NetCounter::TruncatedL3)?);
    let mut next = load::<u8>(ctx, ETH_HLEN + 6, NetCounter::TruncatedL3)?;
    t.family = FAMILY_IPV6;
    t.saddr = load::<[u8; 16]>(ctx, ETH_HLEN + 8, NetCounter::TruncatedL3)?;
    t.daddr = load::<[u8; 16]>(ctx, ETH_HLEN + 24, NetCounter::TruncatedL3)?;
    let end = ip_end(ctx, if payload == 0 { 0 } else { 40 + payload })?;
    let mut offset = ETH_HLEN + 40;
    // One more round than headers followed: the last one finds the upper-layer protocol.
    for _ in 0..=MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units, minus one.
            0 | 43 | 60 => {
                let hdr = load::<[u8; 2]>(ctx, offset, NetCounter::TruncatedL3)?;
                next = hdr[0];
                offset += (usize::from(hdr[1]) + 1) * 8;
            }
            // Authentication header: length in 4-byte units, minus two.
            51 => {
                let hdr = load::<[u8; 2]>(ctx, offset, NetCounter::TruncatedL3)?;
                next = hdr[0];
                offset += (usize::from(hdr[1]) + 2) * 4;
            }
            // Fragment header: 8 bytes; a non-zero offset means no L4 header here.
            44 => {
                next = load::<u8>(ctx, offset, NetCounter::TruncatedL3)?;
                let frag = load_be16(ctx, offset + 2, NetCounter::TruncatedL3)?;
                t.protocol = next;
                if frag & 0xfff8 != 0 {
                    return Err(NetCounter::Fragment);
                }
                offset += 8;
            }
            _ => {
                t.protocol = next;
                return Ok((offset, end));
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
