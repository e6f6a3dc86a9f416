//! Hubble's flow metrics with Hubble's own option syntax, e.g.
//! `flow:sourceContext=namespace;destinationContext=namespace` or
//! `drop:sourceContext=pod;labelsContext=traffic_direction`. Series that name a pod are removed
//! a while after the pod is gone, as Hubble does, so cardinality follows the live pods.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use sensor_common::net::{POLICY_INGRESS, VERDICT_AUDIT, VERDICT_DROPPED, VERDICT_FORWARDED};

use crate::{decode::Flow, flows, output::HubbleFlow};

pub type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricName {
    Flow,
    Drop,
    Tcp,
    PortDistribution,
    Policy,
}

impl MetricName {
    #[cfg(test)]
    const ALL: [Self; 5] =
        [Self::Flow, Self::Drop, Self::Tcp, Self::PortDistribution, Self::Policy];

    fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "flow" => Self::Flow,
            "drop" => Self::Drop,
            "tcp" => Self::Tcp,
            "port-distribution" => Self::PortDistribution,
            "policy" => Self::Policy,
            "dns" | "http" | "httpV2" | "kafka" => {
                return Err(format!(
                    "metric {name:?} needs L7 visibility, which the sensor does not have"
                ));
            }
            other => {
                return Err(format!(
                    "unknown metric {other:?} (supported: flow, drop, tcp, port-distribution, policy)"
                ));
            }
        })
    }

    const fn series(self) -> (&'static str, &'static str) {
        match self {
            Self::Flow => (
                "hubble_flows_processed",
                "Flow events processed, by protocol, event type and verdict",
            ),
            Self::Drop => ("hubble_drop", "Dropped packets, by reason and protocol"),
            Self::Tcp => ("hubble_tcp_flags", "TCP flags of forwarded flows, by flag and family"),
            Self::PortDistribution => (
                "hubble_port_distribution",
                "Destination ports of forwarded flows, by protocol and port",
            ),
            Self::Policy => (
                "hubble_policy_verdicts",
                "Policy verdicts of connections at endpoints a policy selects, by direction, match and action",
            ),
        }
    }
}

/// A `sourceContext`/`destinationContext` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContextValue {
    Identity,
    Namespace,
    Pod,
    PodName,
    Ip,
    ReservedIdentity,
    App,
}

impl ContextValue {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "identity" => Self::Identity,
            "namespace" => Self::Namespace,
            "pod" => Self::Pod,
            "pod-name" => Self::PodName,
            "ip" => Self::Ip,
            "reserved-identity" => Self::ReservedIdentity,
            "app" => Self::App,
            other => {
                return Err(format!(
                    "unsupported context value {other:?} (supported: identity, namespace, pod, \
                     pod-name, ip, reserved-identity, app)"
                ));
            }
        })
    }

    const fn names_pod(self) -> bool {
        matches!(self, Self::Pod | Self::PodName)
    }
}

/// `labelsContext` entries, in Hubble's canonical order.
const LABELS_CONTEXT: [&str; 9] = [
    "source_ip",
    "source_pod",
    "source_namespace",
    "source_app",
    "destination_ip",
    "destination_pod",
    "destination_namespace",
    "destination_app",
    "traffic_direction",
];

/// One metric as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricSpec {
    /// Fallback lists (`dns|ip`): the first value that is not empty wins.
    source: Vec<ContextValue>,
    destination: Vec<ContextValue>,
    /// Direction-specific overrides, used when the flow's traffic direction matches.
    source_ingress: Vec<ContextValue>,
    source_egress: Vec<ContextValue>,
    destination_ingress: Vec<ContextValue>,
    destination_egress: Vec<ContextValue>,
    labels_context: Vec<&'static str>,
}

/// Parses one `name[:opt=value;...]` entry.
pub fn parse_metric(text: &str) -> Result<(MetricName, MetricSpec), String> {
    let (name, options) = text.split_once(':').unwrap_or((text, ""));
    let metric = MetricName::parse(name.trim())?;
    let mut spec = MetricSpec::default();
    for option in options.split(';').map(str::trim).filter(|o| !o.is_empty()) {
        let (key, value) =
            option.split_once('=').ok_or_else(|| format!("option {option:?} has no value"))?;
        let values = || value.split('|').map(ContextValue::parse).collect::<Result<Vec<_>, _>>();
        match key {
            "sourceContext" => spec.source = values()?,
            "destinationContext" => spec.destination = values()?,
            "sourceIngressContext" => spec.source_ingress = values()?,
            "sourceEgressContext" => spec.source_egress = values()?,
            "destinationIngressContext" => spec.destination_ingress = values()?,
            "destinationEgressContext" => spec.destination_egress = values()?,
            "labelsContext" => {
                let wanted: Vec<&str> = value.split(',').map(str::trim).collect();
                for w in &wanted {
                    if !LABELS_CONTEXT.contains(w) {
                        return Err(format!(
                            "unsupported labelsContext {w:?} (supported: {})",
                            LABELS_CONTEXT.join(", ")
                        ));
                    }
                }
                spec.labels_context =
                    LABELS_CONTEXT.iter().copied().filter(|l| wanted.contains(l)).collect();
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok((metric, spec))
}

/// The default when nothing is configured: every supported metric, without context labels.
pub fn default_metrics() -> Vec<String> {
    ["flow", "drop", "tcp", "port-distribution", "policy"].map(str::to_owned).to_vec()
}

pub struct HubbleMetrics {
    metrics: Vec<(MetricName, MetricSpec, Family<Labels, Counter>)>,
    /// Series that carry a pod, by (namespace, pod), for removal once the pod is gone.
    pod_series: Mutex<PodSeries>,
    stale_after: Duration,
}

#[derive(Default)]
struct PodSeries {
    series: HashMap<(String, String), BTreeSet<(usize, Labels)>>,
    /// When a pod with series was first seen missing.
    missing_since: HashMap<(String, String), Instant>,
}

impl HubbleMetrics {
    /// `specs` in Hubble's syntax; errors name the entry.
    pub fn new(specs: &[String], stale_after: Duration) -> Result<Self, String> {
        let mut metrics = Vec::new();
        for (i, text) in specs.iter().enumerate() {
            let (name, spec) =
                parse_metric(text).map_err(|e| format!("hubble_metrics[{i}] {text:?}: {e}"))?;
            if metrics.iter().any(|(n, _, _)| *n == name) {
                return Err(format!("hubble_metrics[{i}] {text:?}: metric listed twice"));
            }
            metrics.push((name, spec, Family::default()));
        }
        Ok(Self { metrics, pod_series: Mutex::default(), stale_after })
    }

    pub fn register(&self, registry: &mut Registry) {
        for (name, _, family) in &self.metrics {
            let (series, help) = name.series();
            registry.register(series, help, family.clone());
        }
    }

    /// Counts one flow record in every enabled metric it belongs to.
    pub fn observe(&self, flow: &Flow, record: &HubbleFlow) {
        for (index, (name, spec, family)) in self.metrics.iter().enumerate() {
            for own in own_labels(*name, flow) {
                let (mut labels, pods) = context_labels(spec, record);
                labels.extend(own);
                family.get_or_create(&labels).inc();
                if !pods.is_empty() {
                    let mut tracked =
                        self.pod_series.lock().unwrap_or_else(PoisonError::into_inner);
                    for pod in pods {
                        tracked.series.entry(pod).or_default().insert((index, labels.clone()));
                    }
                }
            }
        }
    }

    /// Removes series of pods that have been absent from `live` for longer than the delay.
    pub fn forget_stale_pods(&self, live: &BTreeSet<(String, String)>, now: Instant) {
        let mut tracked = self.pod_series.lock().unwrap_or_else(PoisonError::into_inner);
        let PodSeries { series, missing_since } = &mut *tracked;
        missing_since.retain(|pod, _| !live.contains(pod));
        let mut gone = Vec::new();
        for pod in series.keys().filter(|p| !live.contains(*p)) {
            let since = *missing_since.entry(pod.clone()).or_insert(now);
            if now.duration_since(since) >= self.stale_after {
                gone.push(pod.clone());
            }
        }
        for pod in gone {
            missing_since.remove(&pod);
            for (index, labels) in series.remove(&pod).unwrap_or_default() {
                if let Some((_, _, family)) = self.metrics.get(index) {
                    family.remove(&labels);
                }
            }
        }
    }

    pub fn enabled(&self) -> impl Iterator<Item = MetricName> + '_ {
        self.metrics.iter().map(|(n, _, _)| *n)
    }
}

impl std::fmt::Debug for HubbleMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.enabled()).finish()
    }
}

/// The metric's own labels for this flow; empty when the metric does not count it.
fn own_labels(name: MetricName, flow: &Flow) -> Vec<Labels> {
    let protocol = flows::protocol_name(flow.protocol);
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    match name {
        MetricName::Flow => {
            let (kind, _) = flows::event_type(flow);
            let subtype = match kind {
                "Trace" if flow.direction == POLICY_INGRESS => "to-endpoint",
                "Trace" => "from-endpoint",
                _ => "",
            };
            vec![vec![
                pair("protocol", protocol),
                pair("type", kind),
                pair("subtype", subtype),
                pair("verdict", flows::verdict_name(flow.verdict)),
            ]]
        }
        MetricName::Drop if flow.verdict == VERDICT_DROPPED => {
            vec![vec![
                pair("reason", flows::drop_reason_name(flow.drop_reason)),
                pair("protocol", protocol),
            ]]
        }
        MetricName::Tcp if flow.verdict == VERDICT_FORWARDED => {
            let family = if flow.source.is_ipv4() { "IPv4" } else { "IPv6" };
            flows::reported_tcp_flags(flow)
                .map(|flag| vec![pair("flag", flag), pair("family", family)])
                .collect()
        }
        MetricName::PortDistribution if flow.verdict == VERDICT_FORWARDED && !flow.is_reply => {
            let port = if flows::has_ports(flow.protocol) { flow.destination_port } else { 0 };
            vec![vec![pair("protocol", protocol), pair("port", &port.to_string())]]
        }
        // One verdict per connection and direction, at endpoints a policy selects.
        MetricName::Policy if flow.policy_verdict => {
            let action = match flow.verdict {
                VERDICT_DROPPED => "dropped",
                VERDICT_AUDIT => "audit",
                _ => "forwarded",
            };
            vec![vec![
                pair("direction", flows::direction_name(flow)),
                pair("match", flows::match_name(flow.match_type)),
                pair("action", action),
            ]]
        }
        _ => Vec::new(),
    }
}

/// Context labels (labelsContext, then `source`, then `destination`) and the pods they name.
fn context_labels(spec: &MetricSpec, record: &HubbleFlow) -> (Labels, Vec<(String, String)>) {
    let mut labels = Labels::new();
    let mut pods = Vec::new();
    let ingress = record.traffic_direction == "INGRESS";
    let source = &record.source;
    let destination = &record.destination;
    let pod_of = |e: &crate::output::HubbleEndpoint| match (&e.namespace, &e.pod_name) {
        (Some(ns), Some(pod)) => Some((ns.clone(), pod.clone())),
        _ => None,
    };
    for key in &spec.labels_context {
        let value = match *key {
            "source_ip" => record.ip.source.clone(),
            "source_pod" => source.pod_name.clone().unwrap_or_default(),
            "source_namespace" => source.namespace.clone().unwrap_or_default(),
            "source_app" => app(&source.labels),
            "destination_ip" => record.ip.destination.clone(),
            "destination_pod" => destination.pod_name.clone().unwrap_or_default(),
            "destination_namespace" => destination.namespace.clone().unwrap_or_default(),
            "destination_app" => app(&destination.labels),
            _ => record.traffic_direction.to_ascii_lowercase(),
        };
        if *key == "source_pod" {
            pods.extend(pod_of(source));
        } else if *key == "destination_pod" {
            pods.extend(pod_of(destination));
        }
        labels.push(((*key).to_owned(), value));
    }
    let pick =
        |general: &[ContextValue], on_ingress: &[ContextValue], on_egress: &[ContextValue]| {
            let specific = if ingress { on_ingress } else { on_egress };
            if specific.is_empty() { general.to_vec() } else { specific.to_vec() }
        };
    for (label, values, endpoint, ip) in [
        (
            "source",
            pick(&spec.source, &spec.source_ingress, &spec.source_egress),
            source,
            &record.ip.source,
        ),
        (
            "destination",
            pick(&spec.destination, &spec.destination_ingress, &spec.destination_egress),
            destination,
            &record.ip.destination,
        ),
    ] {
        if values.is_empty() {
            continue;
        }
        let value = values
            .iter()
            .map(|v| context_value(*v, endpoint, ip))
            .find(|v| !v.is_empty())
            .unwrap_or_default();
        if values.iter().any(|v| v.names_pod()) {
            pods.extend(pod_of(endpoint));
        }
        labels.push((label.to_owned(), value));
    }
    (labels, pods)
}

fn context_value(value: ContextValue, e: &crate::output::HubbleEndpoint, ip: &str) -> String {
    match value {
        ContextValue::Identity => e.labels.join(","),
        ContextValue::Namespace => e.namespace.clone().unwrap_or_default(),
        ContextValue::Pod => match (&e.namespace, &e.pod_name) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
            _ => String::new(),
        },
        ContextValue::PodName => e.pod_name.clone().unwrap_or_default(),
        ContextValue::Ip => ip.to_owned(),
        ContextValue::ReservedIdentity => {
            e.labels.iter().find(|l| l.starts_with("reserved:")).cloned().unwrap_or_default()
        }
        ContextValue::App => app(&e.labels),
    }
}

/// `app.kubernetes.io/name`, then `k8s-app`, then `app`, as Hubble's `app` context.
fn app(labels: &[String]) -> String {
    ["k8s:app.kubernetes.io/name=", "k8s:k8s-app=", "k8s:app="]
        .iter()
        .find_map(|prefix| labels.iter().find_map(|l| l.strip_prefix(prefix)))
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hubble_option_syntax() {
        let (name, spec) =
            parse_metric("flow:sourceContext=namespace;destinationContext=pod|ip").expect("valid");
        assert_eq!(name, MetricName::Flow);
        assert_eq!(spec.source, vec![ContextValue::Namespace]);
        assert_eq!(spec.destination, vec![ContextValue::Pod, ContextValue::Ip]);
        let (_, spec) =
            parse_metric("drop:labelsContext=traffic_direction,source_namespace").expect("valid");
        // Canonical order, whatever order was written.
        assert_eq!(spec.labels_context, vec!["source_namespace", "traffic_direction"]);
        assert!(parse_metric("flow:destinationContext=dns|ip").is_err(), "no DNS names here");
        assert!(parse_metric("flow:sourceContext=workload").is_err());
        assert!(parse_metric("dns").is_err());
        assert!(parse_metric("flow:colour=blue").is_err());
        assert!(HubbleMetrics::new(&["drop".into(), "drop".into()], Duration::ZERO).is_err());
    }

    #[test]
    fn app_label_precedence() {
        let labels = vec!["k8s:app=web".to_owned(), "k8s:app.kubernetes.io/name=shop".to_owned()];
        assert_eq!(app(&labels), "shop");
        assert_eq!(app(&["k8s:app=web".to_owned()]), "web");
    }

    #[test]
    fn all_names_round_trip() {
        for name in MetricName::ALL {
            let text = match name {
                MetricName::Flow => "flow",
                MetricName::Drop => "drop",
                MetricName::Tcp => "tcp",
                MetricName::PortDistribution => "port-distribution",
                MetricName::Policy => "policy",
            };
            assert_eq!(MetricName::parse(text), Ok(name));
        }
    }
}
