//! Which interfaces carry our tc programs: netlink tells us about links as they come and go,
//! and the attacher keeps one ingress and one egress program on each matching one.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::{SchedClassifier, TcAttachType, tc::SchedClassifierLinkId},
};
use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage},
    },
};
use sensor_common::net::{Direction, IfaceCounters, IfaceKey};
use tokio::sync::mpsc;

use crate::config::InterfaceMatcher;

pub const TC_INGRESS_PROGRAM: &str = "tc_ingress";
pub const TC_EGRESS_PROGRAM: &str = "tc_egress";

/// A change in the set of links, in kernel order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link exists with this name (new, renamed, or listed in a dump).
    Present { index: u32, name: String },
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
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => {
            Some(LinkEvent::Present { index: link.header.index, name: name.clone() })
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

/// Keeps the tc programs attached to exactly the matching interfaces.
pub struct Attacher {
    matcher: InterfaceMatcher,
    links: BTreeMap<u32, Attached>,
}

struct Attached {
    name: String,
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
}

impl Attacher {
    /// Loads both tc programs into the kernel (verifier runs here, once).
    pub fn new(ebpf: &mut Ebpf, matcher: InterfaceMatcher) -> Result<Self, InterfaceError> {
        for name in [TC_INGRESS_PROGRAM, TC_EGRESS_PROGRAM] {
            let program = classifier(ebpf, name)?;
            program.load().map_err(|source| InterfaceError::Attach {
                program: name,
                interface: "(load)".into(),
                source,
            })?;
        }
        Ok(Self { matcher, links: BTreeMap::new() })
    }

    pub fn attached_count(&self) -> usize {
        self.links.len()
    }

    /// Applies one link event. Attach failures on one interface are logged, not fatal: the
    /// interface may have vanished meanwhile.
    pub fn apply(
        &mut self,
        ebpf: &mut Ebpf,
        table: &std::sync::Mutex<InterfaceTable>,
        event: LinkEvent,
    ) {
        match event {
            LinkEvent::Present { index, name } => {
                let wanted = self.matcher.matches(&name);
                match self.links.get(&index) {
                    Some(current) if wanted && current.name == name => {}
                    Some(_) if wanted => {
                        // Renamed but still matching: keep the links, update the label.
                        if let Some(current) = self.links.get_mut(&index) {
                            current.name.clone_from(&name);
                        }
                        lock(table).insert(index, name);
                    }
                    Some(_) => self.detach(ebpf, table, index),
                    None if wanted => match self.attach(ebpf, index, &name) {
                        Ok(attached) => {
                            tracing::info!(interface = %name, ifindex = index, "attached tc programs");
                            self.links.insert(index, attached);
                            lock(table).insert(index, name);
                        }
                        Err(err) => tracing::warn!("{err}"),
                    },
                    None => {}
                }
            }
            LinkEvent::Gone { index } => self.detach(ebpf, table, index),
            LinkEvent::Synced => {}
        }
    }

    fn attach(&self, ebpf: &mut Ebpf, index: u32, name: &str) -> Result<Attached, InterfaceError> {
        let mut attach_one = |program: &'static str, hook| {
            classifier(ebpf, program)?.attach(index, hook).map_err(|source| {
                InterfaceError::Attach { program, interface: name.to_owned(), source }
            })
        };
        let ingress = attach_one(TC_INGRESS_PROGRAM, TcAttachType::Ingress)?;
        let egress = match attach_one(TC_EGRESS_PROGRAM, TcAttachType::Egress) {
            Ok(link) => link,
            Err(err) => {
                let _ = classifier(ebpf, TC_INGRESS_PROGRAM).map(|p| p.detach(ingress));
                return Err(err);
            }
        };
        Ok(Attached { name: name.to_owned(), ingress, egress })
    }

    fn detach(&mut self, ebpf: &mut Ebpf, table: &std::sync::Mutex<InterfaceTable>, index: u32) {
        let Some(attached) = self.links.remove(&index) else {
            return;
        };
        // A deleted device has already dropped its tcx links; detaching then fails harmlessly.
        for (program, link) in
            [(TC_INGRESS_PROGRAM, attached.ingress), (TC_EGRESS_PROGRAM, attached.egress)]
        {
            if let Ok(p) = classifier(ebpf, program)
                && let Err(err) = p.detach(link)
            {
                tracing::debug!(interface = %attached.name, "detach {program}: {err}");
            }
        }
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
