//! `sensor policy check`: validate policy files and show what each endpoint may do.

use std::fmt::Write as _;

use sensor_common::net::{IDENTITY_ANY, POLICY_AUDIT_LAYER, POLICY_INGRESS};

use super::{Endpoints, PolicyError, compile, load_policies};
use crate::{cli::PolicyCheckArgs, flows::match_name};

/// Returns the report, or the first error (file and line) as `Err`.
pub fn check(args: &PolicyCheckArgs) -> Result<String, PolicyError> {
    let (policies, warnings) = load_policies(&args.paths)?;
    let mut host_policies = Vec::new();
    for path in &args.paths {
        host_policies.extend(crate::host::policy::load(path)?);
    }
    let mut endpoints = match &args.endpoints_file {
        Some(file) => Endpoints::load(file)?,
        None => Endpoints::default(),
    };
    let unattached = discover(&mut endpoints);
    let mut out = String::new();
    for w in &warnings {
        let _ = writeln!(out, "{w}");
    }
    for p in &policies {
        let ns = p.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default();
        let _ = writeln!(out, "ok: {} {ns}{} ({})", p.kind.as_str(), p.name, p.origin);
    }
    for h in &host_policies {
        let scope = if h.scope.host {
            "host processes".to_owned()
        } else {
            let ns = if h.scope.namespaces.is_empty() {
                "all namespaces".to_owned()
            } else {
                h.scope.namespaces.join(",")
            };
            format!("pods in {ns} matching {:?}", h.scope.pod_selector.match_labels)
        };
        let _ = writeln!(
            out,
            "ok: HostPolicy {} ({}): {scope}; {} executable, {} file, {} bind, {} syscall rules{}",
            h.name,
            h.origin,
            h.executables.len(),
            h.files.len(),
            h.binds.len(),
            h.syscalls.len(),
            if h.no_root.is_some() { ", noRoot" } else { "" },
        );
    }
    if args.endpoints_file.is_none() {
        return Ok(out);
    }
    let compiled = compile::compile(&policies, &endpoints);
    let peer = |id: u32| match id {
        IDENTITY_ANY => "any peer".to_owned(),
        id => compiled
            .identity_labels
            .get(&id)
            .map_or_else(|| format!("identity {id}"), |l| l.join(",")),
    };
    for (p, count) in policies.iter().zip(&compiled.selected_count) {
        if *count == 0 {
            let ns = p.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default();
            let _ = writeln!(
                out,
                "\nwarning: {} {ns}{} ({}) selects no endpoint: it enforces nothing",
                p.kind.as_str(),
                p.name,
                p.origin
            );
        }
    }
    for u in &unattached {
        let _ = writeln!(
            out,
            "\nendpoint {}: not enforced here: no interface found on this node ({})",
            u.pod, u.reason
        );
    }
    for ep in &compiled.local {
        let _ = writeln!(
            out,
            "\nendpoint {}/{} (interface {}, identity {}): ingress {}, egress {}",
            ep.namespace,
            ep.name,
            ep.interface,
            ep.identity,
            mode(ep.enforce_ingress, ep.audit_ingress),
            mode(ep.enforce_egress, ep.audit_egress),
        );
        if let Some(names) = compiled.selected_by.get(&ep.id) {
            for name in names {
                let _ = writeln!(out, "  selected by {name}");
            }
        }
        for (verb, set) in [("deny", &compiled.deny), ("allow", &compiled.allow)] {
            for (e, meta) in set.iter().filter(|(e, _)| e.endpoint_id == ep.id) {
                let direction = if e.direction & !POLICY_AUDIT_LAYER == POLICY_INGRESS {
                    "ingress from"
                } else {
                    "egress to"
                };
                let proto = e.protocol.map_or("any", crate::flows::protocol_name);
                let port = e.port.map_or_else(
                    || "any".to_owned(),
                    |(v, bits)| {
                        let last = u32::from(v) + (1_u32 << (16 - bits)) - 1;
                        if bits == 16 { v.to_string() } else { format!("{v}-{last}") }
                    },
                );
                let by = &compiled.policies[meta.policy];
                let audit = if meta.audit { ", audit" } else { "" };
                let _ = writeln!(
                    out,
                    "  {verb} {direction} {} {proto}/{port} [{}{audit}] by {} {}",
                    peer(e.identity),
                    match_name(meta.match_type),
                    by.kind,
                    by.name
                );
            }
        }
    }
    Ok(out)
}

const fn mode(enforced: bool, audit: bool) -> &'static str {
    match (enforced, audit) {
        (true, _) => "default-deny",
        (false, true) => "default-deny (audit)",
        (false, false) => "allow-all",
    }
}

/// Finds the interfaces of the file's endpoints that name none (as the agent does), and
/// returns those of them that are local but whose interface cannot be found.
fn discover(endpoints: &mut Endpoints) -> Vec<crate::discovery::Unattached> {
    let without: std::collections::BTreeSet<String> = endpoints
        .endpoints
        .iter()
        .filter(|e| e.interface.is_none())
        .map(|e| format!("{}/{}", e.namespace, e.name))
        .collect();
    if without.is_empty() {
        return Vec::new();
    }
    let patterns: Vec<String> =
        crate::config::DEFAULT_INTERFACES.iter().map(|p| (*p).to_owned()).collect();
    let Ok(matcher) = crate::config::InterfaceMatcher::new(&patterns) else { return Vec::new() };
    let root = crate::host::cgroups::cgroup2_root().unwrap_or_default();
    let mut resolver = crate::discovery::Resolver::new(matcher, root);
    resolver.resolve(endpoints);
    resolver.unattached.into_iter().filter(|u| without.contains(&u.pod)).collect()
}
