//! Fallback for a local pod's host-side interface (see `crate::discovery`): the interface of
//! the node's host route to the pod's IP
//! (`/proc/net/route`, `/proc/net/ipv6_route`). Routed CNIs (Cilium's lxc devices, Calico's
//! cali devices, most veth-per-pod plugins) install one such /32 or /128 route per pod.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// IP → interface of every host route (full-length prefix) on the node.
pub fn host_routes() -> BTreeMap<IpAddr, String> {
    let mut routes = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        routes.extend(parse_ipv4(&text));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        routes.extend(parse_ipv6(&text));
    }
    routes
}

/// `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`; addresses are the
/// network-order bytes printed as a native (little-endian) u32.
fn parse_ipv4(text: &str) -> impl Iterator<Item = (IpAddr, String)> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (iface, dest, mask) = (fields.first()?, fields.get(1)?, fields.get(7)?);
        if *mask != "FFFFFFFF" {
            return None;
        }
        let dest = u32::from_str_radix(dest, 16).ok()?;
        Some((IpAddr::V4(Ipv4Addr::from(dest.to_le_bytes())), (*iface).to_owned()))
    })
}

/// `dest plen src plen nexthop metric refcnt use flags iface`, hex without separators.
fn parse_ipv6(text: &str) -> impl Iterator<Item = (IpAddr, String)> + '_ {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (dest, plen, iface) = (fields.first()?, fields.get(1)?, fields.get(9)?);
        if *plen != "80" || dest.len() != 32 {
            return None;
        }
        let dest = u128::from_str_radix(dest, 16).ok()?;
        Some((IpAddr::V6(Ipv6Addr::from(dest)), (*iface).to_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_routes_are_read_from_both_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  lxc1a2b\t0500000A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                  eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let got: Vec<_> = parse_ipv4(v4).collect();
        assert_eq!(got, vec![("10.0.0.5".parse().expect("ip"), "lxc1a2b".to_owned())]);

        let v6 = "fd000000000000000000000000000007 80 00000000000000000000000000000000 00 \
                  00000000000000000000000000000000 00000400 00000001 00000000 00000001 cali99\n\
                  fe800000000000000000000000000000 40 00000000000000000000000000000000 00 \
                  00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        let got: Vec<_> = parse_ipv6(v6).collect();
        assert_eq!(got, vec![("fd00::7".parse().expect("ip"), "cali99".to_owned())]);
    }
}
