//! `cargo xtask <command>`: everything a newcomer needs, installing what is missing first.
//!
//! - `bootstrap`: the pinned nightly (with rust-src, clippy, rustfmt) and bpf-linker built
//!   against that nightly's own libLLVM, under `target/tools` of this checkout.
//! - `build`: the release `sensor` binary with its eBPF object embedded.
//! - `run [ARGS...]`: build, then `sensor run ARGS...` (as root), then `sensor cleanup`:
//!   a try-out leaves nothing of ours in the kernel.
//! - `test`: fmt check, clippy (warnings are errors), unit tests, privileged end-to-end tests
//!   (the Kubernetes ones against a real kube-apiserver and etcd, see `kube-apiserver`), then
//!   `vm-test` when `SENSOR_VM_TEST=1` (it does not fit the time budget yet).
//! - `kube-apiserver`: etcd (Debian's etcd-server) and kube-apiserver v1.20.2 built offline
//!   from Debian's kubernetes source into `target/tools/kube-apiserver-1.20.2/` (once).
//! - `bench [--quick]`: datapath, agent and policy-update figures as ratios to baselines
//!   measured in the same run (root; namespaces it creates only).
//! - `conformance [--cases N] [--seed S]`: N seeded NetworkPolicy/CiliumNetworkPolicy cases
//!   (default 200, seed 1), each a truth table of real probes compared with the reference
//!   evaluator (root).
//! - `vm-test [SERIES...]`: the sensor and `tests/vm/` inside Debian's 6.1 and 6.12 kernels
//!   under qemu (software emulation), from an initramfs built here (see `vm`).
//! - `fuzz [--seconds N] [TARGET...]`: cargo-fuzz (installed on first use) on each target in
//!   turn for N seconds (default 300), then minimizes its corpus under `fuzz/corpus/`.

mod bench;
mod bootstrap;
mod conformance;
mod fuzz;
mod kube_apiserver;
mod vm;

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The pinned toolchain, from `.cargo/config.toml` `[env]`.
pub const TOOLCHAIN: &str = env!("SENSOR_TOOLCHAIN");

fn main() -> anyhow::Result<()> {
    let mut args = env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root()?;
    match command.as_str() {
        "bootstrap" => bootstrap::ensure(&root).map(drop),
        "build" => build(&root).map(drop),
        "run" => run(&root, &rest),
        "test" => test(&root),
        "bench" => {
            // SENSOR_BIN (as for the e2e tests): bench that binary instead of building one.
            let sensor = match std::env::var_os("SENSOR_BIN") {
                Some(bin) => std::path::PathBuf::from(bin),
                None => build(&root)?.1,
            };
            bootstrap::ensure_bench_packages()?;
            bench::bench(&root, &sensor, &rest)
        }
        "fuzz" => fuzz::fuzz(&root, &rest),
        "vm-test" => {
            let (_, sensor) = build(&root)?;
            vm::vm_test(&root, &sensor, &rest)
        }
        "conformance" => conformance::conformance(&root, &rest),
        "kube-apiserver" => kube_apiserver::ensure(&root).map(|tools| {
            println!("{}", tools.kube_apiserver.display());
        }),
        // The bench's own client/server processes, run inside its namespaces.
        "__bench-helper" => bench::helper_main(&rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <bootstrap|build|run [SENSOR RUN ARGS...]|test|vm-test|bench [--quick]|\
                 fuzz [--seconds N] [TARGET...]|conformance [--cases N] [--seed S]|kube-apiserver>\n\n\
                 bootstrap  install the pinned nightly ({TOOLCHAIN}) and bpf-linker (target/tools)\n\
                 build      build target/release/sensor with its eBPF programs\n\
                 run        build, then run `sensor run ARGS...` (root)\n\
                 test       fmt, clippy, unit tests and privileged end-to-end tests (root)\n\
                 bench      benchmarks against same-run baselines (root); writes target/bench/\n\
                 vm-test [6.1|6.12]  tests/vm/ inside Debian's packaged kernels under qemu (root)\n\
                 fuzz       cargo-fuzz each target N seconds (default 300), minimize fuzz/corpus/\n\
                 conformance [--cases N] [--seed S]  policy conformance cases against the \
                 reference evaluator (root)\n\
                 kube-apiserver  etcd and kube-apiserver {api} for the Kubernetes tests \
                 (built once into target/tools, ~13 min)",
                api = kube_apiserver::VERSION
            );
            if command.is_empty() || command == "help" || command == "--help" {
                Ok(())
            } else {
                bail!("unknown command {command:?}")
            }
        }
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).context("xtask has no parent directory")
}

/// `cargo` of the pinned toolchain, with bpf-linker on PATH and the outer cargo's variables
/// removed (they would point the child at the default stable toolchain).
pub fn cargo(root: &Path, tools: &bootstrap::Tools) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, "cargo"]).current_dir(root);
    for var in ["RUSTC", "RUSTDOC", "CARGO", "RUSTUP_TOOLCHAIN", "RUSTC_WRAPPER", "RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![tools.bin_dir.clone()];
    dirs.extend(env::split_paths(&path));
    if let Ok(joined) = env::join_paths(dirs) {
        cmd.env("PATH", joined);
    }
    cmd
}

pub fn status(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("spawning {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn build(root: &Path) -> anyhow::Result<(bootstrap::Tools, PathBuf)> {
    let tools = bootstrap::ensure(root)?;
    status(cargo(root, &tools).args([
        "build",
        "--release",
        "--package",
        "sensor",
        "--bin",
        "sensor",
    ]))?;
    Ok((tools, root.join("target/release/sensor")))
}

fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let (_, sensor) = build(root)?;
    if !bootstrap::is_root() {
        eprintln!(
            "note: the sensor needs root (or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
        );
    }
    // A try-out leaves nothing in the kernel: the agent's pins (which keep a DaemonSet's
    // programs attached across restarts) are removed once it exits, however it exits. Ctrl-C
    // reaches the agent and this process alike; this one ignores it and waits to clean up.
    let ignored = IgnoreSignals::new();
    // `cargo xtask run -- --flag` (as the README writes it): the separator is ours, not the
    // agent's.
    let args = match args.first() {
        Some(first) if first == "--" => &args[1..],
        _ => args,
    };
    let mut cmd = Command::new(&sensor);
    cmd.arg("run").args(args);
    // SAFETY: the hook only calls signal(2), which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            IgnoreSignals::restore_defaults();
            Ok(())
        });
    }
    let ran = status(&mut cmd);
    let mut cleanup = Command::new(&sensor);
    cleanup.arg("cleanup").args(cleanup_args(args));
    let cleaned = status(&mut cleanup);
    drop(ignored);
    ran.and(cleaned)
}

/// The `--config` and `--bpf-pin-dir` of `sensor run` arguments, for `sensor cleanup`.
fn cleanup_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        for flag in ["--config", "-c", "--bpf-pin-dir"] {
            if arg == flag {
                if let Some(value) = iter.next() {
                    out.extend([flag.to_owned(), value.clone()]);
                }
            } else if let Some(value) = arg.strip_prefix(&format!("{flag}=")) {
                out.push(format!("{flag}={value}"));
            }
        }
    }
    out
}

/// SIGINT and SIGTERM ignored while it lives (the child restores them before exec).
struct IgnoreSignals;

impl IgnoreSignals {
    fn new() -> Self {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
        Self
    }

    fn restore_defaults() {
        // SAFETY: as above, with SIG_DFL.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
        }
    }
}

impl Drop for IgnoreSignals {
    fn drop(&mut self) {
        Self::restore_defaults();
    }
}

fn test(root: &Path) -> anyhow::Result<()> {
    let tools = bootstrap::ensure(root)?;
    bootstrap::ensure_test_packages()?;
    // The VM matrix does not fit the suite's time budget yet (see the README): opt in.
    let vm_matrix = env::var("SENSOR_VM_TEST").is_ok_and(|v| v == "1");
    if vm_matrix {
        vm::ensure_packages()?;
    }
    // The Kubernetes e2e tests run a real API server: built once (about 13 minutes), first,
    // so a failing build stops the run before the long compile steps.
    let api = kube_apiserver::ensure(root)?;
    let ci = env::var("CI").is_ok_and(|v| v == "true");
    if ci && !bootstrap::is_root() {
        bail!("CI=true but not root: the end-to-end tests load eBPF programs and must run as root");
    }
    status(cargo(root, &tools).args(["fmt", "--all", "--check"]))?;
    // Userspace crates (the eBPF crate is not a default member) ...
    status(cargo(root, &tools).args([
        "clippy",
        "--release",
        "--workspace",
        "--exclude",
        "sensor-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // ... and the eBPF crate, for its own target.
    status(cargo(root, &tools).args([
        "clippy",
        "--release",
        "--package",
        "sensor-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    status(cargo(root, &tools).args([
        "build",
        "--release",
        "--package",
        "sensor",
        "--bin",
        "sensor",
    ]))?;
    status(cargo(root, &tools).args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "sensor-ebpf",
        "--exclude",
        "sensor-e2e",
    ]))?;
    // End-to-end tests share the node's hooks and tc links: one at a time.
    status(
        cargo(root, &tools)
            .args(["test", "--release", "--package", "sensor-e2e", "--", "--test-threads=1"])
            .env("SENSOR_BIN", root.join("target/release/sensor"))
            .env("KUBE_APISERVER_BIN", &api.kube_apiserver)
            .env("ETCD_BIN", &api.etcd),
    )?;
    // The same binary on Debian's 6.1 and 6.12 kernels (BPF-LSM, tc without tcx) under qemu.
    if vm_matrix {
        vm::vm_test(root, &root.join("target/release/sensor"), &[])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cleanup_args;

    #[test]
    fn cleanup_gets_the_runs_config_and_pin_dir() {
        let args: Vec<String> = [
            "--config",
            "a.yaml",
            "--mode",
            "enforce",
            "--bpf-pin-dir=/sys/fs/bpf/x",
            "-c",
            "b.yaml",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(
            cleanup_args(&args),
            ["--config", "a.yaml", "--bpf-pin-dir=/sys/fs/bpf/x", "-c", "b.yaml"]
        );
    }
}
