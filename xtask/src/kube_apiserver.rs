//! A real Kubernetes API server for the Kubernetes end-to-end tests (tests/tests/kubernetes.rs):
//! etcd from Debian's `etcd-server`, and kube-apiserver v1.20.2 built offline from Debian's
//! kubernetes source tarball by `xtask/scripts/build-kube-apiserver.sh` (Go from
//! `golang-1.19-go`) into `target/tools/kube-apiserver-1.20.2/`, skipped when already there.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{bootstrap, status};

pub const VERSION: &str = "1.20.2";
/// The Go the build script uses (Debian's versioned package, not on PATH).
const GO: &str = "/usr/lib/go-1.19/bin/go";

/// What the tests need: (kube-apiserver, etcd).
pub struct ApiServerTools {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
}

/// Installs etcd, and builds kube-apiserver unless `target/tools` already holds it.
pub fn ensure(root: &Path) -> anyhow::Result<ApiServerTools> {
    bootstrap::apt_install_missing(&[("etcd", "etcd-server")], true)?;
    let etcd = bootstrap::which("etcd").context("etcd not on PATH after installing etcd-server")?;
    let dir = root.join(format!("target/tools/kube-apiserver-{VERSION}"));
    let binary = dir.join("kube-apiserver");
    if reports_version(&binary) {
        return Ok(ApiServerTools { kube_apiserver: binary, etcd });
    }
    if !Path::new(GO).is_file() {
        if !bootstrap::is_root() {
            bail!("{GO} is missing: install the Debian package golang-1.19-go");
        }
        bootstrap::apt_install(&["golang-1.19-go"], true)?;
    }
    if !Path::new(GO).is_file() {
        bail!("{GO} is missing after installing golang-1.19-go");
    }
    let started = Instant::now();
    eprintln!(
        "building kube-apiserver {VERSION} into {} (once; about 13 minutes on 2 cores)",
        dir.display()
    );
    status(
        Command::new("bash")
            .arg(root.join("xtask/scripts/build-kube-apiserver.sh"))
            .arg(&dir)
            .arg(root.join("target/kube-apiserver-build")),
    )?;
    if !reports_version(&binary) {
        bail!("{} does not report v{VERSION} after the build", binary.display());
    }
    eprintln!("built kube-apiserver {VERSION} in {:.0?}", started.elapsed());
    Ok(ApiServerTools { kube_apiserver: binary, etcd })
}

fn reports_version(binary: &Path) -> bool {
    binary.is_file()
        && Command::new(binary).arg("--version").output().is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).trim() == format!("Kubernetes v{VERSION}")
        })
}
