//! The host-side interface of a local pod, found from the pod's own network namespace: the
//! interface inside it that holds the pod's IP, and that interface's veth peer (`iflink`) on
//! the node. This works for every CNI that gives a pod a veth (or netkit) pair, whether the
//! node-side end is enslaved to a bridge (flannel's `cni0`, the reference `bridge` plugin,
//! `docker0`) or routed (Calico, Cilium, kindnet, AWS VPC CNI); the node's /32 or /128 host
//! route, which only routed CNIs install, stays as a fallback and a cross-check.
//!
//! The namespace is reached through a process of one of the pod's containers (its cgroup, as
//! the host side maps cgroups to containers), an explicit namespace path (`netns` in the
//! endpoints file), or, for a pod whose containers show no process yet, the sandbox
//! namespaces the runtimes bind-mount (`/run/netns`, `/var/run/docker/netns`).
//!
//! Entering a namespace is `setns(2)` on a short-lived thread that is then discarded: the
//! agent's own threads never leave the node's namespace. A pair is believed only when both
//! ends agree: the pod-side link's peer index names a node-side veth whose own peer is the
//! pod-side link, in the very namespace inspected (the node-side link's `IFLA_LINK_NETNSID`
//! equals the namespace's nsid, `RTM_GETNSID`). A process that builds a namespace of its own
//! and fakes indexes inside it cannot point the sensor at another pod's interface.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::IpAddr,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage},
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
        nsid::{NsidAttribute, NsidMessage},
    },
};

use crate::{
    config::InterfaceMatcher,
    host::cgroups::{Inventory, bare_container_id},
    policy::endpoints::{Endpoint, Endpoints},
};

/// Where container runtimes bind-mount pod sandbox namespaces: containerd and CRI-O
/// (`/var/run/netns` is a symlink to it on most hosts), Docker.
pub const SANDBOX_NETNS_DIRS: [&str; 3] = ["/run/netns", "/var/run/netns", "/var/run/docker/netns"];

/// Processes looked at per container (each may sit in a namespace of its own making).
const MAX_PIDS_PER_ENDPOINT: usize = 16;
/// Sandbox namespaces inspected per pass, at most.
const MAX_SANDBOXES: usize = 512;
/// First retry delay of a pod whose interface was not found; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A network namespace: device and inode of its nsfs file (what `ip netns identify` compares).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl NetnsId {
    fn of(file: &File) -> std::io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Self { dev: meta.dev(), ino: meta.ino() })
    }

    /// The namespace of the agent's main thread (`/proc/self` is the thread-group leader).
    fn own() -> std::io::Result<Self> {
        Self::of(&File::open("/proc/self/ns/net")?)
    }
}

/// The node-side end of a pod's interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSide {
    /// Interface index in the agent's namespace.
    pub ifindex: u32,
    /// Interface name in the agent's namespace.
    pub name: String,
    /// The bridge it is enslaved to (`IFLA_MASTER`), if any.
    pub master: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("entering the network namespace: {0}")]
    Setns(nix::Error),
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink request: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("the thread inspecting the namespace panicked")]
    Thread,
}

/// Every address in `netns` whose interface is one end of a veth (or netkit) pair whose other
/// end is in the agent's namespace, with that other end. Runs on a thread that enters the
/// namespace and is discarded.
pub fn inspect(netns: &File) -> Result<BTreeMap<IpAddr, HostSide>, DiscoveryError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("netns-inspect".into())
            .spawn_scoped(scope, || inspect_on_this_thread(netns))
            .map_err(DiscoveryError::Io)?
            .join()
            .map_err(|_| DiscoveryError::Thread)?
    })
}

fn inspect_on_this_thread(netns: &File) -> Result<BTreeMap<IpAddr, HostSide>, DiscoveryError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    runtime.block_on(async {
        // A netlink socket stays in the namespace it was made in: this one is the node's.
        let (connection, node, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(DiscoveryError::Setns)?;
        let (connection, pod, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let links: BTreeMap<u32, LinkMessage> =
            pod.link().get().execute().map_ok(|l| (l.header.index, l)).try_collect().await?;
        let addresses: Vec<AddressMessage> = pod.address().get().execute().try_collect().await?;
        let mut found = BTreeMap::new();
        let mut peers: BTreeMap<u32, Option<HostSide>> = BTreeMap::new();
        for address in &addresses {
            let Some(ip) = address_of(address) else { continue };
            let index = address.header.index;
            if let std::collections::btree_map::Entry::Vacant(entry) = peers.entry(index) {
                let peer = match links.get(&index) {
                    Some(link) => node_side(&node, link, netns).await,
                    None => None,
                };
                entry.insert(peer);
            }
            if let Some(Some(host)) = peers.get(&index) {
                found.insert(ip, host.clone());
            }
        }
        Ok(found)
    })
}

/// The address of an `RTM_NEWADDR` (the local one on point-to-point links).
fn address_of(message: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address
}

/// A pair's peer: (`IFLA_LINK`, `IFLA_LINK_NETNSID`), only for veth and netkit links whose
/// peer is in another namespace.
fn peer_of(link: &LinkMessage) -> Option<(u32, i32)> {
    let mut peer = None;
    let mut nsid = None;
    let mut paired = false;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Link(index) => peer = Some(*index),
            LinkAttribute::LinkNetNsId(id) => nsid = Some(*id),
            LinkAttribute::LinkInfo(info) => {
                paired = info
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth | InfoKind::Netkit)));
            }
            _ => {}
        }
    }
    if !paired {
        return None;
    }
    Some((peer?, nsid?))
}

/// The node-side end of `pod_link`, checked from both ends and against the namespace itself.
async fn node_side(
    node: &rtnetlink::Handle,
    pod_link: &LinkMessage,
    netns: &File,
) -> Option<HostSide> {
    let (peer, _) = peer_of(pod_link)?;
    // ENODEV (no such index here) ends the stream with an error: not ours.
    let host = node.link().get().match_index(peer).execute().try_next().await.ok()??;
    let (back, nsid) = peer_of(&host)?;
    if back != pod_link.header.index {
        return None;
    }
    // Asked after the link dump, which gave the namespace an nsid if it had none.
    if nsid_of(node, netns).await? != nsid {
        return None;
    }
    let mut name = None;
    let mut master = None;
    for attribute in &host.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Controller(m) => master = Some(*m),
            _ => {}
        }
    }
    Some(HostSide { ifindex: peer, name: name?, master })
}

/// `RTM_GETNSID` by fd: the id the node's namespace gives `netns`, if it has one.
async fn nsid_of(node: &rtnetlink::Handle, netns: &File) -> Option<i32> {
    let mut message = NsidMessage::default();
    message.attributes = vec![NsidAttribute::Fd(u32::try_from(netns.as_raw_fd()).ok()?)];
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut responses = node.clone().request(request).ok()?;
    while let Some(response) = responses.next().await {
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(reply)) = response.payload
        {
            return reply.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                _ => None,
            });
        }
    }
    None
}

/// How an endpoint's interface was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The namespace of a process of this container.
    Container(String),
    /// An explicit or sandbox namespace path.
    NetnsPath(PathBuf),
    /// The node's host route to the pod's IP (fallback).
    HostRoute,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Container(id) => write!(f, "container {}", &id[..id.len().min(12)]),
            Self::NetnsPath(path) => write!(f, "netns {}", path.display()),
            Self::HostRoute => f.write_str("host route"),
        }
    }
}

/// What an endpoint's discovery found last.
#[derive(Debug, Clone)]
enum Outcome {
    Found {
        host: HostSide,
        via: Via,
    },
    /// Not found (`local`: known to run on this node, so counted as unattached).
    Missing {
        reason: String,
        local: bool,
        retry_at: Instant,
        backoff: Duration,
    },
}

/// What identifies an endpoint's discovery: a change re-runs it at once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    ips: Vec<IpAddr>,
    containers: Vec<String>,
    netns: Option<PathBuf>,
    route: Option<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    inputs: Inputs,
    outcome: Outcome,
    /// When the endpoint was first looked for with these inputs.
    since: Instant,
}

/// A local endpoint without a usable interface: the sensor neither counts nor enforces
/// anything for it on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unattached {
    /// `namespace/name`.
    pub pod: String,
    pub reason: String,
}

/// Finds local endpoints' interfaces, remembering results between reloads: a found
/// interface is re-checked by name and index only; a missing one is retried with backoff.
#[derive(Debug)]
pub struct Resolver {
    matcher: InterfaceMatcher,
    cgroup_root: PathBuf,
    sandbox_dirs: Vec<PathBuf>,
    cache: BTreeMap<(String, String), Entry>,
    /// The reason each unattached pod was last reported with (warned once per reason).
    warned: BTreeMap<String, String>,
    /// The last resolve's unattached endpoints.
    pub unattached: Vec<Unattached>,
}

/// Per-pass memo: each namespace is inspected at most once per pass.
#[derive(Default)]
struct Pass {
    own: Option<NetnsId>,
    inventory: Option<Inventory>,
    inspected: BTreeMap<NetnsId, BTreeMap<IpAddr, HostSide>>,
    /// IP → node-side ends, from every sandbox namespace (filled on first need).
    sandboxes: Option<BTreeMap<IpAddr, Vec<(HostSide, PathBuf)>>>,
}

impl Resolver {
    /// `matcher`: the agent's `interfaces` globs (what may be touched); `cgroup_root`: the
    /// cgroup v2 mount.
    pub fn new(matcher: InterfaceMatcher, cgroup_root: PathBuf) -> Self {
        Self {
            matcher,
            cgroup_root,
            sandbox_dirs: SANDBOX_NETNS_DIRS.iter().map(PathBuf::from).collect(),
            cache: BTreeMap::new(),
            warned: BTreeMap::new(),
            unattached: Vec::new(),
        }
    }

    /// Fills in the interface of every local endpoint that has none: API pods of this node,
    /// and file endpoints with a `netns` or with containers running here. Updates
    /// [`Self::unattached`] and logs each change (a warning naming the pod when one cannot
    /// be attached, its interface and how long finding it took when it can).
    pub fn resolve(&mut self, endpoints: &mut Endpoints) {
        let now = Instant::now();
        let mut pass = Pass { own: NetnsId::own().ok(), ..Pass::default() };
        let mut seen = BTreeSet::new();
        let mut unattached = Vec::new();
        for endpoint in &mut endpoints.endpoints {
            let key = (endpoint.namespace.clone(), endpoint.name.clone());
            let pod = format!("{}/{}", key.0, key.1);
            if let Some(name) = &endpoint.interface
                && endpoint.local_hint.is_none()
            {
                // Named in the endpoints file: used as given, but reported if unusable.
                if let Some(reason) = self.unusable(name) {
                    unattached.push(Unattached { pod, reason });
                }
                continue;
            }
            let inputs = Inputs {
                ips: endpoint.ips.clone(),
                containers: endpoint
                    .containers
                    .iter()
                    .map(|c| bare_container_id(c).to_owned())
                    .collect(),
                netns: endpoint.netns.clone(),
                route: endpoint.local_hint.as_ref().and_then(|h| h.route_interface.clone()),
            };
            let candidate = endpoint.local_hint.is_some()
                || inputs.netns.is_some()
                || !inputs.containers.is_empty();
            if !candidate || inputs.ips.is_empty() {
                continue;
            }
            seen.insert(key.clone());
            let cached = self.cache.get(&key).filter(|e| e.inputs == inputs);
            let fresh = match cached.map(|e| &e.outcome) {
                Some(Outcome::Found { host, .. }) => !still_there(host),
                Some(Outcome::Missing { retry_at, .. }) => *retry_at <= now,
                None => true,
            };
            if fresh {
                let since = cached.map_or(now, |e| e.since);
                let previous = cached.map(|e| e.outcome.clone());
                let started = Instant::now();
                let outcome = self.discover(endpoint, &inputs, &mut pass, previous.as_ref());
                self.report(&pod, &outcome, since, started.elapsed());
                self.cache.insert(key.clone(), Entry { inputs: inputs.clone(), outcome, since });
            }
            match self.cache.get(&key).map(|e| &e.outcome) {
                Some(Outcome::Found { host, .. }) => endpoint.interface = Some(host.name.clone()),
                Some(Outcome::Missing { reason, local, .. }) => {
                    endpoint.interface = None;
                    if *local {
                        unattached.push(Unattached { pod, reason: reason.clone() });
                    }
                }
                None => {}
            }
        }
        self.cache.retain(|key, _| seen.contains(key));
        let live: BTreeSet<&str> = unattached.iter().map(|u| u.pod.as_str()).collect();
        self.warned.retain(|pod, _| live.contains(pod.as_str()));
        for u in &unattached {
            if self.warned.get(&u.pod) != Some(&u.reason) {
                tracing::warn!(pod = %u.pod, "endpoint not attached: {}; its traffic is neither counted nor enforced on this node", u.reason);
                self.warned.insert(u.pod.clone(), u.reason.clone());
            }
        }
        self.unattached = unattached;
    }

    /// True when a reload should run for discovery's sake: a missing interface is due for a
    /// retry, or a found one is gone (its pod's namespace vanished, or the link was renamed).
    pub fn due(&self) -> bool {
        let now = Instant::now();
        self.cache.values().any(|e| match &e.outcome {
            Outcome::Found { host, .. } => !still_there(host),
            Outcome::Missing { retry_at, .. } => *retry_at <= now,
        })
    }

    /// Why an interface named in the endpoints file carries nothing, if it does not.
    fn unusable(&self, name: &str) -> Option<String> {
        if !self.matcher.matches(name) {
            return Some(format!("interface {name} does not match `interfaces`"));
        }
        nix::net::if_::if_nametoindex(name)
            .is_err()
            .then(|| format!("interface {name} does not exist on this node"))
    }

    fn discover(
        &self,
        endpoint: &Endpoint,
        inputs: &Inputs,
        pass: &mut Pass,
        previous: Option<&Outcome>,
    ) -> Outcome {
        let mut local = endpoint.local_hint.is_some() || inputs.netns.is_some();
        let mut found: Option<(HostSide, Via)> = None;
        let mut problems = Vec::new();
        if let Some(path) = &inputs.netns {
            match File::open(path) {
                Ok(file) => match self.lookup(pass, &file, &inputs.ips) {
                    Ok(Some(host)) => found = Some((host, Via::NetnsPath(path.clone()))),
                    Ok(None) => {
                        problems.push(format!("no veth in {} holds its IP", path.display()))
                    }
                    Err(err) => problems.push(format!("{}: {err}", path.display())),
                },
                Err(err) => problems.push(format!("{}: {err}", path.display())),
            }
        }
        if found.is_none() && !inputs.containers.is_empty() {
            let processes = self.container_processes(pass, &inputs.containers);
            local |= !processes.is_empty();
            for (container, file) in processes {
                match self.lookup(pass, &file, &inputs.ips) {
                    Ok(Some(host)) => {
                        found = Some((host, Via::Container(container)));
                        break;
                    }
                    Ok(None) => {}
                    Err(err) => problems.push(format!("container {container}: {err}")),
                }
            }
            if found.is_none() && local {
                problems.push("no veth in its containers' namespaces holds its IP".into());
            }
        }
        if found.is_none() && endpoint.local_hint.is_some() {
            match self.sandbox_lookup(pass, &inputs.ips) {
                Ok(Some((host, path))) => found = Some((host, Via::NetnsPath(path))),
                Ok(None) => {}
                Err(reason) => problems.push(reason),
            }
        }
        if let Some((host, via)) = &found {
            if let Some(route) = &inputs.route
                && *route != host.name
            {
                tracing::warn!(pod = %format!("{}/{}", endpoint.namespace, endpoint.name), "the host route to the pod goes through {route}, its namespace's veth peer is {}: using the peer", host.name);
            }
            if !self.matcher.matches(&host.name) {
                problems.push(format!(
                    "its interface {} ({via}) does not match `interfaces`",
                    host.name
                ));
                found = None;
            }
        }
        if found.is_none()
            && let Some(route) = &inputs.route
        {
            match nix::net::if_::if_nametoindex(route.as_str()) {
                Ok(ifindex) if self.matcher.matches(route) => {
                    found = Some((
                        HostSide { ifindex, name: route.clone(), master: None },
                        Via::HostRoute,
                    ));
                }
                _ => problems.push(format!("its host route's interface {route} is not usable")),
            }
        }
        match found {
            Some((host, via)) => Outcome::Found { host, via },
            None => {
                if problems.is_empty() {
                    problems.push(if local {
                        "no interface holding its IP was found (no process of its containers, no sandbox namespace, no host route)".into()
                    } else {
                        "none of its containers runs on this node".into()
                    });
                }
                let backoff = match previous {
                    Some(Outcome::Missing { backoff, .. }) => (*backoff * 2).min(MAX_BACKOFF),
                    _ => FIRST_BACKOFF,
                };
                Outcome::Missing {
                    reason: problems.join("; "),
                    local,
                    retry_at: Instant::now() + backoff,
                    backoff,
                }
            }
        }
    }

    /// The node-side end of the first of `ips` held in the namespace of `file`.
    fn lookup(
        &self,
        pass: &mut Pass,
        file: &File,
        ips: &[IpAddr],
    ) -> Result<Option<HostSide>, DiscoveryError> {
        let id = NetnsId::of(file)?;
        if Some(id) == pass.own {
            return Ok(None); // the node's own namespace: a host-network process
        }
        if let std::collections::btree_map::Entry::Vacant(entry) = pass.inspected.entry(id) {
            entry.insert(inspect(file)?);
        }
        let found = &pass.inspected[&id];
        Ok(ips.iter().find_map(|ip| found.get(ip)).cloned())
    }

    /// The network namespace of processes of the given containers: (container id, nsfs
    /// file), at most [`MAX_PIDS_PER_ENDPOINT`], one per distinct namespace.
    fn container_processes(&self, pass: &mut Pass, containers: &[String]) -> Vec<(String, File)> {
        let inventory = pass.inventory.get_or_insert_with(|| Inventory::scan(&self.cgroup_root));
        let wanted: BTreeSet<&str> = containers.iter().map(String::as_str).collect();
        let mut cgroups: Vec<(&str, &str)> = inventory
            .by_id
            .values()
            .filter_map(|info| {
                let c = info.container.as_ref()?;
                wanted.get(c.id.as_str()).map(|id| (*id, info.path.as_str()))
            })
            .collect();
        // The container's own cgroup (the shortest path) first, nested ones after.
        cgroups.sort_by_key(|(_, path)| path.len());
        let mut out = Vec::new();
        let mut namespaces = BTreeSet::new();
        let mut pids = 0;
        'cgroups: for (container, path) in cgroups {
            let procs = self.cgroup_root.join(path.trim_start_matches('/')).join("cgroup.procs");
            let Ok(text) = std::fs::read_to_string(&procs) else { continue };
            for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                if pids >= MAX_PIDS_PER_ENDPOINT {
                    break 'cgroups;
                }
                pids += 1;
                let Ok(file) = File::open(format!("/proc/{pid}/ns/net")) else { continue };
                let Ok(id) = NetnsId::of(&file) else { continue };
                if namespaces.insert(id) {
                    out.push((container.to_owned(), file));
                }
            }
        }
        out
    }

    /// The node-side end of the first of `ips` in the runtimes' sandbox namespaces; an IP
    /// held in two namespaces with a peer here is ambiguous and not used.
    fn sandbox_lookup(
        &self,
        pass: &mut Pass,
        ips: &[IpAddr],
    ) -> Result<Option<(HostSide, PathBuf)>, String> {
        if pass.sandboxes.is_none() {
            let mut by_ip: BTreeMap<IpAddr, Vec<(HostSide, PathBuf)>> = BTreeMap::new();
            let mut namespaces = BTreeSet::new();
            let entries = self
                .sandbox_dirs
                .iter()
                .filter_map(|dir| std::fs::read_dir(dir).ok())
                .flat_map(|entries| entries.flatten().map(|e| e.path()));
            for path in entries {
                if namespaces.len() >= MAX_SANDBOXES {
                    break;
                }
                let Ok(file) = File::open(&path) else { continue };
                let Ok(id) = NetnsId::of(&file) else { continue };
                if Some(id) == pass.own || !namespaces.insert(id) || !is_netns(&path) {
                    continue;
                }
                let found = match pass.inspected.get(&id) {
                    Some(found) => found.clone(),
                    None => match inspect(&file) {
                        Ok(found) => {
                            pass.inspected.insert(id, found.clone());
                            found
                        }
                        Err(err) => {
                            tracing::debug!(path = %path.display(), "sandbox namespace: {err}");
                            continue;
                        }
                    },
                };
                for (ip, host) in found {
                    by_ip.entry(ip).or_default().push((host, path.clone()));
                }
            }
            pass.sandboxes = Some(by_ip);
        }
        for ip in ips {
            let Some(ends) = pass.sandboxes.as_ref().and_then(|s| s.get(ip)) else { continue };
            let distinct: BTreeSet<u32> = ends.iter().map(|(h, _)| h.ifindex).collect();
            if distinct.len() > 1 {
                return Err(format!(
                    "its IP {ip} is held in {} sandbox namespaces with a veth here: ambiguous",
                    distinct.len()
                ));
            }
            if let Some(first) = ends.first() {
                return Ok(Some(first.clone()));
            }
        }
        Ok(None)
    }

    fn report(&self, pod: &str, outcome: &Outcome, since: Instant, took: Duration) {
        if let Outcome::Found { host, via } = outcome {
            tracing::info!(
                pod = %pod,
                interface = %host.name,
                ifindex = host.ifindex,
                bridge = host.master.and_then(|m| nix::net::if_::if_indextoname(m).ok()).map(|n| n.to_string_lossy().into_owned()),
                via = %via,
                discovery_ms = took.as_secs_f64() * 1e3,
                since_first_seen_ms = since.elapsed().as_secs_f64() * 1e3,
                "found the pod's interface"
            );
        }
    }
}

/// An nsfs file (bind-mounted namespace), not some other file in the directory.
fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// The interface still exists under the same name and index.
fn still_there(host: &HostSide) -> bool {
    nix::net::if_::if_nametoindex(host.name.as_str()).is_ok_and(|i| i == host.ifindex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(yaml: &str) -> Endpoints {
        Endpoints::parse(Path::new("endpoints.yaml"), yaml).expect("parse")
    }

    fn resolver() -> Resolver {
        let matcher = InterfaceMatcher::new(&["veth*".to_owned()]).expect("globs");
        Resolver::new(matcher, PathBuf::from("/nonexistent-cgroup-root"))
    }

    /// Remote endpoints (no container here, no namespace) are left alone; local ones that
    /// cannot be found, or named interfaces that cannot carry programs, are reported by name.
    #[test]
    fn unattached_endpoints_are_named_with_why() {
        let mut eps = endpoints(
            "endpoints:\n\
             - {namespace: shop, name: remote, ips: [10.1.0.2]}\n\
             - {namespace: shop, name: elsewhere, ips: [10.1.0.3], containers: [\"containerd://abc\"]}\n\
             - {namespace: shop, name: gone, ips: [10.1.0.4], netns: /nonexistent/netns}\n\
             - {namespace: shop, name: named, ips: [10.1.0.5], interface: veth-nonexistent}\n\
             - {namespace: shop, name: outside, ips: [10.1.0.6], interface: eth-nonexistent}\n",
        );
        let mut r = resolver();
        r.resolve(&mut eps);
        let got: Vec<(&str, &str)> =
            r.unattached.iter().map(|u| (u.pod.as_str(), u.reason.as_str())).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].0, "shop/gone");
        assert!(got[0].1.contains("/nonexistent/netns"), "{got:?}");
        assert_eq!(
            got[1],
            ("shop/named", "interface veth-nonexistent does not exist on this node")
        );
        assert_eq!(
            got[2],
            ("shop/outside", "interface eth-nonexistent does not match `interfaces`")
        );
        assert!(
            eps.endpoints
                .iter()
                .all(|e| e.name == "named" || e.name == "outside" || e.interface.is_none())
        );
        // Retried later, not at once; due once the backoff has passed.
        assert!(!r.due());
    }

    #[test]
    fn a_relative_netns_path_is_rejected_with_the_endpoint_named() {
        let err = Endpoints::parse(
            Path::new("endpoints.yaml"),
            "endpoints:\n- {namespace: shop, name: db, ips: [10.1.0.2], netns: run/netns/x}\n",
        )
        .expect_err("relative");
        assert_eq!(
            err.to_string(),
            "endpoints.yaml: endpoint shop/db: netns run/netns/x: must be an absolute path"
        );
    }
}
