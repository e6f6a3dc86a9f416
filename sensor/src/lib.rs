//! The sensor agent: loads the eBPF programs, attaches them, and turns what they see into
//! JSON events and Prometheus metrics.
//!
//! Data flows one way: kernel hooks → maps and ring buffers ([`loader`]) → [`decode`] →
//! [`output`] and [`metrics`]. [`agent`] wires the steps together.

pub mod agent;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod decode;
pub mod discovery;
pub mod features;
pub mod flows;
pub mod fuzzing;
pub mod host;
pub mod http;
pub mod hubble_metrics;
pub mod interfaces;
pub mod kubernetes;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod output;
pub mod outputs;
pub mod pins;
pub mod policy;
pub mod rules;
pub mod sys;
pub mod watch;
