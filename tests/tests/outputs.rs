//! Output channels with the real sensor producing real exec events: a size-rotated file,
//! syslog over UDP, TCP and a unix socket into a real rsyslogd, and an HTTPS webhook served
//! by a test server (rustls, certificates made with the openssl CLI for the test).

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sensor_e2e::{Cgroup, Netns, Sensor, TempDir, privileged, run, wait_until};
use serde_json::Value;

const PADDING: usize = 200;

/// Runs `/bin/true seq-NNNN-xxx…` `count` times in `cgroup`, one after the other.
fn exec_sequence(cgroup: &Cgroup, tag: &str, count: usize) {
    let pad = "x".repeat(PADDING);
    for i in 0..count {
        let mut child = cgroup.spawn(Command::new("/bin/true").arg(format!("{tag}-{i:04}-{pad}")));
        assert!(child.wait().expect("wait").success());
    }
}

/// The sequence number of an exec event of `cgroup_id` whose argument starts with `tag`.
fn seq_of(event: &Value, cgroup_id: u64, tag: &str) -> Option<usize> {
    let process = &event["process_exec"]["process"];
    if process["cgroup_id"] != cgroup_id {
        return None;
    }
    let args = process["arguments"].as_str()?;
    args.strip_prefix(tag)?.strip_prefix('-')?.get(..4)?.parse().ok()
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

#[test]
fn file_output_rotates_at_the_size_bound_and_keeps_max_files() {
    if !privileged() {
        return;
    }
    let dir = TempDir::new("file");
    let path = dir.path().join("events.json");
    // 0.02 MiB = 20971 bytes per file; 4 files hold ~40 exec+exit pairs of these events,
    // and the test makes 150.
    let max_bytes = (0.02_f64 * 1024.0 * 1024.0) as u64;
    let node = Netns::new("node");
    let sensor = Sensor::start(
        &node,
        &format!(
            "outputs:\n- stdout: {{}}\n- file: {{path: {}, max_size_mb: 0.02, max_files: 3, \
             types: [host]}}\n",
            path.display()
        ),
        &[],
    );
    let cgroup = Cgroup::new();
    let cgroup_id = cgroup.id();
    let count = 150;
    exec_sequence(&cgroup, "rot", count);

    // Other processes on the host add events too, and rotation may run while the files are
    // read: retry until one reading shows the newest of our events, oldest file first.
    let (files, seqs) =
        wait_until("the last exec event in the rotated files", Duration::from_secs(20), || {
            let mut files = Vec::new();
            let mut seqs = Vec::new();
            for p in [numbered(&path, 3), numbered(&path, 2), numbered(&path, 1), path.clone()] {
                let text = fs::read_to_string(&p).ok()?;
                for line in text.lines() {
                    let event: Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", p.display()));
                    seqs.extend(seq_of(&event, cgroup_id, "rot"));
                }
                files.push((p, text.len() as u64));
            }
            let contiguous = seqs.windows(2).all(|w| w[1] == w[0] + 1);
            (seqs.last() == Some(&(count - 1)) && contiguous).then_some((files, seqs))
        });
    for (p, len) in &files {
        assert!(
            *len > 0 && *len <= max_bytes,
            "{} has {len} bytes, bound {max_bytes}",
            p.display()
        );
    }
    assert!(
        !numbered(&path, 4).exists(),
        "max_files is 3: {} must not exist",
        numbered(&path, 4).display()
    );
    assert!(seqs[0] > 0, "the oldest events must have been rotated away: {seqs:?}");
    let m = sensor.metrics();
    let sent = m.get("sensor_output_sent_total", &[("output", "file")]).unwrap_or(0.0);
    assert!(sent >= count as f64, "file sent {sent}\n{}", m.text);
    assert_eq!(
        m.get("sensor_output_dropped_total", &[("output", "file")]),
        Some(0.0),
        "{}",
        m.text
    );
    assert_eq!(m.get("sensor_output_errors_total", &[("output", "file")]), Some(0.0), "{}", m.text);
}

// ---- syslog -------------------------------------------------------------------------------

const UDP_PORT: u16 = 5514;
const TCP_PORT: u16 = 6514;

/// `rsyslogd -n` in the sensor's network namespace, with imudp and imtcp on 127.0.0.1 and
/// imuxsock on a socket in its own directory, writing every message as a JSON object of its
/// parsed RFC 5424 fields. Killed on drop.
struct Rsyslog {
    child: Child,
    dir: TempDir,
}

impl Rsyslog {
    fn start(node: &Netns) -> Self {
        let dir = TempDir::new("rsyslog");
        let d = dir.path().display();
        let config = format!(
            r#"global(workDirectory="{d}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
module(load="imuxsock" SysSock.Use="off")
input(type="imudp" address="127.0.0.1" port="{UDP_PORT}")
input(type="imtcp" address="127.0.0.1" port="{TCP_PORT}")
input(type="imuxsock" socket="{d}/log.sock" useSpecialParser="off" parseHostname="on" useSysTimeStamp="off")
template(name="fields" type="list" option.jsonf="on") {{
  property(outname="input" name="inputname" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="facility" name="syslogfacility" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
action(type="omfile" file="{d}/out.json" template="fields")
"#
        );
        let conf = dir.path().join("rsyslog.conf");
        fs::write(&conf, config).expect("write rsyslog.conf");
        let stderr = fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .args(["--", "rsyslogd", "-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn rsyslogd (apt-get install rsyslog)");
        let rsyslog = Self { child, dir };
        // Ready when a probe sent through each input has been written out.
        let udp = node.enter(|| std::net::UdpSocket::bind("127.0.0.1:0").expect("udp"));
        let probe = "<14>1 - - se2e-probe - - - ready";
        wait_until(
            "rsyslogd to receive probes on UDP, TCP and the unix socket",
            Duration::from_secs(20),
            || {
                let seen: Vec<String> = rsyslog
                    .messages()
                    .iter()
                    .filter(|m| m["app"] == "se2e-probe")
                    .map(|m| m["input"].to_string())
                    .collect();
                let has = |input: &str| seen.iter().any(|s| s.contains(input));
                if !has("imudp") {
                    let _ = udp.send_to(probe.as_bytes(), ("127.0.0.1", UDP_PORT));
                }
                if !has("imtcp")
                    && let Ok(mut tcp) = node.enter(|| TcpStream::connect(("127.0.0.1", TCP_PORT)))
                {
                    let _ = tcp.write_all(format!("{} {probe}", probe.len()).as_bytes());
                }
                if !has("imuxsock")
                    && let Ok(sock) = UnixDatagram::unbound()
                {
                    let _ = sock.send_to(probe.as_bytes(), rsyslog.socket());
                }
                (has("imudp") && has("imtcp") && has("imuxsock")).then_some(())
            },
        );
        rsyslog
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("log.sock")
    }

    /// Every message rsyslogd wrote so far, as parsed fields.
    fn messages(&self) -> Vec<Value> {
        fs::read_to_string(self.dir.path().join("out.json"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("rsyslog output not JSON ({e}): {l}"))
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
            eprintln!("--- rsyslogd stderr ---\n{log}");
        }
    }
}

#[test]
fn syslog_over_udp_tcp_and_unix_socket_reaches_rsyslog_as_rfc5424() {
    if !privileged() {
        return;
    }
    let node = Netns::new("node");
    let rsyslog = Rsyslog::start(&node);
    let outputs: Vec<(&str, String, &str)> = vec![
        ("syslog-udp", format!("udp://127.0.0.1:{UDP_PORT}"), "imudp"),
        ("syslog-tcp", format!("tcp://127.0.0.1:{TCP_PORT}"), "imtcp"),
        ("syslog-unix", format!("unix://{}", rsyslog.socket().display()), "imuxsock"),
    ];
    let mut yaml = "outputs:\n- stdout: {}\n".to_owned();
    for (name, address, _) in &outputs {
        yaml.push_str(&format!(
            "- syslog: {{name: {name}, address: '{address}', facility: local3, app_name: se2e-{name}, \
             types: [host]}}\n"
        ));
    }
    let sensor = Sensor::start(&node, &yaml, &[]);
    let cgroup = Cgroup::new();
    let cgroup_id = cgroup.id();
    exec_sequence(&cgroup, "syslog", 1);

    for (name, _, input) in &outputs {
        let app = format!("se2e-{name}");
        let message = wait_until(
            &format!("{name}: the exec event in rsyslog"),
            Duration::from_secs(15),
            || {
                rsyslog.messages().into_iter().find(|m| {
                    m["app"] == app.as_str()
                        && serde_json::from_str::<Value>(
                            m["msg"].as_str().unwrap_or_default().trim_start(),
                        )
                        .is_ok_and(|e| seq_of(&e, cgroup_id, "syslog") == Some(0))
                })
            },
        );
        assert_eq!(message["input"], *input, "{name}: {message}");
        assert_eq!(message["version"], "1", "{name}: RFC 5424 VERSION: {message}");
        assert_eq!(message["facility"], "19", "{name}: local3: {message}");
        assert_eq!(message["severity"], "6", "{name}: informational: {message}");
        assert_eq!(message["hostname"], "e2e-node", "{name}: {message}");
        assert_eq!(message["procid"], sensor.pid().to_string(), "{name}: {message}");
        assert_eq!(message["msgid"], "host", "{name}: {message}");
        assert_eq!(message["sd"], r#"[sensor@32473 kind="host"]"#, "{name}: {message}");
        let event: Value = serde_json::from_str(message["msg"].as_str().expect("msg").trim_start())
            .expect("JSON message");
        assert_eq!(event["node_name"], "e2e-node", "{name}: {event}");
        assert_eq!(event["process_exec"]["process"]["comm"], "true", "{name}: {event}");

        let m = sensor.metrics();
        assert!(
            m.get("sensor_output_sent_total", &[("output", name)]).is_some_and(|v| v >= 1.0),
            "{name}\n{}",
            m.text
        );
        assert_eq!(
            m.get("sensor_output_errors_total", &[("output", name)]),
            Some(0.0),
            "{name}\n{}",
            m.text
        );
    }
}

// ---- control characters and severities ---------------------------------------------------

/// A file name holding a newline, a forged alert line and ESC sequences (a terminal colour, a
/// cursor move) cannot start a new line or reach a terminal raw, on stdout, in the file
/// output, or in syslog (a real rsyslogd, which would show raw control characters as `#012`).
#[test]
fn crafted_file_names_cannot_forge_lines_in_text_alerts() {
    if !privileged() {
        return;
    }
    let pod = sensor_e2e::pod::ContainerPod::new("se2e-forge-");
    let data = pod.data();
    let watch = format!("{data}/watch");
    fs::create_dir_all(&watch).expect("mkdir");
    let forged = "12:00:00.000000000: Critical FAKE ALERT";
    let name = format!("x\n{forged}\r\u{1b}[31mred\u{1b}[2A\u{7f}\u{85}\u{2028}end");
    fs::write(format!("{watch}/{name}"), "w").expect("crafted file");
    let rsyslog = Rsyslog::start(&pod.node);
    let rules = pod.dir.join("rules.yaml");
    fs::write(
        &rules,
        format!(
            "- rule: Watched file opened\n  desc: t\n  condition: evt.type in (open, openat) and \
             fd.name startswith {watch}/ and container.id != host\n  output: \"Watched file \
             opened (file=%fd.name)\"\n  priority: WARNING\n"
        ),
    )
    .expect("rules");
    let alerts = pod.dir.join("alerts.log");
    let config = format!(
        "endpoints_file: {}\nrules_files: [{}]\nrules_output: text\noutputs:\n- stdout: {{}}\n\
         - file: {{path: {}}}\n- syslog: {{address: 'udp://127.0.0.1:{UDP_PORT}', types: [alert]}}\n",
        pod.dir.join("endpoints.yaml").display(),
        rules.display(),
        alerts.display()
    );
    let sensor = Sensor::start(&pod.node, &config, &[]);
    let mut child = pod.cgroup.spawn(
        Command::new("/bin/cat")
            .arg(format!("{watch}/{name}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    assert!(child.wait().expect("wait").success());

    let alert_of =
        |lines: Vec<String>| lines.into_iter().find(|l| l.contains("Watched file opened"));
    let stdout = wait_until("the text alert on stdout", Duration::from_secs(10), || {
        alert_of(sensor.lines())
    });
    let file = wait_until("the text alert in the file", Duration::from_secs(10), || {
        alert_of(
            fs::read_to_string(&alerts).unwrap_or_default().lines().map(str::to_owned).collect(),
        )
    });
    let syslog = wait_until("the text alert in rsyslog", Duration::from_secs(10), || {
        rsyslog
            .messages()
            .into_iter()
            .find(|m| m["msg"].as_str().is_some_and(|s| s.contains("Watched file opened")))
    });
    let expected =
        format!("file={watch}/x\\n{forged}\\r\\x1b[31mred\\x1b[2A\\x7f\\u0085\\u2028end)");
    for (output, line) in [("stdout", &stdout), ("file", &file)] {
        assert!(line.ends_with(&expected), "{output}: {line:?}");
        assert!(!line.chars().any(char::is_control), "{output}: {line:?}");
    }
    let msg = syslog["msg"].as_str().expect("msg");
    assert!(msg.ends_with(&expected), "syslog: {msg:?}");
    assert!(
        !msg.contains("#012") && !msg.contains("#033"),
        "raw controls reached rsyslog: {msg:?}"
    );
    assert_eq!(syslog["severity"], "4", "a WARNING rule: {syslog}");
    // No output has a line that starts with the forged text.
    let file_lines = fs::read_to_string(&alerts).expect("alerts");
    for (output, lines) in [
        ("stdout", sensor.lines()),
        ("file", file_lines.lines().map(str::to_owned).collect()),
        ("syslog", rsyslog.messages().iter().map(|m| m["msg"].to_string()).collect()),
    ] {
        assert!(
            !lines.iter().any(|l| l.trim_start_matches('"').starts_with(forged)),
            "{output}: a forged line"
        );
    }
}

/// Syslog severity follows the record: a Block rule's `blocked` and `killed` records are
/// warnings; Falco alerts carry their rule's priority (emergency … debug), in text mode too.
#[test]
fn syslog_severity_follows_the_action_and_the_falco_priority() {
    if !privileged() {
        return;
    }
    let pod = sensor_e2e::pod::ContainerPod::new("se2e-sev-");
    let data = pod.data();
    fs::write(format!("{data}/secret/b"), "b").expect("file");
    let rsyslog = Rsyslog::start(&pod.node);
    fs::create_dir_all(pod.dir.join("policies")).expect("mkdir");
    fs::write(
        pod.dir.join("policies/host.yaml"),
        format!(
            "apiVersion: sensor.dev/v1alpha1\nkind: HostPolicy\nmetadata: {{name: sev}}\nspec:\n  \
             selector: {{namespaces: [shop], podSelector: {{matchLabels: {{app: web}}}}}}\n  \
             action: Block\n  files: [{{prefix: {data}/secret/, access: [read, delete]}}]\n"
        ),
    )
    .expect("policy");
    let rules = pod.dir.join("rules.yaml");
    let mut text = String::new();
    for p in
        ["EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFORMATIONAL", "DEBUG"]
    {
        text.push_str(&format!(
            "- rule: sev {p}\n  desc: t\n  condition: evt.type = execve and proc.name = sh and \
             proc.args contains se2e-sev-{p}-marker\n  output: \"sev {p} %proc.name\"\n  priority: {p}\n"
        ));
    }
    fs::write(&rules, text).expect("rules");
    let config = format!(
        "mode: enforce\npolicy_dir: {}\nendpoints_file: {}\nrules_files: [{}]\nrules_output: text\n\
         rules_min_priority: debug\noutputs:\n- stdout: {{}}\n\
         - syslog: {{address: 'udp://127.0.0.1:{UDP_PORT}', types: [host, alert]}}\n",
        pod.dir.join("policies").display(),
        pod.dir.join("endpoints.yaml").display(),
        rules.display()
    );
    let sensor = Sensor::start(&pod.node, &config, &[]);
    sensor.wait_metric("sensor_host_watched_cgroups", &[], |v| v >= Some(1.0));
    let run = |args: &[&str]| {
        let mut child = pod.cgroup.spawn(
            Command::new(args[0]).args(&args[1..]).stdout(Stdio::null()).stderr(Stdio::null()),
        );
        child.wait().expect("wait")
    };
    assert!(!run(&["/bin/cat", &format!("{data}/secret/token")]).success(), "read blocked");
    run(&["/bin/rm", &format!("{data}/secret/b")]);
    // One event per rule: like Falco (`rule_matching: first`), an event fires one rule.
    for p in
        ["EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFORMATIONAL", "DEBUG"]
    {
        run(&["/bin/sh", "-c", &format!("true se2e-sev-{p}-marker")]);
    }
    let severity_of = |what: &str, pred: &dyn Fn(&str) -> bool| {
        let m = wait_until(&format!("{what} in rsyslog"), Duration::from_secs(10), || {
            rsyslog.messages().into_iter().find(|m| m["msg"].as_str().is_some_and(pred))
        });
        m["severity"].as_str().unwrap_or_default().to_owned()
    };
    for action in ["blocked", "killed"] {
        let sev = severity_of(action, &|s| s.contains(&format!(r#""action":"{action}""#)));
        assert_eq!(sev, "4", "{action} record: user.warning");
    }
    for (n, p) in
        ["EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFORMATIONAL", "DEBUG"]
            .iter()
            .enumerate()
    {
        let sev = severity_of(p, &|s| s.contains(&format!("sev {p} sh")));
        assert_eq!(sev, n.to_string(), "rule priority {p}");
    }
}

// ---- webhook ------------------------------------------------------------------------------

/// A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated second CA.
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn new() -> Self {
        let dir = TempDir::new("certs");
        let p = |name: &str| dir.path().join(name).display().to_string();
        fs::write(
            p("openssl.cnf"),
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = se2e\n\
             [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier = hash\n\
             [leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n\
             authorityKeyIdentifier = keyid\n",
        )
        .expect("openssl.cnf");
        let cnf = p("openssl.cnf");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for ca in ["ca", "other-ca"] {
            let (key, pem) = (p(&format!("{ca}.key")), p(&format!("{ca}.pem")));
            let mut args =
                vec!["req", "-x509", "-new", "-config", &cnf, "-extensions", "ca", "-days", "2"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &pem]);
            run("openssl", &args);
        }
        let (key, csr) = (p("server.key"), p("server.csr"));
        let mut args = vec!["req", "-new", "-config", &cnf];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr]);
        run("openssl", &args);
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &cnf,
                "-extensions",
                "leaf",
                "-out",
                &p("server.pem"),
            ],
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// Answer 503 to the first N requests, then 200.
    FailFirst(usize),
    /// Read requests and never answer.
    Hang,
}

#[derive(Debug, Clone)]
struct Received {
    request_line: String,
    headers: Vec<String>,
    body: Value,
}

/// An HTTPS server on 127.0.0.1 in the test's namespace, one thread per connection.
/// Dropping it shuts every socket down, which ends the threads.
struct HttpsServer {
    port: u16,
    listener: Arc<TcpListener>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    requests: Arc<Mutex<Vec<Received>>>,
    handshake_errors: Arc<AtomicUsize>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl HttpsServer {
    fn start(node: &Netns, certs: &Certs, behaviour: Behaviour) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(certs.path("server.pem"))
                .expect("server.pem")
                .collect::<Result<_, _>>()
                .expect("certs");
        let key = PrivateKeyDer::from_pem_file(certs.path("server.key")).expect("server.key");
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config"),
        );
        let listener = Arc::new(node.enter(|| TcpListener::bind("127.0.0.1:0").expect("bind")));
        let port = listener.local_addr().expect("addr").port();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handshake_errors = Arc::new(AtomicUsize::new(0));
        let accept = {
            let (listener, conns, requests, errors) = (
                Arc::clone(&listener),
                Arc::clone(&conns),
                Arc::clone(&requests),
                Arc::clone(&handshake_errors),
            );
            std::thread::spawn(move || {
                while let Ok((tcp, _)) = listener.accept() {
                    if let Ok(clone) = tcp.try_clone() {
                        conns.lock().unwrap_or_else(PoisonError::into_inner).push(clone);
                    }
                    let (config, requests, errors) =
                        (Arc::clone(&config), Arc::clone(&requests), Arc::clone(&errors));
                    std::thread::spawn(move || serve(tcp, &config, &requests, &errors, behaviour));
                }
            })
        };
        Self { port, listener, conns, requests, handshake_errors, accept: Some(accept) }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/events", self.port)
    }

    fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        // SAFETY: shutdown(2) on a listening socket we own wakes the thread blocked in accept.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        for conn in self.conns.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Serves HTTP/1.1 requests on one TLS connection until the peer or the test closes it.
fn serve(
    tcp: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    requests: &Mutex<Vec<Received>>,
    handshake_errors: &AtomicUsize,
    behaviour: Behaviour,
) {
    let Ok(conn) = rustls::ServerConnection::new(Arc::clone(config)) else { return };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            handshake_errors.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
    let mut reader = BufReader::new(tls);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end().to_owned();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
            headers.push(header);
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let n = {
            let mut all = requests.lock().unwrap_or_else(PoisonError::into_inner);
            all.push(Received {
                request_line: request_line.trim_end().to_owned(),
                headers,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            });
            all.len()
        };
        let status = match behaviour {
            Behaviour::Hang => continue, // read on: blocks until the sensor or the test closes
            Behaviour::FailFirst(failures) if n <= failures => "503 Service Unavailable",
            Behaviour::FailFirst(_) => "200 OK",
        };
        let out = reader.get_mut();
        if out
            .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .is_err()
            || out.flush().is_err()
        {
            return;
        }
    }
}

fn webhook_yaml(name: &str, url: &str, ca: &Path, extra: &str) -> String {
    format!(
        "- webhook: {{name: {name}, url: '{url}', tls: {{ca_file: {}}}, types: [host]{extra}}}\n",
        ca.display()
    )
}

#[test]
fn webhook_posts_events_over_tls_and_retries_through_server_errors() {
    if !privileged() {
        return;
    }
    let certs = Certs::new();
    let node = Netns::new("node");
    let server = HttpsServer::start(&node, &certs, Behaviour::FailFirst(2));
    let yaml = format!(
        "outputs:\n- stdout: {{}}\n{}",
        webhook_yaml(
            "webhook",
            &server.url(),
            &certs.path("ca.pem"),
            ", retries: 5, backoff_ms: 50"
        )
    );
    let sensor = Sensor::start(&node, &yaml, &[]);
    let cgroup = Cgroup::new();
    let cgroup_id = cgroup.id();
    exec_sequence(&cgroup, "hook", 1);

    let request =
        wait_until("the exec event POSTed to the webhook", Duration::from_secs(15), || {
            server.requests().into_iter().find(|r| seq_of(&r.body, cgroup_id, "hook") == Some(0))
        });
    assert_eq!(request.request_line, "POST /events HTTP/1.1");
    assert!(
        request.headers.iter().any(|h| h.eq_ignore_ascii_case("content-type: application/json")),
        "{:?}",
        request.headers
    );
    assert_eq!(request.body["node_name"], "e2e-node", "{}", request.body);
    assert!(server.requests().len() >= 3, "two 503 answers, then success");
    let m = sensor.metrics();
    assert!(
        m.get("sensor_output_retries_total", &[("output", "webhook")]).is_some_and(|v| v >= 2.0),
        "{}",
        m.text
    );
    assert!(
        m.get("sensor_output_sent_total", &[("output", "webhook")]).is_some_and(|v| v >= 1.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get("sensor_output_errors_total", &[("output", "webhook")]),
        Some(0.0),
        "{}",
        m.text
    );
}

#[test]
fn hung_webhook_drops_and_counts_while_stdout_and_file_keep_flowing() {
    if !privileged() {
        return;
    }
    let certs = Certs::new();
    let dir = TempDir::new("hung");
    let path = dir.path().join("events.json");
    let node = Netns::new("node");
    let server = HttpsServer::start(&node, &certs, Behaviour::Hang);
    let queue = 4;
    let yaml = format!(
        "outputs:\n- stdout: {{}}\n- file: {{path: {}}}\n{}",
        path.display(),
        webhook_yaml(
            "webhook-hung",
            &server.url(),
            &certs.path("ca.pem"),
            &format!(", retries: 0, timeout_ms: 600000, queue_size: {queue}")
        )
    );
    let sensor = Sensor::start(&node, &yaml, &[]);
    let cgroup = Cgroup::new();
    let cgroup_id = cgroup.id();
    let count = 40;
    exec_sequence(&cgroup, "hung", count);

    sensor.wait_event("the last exec event on stdout", |e| {
        seq_of(e, cgroup_id, "hung") == Some(count - 1)
    });
    let on_stdout: Vec<usize> =
        sensor.events().iter().filter_map(|e| seq_of(e, cgroup_id, "hung")).collect();
    assert_eq!(on_stdout, (0..count).collect::<Vec<_>>(), "every event on stdout, in order");
    let in_file = wait_until("every exec event in the file", Duration::from_secs(10), || {
        let seqs: Vec<usize> = fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|e| seq_of(&e, cgroup_id, "hung"))
            .collect();
        (seqs.len() == count).then_some(seqs)
    });
    assert_eq!(in_file, (0..count).collect::<Vec<_>>());

    // At most `queue` lines wait and one is in flight: the rest of ours were dropped.
    let least = (count - queue - 1) as f64;
    sensor.wait_metric("sensor_output_dropped_total", &[("output", "webhook-hung")], |v| {
        v.is_some_and(|v| v >= least)
    });
    let m = sensor.metrics();
    assert_eq!(
        m.get("sensor_output_sent_total", &[("output", "webhook-hung")]),
        Some(0.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get("sensor_output_dropped_total", &[("output", "stdout")]),
        Some(0.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get("sensor_output_dropped_total", &[("output", "file")]),
        Some(0.0),
        "{}",
        m.text
    );
    assert_eq!(server.requests().len(), 1, "one request, never answered");
}

#[test]
fn webhook_behind_an_unknown_ca_counts_tls_errors_and_delivers_nothing() {
    if !privileged() {
        return;
    }
    let certs = Certs::new();
    let node = Netns::new("node");
    let server = HttpsServer::start(&node, &certs, Behaviour::FailFirst(0));
    let yaml = format!(
        "outputs:\n- stdout: {{}}\n{}",
        webhook_yaml(
            "webhook",
            &server.url(),
            &certs.path("other-ca.pem"),
            ", retries: 1, backoff_ms: 10"
        )
    );
    let sensor = Sensor::start(&node, &yaml, &[]);
    let cgroup = Cgroup::new();
    exec_sequence(&cgroup, "badca", 1);

    sensor.wait_metric("sensor_output_errors_total", &[("output", "webhook")], |v| {
        v.is_some_and(|v| v >= 1.0)
    });
    wait_until("the TLS failure in the sensor log", Duration::from_secs(10), || {
        sensor.log().contains("webhook output").then_some(())
    });
    let log = sensor.log();
    assert!(log.contains("UnknownIssuer") || log.contains("certificate"), "{log}");
    assert!(
        server.handshake_errors.load(Ordering::SeqCst) >= 1,
        "the server saw the handshake fail"
    );
    assert!(server.requests().is_empty(), "nothing may be delivered: {:?}", server.requests());
    let m = sensor.metrics();
    assert_eq!(
        m.get("sensor_output_sent_total", &[("output", "webhook")]),
        Some(0.0),
        "{}",
        m.text
    );
}
