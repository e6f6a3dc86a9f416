//! Kubernetes API sources: this node's pods (endpoints with their containers and
//! interfaces), every pod of the cluster (remote identities: IP → labels), namespaces (labels
//! for namespaceSelector), and the NetworkPolicy, CiliumNetworkPolicy,
//! CiliumClusterwideNetworkPolicy and HostPolicy objects. They fill the same model the files
//! do; the policy runtime reads both (README, "Kubernetes").
//!
//! Data flows one way: watch loops (watch.rs) → sinks → [`KubeState`] (state.rs) → a unit on
//! the reload channel → `PolicyRuntime::reload` takes a [`state::Snapshot`].

pub mod routes;
pub mod state;
#[cfg(test)]
mod tests;
pub mod translate;
pub mod watch;

use std::{net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    core::{ApiResource, DynamicObject},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet},
    metrics::MetricType,
};
use serde::Deserialize;
use tokio::{sync::mpsc, task::JoinHandle};

pub use state::KubeState;
use translate::PolicyKind;

/// `kubernetes:` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Off: the section is kept but nothing is watched.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// A kubeconfig file; default: the in-cluster service account, else `$KUBECONFIG` or
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Watch every pod of the cluster for remote identities (IP → labels). Off: only this
    /// node's pods are known, and selectors of remote peers match nothing.
    #[serde(default = "enabled")]
    pub cluster_pods: bool,
    /// The policy kinds to watch; default all four.
    #[serde(default = "all_kinds")]
    pub policy_kinds: Vec<String>,
    /// The node's own addresses (the `host` entity); the DaemonSet passes `status.hostIP`.
    #[serde(default)]
    pub host_ips: Vec<IpAddr>,
    /// A source failing for longer than this is reported stale (`/readyz`, metric).
    #[serde(default = "stale_after")]
    pub stale_after_seconds: u64,
    /// How long start-up waits for the first list of every source before going on without
    /// applying the API's policies (they apply as soon as every source has listed).
    #[serde(default = "initial_sync")]
    pub initial_sync_timeout_seconds: u64,
}

fn enabled() -> bool {
    true
}
fn all_kinds() -> Vec<String> {
    PolicyKind::ALL.iter().map(|k| k.gvk().2.to_owned()).collect()
}
fn stale_after() -> u64 {
    30
}
fn initial_sync() -> u64 {
    60
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            kubeconfig: None,
            cluster_pods: true,
            policy_kinds: all_kinds(),
            host_ips: Vec::new(),
            stale_after_seconds: stale_after(),
            initial_sync_timeout_seconds: initial_sync(),
        }
    }
}

impl KubernetesConfig {
    /// The kinds named in `policy_kinds`, or the first unknown name.
    pub fn kinds(&self) -> Result<Vec<PolicyKind>, String> {
        self.policy_kinds
            .iter()
            .map(|name| {
                PolicyKind::ALL.into_iter().find(|k| k.gvk().2 == name).ok_or_else(|| {
                    format!(
                        "field `kubernetes.policy_kinds`: unknown kind {name:?} (known: {})",
                        all_kinds().join(", ")
                    )
                })
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("Kubernetes client configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("{0}")]
    Config(String),
}

/// The running watches; dropping it stops them.
pub struct KubeSources {
    pub state: Arc<KubeState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSources {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn client(config: &KubernetesConfig) -> Result<Client, KubeError> {
    let config = match &config.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Starts every watch; `changed` gets a unit whenever the cache changes.
pub async fn start(
    config: &KubernetesConfig,
    node_name: &str,
    changed: mpsc::Sender<()>,
) -> Result<KubeSources, KubeError> {
    start_with(config, node_name, changed, watch::Timing::default()).await
}

pub async fn start_with(
    config: &KubernetesConfig,
    node_name: &str,
    changed: mpsc::Sender<()>,
    timing: watch::Timing,
) -> Result<KubeSources, KubeError> {
    let kinds = config.kinds().map_err(KubeError::Config)?;
    let client = client(config).await?;
    let mut sources = vec![state::LOCAL_PODS, state::NAMESPACES];
    if config.cluster_pods {
        sources.push(state::CLUSTER_PODS);
    }
    sources.extend(kinds.iter().map(|k| k.resource()));
    let state = Arc::new(KubeState::new(
        sources,
        Duration::from_secs(config.stale_after_seconds),
        config.host_ips.clone(),
    ));
    let health = |name: &str| state.health.get(name).cloned().unwrap_or_default();
    let mut tasks = Vec::new();
    let pods_resource = ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&());
    let mut pods = vec![(state::LOCAL_PODS, Some(format!("spec.nodeName={node_name}")), true)];
    if config.cluster_pods {
        pods.push((state::CLUSTER_PODS, None, false));
    }
    for (name, selector, local) in pods {
        let api: Api<translate::Pod> = Api::all_with(client.clone(), &pods_resource);
        let sink = state::PodSink { state: Arc::clone(&state), local };
        tasks.push(tokio::spawn(watch::run(
            name,
            api,
            selector,
            sink,
            health(name),
            changed.clone(),
            timing.clone(),
        )));
    }
    let namespaces = ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&());
    tasks.push(tokio::spawn(watch::run(
        state::NAMESPACES,
        Api::<DynamicObject>::all_with(client.clone(), &namespaces),
        None,
        state::NamespaceSink { state: Arc::clone(&state) },
        health(state::NAMESPACES),
        changed.clone(),
        timing.clone(),
    )));
    for kind in kinds {
        tasks.push(tokio::spawn(watch::run(
            kind.resource(),
            Api::<DynamicObject>::all_with(client.clone(), &kind.api_resource()),
            None,
            state::PolicySink { state: Arc::clone(&state), kind },
            health(kind.resource()),
            changed.clone(),
            timing.clone(),
        )));
    }
    tracing::info!(node = node_name, sources = ?state.health.keys().collect::<Vec<_>>(), "watching the Kubernetes API");
    Ok(KubeSources { state, tasks })
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    resource: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestartLabels {
    resource: &'static str,
    reason: &'static str,
}

/// A gauge of each source: name, help, value from (source name, health).
type SourceGauge<'a> = (&'static str, &'static str, &'a dyn Fn(&str, &watch::HealthState) -> i64);

/// `sensor_kubernetes_*`, read from the sources' health at scrape time.
#[derive(Debug)]
pub struct KubeCollector(pub Arc<KubeState>);

impl Collector for KubeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0;
        let health: Vec<_> = state.health.iter().map(|(name, h)| (*name, h.get())).collect();
        let counts = state.counts();
        let gauges: [SourceGauge<'_>; 4] = [
            (
                "sensor_kubernetes_source_stale",
                "1 while a source's cache is not following the API (never listed, or failing longer than stale_after_seconds)",
                &|_, h| i64::from(h.stale(state.stale_after)),
            ),
            (
                "sensor_kubernetes_source_synced",
                "1 once a source has completed its first list",
                &|_, h| i64::from(h.synced),
            ),
            ("sensor_kubernetes_objects", "Objects held in the cache, by source", &|name, _| {
                counts.get(name).map_or(0, |c| c.0 as i64)
            }),
            (
                "sensor_kubernetes_rejected_objects",
                "Policy objects whose current version does not parse (the previous version, if any, stays in force)",
                &|name, _| counts.get(name).map_or(0, |c| c.1 as i64),
            ),
        ];
        for (metric, help, value) in gauges {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for (name, h) in &health {
                family
                    .encode_family(&SourceLabels { resource: name })?
                    .encode_gauge(&value(name, h))?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "sensor_kubernetes_watch_restarts",
            "Watch restarts by reason: resumed (stream ended, resumed from the last version), expired (410 Gone, relisted), error (request failed, backed off), bad_event (object skipped)",
            None,
            MetricType::Counter,
        )?;
        for (name, h) in &health {
            for (reason, value) in [
                ("resumed", h.resumes),
                ("expired", h.relists_expired),
                ("error", h.errors),
                ("bad_event", h.bad_events),
            ] {
                family
                    .encode_family(&RestartLabels { resource: name, reason })?
                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
        }
        Ok(())
    }
}
