//! The one file watcher of the agent's inputs (policy files and directories, the endpoints
//! file, rule files and directories), and debouncing of its change notifications: a burst of
//! writes (an editor's save, `kubectl cp`, a ConfigMap update's symlink swap) is loaded once,
//! as soon as it is over, instead of after a fixed sleep.
//!
//! Only changes that can change an input count: a configured file (or, when it is a symlink
//! out of its directory, its target), a `*.yaml`/`*.yml` file in a configured directory, and
//! the kubelet's `..data` symlink next to either (a ConfigMap update swaps it). Anything else
//! written in those directories (the agent's own log, an editor's swap file) is ignored.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecursiveMode, Watcher as _};
use tokio::{sync::mpsc, time::Instant};

/// What a watcher reacts to, resolved from the configured paths at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Configured files, as `<canonical directory>/<name>` (the form inotify reports).
    files: Vec<PathBuf>,
    /// Configured directories, canonical.
    dirs: Vec<PathBuf>,
}

impl Inputs {
    /// Classifies `paths`: an existing directory is watched for its YAML files, anything else
    /// (including a file that does not exist yet) as a file.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut inputs = Self::default();
        for path in paths {
            if path.is_dir() {
                inputs.dirs.push(canonical(&path));
                continue;
            }
            let file = in_canonical_dir(&path);
            // A symlink out of its directory (not the kubelet's `..data/<name>`): its target
            // is where edits land.
            if let Ok(target) = std::fs::canonicalize(&path)
                && target.parent() != file.parent()
                && !target.parent().is_some_and(|t| file.parent().is_some_and(|d| t.starts_with(d)))
            {
                inputs.files.push(target);
            }
            inputs.files.push(file);
        }
        inputs.files.sort();
        inputs.files.dedup();
        inputs.dirs.sort();
        inputs.dirs.dedup();
        inputs
    }

    /// Whether a change at `path` can change an input.
    pub fn matches(&self, path: &Path) -> bool {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
        let parent = path.parent().unwrap_or(Path::new("/"));
        if self.files.iter().any(|f| f == path) {
            return true;
        }
        let yaml = [".yaml", ".yml"].iter().any(|ext| name.ends_with(ext));
        let in_dir = self.dirs.iter().any(|d| d == parent);
        let beside_file = self.files.iter().any(|f| f.parent() == Some(parent));
        (in_dir && (yaml || name == "..data")) || (beside_file && name == "..data")
    }

    /// The directories to watch (non-recursively).
    fn directories(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .dirs
            .iter()
            .cloned()
            .chain(self.files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `path` with its directory made canonical (the file itself may be a symlink, or missing).
fn in_canonical_dir(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match path.file_name() {
        Some(name) => canonical(dir).join(name),
        None => canonical(path),
    }
}

/// Watches `inputs`; each change to one of them sends a unit on `changes` (a full channel
/// already holds a pending reload, so nothing is lost). Keep the watcher alive.
pub fn watch(
    inputs: Inputs,
    changes: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let dirs = inputs.directories();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access() && e.paths.iter().any(|p| inputs.matches(p))) {
            let _ = changes.try_send(());
        }
    })?;
    for dir in dirs {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// No further change for this long: the burst is over.
pub const QUIET: Duration = Duration::from_millis(20);
/// A writer that never pauses is loaded this long after its first change anyway.
pub const MAX_WAIT: Duration = Duration::from_millis(500);

/// Called once a first change has arrived: waits until `quiet` passes without another change,
/// or until `max` after the call, whichever comes first, consuming the changes that arrive
/// meanwhile. Returns how many did. A change arriving after the return stays queued and
/// triggers the next load, so none is lost.
pub async fn settle(changes: &mut mpsc::Receiver<()>, quiet: Duration, max: Duration) -> usize {
    let deadline = Instant::now() + max;
    let mut more = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return more;
        }
        match tokio::time::timeout_at((now + quiet).min(deadline), changes.recv()).await {
            Ok(Some(())) => more += 1,
            // Quiet period over, or the watcher is gone.
            Ok(None) | Err(_) => return more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_inputs_match() {
        let dir = std::env::temp_dir().join(format!("sensor-watch-{}", std::process::id()));
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).expect("mkdir");
        let dir = canonical(&dir);
        let inputs =
            Inputs::new([dir.join("policies"), dir.join("endpoints.conf"), dir.join("rules.yaml")]);
        for yes in [
            "policies/allow.yaml",
            "policies/deny.yml",
            "policies/..data",
            "endpoints.conf",
            "rules.yaml",
            "..data",
        ] {
            assert!(inputs.matches(&dir.join(yes)), "{yes}");
        }
        for no in [
            "policies/sensor.log",
            "policies/.allow.yaml.swp",
            "policies/..2026_01_01_00_00_01.2",
            "sensor.log",
            "other.yaml",
            "rules.yaml.swp",
            "policies/sub/x.yaml",
        ] {
            assert!(!inputs.matches(&dir.join(no)), "{no}");
        }
        std::fs::remove_dir_all(&dir).expect("rm");
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_change_settles_after_the_quiet_period() {
        let (_tx, mut rx) = mpsc::channel(1);
        let start = Instant::now();
        assert_eq!(settle(&mut rx, QUIET, MAX_WAIT).await, 0);
        assert_eq!(start.elapsed(), QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn each_change_restarts_the_quiet_period() {
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(15)).await;
                tx.send(()).await.expect("send");
            }
            // Keep the channel open: settling must end by the quiet period, not by closing.
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let start = Instant::now();
        assert_eq!(settle(&mut rx, QUIET, MAX_WAIT).await, 3);
        assert_eq!(start.elapsed(), Duration::from_millis(45) + QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_never_pauses_is_loaded_after_the_cap() {
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if tx.send(()).await.is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        let more = settle(&mut rx, QUIET, MAX_WAIT).await;
        assert_eq!(start.elapsed(), MAX_WAIT);
        assert!(more >= 90, "{more} changes consumed");
    }
}
