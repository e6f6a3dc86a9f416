//! Kernel flow events → Hubble flow records and Hubble metric labels, enriched with the
//! endpoint and identity knowledge of the current policy compile.

use std::sync::{Arc, RwLock};

use sensor_common::net::{
    DROP_CT_INVALID_HDR, DROP_FRAG_NOT_FOUND, DROP_INVALID, DROP_INVALID_EXTHDR,
    DROP_POLICY_DENIED, DROP_POLICY_DENY, DROP_UNSUPPORTED_L2, MATCH_ALL, MATCH_L3_L4,
    MATCH_L3_ONLY, MATCH_L4_ONLY, POLICY_INGRESS, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP, VERDICT_AUDIT, VERDICT_DROPPED, VERDICT_FORWARDED,
};
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use crate::{
    decode::Flow,
    output::HubblePolicy,
    output::{FlowRecord, HubbleEndpoint, HubbleEventType, HubbleFlow, HubbleInterface, HubbleIp},
    policy::Compiled,
    sys::BootClock,
};

/// Hubble's monitor event types.
const EVENT_DROP: u8 = 1;
const EVENT_TRACE: u8 = 4;
const EVENT_POLICY_VERDICT: u8 = 5;

pub const fn verdict_name(verdict: u8) -> &'static str {
    match verdict {
        VERDICT_FORWARDED => "FORWARDED",
        VERDICT_DROPPED => "DROPPED",
        VERDICT_AUDIT => "AUDIT",
        _ => "VERDICT_UNKNOWN",
    }
}

/// Hubble's `DropReason` enum name (flow.proto), as in `drop_reason_desc` and the `reason`
/// label of `hubble_drop_total`.
pub const fn drop_reason_name(reason: u8) -> &'static str {
    match reason {
        DROP_POLICY_DENIED => "POLICY_DENIED",
        DROP_POLICY_DENY => "POLICY_DENY",
        DROP_INVALID => "INVALID_PACKET_DROPPED",
        DROP_CT_INVALID_HDR => "CT_TRUNCATED_OR_INVALID_HEADER",
        DROP_INVALID_EXTHDR => "INVALID_IPV6_EXTENSION_HEADER",
        DROP_UNSUPPORTED_L2 => "UNSUPPORTED_L2_PROTOCOL",
        DROP_FRAG_NOT_FOUND => "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
        _ => "DROP_REASON_UNKNOWN",
    }
}

/// Cilium's text for a drop reason (pkg/monitor/api), the `reason` label of
/// `cilium_drop_count_total`.
pub const fn drop_reason_text(reason: u8) -> &'static str {
    match reason {
        DROP_POLICY_DENY => "Policy denied by denylist",
        DROP_INVALID => "Invalid packet",
        DROP_CT_INVALID_HDR => "CT: Truncated or invalid header",
        DROP_INVALID_EXTHDR => "Invalid IPv6 extension header",
        DROP_UNSUPPORTED_L2 => "Unsupported L2 protocol",
        DROP_FRAG_NOT_FOUND => "First logical datagram fragment not found",
        _ => "Policy denied",
    }
}

/// A drop reason about the packet itself, not about policy: shown on AUDIT records too,
/// where nothing else says what enforce mode would have dropped.
const fn is_packet_reason(reason: u8) -> bool {
    !matches!(reason, 0 | DROP_POLICY_DENIED | DROP_POLICY_DENY)
}

pub const fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        PROTO_SCTP => "SCTP",
        PROTO_ICMP => "ICMPv4",
        PROTO_ICMPV6 => "ICMPv6",
        _ => "Unknown",
    }
}

pub const fn match_name(match_type: u8) -> &'static str {
    match match_type {
        MATCH_L3_ONLY => "l3-only",
        MATCH_L3_L4 => "l3-l4",
        MATCH_L4_ONLY => "l4-only",
        MATCH_ALL => "all",
        _ => "none",
    }
}

/// The Hubble event type of a flow event: a drop, a policy verdict (a connection decided at
/// an endpoint a policy selects), or a trace of other traffic.
pub const fn event_type(flow: &Flow) -> (&'static str, u8) {
    if flow.verdict == VERDICT_DROPPED {
        ("Drop", EVENT_DROP)
    } else if flow.policy_verdict {
        ("PolicyVerdict", EVENT_POLICY_VERDICT)
    } else {
        ("Trace", EVENT_TRACE)
    }
}

pub const fn direction_name(flow: &Flow) -> &'static str {
    if flow.direction == POLICY_INGRESS { "ingress" } else { "egress" }
}

fn tcp_flags(flags: u8) -> serde_json::Map<String, serde_json::Value> {
    const NAMES: [(u8, &str); 8] = [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| ((*n).to_owned(), json!(true)))
        .collect()
}

/// Builds Hubble records; shares the compiled policy with the policy applier.
#[derive(Clone)]
pub struct FlowFormatter {
    pub node_name: String,
    pub clock: BootClock,
    pub compiled: Arc<RwLock<Compiled>>,
    pub interface_name: Arc<dyn Fn(u32) -> String + Send + Sync>,
}

impl FlowFormatter {
    pub fn record(&self, flow: &Flow) -> FlowRecord {
        let time = self.clock.to_wall(flow.boot_ns).format(&Rfc3339).unwrap_or_default();
        let compiled = self.compiled.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let endpoint = |ip: std::net::IpAddr, identity: u32| {
            let pod = compiled.pods_by_ip.get(&ip);
            HubbleEndpoint {
                id: None,
                identity: (identity != 0).then_some(identity),
                namespace: pod.map(|(ns, _)| ns.clone()),
                labels: compiled.identity_labels.get(&identity).cloned().unwrap_or_default(),
                pod_name: pod.map(|(_, name)| name.clone()),
            }
        };
        let ingress = flow.direction == POLICY_INGRESS;
        // The local endpoint receives an ingress connection's packets and sends its replies.
        let local_is_destination = ingress != flow.is_reply;
        let (mut source, mut destination) = if local_is_destination {
            (
                endpoint(flow.source, flow.remote_identity),
                endpoint(flow.destination, flow.local_identity),
            )
        } else {
            (
                endpoint(flow.source, flow.local_identity),
                endpoint(flow.destination, flow.remote_identity),
            )
        };
        if flow.endpoint_id != 0 {
            let local = if local_is_destination { &mut destination } else { &mut source };
            local.id = Some(flow.endpoint_id);
        }
        let deciding: Vec<HubblePolicy> = flow
            .policy
            .checked_sub(1)
            .and_then(|i| compiled.policies.get(i as usize))
            .map(|p| HubblePolicy {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                kind: p.kind,
            })
            .into_iter()
            .collect();
        drop(compiled);
        let denied = flow.drop_reason == DROP_POLICY_DENY;
        let pick = |want_ingress: bool, want_denied: bool| {
            if ingress == want_ingress && denied == want_denied {
                deciding.clone()
            } else {
                Vec::new()
            }
        };
        let l4 = match flow.protocol {
            PROTO_TCP => {
                json!({"TCP": {"source_port": flow.source_port, "destination_port": flow.destination_port, "flags": tcp_flags(flow.tcp_flags)}})
            }
            PROTO_UDP => {
                json!({"UDP": {"source_port": flow.source_port, "destination_port": flow.destination_port}})
            }
            PROTO_SCTP => {
                json!({"SCTP": {"source_port": flow.source_port, "destination_port": flow.destination_port}})
            }
            PROTO_ICMP => json!({"ICMPv4": {"type": flow.icmp_type, "code": flow.icmp_code}}),
            PROTO_ICMPV6 => json!({"ICMPv6": {"type": flow.icmp_type, "code": flow.icmp_code}}),
            _ => json!({}),
        };
        let summary = if flow.protocol == PROTO_TCP {
            let names: Vec<String> = tcp_flags(flow.tcp_flags).keys().cloned().collect();
            format!("TCP Flags: {}", names.join(", "))
        } else {
            protocol_name(flow.protocol).to_owned()
        };
        let dropped = flow.verdict == VERDICT_DROPPED;
        let would_drop = flow.verdict == VERDICT_AUDIT && is_packet_reason(flow.drop_reason);
        let (_, kind) = event_type(flow);
        FlowRecord {
            flow: HubbleFlow {
                time: time.clone(),
                verdict: verdict_name(flow.verdict),
                drop_reason: (dropped || would_drop).then_some(flow.drop_reason),
                drop_reason_desc: (dropped || would_drop)
                    .then(|| drop_reason_name(flow.drop_reason)),
                ip: HubbleIp {
                    source: flow.source.to_string(),
                    destination: flow.destination.to_string(),
                    ip_version: if flow.source.is_ipv4() { "IPv4" } else { "IPv6" },
                },
                l4,
                source,
                destination,
                flow_type: "L3_L4",
                node_name: self.node_name.clone(),
                event_type: HubbleEventType { kind, sub_type: dropped.then_some(flow.drop_reason) },
                traffic_direction: if ingress { "INGRESS" } else { "EGRESS" },
                policy_match_type: (flow.match_type != 0).then_some(flow.match_type),
                is_reply: flow.is_reply,
                interface: HubbleInterface {
                    index: flow.ifindex,
                    name: (self.interface_name)(flow.ifindex),
                },
                ingress_allowed_by: pick(true, false),
                egress_allowed_by: pick(false, false),
                ingress_denied_by: pick(true, true),
                egress_denied_by: pick(false, true),
                summary,
            },
            node_name: self.node_name.clone(),
            time,
        }
    }
}

/// Hubble's `tcp` metric flags present in a flow record: SYN, SYN-ACK, FIN, RST.
pub fn reported_tcp_flags(flow: &Flow) -> impl Iterator<Item = &'static str> {
    let f = if flow.protocol == PROTO_TCP { flow.tcp_flags } else { 0 };
    let (syn, ack, fin, rst) = (f & 0x02 != 0, f & 0x10 != 0, f & 0x01 != 0, f & 0x04 != 0);
    [(syn && !ack, "SYN"), (syn && ack, "SYN-ACK"), (fin, "FIN"), (rst, "RST")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
}

pub const fn has_ports(protocol: u8) -> bool {
    matches!(protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
}
