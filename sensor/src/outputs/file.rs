//! File output: JSON lines appended to `path`, rotated by size to `path.1` … `path.N`.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::mpsc;

use super::{Counters, FileConfig, OutputLine};

pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    out: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    pub fn open(config: &FileConfig) -> io::Result<Self> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(&config.path)?;
        let size = file.metadata()?.len();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive size in MiB, validated with the config"
        )]
        let max_bytes = ((config.max_size_mb * 1024.0 * 1024.0) as u64).max(1);
        Ok(Self {
            path: config.path.clone(),
            max_bytes,
            max_files: config.max_files,
            out: BufWriter::with_capacity(64 * 1024, file),
            size,
        })
    }

    /// Writes lines until the channel closes (runs on a blocking thread). A line that does
    /// not fit in what is left of the current file goes to a fresh one.
    pub fn run(mut self, mut rx: mpsc::Receiver<Arc<OutputLine>>, counters: &Counters) {
        let mut pending = 0_u64;
        while let Some(line) = rx.blocking_recv() {
            match self.write(&line.json) {
                Ok(()) => pending += 1,
                Err(err) => {
                    counters.errors.inc();
                    tracing::warn!(path = %self.path.display(), "file output: {err}");
                }
            }
            if rx.is_empty() {
                match self.out.flush() {
                    Ok(()) => {
                        counters.sent.inc_by(pending);
                    }
                    Err(err) => {
                        counters.errors.inc_by(pending);
                        tracing::warn!(path = %self.path.display(), "file output: {err}");
                    }
                }
                pending = 0;
            }
        }
    }

    fn write(&mut self, json: &str) -> io::Result<()> {
        let len = json.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(json.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    /// `path.N-1` → `path.N` (the oldest is overwritten), …, `path` → `path.1`, then a new
    /// empty `path`.
    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        for i in (1..self.max_files).rev() {
            let from = numbered(&self.path, i);
            if from.exists() {
                fs::rename(&from, numbered(&self.path, i + 1))?;
            }
        }
        fs::rename(&self.path, numbered(&self.path, 1))?;
        self.out = BufWriter::with_capacity(64 * 1024, open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_size_bound_and_keeps_max_files() {
        let dir = std::env::temp_dir().join(format!("sensor-rot-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("events.json");
        let config = FileConfig {
            name: None,
            types: None,
            min_priority: None,
            queue_size: None,
            path: path.clone(),
            max_size_mb: 100.0 / (1024.0 * 1024.0), // 100 bytes
            max_files: 2,
        };
        let mut file = RotatingFile::open(&config).expect("open");
        let line = "x".repeat(29); // 30 bytes with the newline: 3 per file
        for _ in 0..20 {
            file.write(&line).expect("write");
        }
        file.out.flush().expect("flush");
        for p in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
            let len = fs::metadata(&p).expect("exists").len();
            assert!(len <= 100 && len > 0, "{} has {len} bytes", p.display());
        }
        assert!(!numbered(&path, 3).exists());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
