//! Network policy: parse (model), resolve against endpoints (compile), write to the kernel
//! maps atomically (apply).

pub mod apply;
mod batch;
pub mod check;
pub mod cidr;
pub mod compile;
pub mod endpoints;
pub mod model;
pub mod runtime;
pub mod selector;

use std::path::{Path, PathBuf};

pub use compile::Compiled;
pub use endpoints::Endpoints;
pub use model::{Policy, Warning};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Parse(#[from] model::ParseError),
    #[error(transparent)]
    Endpoints(#[from] endpoints::EndpointsError),
}

/// Policy files under `path`: the file itself, or every `*.yaml`/`*.yml` in the directory,
/// sorted by name.
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let read = |source| PolicyError::Read { path: path.to_owned(), source };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(read)?;
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Parses every policy file under `paths`; the first bad file rejects the whole set.
pub fn load_policies(paths: &[PathBuf]) -> Result<(Vec<Policy>, Vec<Warning>), PolicyError> {
    let mut policies = Vec::new();
    let mut warnings = Vec::new();
    for path in paths {
        for file in policy_files(path)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|source| PolicyError::Read { path: file.clone(), source })?;
            let (p, w) = model::parse_file(&file, &text)?;
            policies.extend(p);
            warnings.extend(w);
        }
    }
    Ok((policies, warnings))
}

/// What one policy file holds: network policies, their warnings, and host policies.
#[derive(Debug, Clone, Default)]
pub struct FileSet {
    pub policies: Vec<Policy>,
    pub warnings: Vec<Warning>,
    pub host: Vec<crate::host::policy::HostPolicy>,
}

impl FileSet {
    fn extend(&mut self, other: &Self) {
        self.policies.extend(other.policies.iter().cloned());
        self.warnings.extend(other.warnings.iter().cloned());
        self.host.extend(other.host.iter().cloned());
    }
}

/// Parses one policy file, network and host documents: any error rejects the whole file.
pub fn parse_policy_file(file: &Path) -> Result<FileSet, PolicyError> {
    let text = std::fs::read_to_string(file)
        .map_err(|source| PolicyError::Read { path: file.to_owned(), source })?;
    let (policies, warnings) = model::parse_file(file, &text)?;
    let host = crate::host::policy::parse_file(file, &text)?;
    Ok(FileSet { policies, warnings, host })
}

/// A file the load could not use, and whether its last good version stays in force.
#[derive(Debug)]
pub struct Rejected {
    pub error: PolicyError,
    pub kept_previous: bool,
}

/// Loads a policy directory file by file, as start-up and every reload do: a file that
/// does not parse (or holds a kind the sensor does not support) is reported and skipped, or
/// held at its last good version from `last_good`; every other file is used. `last_good` is
/// updated to the files' current good versions. Only an unreadable directory is an error.
pub fn load_dir(
    dir: &Path,
    last_good: &mut std::collections::BTreeMap<PathBuf, FileSet>,
) -> Result<(FileSet, Vec<Rejected>), PolicyError> {
    let files = policy_files(dir)?;
    last_good.retain(|path, _| files.contains(path));
    let mut set = FileSet::default();
    let mut rejected = Vec::new();
    for file in files {
        match parse_policy_file(&file) {
            Ok(parsed) => {
                set.extend(&parsed);
                last_good.insert(file, parsed);
            }
            Err(error) => {
                let previous = last_good.get(&file);
                if let Some(previous) = previous {
                    set.extend(previous);
                }
                rejected.push(Rejected { error, kept_previous: previous.is_some() });
            }
        }
    }
    Ok((set, rejected))
}

/// Loads policies and endpoints and compiles them: everything or nothing.
pub fn load(
    policy_dir: Option<&Path>,
    endpoints_file: Option<&Path>,
) -> Result<(Compiled, Vec<Warning>), PolicyError> {
    let (policies, warnings) = match policy_dir {
        Some(dir) => load_policies(&[dir.to_owned()])?,
        None => (Vec::new(), Vec::new()),
    };
    let endpoints = match endpoints_file {
        Some(file) => Endpoints::load(file)?,
        None => Endpoints::default(),
    };
    Ok((compile::compile(&policies, &endpoints), warnings))
}
