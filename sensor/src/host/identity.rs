//! Host policy paths → the objects they name, by identity (device and inode), for
//! [`sensor_common::host::INODE_RULES_MAP`]. The kernel compares the inode an operation reaches,
//! and its ancestors, with these entries, so a hard link, a symlinked directory, a bind mount,
//! a chroot or `/proc/<pid>/root` reach the same rule as the path the rule spells.
//!
//! Each rule path is resolved in every root that matters: the agent's own (the host) and the
//! root of one process of each watched cgroup (a container's filesystem), with `openat2`'s
//! `RESOLVE_IN_ROOT` so absolute symlinks inside a container stay inside it. A tree (`prefix`)
//! gives a [`ROLE_BELOW`] entry for its directory and a [`ROLE_SELF`] entry for every object
//! below it (so a hard link made elsewhere to a file of the tree still matches), up to
//! [`MAX_MEMBERS`] objects; an exact `path` gives a [`ROLE_SELF`] entry. Every entry carries
//! the masks of all rules covering it, enclosing trees folded in: the kernel stops at the
//! first entry it meets walking up.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use sensor_common::host::{ACCESS_EXEC, InodeKey, InodeMasks, ROLE_BELOW, ROLE_SELF};

use super::policy::{HostPolicy, PathMatch, PolicyAction};

/// Objects entered per tree walk, over all trees and roots of one compile; the kernel map holds
/// two generations of [`sensor_common::host::INODE_RULES_MAX_ENTRIES`] / 2.
pub const MAX_MEMBERS: usize = 30_000;
/// Directory levels a tree walk descends.
const MAX_TREE_DEPTH: usize = 64;

/// A rule as the resolver needs it: what it names and its masks per kind.
#[derive(Debug, Clone)]
struct Target {
    path: String,
    /// A tree: the path ends with `/` (entries below it), or names a directory.
    prefix: bool,
    masks: InodeMasks,
}

/// The entries, and how many objects a full walk would have needed beyond [`MAX_MEMBERS`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub entries: HashMap<InodeKey, InodeMasks>,
    /// Tree members not entered (limit reached): they match through their ancestors only.
    pub skipped: usize,
    /// Protected names (exact paths, trees named without a trailing slash) by their
    /// directory's identity, for held calls ([`super::hold`]): a name that does not exist yet
    /// is protected too.
    pub names: HashMap<super::hold::NameKey, InodeMasks>,
}

fn or(into: &mut InodeMasks, from: &InodeMasks) {
    for k in 0..into.audit.len() {
        into.audit[k] |= from.audit[k];
        into.block[k] |= from.block[k];
    }
}

/// The rules of `policies` with the generation's mask bits (`shift` 0 or 32).
fn targets(policies: &[HostPolicy], shift: u32) -> Vec<Target> {
    let mut out = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let bit = 1_u64 << (i as u32 + shift);
        let mut add = |m: &PathMatch, kinds: &mut dyn Iterator<Item = usize>, action| {
            let mut masks = InodeMasks::default();
            for k in kinds {
                match action {
                    PolicyAction::Audit => masks.audit[k] |= bit,
                    PolicyAction::Block => masks.block[k] |= bit,
                }
            }
            let (path, prefix) = match m {
                PathMatch::Exact(p) => (p.clone(), false),
                PathMatch::Prefix(p) => (p.clone(), true),
            };
            out.push(Target { path, prefix, masks });
        };
        for rule in &p.executables {
            add(&rule.path, &mut std::iter::once(ACCESS_EXEC), rule.action);
        }
        for rule in &p.files {
            add(&rule.path, &mut rule.access.iter().map(|a| a.index()), rule.action);
        }
    }
    out
}

/// An object found for a rule: its identity and its path in that root, canonical.
#[derive(Debug, Clone)]
struct Found {
    dev: u32,
    ino: u64,
    dir: bool,
    canonical: PathBuf,
}

/// The kernel's `s_dev` encoding (`MKDEV`: major << 20 | minor) of a user-space `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | minor
}

/// `openat2(root, path, O_PATH, RESOLVE_IN_ROOT)`: the object `path` names inside `root`.
fn open_in_root(root: &OwnedFd, path: &str) -> Option<OwnedFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_IN_ROOT: u64 = 0x10;
    let name = CString::new(path.trim_start_matches('/')).ok()?;
    let name = if name.as_bytes().is_empty() { CString::new(".").ok()? } else { name };
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT,
    };
    // SAFETY: valid descriptor, NUL-terminated name, and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            name.as_ptr(),
            &raw const how,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel returned a new descriptor we own.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn found(fd: &OwnedFd) -> Option<Found> {
    let link = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let meta = std::fs::metadata(&link).ok()?;
    let canonical = std::fs::read_link(&link).ok()?;
    Some(Found { dev: kernel_dev(meta.dev()), ino: meta.ino(), dir: meta.is_dir(), canonical })
}

/// The roots to resolve in: the host's, and one process's root per distinct container root.
fn roots(pids: &[u32]) -> Vec<OwnedFd> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let candidates =
        std::iter::once("/".to_owned()).chain(pids.iter().map(|pid| format!("/proc/{pid}/root")));
    for path in candidates {
        let Ok(dir) = std::fs::File::open(&path) else { continue };
        let Ok(meta) = dir.metadata() else { continue };
        if seen.insert((meta.dev(), meta.ino())) {
            out.push(OwnedFd::from(dir));
        }
    }
    out
}

/// Resolves `policies` (compiled for `generation`) in the host's root and in the roots of
/// `pids` (one process of each watched container).
pub fn resolve(policies: &[HostPolicy], generation: u32, pids: &[u32]) -> Resolved {
    let targets = targets(policies, if generation == 0 { 0 } else { 32 });
    let mut out = Resolved::default();
    if targets.is_empty() {
        return out;
    }
    let mut budget = MAX_MEMBERS;
    for root in roots(pids) {
        resolve_in(&targets, &root, &mut out, &mut budget);
    }
    out
}

fn resolve_in(targets: &[Target], root: &OwnedFd, out: &mut Resolved, budget: &mut usize) {
    // Each rule's object in this root, with its canonical path (for nesting).
    let mut objects: Vec<(Found, &Target)> = Vec::new();
    for t in targets {
        let Some(fd) = open_in_root(root, &t.path) else { continue };
        if let Some(f) = found(&fd) {
            objects.push((f, t));
        }
    }
    // Trees: their directory (BELOW, and SELF when the prefix names it without a slash).
    let trees: Vec<(PathBuf, bool, &InodeMasks)> = objects
        .iter()
        .filter(|(f, t)| t.prefix && f.dir)
        .map(|(f, t)| (f.canonical.clone(), t.path.ends_with('/'), &t.masks))
        .collect();
    // Masks of the trees that enclose `path` (strictly, or the tree's own directory when
    // `include_self` and the rule names it without a trailing slash).
    let enclosing = |path: &Path, include_self: bool| {
        let mut m = InodeMasks::default();
        for (dir, slash, masks) in &trees {
            let inside = path != dir.as_path() && path.starts_with(dir);
            let itself = path == dir.as_path() && (include_self && !slash);
            if inside || itself {
                or(&mut m, masks);
            }
        }
        m
    };
    // Each named object by its directory and name, whether it exists or not.
    for t in targets {
        let trimmed = t.path.trim_end_matches('/');
        if t.prefix && t.path.ends_with('/') {
            continue; // the tree's members: its directory's BELOW entry covers them
        }
        let Some((dir, name)) = trimmed.rsplit_once('/') else { continue };
        if name.is_empty() || name == "." || name == ".." {
            continue;
        }
        let Some(fd) = open_in_root(root, if dir.is_empty() { "/" } else { dir }) else { continue };
        let Some(f) = found(&fd) else { continue };
        let key = super::hold::NameKey { dev: f.dev, ino: f.ino, name: name.into() };
        or(out.names.entry(key).or_default(), &t.masks);
    }
    let mut add = |key: InodeKey, masks: InodeMasks| {
        or(out.entries.entry(key).or_default(), &masks);
    };
    for (f, t) in &objects {
        let self_key = InodeKey { ino: f.ino, dev: f.dev, role: ROLE_SELF };
        if t.prefix && f.dir {
            let below = InodeKey { role: ROLE_BELOW, ..self_key };
            // Entries below this directory: its own rules and every enclosing tree's.
            let mut m = t.masks;
            or(&mut m, &enclosing(&f.canonical, true));
            add(below, m);
            add(self_key, enclosing(&f.canonical, true));
            walk_tree(&f.canonical, root, &enclosing, &mut add, budget, &mut out.skipped);
        } else {
            // A file, or an exact path: the object itself.
            let mut m = t.masks;
            or(&mut m, &enclosing(&f.canonical, false));
            add(self_key, m);
        }
    }
}

/// Enters every object below `dir` (within `root`) as [`ROLE_SELF`] with the masks of the
/// trees enclosing it, without following symlinks; stops at `budget`, counting the rest.
fn walk_tree(
    dir: &Path,
    root: &OwnedFd,
    enclosing: &dyn Fn(&Path, bool) -> InodeMasks,
    add: &mut dyn FnMut(InodeKey, InodeMasks),
    budget: &mut usize,
    skipped: &mut usize,
) {
    let Some(fd) = open_in_root(root, &dir.to_string_lossy()) else { return };
    // Walk through the descriptor's magic link, so a container's tree is read in its root.
    let base = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let mut stack: Vec<(PathBuf, PathBuf, usize)> = vec![(base, dir.to_owned(), 0)];
    let mut seen: BTreeMap<(u64, u64), ()> = BTreeMap::new();
    while let Some((real, canonical, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&real) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if *budget == 0 {
                *skipped += 1;
                continue;
            }
            let path = canonical.join(entry.file_name());
            if seen.insert((meta.dev(), meta.ino()), ()).is_some() {
                continue;
            }
            *budget -= 1;
            let key = InodeKey { ino: meta.ino(), dev: kernel_dev(meta.dev()), role: ROLE_SELF };
            add(key, enclosing(&path, false));
            if meta.is_dir() && depth < MAX_TREE_DEPTH {
                stack.push((entry.path(), path, depth + 1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::policy::parse_file;

    fn policies(body: &str) -> Vec<HostPolicy> {
        parse_file(
            Path::new("p.yaml"),
            &format!(
                "apiVersion: sensor.dev/v1alpha1\nkind: HostPolicy\nmetadata: {{name: p}}\nspec:\n  action: Block\n{body}"
            ),
        )
        .expect("policy")
    }

    #[test]
    fn trees_files_and_hard_links_resolve_to_inodes() {
        let d = std::env::temp_dir().join(format!("sensor-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        let d = d.canonicalize().expect("canonical");
        std::fs::create_dir_all(d.join("secret/sub")).expect("mkdir");
        std::fs::write(d.join("secret/sub/token"), "s").expect("write");
        std::fs::write(d.join("bin"), "b").expect("write");
        std::os::unix::fs::symlink(d.join("secret"), d.join("link")).expect("symlink");
        let p = policies(&format!(
            "  files: [{{prefix: {0}/secret/, access: [read]}}]\n  executables: [{{path: {0}/link/../bin}}]\n",
            d.display()
        ));
        let r = resolve(&p, 0, &[]);
        let meta = |p: &str| std::fs::metadata(d.join(p)).expect("stat");
        let key = |p: &str, role| {
            let m = meta(p);
            InodeKey { ino: m.ino(), dev: kernel_dev(m.dev()), role }
        };
        let below = r.entries.get(&key("secret", ROLE_BELOW)).expect("tree entry");
        assert_eq!(below.block[0], 1, "read blocked below the tree");
        let member = r.entries.get(&key("secret/sub/token", ROLE_SELF)).expect("member");
        assert_eq!(member.block[0], 1, "a member carries its tree's masks (hard links)");
        let secret_self = r.entries.get(&key("secret", ROLE_SELF)).expect("dir itself");
        assert_eq!(secret_self.block[0], 0, "a trailing slash does not cover the dir itself");
        // `link/../bin` resolves like the kernel does: through the symlink, then up.
        let bin = r.entries.get(&key("bin", ROLE_SELF)).expect("executable");
        assert_eq!(bin.block[ACCESS_EXEC], 1);
        assert_eq!(r.skipped, 0);
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn dev_encoding_matches_the_kernel() {
        // MKDEV(254, 1) in the kernel; makedev(254, 1) in user space.
        assert_eq!(kernel_dev(libc::makedev(254, 1)), (254 << 20) | 1);
    }
}
