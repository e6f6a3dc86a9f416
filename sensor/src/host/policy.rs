//! `sensor.dev/v1alpha1` HostPolicy: executables, files, binds, root and syscalls a selected
//! set of pods (or the host) may not use, each with action Audit or Block. Read from the same
//! policy directory as network policies; a bad document rejects the whole set.

use std::path::Path;

use serde::Deserialize;

use crate::policy::{
    model::{Origin, ParseError, line_of_key, split_documents},
    selector::Selector,
};

pub const API_KIND: (&str, &str) = ("sensor.dev/v1alpha1", "HostPolicy");

/// Longest path a rule may name: the kernel matches on the first bytes of a path.
pub const MAX_RULE_PATH: usize = sensor_common::host::PATH_KEY_LEN - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum PolicyAction {
    #[default]
    Audit,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Create,
    Delete,
    Rename,
}

impl Access {
    pub const ALL: [Self; 5] = [Self::Read, Self::Write, Self::Create, Self::Delete, Self::Rename];

    /// Index into the kernel's per-access masks (`ACCESS_*`).
    pub const fn index(self) -> usize {
        use sensor_common::host::{
            ACCESS_CREATE, ACCESS_DELETE, ACCESS_READ, ACCESS_RENAME, ACCESS_WRITE,
        };
        match self {
            Self::Read => ACCESS_READ,
            Self::Write => ACCESS_WRITE,
            Self::Create => ACCESS_CREATE,
            Self::Delete => ACCESS_DELETE,
            Self::Rename => ACCESS_RENAME,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Create => "create",
            Self::Delete => "delete",
            Self::Rename => "rename",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum BindProtocol {
    Tcp,
    Udp,
    #[default]
    Any,
}

/// A path rule: exact path, or prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRule {
    pub path: PathMatch,
    pub action: PolicyAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRule {
    pub path: PathMatch,
    pub access: Vec<Access>,
    pub action: PolicyAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRule {
    pub ports: std::ops::RangeInclusive<u16>,
    pub protocol: BindProtocol,
    pub action: PolicyAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallRule {
    pub name: String,
    pub nr: u32,
    pub action: PolicyAction,
}

/// Who a host policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    /// Processes outside containers instead of pods.
    pub host: bool,
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    pub pod_selector: Selector,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    pub name: String,
    pub origin: Origin,
    pub scope: Scope,
    pub executables: Vec<ExecRule>,
    pub files: Vec<FileRule>,
    pub binds: Vec<BindRule>,
    pub no_root: Option<PolicyAction>,
    pub syscalls: Vec<SyscallRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Option<Spec>,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    selector: Option<ScopeSpec>,
    #[serde(default)]
    action: PolicyAction,
    #[serde(default)]
    executables: Vec<PathEntry>,
    #[serde(default)]
    files: Vec<FileEntry>,
    #[serde(default)]
    binds: Vec<BindEntry>,
    no_root: Option<ActionEntry>,
    #[serde(default)]
    syscalls: Vec<SyscallEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScopeSpec {
    #[serde(default)]
    host: bool,
    #[serde(default)]
    namespaces: Vec<String>,
    pod_selector: Option<Selector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathEntry {
    path: Option<String>,
    prefix: Option<String>,
    action: Option<PolicyAction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    path: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    access: Vec<Access>,
    action: Option<PolicyAction>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BindEntry {
    port: u16,
    end_port: Option<u16>,
    #[serde(default)]
    protocol: BindProtocol,
    action: Option<PolicyAction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionEntry {
    action: Option<PolicyAction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyscallEntry {
    names: Vec<String>,
    action: Option<PolicyAction>,
}

/// Parses the HostPolicy documents of a file (other kinds are skipped: the network policy
/// parser reads them).
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<HostPolicy>, ParseError> {
    let mut policies = Vec::new();
    for (start, doc) in split_documents(text) {
        if doc.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            continue;
        }
        let error = |key: &str, message: String| ParseError {
            origin: Origin { file: path.to_owned(), line: start + line_of_key(&doc, key) - 1 },
            message,
        };
        // Only the kind matters here; the network parser reports other documents' errors.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Head {
            api_version: Option<String>,
            kind: Option<String>,
        }
        let Ok(head) = serde_yaml_ng::from_str::<Head>(&doc) else { continue };
        if (head.api_version.as_deref(), head.kind.as_deref())
            != (Some(API_KIND.0), Some(API_KIND.1))
        {
            continue;
        }
        let parsed: Document = serde_yaml_ng::from_str(&doc).map_err(|e| ParseError {
            origin: Origin {
                file: path.to_owned(),
                line: start + e.location().map_or(1, |l| l.line()) - 1,
            },
            message: e.to_string(),
        })?;
        debug_assert_eq!((parsed.api_version.as_str(), parsed.kind.as_str()), API_KIND);
        let spec = parsed.spec.ok_or_else(|| error("kind", "missing `spec`".to_owned()))?;
        let origin = Origin { file: path.to_owned(), line: start };
        policies.push(build(parsed.metadata.name, origin, spec, &error)?);
    }
    Ok(policies)
}

fn build(
    name: String,
    origin: Origin,
    spec: Spec,
    error: &dyn Fn(&str, String) -> ParseError,
) -> Result<HostPolicy, ParseError> {
    let default = spec.action;
    let scope = match spec.selector {
        None => Scope::default(),
        Some(s) => {
            let pod_selector = s.pod_selector.unwrap_or_default();
            pod_selector.validate().map_err(|m| error("podSelector", m))?;
            if s.host && (!s.namespaces.is_empty() || !pod_selector.is_empty()) {
                return Err(error(
                    "host",
                    "`host: true` selects processes outside containers; it cannot be combined \
                     with namespaces or podSelector"
                        .to_owned(),
                ));
            }
            Scope { host: s.host, namespaces: s.namespaces, pod_selector }
        }
    };
    let path_match = |path: Option<String>, prefix: Option<String>, key: &str| {
        let m = match (path, prefix) {
            (Some(p), None) => PathMatch::Exact(p),
            (None, Some(p)) => PathMatch::Prefix(p),
            _ => return Err(error(key, format!("{key}: give exactly one of `path` and `prefix`"))),
        };
        let (PathMatch::Exact(p) | PathMatch::Prefix(p)) = &m;
        if !p.starts_with('/') || p.len() > MAX_RULE_PATH || p.contains('\0') {
            return Err(error(
                key,
                format!("{key}: {p:?} must be an absolute path of at most {MAX_RULE_PATH} bytes"),
            ));
        }
        Ok(m)
    };
    let mut executables = Vec::new();
    for e in spec.executables {
        let path = path_match(e.path, e.prefix, "executables")?;
        executables.push(ExecRule { path, action: e.action.unwrap_or(default) });
    }
    let mut files = Vec::new();
    for f in spec.files {
        let path = path_match(f.path, f.prefix, "files")?;
        let access = if f.access.is_empty() { Access::ALL.to_vec() } else { f.access };
        files.push(FileRule { path, access, action: f.action.unwrap_or(default) });
    }
    let mut binds = Vec::new();
    for b in spec.binds {
        let end = b.end_port.unwrap_or(b.port);
        if b.port == 0 || end < b.port {
            return Err(error(
                "binds",
                format!("binds: port {} endPort {end}: need 1 <= port <= endPort", b.port),
            ));
        }
        binds.push(BindRule {
            ports: b.port..=end,
            protocol: b.protocol,
            action: b.action.unwrap_or(default),
        });
    }
    let mut syscalls = Vec::new();
    for s in spec.syscalls {
        for name in s.names {
            let nr = syscall_number(&name).ok_or_else(|| {
                error("syscalls", format!("syscalls: unknown or unsupported syscall {name:?}"))
            })?;
            syscalls.push(SyscallRule { name, nr, action: s.action.unwrap_or(default) });
        }
    }
    Ok(HostPolicy {
        name,
        origin,
        scope,
        executables,
        files,
        binds,
        no_root: spec.no_root.map(|n| n.action.unwrap_or(default)),
        syscalls,
    })
}

/// x86_64 numbers of the syscalls policies may deny (the ones container hardening guides
/// name); others are rejected rather than guessed.
const SYSCALLS: &[(&str, u32)] = &[
    ("socket", 41),
    ("kill", 62),
    ("chmod", 90),
    ("fchmod", 91),
    ("chown", 92),
    ("ptrace", 101),
    ("setuid", 105),
    ("setgid", 106),
    ("setresuid", 117),
    ("setresgid", 119),
    ("capset", 126),
    ("mknod", 133),
    ("personality", 135),
    ("pivot_root", 155),
    ("adjtimex", 159),
    ("chroot", 161),
    ("acct", 163),
    ("settimeofday", 164),
    ("mount", 165),
    ("umount2", 166),
    ("swapon", 167),
    ("swapoff", 168),
    ("reboot", 169),
    ("iopl", 172),
    ("ioperm", 173),
    ("init_module", 175),
    ("delete_module", 176),
    ("quotactl", 179),
    ("clock_settime", 227),
    ("kexec_load", 246),
    ("add_key", 248),
    ("request_key", 249),
    ("keyctl", 250),
    ("mknodat", 259),
    ("fchmodat", 268),
    ("unshare", 272),
    ("perf_event_open", 298),
    ("fanotify_init", 300),
    ("name_to_handle_at", 303),
    ("open_by_handle_at", 304),
    ("setns", 308),
    ("process_vm_readv", 310),
    ("process_vm_writev", 311),
    ("finit_module", 313),
    ("memfd_create", 319),
    ("kexec_file_load", 320),
    ("bpf", 321),
    ("execveat", 322),
    ("userfaultfd", 323),
    ("io_uring_setup", 425),
    ("open_tree", 428),
    ("move_mount", 429),
    ("fsopen", 430),
    ("fsmount", 432),
    ("clone3", 435),
];

pub fn syscall_number(name: &str) -> Option<u32> {
    SYSCALLS.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr)
}

pub fn syscall_name(nr: u32) -> Option<&'static str> {
    SYSCALLS.iter().find(|(_, n)| *n == nr).map(|(name, _)| *name)
}

/// Reads every HostPolicy under `dir` (a file or a directory of `*.yaml`).
pub fn load(dir: &Path) -> Result<Vec<HostPolicy>, crate::policy::PolicyError> {
    let mut policies = Vec::new();
    for file in crate::policy::policy_files(dir)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|source| crate::policy::PolicyError::Read { path: file.clone(), source })?;
        policies.extend(parse_file(&file, &text)?);
    }
    if policies.len() > sensor_common::host::MAX_HOST_POLICIES {
        return Err(crate::policy::PolicyError::Parse(ParseError {
            origin: policies[sensor_common::host::MAX_HOST_POLICIES].origin.clone(),
            message: format!(
                "too many host policies: at most {} are supported",
                sensor_common::host::MAX_HOST_POLICIES
            ),
        }));
    }
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<HostPolicy>, ParseError> {
        parse_file(Path::new("p.yaml"), text)
    }

    #[test]
    fn full_policy_parses_with_defaults_and_overrides() {
        let p = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {}}\n---\napiVersion: sensor.dev/v1alpha1\nkind: HostPolicy\nmetadata: {name: h}\nspec:\n  selector: {namespaces: [shop], podSelector: {matchLabels: {app: web}}}\n  action: Block\n  executables: [{path: /usr/bin/nc}, {prefix: /tmp/, action: Audit}]\n  files: [{prefix: /etc/shadow, access: [read]}]\n  binds: [{port: 1, endPort: 1023, protocol: TCP}]\n  noRoot: {}\n  syscalls: [{names: [ptrace]}]\n",
        )
        .expect("valid");
        assert_eq!(p.len(), 1);
        let h = &p[0];
        assert_eq!(h.origin.line, 6);
        assert_eq!(h.executables[0].action, PolicyAction::Block);
        assert_eq!(h.executables[1].action, PolicyAction::Audit);
        assert_eq!(h.files[0].access, vec![Access::Read]);
        assert_eq!(h.binds[0].ports, 1..=1023);
        assert_eq!(h.no_root, Some(PolicyAction::Block));
        assert_eq!(h.syscalls[0].nr, 101);
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let err = parse("apiVersion: sensor.dev/v1alpha1\nkind: HostPolicy\nmetadata: {name: h}\nspec:\n  files:\n  - {prefix: etc/shadow}\n").expect_err("relative path");
        assert_eq!(err.origin.line, 5);
        assert!(err.message.contains("absolute"), "{err}");
        let err = parse("apiVersion: sensor.dev/v1alpha1\nkind: HostPolicy\nmetadata: {name: h}\nspec:\n  syscalls: [{names: [nosuch]}]\n").expect_err("syscall");
        assert!(err.message.contains("nosuch"), "{err}");
        let err = parse("apiVersion: sensor.dev/v1alpha1\nkind: HostPolicy\nmetadata: {name: h}\nspec:\n  bindz: []\n").expect_err("unknown field");
        assert_eq!(err.origin.line, 5);
    }
}
