//! Builds the eBPF object (`sensor-ebpf`) with the pinned nightly and bpf-linker, and embeds it.
//!
//! Without bpf-linker on PATH an empty stub is written instead, so `cargo check` and clippy work
//! on any machine; the agent refuses to start with a stub (see `loader::EBPF_OBJECT`).

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=SENSOR_TOOLCHAIN");
    println!("cargo::rerun-if-changed=../sensor-common/src");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("sensor");

    if !bpf_linker_on_path() {
        println!(
            "cargo::warning=bpf-linker not on PATH: building with an empty eBPF stub \
             (run `cargo xtask build` for a working binary)"
        );
        fs::write(&object, []).context("writing eBPF stub")?;
        return Ok(());
    }
    let toolchain =
        env::var("SENSOR_TOOLCHAIN").context("SENSOR_TOOLCHAIN (set in .cargo/config.toml)")?;
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../sensor-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [Package { name: "sensor-ebpf", root_dir: root, ..Default::default() }],
        Toolchain::Custom(&toolchain),
    )
}

fn bpf_linker_on_path() -> bool {
    env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join("bpf-linker").is_file()))
}
