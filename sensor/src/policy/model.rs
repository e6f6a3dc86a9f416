//! Policy documents as users write them — `cilium.io/v2` CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy, `networking.k8s.io/v1` NetworkPolicy — parsed into one
//! model. Fields we accept but do not enforce produce warnings naming file and line.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use sensor_common::net::{PROTO_ICMP, PROTO_ICMPV6};

use super::{
    cidr::Cidr,
    selector::{
        ANY_SOURCE, Expression, K8S_SOURCE, Operator, RESERVED_SOURCE, Selector, split_source,
    },
};

/// Where a document starts, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    NetworkPolicy,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Self::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            Self::NetworkPolicy => "NetworkPolicy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    /// Every address outside the cluster, both families (Cilium 1.15+: world-ipv4 and
    /// world-ipv6 together).
    World,
    WorldIpv4,
    WorldIpv6,
    Cluster,
    Host,
    All,
}

/// A peer of a rule entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Endpoints whose labels match; `namespace` restricts to one namespace (Cilium's implicit
    /// namespace, or a NetworkPolicy podSelector), `namespace_selector` to matching namespaces.
    Endpoints {
        selector: Selector,
        namespace: Option<String>,
        namespace_selector: Option<Selector>,
    },
    /// Addresses in `net` but in none of `except` (all of one family). `pod_ips`: the prefix
    /// also selects pods' own addresses, as a NetworkPolicy `ipBlock` does per the Kubernetes
    /// API reference; Cilium's `toCIDR`/`fromCIDR` select only addresses outside the cluster.
    Cidr {
        net: Cidr,
        except: Vec<Cidr>,
        pod_ips: bool,
    },
    Entity(Entity),
}

/// An inclusive port range on one protocol (`None` = TCP, UDP and SCTP). For ICMP and ICMPv6
/// (from `icmps`) the "port" is the message type, as in Cilium's policy map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub protocol: Option<u8>,
    pub first: u16,
    pub last: u16,
}

/// A port given by name (`port: http`): the container port of that name, resolved per pod
/// when the policy is compiled (the selected pod's for ingress, the peer pod's for egress).
/// `protocol` `None` = any of TCP, UDP, SCTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub protocol: Option<u8>,
    pub name: String,
}

/// One element of `ingress`/`egress`/`*Deny`: peers AND ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `None`: any peer (no L3 part was given).
    pub peers: Option<Vec<Peer>>,
    /// Numeric ports. Any port and protocol only when this AND `named_ports` are empty.
    pub ports: Vec<PortRange>,
    /// Ports given by name; one that resolves to no container port allows nothing.
    pub named_ports: Vec<NamedPort>,
}

impl Entry {
    /// True when the entry has no L4 part: every port and protocol.
    pub fn any_port(&self) -> bool {
        self.ports.is_empty() && self.named_ports.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub kind: Kind,
    pub name: String,
    pub namespace: Option<String>,
    pub origin: Origin,
    /// Which local endpoints the policy applies to (namespace-restricted unless clusterwide).
    pub selector: Selector,
    pub ingress: Vec<Entry>,
    pub egress: Vec<Entry>,
    pub ingress_deny: Vec<Entry>,
    pub egress_deny: Vec<Entry>,
    /// Whether selecting an endpoint turns on default deny in that direction.
    pub default_deny_ingress: bool,
    pub default_deny_egress: bool,
    /// [`AUDIT_ANNOTATION`] is "true": this policy never drops.
    pub audit: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub origin: Origin,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: warning: {}", self.origin, self.message)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{origin}: {message}")]
pub struct ParseError {
    pub origin: Origin,
    pub message: String,
}

/// Parses every document of a file. Any error rejects the whole file.
pub fn parse_file(path: &Path, text: &str) -> Result<(Vec<Policy>, Vec<Warning>), ParseError> {
    let mut policies = Vec::new();
    let mut warnings = Vec::new();
    for (start, doc) in split_documents(text) {
        if doc.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            continue;
        }
        let mut ctx = DocContext { file: path, start, text: doc, warnings: &mut warnings };
        policies.extend(ctx.parse()?);
    }
    Ok((policies, warnings))
}

/// Line (1-based) of the first occurrence of `key:` in a document's text; 1 if absent.
pub fn line_of_key(text: &str, key: &str) -> usize {
    let needle = format!("{key}:");
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches("- ");
            l.starts_with(&needle)
                || l.contains(&format!(" {needle}"))
                || l.contains(&format!("{{{needle}"))
        })
        .map_or(1, |i| i + 1)
}

/// Splits on `---` lines; yields (first line number, text) per document.
pub fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((i + 2, String::new()));
        } else if let Some((_, doc)) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs
}

struct DocContext<'a> {
    file: &'a Path,
    start: usize,
    text: String,
    warnings: &'a mut Vec<Warning>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Option<Value>,
    specs: Option<Vec<Value>>,
}

/// A document's spec(s), decoded straight from its text.
#[derive(Deserialize)]
struct Typed<T> {
    spec: Option<T>,
    specs: Option<Vec<T>>,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// Annotation that puts one policy in audit mode even when the sensor enforces: what it would
/// drop is recorded as AUDIT and passes. Roll a new policy out safely, then remove it.
pub const AUDIT_ANNOTATION: &str = "policy.sensor.dev/audit";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CiliumSpec {
    endpoint_selector: Option<Selector>,
    node_selector: Option<Value>,
    #[serde(default)]
    ingress: Vec<CiliumEntry>,
    #[serde(default)]
    egress: Vec<CiliumEntry>,
    #[serde(default)]
    ingress_deny: Vec<CiliumEntry>,
    #[serde(default)]
    egress_deny: Vec<CiliumEntry>,
    enable_default_deny: Option<DefaultDeny>,
    description: Option<String>,
    labels: Option<Value>,
    log: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultDeny {
    ingress: Option<bool>,
    egress: Option<bool>,
}

/// Ingress and egress entries share one shape; `from*` and `to*` are both accepted and the
/// wrong-direction ones are rejected in [`DocContext::cilium_entry`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CiliumEntry {
    #[serde(rename = "fromEndpoints")]
    from_endpoints: Option<Vec<Selector>>,
    #[serde(rename = "toEndpoints")]
    to_endpoints: Option<Vec<Selector>>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<CidrSet>>,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<CidrSet>>,
    #[serde(rename = "fromEntities")]
    from_entities: Option<Vec<String>>,
    #[serde(rename = "toEntities")]
    to_entities: Option<Vec<String>>,
    #[serde(rename = "toPorts")]
    to_ports: Option<Vec<CiliumPortRule>>,
    icmps: Option<Vec<IcmpRule>>,
    #[serde(rename = "toFQDNs")]
    to_fqdns: Option<Value>,
    #[serde(rename = "toServices")]
    to_services: Option<Value>,
    #[serde(rename = "fromRequires")]
    from_requires: Option<Value>,
    #[serde(rename = "toRequires")]
    to_requires: Option<Value>,
    #[serde(rename = "fromGroups")]
    from_groups: Option<Value>,
    #[serde(rename = "toGroups")]
    to_groups: Option<Value>,
    #[serde(rename = "fromNodes")]
    from_nodes: Option<Value>,
    #[serde(rename = "toNodes")]
    to_nodes: Option<Value>,
    authentication: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CidrSet {
    cidr: Option<String>,
    #[serde(default)]
    except: Vec<String>,
    cidr_group_ref: Option<Value>,
    cidr_group_selector: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CiliumPortRule {
    #[serde(default)]
    ports: Vec<PortProtocol>,
    rules: Option<Value>,
    server_names: Option<Value>,
    listener: Option<Value>,
    #[serde(rename = "originatingTLS")]
    originating_tls: Option<Value>,
    #[serde(rename = "terminatingTLS")]
    terminating_tls: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpRule {
    #[serde(default)]
    fields: Vec<IcmpField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpField {
    /// `IPv4` (default) or `IPv6`.
    family: Option<String>,
    #[serde(rename = "type")]
    icmp_type: IntOrString,
}

/// Cilium's limit on `fields` per ICMP rule (`maxICMPFields`).
const MAX_ICMP_FIELDS: usize = 40;

/// Cilium's ICMP type names (pkg/policy/api/icmp.go), per family.
const ICMPV4_TYPES: &[(&str, u8)] = &[
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];
const ICMPV6_TYPES: &[(&str, u8)] = &[
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortProtocol {
    port: Option<IntOrString>,
    end_port: Option<i64>,
    protocol: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Str(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NetworkPolicySpec {
    /// The API server defaults a missing podSelector to `{}`: every pod of the namespace.
    #[serde(default)]
    pod_selector: Selector,
    policy_types: Option<Vec<String>>,
    #[serde(default)]
    ingress: Vec<NpIngress>,
    #[serde(default)]
    egress: Vec<NpEgress>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NpIngress {
    from: Option<Vec<NpPeer>>,
    ports: Option<Vec<PortProtocol>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NpEgress {
    to: Option<Vec<NpPeer>>,
    ports: Option<Vec<PortProtocol>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NpPeer {
    pod_selector: Option<Selector>,
    namespace_selector: Option<Selector>,
    ip_block: Option<IpBlock>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IpBlock {
    cidr: String,
    #[serde(default)]
    except: Vec<String>,
}

/// Label Cilium and Kubernetes put on every pod: its namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// [`NAMESPACE_LABEL`] with its source, as Cilium adds it to selectors.
pub const K8S_NAMESPACE_LABEL: &str = "k8s:io.kubernetes.pod.namespace";

/// A port rule's port: numbers, or a name resolved later.
enum PortSpec {
    Range(PortRange),
    Named(NamedPort),
}

/// Checks an IANA service name as Kubernetes does (`IsValidPortName`): at most 15
/// characters of `a-z`, `0-9` and `-`, at least one letter, no `-` at either end or twice
/// in a row.
pub fn valid_port_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("a name has 1 to 15 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("a name holds only lowercase letters, digits and '-'");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("a name holds at least one letter");
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err("'-' may not begin or end a name, nor come twice in a row");
    }
    Ok(())
}

impl DocContext<'_> {
    fn origin_at(&self, doc_line: usize) -> Origin {
        Origin { file: self.file.to_owned(), line: self.start + doc_line.saturating_sub(1) }
    }

    /// Line of the first occurrence of `key:` in the document (the document start if absent).
    fn line_of(&self, key: &str) -> Origin {
        self.origin_at(line_of_key(&self.text, key))
    }

    fn error(&self, key: &str, message: impl Into<String>) -> ParseError {
        ParseError { origin: self.line_of(key), message: message.into() }
    }

    /// The first line holding `needle` (the document start if none).
    fn line_containing(&self, needle: &str) -> Origin {
        self.origin_at(self.text.lines().position(|l| l.contains(needle)).map_or(1, |i| i + 1))
    }

    /// An error on the first line holding both `key:` and `value` (the offending entry, not
    /// the first entry with that key); the first `key:` line if none holds both.
    fn error_at(&self, key: &str, value: &str, message: String) -> ParseError {
        let needle = format!("{key}:");
        let line = self
            .text
            .lines()
            .position(|l| l.contains(&needle) && l.contains(value))
            .map_or_else(|| line_of_key(&self.text, key), |i| i + 1);
        ParseError { origin: self.origin_at(line), message }
    }

    fn warn_unenforced(&mut self, present: bool, key: &str, what: &str) {
        if present {
            let origin = self.line_of(key);
            self.warnings.push(Warning {
                origin,
                message: format!("`{key}` ({what}) is not enforced; ignored"),
            });
        }
    }

    fn yaml_error(&self, err: &serde_yaml_ng::Error) -> ParseError {
        let line = err.location().map_or(1, |l| l.line());
        ParseError { origin: self.origin_at(line), message: err.to_string() }
    }

    fn parse(&mut self) -> Result<Vec<Policy>, ParseError> {
        let doc: Document = serde_yaml_ng::from_str(&self.text).map_err(|e| self.yaml_error(&e))?;
        if (doc.api_version.as_str(), doc.kind.as_str()) == crate::host::policy::API_KIND {
            return Ok(Vec::new()); // a host policy: the host module reads it
        }
        let kind = match (doc.api_version.as_str(), doc.kind.as_str()) {
            ("cilium.io/v2", "CiliumNetworkPolicy") => Kind::CiliumNetworkPolicy,
            ("cilium.io/v2", "CiliumClusterwideNetworkPolicy") => {
                Kind::CiliumClusterwideNetworkPolicy
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => Kind::NetworkPolicy,
            (api, kind) => {
                return Err(self.error(
                    "kind",
                    format!(
                        "unsupported kind {api}/{kind}: expected cilium.io/v2 CiliumNetworkPolicy or \
                         CiliumClusterwideNetworkPolicy, networking.k8s.io/v1 NetworkPolicy, or \
                         sensor.dev/v1alpha1 HostPolicy"
                    ),
                ));
            }
        };
        let namespace = match kind {
            Kind::CiliumClusterwideNetworkPolicy => None,
            _ => Some(doc.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned())),
        };
        let name = doc.metadata.name.clone();
        let audit = match doc.metadata.annotations.get(AUDIT_ANNOTATION).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(self.error(AUDIT_ANNOTATION, format!("annotation {AUDIT_ANNOTATION}: expected \"true\" or \"false\", got {other:?}")));
            }
        };
        match (&doc.spec, &doc.specs, kind) {
            (Some(_), None, _) => {}
            (None, Some(_), Kind::CiliumNetworkPolicy | Kind::CiliumClusterwideNetworkPolicy) => {}
            (None, None, _) => return Err(self.error("kind", "missing `spec`")),
            (None, Some(_), Kind::NetworkPolicy) => {
                return Err(self.error("specs", "a NetworkPolicy has `spec`, not `specs`"));
            }
            _ => return Err(self.error("spec", "give either `spec` or `specs`, not both")),
        }
        // Decode the spec from the text again, typed, so that an error inside it names its
        // own line (a decoded `Value` has lost the positions).
        let policies: Result<Vec<Policy>, ParseError> = match kind {
            Kind::NetworkPolicy => {
                let typed: Typed<NetworkPolicySpec> =
                    serde_yaml_ng::from_str(&self.text).map_err(|e| self.yaml_error(&e))?;
                typed
                    .spec
                    .into_iter()
                    .map(|spec| self.network_policy(spec, name.clone(), namespace.clone()))
                    .collect()
            }
            _ => {
                let typed: Typed<CiliumSpec> =
                    serde_yaml_ng::from_str(&self.text).map_err(|e| self.yaml_error(&e))?;
                typed
                    .spec
                    .into_iter()
                    .chain(typed.specs.into_iter().flatten())
                    .map(|spec| self.cilium(spec, kind, name.clone(), namespace.clone()))
                    .collect()
            }
        };
        Ok(policies?.into_iter().map(|p| Policy { audit, ..p }).collect())
    }

    fn cilium(
        &mut self,
        spec: CiliumSpec,
        kind: Kind,
        name: String,
        namespace: Option<String>,
    ) -> Result<Policy, ParseError> {
        let _ = (&spec.description, &spec.labels, &spec.log);
        if spec.node_selector.is_some() {
            return Err(self.error(
                "nodeSelector",
                "not supported: a nodeSelector policy is a host firewall policy (Cilium's host \
                 policies); this sensor enforces endpointSelector policies only",
            ));
        }
        let selector = spec.endpoint_selector.ok_or_else(|| {
            self.error("spec", "`endpointSelector` is required (or `nodeSelector`, not supported)")
        })?;
        let selector = self.cilium_selector(selector, "endpointSelector")?;
        if selector.keys().any(|k| k == "reserved:host") {
            return Err(self.error_at(
                "endpointSelector",
                "",
                "not supported: an endpointSelector on `reserved:host` is a host firewall \
                 policy; this sensor enforces policies of pods"
                    .to_owned(),
            ));
        }
        let default_deny =
            spec.enable_default_deny.unwrap_or(DefaultDeny { ingress: None, egress: None });
        // A direction becomes default-deny once a section for it exists, allow or deny.
        let has_ingress = !spec.ingress.is_empty() || !spec.ingress_deny.is_empty();
        let has_egress = !spec.egress.is_empty() || !spec.egress_deny.is_empty();
        let mut entries =
            |list: Vec<CiliumEntry>, ingress: bool| -> Result<Vec<Entry>, ParseError> {
                list.into_iter()
                    .filter_map(|e| self.cilium_entry(e, ingress, namespace.as_deref()).transpose())
                    .collect()
            };
        let ingress = entries(spec.ingress, true)?;
        let egress = entries(spec.egress, false)?;
        let ingress_deny = entries(spec.ingress_deny, true)?;
        let egress_deny = entries(spec.egress_deny, false)?;
        Ok(Policy {
            kind,
            name,
            namespace,
            origin: self.origin_at(1),
            selector,
            default_deny_ingress: has_ingress && default_deny.ingress.unwrap_or(true),
            default_deny_egress: has_egress && default_deny.egress.unwrap_or(true),
            ingress,
            egress,
            ingress_deny,
            egress_deny,
            audit: false,
        })
    }

    /// One Cilium rule entry. `None` for an entry that can never match (Cilium's `{}`).
    fn cilium_entry(
        &mut self,
        e: CiliumEntry,
        ingress: bool,
        namespace: Option<&str>,
    ) -> Result<Option<Entry>, ParseError> {
        let (endpoints, cidrs, cidr_sets, entities, wrong) = if ingress {
            (
                e.from_endpoints,
                e.from_cidr,
                e.from_cidr_set,
                e.from_entities,
                e.to_endpoints.is_some()
                    || e.to_cidr.is_some()
                    || e.to_cidr_set.is_some()
                    || e.to_entities.is_some(),
            )
        } else {
            (
                e.to_endpoints,
                e.to_cidr,
                e.to_cidr_set,
                e.to_entities,
                e.from_endpoints.is_some()
                    || e.from_cidr.is_some()
                    || e.from_cidr_set.is_some()
                    || e.from_entities.is_some(),
            )
        };
        if wrong {
            let key = if ingress { "toEndpoints" } else { "fromEndpoints" };
            return Err(self.error(
                key,
                format!(
                    "{} rule uses a `{}` peer",
                    if ingress { "an ingress" } else { "an egress" },
                    if ingress { "to*" } else { "from*" }
                ),
            ));
        }
        self.warn_unenforced(e.to_fqdns.is_some(), "toFQDNs", "DNS-based rules need an L7 proxy");
        self.warn_unenforced(e.to_services.is_some(), "toServices", "service selectors");
        self.warn_unenforced(
            e.from_requires.is_some() || e.to_requires.is_some(),
            if ingress { "fromRequires" } else { "toRequires" },
            "deprecated requirements",
        );
        self.warn_unenforced(
            e.from_groups.is_some() || e.to_groups.is_some(),
            if ingress { "fromGroups" } else { "toGroups" },
            "cloud groups",
        );
        self.warn_unenforced(
            e.from_nodes.is_some() || e.to_nodes.is_some(),
            if ingress { "fromNodes" } else { "toNodes" },
            "node selectors",
        );
        self.warn_unenforced(e.authentication.is_some(), "authentication", "mutual authentication");

        let mut peers = Vec::new();
        let mut has_l3 = false;
        let endpoints_key = if ingress { "fromEndpoints" } else { "toEndpoints" };
        for selector in endpoints.into_iter().flatten() {
            has_l3 = true;
            let selector = self.cilium_selector(selector, endpoints_key)?;
            peers.push(Peer::Endpoints {
                selector: cilium_peer_scope(selector, namespace),
                namespace: None,
                namespace_selector: None,
            });
        }
        let cidr_key = if ingress { "fromCIDR" } else { "toCIDR" };
        for text in cidrs.into_iter().flatten() {
            has_l3 = true;
            let net = Cidr::parse(&text).map_err(|m| self.error_at(cidr_key, &text, m))?;
            peers.push(Peer::Cidr { net, except: Vec::new(), pod_ips: false });
        }
        let set_key = if ingress { "fromCIDRSet" } else { "toCIDRSet" };
        for set in cidr_sets.into_iter().flatten() {
            has_l3 = true;
            if set.cidr_group_ref.is_some() || set.cidr_group_selector.is_some() {
                self.warn_unenforced(true, "cidrGroupRef", "CiliumCIDRGroup references");
                continue;
            }
            let cidr = set.cidr.ok_or_else(|| self.error(set_key, "`cidr` is required"))?;
            peers.push(self.cidr_peer(set_key, &cidr, &set.except, false)?);
        }
        let entity_key = if ingress { "fromEntities" } else { "toEntities" };
        for name in entities.into_iter().flatten() {
            has_l3 = true;
            let entity = match name.as_str() {
                "world" => Entity::World,
                "world-ipv4" => Entity::WorldIpv4,
                "world-ipv6" => Entity::WorldIpv6,
                "cluster" => Entity::Cluster,
                "host" => Entity::Host,
                "all" => Entity::All,
                "remote-node" | "kube-apiserver" | "health" | "init" | "ingress" | "unmanaged" => {
                    self.warn_unenforced(true, entity_key, &format!("entity {name:?}"));
                    continue;
                }
                other => return Err(self.error(entity_key, format!("unknown entity {other:?}"))),
            };
            peers.push(Peer::Entity(entity));
        }
        let mut ports = Vec::new();
        let mut named_ports = Vec::new();
        let mut has_l4 = false;
        for rule in e.to_ports.into_iter().flatten() {
            has_l4 = true;
            self.warn_unenforced(rule.rules.is_some(), "rules", "L7 rules");
            self.warn_unenforced(rule.server_names.is_some(), "serverNames", "TLS SNI");
            self.warn_unenforced(rule.listener.is_some(), "listener", "Envoy listeners");
            self.warn_unenforced(
                rule.originating_tls.is_some() || rule.terminating_tls.is_some(),
                "terminatingTLS",
                "TLS interception",
            );
            for p in rule.ports {
                match self.port(&p, false)? {
                    PortSpec::Range(range) => ports.push(range),
                    PortSpec::Named(named) => named_ports.push(named),
                }
            }
        }
        if let Some(icmps) = e.icmps.filter(|rules| !rules.is_empty()) {
            if has_l4 {
                return Err(self.error(
                    "icmps",
                    "the ICMPs block may only be present without toPorts; define a separate \
                     rule to use toPorts",
                ));
            }
            has_l4 = true;
            for rule in icmps {
                if rule.fields.len() > MAX_ICMP_FIELDS {
                    return Err(self.error(
                        "icmps",
                        format!("more than {MAX_ICMP_FIELDS} ICMP fields in one rule"),
                    ));
                }
                for field in &rule.fields {
                    ports.push(self.icmp_field(field)?);
                }
            }
        }
        if !has_l3 && !has_l4 {
            return Ok(None); // `{}`: matches nothing, but still makes the direction default-deny
        }
        if has_l4 && ports.is_empty() && named_ports.is_empty() {
            return Ok(None); // an L4 part without ports: nothing we can match
        }
        Ok(Some(Entry { peers: has_l3.then_some(peers), ports, named_ports }))
    }

    fn cidr_peer(
        &self,
        key: &str,
        cidr: &str,
        except: &[String],
        pod_ips: bool,
    ) -> Result<Peer, ParseError> {
        let net = Cidr::parse(cidr).map_err(|m| self.error_at(key, cidr, m))?;
        let except = except
            .iter()
            .map(|e| {
                let sub = Cidr::parse(e).map_err(|m| self.error_at("except", e, m))?;
                if net.contains(&sub) {
                    Ok(sub)
                } else {
                    Err(self.error_at(
                        "except",
                        e,
                        format!("except {sub} is not inside {net} (nor of its address family)"),
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Peer::Cidr { net, except, pod_ips })
    }

    /// A Cilium selector: every key's source prefix must be one of Cilium's sources; keys of a
    /// source no endpoint here carries are warned about (they select nothing).
    fn cilium_selector(&mut self, selector: Selector, key: &str) -> Result<Selector, ParseError> {
        selector.validate().map_err(|m| self.error(key, m))?;
        if let Err(m) = selector.validate_sources() {
            let bad = selector.keys().find(|k| m.contains(&format!("{k:?}"))).unwrap_or(key);
            return Err(ParseError {
                origin: self.line_containing(bad),
                message: format!("{key}: {m}"),
            });
        }
        for foreign in selector.foreign_source_keys() {
            let origin = self.line_containing(foreign);
            self.warnings.push(Warning {
                origin,
                message: format!(
                    "{key}: label {foreign:?} has a source no endpoint of this sensor carries \
                     (only k8s: and reserved: labels): it selects nothing"
                ),
            });
        }
        Ok(selector)
    }

    /// A NetworkPolicy selector: plain Kubernetes label keys only.
    fn k8s_selector(&self, selector: &Selector, key: &str) -> Result<(), ParseError> {
        selector.validate().map_err(|m| self.error(key, m))?;
        selector.validate_plain_keys().map_err(|m| {
            let bad = selector.keys().find(|k| k.contains(':')).unwrap_or(key);
            ParseError { origin: self.line_containing(bad), message: format!("{key}: {m}") }
        })
    }

    /// One `icmps` field: the type (number or Cilium's name for the family) as the port of an
    /// ICMP or ICMPv6 entry.
    fn icmp_field(&self, field: &IcmpField) -> Result<PortRange, ParseError> {
        let (protocol, names) = match field.family.as_deref().unwrap_or("IPv4") {
            "IPv4" => (PROTO_ICMP, ICMPV4_TYPES),
            "IPv6" => (PROTO_ICMPV6, ICMPV6_TYPES),
            other => {
                return Err(
                    self.error("family", format!("unknown ICMP family {other:?} (IPv4 or IPv6)"))
                );
            }
        };
        let family = if protocol == PROTO_ICMP { "IPv4" } else { "IPv6" };
        let icmp_type = match &field.icmp_type {
            IntOrString::Int(n) => u8::try_from(*n)
                .map_err(|_| self.error("type", format!("ICMP type {n} out of range (0-255)")))?,
            IntOrString::Str(s) => match s.parse::<u8>() {
                Ok(n) => n,
                Err(_) => {
                    names.iter().find(|(name, _)| name == s).map(|(_, n)| *n).ok_or_else(|| {
                        self.error("type", format!("ICMP type {s:?} not found in {family}"))
                    })?
                }
            },
        };
        let port = u16::from(icmp_type);
        Ok(PortRange { protocol: Some(protocol), first: port, last: port })
    }

    /// A port entry as the API server validates it: a number (1-65535; Cilium also takes 0
    /// for "all ports") or an IANA service name, which is resolved against container ports
    /// when the policy is compiled. `np`: NetworkPolicy rules (protocol defaults to TCP; a
    /// quoted number is a name, and so invalid, as `intstr` makes it).
    fn port(&self, p: &PortProtocol, np: bool) -> Result<PortSpec, ParseError> {
        let protocol = match p.protocol.as_deref().or(np.then_some("TCP")) {
            None => None,
            Some("ANY") if !np => None,
            Some("TCP") => Some(6),
            Some("UDP") => Some(17),
            Some("SCTP") => Some(132),
            Some(other) => {
                let allowed = if np { "TCP, UDP or SCTP" } else { "TCP, UDP, SCTP or ANY" };
                return Err(self.error_at(
                    "protocol",
                    other,
                    format!("unsupported protocol {other:?} ({allowed}, as written; case matters)"),
                ));
            }
        };
        let first = match &p.port {
            None => None,
            Some(IntOrString::Int(n)) => Some(self.port_number(*n, np, &n.to_string())?),
            Some(IntOrString::Str(s))
                if !np && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                let n = s.parse::<i64>().unwrap_or(i64::MAX);
                Some(self.port_number(n, np, s)?)
            }
            Some(IntOrString::Str(s)) => {
                let name = if np { s.clone() } else { s.to_ascii_lowercase() };
                valid_port_name(&name).map_err(|why| {
                    self.error_at(
                        "port",
                        s,
                        format!("port {s:?} is neither a port number (1-65535) nor a valid port name: {why}"),
                    )
                })?;
                if p.end_port.is_some() {
                    return Err(self.error_at(
                        "endPort",
                        "",
                        format!("endPort may not be given when port ({s:?}) is a name"),
                    ));
                }
                return Ok(PortSpec::Named(NamedPort { protocol, name }));
            }
        };
        let first = first.filter(|p| *p != 0);
        let last = match (p.end_port, first) {
            (None, None) => u16::MAX,
            (None, Some(first)) => first,
            (Some(end), None) => {
                return Err(self.error_at(
                    "endPort",
                    &end.to_string(),
                    "endPort needs a numeric port".to_owned(),
                ));
            }
            (Some(end), Some(first)) => {
                let text = end.to_string();
                let end = u16::try_from(end).ok().filter(|e| *e >= 1).ok_or_else(|| {
                    self.error_at(
                        "endPort",
                        &text,
                        format!("endPort {text} must be between 1 and 65535"),
                    )
                })?;
                if end < first {
                    return Err(self.error_at(
                        "endPort",
                        &text,
                        format!("endPort {end} must be greater than or equal to port {first}"),
                    ));
                }
                end
            }
        };
        Ok(PortSpec::Range(PortRange { protocol, first: first.unwrap_or(0), last }))
    }

    /// A numeric port: 1-65535 (NetworkPolicy), 0-65535 (Cilium, where 0 means all ports).
    fn port_number(&self, n: i64, np: bool, text: &str) -> Result<u16, ParseError> {
        let min = i64::from(np);
        u16::try_from(n).ok().filter(|_| n >= min).ok_or_else(|| {
            self.error_at(
                "port",
                text,
                format!("port {text} is neither a port number ({min}-65535) nor a valid port name"),
            )
        })
    }

    fn network_policy(
        &mut self,
        spec: NetworkPolicySpec,
        name: String,
        namespace: Option<String>,
    ) -> Result<Policy, ParseError> {
        self.k8s_selector(&spec.pod_selector, "podSelector")?;
        // The API server's defaulting: no (or an empty) policyTypes means Ingress, plus
        // Egress when egress rules are present.
        let types = spec.policy_types.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| {
            let mut t = vec!["Ingress".to_owned()];
            if !spec.egress.is_empty() {
                t.push("Egress".to_owned());
            }
            t
        });
        for t in &types {
            if t != "Ingress" && t != "Egress" {
                return Err(self.error(
                    "policyTypes",
                    format!("unknown policy type {t:?} (Ingress or Egress)"),
                ));
            }
        }
        let ns = namespace.clone().unwrap_or_default();
        let mut ingress = Vec::new();
        for rule in spec.ingress {
            ingress.push(self.np_entry(rule.from, rule.ports, &ns, "from")?);
        }
        let mut egress = Vec::new();
        for rule in spec.egress {
            egress.push(self.np_entry(rule.to, rule.ports, &ns, "to")?);
        }
        // Rules of a direction that policyTypes leaves out are validated but never applied
        // (found by the conformance suite: they used to allow traffic).
        let has = |want: &str| types.iter().any(|t| t == want);
        if !has("Ingress") {
            ingress.clear();
        }
        if !has("Egress") {
            egress.clear();
        }
        Ok(Policy {
            kind: Kind::NetworkPolicy,
            name,
            namespace,
            origin: self.origin_at(1),
            selector: spec.pod_selector,
            default_deny_ingress: types.iter().any(|t| t == "Ingress"),
            default_deny_egress: types.iter().any(|t| t == "Egress"),
            ingress,
            egress,
            ingress_deny: Vec::new(),
            egress_deny: Vec::new(),
            audit: false,
        })
    }

    /// A NetworkPolicy rule: missing or empty `from`/`to` means all peers, missing or empty
    /// `ports` all ports (unlike Cilium, where `{}` matches nothing).
    fn np_entry(
        &mut self,
        peers: Option<Vec<NpPeer>>,
        ports: Option<Vec<PortProtocol>>,
        ns: &str,
        key: &str,
    ) -> Result<Entry, ParseError> {
        let peers = match peers {
            None => None,
            Some(list) if list.is_empty() => None,
            Some(list) => {
                let mut out = Vec::new();
                for peer in list {
                    match (peer.pod_selector, peer.namespace_selector, peer.ip_block) {
                        (None, None, Some(block)) => {
                            out.push(self.cidr_peer("cidr", &block.cidr, &block.except, true)?);
                        }
                        (pod, ns_sel, None) if pod.is_some() || ns_sel.is_some() => {
                            for s in pod.iter().chain(ns_sel.iter()) {
                                self.k8s_selector(s, key)?;
                            }
                            let namespace = ns_sel.is_none().then(|| ns.to_owned());
                            out.push(Peer::Endpoints {
                                selector: pod.unwrap_or_default(),
                                namespace,
                                namespace_selector: ns_sel,
                            });
                        }
                        _ => return Err(self.error(
                            key,
                            "a peer needs podSelector and/or namespaceSelector, or ipBlock alone",
                        )),
                    }
                }
                Some(out)
            }
        };
        let mut ranges = Vec::new();
        let mut named_ports = Vec::new();
        for p in ports.unwrap_or_default() {
            match self.port(&p, true)? {
                PortSpec::Range(range) => ranges.push(range),
                PortSpec::Named(named) => named_ports.push(named),
            }
        }
        Ok(Entry { peers, ports: ranges, named_ports })
    }
}

/// Cilium's implicit scope of a peer selector (`getEndpointSelector`): unless the selector
/// names the namespace label (bare, `any:` or `k8s:`) or a reserved label, a namespaced
/// policy's peers are pods of its namespace and a clusterwide policy's peers are pods (the
/// namespace label exists), never the host or the world.
fn cilium_peer_scope(mut selector: Selector, namespace: Option<&str>) -> Selector {
    let names_namespace = selector.keys().any(|k| {
        let (source, key) = split_source(k);
        key == NAMESPACE_LABEL && matches!(source, None | Some(ANY_SOURCE | K8S_SOURCE))
    });
    if names_namespace || selector.mentions_source(RESERVED_SOURCE) {
        return selector;
    }
    match namespace {
        Some(ns) => {
            selector.match_labels.insert(K8S_NAMESPACE_LABEL.to_owned(), ns.to_owned());
        }
        None => selector.match_expressions.push(Expression {
            key: K8S_NAMESPACE_LABEL.to_owned(),
            operator: Operator::Exists,
            values: Vec::new(),
        }),
    }
    selector
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(Vec<Policy>, Vec<Warning>), ParseError> {
        parse_file(Path::new("p.yaml"), text)
    }

    #[test]
    fn cilium_policy_with_every_peer_kind() {
        let (p, w) = parse(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]
  egress:
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
    toPorts: [{ports: [{port: \"9000\", endPort: 9010, protocol: TCP}]}]
  - toEntities: [world]
  egressDeny:
  - toCIDR: [169.254.169.254/32]
",
        )
        .expect("valid");
        assert!(w.is_empty(), "{w:?}");
        let p = &p[0];
        assert_eq!(p.namespace.as_deref(), Some("shop"));
        assert_eq!(
            p.ingress[0].ports,
            vec![PortRange { protocol: Some(6), first: 5432, last: 5432 }]
        );
        let Some(peers) = &p.ingress[0].peers else { panic!("peers") };
        // Cilium's implicit namespace scope is part of the selector.
        assert!(matches!(&peers[0], Peer::Endpoints { selector, namespace: None, .. }
            if selector.match_labels.get(K8S_NAMESPACE_LABEL).map(String::as_str) == Some("shop")));
        assert_eq!(p.egress[0].ports[0].last, 9010);
        assert_eq!(p.egress_deny.len(), 1);
    }

    #[test]
    fn empty_cilium_rule_matches_nothing_but_k8s_empty_rule_matches_all() {
        let (p, _) = parse(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: d}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n",
        )
        .expect("valid");
        assert!(p[0].ingress.is_empty() && p[0].default_deny_ingress);
        let (p, _) = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  ingress: [{}]\n",
        )
        .expect("valid");
        assert_eq!(p[0].ingress, vec![Entry { peers: None, ports: vec![], named_ports: vec![] }]);
        assert!(p[0].default_deny_ingress && !p[0].default_deny_egress);
    }

    #[test]
    fn unenforced_fields_warn_with_line() {
        let (_, w) = parse(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: l7}\nspec:\n  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: example.com}]\n",
        )
        .expect("valid");
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].origin.line, 7);
        assert!(w[0].message.contains("toFQDNs"));
    }

    #[test]
    fn errors_name_file_and_line_in_later_documents() {
        let err = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {podSelector: {}}\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: b}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromCIDR: [300.0.0.0/8]\n",
        )
        .expect_err("bad cidr");
        assert_eq!(err.origin.line, 12, "{err}");
        assert!(err.to_string().starts_with("p.yaml:12:"), "{err}");
        let err = parse("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: b}\nspec:\n  endpointSelector: {}\n  ingres: []\n")
            .expect_err("unknown field");
        assert!(err.message.contains("ingres"), "{err}");
    }

    #[test]
    fn icmps_become_icmp_type_ports_by_number_or_name() {
        let (p, w) = parse(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ping, namespace: shop}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
    icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}, {type: \"13\"}]}]
  egressDeny:
  - icmps: [{fields: [{type: TimeExceeded}]}]
",
        )
        .expect("valid");
        assert!(w.is_empty(), "icmps must not warn: {w:?}");
        let icmp = |protocol, t| PortRange { protocol: Some(protocol), first: t, last: t };
        assert_eq!(
            p[0].ingress[0].ports,
            vec![icmp(PROTO_ICMP, 8), icmp(PROTO_ICMPV6, 128), icmp(PROTO_ICMP, 13)]
        );
        assert!(p[0].ingress[0].peers.is_some());
        assert_eq!(p[0].egress_deny[0].ports, vec![icmp(PROTO_ICMP, 11)]);
        assert!(p[0].egress_deny[0].peers.is_none());
    }

    #[test]
    fn bad_icmps_are_errors_with_line() {
        let doc = |rule: &str| {
            format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p}}\nspec:\n  endpointSelector: {{}}\n  ingress:\n  - fromEntities: [world]\n{rule}"
            )
        };
        let err = parse(&doc("    icmps: [{fields: [{type: Echo, family: IPv6}]}]\n"))
            .expect_err("IPv4 name in IPv6");
        assert!(err.message.contains("\"Echo\" not found in IPv6"), "{err}");
        assert_eq!(err.origin.line, 8, "{err}");
        let err = parse(&doc("    icmps: [{fields: [{type: 256}]}]\n")).expect_err("range");
        assert!(err.message.contains("out of range"), "{err}");
        let err =
            parse(&doc("    icmps: [{fields: [{type: 8, family: IPv5}]}]\n")).expect_err("family");
        assert!(err.message.contains("IPv5"), "{err}");
        let err = parse(&doc(
            "    toPorts: [{ports: [{port: \"80\"}]}]\n    icmps: [{fields: [{type: 8}]}]\n",
        ))
        .expect_err("icmps with toPorts");
        assert!(err.message.contains("without toPorts"), "{err}");
    }

    #[test]
    fn np_ports_default_to_tcp_and_except_must_be_inside() {
        let (p, _) = parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]\n    ports: [{port: 8000, endPort: 8100}]\n").expect("valid");
        assert_eq!(
            p[0].egress[0].ports,
            vec![PortRange { protocol: Some(6), first: 8000, last: 8100 }]
        );
        assert!(!p[0].default_deny_ingress && p[0].default_deny_egress);
        let err = parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]\n").expect_err("except outside");
        assert!(err.message.contains("not inside"), "{err}");
    }

    fn doc(body: &str) -> String {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{body}"
        )
    }

    #[test]
    fn r12_ports_are_validated_like_the_api_server() {
        let cnp = |port: &str| {
            doc(&format!(
                "  endpointSelector: {{}}\n  ingress:\n  - toPorts:\n    - ports:\n      - port: \"8080\"\n        protocol: TCP\n      - port: {port}\n        protocol: TCP\n"
            ))
        };
        for bad in ["\"70000\"", "\"-1\"", "\"a--b\"", "\"-http\"", "\"this-name-is-too-long\""] {
            let err = parse(&cnp(bad)).expect_err(bad);
            assert_eq!(err.origin.line, 11, "{bad}: {err}");
            assert!(err.message.contains("port"), "{err}");
        }
        for good in ["\"http\"", "\"h2c\"", "\"0\"", "\"65535\"", "web-8080"] {
            parse(&cnp(good)).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let np = |ports: &str| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a}}\nspec:\n  ingress:\n  - ports:\n    - {ports}\n"
            )
        };
        for bad in [
            "{port: 0}",
            "{port: 65536}",
            "{port: \"80\"}",
            "{port: http, endPort: 90}",
            "{endPort: 90}",
            "{port: 90, endPort: 80}",
            "{port: 80, endPort: 70000}",
            "{port: 80, protocol: tcp}",
            "{port: 80, protocol: ICMP}",
            "{port: HTTP}",
        ] {
            let err = parse(&np(bad)).expect_err(bad);
            assert_eq!(err.origin.line, 7, "{bad}: {err}");
        }
        let (p, _) = parse(&np("{port: 80, endPort: 90, protocol: SCTP}")).expect("valid");
        assert_eq!(
            p[0].ingress[0].ports,
            vec![PortRange { protocol: Some(132), first: 80, last: 90 }]
        );
        let (p, _) = parse(&np("{port: http}")).expect("valid");
        assert_eq!(
            p[0].ingress[0].named_ports,
            vec![NamedPort { protocol: Some(6), name: "http".into() }]
        );
        assert!(!p[0].ingress[0].any_port());
    }

    #[test]
    fn r07_defaults_as_the_api_server_applies_them() {
        let (p, _) = parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  policyTypes: [Ingress]\n  ingress:\n  - ports: [{protocol: TCP, port: 8080}]\n").expect("no podSelector");
        assert!(p[0].selector.is_empty());
        let (p, _) = parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  policyTypes: []\n  egress: [{}]\n").expect("empty types");
        assert!(p[0].default_deny_ingress && p[0].default_deny_egress);
        let (p, _) = parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  policyTypes: [Ingress]\n  egress: [{}]\n  ingress: [{}]\n").expect("egress rules, Ingress only");
        assert!(
            p[0].egress.is_empty() && !p[0].default_deny_egress,
            "egress rules are not applied"
        );
        assert_eq!(p[0].ingress.len(), 1);
        let (p, _) = parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {}\n").expect("empty spec");
        assert!(p[0].default_deny_ingress && !p[0].default_deny_egress);
    }

    #[test]
    fn errors_inside_spec_name_the_offending_line() {
        let err = parse(&doc(
            "  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n    toPortz: []\n",
        ))
        .expect_err("unknown");
        assert_eq!(err.origin.line, 8, "{err}");
        let err = parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {}\n      namespaceSelectr: {}\n").expect_err("unknown");
        assert_eq!(err.origin.line, 9, "{err}");
        let err = parse(&doc("  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.0.0/8]\n  - toCIDR: [\"::ffff:10.0.0.0/104\"]\n")).expect_err("mapped");
        assert_eq!(err.origin.line, 8, "{err}");
    }

    #[test]
    fn r05_r13_sources_and_host_policies() {
        let err = parse(&doc("  endpointSelector:\n    matchLabels:\n      \"k8z:app\": web\n"))
            .expect_err("typo");
        assert_eq!(err.origin.line, 7, "{err}");
        assert!(err.message.contains("k8z"), "{err}");
        let err = parse(&doc("  endpointSelector: {}\n  ingress:\n  - fromEndpoints:\n    - matchExpressions:\n      - {key: \"k8:app\", operator: Exists}\n")).expect_err("typo");
        assert_eq!(err.origin.line, 9, "{err}");
        let err = parse("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: node-ssh-only}\nspec:\n  nodeSelector: {matchLabels: {}}\n  ingress:\n  - toPorts: [{ports: [{port: \"22\", protocol: TCP}]}]\n").expect_err("host policy");
        assert_eq!(err.origin.line, 5, "{err}");
        assert!(err.message.contains("not supported"), "{err}");
        let err = parse(&doc("  endpointSelector: {matchLabels: {\"reserved:host\": \"\"}}\n"))
            .expect_err("host");
        assert!(err.message.contains("not supported"), "{err}");
        let err = parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector:\n    matchLabels:\n      \"k8s:app\": web\n").expect_err("NP keys");
        assert_eq!(err.origin.line, 7, "{err}");
    }
}
