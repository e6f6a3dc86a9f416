//! Inputs the scenarios share: endpoints files, CiliumNetworkPolicy files with N CIDR rules,
//! the equivalent nftables ruleset, and agent resource readings from /proc.

use std::{fmt::Write as _, fs, net::Ipv4Addr};

use anyhow::Context as _;

use super::env::{CLIENT_NET, CRR_PORT, IPERF_PORT, Topology};

/// The bench ports as one range, so a rule names them all.
const PORTS: &str = "[{ports: [{port: \"7001\", endPort: 7003, protocol: TCP}]}]";

const _: () = assert!(IPERF_PORT == 7001 && CRR_PORT == 7003);

/// The i-th CIDR that matches no bench address: 10.64.0.0/24, 10.64.1.0/24, … (10.64–10.103
/// for 10,000), away from the bench's 10.200/10.201 addresses.
fn unmatched_cidr(i: usize) -> String {
    format!("10.{}.{}.0/24", 64 + i / 256, i % 256)
}

/// Client and server as endpoints (pod-to-pod): the small configurations.
pub fn endpoints_small(t: &Topology) -> String {
    format!(
        "endpoints:\n\
         - {{namespace: bench, name: client, labels: {{app: client}}, ips: [{}], interface: {}}}\n\
         - {{namespace: bench, name: server, labels: {{app: server}}, ips: [{}], interface: {}}}\n",
        t.client_ip, t.client_if, t.server_ip, t.server_if
    )
}

/// 100 endpoints: the server and 99 pods elsewhere (20 distinct label sets). The client is
/// not an endpoint, so CIDR rules apply to it (Cilium: CIDR rules match non-endpoints).
pub fn endpoints_100(t: &Topology) -> String {
    let mut s = format!(
        "endpoints:\n- {{namespace: bench, name: server, labels: {{app: server}}, ips: [{}], interface: {}}}\n",
        t.server_ip, t.server_if
    );
    for i in 0..99 {
        let ip = Ipv4Addr::new(10, 201, (i / 200) as u8, (i % 200 + 1) as u8);
        let _ = writeln!(
            s,
            "- {{namespace: bench, name: web-{i}, labels: {{app: web-{}}}, ips: [{ip}]}}",
            i % 20
        );
    }
    s
}

/// Server ingress from the client endpoint on the bench ports.
pub fn policy_small() -> String {
    format!(
        "apiVersion: cilium.io/v2\n\
         kind: CiliumNetworkPolicy\n\
         metadata: {{name: bench-small, namespace: bench}}\n\
         spec:\n  \
           endpointSelector: {{matchLabels: {{app: server}}}}\n  \
           ingress:\n  \
           - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    \
             toPorts: {PORTS}\n"
    )
}

/// Server ingress: `n` fromCIDR entries that match no bench traffic, then (with
/// `allow_client`) one rule allowing the client's /24, else one more unmatched entry.
pub fn policy_cidr(n: usize, allow_client: bool) -> String {
    let mut s = String::from(
        "apiVersion: cilium.io/v2\n\
         kind: CiliumNetworkPolicy\n\
         metadata: {name: bench-cidr, namespace: bench}\n\
         spec:\n  \
           endpointSelector: {matchLabels: {app: server}}\n  \
           ingress:\n  \
           - fromCIDR:\n",
    );
    for i in 0..n {
        let _ = writeln!(s, "    - {}", unmatched_cidr(i));
    }
    let _ = writeln!(s, "    toPorts: {PORTS}");
    let last = if allow_client { CLIENT_NET.to_owned() } else { unmatched_cidr(n) };
    let _ = writeln!(s, "  - fromCIDR: [{last}]\n    toPorts: {PORTS}");
    s
}

/// The same rules for nftables in the node namespace's forward chain, one rule per CIDR with a
/// counter, evaluated in order for every packet (the iptables way: no conntrack shortcut in
/// front of them); the server's replies pass by conntrack after the list, anything else to
/// or from the server is dropped.
pub fn nft_rules(n: usize, server: Ipv4Addr) -> String {
    let mut s = String::from(
        "table inet sbench {\n  chain forward {\n    type filter hook forward priority filter; policy accept;\n",
    );
    for i in 0..n {
        let _ = writeln!(
            s,
            "    ip saddr {} ip daddr {server} tcp dport 7001-7003 counter accept",
            unmatched_cidr(i)
        );
    }
    let _ = writeln!(
        s,
        "    ip saddr {CLIENT_NET} ip daddr {server} tcp dport 7001-7003 counter accept\n    \
         ip saddr {server} ct state established,related counter accept\n    \
         ip daddr {server} counter drop\n    ip saddr {server} counter drop\n  }}\n}}"
    );
    s
}

/// Resident set size in MiB (VmRSS of /proc/<pid>/status).
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}

/// utime + stime of /proc/<pid>/stat, in seconds (USER_HZ is 100 on Linux).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(") ").context("bad stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks: f64 = fields.get(11).context("no utime")?.parse::<f64>()?
        + fields.get(12).context("no stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_policy_has_n_unmatched_entries_and_the_client_rule() {
        let p = policy_cidr(300, true);
        assert_eq!(p.matches("    - 10.").count(), 300);
        assert!(p.contains("10.65.43.0/24"), "entry 299");
        assert!(p.contains(&format!("fromCIDR: [{CLIENT_NET}]")));
        assert!(!policy_cidr(300, false).contains(CLIENT_NET));
        let rules = nft_rules(300, Ipv4Addr::new(10, 200, 2, 2));
        assert_eq!(rules.matches("counter accept").count(), 302);
    }
}
