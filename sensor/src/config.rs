//! The agent's configuration: a YAML file, overridden field by field by command-line flags.

use std::{
    fmt, fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    cli::{LogFormat, Mode, RunArgs},
    conntrack::ConntrackConfig,
};

/// Host-side interface names of the common CNIs (veth pairs, Cilium, Calico, generic CNI,
/// GKE, AWS VPC CNI, tap and netkit devices). Physical NICs never match.
pub const DEFAULT_INTERFACES: &[&str] =
    &["veth*", "lxc*", "cali*", "cni*", "gke*", "eni*", "tap*", "netkit*"];
pub const DEFAULT_METRICS_PORT: u16 = 9990;

/// The config file as written by the user. Every field is optional; unknown fields are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub mode: Option<Mode>,
    pub interfaces: Option<Vec<String>>,
    pub metrics_addr: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub node_name: Option<String>,
    pub policy_dir: Option<PathBuf>,
    pub endpoints_file: Option<PathBuf>,
    pub conntrack: Option<ConntrackConfig>,
    /// Hubble metrics in Hubble's syntax, e.g. `flow:sourceContext=namespace`.
    pub hubble_metrics: Option<Vec<String>>,
    /// Seconds after a pod is gone before its metric series are removed.
    pub hubble_metrics_stale_pod_seconds: Option<u64>,
    /// Entries of each policy map (allow, deny); a policy set needing more is rejected whole.
    pub policy_map_max_entries: Option<u32>,
    /// Where event lines go; default: stdout only.
    #[serde(default, deserialize_with = "crate::outputs::deserialize_list")]
    pub outputs: Option<Vec<crate::outputs::OutputConfig>>,
    /// Falco rule files or directories, loaded in order (later ones override earlier ones).
    pub rules_files: Option<Vec<PathBuf>>,
    /// Rules below this priority do not run (Falco's `priority`), default debug.
    pub rules_min_priority: Option<crate::rules::Priority>,
    /// `json` (Falco's JSON alert, default) or `text` (Falco's text line).
    pub rules_output: Option<RulesOutput>,
    /// bpffs directory for pinned programs, maps and links.
    pub bpf_pin_dir: Option<PathBuf>,
    /// Kubernetes API sources (pods, namespaces, policies); absent: files only.
    pub kubernetes: Option<crate::kubernetes::KubernetesConfig>,
}

/// How rule alerts are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RulesOutput {
    #[default]
    Json,
    Text,
}

/// The resolved configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub interfaces: InterfaceMatcher,
    pub metrics_addr: SocketAddr,
    pub log_format: LogFormat,
    pub node_name: String,
    /// Directory (or file) of CiliumNetworkPolicy / NetworkPolicy YAML, watched.
    pub policy_dir: Option<PathBuf>,
    /// YAML file of endpoints (local and remote pods), watched.
    pub endpoints_file: Option<PathBuf>,
    pub conntrack: ConntrackConfig,
    pub hubble_metrics: Vec<String>,
    pub hubble_metrics_stale_pod_seconds: u64,
    pub policy_map_max_entries: u32,
    pub outputs: Vec<crate::outputs::OutputConfig>,
    pub rules_files: Vec<PathBuf>,
    pub rules_min_priority: crate::rules::Priority,
    pub rules_output: RulesOutput,
    pub bpf_pin_dir: PathBuf,
    /// Set when the Kubernetes API sources are on (`--kubernetes` or `kubernetes.enabled`).
    pub kubernetes: Option<crate::kubernetes::KubernetesConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config file: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{origin}: field `interfaces`: invalid glob pattern {pattern:?}: {message}")]
    BadPattern { origin: String, pattern: String, message: String },
    #[error("{origin}: field `node_name`: must not be empty")]
    EmptyNodeName { origin: String },
    #[error("cannot determine the node name from the hostname ({0}); pass --node-name")]
    Hostname(String),
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl Config {
    /// Reads `args.config` (if any) and applies the flags on top.
    pub fn resolve(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::from_file(args, file)
    }

    /// Applies the flags in `args` on top of an already parsed config file and validates the
    /// result (`args.config` only names the file in messages).
    pub fn from_file(args: &RunArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let origin = |flag_given: bool| match (&args.config, flag_given) {
            (_, true) | (None, _) => "command line".to_owned(),
            (Some(path), false) => path.display().to_string(),
        };

        let patterns: Vec<String> = match (&args.interfaces, file.interfaces) {
            (Some(cli), _) => cli.clone(),
            (None, Some(file)) => file,
            (None, None) => DEFAULT_INTERFACES.iter().map(|p| (*p).to_owned()).collect(),
        };
        let interfaces = InterfaceMatcher::new(&patterns).map_err(|(pattern, message)| {
            ConfigError::BadPattern { origin: origin(args.interfaces.is_some()), pattern, message }
        })?;

        let node_name = match args.node_name.clone().or(file.node_name) {
            Some(name) if name.trim().is_empty() => {
                return Err(ConfigError::EmptyNodeName {
                    origin: origin(args.node_name.is_some()),
                });
            }
            Some(name) => name,
            None => nix::unistd::gethostname()
                .map_err(|e| ConfigError::Hostname(e.to_string()))?
                .to_string_lossy()
                .into_owned(),
        };

        let conntrack = file.conntrack.unwrap_or_default();
        conntrack
            .validate()
            .map_err(|message| ConfigError::Invalid { origin: origin(false), message })?;
        let hubble_metrics = args
            .hubble_metrics
            .clone()
            .or(file.hubble_metrics)
            .unwrap_or_else(crate::hubble_metrics::default_metrics);
        let hubble_origin = origin(args.hubble_metrics.is_some());
        crate::hubble_metrics::HubbleMetrics::new(&hubble_metrics, std::time::Duration::ZERO)
            .map_err(|message| ConfigError::Invalid { origin: hubble_origin, message })?;
        let outputs = file.outputs.unwrap_or_else(crate::outputs::default_outputs);
        crate::outputs::resolve_names(&outputs)
            .map_err(|message| ConfigError::Invalid { origin: origin(false), message })?;
        let kubernetes = match file.kubernetes {
            Some(k) if !args.kubernetes && !k.enabled => None,
            Some(k) => Some(k),
            None if args.kubernetes => Some(crate::kubernetes::KubernetesConfig::default()),
            None => None,
        };
        let kubernetes = kubernetes
            .map(|mut k| {
                k.enabled = true;
                if let Some(ips) = &args.host_ips {
                    k.host_ips.clone_from(ips);
                }
                k.kinds().map(|_| k)
            })
            .transpose()
            .map_err(|message| ConfigError::Invalid { origin: origin(false), message })?;
        Ok(Self {
            kubernetes,
            outputs,
            rules_files: args.rules_files.clone().or(file.rules_files).unwrap_or_default(),
            rules_min_priority: file.rules_min_priority.unwrap_or(crate::rules::Priority::Debug),
            rules_output: file.rules_output.unwrap_or_default(),
            conntrack,
            hubble_metrics,
            hubble_metrics_stale_pod_seconds: file.hubble_metrics_stale_pod_seconds.unwrap_or(60),
            policy_map_max_entries: file
                .policy_map_max_entries
                .unwrap_or(sensor_common::net::POLICY_MAX_ENTRIES / 2)
                .max(1),
            mode: args.mode.or(file.mode).unwrap_or_default(),
            interfaces,
            metrics_addr: args
                .metrics_addr
                .or(file.metrics_addr)
                .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_METRICS_PORT))),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            node_name,
            policy_dir: args.policy_dir.clone().or(file.policy_dir),
            endpoints_file: args.endpoints_file.clone().or(file.endpoints_file),
            bpf_pin_dir: args
                .bpf_pin_dir
                .clone()
                .or(file.bpf_pin_dir)
                .unwrap_or_else(|| PathBuf::from(crate::pins::DEFAULT_DIR)),
        })
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        // An empty file (or only comments) is an empty config, not an error.
        if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(text).map_err(|err| {
            let (line, column) = err.location().map_or((1, 1), |l| (l.line(), l.column()));
            ConfigError::Parse { path: path.to_owned(), line, column, message: err.to_string() }
        })
    }
}

/// Glob patterns selecting the interfaces the tc programs attach to.
#[derive(Clone)]
pub struct InterfaceMatcher {
    patterns: Vec<glob::Pattern>,
}

impl InterfaceMatcher {
    /// Compiles `patterns`; on error returns the offending pattern and the reason.
    pub fn new(patterns: &[String]) -> Result<Self, (String, String)> {
        let patterns = patterns
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| (p.clone(), e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    pub fn matches(&self, interface: &str) -> bool {
        interface != "lo" && self.patterns.iter().any(|p| p.matches(interface))
    }
}

impl fmt::Debug for InterfaceMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.patterns.iter().map(glob::Pattern::as_str)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(Path::new("/etc/sensor.yaml"), text)
    }

    #[test]
    fn parses_every_field() {
        let cfg = parse(
            "mode: enforce\ninterfaces: [veth*, lxc*]\nmetrics_addr: 127.0.0.1:9000\n\
             log_format: json\nnode_name: node-1\n",
        )
        .expect("valid config");
        assert_eq!(cfg.mode, Some(Mode::Enforce));
        assert_eq!(cfg.interfaces.as_deref(), Some(&["veth*".to_owned(), "lxc*".to_owned()][..]));
        assert_eq!(cfg.metrics_addr, Some("127.0.0.1:9000".parse().expect("addr")));
        assert_eq!(cfg.log_format, Some(LogFormat::Json));
        assert_eq!(cfg.node_name.as_deref(), Some("node-1"));
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let err = parse("mode: detect\n\nmetrics_adr: 127.0.0.1:9000\n").expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/sensor.yaml:3:"), "{msg}");
        assert!(msg.contains("metrics_adr"), "{msg}");
    }

    #[test]
    fn bad_value_names_line_and_field() {
        let err = parse("mode: detect\nlog_format: xml\n").expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/sensor.yaml:2:"), "{msg}");
        assert!(msg.contains("log_format") || msg.contains("xml"), "{msg}");
    }

    #[test]
    fn empty_file_is_default() {
        let cfg = parse("# nothing here\n").expect("empty is fine");
        assert!(cfg.mode.is_none());
    }

    #[test]
    fn cli_overrides_file() {
        let dir = std::env::temp_dir().join(format!("sensor-cfg-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("c.yaml");
        fs::write(&path, "mode: enforce\nnode_name: from-file\ninterfaces: [lxc*]\n")
            .expect("write");
        let args = RunArgs {
            config: Some(path),
            node_name: Some("from-cli".into()),
            ..RunArgs::default()
        };
        let cfg = Config::resolve(&args).expect("resolves");
        fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(cfg.mode, Mode::Enforce);
        assert_eq!(cfg.node_name, "from-cli");
        assert!(cfg.interfaces.matches("lxc123"));
        assert!(!cfg.interfaces.matches("veth1"));
    }

    #[test]
    fn default_interfaces_skip_physical_and_loopback() {
        let m = InterfaceMatcher::new(
            &DEFAULT_INTERFACES.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>(),
        )
        .expect("defaults compile");
        for name in ["veth1a2b", "lxc12345", "cali0ab", "cni0"] {
            assert!(m.matches(name), "{name}");
        }
        for name in ["eth0", "ens3", "enp0s31f6", "wlan0", "lo", "docker0", "bond0"] {
            assert!(!m.matches(name), "{name}");
        }
    }

    #[test]
    fn conntrack_settings_are_parsed_and_checked() {
        let cfg =
            parse("conntrack: {max_entries: 65536, non_tcp_timeout_seconds: 30}\n").expect("valid");
        let ct = cfg.conntrack.expect("conntrack");
        assert_eq!(
            (ct.max_entries, ct.non_tcp_timeout_seconds, ct.tcp_timeout_seconds),
            (65536, 30, 8000)
        );
        let err = parse("conntrack: {max_entris: 5}\n").expect_err("typo");
        assert!(err.to_string().contains("max_entris"), "{err}");
        assert!(
            ConntrackConfig { max_entries: 10, ..ConntrackConfig::default() }.validate().is_err()
        );
    }

    #[test]
    fn hubble_metrics_are_validated_with_their_index() {
        let args = RunArgs {
            hubble_metrics: Some(vec!["flow".into(), "drop:sourceContext=workload".into()]),
            ..RunArgs::default()
        };
        let err = Config::resolve(&args).expect_err("unsupported context");
        assert!(err.to_string().contains("hubble_metrics[1]"), "{err}");
    }

    #[test]
    fn outputs_default_to_stdout_and_typos_name_the_line() {
        assert!(parse("mode: detect\n").expect("valid").outputs.is_none());
        assert_eq!(crate::outputs::default_outputs().len(), 1);
        let cfg = parse("outputs:\n- stdout: {}\n- file: {path: /tmp/e.json, max_files: 2}\n")
            .expect("valid");
        assert_eq!(cfg.outputs.map(|o| o.len()), Some(2));
        let err = parse("outputs:\n- stdout: {}\n- syslog:\n    adress: udp://h:514\n")
            .expect_err("typo");
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/sensor.yaml:4:"), "{msg}");
        assert!(msg.contains("adress"), "{msg}");
    }

    #[test]
    fn bad_glob_is_reported() {
        let args = RunArgs { interfaces: Some(vec!["veth[".into()]), ..RunArgs::default() };
        let err = Config::resolve(&args).expect_err("bad glob");
        assert!(err.to_string().contains("interfaces"), "{err}");
    }
}
