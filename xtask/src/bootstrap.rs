//! Installs what the build needs, skipping whatever is already there (DESIGN.md §3):
//! the pinned nightly with rust-src, clippy and rustfmt, and bpf-linker built against the
//! nightly's own libLLVM, under `target/tools` of this checkout.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{TOOLCHAIN, status};

const BPF_LINKER_VERSION: &str = "0.13.0";
const COMPONENTS: [&str; 3] = ["rust-src", "clippy", "rustfmt"];

pub struct Tools {
    pub bin_dir: PathBuf,
}

pub fn ensure(root: &Path) -> anyhow::Result<Tools> {
    ensure_toolchain()?;
    let tools_dir = root.join("target/tools");
    ensure_bpf_linker(&tools_dir)?;
    Ok(Tools { bin_dir: tools_dir.join("bin") })
}

pub fn ensure_toolchain() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", TOOLCHAIN])
        .output()
        .context("running rustup (install it from rustup.rs)")?;
    let listing = String::from_utf8_lossy(&installed.stdout);
    let has = |c: &str| listing.lines().any(|l| l.starts_with(&format!("{c}-")) || l == c);
    if installed.status.success() && COMPONENTS.iter().all(|c| has(c)) {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["toolchain", "install", TOOLCHAIN, "--profile", "minimal"]);
    for c in COMPONENTS {
        cmd.args(["--component", c]);
    }
    status(&mut cmd)
}

fn ensure_bpf_linker(tools_dir: &Path) -> anyhow::Result<()> {
    let binary = tools_dir.join("bin/bpf-linker");
    let stamp = tools_dir.join("bpf-linker.toolchain");
    let wanted = format!("{BPF_LINKER_VERSION} {TOOLCHAIN}\n");
    if binary.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    // bpf-linker must use the same LLVM as the nightly: point llvm-sys at the nightly's own
    // libLLVM through a prefix holding just the two names it looks for.
    let sysroot =
        output(Command::new("rustup").args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"]))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot_lib.display()))?;
    let prefix = tools_dir.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(sysroot_lib.join(&libllvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    status(
        Command::new("rustup")
            .args(["run", TOOLCHAIN, "cargo", "install", "bpf-linker", "--locked", "--force"])
            .args(["--version", &format!("={BPF_LINKER_VERSION}")])
            .arg("--root")
            .arg(tools_dir)
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC"),
    )?;
    fs::write(&stamp, wanted)?;
    Ok(())
}

/// Python packages of the deploy/ tests, pinned: `kubernetes-validate` checks manifests
/// against the Kubernetes schemas it ships (offline), `jsonschema` and `PyYAML` check the
/// example host policies against the CRD's schema.
const PYTHON_PACKAGES: [&str; 3] =
    ["kubernetes-validate==1.37.0", "jsonschema==4.26.0", "PyYAML==6.0.3"];

/// Debian packages the end-to-end tests drive: ip/tc (iproute2), nsenter (util-linux), curl,
/// python3 with pip; the Python packages above; and a check that kubectl (for `kubectl kustomize`) is there.
pub fn ensure_test_packages() -> anyhow::Result<()> {
    ensure_debian_packages()?;
    ensure_python_packages()?;
    if !on_path("kubectl") {
        bail!(
            "kubectl is missing: the deploy/ tests render the manifests with `kubectl kustomize` \
             (kubectl >= 1.27; Debian's kubernetes-client is too old), see \
             https://kubernetes.io/docs/tasks/tools/"
        );
    }
    Ok(())
}

fn ensure_python_packages() -> anyhow::Result<()> {
    let versions = |program: &str| -> Option<String> {
        let out = Command::new("python3")
            .args(["-c", program])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let installed = versions(
        "import importlib.metadata as m; \
         print(' '.join(p + '==' + m.version(p) for p in \
         ['kubernetes-validate', 'jsonschema', 'PyYAML']))",
    );
    if installed.as_deref() == Some(PYTHON_PACKAGES.join(" ").as_str())
        && on_path("kubernetes-validate")
    {
        return Ok(());
    }
    // PIP_BREAK_SYSTEM_PACKAGES: Debian's own python3 refuses pip installs without it; pip
    // versions that predate it ignore it.
    status(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES)
            .env("PIP_BREAK_SYSTEM_PACKAGES", "1"),
    )
}

fn ensure_debian_packages() -> anyhow::Result<()> {
    install_missing(&[
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("nsenter", "util-linux"),
        ("setpriv", "util-linux"),
        ("curl", "curl"),
        ("rsyslogd", "rsyslog"),
        ("openssl", "openssl"),
        ("python3", "python3"),
        ("pip3", "python3-pip"),
    ])
}

/// The test tools plus what `cargo xtask bench` drives: iperf3, nft, bpftool (program and map
/// names), ss.
pub fn ensure_bench_packages() -> anyhow::Result<()> {
    ensure_test_packages()?;
    install_missing(&[
        ("iperf3", "iperf3"),
        ("nft", "nftables"),
        ("bpftool", "bpftool"),
        ("ss", "iproute2"),
    ])
}

/// Installs the Debian package of each (tool, package) whose tool is not on PATH.
fn install_missing(tools: &[(&str, &'static str)]) -> anyhow::Result<()> {
    apt_install_missing(tools, false)
}

/// [`install_missing`], optionally without the packages' recommendations.
pub fn apt_install_missing(
    tools: &[(&str, &'static str)],
    no_recommends: bool,
) -> anyhow::Result<()> {
    let mut needed: Vec<&str> =
        tools.iter().filter(|(tool, _)| !on_path(tool)).map(|(_, package)| *package).collect();
    needed.dedup();
    if needed.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing tools; install the Debian packages: {}", needed.join(" "));
    }
    apt_install(&needed, no_recommends)
}

/// `apt-get update`, then `apt-get install` of `packages` (root only).
pub fn apt_install(packages: &[&str], no_recommends: bool) -> anyhow::Result<()> {
    status(Command::new("apt-get").arg("update").arg("-q"))?;
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "-y", "-q"]);
    if no_recommends {
        cmd.arg("--no-install-recommends");
    }
    status(cmd.args(packages).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The first `tool` on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(tool)).find(|f| f.is_file()))
}

fn on_path(tool: &str) -> bool {
    which(tool).is_some()
}

pub fn is_root() -> bool {
    // /proc/self/status "Uid: real effective ..."; avoids a libc dependency in xtask.
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
