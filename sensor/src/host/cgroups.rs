//! cgroup id → cgroup path → container id, for containerd, CRI-O, Docker and Podman under the
//! systemd and cgroupfs drivers. The id the kernel reports is the inode number of the cgroup's
//! directory in the cgroup v2 hierarchy.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Directories walked below the cgroup v2 root; kubepods nest about six deep.
const MAX_DEPTH: usize = 12;
/// Cgroups remembered; a node with more is unusual and the rest are left unattributed.
const MAX_CGROUPS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The full 64-hex container id.
    pub id: String,
    pub runtime: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupInfo {
    /// Path relative to the cgroup v2 root, starting with `/`.
    pub path: String,
    pub container: Option<Container>,
}

/// The cgroups of the node, by id.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    pub by_id: HashMap<u64, CgroupInfo>,
}

impl Inventory {
    /// Walks the cgroup v2 hierarchy at `root`.
    pub fn scan(root: &Path) -> Self {
        let mut by_id = HashMap::new();
        let mut stack: Vec<(PathBuf, usize)> = vec![(root.to_owned(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            let relative = dir
                .strip_prefix(root)
                .map_or_else(|_| "/".to_owned(), |p| format!("/{}", p.display()));
            let container = container_of(&relative);
            by_id.insert(meta.ino(), CgroupInfo { path: relative, container });
            if by_id.len() >= MAX_CGROUPS || depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
        Self { by_id }
    }
}

/// The container a cgroup path belongs to, from its last components (falco.md §6.4).
pub fn container_of(path: &str) -> Option<Container> {
    let mut components = path.rsplit('/').filter(|c| !c.is_empty());
    let last = components.next()?;
    // systemd driver: <runtime-prefix>-<id>.scope
    if let Some(stem) = last.strip_suffix(".scope") {
        for (prefix, runtime) in [
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("docker-", "docker"),
            ("libpod-", "podman"),
        ] {
            if let Some(id) = stem.strip_prefix(prefix)
                && is_container_id(id)
            {
                return Some(Container { id: id.to_owned(), runtime });
            }
        }
        return None;
    }
    // cgroupfs driver: .../kubepods/<qos>/pod<uid>/<id>, /docker/<id>, /libpod_parent/libpod-<id>
    if is_container_id(last) {
        let parent = components.next().unwrap_or_default();
        let runtime = if parent == "docker" {
            "docker"
        } else if parent.starts_with("pod") {
            "cri" // containerd or CRI-O: the path does not say which
        } else {
            return None;
        };
        return Some(Container { id: last.to_owned(), runtime });
    }
    None
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `containerd://<id>` (as in pod status) → `<id>`.
pub fn bare_container_id(id: &str) -> &str {
    id.rsplit_once("://").map_or(id, |(_, bare)| bare)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts), from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> std::io::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next()? == "cgroup2")
                .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or_else(|| std::io::Error::other("no cgroup2 mount in /proc/self/mountinfo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c8a4e1c2b4d6f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f";

    #[test]
    fn runtimes_and_drivers() {
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice/cri-containerd-{ID}.scope"
                ),
                Some("containerd"),
            ),
            (format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"), Some("cri-o")),
            (format!("/system.slice/docker-{ID}.scope"), Some("docker")),
            (format!("/machine.slice/libpod-{ID}.scope"), Some("podman")),
            (
                format!("/kubepods/burstable/pod0b9d2a4e-1111-2222-3333-444455556666/{ID}"),
                Some("cri"),
            ),
            (format!("/docker/{ID}"), Some("docker")),
            (format!("/kubepods.slice/crio-conmon-{ID}.scope"), None),
            ("/system.slice/sshd.service".to_owned(), None),
            (format!("/user.slice/{ID}"), None),
        ];
        for (path, runtime) in cases {
            let got = container_of(&path);
            assert_eq!(got.as_ref().map(|c| c.runtime), runtime, "{path}");
            if let Some(c) = got {
                assert_eq!(c.id, ID);
            }
        }
    }

    #[test]
    fn status_ids_lose_their_scheme() {
        assert_eq!(bare_container_id(&format!("containerd://{ID}")), ID);
        assert_eq!(bare_container_id(ID), ID);
    }
}
