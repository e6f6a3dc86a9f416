//! A real Kubernetes API server for the Kubernetes source tests: etcd and kube-apiserver
//! (v1.20.2, `cargo xtask kube-apiserver`) on the loopback of a test's node namespace, where
//! the sensor runs, so nothing listens outside the namespaces the test made.
//!
//! TLS with a throwaway CA made by openssl, static token authentication: an admin token for
//! the test, and one for the sensor whose user is the DaemonSet's service account, bound to
//! the ClusterRole of `deploy/base/rbac.yaml` (so the tests also prove that role suffices).
//! The CRDs installed: a minimal CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy
//! (cilium.io/v2, schema-less) and `deploy/base/crd-hostpolicies.yaml` as shipped (v1.20
//! accepts it unchanged but drops its `x-kubernetes-validations` CEL rules (Kubernetes
//! >= 1.23): those two cross-field checks are not exercised here).
//!
//! Only the API server runs (no scheduler, controllers or kubelet): a pod stays Pending
//! until the test writes its status ([`ApiServer::set_pod_running`]).

use std::{
    fs,
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

use crate::{Netns, TempDir, run, wait_until};

const ADMIN_TOKEN: &str = "se2e-admin-token";
const SENSOR_TOKEN: &str = "se2e-sensor-token";
/// The user the sensor's token authenticates as: the DaemonSet's service account.
pub const SENSOR_USER: &str = "system:serviceaccount:sensor-system:sensor";

/// `$KUBE_APISERVER_BIN` (set by `cargo xtask test`), else the build in `target/tools`.
pub fn kube_apiserver_bin() -> PathBuf {
    let path = std::env::var_os("KUBE_APISERVER_BIN").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/tools/kube-apiserver-1.20.2/kube-apiserver")
        },
        PathBuf::from,
    );
    assert!(path.is_file(), "{} missing: run `cargo xtask kube-apiserver` first", path.display());
    path
}

/// `$ETCD_BIN`, else `etcd` on PATH (Debian's etcd-server).
pub fn etcd_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ETCD_BIN") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("etcd")).find(|f| f.is_file()))
        .expect("etcd missing: run `cargo xtask kube-apiserver` (installs etcd-server)")
}

pub struct ApiServer {
    netns: PathBuf,
    apiserver: Option<Child>,
    etcd: Option<Child>,
    /// The API server's port on the namespace's loopback.
    pub port: u16,
    etcd_url: String,
    dir: TempDir,
}

impl ApiServer {
    /// Starts etcd and the API server in `netns`, waits for `/readyz`, then installs the
    /// sensor's RBAC and the CRDs.
    pub fn start(netns: &Netns) -> Self {
        let dir = TempDir::new("kapi");
        let d = dir.path();
        make_pki(d);
        fs::write(
            d.join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},se2e-admin,se2e-admin-uid,\"system:masters\"\n\
                 {SENSOR_TOKEN},{SENSOR_USER},se2e-sensor-uid,\"system:serviceaccounts,system:serviceaccounts:sensor-system\"\n"
            ),
        )
        .expect("write tokens.csv");
        // Free ports on the namespace's own loopback.
        let [etcd_client, etcd_peer, port] = netns.enter(|| {
            let listeners: Vec<TcpListener> =
                (0..3).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind :0")).collect();
            let port = |i: usize| listeners[i].local_addr().expect("local addr").port();
            [port(0), port(1), port(2)]
        });
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let mut server = Self {
            netns: netns.path(),
            apiserver: None,
            etcd: None,
            port,
            etcd_url: etcd_url.clone(),
            dir,
        };
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let data = server.dir.path().join("etcd");
        server.etcd = Some(server.spawn(
            &etcd_bin(),
            &[
                "--name=se2e".into(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=se2e={peer_url}"),
            ],
            "etcd.log",
        ));
        wait_until("etcd to answer /health", Duration::from_secs(30), || {
            server.check_running();
            server.curl_plain(&format!("{etcd_url}/health")).contains("true").then_some(())
        });
        server.start_apiserver();
        server.install_basics();
        server
    }

    /// Runs `program` in the namespace, its output appended to `log` (a restarted API
    /// server's log follows the first run's).
    fn spawn(&self, program: &Path, args: &[String], log: &str) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))
            .expect("open log");
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(program)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()))
    }

    fn start_apiserver(&mut self) {
        let d = self.dir.path().display().to_string();
        let args: Vec<String> = vec![
            format!("--etcd-servers={}", self.etcd_url),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.port),
            // The namespace has no default route to pick an address from; nothing connects
            // to this one (no endpoints are reconciled).
            "--advertise-address=10.77.255.254".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={d}/certs"),
            format!("--tls-cert-file={d}/apiserver.crt"),
            format!("--tls-private-key-file={d}/apiserver.key"),
            format!("--token-auth-file={d}/tokens.csv"),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={d}/sa.pub"),
            format!("--service-account-signing-key-file={d}/sa.key"),
            "--service-cluster-ip-range=10.77.254.0/24".into(),
            // Pods without service account tokens (no controllers create them).
            "--disable-admission-plugins=ServiceAccount".into(),
            // Old versions are compacted away quickly: a resumed watch may get 410 Gone.
            "--etcd-compaction-interval=10s".into(),
            "--profiling=false".into(),
        ];
        let child = self.spawn(&kube_apiserver_bin(), &args, "apiserver.log");
        self.apiserver = Some(child);
        wait_until("kube-apiserver /readyz to answer 200", Duration::from_secs(120), || {
            self.check_running();
            (self.request("GET", "/readyz", None).0 == 200).then_some(())
        });
    }

    /// Panics with the logs when etcd or the API server exited.
    fn check_running(&mut self) {
        let mut exited = None;
        for (child, log) in [(&mut self.etcd, "etcd.log"), (&mut self.apiserver, "apiserver.log")] {
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                *child = None;
                exited = Some((log, status));
            }
        }
        if let Some((log, status)) = exited {
            panic!("{log}: process exited ({status}):\n{}", self.log_tail(log));
        }
    }

    fn log_tail(&self, log: &str) -> String {
        let text = fs::read_to_string(self.dir.path().join(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The sensor's RBAC from deploy/, and the CRDs.
    fn install_basics(&self) {
        let rbac = fs::read_to_string(repo_path("deploy/base/rbac.yaml")).expect("rbac.yaml");
        for doc in rbac.split("\n---\n") {
            // The namespace (and its ServiceAccount) need not exist: the token names the user.
            if doc.contains("kind: ClusterRole") {
                self.apply_yaml(doc);
            }
        }
        for (kind, plural, scope) in [
            ("CiliumNetworkPolicy", "ciliumnetworkpolicies", "Namespaced"),
            ("CiliumClusterwideNetworkPolicy", "ciliumclusterwidenetworkpolicies", "Cluster"),
        ] {
            self.apply(&json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": format!("{plural}.cilium.io")},
                "spec": {
                    "group": "cilium.io",
                    "scope": scope,
                    "names": {
                        "kind": kind,
                        "listKind": format!("{kind}List"),
                        "plural": plural,
                        "singular": kind.to_lowercase(),
                    },
                    "versions": [{
                        "name": "v2", "served": true, "storage": true,
                        "schema": {"openAPIV3Schema": {
                            "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                        }},
                    }],
                },
            }));
        }
        let crd = fs::read_to_string(repo_path("deploy/base/crd-hostpolicies.yaml"))
            .expect("crd-hostpolicies.yaml");
        self.apply_yaml(&crd);
        for path in [
            "/apis/cilium.io/v2/ciliumnetworkpolicies",
            "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
            "/apis/sensor.dev/v1alpha1/hostpolicies",
        ] {
            wait_until(&format!("{path} to be served"), Duration::from_secs(30), || {
                (self.request("GET", path, None).0 == 200).then_some(())
            });
        }
    }

    /// A kubeconfig for the sensor (its own token), written into the server's directory.
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.path().join("sensor.kubeconfig");
        fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: se2e\n  cluster:\n    \
                 server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n\
                 - name: sensor\n  user:\n    token: {SENSOR_TOKEN}\ncontexts:\n\
                 - name: se2e\n  context: {{cluster: se2e, user: sensor}}\ncurrent-context: se2e\n",
                self.port,
                self.dir.path().join("ca.crt").display()
            ),
        )
        .expect("write kubeconfig");
        path
    }

    /// SIGKILL the API server (etcd keeps its data); returns once it is reaped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the API server again on the same port and etcd, and waits for `/readyz`.
    pub fn restart(&mut self) {
        self.kill();
        self.start_apiserver();
    }

    /// `method` on `path` with the admin token; `body` is (content type, text).
    /// Returns (status, body); status 0 when nothing answered.
    pub fn request(&self, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, String) {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .args(["--", "curl", "-s", "-m", "10", "-w", "\n%{http_code}", "-X", method])
            .arg("--cacert")
            .arg(self.dir.path().join("ca.crt"))
            .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")]);
        if let Some((content_type, _)) = body {
            cmd.args(["-H", &format!("Content-Type: {content_type}"), "--data-binary", "@-"]);
        }
        let mut child = cmd
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run curl");
        let mut stdin = child.stdin.take().expect("curl stdin");
        if let Some((_, text)) = body {
            stdin.write_all(text.as_bytes()).expect("write request body");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("wait curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    fn curl_plain(&self, url: &str) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(["--", "curl", "-s", "-m", "2", url])
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates `object`, or replaces it when it exists (an update from its current
    /// resourceVersion). Returns the stored object.
    pub fn apply(&self, object: &Value) -> Value {
        let (collection, name) = paths(object);
        let (status, body) =
            self.request("POST", &collection, Some(("application/json", &object.to_string())));
        let (status, body) = if status == 409 {
            let path = format!("{collection}/{name}");
            let (status, current) = self.request("GET", &path, None);
            assert_eq!(status, 200, "GET {path}: {current}");
            let current: Value = serde_json::from_str(&current).expect("JSON answer");
            let mut object = object.clone();
            object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            self.request("PUT", &path, Some(("application/json", &object.to_string())))
        } else {
            (status, body)
        };
        assert!(status == 200 || status == 201, "apply {collection}/{name}: {status} {body}");
        serde_json::from_str(&body).expect("JSON answer")
    }

    /// [`ApiServer::apply`] of one YAML document.
    pub fn apply_yaml(&self, text: &str) -> Value {
        self.apply(&serde_yaml_ng::from_str(text).expect("YAML document"))
    }

    /// Deletes the object at `path` (e.g. from [`object_path`]).
    pub fn delete(&self, path: &str) {
        let (status, body) = self.request("DELETE", path, None);
        assert!(status == 200 || status == 202, "DELETE {path}: {status} {body}");
    }

    /// Writes a pod's status through the `/status` subresource as a kubelet would once its
    /// containers run: phase Running, `ips` as podIP/podIPs, one running container.
    pub fn set_pod_running(&self, namespace: &str, name: &str, ips: &[&str], container_id: &str) {
        let patch = json!({"status": {
            "phase": "Running",
            "podIP": ips.first(),
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{
                "name": "main", "ready": true, "restartCount": 0, "started": true,
                "image": "example.invalid/app:1", "imageID": "",
                "containerID": format!("containerd://{container_id}"),
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
            }],
        }});
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/status");
        let (status, body) = self.request(
            "PATCH",
            &path,
            Some(("application/merge-patch+json", &patch.to_string())),
        );
        assert_eq!(status, 200, "PATCH {path}: {body}");
    }

    /// Creates a pod on `node` with `labels` and marks it running with `ip`.
    pub fn add_running_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &Value,
        node: &str,
        ip: &str,
    ) {
        self.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "main", "image": "example.invalid/app:1"}],
            },
        }));
        // A containerd-style id (64 hex digits) derived from the name.
        let hex: String =
            format!("{namespace}/{name}").bytes().map(|b| format!("{b:02x}")).collect();
        let id = format!("{hex:0>64}");
        self.set_pod_running(namespace, name, &[ip], &id[id.len() - 64..]);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- kube-apiserver log (tail) ---\n{}", self.log_tail("apiserver.log"));
        }
        for child in [self.apiserver.take(), self.etcd.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        // The TempDir (etcd data, keys, logs) goes with `self.dir`.
    }
}

/// A file of this repository.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

/// (collection path, name) of an object: `/api/v1/namespaces/shop/pods`, `server`.
fn paths(object: &Value) -> (String, String) {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let kind = object["kind"].as_str().expect("kind").to_lowercase();
    let plural = match kind.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{kind}s"),
    };
    let group = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let name = object["metadata"]["name"].as_str().expect("metadata.name").to_owned();
    let collection = match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{group}/namespaces/{ns}/{plural}"),
        None => format!("{group}/{plural}"),
    };
    (collection, name)
}

/// The path of an object, for [`ApiServer::delete`] and GETs.
pub fn object_path(object: &Value) -> String {
    let (collection, name) = paths(object);
    format!("{collection}/{name}")
}

/// A CA, the API server's certificate for 127.0.0.1 signed by it, and the service account
/// key pair, in `dir`.
fn make_pki(dir: &Path) {
    let p = |name: &str| dir.join(name).display().to_string();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=se2e-ca",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
        ],
    );
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            &p("apiserver.key"),
            "-out",
            &p("apiserver.csr"),
        ],
    );
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &p("apiserver.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-extfile",
            &p("ext.cnf"),
            "-out",
            &p("apiserver.crt"),
        ],
    );
    run("openssl", &["genrsa", "-out", &p("sa.key"), "2048"]);
    run("openssl", &["rsa", "-in", &p("sa.key"), "-pubout", "-out", &p("sa.pub")]);
}
