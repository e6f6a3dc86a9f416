//! What the agent leaves in the kernel across its own restarts: its state maps, the tc
//! programs and every link, pinned under `bpf_pin_dir` (default `/sys/fs/bpf/sensor`):
//!
//! ```text
//! <dir>/object-<hash>/  stamp of the eBPF object and map sizes that made the pins (bpffs
//!                       holds no regular files: the stamp is a directory name)
//! <dir>/maps/<MAP>      state maps (conntrack, policy, host rules, counters, ring buffers)
//! <dir>/progs/<name>    tc_ingress, tc_egress (attached to interfaces that appear later)
//! <dir>/links/<hook>    host hooks: tracepoints, raw sys_enter/sys_exit, cgroup sock_addr
//! <dir>/links/tc-<ifindex>-<ingress|egress>
//! ```
//!
//! While pinned, the programs keep enforcing with the last policy and conntrack state when
//! the agent is down (crash, `kill -9`, SIGTERM during an upgrade). A start whose stamp
//! matches adopts everything (nothing detached, nothing loaded twice); a start with another
//! object (an upgrade) attaches its new programs first, then drops the old links (no gap),
//! with fresh maps. `sensor cleanup` removes the directory: links and programs go with it.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, PinnedLink};

/// Default pin directory.
pub const DEFAULT_DIR: &str = "/sys/fs/bpf/sensor";

/// The pin directory of one agent.
#[derive(Debug, Clone)]
pub struct Pins {
    dir: PathBuf,
}

/// How this start relates to what is pinned.
#[derive(Debug)]
pub enum Start {
    /// Same object, every host link present: adopt maps, programs and links.
    Adopt,
    /// Nothing pinned, or another object: load fresh. `previous` holds the old links, to be
    /// dropped (detached) once the new ones are attached.
    Fresh { previous: Vec<FdLink> },
}

impl Pins {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join("progs").join(name)
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.dir.join("links").join(name)
    }

    pub fn tc_link(&self, ifindex: u32, direction: &str) -> PathBuf {
        self.link(&format!("tc-{ifindex}-{direction}"))
    }

    /// The ifindexes that have tc link pins.
    pub fn tc_link_indexes(&self) -> Vec<u32> {
        let mut out: Vec<u32> = list(&self.dir.join("links"))
            .iter()
            .filter_map(|p| {
                p.file_name()?.to_str()?.strip_prefix("tc-")?.split('-').next()?.parse().ok()
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Decides between adoption and a fresh load, and prepares the directory for it.
    /// `stamp` identifies the eBPF object and everything that shapes its maps.
    pub fn prepare(
        &self,
        stamp: &str,
        host_links: &[&str],
        programs: &[&str],
    ) -> io::Result<Start> {
        for sub in ["maps", "progs", "links"] {
            fs::create_dir_all(self.dir.join(sub))?;
        }
        let same = self.dir.join(format!("object-{stamp}")).is_dir();
        let complete = host_links.iter().all(|l| self.link(l).exists())
            && programs.iter().all(|p| self.program(p).exists());
        if same && complete {
            return Ok(Start::Adopt);
        }
        // Keep the old links alive (their fds) until the new ones are attached.
        let mut previous = Vec::new();
        for path in list(&self.dir.join("links")) {
            match PinnedLink::from_pin(&path) {
                Ok(link) => match link.unpin() {
                    Ok(fd) => previous.push(fd),
                    Err(err) => tracing::warn!("unpinning {}: {err}", path.display()),
                },
                Err(_) => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        for sub in ["maps", "progs"] {
            for path in list(&self.dir.join(sub)) {
                fs::remove_file(&path)?;
            }
        }
        self.remove_stamps()?;
        Ok(Start::Fresh { previous })
    }

    /// Records that the pins are complete for `stamp` (after everything is attached).
    pub fn commit(&self, stamp: &str) -> io::Result<()> {
        self.remove_stamps()?;
        fs::create_dir(self.dir.join(format!("object-{stamp}")))
    }

    fn remove_stamps(&self) -> io::Result<()> {
        for path in list(&self.dir) {
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("object-")) {
                fs::remove_dir(&path)?;
            }
        }
        Ok(())
    }

    /// Removes everything under the directory and the directory itself. Returns how many
    /// pins were removed. Links go (and detach) with their pins; programs and maps are freed
    /// once nothing else holds them (a running agent still does: stop it first).
    pub fn cleanup(&self) -> io::Result<usize> {
        if !self.dir.exists() {
            return Ok(0);
        }
        let mut removed = 0;
        for sub in ["links", "progs", "maps"] {
            for path in list(&self.dir.join(sub)) {
                fs::remove_file(&path)?;
                removed += 1;
            }
            let _ = fs::remove_dir(self.dir.join(sub));
        }
        for path in list(&self.dir) {
            if path.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
        fs::remove_dir(&self.dir)?;
        Ok(removed)
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sensor-pins-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn cleanup_removes_every_pin_and_the_directory() {
        // Any filesystem behaves like bpffs for unlink and rmdir.
        let dir = scratch("cleanup");
        let pins = Pins::new(&dir);
        for sub in ["maps", "progs", "links", "object-0123"] {
            fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        for file in ["maps/CONNTRACK", "progs/tc_ingress", "links/tc-7-ingress", "links/bind4"] {
            fs::write(dir.join(file), "").expect("write");
        }
        assert_eq!(pins.tc_link_indexes(), vec![7]);
        assert_eq!(pins.cleanup().expect("cleanup"), 4);
        assert!(!dir.exists());
        assert_eq!(pins.cleanup().expect("absent is fine"), 0);
    }

    #[test]
    fn a_new_stamp_starts_fresh_and_clears_old_pins() {
        let dir = scratch("stamp");
        let pins = Pins::new(&dir);
        // Nothing pinned: fresh.
        assert!(matches!(pins.prepare("aa", &["bind4"], &["tc_ingress"]), Ok(Start::Fresh { .. })));
        fs::write(pins.map("CONNTRACK"), "").expect("write");
        fs::write(pins.program("tc_ingress"), "").expect("write");
        fs::write(pins.link("bind4"), "").expect("write");
        pins.commit("aa").expect("commit");
        // Same stamp, complete: adopt.
        assert!(matches!(pins.prepare("aa", &["bind4"], &["tc_ingress"]), Ok(Start::Adopt)));
        // Another object: fresh; maps and programs of the old one are unpinned (a regular
        // file is no bpf link, so it is removed too).
        assert!(matches!(pins.prepare("bb", &["bind4"], &["tc_ingress"]), Ok(Start::Fresh { .. })));
        assert!(!pins.map("CONNTRACK").exists() && !pins.program("tc_ingress").exists());
        assert!(!pins.link("bind4").exists() && !dir.join("object-aa").exists());
        pins.cleanup().expect("cleanup");
    }
}
