//! cgroup id → cgroup path → container id, for containerd, CRI-O, Docker and Podman under the
//! systemd and cgroupfs drivers. The id the kernel reports is the inode number of the cgroup's
//! directory in the cgroup v2 hierarchy.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Cgroups remembered; a node with more is unusual and the rest are left unattributed.
/// The walk has no depth limit: a cgroup nested below a container's, however deep, is found
/// and inherits the container (a depth limit would be a way out of a pod's policy).
const MAX_CGROUPS: usize = 100_000;

/// A container as its cgroup names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The full 64-hex container id.
    pub id: String,
    /// `containerd`, `cri-o`, `docker`, `podman`, or `cri` (the cgroupfs driver's kubepods
    /// layout, which does not say whether containerd or CRI-O made it).
    pub runtime: &'static str,
}

/// One cgroup of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupInfo {
    /// Path relative to the cgroup v2 root, starting with `/`.
    pub path: String,
    /// The container the cgroup is, or is nested in (see [`container_of`]).
    pub container: Option<Container>,
}

/// The cgroups of the node, by id.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    pub by_id: HashMap<u64, CgroupInfo>,
}

impl Inventory {
    /// Walks the cgroup v2 hierarchy at `root` (every depth, at most [`MAX_CGROUPS`]).
    pub fn scan(root: &Path) -> Self {
        let mut by_id = HashMap::new();
        let mut stack: Vec<PathBuf> = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            let relative = dir
                .strip_prefix(root)
                .map_or_else(|_| "/".to_owned(), |p| format!("/{}", p.display()));
            let container = container_of(&relative);
            by_id.insert(meta.ino(), CgroupInfo { path: relative, container });
            if by_id.len() >= MAX_CGROUPS {
                tracing::warn!(
                    "more than {MAX_CGROUPS} cgroups: the rest are not attributed this scan"
                );
                break;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        Self { by_id }
    }
}

/// Runtimes by the prefix they give a container's cgroup (`<prefix>-<id>.scope` under the
/// systemd driver, `<slice>:<prefix>:<id>` in the systemd-style path containerd and CRI-O
/// hand to a cgroupfs-driven runc, `libpod-<id>` under podman's cgroupfs driver).
const RUNTIME_PREFIXES: [(&str, &str); 4] = [
    ("cri-containerd", "containerd"),
    ("crio", "cri-o"),
    ("docker", "docker"),
    ("libpod", "podman"),
];

/// The container a cgroup path belongs to: the outermost component that names a container
/// (falco.md §6.4, libsinsp's container engines). Cgroups nested below it (systemd or Docker
/// inside the container: `…/cri-containerd-<id>.scope/init.scope`, `…/<id>/sub/x`) belong to
/// the same container; the outermost wins because a process inside a container can create
/// child cgroups with any name, while the outermost one is the runtime's.
///
/// Recognised, with `<id>` 64 hex digits:
/// - systemd driver: `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`,
///   `libpod-<id>.scope`;
/// - a systemd-style cgroups path under the cgroupfs driver:
///   `<slice>:cri-containerd:<id>`, `<slice>:crio:<id>`, …;
/// - cgroupfs driver: `/kubepods[/<qos>]/pod<uid>/<id>`, `…/kubepods-…-pod<uid>.slice/<id>`,
///   `…/pod<uid>/crio-<id>`, `/docker/<id>`, `/libpod_parent/libpod-<id>`.
///
/// Runtime monitors (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`) run on the host on
/// the container's behalf and are not the container: they get no container.
pub fn container_of(path: &str) -> Option<Container> {
    let mut parent = "";
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if let Some(container) = component_container(parent, component) {
            return Some(container);
        }
        parent = component;
    }
    None
}

/// Whether `component` (below `parent`) is a container's own cgroup.
fn component_container(parent: &str, component: &str) -> Option<Container> {
    let found = |id: &str, runtime| Some(Container { id: id.to_owned(), runtime });
    // systemd driver: <prefix>-<id>.scope
    if let Some(stem) = component.strip_suffix(".scope") {
        for (prefix, runtime) in RUNTIME_PREFIXES {
            if let Some(id) = stem.strip_prefix(prefix).and_then(|r| r.strip_prefix('-'))
                && is_container_id(id)
            {
                return found(id, runtime);
            }
        }
        return None;
    }
    // systemd-style path under the cgroupfs driver: <slice>:<prefix>:<id>
    let mut parts = component.split(':');
    if let (Some(_slice), Some(prefix), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    {
        return RUNTIME_PREFIXES
            .iter()
            .find(|(p, _)| *p == prefix)
            .filter(|_| is_container_id(id))
            .and_then(|(_, runtime)| found(id, runtime));
    }
    // cgroupfs driver with the runtime's prefix: CRI-O's …/pod<uid>/crio-<id>, podman's
    // /libpod_parent/libpod-<id>
    for (prefix, runtime) in RUNTIME_PREFIXES {
        if let Some(id) = component.strip_prefix(prefix).and_then(|r| r.strip_prefix('-'))
            && is_container_id(id)
        {
            return found(id, runtime);
        }
    }
    // cgroupfs driver: …/pod<uid>/<id>, /docker/<id>
    if is_container_id(component) {
        if parent == "docker" {
            return found(component, "docker");
        }
        let kube_pod = parent.starts_with("pod")
            || (parent.starts_with("kubepods")
                && parent.contains("-pod")
                && parent.ends_with(".slice"));
        if kube_pod {
            return found(component, "cri"); // containerd or CRI-O: the path does not say which
        }
    }
    None
}

/// Watches the cgroup subtrees of containers (inotify, recursive: a watch per directory)
/// so a cgroup made inside a container wakes a rescan at once, before any process in it
/// execs. Without it a process that moves itself into a new child cgroup and only opens
/// files would stay unscoped until the periodic rescan.
pub struct SubtreeWatcher {
    watcher: notify::INotifyWatcher,
    roots: std::collections::BTreeSet<PathBuf>,
    cgroup_root: PathBuf,
}

impl SubtreeWatcher {
    /// `created` is woken for each directory created below a watched container.
    pub fn new(
        cgroup_root: PathBuf,
        created: std::sync::Arc<tokio::sync::Notify>,
    ) -> notify::Result<Self> {
        use notify::Watcher as _;
        let watcher = notify::INotifyWatcher::new(
            move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| matches!(e.kind, notify::EventKind::Create(_))) {
                    created.notify_one();
                }
            },
            notify::Config::default(),
        )?;
        Ok(Self { watcher, roots: std::collections::BTreeSet::new(), cgroup_root })
    }

    /// Watches the outermost cgroup of every container in `inventory`, and stops watching
    /// those that are gone. Returns how many are watched.
    pub fn sync(&mut self, inventory: &Inventory) -> usize {
        use notify::Watcher as _;
        let wanted: std::collections::BTreeSet<PathBuf> = inventory
            .by_id
            .values()
            .filter(|c| c.container.is_some() && is_container_root(&c.path))
            .map(|c| self.cgroup_root.join(c.path.trim_start_matches('/')))
            .collect();
        for gone in self.roots.difference(&wanted) {
            // The directory is usually removed already, and its watch with it.
            let _ = self.watcher.unwatch(gone);
        }
        self.roots.retain(|r| wanted.contains(r));
        for root in wanted {
            if !self.roots.contains(&root) {
                match self.watcher.watch(&root, notify::RecursiveMode::Recursive) {
                    Ok(()) => {
                        self.roots.insert(root);
                    }
                    Err(err) => {
                        tracing::debug!(cgroup = %root.display(), "watching container cgroup: {err}");
                    }
                }
            }
        }
        self.roots.len()
    }
}

/// Whether the container `path` names is its own (not inherited from an ancestor cgroup).
fn is_container_root(path: &str) -> bool {
    path.rsplit_once('/').is_some_and(|(parent, _)| container_of(parent).is_none())
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

    /// Real-world cgroup paths (kubelet, containerd, CRI-O, Docker, Podman; systemd and
    /// cgroupfs drivers; nested cgroups inside containers) → the runtime they name.
    #[test]
    fn runtimes_drivers_and_nesting() {
        let pod = "kubepods-burstable-pod0b9d2a4e_1111_2222_3333_444455556666.slice";
        let cases = [
            // containerd, systemd driver
            (
                format!("/kubepods.slice/kubepods-burstable.slice/{pod}/cri-containerd-{ID}.scope"),
                Some("containerd"),
            ),
            (
                format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
                Some("containerd"),
            ),
            // containerd/CRI-O handing a systemd-style path to a cgroupfs-driven runc
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/{pod}:cri-containerd:{ID}"),
                Some("containerd"),
            ),
            (format!("/case-F10/{pod}:cri-containerd:{ID}"), Some("containerd")),
            (format!("/kubepods.slice/{pod}:crio:{ID}"), Some("cri-o")),
            (format!("/system.slice:docker:{ID}"), Some("docker")),
            // CRI-O, systemd driver, and its monitor
            (format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"), Some("cri-o")),
            (
                format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope/container"),
                Some("cri-o"),
            ),
            (format!("/kubepods.slice/kubepods-pod1.slice/crio-conmon-{ID}.scope"), None),
            // Docker and Podman
            (format!("/system.slice/docker-{ID}.scope"), Some("docker")),
            (format!("/docker/{ID}"), Some("docker")),
            (format!("/machine.slice/libpod-{ID}.scope"), Some("podman")),
            (format!("/machine.slice/libpod-{ID}.scope/container"), Some("podman")),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                Some("podman"),
            ),
            (format!("/libpod_parent/libpod-{ID}"), Some("podman")),
            (format!("/libpod_parent/libpod-conmon-{ID}"), None),
            (format!("/kubepods/besteffort/pod1/crio-{ID}"), Some("cri-o")),
            (format!("/kubepods/besteffort/pod1/crio-conmon-{ID}"), None),
            // kubelet, cgroupfs driver
            (
                format!("/kubepods/burstable/pod0b9d2a4e-1111-2222-3333-444455556666/{ID}"),
                Some("cri"),
            ),
            (format!("/kubepods/pod0b9d2a4e-1111-2222-3333-444455556666/{ID}"), Some("cri")),
            (format!("/kubepods.slice/{pod}/{ID}"), Some("cri")),
            // nested below a container: systemd or Docker inside it
            (
                format!("/kubepods.slice/{pod}/cri-containerd-{ID}.scope/init.scope"),
                Some("containerd"),
            ),
            (
                format!(
                    "/kubepods.slice/{pod}/cri-containerd-{ID}.scope/system.slice/sshd.service"
                ),
                Some("containerd"),
            ),
            (format!("/kubepods/besteffort/pod1/{ID}/sub/deeper/x"), Some("cri")),
            (format!("/docker/{ID}/docker/{}", "f".repeat(64)), Some("docker")),
            (format!("/{}/x/cri-containerd-{ID}.scope", "a/".repeat(40)), Some("containerd")),
            // not containers
            ("/".to_owned(), None),
            ("/system.slice/sshd.service".to_owned(), None),
            ("/system.slice/containerd.service".to_owned(), None),
            (format!("/user.slice/{ID}"), None),
            (format!("/kubepods.slice/cri-containerd-{}.scope", &ID[..63]), None),
            (format!("/kubepods.slice/cri-containerd-{}x.scope", &ID[..63]), None),
            (format!("/kubepods.slice/{pod}:unknown:{ID}"), None),
            (format!("/kubepods.slice/{pod}:cri-containerd:{ID}:x"), None),
        ];
        for (path, runtime) in cases {
            let got = container_of(&path);
            assert_eq!(got.as_ref().map(|c| c.runtime), runtime, "{path}");
            if let Some(c) = got {
                assert_eq!(c.id, ID, "{path}");
            }
        }
    }

    /// A container's own cgroup names it; names made inside it (a process there may create
    /// `docker-<other>.scope` below its own) do not override it.
    #[test]
    fn the_outermost_container_wins() {
        let other = "e".repeat(64);
        let path = format!("/kubepods.slice/cri-containerd-{ID}.scope/docker-{other}.scope");
        assert_eq!(container_of(&path).map(|c| c.id), Some(ID.to_owned()));
    }

    #[test]
    fn scan_finds_every_depth() {
        let root = std::env::temp_dir().join(format!("sensor-cg-scan-{}", std::process::id()));
        let deep = root.join(format!("cri-containerd-{ID}.scope")).join("a/".repeat(30));
        std::fs::create_dir_all(&deep).expect("mkdir");
        let inventory = Inventory::scan(&root);
        let ino = std::fs::metadata(&deep).expect("stat").ino();
        let got = inventory.by_id.get(&ino).and_then(|c| c.container.clone()).map(|c| c.id);
        std::fs::remove_dir_all(&root).expect("rm");
        assert_eq!(got, Some(ID.to_owned()));
    }

    #[test]
    fn status_ids_lose_their_scheme() {
        assert_eq!(bare_container_id(&format!("containerd://{ID}")), ID);
        assert_eq!(bare_container_id(ID), ID);
    }
}
