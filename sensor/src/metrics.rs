//! Prometheus metrics (OpenMetrics text). Kernel-side counters are read from the BPF maps at
//! scrape time by collectors, so a scrape always sees the kernel's current values.

use std::sync::{Arc, Mutex, PoisonError};

use aya::maps::{MapData, PerCpuArray};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use sensor_common::{
    host::LossCounter,
    net::{IfaceCounters, POLICY_INGRESS, VERDICT_SLOTS, VerdictKey},
};

use crate::{features::KernelFeatures, interfaces::InterfaceTable};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// Event type: `exec`.
    pub r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabels {
    feature: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    kernel: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map_name: &'static str,
}

/// `cilium_bpf_map_pressure{map_name}`: fill ratio (0..1) of the sensor's bounded maps.
pub type MapPressure = Family<MapLabels, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// The metrics the agent updates as it runs.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// `sensor_policy_reloads_total{outcome}`: policy loads applied or rejected.
    pub policy_reloads: Family<OutcomeLabels, Counter>,
    /// `sensor_policy_revision`: revision of the policy set the kernel enforces.
    pub policy_revision: Gauge,
    /// `sensor_policy_rejected_files`: policy files the last load could not use (each
    /// reported with file and line; skipped, or held at its last good version).
    pub policy_rejected_files: Gauge,
    pub map_pressure: MapPressure,
    /// Conntrack garbage collection: entries, deletions, runs.
    pub conntrack: crate::conntrack::ConntrackMetrics,
    /// `sensor_events_total{type}`: events decoded and written out.
    pub events: Family<EventLabels, Counter>,
    /// `sensor_event_decode_errors_total{reason}`: ring buffer records that did not decode.
    pub decode_errors: Family<ReasonLabels, Counter>,
    /// `sensor_ready`: 1 once every program is attached.
    pub ready: Gauge,
    /// `sensor_host_events_total{type,action}`: host events written out.
    pub host_events: Family<HostEventLabels, Counter>,
    /// `sensor_host_watched_cgroups`: cgroups at least one host policy selects.
    pub host_watched_cgroups: Gauge,
    /// `sensor_endpoints_unattached`: local endpoints whose interface was not found (or is
    /// unusable): nothing is counted or enforced for them on this node.
    pub endpoints_unattached: Gauge,
    /// `sensor_output_{sent,dropped,errors,retries}_total{output}`.
    pub outputs: crate::outputs::OutputMetrics,
    /// `falcosecurity_falco_rules_matches_total{rule_name,priority,source,tag_*}` (Falco's name
    /// and labels: priority is the 0-7 number, each tag a `tag_<tag>="true"` label).
    pub rules_matches: Family<Vec<(String, String)>, Counter>,
    /// `sensor_rules_loaded`: rules running (enabled, at or above the minimum priority).
    pub rules_loaded: Gauge,
    /// `sensor_rules_skipped`: rules skipped at load (unknown field, event type, operator).
    pub rules_skipped: Gauge,
    /// `sensor_rules_reloads_total{outcome}`.
    pub rules_reloads: Family<OutcomeLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostEventLabels {
    pub r#type: &'static str,
    pub action: &'static str,
}

impl Metrics {
    /// Builds the registry: the agent's own metrics plus collectors over the kernel maps.
    pub fn register(
        &self,
        features: &KernelFeatures,
        interfaces: Arc<Mutex<InterfaceTable>>,
        loss: PerCpuArray<MapData, u64>,
        net_counters: PerCpuArray<MapData, u64>,
        verdicts: PerCpuArray<MapData, IfaceCounters>,
        hubble: &crate::hubble_metrics::HubbleMetrics,
    ) -> Registry {
        let mut registry = Registry::default();
        hubble.register(&mut registry);
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                kernel: features.kernel.clone(),
            })
            .set(1);
        registry.register("sensor_build_info", "Sensor version and kernel release", build);
        let feature_family = Family::<FeatureLabels, Gauge>::default();
        for (feature, ok) in &features.available {
            feature_family
                .get_or_create(&FeatureLabels { feature: feature.name() })
                .set(i64::from(*ok));
        }
        registry.register(
            "sensor_kernel_feature",
            "Kernel BPF features found at start (1 available, 0 not)",
            feature_family,
        );
        registry.register(
            "sensor_events",
            "Events decoded from the kernel and written out, by type",
            self.events.clone(),
        );
        registry.register(
            "sensor_event_decode_errors",
            "Ring buffer records that could not be decoded, by reason",
            self.decode_errors.clone(),
        );
        registry.register("sensor_ready", "1 once all programs are attached", self.ready.clone());
        registry.register(
            "sensor_host_events",
            "Host events written out, by type and action (observed, audit, would_block, blocked)",
            self.host_events.clone(),
        );
        registry.register(
            "sensor_host_watched_cgroups",
            "cgroups selected by at least one host policy",
            self.host_watched_cgroups.clone(),
        );
        registry.register(
            "sensor_endpoints_unattached",
            "Local endpoints (pods of this node) without a usable interface: not counted or enforced here",
            self.endpoints_unattached.clone(),
        );
        registry.register(
            "falcosecurity_falco_rules_matches",
            "Events that matched a rule, by rule, priority (0 Emergency .. 7 Debug), source and tags",
            self.rules_matches.clone(),
        );
        registry.register(
            "sensor_rules_loaded",
            "Rules running: loaded, enabled, at or above the minimum priority",
            self.rules_loaded.clone(),
        );
        registry.register(
            "sensor_rules_skipped",
            "Rules skipped at load (a field, event type or operator we do not have)",
            self.rules_skipped.clone(),
        );
        registry.register(
            "sensor_rules_reloads",
            "Rule file loads, by outcome (applied, rejected)",
            self.rules_reloads.clone(),
        );
        registry.register(
            "sensor_policy_reloads",
            "Policy loads, by outcome (applied, rejected)",
            self.policy_reloads.clone(),
        );
        registry.register(
            "sensor_policy_revision",
            "Revision of the policy set in force",
            self.policy_revision.clone(),
        );
        registry.register(
            "sensor_policy_rejected_files",
            "Policy files the last load rejected (skipped, or held at their last good version)",
            self.policy_rejected_files.clone(),
        );
        registry.register(
            "cilium_bpf_map_pressure",
            "Fill ratio of the sensor's BPF maps (policy maps after each apply, conntrack after each sweep)",
            self.map_pressure.clone(),
        );
        registry.register(
            "sensor_conntrack_entries",
            "Flows in the conntrack map after the last garbage collection",
            self.conntrack.entries.clone(),
        );
        registry.register(
            "sensor_conntrack_gc_deleted",
            "Conntrack entries removed as idle or closed",
            self.conntrack.deleted.clone(),
        );
        registry.register(
            "sensor_conntrack_gc_runs",
            "Conntrack garbage collection passes",
            self.conntrack.runs.clone(),
        );
        self.outputs.register(&mut registry);
        registry.register_collector(Box::new(NetCollector { map: Mutex::new(net_counters) }));
        registry.register_collector(Box::new(VerdictCollector { map: Mutex::new(verdicts) }));
        registry.register_collector(Box::new(InterfaceCollector { table: interfaces }));
        registry.register_collector(Box::new(LossCollector { map: Mutex::new(loss) }));
        registry
    }
}

/// `sensor_interface_{packets,bytes}_total{interface,direction}` from the tc programs' per-CPU
/// map, and `sensor_interface_attached{interface}` from the attach table.
#[derive(Debug)]
struct InterfaceCollector {
    table: Arc<Mutex<InterfaceTable>>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    interface: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttachedLabels {
    interface: String,
}

impl Collector for InterfaceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let totals = table.counters();

        {
            let mut attached = encoder.encode_descriptor(
                "sensor_interface_attached",
                "Interfaces the tc programs are attached to",
                None,
                MetricType::Gauge,
            )?;
            for name in table.attached_names() {
                attached
                    .encode_family(&AttachedLabels { interface: name.to_owned() })?
                    .encode_gauge(&1_i64)?;
            }
        }

        for (metric, help, pick) in [
            (
                "sensor_interface_packets",
                "Packets seen by the tc programs, by interface and direction",
                (|c: &sensor_common::net::IfaceCounters| c.packets) as fn(&_) -> u64,
            ),
            (
                "sensor_interface_bytes",
                "Bytes (whole frames) seen by the tc programs, by interface and direction",
                |c| c.bytes,
            ),
        ] {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for (interface, direction, counters) in &totals {
                let labels =
                    InterfaceLabels { interface: interface.clone(), direction: direction.as_str() };
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&pick(counters), None)?;
            }
        }
        Ok(())
    }
}

/// `sensor_lost_events_total{ring,reason}`: events the kernel could not hand to us.
struct LossCollector {
    map: Mutex<PerCpuArray<MapData, u64>>,
}

impl std::fmt::Debug for LossCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LossCollector")
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LossLabels {
    ring: &'static str,
    reason: &'static str,
}

impl Collector for LossCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut family = encoder.encode_descriptor(
            "sensor_lost_events",
            "Events lost before reaching userspace, by ring buffer and reason",
            None,
            MetricType::Counter,
        )?;
        for (counter, reason) in [
            (LossCounter::HostRingbufFull, "ringbuf_full"),
            (LossCounter::OpenArgsFull, "open_scratch_full"),
            (LossCounter::HoldLost, "hold_ringbuf_full"),
        ] {
            let total =
                map.get(&(counter as u32), 0).map_or(0, |per_cpu| per_cpu.iter().sum::<u64>());
            family
                .encode_family(&LossLabels { ring: "host", reason })?
                .encode_counter::<NoLabelSet, _, u64>(&total, None)?;
        }
        // Not a loss: decisions the kernel made closed because an identity walk was too deep.
        let walk = map
            .get(&(LossCounter::WalkIncomplete as u32), 0)
            .map_or(0, |per_cpu| per_cpu.iter().sum::<u64>());
        encoder
            .encode_descriptor(
                "sensor_host_walk_limit",
                "Operations decided as blocked because the object's ancestors could not all be checked",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&walk, None)?;
        Ok(())
    }
}

/// `hubble_lost_events_total{source}` and `sensor_net_unclassified_packets_total{reason}` from
/// the tc programs' per-CPU counters.
struct NetCollector {
    map: Mutex<PerCpuArray<MapData, u64>>,
}

impl std::fmt::Debug for NetCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetCollector")
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

impl Collector for NetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use sensor_common::net::NetCounter;
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let value = |c: NetCounter| map.get(&(c as u32), 0).map_or(0, |v| v.iter().sum::<u64>());
        {
            let mut lost = encoder.encode_descriptor(
                "hubble_lost_events",
                "Flow events lost before userspace read them, by source",
                None,
                MetricType::Counter,
            )?;
            lost.encode_family(&SourceLabels { source: "perf_event_ring_buffer" })?
                .encode_counter::<NoLabelSet, _, u64>(&value(NetCounter::RingbufFull), None)?;
        }
        let mut family = encoder.encode_descriptor(
            "sensor_net_unclassified_packets",
            "Packets counted per interface but not classified into a flow, by reason",
            None,
            MetricType::Counter,
        )?;
        for counter in NetCounter::ALL.into_iter().filter(|c| *c != NetCounter::RingbufFull) {
            family
                .encode_family(&ReasonLabels { reason: counter.name() })?
                .encode_counter::<NoLabelSet, _, u64>(&value(counter), None)?;
        }
        Ok(())
    }
}

/// Cilium's per-packet counters: `cilium_forward_{count,bytes}_total{direction}` and
/// `cilium_drop_{count,bytes}_total{reason,direction}`, from the tc programs' per-CPU map.
struct VerdictCollector {
    map: Mutex<PerCpuArray<MapData, IfaceCounters>>,
}

impl std::fmt::Debug for VerdictCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerdictCollector")
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CiliumDropLabels {
    reason: &'static str,
    direction: &'static str,
}

impl Collector for VerdictCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        // Slots never hit stay zero and are left out, as absent hash keys were.
        let totals: Vec<(VerdictKey, IfaceCounters)> = (0..VERDICT_SLOTS)
            .filter_map(|slot| {
                let per_cpu = map.get(&slot, 0).ok()?;
                let sum = per_cpu.iter().fold(IfaceCounters::default(), |a, c| IfaceCounters {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                });
                (sum.packets > 0).then_some((VerdictKey::from_slot(slot), sum))
            })
            .collect();
        drop(map);
        let direction =
            |k: &VerdictKey| if k.direction == POLICY_INGRESS { "INGRESS" } else { "EGRESS" };
        for (name, help, forwarded, bytes) in [
            ("cilium_forward_count", "Packets forwarded, by direction", true, false),
            ("cilium_forward_bytes", "Bytes forwarded, by direction", true, true),
            ("cilium_drop_count", "Packets dropped, by reason and direction", false, false),
            ("cilium_drop_bytes", "Bytes dropped, by reason and direction", false, true),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (key, c) in totals.iter().filter(|(k, _)| (k.reason == 0) == forwarded) {
                let value = if bytes { c.bytes } else { c.packets };
                if forwarded {
                    let labels = ForwardLabels { direction: direction(key) };
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
                } else {
                    let reason = crate::flows::drop_reason_text(key.reason);
                    let labels = CiliumDropLabels { reason, direction: direction(key) };
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
                }
            }
        }
        Ok(())
    }
}

/// Renders the registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}
