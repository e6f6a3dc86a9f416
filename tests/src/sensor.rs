//! The real `sensor` binary, run inside a test's node namespace.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use nix::{sys::signal, unistd::Pid};

use crate::{Metrics, Netns, unique, wait_until};

/// Port the sensor serves on, on the node namespace's loopback (each test has its own).
pub const PORT: u16 = 9990;

/// Path of the binary under test: `$SENSOR_BIN` (set by `cargo xtask test`) or the release
/// build next to this workspace.
pub fn sensor_bin() -> PathBuf {
    let path = std::env::var_os("SENSOR_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/sensor"),
        PathBuf::from,
    );
    assert!(path.is_file(), "{} missing: run `cargo xtask build` first", path.display());
    path
}

/// A bpffs pin directory of its own for one test (`--bpf-pin-dir`): removed with
/// `sensor cleanup` when the last holder drops it, even when the test fails, so no test
/// leaves programs attached through pins.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { path: PathBuf::from("/sys/fs/bpf").join(unique("se2e-pins-")) })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Runs `sensor cleanup --bpf-pin-dir DIR`; returns its exit status and stdout.
    pub fn cleanup(&self) -> (std::process::ExitStatus, String) {
        let out = Command::new(sensor_bin())
            .arg("cleanup")
            .arg("--bpf-pin-dir")
            .arg(&self.path)
            .output()
            .expect("run sensor cleanup");
        (out.status, String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.path.exists() {
            let (status, out) = self.cleanup();
            if !status.success() {
                eprintln!("sensor cleanup {}: {status} {out}", self.path.display());
            }
        }
    }
}

pub struct Sensor {
    child: Option<Child>,
    /// Pins of this agent; shared with a restarted agent through [`Sensor::start_with_pins`].
    pins: Arc<PinDir>,
    netns: PathBuf,
    /// Config file written by [`Sensor::start`], removed on drop.
    config: Option<PathBuf>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Sensor {
    /// Starts `sensor run` in `node` with `config_yaml` as its config file plus `args`, and
    /// waits until `/readyz` answers 200.
    pub fn start(node: &Netns, config_yaml: &str, args: &[&str]) -> Self {
        Self::start_with_pins(node, config_yaml, args, PinDir::new())
    }

    /// [`Sensor::start`] with a given pin directory: a restart adopts what the previous agent
    /// pinned there.
    pub fn start_with_pins(
        node: &Netns,
        config_yaml: &str,
        args: &[&str],
        pins: Arc<PinDir>,
    ) -> Self {
        let mut sensor = Self::spawn_with_config(node, config_yaml, args, pins);
        sensor.wait_for("/readyz");
        sensor
    }

    /// [`Sensor::start`] that only waits for `/healthz`: for an agent that is expected to
    /// run but not be ready (e.g. its Kubernetes API is down).
    pub fn start_unready(node: &Netns, config_yaml: &str, args: &[&str]) -> Self {
        let mut sensor = Self::spawn_with_config(node, config_yaml, args, PinDir::new());
        sensor.wait_for("/healthz");
        sensor
    }

    fn spawn_with_config(
        node: &Netns,
        config_yaml: &str,
        args: &[&str],
        pins: Arc<PinDir>,
    ) -> Self {
        let config = std::env::temp_dir().join(format!("{}.yaml", unique("se2e-cfg-")));
        fs::write(&config, config_yaml).expect("write config");
        let mut argv: Vec<String> = vec!["run".into(), "--config".into()];
        argv.push(config.display().to_string());
        argv.extend(["--metrics-addr".into(), format!("127.0.0.1:{PORT}")]);
        argv.extend(["--node-name".into(), "e2e-node".into()]);
        argv.extend(["--bpf-pin-dir".into(), pins.path().display().to_string()]);
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        Self::launch(node, &[], &argv, Some(config), pins)
    }

    /// Starts `WRAPPER... sensor ARGV... --bpf-pin-dir DIR` in `node` (only the test's own pin
    /// directory is added; the HTTP server must listen on [`PORT`]), and waits until `/readyz`
    /// answers 200. `wrapper` is a command that execs the rest, e.g. `setpriv ... --`.
    pub fn start_argv(node: &Netns, wrapper: &[String], argv: &[String]) -> Self {
        let pins = PinDir::new();
        let mut argv = argv.to_vec();
        argv.extend(["--bpf-pin-dir".into(), pins.path().display().to_string()]);
        let mut sensor = Self::launch(node, wrapper, &argv, None, pins);
        sensor.wait_for("/readyz");
        sensor
    }

    fn launch(
        node: &Netns,
        wrapper: &[String],
        argv: &[String],
        config: Option<PathBuf>,
        pins: Arc<PinDir>,
    ) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .arg("--")
            .args(wrapper)
            .arg(sensor_bin())
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sensor");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(PoisonError::into_inner).push(line);
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let log = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0_u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                log.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self { child: Some(child), pins, netns: node.path(), config, stdout, stderr }
    }

    /// Waits until `path` answers 200; panics with the log if the agent exits first.
    fn wait_for(&mut self, path: &str) {
        wait_until(&format!("sensor {path} to answer 200"), Duration::from_secs(60), || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("sensor exited during start-up ({status}):\n{}", self.log());
            }
            (self.get(path).0 == 200).then_some(())
        });
    }

    /// GET `path` from the sensor's HTTP server with curl inside the node namespace.
    /// Returns (status, body); status 0 when nothing answered.
    pub fn get(&self, path: &str) -> (u16, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(["--", "curl", "-s", "-m", "2", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{PORT}{path}"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Sends `method` to `path` with curl inside the node namespace; returns the status.
    pub fn request(&self, method: &str, path: &str) -> u16 {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(["--", "curl", "-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}", "-X"])
            .arg(method)
            .arg(format!("http://127.0.0.1:{PORT}{path}"))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }

    /// GET `path`; returns the status and curl's `time_total` in seconds (the endpoint's
    /// latency, without the cost of starting curl).
    pub fn get_timed(&self, path: &str) -> (u16, f64) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args([
                "--",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "5",
                "-w",
                "%{http_code} %{time_total}",
            ])
            .arg(format!("http://127.0.0.1:{PORT}{path}"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut parts = text.split_whitespace();
        let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let secs = parts.next().and_then(|s| s.parse().ok()).unwrap_or(f64::INFINITY);
        (status, secs)
    }

    pub fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        Metrics::parse(&body)
    }

    /// Waits for a metric sample to satisfy `pred`, returning its value (None when absent).
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        pred: impl Fn(Option<f64>) -> bool,
    ) -> Option<f64> {
        let mut last = None;
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(&format!("metric {name}{labels:?}"), Duration::from_secs(10), || {
                let value = self.metrics().get(name, labels);
                last = Some(value);
                pred(value).then_some(value)
            })
        }));
        found.unwrap_or_else(|_| {
            panic!("metric {name}{labels:?} never matched; last value {last:?}")
        })
    }

    /// Waits for a JSON line on stdout for which `pred` holds.
    pub fn wait_event(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until(what, Duration::from_secs(10), || {
            let lines = self.stdout.lock().unwrap_or_else(PoisonError::into_inner);
            lines
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| pred(v))
        })
    }

    /// Every line the sensor printed on stdout so far, as written (JSON or text alerts).
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Every JSON line the sensor printed so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let lines = self.stdout.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn pins(&self) -> Arc<PinDir> {
        Arc::clone(&self.pins)
    }

    /// SIGKILL (a crash): no shutdown code runs. Returns once the process is reaped.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("sensor already stopped");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
        signal::kill(pid, signal::Signal::SIGTERM).expect("SIGTERM sensor");
        wait_until("sensor to exit after SIGTERM", Duration::from_secs(15), || {
            child.try_wait().expect("wait sensor")
        })
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(config) = &self.config {
            let _ = fs::remove_file(config);
        }
        if std::thread::panicking() {
            eprintln!("--- sensor log ---\n{}", self.log());
        }
    }
}
