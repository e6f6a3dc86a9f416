//! A cgroup v2 directory for the test's processes, removed on drop.

use std::{
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use crate::{unique, wait_until};

pub struct Cgroup {
    pub path: PathBuf,
    /// A parent directory this guard made for a named leaf, removed after it.
    parent: Option<PathBuf>,
}

impl Cgroup {
    pub fn new() -> Self {
        let path = cgroup2_root().join(unique("se2e-cg-"));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path, parent: None }
    }

    /// A cgroup whose last components are `leaf` (e.g. `cri-containerd-<id>.scope`, as a
    /// container runtime names it), under a fresh parent of its own.
    pub fn named(leaf: &str) -> Self {
        let parent = cgroup2_root().join(unique("se2e-pods-"));
        fs::create_dir(&parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        let path = parent.join(leaf);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path, parent: Some(parent) }
    }

    /// A cgroup made inside this one at `relative` (intermediate directories included, as
    /// systemd or Docker inside a container make them). Drop it before its parent.
    pub fn child(&self, relative: &str) -> Self {
        let path = self.path.join(relative);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        // Intermediate directories are removed after the leaf, innermost first.
        let first =
            relative.split('/').next().filter(|f| *f != relative).map(|f| self.path.join(f));
        Self { path, parent: first }
    }

    /// The id the kernel reports for tasks in this cgroup (`bpf_get_current_cgroup_id`).
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path).expect("stat cgroup").ino()
    }

    /// Spawns `cmd` so that it is already in this cgroup when it calls execve.
    pub fn spawn(&self, cmd: &mut Command) -> Child {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .expect("open cgroup.procs");
        let fd = procs.as_raw_fd();
        // SAFETY: the hook only calls write(2), which is async-signal-safe, on an fd that the
        // parent keeps open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // Writing "0" moves the writing process (the forked child) into the cgroup.
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let child = cmd.spawn().expect("spawn in cgroup");
        drop(procs);
        child
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let path = self.path.clone();
        // rmdir fails with EBUSY until the killed tasks are gone.
        let removed = std::panic::catch_unwind(|| {
            wait_until("cgroup removal", Duration::from_secs(5), || fs::remove_dir(&path).ok())
        });
        if removed.is_err() {
            eprintln!("warning: could not remove {}", self.path.display());
        }
        if let Some(parent) = &self.parent {
            // A named leaf's parent, or a child's intermediate directories (innermost first).
            let mut dir = self.path.parent();
            while let Some(d) = dir {
                let _ = fs::remove_dir(d);
                if d == parent {
                    break;
                }
                dir = d.parent();
            }
        }
    }
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on modern hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones; read from mountinfo rather than guessed.
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| Path::new(mount_point).to_path_buf())
        })
        .expect("no cgroup2 mount in /proc/self/mountinfo")
}
