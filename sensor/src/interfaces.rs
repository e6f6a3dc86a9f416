//! Which interfaces carry our tc programs: netlink tells us about links as they come and go,
//! and the attacher keeps one ingress and one egress program on each matching one.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    },
};
use sensor_common::net::{Direction, IfaceCounters, IfaceKey};
use tokio::sync::mpsc;

use crate::{config::InterfaceMatcher, pins::Pins};

pub const TC_INGRESS_PROGRAM: &str = "tc_ingress";
pub const TC_EGRESS_PROGRAM: &str = "tc_egress";

/// A change in the set of links, in kernel order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link exists with this name (new, renamed, or listed in a dump). `bridge`: it is a
    /// bridge device (flannel's `cni0`, `docker0`), whose pods sit behind its veth ports.
    Present { index: u32, name: String, bridge: bool },
    /// The link was deleted.
    Gone { index: u32 },
    /// The initial dump is complete: every link present at start has been reported.
    Synced,
}

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("netlink: {0}")]
    Netlink(#[from] std::io::Error),
    #[error("netlink dump of links failed: {0}")]
    Dump(#[from] rtnetlink::Error),
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("attaching {program} to {interface}: {source}")]
    Attach { program: &'static str, interface: String, source: aya::programs::ProgramError },
}

/// Sends [`LinkEvent`]s for every link: a full dump first, then changes as they happen.
/// On a netlink overrun (we fell behind) it dumps again, so no change is lost.
pub async fn watch_links(events: mpsc::Sender<LinkEvent>) -> Result<(), InterfaceError> {
    let (connection, handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
    tokio::spawn(connection);
    // Subscribed before the dump: a link created meanwhile shows up in one or both.
    let dump = |handle: rtnetlink::Handle, events: mpsc::Sender<LinkEvent>| async move {
        let mut links = handle.link().get().execute();
        while let Some(link) = links.try_next().await? {
            if let Some(event) = present(&link) {
                let _ = events.send(event).await;
            }
        }
        let _ = events.send(LinkEvent::Synced).await;
        Ok::<_, InterfaceError>(())
    };
    dump(handle.clone(), events.clone()).await?;
    while let Some((message, _)) = messages.next().await {
        let event = match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => present(&link),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                Some(LinkEvent::Gone { index: link.header.index })
            }
            NetlinkPayload::Overrun(_) => {
                tracing::warn!("netlink overrun: listing links again");
                dump(handle.clone(), events.clone()).await?;
                None
            }
            _ => None,
        };
        if let Some(event) = event
            && events.send(event).await.is_err()
        {
            break; // the agent is shutting down
        }
    }
    Ok(())
}

fn present(link: &LinkMessage) -> Option<LinkEvent> {
    let bridge = link.attributes.iter().any(|attr| {
        matches!(attr, LinkAttribute::LinkInfo(info)
            if info.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))))
    });
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => {
            Some(LinkEvent::Present { index: link.header.index, name: name.clone(), bridge })
        }
        _ => None,
    })
}

/// Attached interfaces and the tc programs' counters, shared with the metrics collector.
pub struct InterfaceTable {
    names: BTreeMap<u32, String>,
    stats: PerCpuHashMap<MapData, IfaceKey, IfaceCounters>,
}

impl std::fmt::Debug for InterfaceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterfaceTable").field("names", &self.names).finish_non_exhaustive()
    }
}

impl InterfaceTable {
    pub const fn new(stats: PerCpuHashMap<MapData, IfaceKey, IfaceCounters>) -> Self {
        Self { names: BTreeMap::new(), stats }
    }

    pub fn name(&self, index: u32) -> Option<String> {
        self.names.get(&index).cloned()
    }

    pub fn attached_names(&self) -> impl Iterator<Item = &str> {
        self.names.values().map(String::as_str)
    }

    /// Per-interface, per-direction totals over all CPUs, for attached interfaces.
    pub fn counters(&self) -> Vec<(String, Direction, IfaceCounters)> {
        self.stats
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(key, per_cpu)| {
                let name = self.names.get(&key.ifindex)?;
                let direction = Direction::from_u32(key.direction)?;
                let total = per_cpu.iter().fold(IfaceCounters::default(), |acc, c| IfaceCounters {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                });
                Some((name.clone(), direction, total))
            })
            .collect()
    }

    fn insert(&mut self, index: u32, name: String) {
        self.names.insert(index, name);
    }

    /// Forgets the interface and its counters, so the map only holds live interfaces.
    fn remove(&mut self, index: u32) -> Option<String> {
        for direction in [Direction::Ingress, Direction::Egress] {
            let _ = self.stats.remove(&IfaceKey { ifindex: index, direction: direction as u32 });
        }
        self.names.remove(&index)
    }
}

/// Keeps the tc programs attached to exactly the matching interfaces. Links are pinned
/// (`links/tc-<ifindex>-<direction>`): they outlive the agent, and the next start adopts them.
pub struct Attacher {
    matcher: InterfaceMatcher,
    pins: Pins,
    ingress: SchedClassifier,
    egress: SchedClassifier,
    links: BTreeMap<u32, Attached>,
    /// Bridges that match the globs but carry no programs (reported once each).
    bridges: std::collections::BTreeSet<u32>,
}

struct Attached {
    name: String,
    ingress: TcLink,
    egress: TcLink,
}

/// A tcx link is pinned; a netlink (clsact) filter on kernels < 6.6 cannot be, and goes with
/// the agent.
enum TcLink {
    Pinned(PinnedLink),
    Unpinned(#[allow(dead_code, reason = "held: dropping it detaches")] SchedClassifierLink),
}

impl TcLink {
    fn detach(self) {
        if let Self::Pinned(link) = self {
            match link.unpin() {
                Ok(fd) => drop(fd),
                Err(err) => tracing::debug!("unpinning a tc link: {err}"),
            }
        }
    }
}

impl Attacher {
    /// Loads both tc programs into the kernel (verifier runs here, once) and pins them, or,
    /// when `adopt`, takes the pinned ones of the previous run.
    pub fn new(
        ebpf: &mut Ebpf,
        matcher: InterfaceMatcher,
        pins: Pins,
        adopt: bool,
    ) -> Result<Self, InterfaceError> {
        let failed = |program, source| InterfaceError::Attach {
            program,
            interface: "(load)".into(),
            source,
        };
        if !adopt {
            for name in [TC_INGRESS_PROGRAM, TC_EGRESS_PROGRAM] {
                let program = classifier(ebpf, name)?;
                program.load().map_err(|e| failed(name, e))?;
                program.pin(pins.program(name)).map_err(|e| {
                    failed(name, aya::programs::ProgramError::IOError(std::io::Error::other(e)))
                })?;
            }
        }
        let ingress = SchedClassifier::from_pin(pins.program(TC_INGRESS_PROGRAM))
            .map_err(|e| failed(TC_INGRESS_PROGRAM, e))?;
        let egress = SchedClassifier::from_pin(pins.program(TC_EGRESS_PROGRAM))
            .map_err(|e| failed(TC_EGRESS_PROGRAM, e))?;
        Ok(Self {
            matcher,
            pins,
            ingress,
            egress,
            links: BTreeMap::new(),
            bridges: std::collections::BTreeSet::new(),
        })
    }

    pub fn attached_count(&self) -> usize {
        self.links.len()
    }

    /// Applies one link event. Attach failures on one interface are logged, not fatal: the
    /// interface may have vanished meanwhile.
    pub fn apply(&mut self, table: &std::sync::Mutex<InterfaceTable>, event: LinkEvent) {
        match event {
            LinkEvent::Present { index, name, bridge } => {
                // A bridge is never a pod's interface: its pods' veth ports carry the
                // programs (attaching to the bridge too would count their traffic twice).
                let wanted = self.matcher.matches(&name) && !bridge;
                if bridge && self.matcher.matches(&name) && self.bridges.insert(index) {
                    tracing::info!(interface = %name, ifindex = index, "bridge matches `interfaces` but carries no programs: its pods' veth ports do");
                }
                match self.links.get(&index) {
                    Some(current) if wanted && current.name == name => {}
                    Some(_) if wanted => {
                        // Renamed but still matching: keep the links, update the label.
                        if let Some(current) = self.links.get_mut(&index) {
                            current.name.clone_from(&name);
                        }
                        lock(table).insert(index, name);
                    }
                    Some(_) => self.detach(table, index),
                    None if wanted => {
                        let (result, how) = match self.adopt(index, &name) {
                            Some(attached) => (Ok(attached), "adopted pinned tc programs"),
                            None => (self.attach(index, &name), "attached tc programs"),
                        };
                        match result {
                            Ok(attached) => {
                                tracing::info!(interface = %name, ifindex = index, "{how}");
                                self.links.insert(index, attached);
                                lock(table).insert(index, name);
                            }
                            Err(err) => tracing::warn!("{err}"),
                        }
                    }
                    None => self.drop_pins(index),
                }
            }
            LinkEvent::Gone { index } => {
                self.bridges.remove(&index);
                self.detach(table, index);
            }
            LinkEvent::Synced => {
                // Pins of interfaces that went away (or stopped matching) while we were down.
                for index in self.pins.tc_link_indexes() {
                    if !self.links.contains_key(&index) {
                        self.drop_pins(index);
                    }
                }
            }
        }
    }

    /// The previous run's pinned links on this interface, if both are there.
    fn adopt(&self, index: u32, name: &str) -> Option<Attached> {
        let ingress = PinnedLink::from_pin(self.pins.tc_link(index, "ingress")).ok()?;
        let egress = PinnedLink::from_pin(self.pins.tc_link(index, "egress")).ok()?;
        Some(Attached {
            name: name.to_owned(),
            ingress: TcLink::Pinned(ingress),
            egress: TcLink::Pinned(egress),
        })
    }

    fn drop_pins(&self, index: u32) {
        for direction in ["ingress", "egress"] {
            let path = self.pins.tc_link(index, direction);
            if path.exists() {
                let _ = std::fs::remove_file(&path);
                tracing::info!(ifindex = index, "removed stale pinned tc link {}", path.display());
            }
        }
    }

    fn attach(&mut self, index: u32, name: &str) -> Result<Attached, InterfaceError> {
        let pins = self.pins.clone();
        let attach_one = |program: &mut SchedClassifier, label: &'static str, hook, direction| {
            let error = |source| InterfaceError::Attach {
                program: label,
                interface: name.to_owned(),
                source,
            };
            let id = program.attach(index, hook).map_err(error)?;
            let link = program.take_link(id).map_err(error)?;
            let path = pins.tc_link(index, direction);
            let _ = std::fs::remove_file(&path);
            Ok(match FdLink::try_from(link) {
                Ok(fd) => TcLink::Pinned(fd.pin(&path).map_err(|e| {
                    error(aya::programs::ProgramError::IOError(std::io::Error::other(e)))
                })?),
                // Not a bpf link (tc clsact on an old kernel): the filter was detached by the
                // failed conversion; attach again and keep it unpinned.
                Err(_) => {
                    let id = program.attach(index, hook).map_err(error)?;
                    TcLink::Unpinned(program.take_link(id).map_err(error)?)
                }
            })
        };
        let ingress =
            attach_one(&mut self.ingress, TC_INGRESS_PROGRAM, TcAttachType::Ingress, "ingress")?;
        let egress =
            match attach_one(&mut self.egress, TC_EGRESS_PROGRAM, TcAttachType::Egress, "egress") {
                Ok(link) => link,
                Err(err) => {
                    ingress.detach();
                    return Err(err);
                }
            };
        Ok(Attached { name: name.to_owned(), ingress, egress })
    }

    fn detach(&mut self, table: &std::sync::Mutex<InterfaceTable>, index: u32) {
        let Some(attached) = self.links.remove(&index) else {
            return;
        };
        // A deleted device has already dropped its tcx links; unpinning then just frees them.
        attached.ingress.detach();
        attached.egress.detach();
        lock(table).remove(index);
        tracing::info!(interface = %attached.name, ifindex = index, "detached tc programs");
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, InterfaceError> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(InterfaceError::MissingProgram(name))
}

fn lock(table: &std::sync::Mutex<InterfaceTable>) -> std::sync::MutexGuard<'_, InterfaceTable> {
    table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
