//! A pod in miniature for host tests: a test cgroup named like a containerd container, an
//! endpoints file naming its pod (`shop/web-1`, app=web), and a scratch directory holding
//! `data/secret/token`. Everything is removed on drop.

use std::{fs, path::PathBuf};

use crate::{Cgroup, Netns, unique};

pub struct ContainerPod {
    pub node: Netns,
    pub cgroup: Cgroup,
    /// 64 hex digits, unique per test.
    pub container_id: String,
    /// Scratch directory: `endpoints.yaml`, `data/`, and whatever the test adds.
    pub dir: PathBuf,
}

impl ContainerPod {
    pub fn new(prefix: &str) -> Self {
        Self::named(prefix, |id| format!("cri-containerd-{id}.scope"))
    }

    /// [`Self::new`] with the cgroup's path below a fresh parent given by `leaf(container_id)`
    /// (a runtime's naming: `crio-<id>.scope`, `<slice>:cri-containerd:<id>`, `pod<uid>/<id>`).
    pub fn named(prefix: &str, leaf: impl Fn(&str) -> String) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        fs::create_dir_all(dir.join("data/secret")).expect("mkdir");
        fs::write(dir.join("data/secret/token"), "s3cr3t").expect("token");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let container_id =
            format!("{:0>64x}", u128::from(std::process::id()) << 32 | u128::from(nanos));
        fs::write(
            dir.join("endpoints.yaml"),
            format!(
                "endpoints:\n- {{namespace: shop, name: web-1, labels: {{app: web}}, containers: [\"containerd://{container_id}\"]}}\n"
            ),
        )
        .expect("endpoints");
        let cgroup = Cgroup::named(&leaf(&container_id));
        Self { node: Netns::new("node"), cgroup, container_id, dir }
    }

    /// The canonical path of `data/` (what the kernel reports).
    pub fn data(&self) -> String {
        fs::canonicalize(self.dir.join("data")).expect("canonical").display().to_string()
    }
}

impl Drop for ContainerPod {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
