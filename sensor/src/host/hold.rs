//! Hold and decide (see `sensor-ebpf/src/host/hold.rs`): the agent's half. A call the kernel
//! could not decide by identity arrives as a [`HoldEvent`] at its entry and a [`HoldExit`] at
//! its return; in enforce mode the task is then stopped (`SIGSTOP`). Each path's parent
//! directory is resolved here in the task's own view — its root (`/proc/<pid>/task/<tid>/root`,
//! so chroots and other mount namespaces resolve as the task saw them), its working directory
//! or directory descriptor (checked against the identity the kernel recorded at entry) — one
//! component at a time, `..` stopping at the task's root and symlinks followed as the kernel
//! does. The parent and its ancestors are compared with the protected identities (tree
//! directories), the parent and the final name with the protected files' names, and an object
//! the call moved or linked with the protected objects themselves. Then: enforce — `SIGKILL`
//! (recorded `killed`) or `SIGCONT`; detect — a `would_block` record after the fact.
//!
//! Fail closed: in enforce mode a call that cannot be resolved (parent gone, process gone, path
//! cut, a starting directory that changed, no answer within [`DECIDE_TIMEOUT`], or an exit
//! record without its entry record) is killed and recorded with [`FLAG_HOLD_UNRESOLVED`];
//! every such case is counted in `sensor_host_holds_total{outcome="failed_closed",reason}`.
//! A task this agent stopped is never left stopped: each exit record ends in `SIGKILL` or
//! `SIGCONT`, also at shutdown (the kernel stops holding first). If the agent dies between a
//! stop and its decision, the task stays stopped until the agent is back (it is not in user
//! space, so it can do nothing meanwhile); see the README.

use std::{
    collections::{HashMap, VecDeque},
    ffi::{CString, OsString},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStringExt as _,
    },
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use sensor_common::host::{
    ACCESS_KINDS, Action, EventKind, FILE_OP_LINK, FILE_OP_RENAME, FILE_OP_TRUNCATE, FLAG_HELD,
    FLAG_HOLD_UNRESOLVED, FLAG_IDENTITY, FLAG_PATH_TRUNCATED, FLAG_PATH2_TRUNCATED, FileEvent,
    HoldEvent, HoldExit, InodeKey, InodeMasks, MAX_PATH_LEN, ROLE_BELOW, ROLE_SELF,
};

use super::identity::kernel_dev;
use crate::decode::HostEvent;

/// How long one decision may take before the task is decided closed (a path through a hung
/// FUSE or NFS mount must not keep it, or the agent, waiting).
pub const DECIDE_TIMEOUT: Duration = Duration::from_secs(2);
/// Decisions still running after their timeout; beyond this, new ones fail closed at once.
const MAX_STUCK: usize = 16;
/// Entry records whose exit never came (the task died in the call) are forgotten after this.
const PENDING_TTL: Duration = Duration::from_secs(30);
/// Symlinks followed per resolution (the kernel's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;
/// Ancestors walked up from a parent directory.
const MAX_ANCESTORS: usize = 4096;

/// A protected name: the identity of its directory and the name in it (a rule's exact file, or
/// a tree's directory named without a trailing slash), protected whether or not it exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NameKey {
    pub dev: u32,
    pub ino: u64,
    pub name: OsString,
}

/// What decisions compare against: the live identity entries (the same as the kernel's
/// `INODE_RULES`), the protected names, and the policies a hold may block for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HoldView {
    pub inode: HashMap<InodeKey, InodeMasks>,
    pub names: HashMap<NameKey, InodeMasks>,
    /// `HostConfig::hold_block` of the live generation.
    pub hold_block: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HoldLabels {
    outcome: &'static str,
    reason: &'static str,
}

/// `sensor_host_holds_total{outcome,reason}` and `sensor_host_hold_seconds` (from the task's
/// stop to the agent's signal).
#[derive(Debug, Clone)]
pub struct HoldMetrics {
    outcomes: Family<HoldLabels, Counter>,
    latency: Histogram,
}

impl Default for HoldMetrics {
    fn default() -> Self {
        Self {
            outcomes: Family::default(),
            latency: Histogram::new(exponential_buckets(0.000_025, 2.0, 16)),
        }
    }
}

impl HoldMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sensor_host_holds",
            "Calls held for a decision in user space, by outcome (killed, continued, would_block, audit, failed_closed) and reason",
            self.outcomes.clone(),
        );
        registry.register(
            "sensor_host_hold_seconds",
            "Time a held task waited, from its stop at the call's return to the agent's signal",
            self.latency.clone(),
        );
    }

    fn count(&self, outcome: &'static str, reason: &'static str) {
        self.outcomes.get_or_create(&HoldLabels { outcome, reason }).inc();
    }
}

/// Why a held call could not be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    ProcessGone,
    ParentGone,
    PathTruncated,
    BaseChanged,
    Timeout,
    RecordLost,
    TooManySymlinks,
}

impl Unresolved {
    pub const fn reason(self) -> &'static str {
        match self {
            Self::ProcessGone => "process_gone",
            Self::ParentGone => "parent_gone",
            Self::PathTruncated => "path_truncated",
            Self::BaseChanged => "base_changed",
            Self::Timeout => "timeout",
            Self::RecordLost => "record_lost",
            Self::TooManySymlinks => "too_many_symlinks",
        }
    }
}

/// What one held call reached: the masks of every protected object it touched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reached {
    pub audit: u64,
    pub block: u64,
}

// ---- resolution, in the task's own view ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    dev: u64,
    ino: u64,
    mnt: u64,
    mode: u32,
}

impl Stat {
    fn is_symlink(self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
    fn same(self, other: Self) -> bool {
        (self.dev, self.ino, self.mnt) == (other.dev, other.ino, other.mnt)
    }
    fn key(self, role: u32) -> InodeKey {
        InodeKey { ino: self.ino, dev: kernel_dev(self.dev), role }
    }
}

/// `statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)` with the mount id.
fn stat(fd: &OwnedFd) -> Option<Stat> {
    // SAFETY: a zeroed statx is a valid output buffer.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated empty path, and an output buffer of the right type.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
            &raw mut st,
        )
    };
    (rc == 0).then(|| Stat {
        dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        mnt: st.stx_mnt_id,
        mode: u32::from(st.stx_mode),
    })
}

/// `openat(dir, name, O_PATH | O_NOFOLLOW)`.
fn open_at(dir: &OwnedFd, name: &[u8]) -> Option<OwnedFd> {
    let name = CString::new(name).ok()?;
    // SAFETY: valid descriptor and NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    // SAFETY: a new descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a `/proc` magic link (root, cwd, fd/N) as the object it names.
fn open_proc(path: &str) -> Option<OwnedFd> {
    let path = CString::new(path).ok()?;
    // SAFETY: NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    // SAFETY: a new descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The target of the symlink `link` (an `O_PATH | O_NOFOLLOW` descriptor).
fn read_link(link: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0_u8; MAX_PATH_LEN];
    // SAFETY: valid descriptor, empty path (the link itself), and a buffer of the length given.
    let n = unsafe {
        libc::readlinkat(link.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    let n = usize::try_from(n).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn components(path: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    path.split(|b| *b == b'/').filter(|c| !c.is_empty()).map(<[u8]>::to_vec)
}

/// Whether `fd` lies on a procfs mount, whose symlinks (`/proc/<pid>/root`, `cwd`, `fd/N`,
/// `exe`) are magic: the kernel jumps to the object, it does not read their text.
fn on_procfs(fd: &OwnedFd) -> bool {
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    // SAFETY: a zeroed statfs is a valid output buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and output buffer.
    unsafe {
        libc::fstatfs(fd.as_raw_fd(), &raw mut st) == 0 && st.f_type as i64 == PROC_SUPER_MAGIC
    }
}

/// `openat(dir, name, O_PATH)`, following a final (magic) link.
fn open_follow(dir: &OwnedFd, name: &[u8]) -> Option<OwnedFd> {
    let name = CString::new(name).ok()?;
    // SAFETY: valid descriptor and NUL-terminated name.
    let fd =
        unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    // SAFETY: a new descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resolves `path` from `start` inside `root` as the kernel's path walk does for task
/// `pid`/`tid`, up to its last component: returns the directory holding that component and
/// its name (following a symlink there too when `follow_last`). `..` stops at `root`;
/// absolute symlinks restart at `root`; `/proc/self` is the task, and procfs's magic links
/// jump to their object.
fn resolve_parent(
    root: &OwnedFd,
    start: OwnedFd,
    path: &[u8],
    follow_last: bool,
    (pid, tid): (u32, u32),
) -> Result<(OwnedFd, Vec<u8>), Unresolved> {
    let root_stat = stat(root).ok_or(Unresolved::ProcessGone)?;
    let mut todo: VecDeque<Vec<u8>> = components(path).collect();
    let mut cur = if path.first() == Some(&b'/') {
        root.try_clone().map_err(|_| Unresolved::ProcessGone)?
    } else {
        start
    };
    let mut links = 0;
    loop {
        let Some(component) = todo.pop_front() else {
            // The path ended in `.`, `..` or `/`: an entry of nothing; the directory itself.
            return Ok((cur, b".".to_vec()));
        };
        match component.as_slice() {
            b"." => continue,
            b".." => {
                let here = stat(&cur).ok_or(Unresolved::ParentGone)?;
                if !here.same(root_stat) {
                    cur = open_at(&cur, b"..").ok_or(Unresolved::ParentGone)?;
                }
                continue;
            }
            _ => {}
        }
        let last = todo.iter().all(|c| c == b".");
        if last && !follow_last {
            return Ok((cur, component));
        }
        let Some(next) = open_at(&cur, &component) else {
            if last {
                return Ok((cur, component)); // the object itself is gone (or never was)
            }
            return Err(Unresolved::ParentGone);
        };
        let st = stat(&next).ok_or(Unresolved::ParentGone)?;
        if st.is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(Unresolved::TooManySymlinks);
            }
            if on_procfs(&next) {
                // The task's own entry (the agent's procfs: the same process, whatever pid
                // namespace the task's /proc shows).
                let mine = match component.as_slice() {
                    b"self" => Some(format!("/proc/{pid}")),
                    b"thread-self" => Some(format!("/proc/{pid}/task/{tid}")),
                    _ => None,
                };
                if let Some(mine) = mine {
                    cur = open_proc(&mine).ok_or(Unresolved::ProcessGone)?;
                } else {
                    cur = open_follow(&cur, &component).ok_or(Unresolved::ParentGone)?;
                }
                continue;
            }
            let target = read_link(&next).ok_or(Unresolved::ParentGone)?;
            for c in components(&target).collect::<Vec<_>>().into_iter().rev() {
                todo.push_front(c);
            }
            if target.first() == Some(&b'/') {
                cur = root.try_clone().map_err(|_| Unresolved::ParentGone)?;
            }
            continue;
        }
        if last {
            return Ok((cur, component));
        }
        cur = next;
    }
}

/// The masks of the nearest protected tree enclosing `dir` (itself, then its ancestors across
/// mounts, as the kernel's identity walk does).
fn tree_masks(view: &RwLock<HoldView>, mut dir: OwnedFd) -> InodeMasks {
    let mut here = match stat(&dir) {
        Some(st) => st,
        None => return InodeMasks::default(),
    };
    for _ in 0..MAX_ANCESTORS {
        if let Some(m) = read(view).inode.get(&here.key(ROLE_BELOW)) {
            return *m;
        }
        let Some(parent) = open_at(&dir, b"..") else { break };
        let Some(up) = stat(&parent) else { break };
        if up.same(here) {
            break;
        }
        (dir, here) = (parent, up);
    }
    InodeMasks::default()
}

fn read(view: &RwLock<HoldView>) -> std::sync::RwLockReadGuard<'_, HoldView> {
    view.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn add(reached: &mut Reached, masks: &InodeMasks, kinds: u32, scope: u64) {
    for k in 0..masks.audit.len() {
        if kinds & (1 << k) != 0 {
            reached.audit |= masks.audit[k] & scope;
            reached.block |= masks.block[k] & scope;
        }
    }
}

/// One path of a held call, as the kernel recorded it.
struct HeldPath<'a> {
    text: &'a [u8],
    base_len: usize,
    base: (u64, u32),
    dfd: i32,
    kinds: u32,
    truncated: bool,
}

/// Where `p` starts: the task's root (absolute), or its directory descriptor or working
/// directory, which must still be the directory the kernel saw.
fn start_of(
    task: &str,
    root: &OwnedFd,
    p: &HeldPath<'_>,
) -> Result<(OwnedFd, Vec<u8>), Unresolved> {
    let relative = p.base_len > 0 || p.text.first() != Some(&b'/');
    if !relative {
        return Ok((root.try_clone().map_err(|_| Unresolved::ProcessGone)?, p.text.to_vec()));
    }
    let base = if p.dfd == -100 {
        open_proc(&format!("{task}/cwd"))
    } else {
        open_proc(&format!("{task}/fd/{}", p.dfd))
    }
    .ok_or(Unresolved::BaseChanged)?;
    if p.base.0 != 0 {
        let st = stat(&base).ok_or(Unresolved::BaseChanged)?;
        if (st.ino, kernel_dev(st.dev)) != p.base {
            return Err(Unresolved::BaseChanged);
        }
    }
    let rel = p.text.get(p.base_len.min(p.text.len())..).unwrap_or_default();
    Ok((base, rel.to_vec()))
}

fn prefix(buf: &[u8], len: u32) -> &[u8] {
    &buf[..(len as usize).min(buf.len())]
}

/// Resolves every path of `ev` in task `pid`/`tid`'s view and adds what it reached.
fn reached(
    view: &RwLock<HoldView>,
    ev: &HoldEvent,
    pid: u32,
    tid: u32,
) -> Result<Reached, Unresolved> {
    let task = format!("/proc/{pid}/task/{tid}");
    let root = open_proc(&format!("{task}/root")).ok_or(Unresolved::ProcessGone)?;
    let f = &ev.file;
    let paths = [
        HeldPath {
            text: prefix(&f.path, f.path_len),
            base_len: ev.base_len[0] as usize,
            base: (ev.base_ino[0], ev.base_dev[0]),
            dfd: ev.dfd[0],
            kinds: ev.kinds[0],
            truncated: f.header.flags & FLAG_PATH_TRUNCATED != 0,
        },
        HeldPath {
            text: prefix(&f.path2, f.path2_len),
            base_len: ev.base_len[1] as usize,
            base: (ev.base_ino[1], ev.base_dev[1]),
            dfd: ev.dfd[1],
            kinds: ev.kinds[1],
            truncated: f.header.flags & FLAG_PATH2_TRUNCATED != 0,
        },
    ];
    let scope = ev.scope;
    let mut out = Reached::default();
    let all_kinds = ev.kinds[0] | ev.kinds[1];
    for p in paths.iter().filter(|p| p.kinds != 0) {
        if p.truncated {
            return Err(Unresolved::PathTruncated);
        }
        let (start, rel) = start_of(&task, &root, p)?;
        let follow = f.op == FILE_OP_TRUNCATE;
        let (parent, name) = resolve_parent(&root, start, &rel, follow, (pid, tid))?;
        let parent_stat = stat(&parent).ok_or(Unresolved::ParentGone)?;
        let name_key = NameKey {
            dev: kernel_dev(parent_stat.dev),
            ino: parent_stat.ino,
            name: OsString::from_vec(name.clone()),
        };
        if let Some(m) = read(view).names.get(&name_key) {
            add(&mut out, m, p.kinds, scope);
        }
        // The object now at that name: a renamed, exchanged, linked or truncated object is
        // itself protected wherever it sits (hard links, tree members).
        if matches!(f.op, FILE_OP_RENAME | FILE_OP_LINK | FILE_OP_TRUNCATE)
            && let Some(object) = open_at(&parent, &name)
            && let Some(st) = stat(&object)
            && let Some(m) = read(view).inode.get(&st.key(ROLE_SELF))
        {
            add(&mut out, m, all_kinds, scope);
        }
        add(&mut out, &tree_masks(view, parent), p.kinds, scope);
    }
    Ok(out)
}

// ---- signals ----

/// Sends `signal` to process `pid` through a pidfd; false when the process is gone.
fn signal(pid: u32, signal: i32) -> bool {
    // SAFETY: plain syscalls on integers; the pidfd is closed below.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        if fd < 0 {
            return false;
        }
        let fd = OwnedFd::from_raw_fd(fd as i32);
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

// ---- the reader ----

/// What the reader needs: the ring, the view, the mode, where decided records go.
pub struct HoldReader {
    pub ring: RingBuf<MapData>,
    pub view: Arc<RwLock<HoldView>>,
    pub enforce: bool,
    pub events: tokio::sync::mpsc::UnboundedSender<HostEvent>,
    pub metrics: HoldMetrics,
    pub stop: Arc<AtomicBool>,
}

fn copy<T: aya::Pod>(record: &[u8]) -> Option<T> {
    // SAFETY: length checked; T is plain old data valid for any bytes.
    (record.len() == size_of::<T>())
        .then(|| unsafe { record.as_ptr().cast::<T>().read_unaligned() })
}

impl HoldReader {
    /// Runs on its own thread until `stop` is set and the ring is drained.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("holds".into()).spawn(move || self.run())
    }

    fn run(mut self) {
        let mut pending: HashMap<u32, (Box<HoldEvent>, Instant)> = HashMap::new();
        let stuck = Arc::new(AtomicUsize::new(0));
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let mut fds =
                [libc::pollfd { fd: self.ring.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, if stopping { 0 } else { 100 }) };
            let mut exits = Vec::new();
            while let Some(record) = self.ring.next() {
                let kind =
                    record.get(..4).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if kind == EventKind::Hold as u32 {
                    if let Some(ev) = copy::<HoldEvent>(&record) {
                        pending.insert(ev.file.header.tid, (Box::new(ev), Instant::now()));
                    }
                } else if kind == EventKind::HoldExit as u32
                    && let Some(exit) = copy::<HoldExit>(&record)
                {
                    exits.push(exit);
                }
            }
            for exit in exits {
                let entry = pending.remove(&exit.tid).map(|(ev, _)| ev);
                self.finish(entry, exit, &stuck);
            }
            pending.retain(|_, (_, at)| at.elapsed() < PENDING_TTL);
            if stopping {
                return;
            }
        }
    }

    /// Decides one returned call and acts on it.
    fn finish(&mut self, entry: Option<Box<HoldEvent>>, exit: HoldExit, stuck: &Arc<AtomicUsize>) {
        let stopped = exit.stopped == 1;
        let Some(entry) = entry else {
            if stopped {
                // The kernel stopped a task whose record we never saw: decide closed.
                self.act(None, &exit, Err(Unresolved::RecordLost));
            }
            return;
        };
        if exit.ret < 0 {
            return; // failed calls are neither stopped nor decided
        }
        let result = if stuck.load(Ordering::Acquire) >= MAX_STUCK {
            Err(Unresolved::Timeout)
        } else {
            let (tx, rx) = std::sync::mpsc::channel();
            let view = Arc::clone(&self.view);
            let ev = entry.clone();
            let (pid, tid) = (exit.pid, exit.tid);
            let stand_in = if stopped { 0 } else { entry.file.header.ppid };
            let spawned = std::thread::Builder::new().name("hold-decide".into()).spawn(move || {
                let mut result = reached(&view, &ev, pid, tid);
                // A task that was not stopped (detect mode) is often gone by now (`rm`, `mv`
                // exit at once). Its parent stands in for its view: same root and mount
                // namespace in the usual case, and a relative path is still checked against
                // the directory identity the kernel recorded (a parent elsewhere gives
                // `BaseChanged`, not a wrong answer). Never used for a stopped task.
                if stand_in != 0 && matches!(result, Err(Unresolved::ProcessGone)) {
                    result = reached(&view, &ev, stand_in, stand_in);
                }
                let _ = tx.send(result);
            });
            match spawned {
                Err(_) => Err(Unresolved::Timeout),
                Ok(_) => match rx.recv_timeout(DECIDE_TIMEOUT) {
                    Ok(result) => result,
                    Err(_) => {
                        // Left running (a hung mount); counted so a pile-up fails fast.
                        let stuck = Arc::clone(stuck);
                        stuck.fetch_add(1, Ordering::AcqRel);
                        std::thread::spawn(move || {
                            let _ = rx.recv();
                            stuck.fetch_sub(1, Ordering::AcqRel);
                        });
                        Err(Unresolved::Timeout)
                    }
                },
            }
        };
        self.act(Some(&entry), &exit, result);
    }

    /// Kills or continues the task and sends the record of what was decided.
    fn act(
        &mut self,
        entry: Option<&HoldEvent>,
        exit: &HoldExit,
        result: Result<Reached, Unresolved>,
    ) {
        let stopped = exit.stopped == 1;
        let hold_block = read(&self.view).hold_block;
        let scope = entry.map_or(hold_block, |e| e.scope);
        let (action, policy_mask, flags, outcome, reason) = match result {
            Ok(r) if r.block != 0 => {
                let action = if self.enforce { Action::Killed } else { Action::WouldBlock };
                let outcome = if self.enforce { "killed" } else { "would_block" };
                (Some(action), r.block, FLAG_HELD | FLAG_IDENTITY, outcome, "protected")
            }
            Ok(r) if r.audit != 0 => {
                (Some(Action::Audit), r.audit, FLAG_HELD | FLAG_IDENTITY, "audit", "protected")
            }
            Ok(_) => (None, 0, 0, "continued", "not_protected"),
            Err(why) if self.enforce => (
                Some(Action::Killed),
                scope & hold_block,
                FLAG_HELD | FLAG_HOLD_UNRESOLVED,
                "failed_closed",
                why.reason(),
            ),
            // Detect mode: nothing to fail closed; report what could not be decided.
            Err(why) => (
                Some(Action::WouldBlock),
                scope & hold_block,
                FLAG_HELD | FLAG_HOLD_UNRESOLVED,
                "unresolved",
                why.reason(),
            ),
        };
        if stopped {
            let sig = if action == Some(Action::Killed) { libc::SIGKILL } else { libc::SIGCONT };
            if !signal(exit.pid, sig) && sig == libc::SIGKILL {
                tracing::debug!(pid = exit.pid, "held process gone before its decision");
            }
            let waited = boot_ns().saturating_sub(exit.boot_ns);
            self.metrics.latency.observe(waited as f64 / 1e9);
        }
        self.metrics.count(outcome, reason);
        if let Err(why) = result {
            tracing::warn!(
                pid = exit.pid,
                tid = exit.tid,
                reason = why.reason(),
                enforce = self.enforce,
                "held call could not be resolved: decided closed"
            );
        }
        let (Some(action), Some(entry)) = (action, entry) else { return };
        let mut file: FileEvent = entry.file;
        file.header.kind = EventKind::File as u32;
        file.header.action = action as u32;
        file.header.flags |= flags;
        file.header.policy = if policy_mask == 0 { 0 } else { policy_mask.trailing_zeros() + 1 };
        // SAFETY: FileEvent is plain old data; the slice covers exactly its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const file).cast::<u8>(), size_of::<FileEvent>())
        };
        if let Ok(event) = crate::decode::decode_host(bytes) {
            let _ = self.events.send(event);
        }
    }
}

/// The kinds an access list names, for tests and the README table.
pub fn kinds_named(kinds: u32) -> Vec<usize> {
    (0..ACCESS_KINDS).filter(|k| kinds & (1 << k) != 0).collect()
}

/// CLOCK_BOOTTIME in nanoseconds: the clock of [`HoldExit::boot_ns`] (`bpf_ktime_get_boot_ns`).
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |ts| {
        u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(ts.tv_nsec()).unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: (u32, u32) = (0, 0);

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sensor-hold-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d.canonicalize().expect("canonical")
    }

    fn dir(p: &std::path::Path) -> OwnedFd {
        open_proc(&p.display().to_string()).expect("open")
    }

    #[test]
    fn parents_resolve_through_symlinks_and_dotdot_stops_at_the_root() {
        let d = tmp("resolve");
        std::fs::create_dir_all(d.join("secret/sub")).expect("mkdir");
        std::fs::create_dir_all(d.join("pub")).expect("mkdir");
        std::os::unix::fs::symlink(d.join("secret"), d.join("pub/abs")).expect("ln");
        std::os::unix::fs::symlink("../secret", d.join("pub/rel")).expect("ln");
        std::os::unix::fs::symlink("/secret", d.join("pub/inroot")).expect("ln");
        let secret = std::fs::metadata(d.join("secret")).expect("stat");
        let is_secret = |fd: &OwnedFd| {
            let st = stat(fd).expect("stat");
            (st.dev, st.ino)
                == (
                    std::os::unix::fs::MetadataExt::dev(&secret),
                    std::os::unix::fs::MetadataExt::ino(&secret),
                )
        };
        let host = dir(std::path::Path::new("/"));
        let pubdir = || dir(&d.join("pub"));
        for path in ["abs/token", "rel/token", "rel/sub/../token", "../secret/token"] {
            let (parent, name) =
                resolve_parent(&host, pubdir(), path.as_bytes(), false, ME).expect(path);
            assert!(is_secret(&parent), "{path}");
            assert_eq!(name, b"token");
        }
        // Inside a root of `d`, an absolute link and `..` above the root stay inside it.
        let root = dir(&d);
        for path in ["inroot/token", "../../../../secret/token", "/pub/inroot/sub/../token"] {
            let (parent, _) =
                resolve_parent(&root, pubdir(), path.as_bytes(), false, ME).expect(path);
            assert!(is_secret(&parent), "{path}");
        }
        // A missing directory on the way cannot be resolved.
        assert_eq!(
            resolve_parent(&host, pubdir(), b"gone/x/token", false, ME).err(),
            Some(Unresolved::ParentGone)
        );
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn a_tree_is_found_from_any_directory_below_it() {
        let d = tmp("tree");
        std::fs::create_dir_all(d.join("secret/a/b")).expect("mkdir");
        let meta = std::fs::metadata(d.join("secret")).expect("stat");
        let key = InodeKey {
            ino: std::os::unix::fs::MetadataExt::ino(&meta),
            dev: kernel_dev(std::os::unix::fs::MetadataExt::dev(&meta)),
            role: ROLE_BELOW,
        };
        let mut masks = InodeMasks::default();
        masks.block[3] = 1;
        let view =
            RwLock::new(HoldView { inode: HashMap::from([(key, masks)]), ..HoldView::default() });
        assert_eq!(tree_masks(&view, dir(&d.join("secret/a/b"))).block[3], 1);
        assert_eq!(tree_masks(&view, dir(&d)).block[3], 0);
        std::fs::remove_dir_all(&d).expect("cleanup");
    }
}
