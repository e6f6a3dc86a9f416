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
    endpoints::Endpoints,
    model::{Entity, Entry, NAMESPACE_LABEL, Peer, Policy},
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

    // Identities of label sets (namespace label included), in a stable order.
    let label_sets: BTreeSet<Labels> =
        endpoints.endpoints.iter().map(|e| full_labels(&e.labels, &e.namespace)).collect();
    let identity_of: BTreeMap<Labels, u32> =
        label_sets.into_iter().zip(FIRST_LABEL_IDENTITY..).collect();
    for (labels, id) in &identity_of {
        out.identity_labels
            .insert(*id, labels.iter().map(|(k, v)| format!("k8s:{k}={v}")).collect());
    }
    out.identity_labels.insert(IDENTITY_HOST, vec!["reserved:host".into()]);
    out.identity_labels.insert(IDENTITY_WORLD, vec!["reserved:world".into()]);

    // CIDR identities for every prefix a policy names.
    let prefixes: BTreeSet<Cidr> = policies
        .iter()
        .flat_map(|p| {
            p.ingress.iter().chain(&p.egress).chain(&p.ingress_deny).chain(&p.egress_deny)
        })
        .flat_map(|e| e.peers.iter().flatten())
        .filter_map(|peer| match peer {
            Peer::Cidr { net, except } => Some(std::iter::once(*net).chain(except.iter().copied())),
            _ => None,
        })
        .flatten()
        .collect();
    let cidr_identities: BTreeMap<Cidr, u32> =
        prefixes.into_iter().zip(FIRST_CIDR_IDENTITY..).collect();
    for (cidr, id) in &cidr_identities {
        out.ipcache.insert(*cidr, *id);
        out.identity_labels.insert(*id, vec![format!("cidr:{cidr}"), "reserved:world".into()]);
    }
    for ip in &endpoints.host_ips {
        out.ipcache.insert(Cidr::host(*ip), IDENTITY_HOST);
    }
    for ep in &endpoints.endpoints {
        let id = identity_of[&full_labels(&ep.labels, &ep.namespace)];
        for ip in &ep.ips {
            out.ipcache.insert(Cidr::host(*ip), id);
            out.pods_by_ip.insert(*ip, (ep.namespace.clone(), ep.name.clone()));
        }
    }

    let resolver =
        Resolver { endpoints, identity_of: &identity_of, cidr_identities: &cidr_identities };
    for (id, ep) in (1..).zip(endpoints.endpoints.iter().filter(|e| e.interface.is_some())) {
        let labels = full_labels(&ep.labels, &ep.namespace);
        let selecting: Vec<(usize, &Policy)> = policies
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.namespace.as_ref().is_none_or(|ns| *ns == ep.namespace)
                    && p.selector.matches(&labels)
            })
            .collect();
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
            identity: identity_of[&labels],
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
                    resolver.expand(entry, id, direction, (*index, p.audit), target);
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

fn full_labels(labels: &Labels, namespace: &str) -> Labels {
    let mut full = labels.clone();
    full.insert(NAMESPACE_LABEL.to_owned(), namespace.to_owned());
    full
}

struct Resolver<'a> {
    endpoints: &'a Endpoints,
    identity_of: &'a BTreeMap<Labels, u32>,
    cidr_identities: &'a BTreeMap<Cidr, u32>,
}

impl Resolver<'_> {
    /// Identities a peer stands for; `IDENTITY_ANY` for "any peer".
    fn identities(&self, peer: &Peer) -> BTreeSet<u32> {
        match peer {
            Peer::Endpoints { selector, namespace, namespace_selector } => self
                .identity_of
                .iter()
                .filter(|(labels, _)| {
                    let ns = labels.get(NAMESPACE_LABEL).map_or("", String::as_str);
                    selector.matches(labels)
                        && namespace.as_ref().is_none_or(|want| want == ns)
                        && namespace_selector
                            .as_ref()
                            .is_none_or(|s| s.matches(&self.endpoints.namespace_labels(ns)))
                })
                .map(|(_, id)| *id)
                .collect(),
            Peer::Cidr { net, except } => {
                let mut ids: BTreeSet<u32> = self
                    .cidr_identities
                    .iter()
                    .filter(|(c, _)| net.contains(c) && !except.iter().any(|e| e.contains(c)))
                    .map(|(_, id)| *id)
                    .collect();
                // An all-addresses prefix also covers addresses no prefix names (world).
                if net.len == 0 || (net.len == 96 && net.addr >> 32 == 0xffff) {
                    ids.insert(IDENTITY_WORLD);
                }
                ids
            }
            Peer::Entity(Entity::World) => {
                let mut ids: BTreeSet<u32> = self.cidr_identities.values().copied().collect();
                ids.insert(IDENTITY_WORLD);
                ids
            }
            Peer::Entity(Entity::Cluster) => {
                let mut ids: BTreeSet<u32> = self.identity_of.values().copied().collect();
                ids.insert(IDENTITY_HOST);
                ids
            }
            Peer::Entity(Entity::Host) => BTreeSet::from([IDENTITY_HOST]),
            Peer::Entity(Entity::All) => BTreeSet::from([IDENTITY_ANY]),
        }
    }

    fn expand(
        &self,
        entry: &Entry,
        endpoint_id: u32,
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
            if entry.ports.is_empty() {
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
                containers: vec![],
                container_info: Vec::new(),
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
