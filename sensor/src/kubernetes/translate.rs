//! API objects → the sensor's model: pods → endpoints, namespaces → labels, policy objects →
//! the same parsers the policy files go through (rendered as YAML, so errors name a line).
//!
//! Pods are deserialized into slim types: serde skips every field the sensor does not use,
//! so a large cluster costs only names, labels, IPs and container ids.

use std::{net::IpAddr, path::PathBuf, sync::Arc};

use serde::Deserialize;

use crate::policy::{
    endpoints::{ContainerInfo, ContainerPort, Endpoint},
    model::valid_port_name,
    selector::Labels,
};

/// The parts of a Pod the sensor reads (`kube::core::Object` spec and status).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub containers: Vec<ContainerSpec>,
    #[serde(default)]
    pub init_containers: Vec<ContainerSpec>,
    /// Cilium's `k8s:io.cilium.k8s.policy.serviceaccount` label.
    #[serde(default)]
    pub service_account_name: Option<String>,
}

/// The part of a container the sensor reads: its name, whether it runs privileged, and its
/// ports (named ports in policies resolve against them).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub security_context: Option<SecurityContext>,
    #[serde(default)]
    pub ports: Vec<KubePort>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SecurityContext {
    #[serde(default)]
    pub privileged: Option<bool>,
}

/// `spec.containers[].ports[]`: only the fields named ports need.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub container_port: i32,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    /// Older API servers and some fakes set only `podIP`.
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodIp {
    pub ip: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    #[serde(default, rename = "containerID")]
    pub container_id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default, rename = "imageID")]
    pub image_id: String,
    #[serde(default)]
    pub state: Option<ContainerState>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerState {
    #[serde(default)]
    pub running: Option<ContainerRunning>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRunning {
    #[serde(default)]
    pub started_at: Option<String>,
}

pub type Pod = kube::core::Object<PodSpec, PodStatus>;

/// What the sensor keeps of a pod (its namespace and name are the cache's key): exactly
/// what the endpoint model needs. Pods of one ReplicaSet share one label set (interned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    pub labels: Arc<Labels>,
    pub ips: Box<[IpAddr]>,
    /// Container ids without the runtime prefix (local pods only; empty for remote ones).
    pub containers: Box<[String]>,
    /// Image, privileged flag and start time of those containers (local pods only).
    pub container_info: Box<[ContainerInfo]>,
    /// Named container ports (unnamed ones cannot be named by a policy).
    pub ports: Box<[ContainerPort]>,
    pub service_account: Option<String>,
}

impl PodEntry {
    /// None for pods that are not endpoints: host-network pods (their IP is the node's),
    /// finished pods (their IP may already belong to another pod) and pods without an IP.
    pub fn from_pod(pod: &Pod, keep_containers: bool) -> Option<Self> {
        if pod.spec.host_network {
            return None;
        }
        if matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return None;
        }
        let status = pod.status.as_ref()?;
        let mut ips: Vec<IpAddr> =
            status.pod_ips.iter().filter_map(|ip| ip.ip.parse().ok()).collect();
        if ips.is_empty()
            && let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        if ips.is_empty() {
            return None;
        }
        let containers = if keep_containers {
            status
                .container_statuses
                .iter()
                .chain(&status.init_container_statuses)
                .chain(&status.ephemeral_container_statuses)
                .filter_map(|c| c.container_id.as_deref())
                .map(|id| id.rsplit("://").next().unwrap_or(id).to_owned())
                .filter(|id| !id.is_empty())
                .collect()
        } else {
            Box::default()
        };
        let container_info =
            if keep_containers { container_info(pod, status) } else { Box::default() };
        let meta = &pod.metadata;
        Some(Self {
            labels: Arc::new(meta.labels.clone().unwrap_or_default()),
            ips: ips.into(),
            containers,
            container_info,
            ports: named_ports(&pod.spec),
            service_account: pod.spec.service_account_name.clone(),
        })
    }

    pub fn endpoint(&self, namespace: &str, name: &str, interface: Option<String>) -> Endpoint {
        Endpoint {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            labels: Labels::clone(&self.labels),
            ips: self.ips.to_vec(),
            interface,
            netns: None,
            local_hint: None,
            containers: self.containers.to_vec(),
            container_info: self.container_info.to_vec(),
            ports: self.ports.to_vec(),
            service_account: self.service_account.clone(),
        }
    }
}

/// Each container's image (`status.containerStatuses[].image`, `imageID`), privileged flag
/// (`spec.containers[].securityContext.privileged`) and start (`state.running.startedAt`).
fn container_info(pod: &Pod, status: &PodStatus) -> Box<[ContainerInfo]> {
    let spec = &pod.spec;
    status
        .container_statuses
        .iter()
        .chain(&status.init_container_statuses)
        .chain(&status.ephemeral_container_statuses)
        .filter_map(|c| {
            let id = c.container_id.as_deref()?;
            let id = id.rsplit("://").next().unwrap_or(id).to_owned();
            let privileged = spec
                .containers
                .iter()
                .chain(&spec.init_containers)
                .find(|s| s.name == c.name)
                .and_then(|s| s.security_context.as_ref()?.privileged);
            Some(ContainerInfo {
                id,
                name: Some(c.name.clone()),
                image: Some(c.image.clone()).filter(|i| !i.is_empty()),
                image_id: Some(c.image_id.clone()).filter(|i| !i.is_empty()),
                privileged,
                started_at: c
                    .state
                    .as_ref()
                    .and_then(|s| s.running.as_ref())
                    .and_then(|r| r.started_at.clone()),
            })
        })
        .collect()
}

/// The named ports of a pod's containers (`protocol` defaults to TCP, as the API server
/// defaults it). Ports the API server would not accept are left out.
fn named_ports(spec: &PodSpec) -> Box<[ContainerPort]> {
    let mut ports: Vec<ContainerPort> = spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter_map(|p| {
            let name = p.name.clone().filter(|n| valid_port_name(n).is_ok())?;
            let port = ContainerPort {
                name: Some(name),
                container_port: u16::try_from(p.container_port).ok().filter(|p| *p > 0)?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                host_port: None,
                host_ip: None,
            };
            port.protocol_number().map(|_| port)
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports.into()
}

/// The policy kinds the sensor watches, with their API coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    NetworkPolicy,
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    HostPolicy,
}

impl PolicyKind {
    pub const ALL: [Self; 4] = [
        Self::NetworkPolicy,
        Self::CiliumNetworkPolicy,
        Self::CiliumClusterwideNetworkPolicy,
        Self::HostPolicy,
    ];

    /// (group, version, kind, plural)
    pub fn gvk(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Self::NetworkPolicy => ("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
            Self::CiliumNetworkPolicy => {
                ("cilium.io", "v2", "CiliumNetworkPolicy", "ciliumnetworkpolicies")
            }
            Self::CiliumClusterwideNetworkPolicy => (
                "cilium.io",
                "v2",
                "CiliumClusterwideNetworkPolicy",
                "ciliumclusterwidenetworkpolicies",
            ),
            Self::HostPolicy => ("sensor.dev", "v1alpha1", "HostPolicy", "hostpolicies"),
        }
    }

    pub fn api_resource(self) -> kube::core::ApiResource {
        let (group, version, kind, plural) = self.gvk();
        let api_version =
            if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
        kube::core::ApiResource {
            group: group.to_owned(),
            version: version.to_owned(),
            api_version,
            kind: kind.to_owned(),
            plural: plural.to_owned(),
        }
    }

    /// The metric label and log name: the plural resource name.
    pub fn resource(self) -> &'static str {
        self.gvk().3
    }
}

/// One policy object, parsed: network policies and host policies of the object (a Cilium
/// object yields one or more policies; a HostPolicy one host policy).
#[derive(Debug, Clone)]
pub struct ParsedPolicy {
    pub network: Vec<crate::policy::Policy>,
    pub warnings: Vec<crate::policy::Warning>,
    pub host: Vec<crate::host::policy::HostPolicy>,
}

/// Where an API object's errors point: `kubernetes/<plural>/<namespace>/<name>`, with lines of
/// the object rendered as YAML (`kubectl get -o yaml` shows the same text, minus status).
pub fn origin(kind: PolicyKind, namespace: Option<&str>, name: &str) -> PathBuf {
    let mut path = PathBuf::from("kubernetes");
    path.push(kind.resource());
    if let Some(ns) = namespace {
        path.push(ns);
    }
    path.push(name);
    path
}

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("{0}: object without a name")]
    Unnamed(&'static str),
    #[error("{path}: cannot render the object: {message}")]
    Render { path: PathBuf, message: String },
    #[error(transparent)]
    Parse(#[from] crate::policy::model::ParseError),
}

/// Parses a policy object the way its file form would be parsed. The object's status and
/// server-side bookkeeping (managedFields) are dropped first.
pub fn parse_policy(
    kind: PolicyKind,
    object: &kube::core::DynamicObject,
) -> Result<ParsedPolicy, TranslateError> {
    let name = object.metadata.name.as_deref().ok_or(TranslateError::Unnamed(kind.resource()))?;
    let path = origin(kind, object.metadata.namespace.as_deref(), name);
    let (group, version, kind_name, _) = kind.gvk();
    let mut value = serde_json::Map::new();
    value.insert("apiVersion".into(), format!("{group}/{version}").into());
    value.insert("kind".into(), kind_name.into());
    let mut metadata = serde_json::Map::new();
    metadata.insert("name".into(), name.into());
    if let Some(ns) = &object.metadata.namespace {
        metadata.insert("namespace".into(), ns.clone().into());
    }
    if let Some(annotations) = &object.metadata.annotations {
        metadata.insert(
            "annotations".into(),
            serde_json::to_value(annotations).unwrap_or(serde_json::Value::Null),
        );
    }
    value.insert("metadata".into(), metadata.into());
    if let serde_json::Value::Object(data) = &object.data {
        for (key, field) in data {
            if key != "status" {
                value.insert(key.clone(), field.clone());
            }
        }
    }
    let text = serde_yaml_ng::to_string(&value)
        .map_err(|e| TranslateError::Render { path: path.clone(), message: e.to_string() })?;
    Ok(match kind {
        PolicyKind::HostPolicy => ParsedPolicy {
            network: Vec::new(),
            warnings: Vec::new(),
            host: crate::host::policy::parse_file(&path, &text)?,
        },
        _ => {
            let (network, warnings) = crate::policy::model::parse_file(&path, &text)?;
            ParsedPolicy { network, warnings, host: Vec::new() }
        }
    })
}

/// A namespace's labels (what namespaceSelector matches).
pub fn namespace_labels(object: &kube::core::DynamicObject) -> Option<(String, Labels)> {
    let name = object.metadata.name.clone()?;
    Some((name, object.metadata.labels.clone().unwrap_or_default()))
}

#[cfg(test)]
mod named_port_tests {
    use super::*;

    #[test]
    fn container_ports_and_service_account_become_endpoint_fields() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {
                "serviceAccountName": "web",
                "containers": [
                    {"name": "app", "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                        {"containerPort": 9000},
                        {"name": "Bad_Name", "containerPort": 9001}
                    ]},
                    {"name": "sidecar", "ports": [{"name": "metrics", "containerPort": 9090}]}
                ]
            },
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.7"}]}
        }))
        .expect("pod");
        let entry = PodEntry::from_pod(&pod, true).expect("endpoint");
        let ep = entry.endpoint("shop", "web-1", None);
        let named: Vec<(Option<&str>, u16, &str)> = ep
            .ports
            .iter()
            .map(|p| (p.name.as_deref(), p.container_port, p.protocol.as_str()))
            .collect();
        assert_eq!(
            named,
            vec![
                (Some("dns"), 53, "UDP"),
                (Some("http"), 8080, "TCP"),
                (Some("metrics"), 9090, "TCP")
            ]
        );
        assert_eq!(ep.service_account.as_deref(), Some("web"));
    }
}
