//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz) and for the corpus replay test
//! (`sensor/tests/fuzz_corpus.rs`): each takes arbitrary bytes and must never panic. Errors are
//! the expected outcome for most inputs; only a panic (or an abort) is a finding.

use std::path::Path;

use crate::{
    cli::RunArgs,
    config::{Config, FileConfig},
    policy::{compile::compile, endpoints::Endpoints, model::parse_file},
};

/// A fuzz target: takes any bytes, must not panic.
pub type Target = fn(&[u8]);

/// The fuzz targets, by the name of their `fuzz/fuzz_targets/<name>.rs` and corpus directory.
pub const TARGETS: [(&str, Target); 4] = [
    ("network_policy", network_policy),
    ("host_policy", host_policy),
    ("decode_host", decode_host),
    ("config", config),
];

/// Endpoints the fuzzed network policies are compiled against: local and remote pods in two
/// namespaces, IPv4 and IPv6, so selectors, CIDRs and entities all have something to match.
const ENDPOINTS: &str = "\
namespaces:
  prod: {team: a}
host_ips: [10.0.0.1, fd00::1]
endpoints:
- {namespace: prod, name: web, labels: {app: web}, ips: [10.1.0.2, fd00::1:2], interface: veth1}
- {namespace: prod, name: db, labels: {app: db, tier: data}, ips: [10.1.0.3], interface: veth2}
- {namespace: dev, name: remote, labels: {app: web}, ips: [10.2.0.9, fd00::2:9]}
";

/// CiliumNetworkPolicy / NetworkPolicy YAML: parse, then compile what parsed.
pub fn network_policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok((policies, _warnings)) = parse_file(Path::new("fuzz.yaml"), text) else { return };
    let endpoints = Endpoints::parse(Path::new("endpoints.yaml"), ENDPOINTS).unwrap_or_default();
    let compiled = compile(&policies, &endpoints);
    std::hint::black_box(compiled);
}

/// HostPolicy YAML.
pub fn host_policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = std::hint::black_box(crate::host::policy::parse_file(Path::new("fuzz.yaml"), text));
}

/// A ring buffer record as the kernel would hand it over (host or flow event).
pub fn decode_host(data: &[u8]) {
    let _ = std::hint::black_box(crate::decode::decode_host(data));
}

/// The agent's config file, parsed and resolved (validation included) without flags.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = FileConfig::parse(Path::new("sensor.yaml"), text) else { return };
    // A node name avoids reading the hostname on every run.
    let args = RunArgs { node_name: Some("fuzz-node".into()), ..RunArgs::default() };
    let _ = std::hint::black_box(Config::from_file(&args, file));
}
