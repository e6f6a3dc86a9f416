//! The endpoint source read from a YAML file: local pods (behind a host-side interface),
//! remote pods (IPs with labels), namespace labels and the node's own addresses. The
//! Kubernetes source will fill the same [`Endpoints`].

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::selector::Labels;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoints {
    /// Namespace → its labels (for namespaceSelector); `kubernetes.io/metadata.name` is implied.
    #[serde(default)]
    pub namespaces: BTreeMap<String, Labels>,
    /// This node's addresses: the `host` entity.
    #[serde(default)]
    pub host_ips: Vec<IpAddr>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// Host-side interface of a local endpoint. Absent for pods on other nodes, and for local
    /// ones whose interface the agent finds itself (see `netns` and `containers`).
    pub interface: Option<String>,
    /// The pod's network namespace (a sandbox path such as `/run/netns/cni-…`, or
    /// `/proc/<pid>/ns/net`): the endpoint is local, its interface is the node-side peer of
    /// the veth inside that holds one of its IPs.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Set for pods the Kubernetes API places on this node (not read from the file).
    #[serde(skip)]
    pub local_hint: Option<LocalHint>,
    /// Ids of the pod's containers (as in `containerStatuses[].containerID`, with or without
    /// the `containerd://` style prefix): host events and host policies find the pod by them.
    #[serde(default)]
    pub containers: Vec<String>,
    /// What is known of each container for the rules' `container.*` fields (image, privileged,
    /// start time), from the pod's status and spec.
    #[serde(default)]
    pub container_info: Vec<ContainerInfo>,
    /// The pod's container ports, as in `spec.containers[].ports` (`name`, `containerPort`,
    /// `protocol`, default TCP): named ports in policies (`port: http`) resolve against them.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    /// The pod's `spec.serviceAccountName`: Cilium's label
    /// `k8s:io.cilium.k8s.policy.serviceaccount`.
    #[serde(default)]
    pub service_account: Option<String>,
}

/// What the Kubernetes API says of a pod of this node, beyond the file's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalHint {
    /// The interface of the node's host route (/32, /128) to the pod's IP, if there is one:
    /// the fallback when the pod's namespace cannot be inspected.
    pub route_interface: Option<String>,
}

/// One container port of a pod (Kubernetes' `ContainerPort`, the fields policies use).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    /// An IANA service name; ports without one cannot be named by a policy.
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: u16,
    /// `TCP` (default), `UDP` or `SCTP`, as Kubernetes writes them.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// Accepted so a pod spec's port list can be pasted; not used by policies.
    #[serde(default)]
    pub host_port: Option<u16>,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

fn tcp() -> String {
    "TCP".to_owned()
}

impl ContainerPort {
    /// The IP protocol number, or `None` for a protocol policies cannot name.
    pub fn protocol_number(&self) -> Option<u8> {
        match self.protocol.as_str() {
            "TCP" => Some(6),
            "UDP" => Some(17),
            "SCTP" => Some(132),
            _ => None,
        }
    }
}

/// A container's metadata, as Kubernetes reports it (`status.containerStatuses[]` and
/// `spec.containers[].securityContext`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerInfo {
    /// The container id (with or without the `containerd://` style prefix).
    pub id: String,
    /// The container's name in the pod.
    #[serde(default)]
    pub name: Option<String>,
    /// The image as given: `registry/repository:tag` or `...@sha256:...`.
    #[serde(default)]
    pub image: Option<String>,
    /// The resolved image id, `...@sha256:<digest>` (`imageID`).
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub privileged: Option<bool>,
    /// When the container started, RFC 3339 (`state.running.startedAt`).
    #[serde(default)]
    pub started_at: Option<String>,
}

impl ContainerInfo {
    /// `(repository, tag, digest)` of the image reference, as Falco splits it:
    /// `docker.io/library/nginx:1.25@sha256:ab` → (`docker.io/library/nginx`, `1.25`, `sha256:ab`).
    pub fn image_parts(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        let Some(image) = self.image.as_deref() else { return (None, None, None) };
        let (rest, mut digest) = match image.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (image, None),
        };
        if digest.is_none() {
            digest = self.image_id.as_deref().and_then(|i| i.split_once('@')).map(|(_, d)| d);
        }
        // A `:` after the last `/` is the tag (a registry port comes before a `/`).
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        match rest[slash..].find(':') {
            Some(colon) => (Some(&rest[..slash + colon]), Some(&rest[slash + colon + 1..]), digest),
            None => (Some(rest), None, digest),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("{path}: cannot read endpoints file: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: endpoint {name}: {message}")]
    Invalid { path: PathBuf, name: String, message: String },
}

impl Endpoints {
    pub fn load(path: &Path) -> Result<Self, EndpointsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| EndpointsError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, EndpointsError> {
        if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Ok(Self::default());
        }
        let parsed: Self = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            EndpointsError::Parse { path: path.to_owned(), line, column, message: e.to_string() }
        })?;
        let mut seen = BTreeMap::new();
        for ep in &parsed.endpoints {
            let name = format!("{}/{}", ep.namespace, ep.name);
            for port in &ep.ports {
                let invalid = |message: String| EndpointsError::Invalid {
                    path: path.to_owned(),
                    name: name.clone(),
                    message,
                };
                if port.container_port == 0 {
                    return Err(invalid("containerPort must be between 1 and 65535".into()));
                }
                if port.protocol_number().is_none() {
                    return Err(invalid(format!(
                        "port protocol {:?}: TCP, UDP or SCTP",
                        port.protocol
                    )));
                }
                if let Some(n) = &port.name {
                    super::model::valid_port_name(n)
                        .map_err(|why| invalid(format!("port name {n:?}: {why}")))?;
                }
            }
            if let Some(netns) = &ep.netns
                && !netns.is_absolute()
            {
                return Err(EndpointsError::Invalid {
                    path: path.to_owned(),
                    name,
                    message: format!("netns {}: must be an absolute path", netns.display()),
                });
            }
            for ip in &ep.ips {
                if let Some(other) = seen.insert(*ip, name.clone()) {
                    return Err(EndpointsError::Invalid {
                        path: path.to_owned(),
                        name,
                        message: format!("IP {ip} is also used by {other}"),
                    });
                }
            }
        }
        Ok(parsed)
    }

    /// Adds another source's endpoints: this set's entries win (a namespace's labels, a pod
    /// of the same name, an IP already held); returns what was skipped, for the log.
    pub fn merge(&mut self, other: Self) -> Vec<String> {
        let mut skipped = Vec::new();
        for (namespace, labels) in other.namespaces {
            self.namespaces.entry(namespace).or_insert(labels);
        }
        for ip in other.host_ips {
            if !self.host_ips.contains(&ip) {
                self.host_ips.push(ip);
            }
        }
        let mut names: std::collections::BTreeSet<(String, String)> =
            self.endpoints.iter().map(|e| (e.namespace.clone(), e.name.clone())).collect();
        let mut ips: std::collections::BTreeSet<IpAddr> =
            self.endpoints.iter().flat_map(|e| e.ips.iter().copied()).collect();
        for endpoint in other.endpoints {
            let name = (endpoint.namespace.clone(), endpoint.name.clone());
            if names.contains(&name) || endpoint.ips.iter().any(|ip| ips.contains(ip)) {
                skipped.push(format!(
                    "endpoint {}/{} from the API: already in the endpoints file (by name or IP)",
                    name.0, name.1
                ));
                continue;
            }
            ips.extend(endpoint.ips.iter().copied());
            names.insert(name);
            self.endpoints.push(endpoint);
        }
        skipped
    }

    /// Labels of a namespace as a namespaceSelector sees them.
    pub fn namespace_labels(&self, namespace: &str) -> Labels {
        let mut labels = self.namespaces.get(namespace).cloned().unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".to_owned(), namespace.to_owned());
        labels
    }
}
