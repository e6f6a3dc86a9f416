//! A reference evaluator of Kubernetes NetworkPolicy and CiliumNetworkPolicy semantics, and a
//! seeded generator of policies and probes for the conformance suite.
//!
//! Written from the Kubernetes API reference (`networking.k8s.io/v1` NetworkPolicy: isolation
//! per direction, `policyTypes` defaulting, peers, `ipBlock`, ports, named ports resolved on
//! the pod that receives the traffic) and Cilium's policy documentation (label sources
//! `k8s:`/`any:`, the implicit namespace of peer selectors, `{}` rules that match nothing,
//! default deny per direction once a section exists, deny rules over allow rules). It shares
//! no code with `sensor/src/policy`: both sides are checked against real packets.
//!
//! Scope: pod-to-pod probes (TCP, UDP, ICMP echo; IPv4 and IPv6) between the pods of a
//! [`World`]. Host, world and CIDR peers of Cilium (which never select pods) are not probed.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde_json::{Value, json};

/// A small xorshift64* generator: reproducible cases from a seed, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Icmp => "ICMP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

pub type Labels = BTreeMap<String, String>;

/// A container port: (name, port, protocol).
pub type ContainerPort = (String, u16, Proto);

#[derive(Debug, Clone)]
pub struct Namespace {
    pub name: String,
    /// Labels as written; the API server adds `kubernetes.io/metadata.name`.
    pub labels: Labels,
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    pub fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.v4),
            Family::V6 => IpAddr::V6(self.v6),
        }
    }
}

/// Pods and namespaces of the conformance topology.
#[derive(Debug, Clone)]
pub struct World {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
}

/// Ports every pod listens on (TCP and UDP each).
pub const PORTS: [u16; 2] = [80, 81];

impl World {
    /// Two namespaces, four pods; pod `i` has `v4(i)` and `v6(i)`. Named ports differ from
    /// pod to pod, so a name means another number on another pod.
    pub fn standard(v4: impl Fn(usize) -> Ipv4Addr, v6: impl Fn(usize) -> Ipv6Addr) -> Self {
        let ns = |name: &str, team: &str| Namespace {
            name: name.into(),
            labels: [("ns".to_owned(), name.to_owned()), ("team".to_owned(), team.to_owned())]
                .into(),
        };
        let p = |s: &str, n: u16, proto| (s.to_owned(), n, proto);
        let specs: [(&str, &str, &str, Vec<ContainerPort>); 4] = [
            (
                "x",
                "a",
                "web",
                vec![p("web", 80, Proto::Tcp), p("alt", 81, Proto::Tcp), p("dns", 81, Proto::Udp)],
            ),
            ("x", "b", "db", vec![p("web", 81, Proto::Tcp), p("dns", 80, Proto::Udp)]),
            ("y", "a", "web", vec![p("web", 80, Proto::Tcp), p("alt", 81, Proto::Tcp)]),
            ("y", "c", "db", vec![p("dns", 81, Proto::Udp), p("web", 81, Proto::Tcp)]),
        ];
        let pods = specs
            .into_iter()
            .enumerate()
            .map(|(i, (namespace, name, app, ports))| Pod {
                namespace: namespace.into(),
                name: name.into(),
                labels: [("pod".to_owned(), name.to_owned()), ("app".to_owned(), app.to_owned())]
                    .into(),
                v4: v4(i),
                v6: v6(i),
                ports,
            })
            .collect();
        Self { namespaces: vec![ns("x", "a"), ns("y", "b")], pods }
    }

    /// A namespace's labels as a namespaceSelector sees them.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        let mut labels = self
            .namespaces
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.labels.clone())
            .unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), name.into());
        labels
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A label selector. Keys may carry a Cilium source prefix (CiliumNetworkPolicy only).
#[derive(Debug, Clone, Default)]
pub struct Sel {
    pub labels: Vec<(String, String)>,
    pub exprs: Vec<(String, Op, Vec<String>)>,
}

impl Sel {
    /// Kubernetes semantics over a plain label map.
    fn matches(&self, labels: &Labels) -> bool {
        self.matches_with(|k| labels.get(k).cloned())
    }

    fn matches_with(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.labels.iter().all(|(k, v)| get(k).as_ref() == Some(v))
            && self.exprs.iter().all(|(k, op, values)| {
                let v = get(k);
                match op {
                    Op::In => v.is_some_and(|v| values.contains(&v)),
                    Op::NotIn => v.is_none_or(|v| !values.contains(&v)),
                    Op::Exists => v.is_some(),
                    Op::DoesNotExist => v.is_none(),
                }
            })
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.labels.iter().map(|(k, _)| k).chain(self.exprs.iter().map(|(k, _, _)| k))
    }

    fn render(&self) -> Value {
        let mut out = serde_json::Map::new();
        if !self.labels.is_empty() {
            let labels: serde_json::Map<String, Value> =
                self.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            out.insert("matchLabels".into(), labels.into());
        }
        if !self.exprs.is_empty() {
            let exprs: Vec<Value> = self
                .exprs
                .iter()
                .map(|(k, op, values)| {
                    let op = format!("{op:?}");
                    if values.is_empty() {
                        json!({"key": k, "operator": op})
                    } else {
                        json!({"key": k, "operator": op, "values": values})
                    }
                })
                .collect();
            out.insert("matchExpressions".into(), exprs.into());
        }
        out.into()
    }
}

/// Cilium's view of a pod's labels for a selector key: `k8s:` and `any:` (or no) source, the
/// pod's labels plus `io.kubernetes.pod.namespace` and the namespace's labels under
/// `io.cilium.k8s.namespace.labels.`.
fn cilium_label(world: &World, pod: &Pod, key: &str) -> Option<String> {
    let bare = key.strip_prefix("k8s:").or_else(|| key.strip_prefix("any:")).unwrap_or(key);
    if bare == NS_LABEL {
        return Some(pod.namespace.clone());
    }
    if let Some(ns_key) = bare.strip_prefix("io.cilium.k8s.namespace.labels.") {
        return world.namespace_labels(&pod.namespace).get(ns_key).cloned();
    }
    pod.labels.get(bare).cloned()
}

const NS_LABEL: &str = "io.kubernetes.pod.namespace";

/// A port entry: a number (or range), a name, or any port of a protocol (`proto` `None`:
/// Cilium's ANY).
#[derive(Debug, Clone)]
pub enum Port {
    Number { proto: Option<Proto>, port: u16, end: Option<u16> },
    Named { proto: Option<Proto>, name: String },
    Any { proto: Option<Proto> },
}

impl Port {
    /// Whether the probe's protocol and port match; a named port is looked up on `owner`,
    /// the pod that receives the traffic.
    fn matches(&self, owner: &Pod, proto: Proto, port: u16) -> bool {
        if proto == Proto::Icmp {
            return false;
        }
        let proto_ok = |want: &Option<Proto>| want.is_none_or(|p| p == proto);
        match self {
            Self::Number { proto: p, port: first, end } => {
                proto_ok(p) && (*first..=end.unwrap_or(*first)).contains(&port)
            }
            Self::Named { proto: p, name } => {
                proto_ok(p)
                    && owner
                        .ports
                        .iter()
                        .any(|(n, number, pp)| n == name && *number == port && *pp == proto)
            }
            Self::Any { proto: p } => proto_ok(p),
        }
    }

    fn render(&self, np: bool) -> Value {
        let proto = |p: &Option<Proto>| p.map_or("ANY", Proto::name);
        let mut out = serde_json::Map::new();
        let (p, port, end) = match self {
            Self::Number { proto, port, end } => {
                let port = if np { json!(port) } else { json!(port.to_string()) };
                (proto, Some(port), *end)
            }
            Self::Named { proto, name } => (proto, Some(json!(name)), None),
            Self::Any { proto } => (proto, None, None),
        };
        if !(np && p.is_none()) {
            out.insert("protocol".into(), json!(proto(p)));
        }
        if let Some(port) = port {
            out.insert("port".into(), port);
        }
        if let Some(end) = end {
            out.insert("endPort".into(), json!(end));
        }
        out.into()
    }
}

/// A NetworkPolicy peer.
#[derive(Debug, Clone)]
pub enum NpPeer {
    Pods { pod: Option<Sel>, namespace: Option<Sel> },
    Block { cidr: (IpAddr, u8), except: Vec<(IpAddr, u8)> },
}

#[derive(Debug, Clone)]
pub struct NpRule {
    pub peers: Option<Vec<NpPeer>>,
    pub ports: Option<Vec<Port>>,
}

#[derive(Debug, Clone)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    /// `None`: the field is left out (the API server defaults it to `{}`).
    pub pod_selector: Option<Sel>,
    pub policy_types: Option<Vec<&'static str>>,
    pub ingress: Option<Vec<NpRule>>,
    pub egress: Option<Vec<NpRule>>,
}

/// A CiliumNetworkPolicy peer.
#[derive(Debug, Clone)]
pub enum CnpPeer {
    Endpoints(Sel),
    /// `all` or `cluster`: every pod here.
    Entity(&'static str),
}

/// A Cilium rule; `peers` and `ports` both `None` is `{}`, which matches nothing.
#[derive(Debug, Clone)]
pub struct CnpRule {
    pub peers: Option<Vec<CnpPeer>>,
    pub ports: Option<Vec<Port>>,
}

#[derive(Debug, Clone)]
pub struct CiliumPolicy {
    pub namespace: String,
    pub name: String,
    pub selector: Sel,
    pub ingress: Vec<CnpRule>,
    pub egress: Vec<CnpRule>,
    pub ingress_deny: Vec<CnpRule>,
    pub egress_deny: Vec<CnpRule>,
}

#[derive(Debug, Clone)]
pub enum Policy {
    Np(NetworkPolicy),
    Cnp(CiliumPolicy),
}

/// One probe: from pod `from` to pod `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probe {
    pub from: usize,
    pub to: usize,
    pub proto: Proto,
    /// 0 for ICMP.
    pub port: u16,
    pub family: Family,
}

/// Every probe between distinct pods: TCP and UDP to each of [`PORTS`], ICMP echo; both
/// families.
pub fn all_probes(world: &World) -> Vec<Probe> {
    let mut out = Vec::new();
    for from in 0..world.pods.len() {
        for to in (0..world.pods.len()).filter(|t| *t != from) {
            for family in [Family::V4, Family::V6] {
                for proto in [Proto::Tcp, Proto::Udp] {
                    for port in PORTS {
                        out.push(Probe { from, to, proto, port, family });
                    }
                }
                out.push(Probe { from, to, proto: Proto::Icmp, port: 0, family });
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

/// The verdict for a probe: the source's egress and the destination's ingress must both
/// allow it.
pub fn allowed(world: &World, policies: &[Policy], probe: &Probe) -> bool {
    let (src, dst) = (&world.pods[probe.from], &world.pods[probe.to]);
    direction_allows(world, policies, src, dst, Dir::Egress, probe)
        && direction_allows(world, policies, dst, src, Dir::Ingress, probe)
}

/// Whether `subject`'s policies let the traffic with `peer` pass in `dir`: deny rules win;
/// otherwise it passes when no policy isolates the subject in that direction, or an allow
/// rule of a policy selecting it matches.
fn direction_allows(
    world: &World,
    policies: &[Policy],
    subject: &Pod,
    peer: &Pod,
    dir: Dir,
    probe: &Probe,
) -> bool {
    // Named ports belong to the pod that receives the traffic.
    let owner = if dir == Dir::Ingress { subject } else { peer };
    let (mut isolated, mut allow, mut deny) = (false, false, false);
    for policy in policies {
        match policy {
            Policy::Np(np) => {
                let selects = np.namespace == subject.namespace
                    && np.pod_selector.as_ref().is_none_or(|s| s.matches(&subject.labels));
                if !selects {
                    continue;
                }
                let egress_rules = np.egress.as_ref().is_some_and(|e| !e.is_empty());
                let types: Vec<&str> = match &np.policy_types {
                    Some(t) if !t.is_empty() => t.clone(),
                    _ if egress_rules => vec!["Ingress", "Egress"],
                    _ => vec!["Ingress"],
                };
                let (name, rules) = match dir {
                    Dir::Ingress => ("Ingress", &np.ingress),
                    Dir::Egress => ("Egress", &np.egress),
                };
                if !types.contains(&name) {
                    continue;
                }
                isolated = true;
                allow |= rules.iter().flatten().any(|r| {
                    let peer_ok = match &r.peers {
                        None => true,
                        Some(list) if list.is_empty() => true,
                        Some(list) => {
                            list.iter().any(|p| np_peer_matches(world, np, p, peer, probe.family))
                        }
                    };
                    let port_ok = match &r.ports {
                        None => true,
                        Some(list) if list.is_empty() => true,
                        Some(list) => {
                            list.iter().any(|p| p.matches(owner, probe.proto, probe.port))
                        }
                    };
                    peer_ok && port_ok
                });
            }
            Policy::Cnp(c) => {
                let selects = c.namespace == subject.namespace
                    && c.selector.matches_with(|k| cilium_label(world, subject, k));
                if !selects {
                    continue;
                }
                let (rules, denies) = match dir {
                    Dir::Ingress => (&c.ingress, &c.ingress_deny),
                    Dir::Egress => (&c.egress, &c.egress_deny),
                };
                isolated |= !rules.is_empty() || !denies.is_empty();
                let hit = |r: &CnpRule| cnp_rule_matches(world, c, r, peer, owner, probe);
                allow |= rules.iter().any(hit);
                deny |= denies.iter().any(hit);
            }
        }
    }
    !deny && (!isolated || allow)
}

fn np_peer_matches(
    world: &World,
    np: &NetworkPolicy,
    peer: &NpPeer,
    pod: &Pod,
    family: Family,
) -> bool {
    match peer {
        NpPeer::Pods { pod: sel, namespace: None } => {
            pod.namespace == np.namespace && sel.as_ref().is_none_or(|s| s.matches(&pod.labels))
        }
        NpPeer::Pods { pod: sel, namespace: Some(ns) } => {
            ns.matches(&world.namespace_labels(&pod.namespace))
                && sel.as_ref().is_none_or(|s| s.matches(&pod.labels))
        }
        NpPeer::Block { cidr, except } => {
            let addr = pod.addr(family);
            in_prefix(addr, *cidr) && !except.iter().any(|e| in_prefix(addr, *e))
        }
    }
}

fn cnp_rule_matches(
    world: &World,
    c: &CiliumPolicy,
    rule: &CnpRule,
    peer: &Pod,
    owner: &Pod,
    probe: &Probe,
) -> bool {
    if rule.peers.is_none() && rule.ports.is_none() {
        return false; // `{}` selects nothing
    }
    let peer_ok = rule.peers.as_ref().is_none_or(|list| {
        list.iter().any(|p| match p {
            CnpPeer::Entity(_) => true,
            CnpPeer::Endpoints(sel) => {
                let names_ns = sel.keys().any(|k| {
                    k.strip_prefix("k8s:").or_else(|| k.strip_prefix("any:")).unwrap_or(k)
                        == NS_LABEL
                });
                (names_ns || peer.namespace == c.namespace)
                    && sel.matches_with(|k| cilium_label(world, peer, k))
            }
        })
    });
    let port_ok = rule
        .ports
        .as_ref()
        .is_none_or(|list| list.iter().any(|p| p.matches(owner, probe.proto, probe.port)));
    peer_ok && port_ok
}

/// Whether `addr` lies in `prefix`; families never match each other.
fn in_prefix(addr: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

// ---- rendering -------------------------------------------------------------------------

impl Policy {
    /// The policy as a YAML document (JSON is YAML).
    pub fn render(&self) -> String {
        let value = match self {
            Self::Np(np) => render_np(np),
            Self::Cnp(c) => render_cnp(c),
        };
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}

fn render_np(np: &NetworkPolicy) -> Value {
    let mut spec = serde_json::Map::new();
    if let Some(sel) = &np.pod_selector {
        spec.insert("podSelector".into(), sel.render());
    }
    if let Some(types) = &np.policy_types {
        spec.insert("policyTypes".into(), json!(types));
    }
    let rules = |rules: &Vec<NpRule>, key: &str| -> Value {
        rules
            .iter()
            .map(|r| {
                let mut out = serde_json::Map::new();
                if let Some(peers) = &r.peers {
                    let peers: Vec<Value> = peers.iter().map(render_np_peer).collect();
                    out.insert(key.into(), peers.into());
                }
                if let Some(ports) = &r.ports {
                    let ports: Vec<Value> = ports.iter().map(|p| p.render(true)).collect();
                    out.insert("ports".into(), ports.into());
                }
                Value::from(out)
            })
            .collect()
    };
    if let Some(ingress) = &np.ingress {
        spec.insert("ingress".into(), rules(ingress, "from"));
    }
    if let Some(egress) = &np.egress {
        spec.insert("egress".into(), rules(egress, "to"));
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": np.name, "namespace": np.namespace},
        "spec": spec,
    })
}

fn prefix_text((addr, len): (IpAddr, u8)) -> String {
    format!("{addr}/{len}")
}

fn render_np_peer(peer: &NpPeer) -> Value {
    match peer {
        NpPeer::Pods { pod, namespace } => {
            let mut out = serde_json::Map::new();
            if let Some(pod) = pod {
                out.insert("podSelector".into(), pod.render());
            }
            if let Some(ns) = namespace {
                out.insert("namespaceSelector".into(), ns.render());
            }
            out.into()
        }
        NpPeer::Block { cidr, except } => {
            let except: Vec<String> = except.iter().map(|e| prefix_text(*e)).collect();
            if except.is_empty() {
                json!({"ipBlock": {"cidr": prefix_text(*cidr)}})
            } else {
                json!({"ipBlock": {"cidr": prefix_text(*cidr), "except": except}})
            }
        }
    }
}

fn render_cnp(c: &CiliumPolicy) -> Value {
    let rules = |rules: &Vec<CnpRule>, ingress: bool| -> Value {
        rules
            .iter()
            .map(|r| {
                let mut out = serde_json::Map::new();
                for peer in r.peers.iter().flatten() {
                    let (key, value) = match (peer, ingress) {
                        (CnpPeer::Endpoints(s), true) => ("fromEndpoints", s.render()),
                        (CnpPeer::Endpoints(s), false) => ("toEndpoints", s.render()),
                        (CnpPeer::Entity(e), true) => ("fromEntities", json!(e)),
                        (CnpPeer::Entity(e), false) => ("toEntities", json!(e)),
                    };
                    let list = out.entry(key).or_insert_with(|| json!([]));
                    if let Value::Array(list) = list {
                        list.push(value);
                    }
                }
                if let Some(ports) = &r.ports {
                    let ports: Vec<Value> = ports.iter().map(|p| p.render(false)).collect();
                    out.insert("toPorts".into(), json!([{"ports": ports}]));
                }
                Value::from(out)
            })
            .collect()
    };
    let mut spec = serde_json::Map::new();
    spec.insert("endpointSelector".into(), c.selector.render());
    for (key, list, ingress) in [
        ("ingress", &c.ingress, true),
        ("egress", &c.egress, false),
        ("ingressDeny", &c.ingress_deny, true),
        ("egressDeny", &c.egress_deny, false),
    ] {
        if !list.is_empty() {
            spec.insert(key.into(), rules(list, ingress));
        }
    }
    json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": c.name, "namespace": c.namespace},
        "spec": spec,
    })
}

// ---- generation ------------------------------------------------------------------------

/// A generated case: 1 to 3 policies over `world`.
pub fn generate(world: &World, rng: &mut Rng) -> Vec<Policy> {
    let count = 1 + rng.below(3);
    (0..count)
        .map(|i| {
            let namespace = rng.pick(&world.namespaces).name.clone();
            let name = format!("p{i}");
            if rng.chance(65) {
                Policy::Np(gen_np(world, rng, namespace, name))
            } else {
                Policy::Cnp(gen_cnp(rng, namespace, name))
            }
        })
        .collect()
}

fn gen_sel(rng: &mut Rng, prefix: &str) -> Sel {
    let key = |rng: &mut Rng, k: &str| {
        let p = if prefix.is_empty() { "" } else { *rng.pick(&["", "k8s:", "any:"]) };
        format!("{p}{k}")
    };
    let mut sel = Sel::default();
    match rng.below(6) {
        0 => {}
        1 | 2 => {
            let (k, values) =
                *rng.pick(&[("app", &["web", "db"][..]), ("pod", &["a", "b", "c"][..])]);
            sel.labels.push((key(rng, k), (*rng.pick(values)).to_owned()));
        }
        3 => {
            let op = *rng.pick(&[Op::In, Op::NotIn]);
            let values =
                if rng.chance(50) { vec!["web".into()] } else { vec!["db".into(), "x".into()] };
            sel.exprs.push((key(rng, "app"), op, values));
        }
        4 => {
            let op = *rng.pick(&[Op::Exists, Op::DoesNotExist]);
            let name = *rng.pick(&["app", "pod", "tier"]);
            sel.exprs.push((key(rng, name), op, Vec::new()));
        }
        _ => {
            sel.labels.push((key(rng, "app"), "web".into()));
            sel.exprs.push((key(rng, "pod"), Op::NotIn, vec!["c".into()]));
        }
    }
    sel
}

fn gen_ns_sel(rng: &mut Rng) -> Sel {
    let mut sel = Sel::default();
    match rng.below(4) {
        0 => {}
        1 => sel.labels.push(("ns".into(), (*rng.pick(&["x", "y"])).into())),
        2 => {
            sel.labels.push(("kubernetes.io/metadata.name".into(), (*rng.pick(&["x", "y"])).into()))
        }
        _ => sel.exprs.push(("team".into(), Op::In, vec![(*rng.pick(&["a", "b"])).into()])),
    }
    sel
}

fn gen_port(rng: &mut Rng, np: bool) -> Port {
    let proto = |rng: &mut Rng| -> Option<Proto> {
        match rng.below(if np { 3 } else { 4 }) {
            0 => Some(Proto::Udp),
            1 if !np => None,
            _ => Some(Proto::Tcp),
        }
    };
    match rng.below(5) {
        0 | 1 => Port::Number { proto: proto(rng), port: *rng.pick(&PORTS), end: None },
        2 => Port::Number { proto: proto(rng), port: 79, end: Some(*rng.pick(&[80, 81])) },
        3 => Port::Named {
            proto: proto(rng),
            name: (*rng.pick(&["web", "alt", "dns", "none"])).into(),
        },
        _ => Port::Any { proto: proto(rng) },
    }
}

fn gen_ports(rng: &mut Rng, np: bool) -> Vec<Port> {
    (0..1 + rng.below(2)).map(|_| gen_port(rng, np)).collect()
}

fn gen_np(world: &World, rng: &mut Rng, namespace: String, name: String) -> NetworkPolicy {
    let rules = |rng: &mut Rng| -> Option<Vec<NpRule>> {
        match rng.below(5) {
            0 => None,
            1 => Some(Vec::new()),
            _ => Some(
                (0..1 + rng.below(2))
                    .map(|_| NpRule {
                        peers: match rng.below(5) {
                            0 => None,
                            1 => Some(Vec::new()),
                            _ => Some(
                                (0..1 + rng.below(2)).map(|_| gen_np_peer(world, rng)).collect(),
                            ),
                        },
                        ports: match rng.below(3) {
                            0 => None,
                            _ => Some(gen_ports(rng, true)),
                        },
                    })
                    .collect(),
            ),
        }
    };
    let policy_types = match rng.below(5) {
        0 | 1 => None,
        2 => Some(vec!["Ingress"]),
        3 => Some(vec!["Egress"]),
        _ => Some(vec!["Ingress", "Egress"]),
    };
    NetworkPolicy {
        namespace,
        name,
        pod_selector: if rng.chance(20) { None } else { Some(gen_sel(rng, "")) },
        policy_types,
        ingress: rules(rng),
        egress: rules(rng),
    }
}

fn gen_np_peer(world: &World, rng: &mut Rng) -> NpPeer {
    match rng.below(6) {
        0 | 1 => NpPeer::Pods { pod: Some(gen_sel(rng, "")), namespace: None },
        2 => NpPeer::Pods { pod: None, namespace: Some(gen_ns_sel(rng)) },
        3 => NpPeer::Pods { pod: Some(gen_sel(rng, "")), namespace: Some(gen_ns_sel(rng)) },
        _ => {
            let pod = rng.pick(&world.pods);
            let family = if rng.chance(50) { Family::V4 } else { Family::V6 };
            let host = (pod.addr(family), if family == Family::V4 { 32 } else { 128 });
            let wide = match family {
                Family::V4 => (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8),
                Family::V6 => (IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)), 8),
            };
            match rng.below(3) {
                0 => NpPeer::Block { cidr: host, except: Vec::new() },
                1 => NpPeer::Block { cidr: wide, except: vec![host] },
                _ => NpPeer::Block { cidr: wide, except: Vec::new() },
            }
        }
    }
}

fn gen_cnp(rng: &mut Rng, namespace: String, name: String) -> CiliumPolicy {
    let rules = |rng: &mut Rng, max: usize| -> Vec<CnpRule> {
        (0..rng.below(max + 1))
            .map(|_| {
                let peers = match rng.below(5) {
                    0 => None,
                    1 => Some(vec![CnpPeer::Entity(rng.pick(&["all", "cluster"]))]),
                    2 => {
                        let mut sel = gen_sel(rng, "k8s:");
                        let ns = (*rng.pick(&["x", "y"])).to_owned();
                        let prefix = *rng.pick(&["", "k8s:", "any:"]);
                        sel.labels.push((format!("{prefix}{NS_LABEL}"), ns));
                        Some(vec![CnpPeer::Endpoints(sel)])
                    }
                    _ => Some(vec![CnpPeer::Endpoints(gen_sel(rng, "k8s:"))]),
                };
                let ports = if rng.chance(60) { Some(gen_ports(rng, false)) } else { None };
                CnpRule { peers, ports }
            })
            .collect()
    };
    CiliumPolicy {
        namespace,
        name,
        selector: gen_sel(rng, "k8s:"),
        ingress: rules(rng, 2),
        egress: rules(rng, 2),
        ingress_deny: if rng.chance(25) { rules(rng, 1) } else { Vec::new() },
        egress_deny: if rng.chance(15) { rules(rng, 1) } else { Vec::new() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        World::standard(
            |i| Ipv4Addr::new(10, 77, 100 + 4 * i as u8, 2),
            |i| Ipv6Addr::new(0xfd00, 0x78, i as u16, 0, 0, 0, 0, 2),
        )
    }

    fn probe(from: usize, to: usize, proto: Proto, port: u16) -> Probe {
        Probe { from, to, proto, port, family: Family::V4 }
    }

    #[test]
    fn kubernetes_recipes() {
        let w = world();
        // Deny all ingress in x: x/a and x/b receive nothing; y pods still do.
        let deny = Policy::Np(NetworkPolicy {
            namespace: "x".into(),
            name: "deny".into(),
            pod_selector: None,
            policy_types: None,
            ingress: None,
            egress: None,
        });
        assert!(!allowed(&w, std::slice::from_ref(&deny), &probe(2, 0, Proto::Tcp, 80)));
        assert!(allowed(&w, std::slice::from_ref(&deny), &probe(0, 2, Proto::Tcp, 80)));
        // Named port `web` is 80 on x/a and 81 on x/b.
        let named = Policy::Np(NetworkPolicy {
            namespace: "x".into(),
            name: "named".into(),
            pod_selector: Some(Sel::default()),
            policy_types: Some(vec!["Ingress"]),
            ingress: Some(vec![NpRule {
                peers: None,
                ports: Some(vec![Port::Named { proto: Some(Proto::Tcp), name: "web".into() }]),
            }]),
            egress: None,
        });
        let ps = [named];
        assert!(allowed(&w, &ps, &probe(2, 0, Proto::Tcp, 80)));
        assert!(!allowed(&w, &ps, &probe(2, 0, Proto::Tcp, 81)));
        assert!(allowed(&w, &ps, &probe(2, 1, Proto::Tcp, 81)));
        assert!(!allowed(&w, &ps, &probe(2, 1, Proto::Tcp, 80)));
        assert!(!allowed(&w, &ps, &probe(2, 1, Proto::Icmp, 0)));
    }

    #[test]
    fn cilium_empty_rule_isolates_and_matches_nothing_and_deny_wins() {
        let w = world();
        let c = |ingress, ingress_deny| {
            Policy::Cnp(CiliumPolicy {
                namespace: "x".into(),
                name: "c".into(),
                selector: Sel { labels: vec![("k8s:pod".into(), "a".into())], exprs: vec![] },
                ingress,
                egress: vec![],
                ingress_deny,
                egress_deny: vec![],
            })
        };
        let empty = c(vec![CnpRule { peers: None, ports: None }], vec![]);
        assert!(!allowed(&w, &[empty], &probe(1, 0, Proto::Tcp, 80)));
        let all = CnpRule { peers: Some(vec![CnpPeer::Entity("all")]), ports: None };
        let deny80 = CnpRule {
            peers: None,
            ports: Some(vec![Port::Number { proto: Some(Proto::Tcp), port: 80, end: None }]),
        };
        let p = c(vec![all], vec![deny80]);
        assert!(!allowed(&w, std::slice::from_ref(&p), &probe(1, 0, Proto::Tcp, 80)));
        assert!(allowed(&w, std::slice::from_ref(&p), &probe(1, 0, Proto::Tcp, 81)));
        assert!(allowed(&w, &[p], &probe(1, 0, Proto::Icmp, 0)));
    }

    #[test]
    fn generation_is_reproducible_and_renders() {
        let w = world();
        let a: Vec<String> = generate(&w, &mut Rng::new(7)).iter().map(Policy::render).collect();
        let b: Vec<String> = generate(&w, &mut Rng::new(7)).iter().map(Policy::render).collect();
        assert_eq!(a, b);
        for text in a {
            let _: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
        }
    }
}
