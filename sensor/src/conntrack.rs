//! Conntrack garbage collection: the kernel's LRU map evicts only under pressure, so idle and
//! closed connections are removed here on a timer, with Cilium's default timeouts.

use std::time::Duration;

use aya::maps::{HashMap, MapData};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use sensor_common::net::{CT_FIN_FORWARD, CT_FIN_REPLY, CtEntry, CtKey, PROTO_TCP};
use serde::Deserialize;

const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// `conntrack:` in the config file. Durations in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConntrackConfig {
    /// Size of the conntrack map (LRU: when full, the least recently used flow is evicted).
    pub max_entries: u32,
    /// Idle timeout of an established TCP connection.
    pub tcp_timeout_seconds: u64,
    /// Idle timeout once both sides sent FIN or either sent RST, or before the handshake
    /// completed. A half-closed connection (one FIN) keeps the established timeout.
    pub tcp_closing_timeout_seconds: u64,
    /// Idle timeout of UDP, ICMP and SCTP flows.
    pub non_tcp_timeout_seconds: u64,
    pub gc_interval_seconds: u64,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            max_entries: sensor_common::net::CONNTRACK_MAX_ENTRIES,
            tcp_timeout_seconds: 8000,
            tcp_closing_timeout_seconds: 10,
            non_tcp_timeout_seconds: 60,
            gc_interval_seconds: 10,
        }
    }
}

impl ConntrackConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_entries < 1024 {
            return Err(format!(
                "conntrack.max_entries: {} is below the minimum 1024",
                self.max_entries
            ));
        }
        if self.gc_interval_seconds == 0 {
            return Err("conntrack.gc_interval_seconds: must be at least 1".into());
        }
        Ok(())
    }

    /// How long `entry` may stay idle.
    fn timeout(&self, protocol: u8, entry: &CtEntry) -> Duration {
        let secs = if protocol != PROTO_TCP {
            self.non_tcp_timeout_seconds
        } else if closing(entry) || entry.tcp_flags & TCP_ACK == 0 {
            self.tcp_closing_timeout_seconds
        } else {
            self.tcp_timeout_seconds
        };
        Duration::from_secs(secs)
    }
}

/// A TCP connection is closing once both sides sent FIN, or either sent RST.
const fn closing(entry: &CtEntry) -> bool {
    let both_fins = CT_FIN_FORWARD | CT_FIN_REPLY;
    entry.tcp_flags & TCP_RST != 0 || entry.tcp_fin & both_fins == both_fins
}

#[derive(Debug, Clone, Default)]
pub struct ConntrackMetrics {
    /// `sensor_conntrack_entries`: flows in the map after the last sweep.
    pub entries: Gauge,
    /// `sensor_conntrack_gc_deleted_total`: flows removed as idle or closed.
    pub deleted: Counter,
    /// `sensor_conntrack_gc_runs_total`.
    pub runs: Counter,
    pub pressure: crate::metrics::MapPressure,
}

pub struct Conntrack {
    map: HashMap<MapData, CtKey, CtEntry>,
    config: ConntrackConfig,
    metrics: ConntrackMetrics,
}

impl Conntrack {
    pub const fn new(
        map: HashMap<MapData, CtKey, CtEntry>,
        config: ConntrackConfig,
        metrics: ConntrackMetrics,
    ) -> Self {
        Self { map, config, metrics }
    }

    pub const fn interval(&self) -> Duration {
        Duration::from_secs(self.config.gc_interval_seconds)
    }

    /// One pass over the map; `now_ns` is [`clock_ns`], the clock the datapath stamps with.
    pub fn sweep(&mut self, now_ns: u64) {
        let mut alive = 0_i64;
        let expired: Vec<CtKey> = self
            .map
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, entry)| {
                let idle = Duration::from_nanos(now_ns.saturating_sub(entry.last_ns));
                let expired = idle > self.config.timeout(key.protocol, entry);
                alive += i64::from(!expired);
                expired
            })
            .map(|(key, _)| key)
            .collect();
        for key in &expired {
            // Gone already (LRU eviction, or the datapath removed it): nothing to do.
            let _ = self.map.remove(key);
        }
        self.metrics.deleted.inc_by(expired.len() as u64);
        self.metrics.entries.set(alive);
        self.metrics.runs.inc();
        let ratio = alive as f64 / f64::from(self.config.max_entries.max(1));
        self.metrics
            .pressure
            .get_or_create(&crate::metrics::MapLabels { map_name: "conntrack" })
            .set(ratio);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: conntrack's clock (the datapath stamps entries with
/// `bpf_ktime_get_coarse_ns`, the same clock at tick resolution).
pub fn clock_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
        u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(ts.tv_nsec()).unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(flags: u8, fin: u8) -> Duration {
        let entry = CtEntry { tcp_flags: flags, tcp_fin: fin, ..CtEntry::default() };
        ConntrackConfig::default().timeout(PROTO_TCP, &entry)
    }

    #[test]
    fn tcp_closes_after_both_fins_or_a_reset() {
        const SYN: u8 = 0x02;
        const FIN: u8 = 0x01;
        let (open, closing) = (Duration::from_secs(8000), Duration::from_secs(10));
        assert_eq!(tcp(SYN, 0), closing, "handshake not complete");
        assert_eq!(tcp(SYN | TCP_ACK, 0), open);
        assert_eq!(tcp(SYN | TCP_ACK | FIN, CT_FIN_FORWARD), open, "half-closed stays open");
        assert_eq!(tcp(SYN | TCP_ACK | FIN, CT_FIN_REPLY), open, "half-closed stays open");
        assert_eq!(tcp(SYN | TCP_ACK | FIN, CT_FIN_FORWARD | CT_FIN_REPLY), closing);
        assert_eq!(tcp(SYN | TCP_ACK | TCP_RST, 0), closing);
    }
}
