//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz targets of `fuzz/` one at
//! a time (they would only compete for the cores), each for N seconds, then minimizes its
//! corpus by edge coverage (`cargo fuzz cmin -- -use_counters=0`) so `fuzz/corpus/<target>/` stays small enough to commit and to
//! replay in the test suite (`sensor/tests/fuzz_corpus.rs`). A crash stops the run with the
//! artifact's path: fix it, add a regression test, and copy the input into the corpus.
//!
//! cargo-fuzz is installed only here, pinned, under `target/fuzz-tools` (not next to
//! bpf-linker: without bpf-linker on PATH the agent's build script embeds an empty eBPF stub,
//! which is all a fuzz build of the parsers needs, and it keeps sanitizer flags away from the
//! eBPF build).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{TOOLCHAIN, bootstrap, status};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
pub const TARGETS: [&str; 4] = ["network_policy", "host_policy", "decode_host", "config"];

pub fn fuzz(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut seconds = 300_u64;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().context("--seconds needs a value")?;
                seconds = value.parse().with_context(|| format!("--seconds {value:?}"))?;
            }
            name if TARGETS.contains(&name) => targets.push(name),
            other => bail!("unknown fuzz argument {other:?} (targets: {})", TARGETS.join(", ")),
        }
    }
    if targets.is_empty() {
        targets.extend(TARGETS);
    }
    bootstrap::ensure_toolchain()?;
    let cargo_fuzz = ensure_cargo_fuzz(root)?;
    let fuzz_dir = root.join("fuzz");
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        fs::create_dir_all(&corpus)?;
        status(
            cargo_fuzz_cmd(root, &cargo_fuzz)
                .args(["run", "--fuzz-dir"])
                .arg(&fuzz_dir)
                .arg(target)
                .arg(&corpus)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .args(["-max_len=4096", "-rss_limit_mb=2048", "-timeout=10"]),
        )
        .with_context(|| {
            format!("fuzz target {target} found a crash: see fuzz/artifacts/{target}/")
        })?;
        status(
            cargo_fuzz_cmd(root, &cargo_fuzz)
                .args(["cmin", "--fuzz-dir"])
                .arg(&fuzz_dir)
                .arg(target)
                .arg(&corpus)
                // Edges only, not hit counts: a third of the files for the same coverage.
                .args(["--", "-use_counters=0", "-max_len=4096"]),
        )?;
    }
    Ok(())
}

/// `rustup run <pinned nightly> cargo-fuzz`, with bpf-linker kept off PATH (see the module doc).
fn cargo_fuzz_cmd(root: &Path, cargo_fuzz: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN]).arg(cargo_fuzz).current_dir(root);
    for var in ["RUSTC", "RUSTDOC", "CARGO", "RUSTUP_TOOLCHAIN", "RUSTC_WRAPPER", "RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    let tools = root.join("target/tools/bin");
    if let Some(path) = std::env::var_os("PATH") {
        let kept: Vec<PathBuf> = std::env::split_paths(&path).filter(|d| *d != tools).collect();
        if let Ok(joined) = std::env::join_paths(kept) {
            cmd.env("PATH", joined);
        }
    }
    cmd
}

fn ensure_cargo_fuzz(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("target/fuzz-tools");
    let binary = dir.join("bin/cargo-fuzz");
    let stamp = dir.join("cargo-fuzz.toolchain");
    let wanted = format!("{CARGO_FUZZ_VERSION} {TOOLCHAIN}\n");
    if binary.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(binary);
    }
    status(
        Command::new("rustup")
            .args(["run", TOOLCHAIN, "cargo", "install", "cargo-fuzz", "--locked", "--force"])
            .args(["--version", &format!("={CARGO_FUZZ_VERSION}")])
            .arg("--root")
            .arg(&dir),
    )?;
    fs::write(&stamp, wanted)?;
    Ok(binary)
}
