//! Policies + endpoints → what the kernel maps hold: identities, ipcache prefixes, and allow
//! and deny entries per (endpoint, remote identity, direction, protocol, port prefix).
//! Like Cilium, state grows with identities and rules, not with pods.

use std::collections::{BTreeMap, BTreeSet};

use sensor_common::net::{
    IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD, MATCH_ALL, MATCH_L3_L4, MATCH_L3_ONLY,
    MATCH_L4_ONLY, POLICY_AUDIT_LAYER, POLICY_EGRESS, POLICY_INGRESS, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP,
};

use super::{
    cidr::Cidr,
    endpoints::{ContainerPort, Endpoints},
    model::{Entity, Entry, NAMESPACE_LABEL, NamedPort, Peer, Policy},
    selector::Labels,
};

/// First identity given to a label set (lower numbers are reserved, as in Cilium).
const FIRST_LABEL_IDENTITY: u32 = 256;
/// CIDR identities live above 2^24, as Cilium's local CIDR identities.
const FIRST_CIDR_IDENTITY: u32 = 1 << 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub interface: String,
    pub identity: u32,
    /// An enforcing policy makes the direction default-deny.
    pub enforce_ingress: bool,
    pub enforce_egress: bool,
    /// An audit-mode policy makes the direction default-deny (would-be drops only).
    pub audit_ingress: bool,
    pub audit_egress: bool,
    /// An enforcing / audit-mode policy has rules or default deny in the direction: packets
    /// whose L4 identity is unknown fail closed (enforcing) or are recorded (audit).
    pub selected: Directions,
    pub audit_selected: Directions,
}

/// One flag per policy direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directions {
    pub ingress: bool,
    pub egress: bool,
}

/// One policy map key; `port` is `(value, prefix bits)`, `None` for any port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    pub endpoint_id: u32,
    pub identity: u32,
    /// `POLICY_INGRESS` or `POLICY_EGRESS`, or-ed with `POLICY_AUDIT_LAYER` for entries of
    /// audit-mode policies (kept apart: they never allow or drop, only audit).
    pub direction: u8,
    pub protocol: Option<u8>,
    pub port: Option<(u16, u8)>,
}

/// What a policy map entry says besides its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    pub match_type: u8,
    /// Index into [`Compiled::policies`] of the first policy that produced the entry.
    pub policy: usize,
    /// Every policy that produced the entry is in audit mode.
    pub audit: bool,
}

/// A policy, as flow records name it (`ingress_allowed_by`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    pub kind: &'static str,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub local: Vec<LocalEndpoint>,
    /// Prefix → identity, for the ipcache.
    pub ipcache: BTreeMap<Cidr, u32>,
    pub allow: BTreeMap<PolicyEntry, EntryMeta>,
    pub deny: BTreeMap<PolicyEntry, EntryMeta>,
    /// Every loaded policy, in load order; entries refer to them by index.
    pub policies: Vec<PolicyRef>,
    /// Identity → labels, for flow records.
    pub identity_labels: BTreeMap<u32, Vec<String>>,
    /// Address → (namespace, pod name), for flow records.
    pub pods_by_ip: BTreeMap<std::net::IpAddr, (String, String)>,
    /// Names of the policies that select each local endpoint.
    pub selected_by: BTreeMap<u32, Vec<String>>,
    /// Per policy (index as in `policies`): how many local endpoints it selects.
    pub selected_count: Vec<usize>,
}

/// Cilium's reserved identity of IPv4 addresses outside the cluster (dual stack, 1.15+).
pub const IDENTITY_WORLD_IPV4: u32 = 9;
/// Cilium's reserved identity of IPv6 addresses outside the cluster (dual stack, 1.15+).
pub const IDENTITY_WORLD_IPV6: u32 = 10;

/// Cilium's label of a pod's service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "k8s:io.cilium.k8s.policy.serviceaccount";
/// Cilium's prefix of the labels a pod inherits from its namespace.
pub const NAMESPACE_LABELS_PREFIX: &str = "k8s:io.cilium.k8s.namespace.labels.";
/// Cilium's label of the cluster a pod runs in (one cluster here: `default`).
pub const CLUSTER_LABEL: &str = "k8s:io.cilium.k8s.policy.cluster";

/// What makes two addresses the same identity: their labels (with Cilium's sources), their
/// pod's named container ports (egress named ports resolve per identity) and which
/// NetworkPolicy `ipBlock`s hold the address (an ipBlock selects pod addresses, one by one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct IdentityKey {
    labels: Labels,
    ports: Vec<ContainerPort>,
    ip_blocks: BTreeSet<usize>,
}

/// An identity a peer selector may select.
struct Selectable {
    id: u32,
    /// Labels with their sources (`k8s:app`, `reserved:host`).
    labels: Labels,
    /// The pod's namespace; `None` for reserved and CIDR identities.
    namespace: Option<String>,
    /// NetworkPolicy ipBlocks (indices into the compile's list) that hold the address.
    ip_blocks: BTreeSet<usize>,
    ports: Vec<ContainerPort>,
    /// The prefix of a CIDR identity.
    cidr: Option<Cidr>,
}

/// A pod's labels as Cilium derives them: its own (source `k8s`), its namespace, its
/// namespace's labels, its service account and the cluster name.
pub fn pod_labels(ep: &super::endpoints::Endpoint, endpoints: &Endpoints) -> Labels {
    let mut labels: Labels =
        ep.labels.iter().map(|(k, v)| (format!("k8s:{k}"), v.clone())).collect();
    labels.insert(format!("k8s:{NAMESPACE_LABEL}"), ep.namespace.clone());
    for (k, v) in endpoints.namespace_labels(&ep.namespace) {
        labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v);
    }
    if let Some(sa) = &ep.service_account {
        labels.insert(SERVICE_ACCOUNT_LABEL.to_owned(), sa.clone());
    }
    labels.insert(CLUSTER_LABEL.to_owned(), "default".to_owned());
    labels
}

fn reserved(names: &[&str]) -> Labels {
    names.iter().map(|n| (format!("reserved:{n}"), String::new())).collect()
}

/// Labels as flow records show them: `source:key=value`, or `source:key` without a value.
fn display(labels: &Labels) -> Vec<String> {
    labels.iter().map(|(k, v)| if v.is_empty() { k.clone() } else { format!("{k}={v}") }).collect()
}

pub fn compile(policies: &[Policy], endpoints: &Endpoints) -> Compiled {
    let mut out = Compiled {
        policies: policies
            .iter()
            .map(|p| PolicyRef {
                kind: p.kind.as_str(),
                name: p.name.clone(),
                namespace: p.namespace.clone(),
            })
            .collect(),
        ..Compiled::default()
    };
    let all_peers = || {
        policies
            .iter()
            .flat_map(|p| {
                p.ingress.iter().chain(&p.egress).chain(&p.ingress_deny).chain(&p.egress_deny)
            })
            .flat_map(|e| e.peers.iter().flatten())
    };
    // NetworkPolicy ipBlocks: they select pod addresses too, each address on its own.
    let ip_blocks: Vec<(Cidr, Vec<Cidr>)> = all_peers()
        .filter_map(|peer| match peer {
            Peer::Cidr { net, except, pod_ips: true } => Some((*net, except.clone())),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let blocks_holding = |ip: std::net::IpAddr| -> BTreeSet<usize> {
        ip_blocks
            .iter()
            .enumerate()
            .filter(|(_, (net, except))| {
                net.contains_ip(ip) && !except.iter().any(|e| e.contains_ip(ip))
            })
            .map(|(i, _)| i)
            .collect()
    };
    let key_of = |ep: &super::endpoints::Endpoint, ip: Option<std::net::IpAddr>| {
        let mut ports: Vec<ContainerPort> =
            ep.ports.iter().filter(|p| p.name.is_some()).cloned().collect();
        ports.sort();
        ports.dedup();
        IdentityKey {
            labels: pod_labels(ep, endpoints),
            ports,
            ip_blocks: ip.map(blocks_holding).unwrap_or_default(),
        }
    };

    // Identities of pods, in a stable order: one per distinct key, not per pod.
    let keys: BTreeSet<IdentityKey> = endpoints
        .endpoints
        .iter()
        .flat_map(|ep| {
            let mut keys: Vec<_> = ep.ips.iter().map(|ip| key_of(ep, Some(*ip))).collect();
            if keys.is_empty() {
                keys.push(key_of(ep, None));
            }
            keys
        })
        .collect();
    let identity_of: BTreeMap<IdentityKey, u32> =
        keys.into_iter().zip(FIRST_LABEL_IDENTITY..).collect();
    let mut selectable: Vec<Selectable> = identity_of
        .iter()
        .map(|(key, id)| Selectable {
            id: *id,
            labels: key.labels.clone(),
            namespace: key.labels.get(&format!("k8s:{NAMESPACE_LABEL}")).cloned(),
            ip_blocks: key.ip_blocks.clone(),
            ports: key.ports.clone(),
            cidr: None,
        })
        .collect();
    let world4 = reserved(&["world", "world-ipv4"]);
    let world6 = reserved(&["world", "world-ipv6"]);
    for (id, labels) in [
        (IDENTITY_HOST, reserved(&["host"])),
        (IDENTITY_WORLD, reserved(&["world"])),
        (IDENTITY_WORLD_IPV4, world4.clone()),
        (IDENTITY_WORLD_IPV6, world6.clone()),
    ] {
        selectable.push(Selectable {
            id,
            labels,
            namespace: None,
            ip_blocks: BTreeSet::new(),
            ports: Vec::new(),
            cidr: None,
        });
    }

    // CIDR identities for every prefix a policy names; a whole family is its world identity.
    let prefixes: BTreeSet<Cidr> = all_peers()
        .filter_map(|peer| match peer {
            Peer::Cidr { net, except, .. } => {
                Some(std::iter::once(*net).chain(except.iter().copied()))
            }
            _ => None,
        })
        .flatten()
        .filter(|c| !c.is_whole_family())
        .collect();
    let cidr_identities: BTreeMap<Cidr, u32> =
        prefixes.into_iter().zip(FIRST_CIDR_IDENTITY..).collect();
    for (cidr, id) in &cidr_identities {
        out.ipcache.insert(*cidr, *id);
        let mut labels = if cidr.is_ipv4() { world4.clone() } else { world6.clone() };
        labels.insert(format!("cidr:{cidr}"), String::new());
        selectable.push(Selectable {
            id: *id,
            labels,
            namespace: None,
            ip_blocks: BTreeSet::new(),
            ports: Vec::new(),
            cidr: Some(*cidr),
        });
    }
    // Addresses no prefix, pod or node holds: the world of their own family.
    out.ipcache.insert(Cidr::ALL_IPV4, IDENTITY_WORLD_IPV4);
    out.ipcache.insert(Cidr::ALL_IPV6, IDENTITY_WORLD_IPV6);
    for ip in &endpoints.host_ips {
        out.ipcache.insert(Cidr::host(*ip), IDENTITY_HOST);
    }
    for ep in &endpoints.endpoints {
        for ip in &ep.ips {
            out.ipcache.insert(Cidr::host(*ip), identity_of[&key_of(ep, Some(*ip))]);
            out.pods_by_ip.insert(*ip, (ep.namespace.clone(), ep.name.clone()));
        }
    }
    for s in &selectable {
        out.identity_labels.insert(s.id, display(&s.labels));
    }

    let cidr_selectable: BTreeMap<Cidr, usize> =
        selectable.iter().enumerate().filter_map(|(i, s)| Some((s.cidr?, i))).collect();
    let resolver = Resolver {
        endpoints,
        selectable: &selectable,
        cidr_selectable: &cidr_selectable,
        first_cidr: cidr_selectable.values().min().copied().unwrap_or(selectable.len()),
        ip_blocks: &ip_blocks,
    };
    out.selected_count = vec![0; policies.len()];
    for (id, ep) in (1..).zip(endpoints.endpoints.iter().filter(|e| e.interface.is_some())) {
        let labels = pod_labels(ep, endpoints);
        let selecting: Vec<(usize, &Policy)> = policies
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.namespace.as_ref().is_none_or(|ns| *ns == ep.namespace)
                    && p.selector.matches_sourced(&labels)
            })
            .collect();
        for (index, _) in &selecting {
            out.selected_count[*index] += 1;
        }
        // Enforcing and audit-mode policies are two layers: enforcing ones alone decide.
        let any = |audit: bool, test: fn(&Policy) -> bool| {
            selecting.iter().any(|(_, p)| p.audit == audit && test(p))
        };
        let selects_ingress = |p: &Policy| {
            p.default_deny_ingress || !p.ingress.is_empty() || !p.ingress_deny.is_empty()
        };
        let selects_egress =
            |p: &Policy| p.default_deny_egress || !p.egress.is_empty() || !p.egress_deny.is_empty();
        let local = LocalEndpoint {
            id,
            namespace: ep.namespace.clone(),
            name: ep.name.clone(),
            interface: ep.interface.clone().unwrap_or_default(),
            identity: identity_of[&key_of(ep, ep.ips.first().copied())],
            enforce_ingress: any(false, |p| p.default_deny_ingress),
            enforce_egress: any(false, |p| p.default_deny_egress),
            audit_ingress: any(true, |p| p.default_deny_ingress),
            audit_egress: any(true, |p| p.default_deny_egress),
            selected: Directions {
                ingress: any(false, selects_ingress),
                egress: any(false, selects_egress),
            },
            audit_selected: Directions {
                ingress: any(true, selects_ingress),
                egress: any(true, selects_egress),
            },
        };
        for (index, p) in &selecting {
            for (entries, direction, deny) in [
                (&p.ingress, POLICY_INGRESS, false),
                (&p.egress, POLICY_EGRESS, false),
                (&p.ingress_deny, POLICY_INGRESS, true),
                (&p.egress_deny, POLICY_EGRESS, true),
            ] {
                let target = if deny { &mut out.deny } else { &mut out.allow };
                let direction = if p.audit { direction | POLICY_AUDIT_LAYER } else { direction };
                for entry in entries {
                    resolver.expand(entry, (id, &ep.ports), direction, (*index, p.audit), target);
                }
            }
        }
        out.selected_by.insert(
            id,
            selecting
                .iter()
                .map(|(_, p)| format!("{}/{}", p.kind.as_str(), qualified(p)))
                .collect(),
        );
        out.local.push(local);
    }
    out
}

fn qualified(p: &Policy) -> String {
    match &p.namespace {
        Some(ns) => format!("{ns}/{}", p.name),
        None => p.name.clone(),
    }
}

struct Resolver<'a> {
    endpoints: &'a Endpoints,
    selectable: &'a [Selectable],
    /// CIDR identities (prefix → index into `selectable`), sorted: a CIDR peer finds the
    /// prefixes it contains with one range query, not a scan of every identity (which made
    /// compiling N CIDR rules quadratic).
    cidr_selectable: &'a BTreeMap<Cidr, usize>,
    /// Index of the first CIDR identity in `selectable` (pods and reserved ones come first).
    first_cidr: usize,
    ip_blocks: &'a [(Cidr, Vec<Cidr>)],
}

impl Resolver<'_> {
    /// Pod and reserved identities: `selectable` lists them before every CIDR identity.
    fn non_cidr(&self) -> &[Selectable] {
        &self.selectable[..self.first_cidr]
    }

    /// Identities a peer stands for; `IDENTITY_ANY` for "any peer".
    fn identities(&self, peer: &Peer) -> BTreeSet<u32> {
        let ids = |pred: &dyn Fn(&Selectable) -> bool| -> BTreeSet<u32> {
            self.selectable.iter().filter(|s| pred(s)).map(|s| s.id).collect()
        };
        let world = |s: &Selectable, family: &str| s.labels.contains_key(family);
        match peer {
            // A NetworkPolicy peer (namespace or namespaceSelector) selects pods only; a
            // Cilium selector carries its own scope (see `cilium_peer_scope`).
            Peer::Endpoints { selector, namespace, namespace_selector } => ids(&|s| {
                let pods_only = namespace.is_some() || namespace_selector.is_some();
                selector.matches_sourced(&s.labels)
                    && (!pods_only || s.namespace.is_some())
                    && namespace.as_ref().is_none_or(|want| s.namespace.as_ref() == Some(want))
                    && namespace_selector.as_ref().is_none_or(|sel| {
                        s.namespace
                            .as_ref()
                            .is_some_and(|ns| sel.matches(&self.endpoints.namespace_labels(ns)))
                    })
            }),
            Peer::Cidr { net, except, pod_ips } => {
                let mut found: BTreeSet<u32> = self
                    .cidr_selectable
                    .range(net.contained_range())
                    .filter(|(c, _)| net.contains(c) && !except.iter().any(|e| e.contains(c)))
                    .map(|(_, i)| self.selectable[*i].id)
                    .collect();
                // A NetworkPolicy ipBlock also selects pod addresses (pod identities only).
                let block = self.ip_blocks.iter().position(|(n, e)| n == net && e == except);
                if *pod_ips && let Some(b) = block {
                    found.extend(
                        self.non_cidr().iter().filter(|s| s.ip_blocks.contains(&b)).map(|s| s.id),
                    );
                }
                // The whole family also covers the addresses no prefix names.
                if *net == Cidr::ALL_IPV4 {
                    found.insert(IDENTITY_WORLD_IPV4);
                } else if *net == Cidr::ALL_IPV6 {
                    found.insert(IDENTITY_WORLD_IPV6);
                }
                found
            }
            Peer::Entity(Entity::World) => ids(&|s| world(s, "reserved:world")),
            Peer::Entity(Entity::WorldIpv4) => ids(&|s| world(s, "reserved:world-ipv4")),
            Peer::Entity(Entity::WorldIpv6) => ids(&|s| world(s, "reserved:world-ipv6")),
            Peer::Entity(Entity::Cluster) => {
                ids(&|s| s.namespace.is_some() || s.id == IDENTITY_HOST)
            }
            Peer::Entity(Entity::Host) => BTreeSet::from([IDENTITY_HOST]),
            Peer::Entity(Entity::All) => BTreeSet::from([IDENTITY_ANY]),
        }
    }

    /// Ports a named port stands for toward `identity`: the local endpoint's container ports
    /// for ingress, the peer's for egress (any pod's, one identity each, for any peer).
    fn named(
        &self,
        named: &NamedPort,
        direction: u8,
        identity: u32,
        local_ports: &[ContainerPort],
    ) -> Vec<(u32, u8, u16)> {
        let matching = |ports: &[ContainerPort], id: u32| -> Vec<(u32, u8, u16)> {
            ports
                .iter()
                .filter(|p| p.name.as_deref() == Some(named.name.as_str()))
                .filter_map(|p| Some((id, p.protocol_number()?, p.container_port)))
                .filter(|(_, proto, _)| named.protocol.is_none_or(|want| want == *proto))
                .collect()
        };
        if direction == POLICY_INGRESS {
            return matching(local_ports, identity);
        }
        // Only pod identities carry container ports: CIDR identities are skipped without a
        // scan (a named port toward N CIDR peers would otherwise be quadratic).
        self.non_cidr()
            .iter()
            .filter(|s| identity == IDENTITY_ANY || s.id == identity)
            .flat_map(|s| matching(&s.ports, s.id))
            .collect()
    }

    fn expand(
        &self,
        entry: &Entry,
        (endpoint_id, local_ports): (u32, &[ContainerPort]),
        direction: u8,
        (policy, audit): (usize, bool),
        out: &mut BTreeMap<PolicyEntry, EntryMeta>,
    ) {
        // The first policy to produce a key names it; audit only if every producer audits.
        let mut insert = |key: PolicyEntry, match_type: u8| {
            out.entry(key).and_modify(|meta| meta.audit &= audit).or_insert(EntryMeta {
                match_type,
                policy,
                audit,
            });
        };
        let identities = match &entry.peers {
            None => BTreeSet::from([IDENTITY_ANY]),
            Some(peers) => peers.iter().flat_map(|p| self.identities(p)).collect(),
        };
        for identity in identities {
            let specific = identity != IDENTITY_ANY;
            if entry.any_port() {
                let match_type = if specific { MATCH_L3_ONLY } else { MATCH_ALL };
                let key =
                    PolicyEntry { endpoint_id, identity, direction, protocol: None, port: None };
                insert(key, match_type);
                continue;
            }
            let match_type = if specific { MATCH_L3_L4 } else { MATCH_L4_ONLY };
            for range in &entry.ports {
                let protocols = match range.protocol {
                    Some(p) => vec![p],
                    None => vec![PROTO_TCP, PROTO_UDP, PROTO_SCTP],
                };
                for protocol in protocols {
                    for (value, bits) in port_prefixes(range.first, range.last) {
                        let port = (bits > 0).then_some((value, bits));
                        let protocol = Some(protocol);
                        insert(
                            PolicyEntry { endpoint_id, identity, direction, protocol, port },
                            match_type,
                        );
                    }
                }
            }
            // A name that resolves to no container port adds nothing: it allows nothing.
            for named in &entry.named_ports {
                for (identity, protocol, port) in
                    self.named(named, direction, identity, local_ports)
                {
                    let key = PolicyEntry {
                        endpoint_id,
                        identity,
                        direction,
                        protocol: Some(protocol),
                        port: Some((port, 16)),
                    };
                    insert(key, match_type);
                }
            }
        }
    }
}

/// The fewest (value, prefix bits) pairs covering `first..=last`.
pub fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut start, end) = (u32::from(first), u32::from(last));
    while start <= end {
        let mut bits = 0;
        while bits < 16 {
            let size = 1_u32 << (bits + 1);
            if start % size != 0 || start + size - 1 > end {
                break;
            }
            bits += 1;
        }
        out.push((u16::try_from(start).unwrap_or(u16::MAX), 16 - bits));
        start += 1 << bits;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sensor_common::net::{PROTO_ICMP, PROTO_ICMPV6};

    use super::*;
    use crate::policy::model::parse_file;

    #[test]
    fn port_ranges_become_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(0, u16::MAX), vec![(0, 0)]);
        assert_eq!(port_prefixes(9000, 9010), vec![(9000, 13), (9008, 15), (9010, 16)]);
        let covered: u32 = port_prefixes(1, 1023).iter().map(|(_, b)| 1_u32 << (16 - b)).sum();
        assert_eq!(covered, 1023);
    }

    fn endpoints() -> Endpoints {
        serde_yaml_ng::from_str(
            "host_ips: [10.77.0.1]
endpoints:
- {namespace: shop, name: db, labels: {app: db}, ips: [10.77.1.2], interface: veth1}
- {namespace: shop, name: api, labels: {app: api}, ips: [10.77.2.2], interface: veth2}
- {namespace: other, name: api, labels: {app: api}, ips: [10.77.3.2]}
",
        )
        .expect("endpoints")
    }

    #[test]
    fn compiles_l3_l4_allow_cidr_and_deny() {
        let (policies, _) = parse_file(
            Path::new("p.yaml"),
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]
  egressDeny:
  - toCIDR: [192.0.2.0/24]
",
        )
        .expect("policy");
        let c = compile(&policies, &endpoints());
        let db = c.local.iter().find(|e| e.name == "db").expect("db");
        assert!(db.enforce_ingress && db.enforce_egress);
        let api = c.local.iter().find(|e| e.name == "api").expect("api");
        assert!(!api.enforce_ingress && !api.enforce_egress);
        // Only shop/api (same namespace), not other/api.
        let allowed: Vec<_> = c.allow.iter().filter(|(e, _)| e.endpoint_id == db.id).collect();
        assert_eq!(allowed.len(), 1, "{allowed:?}");
        let (key, meta) = allowed[0];
        assert_eq!(key.identity, api.identity);
        assert_eq!((key.protocol, key.port), (Some(PROTO_TCP), Some((5432, 16))));
        assert_eq!(meta.match_type, MATCH_L3_L4);
        assert_eq!(c.policies[meta.policy].name, "db");
        let deny: Vec<_> = c.deny.keys().collect();
        assert_eq!(deny.len(), 1);
        assert!(deny[0].identity >= FIRST_CIDR_IDENTITY);
        assert_eq!(c.ipcache[&Cidr::parse("192.0.2.0/24").expect("cidr")], deny[0].identity);
        assert_eq!(c.ipcache[&Cidr::parse("10.77.0.1").expect("host")], IDENTITY_HOST);
    }

    #[test]
    fn icmps_compile_to_icmp_entries_keyed_by_type() {
        let (policies, _) = parse_file(
            Path::new("p.yaml"),
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ping, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
    icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv6}]}]
",
        )
        .expect("policy");
        let c = compile(&policies, &endpoints());
        let db = c.local.iter().find(|e| e.name == "db").expect("db");
        let keys: Vec<_> = c
            .allow
            .iter()
            .filter(|(e, _)| e.endpoint_id == db.id)
            .map(|(e, m)| (e.protocol, e.port, m.match_type))
            .collect();
        assert_eq!(
            keys,
            vec![
                (Some(PROTO_ICMP), Some((8, 16)), MATCH_L3_L4),
                (Some(PROTO_ICMPV6), Some((128, 16)), MATCH_L3_L4),
            ]
        );
    }

    #[test]
    fn identities_are_per_label_set_not_per_pod() {
        let mut eps = endpoints();
        for i in 0..50 {
            eps.endpoints.push(super::super::endpoints::Endpoint {
                namespace: "shop".into(),
                name: format!("api-{i}"),
                labels: [("app".to_owned(), "api".to_owned())].into(),
                ips: vec![format!("10.77.9.{i}").parse().expect("ip")],
                interface: None,
                netns: None,
                local_hint: None,
                containers: vec![],
                container_info: Vec::new(),
                ports: vec![],
                service_account: None,
            });
        }
        let c = compile(&[], &eps);
        // db, shop/api, other/api: three label sets, whatever the pod count.
        assert_eq!(
            c.identity_labels
                .keys()
                .filter(|id| **id >= FIRST_LABEL_IDENTITY && **id < FIRST_CIDR_IDENTITY)
                .count(),
            3
        );
    }
}

/// The cases of issue 13 that the language decides (families, named ports, label sources,
/// defaults), checked on the compiled map entries.
#[cfg(test)]
mod language_tests {
    use std::path::Path;

    use super::*;
    use crate::policy::model::parse_file;

    fn compiled(policy: &str, endpoints: &str) -> Compiled {
        let (policies, _) = parse_file(Path::new("p.yaml"), policy).expect("policy");
        let endpoints = Endpoints::parse(Path::new("e.yaml"), endpoints).expect("endpoints");
        compile(&policies, &endpoints)
    }

    const EPS: &str = "endpoints:
- {namespace: shop, name: srv, labels: {app: server}, ips: [10.99.2.2, \"fd00:99::2:2\"], interface: vs, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}
- {namespace: shop, name: cli, labels: {app: client}, ips: [10.99.1.2, \"fd00:99::1:2\"], interface: vc}
- {namespace: tools, name: probe, labels: {app: probe}, ips: [10.99.3.2]}
";

    /// (remote identity, direction, protocol, port prefix) of an allow entry.
    type Key = (u32, u8, Option<u8>, Option<(u16, u8)>);

    fn allowed(c: &Compiled, name: &str) -> Vec<Key> {
        let ep = c.local.iter().find(|e| e.name == name).expect("endpoint");
        c.allow
            .keys()
            .filter(|k| k.endpoint_id == ep.id)
            .map(|k| (k.identity, k.direction, k.protocol, k.port))
            .collect()
    }

    #[test]
    fn r01_a_cidr_matches_its_own_family_only() {
        let v4 = compiled(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: w4, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  - toCIDR: [\"0.0.0.0/0\"]\n",
            EPS,
        );
        let ids: Vec<u32> = allowed(&v4, "cli").iter().map(|k| k.0).collect();
        assert_eq!(ids, vec![IDENTITY_WORLD_IPV4], "0.0.0.0/0 is the IPv4 world only");
        assert_eq!(v4.ipcache[&Cidr::ALL_IPV6], IDENTITY_WORLD_IPV6);
        assert_eq!(v4.ipcache[&Cidr::ALL_IPV4], IDENTITY_WORLD_IPV4);
        let v6 = compiled(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: w6, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  - toCIDR: [\"::/0\", \"10.0.0.0/8\"]\n  - toCIDR: [\"::/1\"]\n",
            EPS,
        );
        let ids: BTreeSet<u32> = allowed(&v6, "cli").iter().map(|k| k.0).collect();
        let v4_prefix = v6.ipcache[&Cidr::parse("10.0.0.0/8").expect("v4")];
        let v6_prefix = v6.ipcache[&Cidr::parse("::/1").expect("v6")];
        assert_eq!(ids, BTreeSet::from([IDENTITY_WORLD_IPV6, v4_prefix, v6_prefix]));
        // The IPv4 prefix's identity is named and labelled as IPv4.
        let labels = &v6.identity_labels[&v4_prefix];
        assert!(labels.contains(&"cidr:10.0.0.0/8".to_owned()), "{labels:?}");
        assert!(labels.contains(&"reserved:world-ipv4".to_owned()), "{labels:?}");
        assert!(!labels.iter().any(|l| l.contains("::")), "{labels:?}");
        // Entities by family.
        let e = compiled(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: e, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  - toEntities: [world-ipv6]\n  - toCIDR: [192.0.2.0/24]\n",
            EPS,
        );
        let v4c = e.ipcache[&Cidr::parse("192.0.2.0/24").expect("v4")];
        let ids: BTreeSet<u32> = allowed(&e, "cli").iter().map(|k| k.0).collect();
        assert_eq!(ids, BTreeSet::from([IDENTITY_WORLD_IPV6, v4c]));
    }

    #[test]
    fn r02_named_ports_resolve_against_the_selected_pods_and_never_mean_all_ports() {
        let np = |port: &str| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: named, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]\n    ports: [{port}]\n"
            )
        };
        let c = compiled(&np("{protocol: TCP, port: http}"), EPS);
        let client = c.ipcache[&Cidr::parse("10.99.1.2").expect("ip")];
        assert_eq!(
            allowed(&c, "srv"),
            vec![(client, POLICY_INGRESS, Some(PROTO_TCP), Some((8080, 16)))]
        );
        // The protocol must match the container port's; an unknown name allows nothing.
        for ports in ["{protocol: UDP, port: http}", "{protocol: TCP, port: nope}", "{port: dns}"] {
            let c = compiled(&np(ports), EPS);
            assert!(allowed(&c, "srv").is_empty(), "{ports}: {:?}", allowed(&c, "srv"));
            assert!(c.local.iter().any(|e| e.name == "srv" && e.enforce_ingress));
        }
        let c = compiled(&np("{protocol: UDP, port: dns}"), EPS);
        assert_eq!(allowed(&c, "srv")[0].3, Some((53, 16)));
        // Egress: the peer's container port.
        let c = compiled(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: e, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  - toEndpoints: [{matchLabels: {app: server}}]\n    toPorts: [{ports: [{port: http}]}]\n  - toPorts: [{ports: [{port: HTTP, protocol: TCP}]}]\n",
            EPS,
        );
        let server = c.ipcache[&Cidr::parse("10.99.2.2").expect("ip")];
        let keys: BTreeSet<_> = allowed(&c, "cli").into_iter().collect();
        assert_eq!(
            keys,
            BTreeSet::from([(server, POLICY_EGRESS, Some(PROTO_TCP), Some((8080, 16)))])
        );
    }

    #[test]
    fn r05_r13_label_sources_select_as_cilium_reads_them() {
        let c = compiled(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: prefixed, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {\"k8s:app\": server}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {\"k8s:app\": client}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n  - fromEndpoints:\n    - matchLabels: {\"k8s:io.kubernetes.pod.namespace\": tools, \"any:app\": probe}\n    toPorts: [{ports: [{port: \"9090\", protocol: TCP}]}]\n  - fromEndpoints: [{matchLabels: {\"reserved:host\": \"\"}}]\n",
            EPS,
        );
        let srv = c.local.iter().find(|e| e.name == "srv").expect("srv");
        assert!(srv.enforce_ingress, "k8s:app must select the server");
        let client = c.ipcache[&Cidr::parse("10.99.1.2").expect("ip")];
        let probe = c.ipcache[&Cidr::parse("10.99.3.2").expect("ip")];
        let keys: BTreeSet<_> = allowed(&c, "srv").into_iter().map(|k| (k.0, k.3)).collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                (client, Some((8080, 16))),
                (probe, Some((9090, 16))),
                (IDENTITY_HOST, None)
            ])
        );
        // `{}` in a namespaced policy: pods of its namespace, not the host or the world.
        let c = compiled(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: all, namespace: shop}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n",
            EPS,
        );
        let ids: BTreeSet<u32> = allowed(&c, "srv").iter().map(|k| k.0).collect();
        let server = c.ipcache[&Cidr::parse("10.99.2.2").expect("ip")];
        assert_eq!(ids, BTreeSet::from([client, server]));
        let (_, warnings) = parse_file(
            Path::new("p.yaml"),
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector:\n    matchLabels:\n      \"container:app\": web\n",
        )
        .expect("valid for Cilium");
        assert_eq!(warnings[0].origin.line, 7, "{warnings:?}");
        assert!(warnings[0].message.contains("selects nothing"), "{warnings:?}");
    }

    #[test]
    fn r07_network_policy_without_pod_selector_selects_its_namespace() {
        let c = compiled(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: no-selector, namespace: shop}\nspec:\n  policyTypes: [Ingress]\n  ingress:\n  - ports: [{protocol: TCP, port: 8080}]\n",
            EPS,
        );
        for name in ["srv", "cli"] {
            let ep = c.local.iter().find(|e| e.name == name).expect("endpoint");
            assert!(ep.enforce_ingress && !ep.enforce_egress, "{name}");
            assert_eq!(
                allowed(&c, name),
                vec![(IDENTITY_ANY, POLICY_INGRESS, Some(6), Some((8080, 16)))]
            );
        }
    }

    #[test]
    fn np_ip_block_selects_pod_addresses_one_by_one() {
        let c = compiled(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.99.0.0/16, except: [10.99.3.0/24]}}]\n",
            EPS,
        );
        let client = c.ipcache[&Cidr::parse("10.99.1.2").expect("ip")];
        let client6 = c.ipcache[&Cidr::parse("fd00:99::1:2").expect("ip")];
        let probe = c.ipcache[&Cidr::parse("10.99.3.2").expect("ip")];
        let ids: BTreeSet<u32> = allowed(&c, "srv").iter().map(|k| k.0).collect();
        assert!(ids.contains(&client), "{ids:?}");
        assert!(!ids.contains(&client6), "the client's IPv6 address is outside the block");
        assert!(!ids.contains(&probe), "excepted");
    }
}
