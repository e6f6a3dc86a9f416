//! The cache the watches fill and the policy reload reads: slim pods, namespace labels and
//! parsed policy objects, plus each source's health.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use super::{
    translate::{self, ParsedPolicy, PodEntry, PolicyKind},
    watch::{Health, Sink},
};
use crate::policy::{
    Endpoints, Policy, Warning,
    endpoints::{Endpoint, LocalHint},
    selector::Labels,
};

type Key = (String, String);

#[derive(Debug, Default)]
struct Stores {
    namespaces: BTreeMap<String, Labels>,
    local_pods: BTreeMap<Key, PodEntry>,
    cluster_pods: BTreeMap<Key, PodEntry>,
    /// The last version of each policy object that parsed.
    policies: BTreeMap<(PolicyKind, Key), Arc<ParsedPolicy>>,
    /// Objects whose current version does not parse: the error (the last good version, if
    /// any, stays in `policies`).
    rejected: BTreeMap<(PolicyKind, Key), String>,
    /// Host route of each IP (refreshed by [`KubeState::refresh_routes`]).
    routes: BTreeMap<IpAddr, String>,
    /// One copy of each distinct pod label set.
    label_sets: BTreeSet<Arc<Labels>>,
    /// Interned sets when unused ones were last dropped.
    label_sets_pruned_at: usize,
}

impl Stores {
    /// The shared copy of `labels` (pods of one ReplicaSet or StatefulSet carry the same set).
    fn intern(&mut self, labels: Arc<Labels>) -> Arc<Labels> {
        if let Some(shared) = self.label_sets.get(&labels) {
            return Arc::clone(shared);
        }
        self.label_sets.insert(Arc::clone(&labels));
        if self.label_sets.len() > 2 * self.label_sets_pruned_at + 64 {
            self.label_sets.retain(|set| Arc::strong_count(set) > 1);
            self.label_sets_pruned_at = self.label_sets.len();
        }
        labels
    }
}

/// Everything the API sources know, shared by the watch tasks and the policy runtime.
#[derive(Debug)]
pub struct KubeState {
    stores: Mutex<Stores>,
    /// Source name → health (`pods/local`, `pods/cluster`, `namespaces`, policy plurals).
    pub health: BTreeMap<&'static str, Arc<Health>>,
    /// How long a source may fail before its cache counts as stale.
    pub stale_after: Duration,
    /// The node's addresses (the `host` entity), from the downward API.
    pub host_ips: Vec<IpAddr>,
}

pub const LOCAL_PODS: &str = "pods/local";
pub const CLUSTER_PODS: &str = "pods/cluster";
pub const NAMESPACES: &str = "namespaces";

/// What one reload takes from the API sources.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub policies: Vec<Policy>,
    pub warnings: Vec<Warning>,
    pub host_policies: Vec<crate::host::policy::HostPolicy>,
    pub endpoints: Endpoints,
}

impl KubeState {
    pub fn new(
        sources: impl IntoIterator<Item = &'static str>,
        stale_after: Duration,
        host_ips: Vec<IpAddr>,
    ) -> Self {
        Self {
            stores: Mutex::default(),
            health: sources.into_iter().map(|s| (s, Arc::default())).collect(),
            stale_after,
            host_ips,
        }
    }

    fn stores(&self) -> MutexGuard<'_, Stores> {
        self.stores.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sources that never completed a list: a reload must not treat their empty caches as
    /// "no pods, no policies".
    pub fn unsynced(&self) -> Vec<&'static str> {
        self.health.iter().filter(|(_, h)| !h.get().synced).map(|(name, _)| *name).collect()
    }

    /// Sources whose cache is stale, each with why: for `/readyz` and the logs.
    pub fn stale(&self) -> Vec<String> {
        self.health
            .iter()
            .filter_map(|(name, h)| {
                let state = h.get();
                state.stale(self.stale_after).then(|| match (&state.failing_since, state.synced) {
                    (Some(since), _) => format!(
                        "{name}: failing for {}s: {}",
                        since.elapsed().as_secs(),
                        state.last_error.as_deref().unwrap_or("unknown error")
                    ),
                    (None, false) => format!("{name}: not listed yet"),
                    (None, true) => format!("{name}: stale"),
                })
            })
            .collect()
    }

    /// Objects held and rejected per source, for the metrics.
    pub fn counts(&self) -> BTreeMap<&'static str, (usize, usize)> {
        let stores = self.stores();
        let mut counts = BTreeMap::new();
        counts.insert(LOCAL_PODS, (stores.local_pods.len(), 0));
        counts.insert(CLUSTER_PODS, (stores.cluster_pods.len(), 0));
        counts.insert(NAMESPACES, (stores.namespaces.len(), 0));
        for kind in PolicyKind::ALL {
            let held = stores.policies.keys().filter(|(k, _)| *k == kind).count();
            let rejected = stores.rejected.keys().filter(|(k, _)| *k == kind).count();
            counts.insert(kind.resource(), (held, rejected));
        }
        counts
    }

    /// Re-reads the node's host routes; true when a local pod's interface changed.
    pub fn refresh_routes(&self) -> bool {
        let routes = super::routes::host_routes();
        let mut stores = self.stores();
        let local_ips: BTreeSet<IpAddr> =
            stores.local_pods.values().flat_map(|p| p.ips.iter().copied()).collect();
        let changed = local_ips.iter().any(|ip| stores.routes.get(ip) != routes.get(ip));
        stores.routes = routes;
        changed
    }

    /// The current policies and endpoints. `is_pod_interface` says which interface names
    /// are pod interfaces (the agent's `interfaces` globs).
    pub fn snapshot(&self, is_pod_interface: impl Fn(&str) -> bool) -> Snapshot {
        let stores = self.stores();
        let mut snapshot = Snapshot::default();
        for parsed in stores.policies.values() {
            snapshot.policies.extend(parsed.network.iter().cloned());
            snapshot.warnings.extend(parsed.warnings.iter().cloned());
            snapshot.host_policies.extend(parsed.host.iter().cloned());
        }
        let endpoints = &mut snapshot.endpoints;
        endpoints.namespaces = stores.namespaces.clone();
        endpoints.host_ips = self.host_ips.clone();
        let mut taken = BTreeSet::new();
        let mut add = |endpoint: Endpoint, endpoints: &mut Vec<Endpoint>| {
            if endpoint.ips.iter().any(|ip| taken.contains(ip)) {
                tracing::debug!(pod = %format!("{}/{}", endpoint.namespace, endpoint.name), "IP already held by another pod: skipped");
                return;
            }
            taken.extend(endpoint.ips.iter().copied());
            endpoints.push(endpoint);
        };
        // A local pod's interface is found from its own network namespace when the policy
        // reloads (`discovery::Resolver`); its host route, if any, is the fallback.
        for ((namespace, name), pod) in &stores.local_pods {
            let route_interface = pod
                .ips
                .iter()
                .filter_map(|ip| stores.routes.get(ip))
                .find(|name| is_pod_interface(name))
                .cloned();
            let mut endpoint = pod.endpoint(namespace, name, None);
            endpoint.local_hint = Some(LocalHint { route_interface });
            add(endpoint, &mut endpoints.endpoints);
        }
        for (key, pod) in &stores.cluster_pods {
            if !stores.local_pods.contains_key(key) {
                add(pod.endpoint(&key.0, &key.1, None), &mut endpoints.endpoints);
            }
        }
        snapshot
    }
}

/// Pods into the local or cluster store.
pub struct PodSink {
    pub state: Arc<KubeState>,
    pub local: bool,
}

impl PodSink {
    fn store<'a>(&self, stores: &'a mut Stores) -> &'a mut BTreeMap<Key, PodEntry> {
        if self.local { &mut stores.local_pods } else { &mut stores.cluster_pods }
    }
}

fn key_of(meta: &kube::core::ObjectMeta) -> Key {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

impl Sink<translate::Pod> for PodSink {
    fn replace(&mut self, objects: Vec<translate::Pod>) {
        let mut stores = self.state.stores();
        let mut entries = BTreeMap::new();
        for pod in objects {
            if let Some(mut entry) = PodEntry::from_pod(&pod, self.local) {
                entry.labels = stores.intern(entry.labels);
                entries.insert(key_of(&pod.metadata), entry);
            }
        }
        *self.store(&mut stores) = entries;
        stores.label_sets.retain(|set| Arc::strong_count(set) > 1);
        stores.label_sets_pruned_at = stores.label_sets.len();
    }

    fn apply(&mut self, pod: translate::Pod) {
        let key = key_of(&pod.metadata);
        let mut stores = self.state.stores();
        match PodEntry::from_pod(&pod, self.local) {
            Some(mut entry) => {
                entry.labels = stores.intern(entry.labels);
                self.store(&mut stores).insert(key, entry);
            }
            None => {
                self.store(&mut stores).remove(&key);
            }
        }
    }

    fn delete(&mut self, pod: translate::Pod) {
        self.store(&mut self.state.stores()).remove(&key_of(&pod.metadata));
    }
}

pub struct NamespaceSink {
    pub state: Arc<KubeState>,
}

impl Sink<kube::core::DynamicObject> for NamespaceSink {
    fn replace(&mut self, objects: Vec<kube::core::DynamicObject>) {
        self.state.stores().namespaces =
            objects.iter().filter_map(translate::namespace_labels).collect();
    }

    fn apply(&mut self, object: kube::core::DynamicObject) {
        if let Some((name, labels)) = translate::namespace_labels(&object) {
            self.state.stores().namespaces.insert(name, labels);
        }
    }

    fn delete(&mut self, object: kube::core::DynamicObject) {
        if let Some(name) = &object.metadata.name {
            self.state.stores().namespaces.remove(name);
        }
    }
}

/// Policy objects of one kind: parsed on arrival; a version that does not parse is rejected
/// with its error and the last good version stays in force.
pub struct PolicySink {
    pub state: Arc<KubeState>,
    pub kind: PolicyKind,
}

impl PolicySink {
    fn parse(&self, object: &kube::core::DynamicObject, stores: &mut Stores) {
        let key = (self.kind, key_of(&object.metadata));
        match translate::parse_policy(self.kind, object) {
            Ok(parsed) => {
                stores.rejected.remove(&key);
                stores.policies.insert(key, Arc::new(parsed));
            }
            Err(err) => {
                let kept = if stores.policies.contains_key(&key) {
                    "its previous version stays in force"
                } else {
                    "not applied"
                };
                tracing::error!("{err} ({kept})");
                stores.rejected.insert(key, err.to_string());
            }
        }
    }
}

impl Sink<kube::core::DynamicObject> for PolicySink {
    fn replace(&mut self, objects: Vec<kube::core::DynamicObject>) {
        let mut stores = self.state.stores();
        let listed: BTreeSet<Key> = objects.iter().map(|o| key_of(&o.metadata)).collect();
        let kind = self.kind;
        stores.policies.retain(|(k, key), _| *k != kind || listed.contains(key));
        stores.rejected.retain(|(k, key), _| *k != kind || listed.contains(key));
        for object in &objects {
            self.parse(object, &mut stores);
        }
    }

    fn apply(&mut self, object: kube::core::DynamicObject) {
        self.parse(&object, &mut self.state.stores());
    }

    fn delete(&mut self, object: kube::core::DynamicObject) {
        let key = (self.kind, key_of(&object.metadata));
        let mut stores = self.state.stores();
        stores.policies.remove(&key);
        stores.rejected.remove(&key);
    }
}
