//! Command line (clap). Flags given here override the config file.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "sensor",
    version,
    about = "eBPF security sensor: L3/L4 flow accounting on pod interfaces and process events, \
             with Prometheus metrics and JSON output"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the eBPF programs, attach them and run until SIGINT or SIGTERM (needs root, or
    /// CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN).
    Run(Box<RunArgs>),
    /// Policy tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Falco rule tools.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Remove everything the agent pinned (programs stay attached across restarts through
    /// these pins): run after stopping the agent, to uninstall.
    Cleanup(CleanupArgs),
}

#[derive(Debug, Default, Args)]
pub struct CleanupArgs {
    /// Config file to read `bpf_pin_dir` from.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Pin directory [default: /sys/fs/bpf/sensor].
    #[arg(long, value_name = "DIR")]
    pub bpf_pin_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Load Falco rule files in order and list the rules loaded and skipped (with reasons).
    /// Exits non-zero when a file does not load.
    Check(RulesCheckArgs),
    /// Events per second per core through rule files on synthetic events (for
    /// `cargo xtask bench`): one JSON line with alerts built, one with conditions only.
    #[command(hide = true)]
    Bench(RulesBenchArgs),
}

#[derive(Debug, Args)]
pub struct RulesBenchArgs {
    /// Rule files or directories, in load order; none: an empty rule set.
    #[arg(value_name = "FILE")]
    pub paths: Vec<PathBuf>,

    /// Enable every rule, whatever the files say.
    #[arg(long)]
    pub enable_all: bool,

    /// CPU seconds per pass.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,

    /// Minimum priority of the rules that run [default: debug].
    #[arg(long, value_parser = parse_priority)]
    pub min_priority: Option<crate::rules::Priority>,
}

#[derive(Debug, Args)]
pub struct RulesCheckArgs {
    /// Rule files or directories, in load order.
    #[arg(required = true, value_name = "FILE")]
    pub paths: Vec<PathBuf>,

    /// Minimum priority of the rules that would run [default: debug].
    #[arg(long, value_parser = parse_priority)]
    pub min_priority: Option<crate::rules::Priority>,
}

fn parse_priority(s: &str) -> Result<crate::rules::Priority, String> {
    crate::rules::Priority::parse(s).ok_or_else(|| format!("unknown priority `{s}`"))
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files and print what each endpoint is allowed and denied. Exits
    /// non-zero on any error.
    Check(PolicyCheckArgs),
}

#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// YAML config file; flags given on the command line override its fields. Unknown fields
    /// are errors.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// detect (default): observe and log what would be blocked; enforce: block it.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,

    /// Interfaces to attach the tc programs to, as comma-separated glob patterns
    /// [default: veth*,lxc*,cali*,cni*,gke*,eni*,tap*,netkit*]. Physical NICs are never in the
    /// default; name them here only if you mean it.
    #[arg(long, value_name = "GLOB,...", value_delimiter = ',')]
    pub interfaces: Option<Vec<String>>,

    /// Address of the HTTP server for /metrics, /healthz and /readyz [default: 0.0.0.0:9990].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// Format of the agent's own log on stderr [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Node name put on every record [default: the hostname; NODE_NAME in a DaemonSet].
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Directory (or single file) of CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and
    /// NetworkPolicy YAML (*.yaml, *.yml). Watched: changes apply atomically; a file that does
    /// not parse is rejected with file and line and the previous policy set stays in force.
    #[arg(long, value_name = "DIR")]
    pub policy_dir: Option<PathBuf>,

    /// YAML file listing endpoints (pods: namespace, name, labels, ips, interface), namespace
    /// labels and the node's host_ips. Watched like --policy-dir.
    #[arg(long, value_name = "FILE")]
    pub endpoints_file: Option<PathBuf>,

    /// Hubble metrics to export, space-separated, in Hubble's syntax
    /// (`flow:sourceContext=namespace;destinationContext=namespace drop tcp`)
    /// [default: flow drop tcp port-distribution policy].
    #[arg(long, value_name = "METRICS", value_delimiter = ' ')]
    pub hubble_metrics: Option<Vec<String>>,

    /// Falco rule files or directories, comma-separated, loaded in order. Watched: a change
    /// reloads them; a file that does not load is rejected and the previous rules stay.
    #[arg(long, value_name = "PATH,...", value_delimiter = ',')]
    pub rules_files: Option<Vec<PathBuf>>,
    /// bpffs directory where programs, maps and links are pinned so they keep working while
    /// the agent restarts [default: /sys/fs/bpf/sensor]. `sensor cleanup` removes it.
    #[arg(long, value_name = "DIR")]
    pub bpf_pin_dir: Option<PathBuf>,

    /// Learn pods, namespaces and policies (NetworkPolicy, CiliumNetworkPolicy,
    /// CiliumClusterwideNetworkPolicy, HostPolicy) from the Kubernetes API, with the in-cluster
    /// service account or $KUBECONFIG; the config file's `kubernetes:` section sets details.
    /// Works together with --policy-dir and --endpoints-file (both sources apply).
    #[arg(long)]
    pub kubernetes: bool,

    /// This node's addresses, comma-separated: the `host` entity for the Kubernetes source
    /// (the DaemonSet passes status.hostIP).
    #[arg(long, env = "HOST_IPS", value_name = "IP,...", value_delimiter = ',')]
    pub host_ips: Option<Vec<IpAddr>>,
}

#[derive(Debug, Args)]
pub struct PolicyCheckArgs {
    /// Policy files or directories to validate.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Endpoints file to resolve selectors against; without it only syntax is checked.
    #[arg(long, value_name = "FILE")]
    pub endpoints_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Observe and report; never block (like Cilium's policy audit mode, Falco's default).
    #[default]
    Detect,
    /// Block what policies forbid, in the kernel.
    Enforce,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
