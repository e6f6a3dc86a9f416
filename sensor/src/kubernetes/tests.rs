//! Translation from API objects (JSON as `kubectl get -o json` returns it, in testdata/) and
//! the watch loop against an HTTP server that answers like the API server: paged lists,
//! watch streams with bookmarks, `410 Expired`, unavailability and undecodable events.

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use kube::core::DynamicObject;

use super::{
    state::{self, KubeState, PodSink},
    translate::{self, PodEntry, PolicyKind},
    watch::{self, Sink},
};

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/src/kubernetes/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn a_running_pod_becomes_an_endpoint_with_its_ips_labels_and_container_ids() {
    let pod: translate::Pod = fixture("pod-frontend.json");
    let entry = PodEntry::from_pod(&pod, true).expect("a running pod is an endpoint");
    assert_eq!(*entry.ips, [ip("10.244.1.17"), ip("fd00:10:244:1::11")]);
    assert_eq!(entry.labels.get("app").map(String::as_str), Some("frontend"));
    assert_eq!(entry.labels.len(), 3);
    assert_eq!(
        *entry.containers,
        ["9f3b0c1d2e4a5b6c7d8e9f00112233445566778899aabbccddeeff0011223344".to_owned()]
    );
    // Remote pods keep no container ids.
    assert!(PodEntry::from_pod(&pod, false).expect("endpoint").containers.is_empty());
    let endpoint = entry.endpoint("shop", "frontend-7c9f6d8b5d-x2lqp", Some("lxc1234".into()));
    assert_eq!(endpoint.interface.as_deref(), Some("lxc1234"));
    assert_eq!(
        (endpoint.namespace.as_str(), endpoint.name.as_str(), endpoint.ips.len()),
        ("shop", "frontend-7c9f6d8b5d-x2lqp", 2)
    );
}

#[test]
fn host_network_and_finished_pods_are_not_endpoints() {
    let host: translate::Pod = fixture("pod-hostnetwork.json");
    assert_eq!(PodEntry::from_pod(&host, true), None, "its IP is the node's");
    let done: translate::Pod = fixture("pod-completed.json");
    assert_eq!(PodEntry::from_pod(&done, false), None, "its IP may be reused");
}

#[test]
fn policy_objects_parse_like_their_files_without_status_or_managed_fields() {
    let np: DynamicObject = fixture("networkpolicy-api.json");
    let parsed = translate::parse_policy(PolicyKind::NetworkPolicy, &np).expect("parses");
    assert_eq!(parsed.network.len(), 1);
    let policy = &parsed.network[0];
    assert_eq!(
        (policy.name.as_str(), policy.namespace.as_deref()),
        ("api-from-frontend", Some("shop"))
    );
    assert_eq!(
        policy.origin.file.display().to_string(),
        "kubernetes/networkpolicies/shop/api-from-frontend"
    );
    assert!(policy.default_deny_ingress && !policy.default_deny_egress);
    assert_eq!(policy.ingress.len(), 1);

    let cnp: DynamicObject = fixture("ciliumnetworkpolicy-frontend.json");
    let parsed = translate::parse_policy(PolicyKind::CiliumNetworkPolicy, &cnp).expect("parses");
    assert_eq!(parsed.network.len(), 1);
    assert!(parsed.network[0].audit, "the audit annotation is kept");
    assert_eq!(parsed.network[0].egress.len(), 2);

    let ccnp: DynamicObject = fixture("ciliumclusterwidenetworkpolicy-dns.json");
    let parsed =
        translate::parse_policy(PolicyKind::CiliumClusterwideNetworkPolicy, &ccnp).expect("parses");
    assert_eq!(parsed.network.len(), 1);
    assert_eq!(parsed.network[0].namespace, None);

    let host: DynamicObject = fixture("hostpolicy-no-shells.json");
    let parsed = translate::parse_policy(PolicyKind::HostPolicy, &host).expect("parses");
    assert!(parsed.network.is_empty());
    assert_eq!(parsed.host.len(), 1);
    assert_eq!(parsed.host[0].name, "no-shells-in-shop");
    assert_eq!(parsed.host[0].executables.len(), 2);
}

#[test]
fn a_bad_object_names_itself_and_the_field_and_its_last_good_version_stays() {
    let state = Arc::new(KubeState::new(
        [PolicyKind::CiliumNetworkPolicy.resource()],
        Duration::ZERO,
        vec![],
    ));
    let mut sink =
        state::PolicySink { state: Arc::clone(&state), kind: PolicyKind::CiliumNetworkPolicy };
    let good: DynamicObject = fixture("ciliumnetworkpolicy-frontend.json");
    sink.replace(vec![good.clone()]);
    let mut bad = good.clone();
    bad.data["spec"]["egress"][1]["toCIDRSet"][0]["cidr"] = "10.96.0.0/33".into();
    let err = translate::parse_policy(PolicyKind::CiliumNetworkPolicy, &bad).expect_err("bad CIDR");
    let message = err.to_string();
    assert!(
        message.starts_with("kubernetes/ciliumnetworkpolicies/shop/frontend-egress:"),
        "{message}"
    );
    assert!(message.contains("10.96.0.0/33"), "{message}");
    sink.apply(bad);
    let snapshot = state.snapshot(|_| true);
    assert_eq!(snapshot.policies.len(), 1, "the previous version stays in force");
    assert_eq!(state.counts()[PolicyKind::CiliumNetworkPolicy.resource()], (1, 1));
    sink.apply(good);
    assert_eq!(state.counts()[PolicyKind::CiliumNetworkPolicy.resource()], (1, 0));
}

#[test]
fn snapshot_joins_local_and_remote_pods_namespaces_and_host_ips() {
    let state = Arc::new(KubeState::new(
        [state::LOCAL_PODS, state::CLUSTER_PODS, state::NAMESPACES],
        Duration::ZERO,
        vec![ip("192.168.49.2")],
    ));
    let pod: translate::Pod = fixture("pod-frontend.json");
    let mut remote: translate::Pod = fixture("pod-frontend.json");
    remote.metadata.name = Some("frontend-remote".into());
    remote.status.as_mut().expect("status").pod_ips =
        vec![translate::PodIp { ip: "10.244.2.9".into() }];
    PodSink { state: Arc::clone(&state), local: true }.replace(vec![pod.clone()]);
    // The cluster watch sees the local pod too: it stays local.
    PodSink { state: Arc::clone(&state), local: false }.replace(vec![pod, remote]);
    state::NamespaceSink { state: Arc::clone(&state) }
        .replace(vec![fixture("namespace-shop.json")]);
    let snapshot = state.snapshot(|_| true);
    let endpoints = &snapshot.endpoints;
    assert_eq!(endpoints.host_ips, vec![ip("192.168.49.2")]);
    assert_eq!(
        endpoints.namespace_labels("shop").get("team").map(String::as_str),
        Some("payments")
    );
    let names: Vec<(&str, bool)> =
        endpoints.endpoints.iter().map(|e| (e.name.as_str(), e.containers.is_empty())).collect();
    assert_eq!(names, vec![("frontend-7c9f6d8b5d-x2lqp", false), ("frontend-remote", true)]);
}

#[test]
fn a_source_is_stale_until_listed_and_after_failing_longer_than_the_grace() {
    let fresh = watch::HealthState { synced: true, ..Default::default() };
    assert!(!fresh.stale(Duration::from_secs(5)));
    assert!(watch::HealthState::default().stale(Duration::from_secs(5)), "never listed");
    let failing = watch::HealthState {
        synced: true,
        failing_since: Some(std::time::Instant::now()),
        ..Default::default()
    };
    assert!(!failing.stale(Duration::from_secs(5)), "within the grace");
    assert!(failing.stale(Duration::ZERO));
}

/// One canned answer: status and body; the request's path and query are recorded.
type Script = Arc<Mutex<VecDeque<(u16, String)>>>;

async fn serve_script(script: Script, requests: Arc<Mutex<Vec<String>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (script, requests) = (Arc::clone(&script), Arc::clone(&requests));
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (script, requests) = (Arc::clone(&script), Arc::clone(&requests));
                    async move {
                        requests.lock().expect("log").push(req.uri().to_string());
                        let (status, body) = script.lock().expect("script").pop_front().unwrap_or(
                            (503, status_json(503, "ServiceUnavailable", "script ended")),
                        );
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() =
                            hyper::StatusCode::from_u16(status).expect("status");
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    })
    .to_string()
}

fn pod_json(name: &str, version: &str, ip: &str) -> serde_json::Value {
    let mut pod: serde_json::Value = fixture("pod-frontend.json");
    pod["metadata"]["name"] = name.into();
    pod["metadata"]["resourceVersion"] = version.into();
    pod["status"]["podIPs"] = serde_json::json!([{ "ip": ip }]);
    pod
}

fn list_json(items: Vec<serde_json::Value>, version: &str, cont: Option<&str>) -> String {
    let mut metadata = serde_json::json!({ "resourceVersion": version });
    if let Some(token) = cont {
        metadata["continue"] = token.into();
    }
    serde_json::json!({ "kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items })
        .to_string()
}

fn events(lines: &[serde_json::Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Records what the loop hands over, in order.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Sink<translate::Pod> for Recorder {
    fn replace(&mut self, objects: Vec<translate::Pod>) {
        let names: Vec<String> = objects.iter().filter_map(|o| o.metadata.name.clone()).collect();
        self.0.lock().expect("rec").push(format!("replace {}", names.join(",")));
    }
    fn apply(&mut self, object: translate::Pod) {
        let name = object.metadata.name.unwrap_or_default();
        self.0.lock().expect("rec").push(format!("apply {name}"));
    }
    fn delete(&mut self, object: translate::Pod) {
        let name = object.metadata.name.unwrap_or_default();
        self.0.lock().expect("rec").push(format!("delete {name}"));
    }
}

fn query(uri: &str, key: &str) -> Option<String> {
    uri.split_once('?')?.1.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_loop_pages_resumes_relists_on_410_and_backs_off_on_errors() {
    let script: Script = Arc::default();
    let requests = Arc::new(Mutex::new(Vec::new()));
    {
        let mut s = script.lock().expect("script");
        // Paged list.
        s.push_back((200, list_json(vec![pod_json("a", "90", "10.1.0.1")], "100", Some("page2"))));
        s.push_back((200, list_json(vec![pod_json("b", "95", "10.1.0.2")], "100", None)));
        // Watch from 100: an add, a bookmark, then the server ends the watch (its timeout).
        s.push_back((200, events(&[
            serde_json::json!({ "type": "ADDED", "object": pod_json("c", "101", "10.1.0.3") }),
            serde_json::json!({ "type": "BOOKMARK", "object": { "kind": "Pod", "apiVersion": "v1", "metadata": { "resourceVersion": "150" } } }),
        ])));
        // Resume from the bookmark's version: compacted away → 410 in the stream.
        s.push_back((200, events(&[serde_json::json!({
            "type": "ERROR",
            "object": serde_json::from_str::<serde_json::Value>(&status_json(410, "Expired", "too old resource version: 150 (290)")).expect("json"),
        })])));
        // Relist: a and b went away meanwhile.
        s.push_back((200, list_json(vec![pod_json("c", "101", "10.1.0.3")], "300", None)));
        // The API server fails once (kube itself retries 429/503/504)…
        s.push_back((500, status_json(500, "InternalError", "etcdserver: request timed out")));
        // …then the watch resumes from 300: a delete, an object that does not decode, a
        // modification.
        s.push_back((200, events(&[
            serde_json::json!({ "type": "DELETED", "object": pod_json("c", "301", "10.1.0.3") }),
            serde_json::json!({ "type": "MODIFIED", "object": { "kind": "Pod", "apiVersion": "v1", "metadata": { "name": "bad", "resourceVersion": "302" }, "spec": { "hostNetwork": "yes" } } }),
            serde_json::json!({ "type": "MODIFIED", "object": pod_json("d", "303", "10.1.0.4") }),
        ])));
    }
    let base = serve_script(Arc::clone(&script), Arc::clone(&requests)).await;
    let client =
        kube::Client::try_from(kube::Config::new(base.parse().expect("url"))).expect("client");
    let api: kube::Api<translate::Pod> = kube::Api::all_with(
        client,
        &kube::core::ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
    );
    let recorder = Recorder::default();
    let health = Arc::new(watch::Health::default());
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let timing = watch::Timing {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        ..watch::Timing::default()
    };
    let task = tokio::spawn(watch::run(
        "pods/local",
        api,
        Some("spec.nodeName=node-a".into()),
        recorder.clone(),
        Arc::clone(&health),
        tx,
        timing,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Done once `d` arrived and the loop resumed after that stream ended.
    while !recorder.0.lock().expect("rec").iter().any(|r| r == "apply d")
        || requests.lock().expect("log").len() < 8
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "loop stuck: {:?}",
            recorder.0.lock().expect("rec")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    assert_eq!(
        *recorder.0.lock().expect("rec"),
        ["replace a,b", "apply c", "replace c", "delete c", "apply d"]
    );
    let log = requests.lock().expect("log").clone();
    let versions: Vec<(bool, Option<String>, Option<String>)> = log
        .iter()
        .take(8)
        .map(|u| (query(u, "watch").is_some(), query(u, "resourceVersion"), query(u, "continue")))
        .collect();
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        versions,
        vec![
            (false, None, None),
            (false, None, s("page2")),
            (true, s("100"), None),
            (true, s("150"), None),
            (false, None, None),
            (true, s("300"), None),
            (true, s("300"), None),
            (true, s("303"), None),
        ],
        "{log:#?}"
    );
    assert!(log.iter().all(|u| u.contains("fieldSelector=spec.nodeName%3Dnode-a")), "{log:#?}");
    let h = health.get();
    assert_eq!((h.lists, h.relists_expired, h.bad_events), (2, 1, 1), "{h:?}");
    assert!(h.errors >= 1 && h.resumes >= 1, "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_the_server_does_not_serve_is_empty_and_healthy() {
    let script: Script = Arc::default();
    script.lock().expect("script").push_back((
        404,
        status_json(404, "NotFound", "the server could not find the requested resource"),
    ));
    let base = serve_script(Arc::clone(&script), Arc::default()).await;
    let client =
        kube::Client::try_from(kube::Config::new(base.parse().expect("url"))).expect("client");
    let kind = PolicyKind::CiliumNetworkPolicy;
    let state = Arc::new(KubeState::new([kind.resource()], Duration::ZERO, vec![]));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(watch::run(
        kind.resource(),
        kube::Api::<DynamicObject>::all_with(client, &kind.api_resource()),
        None,
        state::PolicySink { state: Arc::clone(&state), kind },
        Arc::clone(&state.health[kind.resource()]),
        tx,
        watch::Timing::default(),
    ));
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("notified");
    task.abort();
    let h = state.health[kind.resource()].get();
    assert!(h.synced && h.absent && h.failing_since.is_none(), "{h:?}");
    assert!(state.unsynced().is_empty() && state.stale().is_empty());
}
