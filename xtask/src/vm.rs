//! `cargo xtask vm-test`: the sensor on Debian's own packaged kernels, each booted under
//! `qemu-system-x86_64` (software emulation, TCG: no KVM on these machines) from an initramfs
//! built here, with results read back from the serial console.
//!
//! Per kernel series (6.1 from the machine's own bookworm sources, 6.12 from
//! bookworm-backports through a scratch apt directory: the machine's sources are never edited):
//! 1. `apt-get download` the `linux-image-*-amd64` package the series' `linux-image-amd64`
//!    metapackage depends on, into `target/vm/debs/` (cached), and `dpkg-deb -x` it;
//! 2. an initramfs from `busybox-static`, the sensor binary and the libraries `ldd` lists, the
//!    modules the tests need (veth, sch_ingress, cls_bpf; decompressed: busybox `insmod` reads
//!    plain `.ko`) and `tests/vm/` (`init` is `/init`, the `*.sh` tests run in name order);
//! 3. boot with the console on the serial port, wait (bounded) for `VMTEST DONE`, and parse
//!    the `VMTEST PASS name` / `VMTEST FAIL name: why` lines. Missing `DONE`, any `FAIL` or no
//!    `PASS` at all fails the run.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{bootstrap, status};

/// One kernel of the matrix.
struct Series {
    /// `6.1`, `6.12`: the name used in file names and reports.
    name: &'static str,
    /// An apt source line (for a scratch apt directory), or None for the machine's own lists.
    source: Option<&'static str>,
}

const SERIES: [Series; 2] = [
    Series { name: "6.1", source: None },
    Series {
        name: "6.12",
        source: Some(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian bookworm-backports main",
        ),
    },
];

/// Modules the in-VM tests load when the kernel builds them as modules.
const MODULES: [&str; 3] =
    ["drivers/net/veth.ko", "net/sched/sch_ingress.ko", "net/sched/cls_bpf.ko"];

/// Upper bound of one VM run (boot, load, tests, power off) under TCG on two shared cores:
/// the verifier's passes over the host programs (up to a million instructions each) take
/// most of it.
const VM_TIMEOUT: Duration = Duration::from_secs(1800);

/// `cargo xtask vm-test [SERIES...]`: every series by default.
pub fn vm_test(root: &Path, sensor: &Path, only: &[String]) -> anyhow::Result<()> {
    ensure_packages()?;
    let work = root.join("target/vm");
    fs::create_dir_all(&work)?;
    let mut failures = Vec::new();
    let started = Instant::now();
    for series in SERIES.iter().filter(|s| only.is_empty() || only.iter().any(|o| o == s.name)) {
        let kernel = fetch_kernel(&work, series)?;
        let initrd = build_initramfs(root, &work, series.name, &kernel, sensor)?;
        match boot(&work, series.name, &kernel, &initrd) {
            Ok(report) => {
                eprintln!(
                    "vm-test {}: kernel {} booted in {:.1}s, {} passed, ran {:.1}s",
                    series.name,
                    kernel.release,
                    report.boot.as_secs_f64(),
                    report.passed.len(),
                    report.total.as_secs_f64()
                );
                if !report.failed.is_empty() {
                    failures.push(format!("{}: {}", series.name, report.failed.join("; ")));
                }
            }
            Err(err) => failures.push(format!("{}: {err:#}", series.name)),
        }
    }
    eprintln!("vm-test: {:.1}s in all", started.elapsed().as_secs_f64());
    if !failures.is_empty() {
        bail!("vm-test failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// qemu and the static busybox (the dynamic `busybox` package would need its libraries).
pub fn ensure_packages() -> anyhow::Result<()> {
    let static_busybox = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "busybox-static"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"));
    let qemu = bootstrap::which("qemu-system-x86_64").is_some();
    let mut missing = Vec::new();
    if !qemu {
        missing.push("qemu-system-x86");
    }
    if !static_busybox {
        missing.push("busybox-static");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !bootstrap::is_root() {
        bail!("missing packages for vm-test; install: apt-get install -y {}", missing.join(" "));
    }
    bootstrap::apt_install(&missing, true)
}

/// An extracted kernel package.
struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

/// `apt-get` and `apt-cache` options for the series' scratch apt directory (none for the
/// machine's own sources).
fn apt_options(work: &Path, series: &Series) -> anyhow::Result<Vec<String>> {
    let Some(source) = series.source else {
        return Ok(Vec::new());
    };
    let dir = work.join(format!("apt-{}", series.name));
    fs::create_dir_all(dir.join("lists/partial"))?;
    fs::create_dir_all(dir.join("cache/archives/partial"))?;
    fs::write(dir.join("sources.list"), format!("{source}\n"))?;
    let d = dir.display();
    Ok(vec![
        format!("-oDir::Etc::sourcelist={d}/sources.list"),
        "-oDir::Etc::sourceparts=-".to_owned(),
        format!("-oDir::State::Lists={d}/lists"),
        format!("-oDir::Cache={d}/cache"),
        "-oAPT::Get::List-Cleanup=0".to_owned(),
    ])
}

/// The series' kernel, downloaded and extracted once under `target/vm/kernels/<series>`.
fn fetch_kernel(work: &Path, series: &Series) -> anyhow::Result<Kernel> {
    let dir = work.join("kernels").join(series.name);
    if !dir.join("ok").exists() {
        let opts = apt_options(work, series)?;
        if series.source.is_some() {
            status(Command::new("apt-get").args(&opts).args(["-q", "update"]))?;
        }
        // The metapackage names the current image package of the series.
        let out = Command::new("apt-cache")
            .args(&opts)
            .args(["depends", "linux-image-amd64"])
            .output()
            .context("apt-cache depends linux-image-amd64")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let package = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
            .with_context(|| format!("no kernel image package in apt-cache depends: {text}"))?
            .to_owned();
        let debs = work.join("debs");
        fs::create_dir_all(&debs)?;
        if !has_deb(&debs, &package)? {
            status(
                Command::new("apt-get")
                    .args(&opts)
                    .args(["-q", "download", &package])
                    .current_dir(&debs),
            )?;
        }
        let deb = find_deb(&debs, &package)?;
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        fs::write(dir.join("ok"), &package)?;
    }
    let boot = dir.join("boot");
    let vmlinuz = fs::read_dir(&boot)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .with_context(|| format!("no vmlinuz in {}", boot.display()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    let modules = dir.join("lib/modules").join(&release);
    Ok(Kernel { release, vmlinuz, modules })
}

fn deb_prefix(package: &str) -> String {
    format!("{package}_")
}

fn has_deb(debs: &Path, package: &str) -> anyhow::Result<bool> {
    Ok(find_deb(debs, package).is_ok())
}

fn find_deb(debs: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let prefix = deb_prefix(package);
    fs::read_dir(debs)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&prefix) && n.ends_with(".deb")
            })
        })
        .with_context(|| format!("{package} not downloaded into {}", debs.display()))
}

/// Builds `target/vm/initramfs-<series>.cpio.gz`.
fn build_initramfs(
    root: &Path,
    work: &Path,
    series: &str,
    kernel: &Kernel,
    sensor: &Path,
) -> anyhow::Result<PathBuf> {
    let tree = work.join(format!("initramfs-{series}"));
    let _ = fs::remove_dir_all(&tree);
    for dir in ["bin", "sbin", "usr/bin", "proc", "sys", "dev", "tmp", "run", "lib/modules", "vm"] {
        fs::create_dir_all(tree.join(dir))?;
    }
    fs::copy("/bin/busybox", tree.join("bin/busybox")).context("copying /bin/busybox")?;
    fs::copy(sensor, tree.join("bin/sensor"))
        .with_context(|| format!("copying {}", sensor.display()))?;
    for lib in ldd(sensor)? {
        let dest = tree.join(lib.strip_prefix("/").unwrap_or(&lib));
        fs::create_dir_all(dest.parent().context("library path has no parent")?)?;
        fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    for module in MODULES {
        let base = kernel.modules.join("kernel").join(module);
        let name = Path::new(module).file_name().context("module name")?;
        let dest = tree.join("lib/modules").join(name);
        if base.exists() {
            fs::copy(&base, &dest)?;
        } else {
            let xz = base.with_extension("ko.xz");
            if !xz.exists() {
                continue; // built in
            }
            let out = Command::new("xz").arg("-dc").arg(&xz).output().context("xz -dc")?;
            if !out.status.success() {
                bail!("xz -dc {} failed", xz.display());
            }
            fs::write(&dest, out.stdout)?;
        }
    }
    let scripts = root.join("tests/vm");
    for entry in fs::read_dir(&scripts).with_context(|| format!("reading {}", scripts.display()))? {
        let path = entry?.path();
        let name = path.file_name().context("file name")?;
        let dest = if name == "init" { tree.join("init") } else { tree.join("vm").join(name) };
        fs::copy(&path, &dest)?;
        set_executable(&dest)?;
    }
    let initrd = work.join(format!("initramfs-{series}.cpio.gz"));
    // busybox's cpio writes the newc format the kernel unpacks.
    let script = format!(
        "cd {} && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1 > {}",
        tree.display(),
        initrd.display()
    );
    status(Command::new("sh").args(["-c", &script]))?;
    Ok(initrd)
}

fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The shared libraries (and loader) `ldd` lists for `binary`.
fn ldd(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// What one VM run printed.
struct Report {
    boot: Duration,
    total: Duration,
    passed: Vec<String>,
    failed: Vec<String>,
}

/// Boots `kernel` with `initrd`; the serial console goes to `target/vm/<series>.log`.
fn boot(work: &Path, series: &str, kernel: &Kernel, initrd: &Path) -> anyhow::Result<Report> {
    let log = work.join(format!("{series}.log"));
    let _ = fs::remove_file(&log);
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-cpu", "max", "-smp", "2", "-m", "1536"])
        .args(["-display", "none", "-no-reboot", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning qemu-system-x86_64")?;
    eprintln!("vm-test {series}: booting {} (serial log {})", kernel.release, log.display());
    let mut boot = None;
    let exit = loop {
        if let Some(exit) = child.try_wait()? {
            break Some(exit);
        }
        if boot.is_none() && read_log(&log).contains("VMTEST BOOTED") {
            boot = Some(started.elapsed());
        }
        if started.elapsed() > VM_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let total = started.elapsed();
    let text = read_log(&log);
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("VMTEST PASS ") {
            eprintln!("  {series} PASS {name}");
            passed.push(name.to_owned());
        } else if let Some(why) = line.strip_prefix("VMTEST FAIL ") {
            eprintln!("  {series} FAIL {why}");
            failed.push(why.to_owned());
        } else if let Some(rest) = line.strip_prefix("VMTEST ") {
            eprintln!("  {series} {rest}");
        }
    }
    if exit.is_none() {
        failed.push(format!("timed out after {}s (see {})", VM_TIMEOUT.as_secs(), log.display()));
    } else if !text.contains("VMTEST DONE") {
        failed.push(format!("the VM stopped before VMTEST DONE (see {}): {stderr}", log.display()));
    }
    if passed.is_empty() {
        failed.push("no test passed".to_owned());
    }
    Ok(Report { boot: boot.unwrap_or(total), total, passed, failed })
}

fn read_log(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}
