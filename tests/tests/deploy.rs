//! deploy/: the Kubernetes manifests. Rendered with `kubectl kustomize` (base and both
//! overlays), they validate against the Kubernetes schemas (`kubernetes-validate`), their
//! cross-references hold (Service, monitors, probes, RBAC), the example host policies validate
//! against the HostPolicy CRD's schema, the example and deployed network policies pass
//! `sensor policy check`, and the DaemonSet's own arguments, config and capability set start
//! the real sensor: manifests and binary cannot drift apart.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use sensor_e2e::{
    ApiServer, Netns, Sensor, TempDir, privileged,
    sensor::{PORT, sensor_bin},
    wait_until,
};
use serde::Deserialize as _;
use serde_json::{Map, Value};

const KUSTOMIZATIONS: [&str; 3] = ["base", "overlays/detect", "overlays/enforce"];
/// The oldest Kubernetes the manifests support (`securityContext.appArmorProfile` is 1.30)
/// and the newest whose schemas kubernetes-validate ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// Kinds from CRDs that kubernetes-validate has no schema for; checked separately below.
const OPERATOR_KINDS: [&str; 2] = ["ServiceMonitor", "PodMonitor"];
const NAMESPACE: &str = "sensor-system";
/// Node name the test's "downward API" gives the pod.
const NODE_NAME: &str = "e2e-node";
/// status.hostIP of the "node" (downward API).
const HOST_IP: &str = "10.250.0.1";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("spawning {:?}: {e} (`cargo xtask test` installs the test tools)", cmd.get_program())
    })
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `kubectl kustomize deploy/<kustomization>` (offline: everything is local).
fn render(kustomization: &str) -> String {
    let out =
        output(Command::new("kubectl").arg("kustomize").arg(deploy_dir().join(kustomization)));
    assert!(out.status.success(), "kubectl kustomize {kustomization}: {}", text(&out));
    String::from_utf8(out.stdout).expect("kustomize output is UTF-8")
}

/// Every document of a multi-document YAML stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("bad YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let all: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(all.len(), 1, "expected one {kind}");
    all[0]
}

fn agent_container(pod: &Value) -> &Value {
    pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "sensor"))
        .expect("DaemonSet has a container named sensor")
}

/// True when every `matchLabels` pair of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector.as_object().expect("selector labels are a map");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
fn rendered_manifests_validate_against_kubernetes_schemas() {
    let tmp = TempDir::new("kv");
    for kustomization in KUSTOMIZATIONS {
        let yaml = render(kustomization);
        let docs = documents(&yaml);
        let mut kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        kinds.sort_unstable();
        assert_eq!(
            kinds,
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "ConfigMap",
                "ConfigMap",
                "CustomResourceDefinition",
                "DaemonSet",
                "Namespace",
                "PodMonitor",
                "PriorityClass",
                "Service",
                "ServiceAccount",
                "ServiceMonitor"
            ],
            "{kustomization}"
        );
        for doc in &docs {
            let namespaced = !matches!(
                doc["kind"].as_str(),
                Some(
                    "Namespace"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "CustomResourceDefinition"
                        | "PriorityClass"
                )
            );
            if namespaced {
                assert_eq!(doc["metadata"]["namespace"], NAMESPACE, "{kustomization}: {doc}");
            }
        }

        let file = tmp.path().join(format!("{}.yaml", kustomization.replace('/', "-")));
        fs::write(&file, &yaml).expect("write rendered manifests");
        for version in KUBERNETES_VERSIONS {
            let out = output(
                Command::new("kubernetes-validate")
                    .args(["--strict", "--quiet", "-k", version])
                    .arg(&file),
            );
            let report = text(&out);
            assert!(out.status.success(), "{kustomization} against {version}:\n{report}");
            // Kinds without a schema are only a warning: a typo in a built-in kind's
            // apiVersion would pass unnoticed, so only the operator's kinds may be missing.
            for line in report.lines().filter(|l| l.contains("Couldn't find schema")) {
                assert!(
                    OPERATOR_KINDS.iter().any(|k| {
                        line.contains(&format!(
                            "kind {k} with api version monitoring.coreos.com/v1"
                        ))
                    }),
                    "{kustomization}: unexpected kind without a schema: {line}"
                );
            }
        }
    }

    // The validator is strict: a field the API does not know is an error.
    let mut docs = documents(&render("overlays/enforce"));
    let ds = docs.iter_mut().find(|d| d["kind"] == "DaemonSet").expect("DaemonSet");
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] =
        Value::Bool(false);
    let bad = tmp.path().join("bad.json");
    let bad_stream: Vec<String> = docs.iter().map(Value::to_string).collect();
    fs::write(&bad, bad_stream.join("\n---\n")).expect("write");
    let out = output(Command::new("kubernetes-validate").args(["--strict", "--quiet"]).arg(&bad));
    assert!(!out.status.success(), "an unknown field passed validation: {}", text(&out));
    assert!(text(&out).contains("privilegd"), "{}", text(&out));
}

#[test]
fn service_monitors_probes_and_rbac_fit_the_agent() {
    for kustomization in KUSTOMIZATIONS {
        let docs = documents(&render(kustomization));
        let ds = find(&docs, "DaemonSet", "sensor");
        let pod = &ds["spec"]["template"]["spec"];
        let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
        let container = agent_container(pod);
        assert!(selects(&ds["spec"]["selector"]["matchLabels"], pod_labels), "{kustomization}");

        // The metrics port: the config's metrics_addr, the container port, the probes.
        let port = container["ports"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "metrics"))
            .expect("container port named metrics");
        assert_eq!(port["containerPort"], u64::from(PORT), "{kustomization}");
        let config = find_configmap(&docs, pod, "config");
        let config_yaml = config["data"]["sensor.yaml"].as_str().expect("sensor.yaml in config");
        let config: Value = serde_yaml_ng::from_str(config_yaml).expect("config is YAML");
        assert_eq!(config["metrics_addr"], format!("0.0.0.0:{PORT}"), "{kustomization}");
        for (probe, path) in [
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ] {
            assert_eq!(container[probe]["httpGet"]["path"], path, "{kustomization} {probe}");
            assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{kustomization} {probe}");
        }

        // The headless Service selects the agents and is annotated for scraping.
        let svc = find(&docs, "Service", "sensor-metrics");
        assert_eq!(svc["spec"]["clusterIP"], "None", "{kustomization}");
        assert!(selects(&svc["spec"]["selector"], pod_labels), "{kustomization}: {svc}");
        let svc_port = &svc["spec"]["ports"][0];
        assert_eq!(svc_port["targetPort"], "metrics", "{kustomization}");
        let annotations = &svc["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{kustomization}");
        assert_eq!(annotations["prometheus.io/port"], PORT.to_string(), "{kustomization}");
        assert_eq!(annotations["prometheus.io/path"], "/metrics", "{kustomization}");

        // ServiceMonitor → Service port by name; PodMonitor → container port by name.
        let sm = only(&docs, "ServiceMonitor");
        assert!(selects(&sm["spec"]["selector"]["matchLabels"], &svc["metadata"]["labels"]));
        assert_eq!(strings(&sm["spec"]["namespaceSelector"]["matchNames"]), [NAMESPACE]);
        assert_eq!(sm["spec"]["endpoints"][0]["port"], svc_port["name"], "{kustomization}");
        assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics", "{kustomization}");
        let pm = only(&docs, "PodMonitor");
        assert!(selects(&pm["spec"]["selector"]["matchLabels"], pod_labels), "{kustomization}");
        assert_eq!(strings(&pm["spec"]["namespaceSelector"]["matchNames"]), [NAMESPACE]);
        assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics", "{kustomization}");
        for monitor in [sm, pm] {
            assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1", "{kustomization}");
        }

        // Runs everywhere, on the host's network and PIDs, unprivileged but for its
        // capabilities, with a read-only root, at our priority, as our service account.
        assert_eq!(pod["hostNetwork"], true, "{kustomization}");
        assert_eq!(pod["hostPID"], true, "{kustomization}");
        assert!(
            pod["tolerations"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["operator"] == "Exists" && t["key"].is_null())),
            "{kustomization}: must tolerate every taint"
        );
        let security = &container["securityContext"];
        assert_eq!(security["privileged"], false, "{kustomization}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{kustomization}");
        assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"], "{kustomization}");
        let priority = pod["priorityClassName"].as_str().expect("priorityClassName");
        find(&docs, "PriorityClass", priority);
        assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate", "{kustomization}");
        assert!(!ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"].is_null());
        let node_env = container["env"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["name"] == "NODE_NAME"))
            .expect("NODE_NAME env");
        assert_eq!(node_env["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
        assert!(strings(&container["args"]).contains(&"--node-name=$(NODE_NAME)".to_owned()));

        let account = pod["serviceAccountName"].as_str().expect("serviceAccountName");
        find(&docs, "ServiceAccount", account);
        let binding = only(&docs, "ClusterRoleBinding");
        assert_eq!(binding["subjects"][0]["name"], account, "{kustomization}");
        assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE, "{kustomization}");
        let role = find(&docs, "ClusterRole", binding["roleRef"]["name"].as_str().expect("role"));
        let mut granted: Vec<String> = Vec::new();
        for rule in role["rules"].as_array().expect("rules") {
            assert_eq!(strings(&rule["verbs"]), ["get", "list", "watch"], "{kustomization}");
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    granted.push(format!("{group}/{resource}"));
                }
            }
        }
        granted.sort();
        assert_eq!(
            granted,
            [
                "/namespaces",
                "/pods",
                "cilium.io/ciliumclusterwidenetworkpolicies",
                "cilium.io/ciliumnetworkpolicies",
                "networking.k8s.io/networkpolicies",
                "sensor.dev/hostpolicies"
            ],
            "{kustomization}"
        );
    }
}

/// The ConfigMap behind the pod volume named `volume`.
fn find_configmap<'a>(docs: &'a [Value], pod: &Value, volume: &str) -> &'a Value {
    let vol = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == volume))
        .unwrap_or_else(|| panic!("no volume {volume}"));
    find(docs, "ConfigMap", vol["configMap"]["name"].as_str().expect("configMap volume"))
}

/// Runs the CRD schema check of tests/scripts on `instances`; returns (success, report).
fn validate_host_policies(manifests: &Path, instances: &[PathBuf]) -> (bool, String) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/validate_crd_instances.py");
    let out = output(Command::new("python3").arg(script).arg(manifests).args(instances));
    (out.status.success(), text(&out))
}

#[test]
fn example_host_policies_validate_against_the_crd() {
    let tmp = TempDir::new("crd");
    let yaml = render("base");
    let docs = documents(&yaml);
    let crd = find(&docs, "CustomResourceDefinition", "hostpolicies.sensor.dev");
    assert_eq!(crd["spec"]["group"], "sensor.dev");
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert_eq!(crd["spec"]["names"]["kind"], "HostPolicy");
    assert_eq!(crd["spec"]["names"]["plural"], "hostpolicies");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        (&version["name"], &version["served"], &version["storage"]),
        (&Value::from("v1alpha1"), &Value::Bool(true), &Value::Bool(true))
    );
    let manifests = tmp.path().join("base.yaml");
    fs::write(&manifests, &yaml).expect("write manifests");

    let mut examples: Vec<PathBuf> = fs::read_dir(deploy_dir().join("examples/host-policies"))
        .expect("deploy/examples/host-policies")
        .map(|e| e.expect("dir entry").path())
        .collect();
    examples.sort();
    assert_eq!(examples.len(), 2, "{examples:?}");
    let (ok, report) = validate_host_policies(&manifests, &examples);
    assert!(ok, "{report}");
    assert!(report.contains("checked 2 resources, 0 errors"), "{report}");

    // Each mistake is rejected, naming where it is.
    let bad = [
        ("action: Kill\n", "spec.action"),
        ("executable: [{path: /usr/bin/nc}]\n", "'executable' was unexpected"),
        ("executables: [{path: /usr/bin/nc, prefix: /tmp/}]\n", "spec.executables.0"),
        ("executables: [{path: usr/bin/nc}]\n", "spec.executables.0.path"),
        ("files: [{path: /etc/shadow, access: [exec]}]\n", "spec.files.0.access.0"),
        ("binds: [{port: 70000}]\n", "spec.binds.0.port"),
        ("binds: [{port: 22, protocol: SCTP}]\n", "spec.binds.0.protocol"),
        ("noRoot: {action: Kill}\n", "spec.noRoot.action"),
        ("syscalls: [{names: []}]\n", "spec.syscalls.0.names"),
        ("selector: {podSelector: {matchExpressions: [{key: a, operator: Is}]}}\n", "operator"),
    ];
    for (i, (spec, expected)) in bad.iter().enumerate() {
        let file = tmp.path().join(format!("bad-{i}.yaml"));
        let body = spec.lines().map(|l| format!("  {l}\n")).collect::<String>();
        fs::write(
            &file,
            format!("apiVersion: sensor.dev/v1alpha1\nkind: HostPolicy\nmetadata: {{name: b}}\nspec:\n{body}"),
        )
        .expect("write bad policy");
        let (ok, report) = validate_host_policies(&manifests, &[file]);
        assert!(!ok, "accepted: {spec}{report}");
        assert!(report.contains(expected), "{spec}: expected {expected:?} in:\n{report}");
    }
}

fn policy_check(paths: &[PathBuf], endpoints: &Path) -> Output {
    output(
        Command::new(sensor_bin())
            .args(["policy", "check"])
            .args(paths)
            .arg("--endpoints-file")
            .arg(endpoints),
    )
}

#[test]
fn example_and_deployed_network_policies_pass_policy_check() {
    let dir = deploy_dir();
    let endpoints = dir.join("base/config/endpoints.yaml");
    let examples = dir.join("examples/policies");
    let deployed = dir.join("policies");
    for path in [&examples, &deployed] {
        let out = policy_check(std::slice::from_ref(path), &endpoints);
        assert!(out.status.success(), "{}: {}", path.display(), text(&out));
    }
    let yamls = |path: &Path| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(path)
            .expect("policy dir")
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(yamls(&examples).len(), 2, "two example network policies");

    // What `sensor policy check deploy/policies/` checks is what the ConfigMap deploys.
    let docs = documents(&render("base"));
    let pod = &find(&docs, "DaemonSet", "sensor")["spec"]["template"]["spec"];
    let policies = find_configmap(&docs, pod, "policies");
    let keys: Vec<String> = policies["data"].as_object().expect("data").keys().cloned().collect();
    assert_eq!(keys, yamls(&deployed), "deploy/policies/Kustomization must list every policy");

    // A broken policy beside the examples fails the check, naming its file.
    let tmp = TempDir::new("pc");
    for name in yamls(&examples) {
        fs::copy(examples.join(&name), tmp.path().join(&name)).expect("copy example");
    }
    fs::write(
        tmp.path().join("zz-broken.yaml"),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: a}\n\
         spec:\n  endpointSelector: {}\n  ingress:\n  - fromCIDR: [10.0.0.0/40]\n",
    )
    .expect("write broken policy");
    let out = policy_check(&[tmp.path().to_owned()], &endpoints);
    assert!(!out.status.success(), "broken policy passed: {}", text(&out));
    assert!(text(&out).contains("zz-broken.yaml"), "{}", text(&out));
}

/// Writes `data` the way the kubelet materialises a ConfigMap volume: files in a timestamped
/// directory, `..data` pointing at it, and one symlink per key through `..data`.
fn write_configmap(dir: &Path, data: &Map<String, Value>, stamp: &str) {
    let version = format!("..{stamp}");
    fs::create_dir_all(dir.join(&version)).expect("configmap dir");
    for (key, value) in data {
        fs::write(dir.join(&version).join(key), value.as_str().expect("string data"))
            .expect("write configmap key");
        let link = dir.join(key);
        if fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{key}"), &link).expect("key symlink");
        }
    }
    // Swap `..data` atomically, as the kubelet does on an update.
    let tmp = dir.join("..data_tmp");
    symlink(&version, &tmp).expect("..data_tmp symlink");
    fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
}

/// `$(VAR)` references in container args, expanded as the kubelet does.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_owned();
    for (name, value) in env {
        out = out.replace(&format!("$({name})"), value);
    }
    assert!(!out.contains("$("), "unresolved variable in {arg:?}");
    out
}

/// Maps a path inside the container to the test's copy of the volume mounted there.
fn remap(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount_path, dir) in mounts {
        if let Some(rest) = value.strip_prefix(mount_path.as_str())
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return format!("{}{rest}", dir.display());
        }
    }
    value.to_owned()
}

fn remap_arg(arg: &str, mounts: &[(String, PathBuf)]) -> String {
    match arg.split_once('=') {
        Some((flag, value)) if flag.starts_with("--") => format!("{flag}={}", remap(value, mounts)),
        _ => remap(arg, mounts),
    }
}

fn remap_strings(value: &mut Value, mounts: &[(String, PathBuf)]) {
    match value {
        Value::String(s) => *s = remap(s, mounts),
        Value::Array(items) => items.iter_mut().for_each(|v| remap_strings(v, mounts)),
        Value::Object(map) => map.values_mut().for_each(|v| remap_strings(v, mounts)),
        _ => {}
    }
}

/// A capability set (`CapEff:`, `CapBnd:`, ...) of process `pid` from /proc.
fn capabilities(pid: &str, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn capability_bit(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other} not known to this test: add its bit"),
    }
}

/// Starts the real sensor the way the DaemonSet of `overlay` would: its container args (with
/// NODE_NAME from the "downward API"), its ConfigMaps laid out as the kubelet does at their
/// mount paths (remapped to a temp dir), and only the capabilities it adds.
fn run_as_daemonset(overlay: &str, expected_mode: &str) {
    if !privileged() {
        return;
    }
    let docs = documents(&render(overlay));
    let ds = find(&docs, "DaemonSet", "sensor");
    let pod = &ds["spec"]["template"]["spec"];
    let container = agent_container(pod);
    assert!(container["command"].is_null(), "the image's entrypoint is the sensor");

    let mut env = BTreeMap::new();
    for var in container["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("env name").to_owned();
        let value = match (&var["value"], var["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Value::String(v), _) => v.clone(),
            (_, Some("spec.nodeName")) => NODE_NAME.to_owned(),
            (_, Some("status.hostIP")) => HOST_IP.to_owned(),
            _ => panic!("env {name}: source not supported by this test: {var}"),
        };
        env.insert(name, value);
    }

    let root = TempDir::new("ds");
    let mut mounts = Vec::new();
    let mut configmap_dirs = BTreeMap::new();
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        let name = mount["name"].as_str().expect("mount name");
        let mount_path = mount["mountPath"].as_str().expect("mountPath").to_owned();
        let volume = pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
            .unwrap_or_else(|| panic!("volumeMount {name} has no volume"));
        if let Some(host_path) = volume["hostPath"]["path"].as_str() {
            // The test runs on the host: the container's path is the host's.
            mounts.push((mount_path, PathBuf::from(host_path)));
            continue;
        }
        let configmap = find_configmap(&docs, pod, name);
        assert!(configmap["binaryData"].is_null(), "{name}: binaryData not supported");
        let dir = root.path().join(name);
        write_configmap(
            &dir,
            configmap["data"].as_object().expect("data"),
            "2026_01_01_00_00_00.1",
        );
        configmap_dirs.insert(name.to_owned(), (dir.clone(), configmap["data"].clone()));
        mounts.push((mount_path, dir));
    }

    let args: Vec<String> =
        strings(&container["args"]).iter().map(|a| remap_arg(&expand(a, &env), &mounts)).collect();
    // The config file names files in other volumes: point those at the copies too. JSON is
    // YAML, so the remapped config is written back as JSON.
    let config_path =
        args.iter().find_map(|a| a.strip_prefix("--config=")).expect("--config=FILE in the args");
    let mut config: Value = serde_yaml_ng::from_str(
        &fs::read_to_string(config_path).expect("config file from the ConfigMap"),
    )
    .expect("config is YAML");
    remap_strings(&mut config, &mounts);
    fs::write(config_path, config.to_string()).expect("write remapped config");

    let caps: Vec<String> = strings(&container["securityContext"]["capabilities"]["add"]);
    let bounding: Vec<String> = caps.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
    let wrapper = [
        "setpriv".to_owned(),
        "--inh-caps=-all".to_owned(),
        format!("--bounding-set=-all,{}", bounding.join(",")),
        "--".to_owned(),
    ];
    let node = Netns::new("node");
    // The cluster: a real API server with the DaemonSet's RBAC (its ClusterRole bound to the
    // sensor's service account) and CRDs. The kubelet would mount the service account's token;
    // here KUBECONFIG carries the same identity (kube's client reads it before in-cluster).
    let api = ApiServer::start(&node);
    let mut wrapper = wrapper.to_vec();
    wrapper.splice(0..0, ["env".to_owned(), format!("KUBECONFIG={}", api.kubeconfig().display())]);
    let sensor = Sensor::start_argv(&node, &wrapper, &args);

    // It runs with exactly the DaemonSet's capabilities (those this test has: a sandbox may
    // lack some, e.g. CAP_SYS_RESOURCE, which the agent can do without).
    let wanted = caps.iter().fold(0_u64, |mask, c| mask | 1 << capability_bit(c));
    let expected = wanted & capabilities("self", "CapBnd:");
    let effective = capabilities(&sensor.pid().to_string(), "CapEff:");
    assert_eq!(effective, expected, "CapEff {effective:x}, DaemonSet adds {caps:?}");

    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().expect("probe path");
        assert_eq!(sensor.get(path).0, 200, "{probe} {path}");
    }
    let started = wait_until("the start-up log line", Duration::from_secs(10), || {
        sensor
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "sensor started")
    });
    assert_eq!(started["mode"], expected_mode, "{started}");
    assert_eq!(started["node"], NODE_NAME, "{started}");
    sensor
        .wait_metric("sensor_policy_reloads_total", &[("outcome", "applied")], |v| v == Some(1.0));
    // Every API source listed with the DaemonSet's ClusterRole, none stale.
    for resource in [
        "pods/local",
        "pods/cluster",
        "namespaces",
        "networkpolicies",
        "ciliumnetworkpolicies",
        "ciliumclusterwidenetworkpolicies",
        "hostpolicies",
    ] {
        let metrics = sensor.metrics();
        let labels = [("resource", resource)];
        assert_eq!(
            metrics.get("sensor_kubernetes_source_synced", &labels),
            Some(1.0),
            "{resource}"
        );
        assert_eq!(metrics.get("sensor_kubernetes_source_stale", &labels), Some(0.0), "{resource}");
    }

    // A ConfigMap update (the kubelet swaps `..data`) reaches the running agent.
    let (dir, data) = &configmap_dirs["policies"];
    let mut data = data.as_object().expect("policies data").clone();
    for text in data.values_mut() {
        *text = Value::String(format!("# updated\n{}", text.as_str().expect("policy text")));
    }
    write_configmap(dir, &data, "2026_01_01_00_00_01.2");
    sensor.wait_metric("sensor_policy_reloads_total", &[("outcome", "applied")], |v| {
        v.is_some_and(|v| v >= 2.0)
    });
    let rejected = sensor.metrics().get("sensor_policy_reloads_total", &[("outcome", "rejected")]);
    assert!(matches!(rejected, None | Some(0.0)), "rejected reloads: {}", sensor.log());
}

#[test]
fn detect_overlay_daemonset_starts_the_sensor() {
    run_as_daemonset("overlays/detect", "Detect");
}

#[test]
fn enforce_overlay_daemonset_starts_the_sensor() {
    run_as_daemonset("overlays/enforce", "Enforce");
}
