//! Host policies + endpoints + the node's cgroups → the contents of the host maps. Each
//! policy owns one mask bit in the half of the generation being written.

use std::collections::{BTreeMap, HashMap};

use sensor_common::host::{
    BindKey, FileMasks, InodeKey, InodeMasks, PATH_KEY_LEN, PathKey, RULES_BIT_INDEX, RuleMasks,
};

use super::{
    cgroups::{Inventory, bare_container_id},
    policy::{BindProtocol, HostPolicy, PathMatch, PolicyAction},
};
use crate::{
    policy::{Endpoints, endpoints::Endpoint},
    rules::{Cgroups, Interest},
};

const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;

/// An LPM key over a path: the bytes and how many bits of them count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathPrefix {
    pub bytes: Vec<u8>,
}

impl PathPrefix {
    fn of(m: &PathMatch) -> Self {
        match m {
            PathMatch::Prefix(p) => Self { bytes: p.as_bytes().to_vec() },
            // Exact paths include the NUL so longer paths do not match.
            PathMatch::Exact(p) => Self { bytes: [p.as_bytes(), &[0]].concat() },
        }
    }

    pub fn key(&self) -> aya::maps::lpm_trie::Key<PathKey> {
        let mut path = [0_u8; PATH_KEY_LEN];
        path[..self.bytes.len()].copy_from_slice(&self.bytes);
        aya::maps::lpm_trie::Key::new(self.bytes.len() as u32 * 8, PathKey { path })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCompiled {
    /// Policy names by mask bit (within the generation's half).
    pub names: Vec<String>,
    pub scopes: HashMap<u64, u64>,
    pub exec: BTreeMap<PathPrefix, RuleMasks>,
    pub file: BTreeMap<PathPrefix, FileMasks>,
    pub bind: HashMap<BindKey, RuleMasks>,
    pub syscall: HashMap<u32, RuleMasks>,
    pub noroot: RuleMasks,
    /// Objects by identity ([`super::identity`]); filled by the runtime, not by [`compile`].
    pub inode: HashMap<InodeKey, InodeMasks>,
    /// Policies with a Block file or executable rule: where an unfinished identity walk fails
    /// closed.
    pub walk_block: u64,
    /// Policies with a Block file rule: where calls the kernel cannot decide are held.
    pub hold_block: u64,
}

fn add(masks: &mut RuleMasks, action: PolicyAction, bit: u64) {
    match action {
        PolicyAction::Audit => masks.audit |= bit,
        PolicyAction::Block => masks.block |= bit,
    }
}

/// The pod (endpoint) a container id belongs to.
fn pod_of<'a>(endpoints: &'a Endpoints, container_id: &str) -> Option<&'a Endpoint> {
    endpoints
        .endpoints
        .iter()
        .find(|e| e.containers.iter().any(|c| bare_container_id(c) == container_id))
}

fn selects(policy: &HostPolicy, pod: Option<&Endpoint>) -> bool {
    let scope = &policy.scope;
    match pod {
        None => scope.host,
        Some(_) if scope.host => false,
        Some(ep) => {
            (scope.namespaces.is_empty() || scope.namespaces.contains(&ep.namespace))
                && scope.pod_selector.matches(&ep.labels)
        }
    }
}

/// Compiles for `generation` (0 or 1): bit i of the policy at index i, shifted into its half;
/// the rules engine's `interest` takes bit [`RULES_BIT_INDEX`].
pub fn compile(
    policies: &[HostPolicy],
    endpoints: &Endpoints,
    inventory: &Inventory,
    generation: u32,
    interest: &Interest,
) -> HostCompiled {
    let shift = if generation == 0 { 0 } else { 32 };
    let bit = |i: usize| 1_u64 << (i + shift);
    let mut out = HostCompiled {
        names: policies.iter().map(|p| p.name.clone()).collect(),
        ..HostCompiled::default()
    };
    for (id, cgroup) in &inventory.by_id {
        let rules_want = match interest.cgroups {
            Cgroups::None => false,
            Cgroups::Containers => cgroup.container.is_some(),
            Cgroups::All => true,
        };
        let mut mask = if rules_want { bit(RULES_BIT_INDEX) } else { 0 };
        // Containers of no known pod are left alone: a policy selects pods, not guesses.
        let pod = match &cgroup.container {
            Some(c) => pod_of(endpoints, &c.id).map(Some),
            None => Some(None),
        };
        if let Some(pod) = pod {
            mask |= policies
                .iter()
                .enumerate()
                .filter(|(_, p)| selects(p, pod))
                .fold(0, |m, (i, _)| m | bit(i));
        }
        if mask != 0 {
            out.scopes.insert(*id, mask);
        }
    }
    let mut exec_rules: Vec<(PathPrefix, RuleMasks)> = Vec::new();
    let mut file_rules: Vec<(PathPrefix, FileMasks)> = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        for rule in &p.executables {
            let mut m = RuleMasks::default();
            add(&mut m, rule.action, bit(i));
            exec_rules.push((PathPrefix::of(&rule.path), m));
        }
        for rule in &p.files {
            let mut m = FileMasks::default();
            for access in &rule.access {
                match rule.action {
                    PolicyAction::Audit => m.audit[access.index()] |= bit(i),
                    PolicyAction::Block => m.block[access.index()] |= bit(i),
                }
            }
            file_rules.push((PathPrefix::of(&rule.path), m));
        }
        for rule in &p.binds {
            let protocols: &[u16] = match rule.protocol {
                BindProtocol::Tcp => &[IPPROTO_TCP],
                BindProtocol::Udp => &[IPPROTO_UDP],
                BindProtocol::Any => &[IPPROTO_TCP, IPPROTO_UDP],
            };
            for &protocol in protocols {
                for port in rule.ports.clone() {
                    add(
                        out.bind.entry(BindKey { protocol, port }).or_default(),
                        rule.action,
                        bit(i),
                    );
                }
            }
        }
        for rule in &p.syscalls {
            add(out.syscall.entry(rule.nr).or_default(), rule.action, bit(i));
        }
        if let Some(action) = p.no_root {
            add(&mut out.noroot, action, bit(i));
        }
        let blocks = |a: PolicyAction| a == PolicyAction::Block;
        if p.files.iter().any(|r| blocks(r.action))
            || p.executables.iter().any(|r| blocks(r.action))
        {
            out.walk_block |= bit(i);
        }
        if p.files.iter().any(|r| blocks(r.action)) {
            out.hold_block |= bit(i);
        }
    }
    if interest.cgroups != Cgroups::None {
        for prefix in &interest.prefixes {
            let m = FileMasks { observe: bit(RULES_BIT_INDEX), ..FileMasks::default() };
            file_rules.push((PathPrefix { bytes: prefix.as_bytes().to_vec() }, m));
        }
    }
    // The kernel finds only the longest matching prefix: fold every shorter rule into it.
    for (key, _) in &exec_rules {
        let merged = exec_rules.iter().filter(|(k, _)| key.bytes.starts_with(&k.bytes)).fold(
            RuleMasks::default(),
            |acc, (_, m)| RuleMasks { audit: acc.audit | m.audit, block: acc.block | m.block },
        );
        out.exec.insert(key.clone(), merged);
    }
    for (key, _) in &file_rules {
        let mut merged = FileMasks::default();
        for (_, m) in file_rules.iter().filter(|(k, _)| key.bytes.starts_with(&k.bytes)) {
            for kind in 0..m.audit.len() {
                merged.audit[kind] |= m.audit[kind];
                merged.block[kind] |= m.block[kind];
            }
            merged.observe |= m.observe;
        }
        out.file.insert(key.clone(), merged);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{
        cgroups::{CgroupInfo, container_of},
        policy::parse_file,
    };

    const ID: &str = "aaaabbbbccccddddeeeeffff00001111aaaabbbbccccddddeeeeffff00001111";

    fn fixture() -> (Vec<HostPolicy>, Endpoints, Inventory) {
        let policies = parse_file(
            std::path::Path::new("p.yaml"),
            "apiVersion: sensor.dev/v1alpha1\nkind: HostPolicy\nmetadata: {name: web}\nspec:\n  selector: {podSelector: {matchLabels: {app: web}}}\n  action: Block\n  files: [{prefix: /etc/, access: [write]}, {path: /etc/shadow, access: [read]}]\n  binds: [{port: 80, endPort: 81}]\n---\napiVersion: sensor.dev/v1alpha1\nkind: HostPolicy\nmetadata: {name: node}\nspec:\n  selector: {host: true}\n  files: [{prefix: /etc/}]\n",
        )
        .expect("policies");
        let endpoints: Endpoints = serde_yaml_ng::from_str(&format!(
            "endpoints:\n- {{namespace: shop, name: web-1, labels: {{app: web}}, containers: [\"containerd://{ID}\"]}}\n"
        ))
        .expect("endpoints");
        let mut inventory = Inventory::default();
        for (id, path) in [
            (10, format!("/kubepods.slice/cri-containerd-{ID}.scope")),
            (11, "/system.slice/sshd.service".to_owned()),
            (12, format!("/kubepods.slice/cri-containerd-{}.scope", "1".repeat(64))),
        ] {
            inventory.by_id.insert(id, CgroupInfo { container: container_of(&path), path });
        }
        (policies, endpoints, inventory)
    }

    #[test]
    fn scopes_follow_pods_and_host() {
        let (p, e, i) = fixture();
        let c = compile(&p, &e, &i, 1, &Interest::default());
        assert_eq!(c.scopes.get(&10), Some(&(1 << 32)), "web pod: policy 0, upper half");
        assert_eq!(c.scopes.get(&11), Some(&(1 << 33)), "host cgroup: policy 1");
        assert_eq!(c.scopes.get(&12), None, "container of no known pod");
    }

    #[test]
    fn longer_prefixes_carry_shorter_ones() {
        let (p, e, i) = fixture();
        let c = compile(&p, &e, &i, 0, &Interest::default());
        let shadow = c.file.get(&PathPrefix { bytes: b"/etc/shadow\0".to_vec() }).expect("exact");
        assert_eq!(shadow.block[sensor_common::host::ACCESS_READ], 1);
        assert_eq!(shadow.block[sensor_common::host::ACCESS_WRITE], 1, "from the /etc/ prefix");
        assert_eq!(shadow.audit[sensor_common::host::ACCESS_READ], 2, "host policy");
        assert_eq!(c.bind.len(), 4, "two ports, TCP and UDP");
    }

    #[test]
    fn rules_interest_takes_the_reserved_bit() {
        let (p, e, i) = fixture();
        let interest = Interest {
            prefixes: vec!["/etc/sh".into(), "/srv/".into()],
            cgroups: Cgroups::Containers,
            ..Interest::default()
        };
        let c = compile(&p, &e, &i, 1, &interest);
        let rules = 1_u64 << (32 + RULES_BIT_INDEX);
        assert_eq!(c.scopes.get(&10), Some(&((1 << 32) | rules)), "pod: policy and rules");
        assert_eq!(c.scopes.get(&11), Some(&(1 << 33)), "host cgroup: not a container");
        assert_eq!(c.scopes.get(&12), Some(&rules), "container of no known pod: rules only");
        let shadow = c.file.get(&PathPrefix { bytes: b"/etc/shadow\0".to_vec() }).expect("exact");
        assert_eq!(shadow.observe, rules, "a longer policy path carries the rules prefix");
        let srv = c.file.get(&PathPrefix { bytes: b"/srv/".to_vec() }).expect("rules prefix");
        assert_eq!((srv.observe, srv.audit, srv.block), (rules, [0; 5], [0; 5]));
        let all =
            compile(&p, &e, &i, 0, &Interest { cgroups: Cgroups::All, ..Interest::default() });
        assert_eq!(all.scopes.get(&11), Some(&((1 << 1) | (1 << RULES_BIT_INDEX))));
    }
}
