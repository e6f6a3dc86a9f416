//! Harness for the privileged end-to-end tests: network namespaces with veth pairs, cgroups,
//! the real `sensor` binary in a "node" namespace, its HTTP endpoints and JSON output, and a
//! real Kubernetes API server (etcd + kube-apiserver) in that namespace.
//!
//! Every resource is a guard that removes what it made on drop, also when the test panics.
//! Test hosts only use 10.0.0.0/8 addresses on interfaces the test created.

pub mod apiserver;
pub mod bridge;
pub mod cgroup;
pub mod metrics;
pub mod netns;
pub mod netpol_ref;
pub mod packet;
pub mod pod;
pub mod sensor;
pub mod traffic;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub use apiserver::ApiServer;
pub use cgroup::Cgroup;
pub use metrics::Metrics;
pub use netns::{Netns, Veth};
pub use sensor::{PinDir, Sensor};

/// True when privileged tests can run. With `CI=true` and no root it panics: CI must not
/// silently skip the tests that prove the product works.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but not running as root: privileged tests cannot run"
        );
        eprintln!("skipping: needs root (loads eBPF programs, creates namespaces)");
    }
    root
}

/// A short name unique to this process and call, e.g. `se3f2a1`. Interface names must stay
/// under 16 bytes, so callers add at most a few characters.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:04x}{n}", std::process::id() & 0xffff)
}

/// Polls `probe` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command to completion and panics with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory under the system temp dir, removed with its contents on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(unique(&format!("se2e-{tag}-")));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
