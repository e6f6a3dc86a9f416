//! IPv4 and IPv6 prefixes in one 128-bit space (IPv4 as `::ffff:a.b.c.d`), as the kernel's
//! ipcache stores them.
//!
//! The families never mix: an IPv4 prefix only ever contains IPv4 addresses, and an IPv6
//! prefix only IPv6 ones, even where the 128-bit space overlaps (`::/0` holds the mapped
//! range in bits, but not in meaning). IPv4-mapped IPv6 prefixes (`::ffff:a.b.c.d/n`) are
//! rejected on purpose: such addresses never appear on the wire (RFC 4291 §2.5.5.2; Linux
//! drops packets from them), and accepting them would have to either alias the IPv4 prefix
//! (mixing families) or silently match nothing. The error says to write the IPv4 form.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// Network address, host bits cleared.
    pub addr: u128,
    /// Prefix length in the 128-bit space (an IPv4 /8 is 104).
    pub len: u8,
}

const V4_MAPPED_PREFIX: u8 = 96;

impl Cidr {
    pub fn host(ip: IpAddr) -> Self {
        Self { addr: mapped(ip), len: 128 }
    }

    /// Parses `a.b.c.d/n`, `x::y/n`, or a bare address (a host prefix).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (ip, len) = match text.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (text, None),
        };
        let ip: IpAddr =
            ip.trim().parse().map_err(|_| format!("invalid CIDR {text:?}: bad address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 =
            match len {
                None => max,
                Some(len) => len.trim().parse().ok().filter(|l| *l <= max).ok_or_else(|| {
                    format!("invalid CIDR {text:?}: prefix length must be 0..={max}")
                })?,
            };
        if let IpAddr::V6(v6) = ip
            && let Some(v4) = v6.to_ipv4_mapped()
            && len >= V4_MAPPED_PREFIX
        {
            return Err(format!(
                "invalid CIDR {text:?}: an IPv4-mapped IPv6 prefix; write the IPv4 prefix \
                 {v4}/{} (mapped addresses never appear on the wire, and the families are kept apart)",
                len - V4_MAPPED_PREFIX
            ));
        }
        let len = if ip.is_ipv4() { len + V4_MAPPED_PREFIX } else { len };
        Ok(Self { addr: mapped(ip) & mask(len), len })
    }

    /// True for an IPv4 prefix (stored in the mapped range).
    pub const fn is_ipv4(&self) -> bool {
        self.len >= V4_MAPPED_PREFIX && self.addr >> 32 == 0xffff
    }

    /// True for the whole address space of its family (`0.0.0.0/0` or `::/0`).
    pub const fn is_whole_family(&self) -> bool {
        self.len == 0 || (self.len == V4_MAPPED_PREFIX && self.is_ipv4())
    }

    /// The whole IPv4 space (`0.0.0.0/0`).
    pub const ALL_IPV4: Self = Self { addr: 0xffff << 32, len: V4_MAPPED_PREFIX };
    /// The whole IPv6 space (`::/0`).
    pub const ALL_IPV6: Self = Self { addr: 0, len: 0 };

    /// Whether `other` lies inside this prefix and is of the same family.
    pub fn contains(&self, other: &Self) -> bool {
        self.is_ipv4() == other.is_ipv4()
            && other.len >= self.len
            && other.addr & mask(self.len) == self.addr
    }

    /// The prefixes this one may contain, as bounds in `Cidr`'s order (address, then length):
    /// every contained prefix's network address lies in this prefix's address range, so a
    /// sorted set is searched with one range instead of a scan. The range is a superset:
    /// filter it with [`Cidr::contains`] (the families share the 128-bit space).
    pub const fn contained_range(&self) -> std::ops::RangeInclusive<Self> {
        let first = Self { addr: self.addr, len: 0 };
        let last = Self { addr: self.addr | !mask(self.len), len: u8::MAX };
        first..=last
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.contains(&Self::host(ip))
    }

    pub fn octets(&self) -> [u8; 16] {
        self.addr.to_be_bytes()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = Ipv6Addr::from(self.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.len >= V4_MAPPED_PREFIX => {
                write!(f, "{v4}/{}", self.len - V4_MAPPED_PREFIX)
            }
            _ => write!(f, "{v6}/{}", self.len),
        }
    }
}

fn mapped(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

const fn mask(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - len as u32) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_contains() {
        let net = Cidr::parse("10.0.0.0/8").expect("v4");
        assert_eq!(net.len, 104);
        assert!(net.contains(&Cidr::parse("10.1.0.0/16").expect("v4")));
        assert!(!net.contains(&Cidr::parse("11.0.0.0/8").expect("v4")));
        assert!(net.contains_ip("10.9.9.9".parse().expect("ip")));
        assert_eq!(Cidr::parse("10.1.2.3/8").expect("host bits cleared").to_string(), "10.0.0.0/8");
        let v6 = Cidr::parse("fd00::/8").expect("v6");
        assert!(v6.contains_ip("fd00::1".parse().expect("ip")));
        assert!(!v6.contains_ip("10.0.0.1".parse().expect("ip")));
        assert_eq!(Cidr::parse("0.0.0.0/0").expect("all v4").to_string(), "0.0.0.0/0");
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope/8").is_err());
    }

    #[test]
    fn families_never_mix() {
        let all6 = Cidr::parse("::/0").expect("v6");
        let all4 = Cidr::parse("0.0.0.0/0").expect("v4");
        assert!(!all6.contains_ip("10.0.0.1".parse().expect("ip")));
        assert!(!all6.contains(&Cidr::parse("10.0.0.0/8").expect("v4")));
        assert!(!all4.contains_ip("fd00::1".parse().expect("ip")));
        assert!(all6.contains_ip("fd00::1".parse().expect("ip")));
        assert!(all4.contains_ip("10.0.0.1".parse().expect("ip")));
        assert!(all4.is_whole_family() && all6.is_whole_family());
        assert_eq!(all4, Cidr::ALL_IPV4);
        assert_eq!(all6, Cidr::ALL_IPV6);
        assert!(!Cidr::parse("::/1").expect("v6").is_whole_family());
        let err = Cidr::parse("::ffff:10.0.0.0/104").expect_err("mapped");
        assert!(err.contains("10.0.0.0/8"), "{err}");
        assert!(Cidr::parse("::ffff:10.0.0.1").is_err());
        // A shorter IPv6 prefix that spans the mapped range in bits is still IPv6 only.
        assert!(Cidr::parse("::/80").expect("v6").contains_ip("::1".parse().expect("ip")));
        assert!(!Cidr::parse("::/80").expect("v6").contains_ip("1.2.3.4".parse().expect("ip")));
    }

    #[test]
    fn contained_range_holds_every_contained_prefix() {
        let set: std::collections::BTreeSet<Cidr> = [
            "10.0.0.0/8",
            "10.0.0.0/24",
            "10.255.255.255/32",
            "11.0.0.0/8",
            "9.255.0.0/16",
            "fd00::/8",
            "::/0",
            "0.0.0.0/0",
        ]
        .iter()
        .map(|c| Cidr::parse(c).expect("cidr"))
        .collect();
        for net in &set {
            let scanned: Vec<Cidr> = set.iter().filter(|c| net.contains(c)).copied().collect();
            let ranged: Vec<Cidr> =
                set.range(net.contained_range()).filter(|c| net.contains(c)).copied().collect();
            assert_eq!(scanned, ranged, "{net}");
            assert!(!ranged.is_empty(), "{net} contains itself");
        }
    }
}
