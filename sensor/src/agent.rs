//! Start-up, the event loop, and shutdown. Each step is owned by its module; this one only
//! wires them: kernel → decoder → outputs, link events → attacher.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use sensor_common::{host, net};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    cli::Mode,
    config::Config,
    conntrack::{self, Conntrack},
    decode::{self, HostEvent},
    features::{KernelFeatures, MissingFeature},
    flows::FlowFormatter,
    http,
    hubble_metrics::HubbleMetrics,
    interfaces::{self, Attacher, InterfaceTable, LinkEvent},
    loader,
    metrics::{EventLabels, Metrics, ReasonLabels},
    outputs::{EventKind, LineFormat, OutputLine, Outputs},
    policy::{apply::PolicyMaps, runtime::PolicyRuntime},
    sys,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "missing privileges: {}; run as root or grant these capabilities",
        .0.join(", ")
    )]
    Privileges(Vec<String>),
    #[error("mounting tracefs at /sys/kernel/tracing: {0}")]
    Tracefs(std::io::Error),
    #[error(transparent)]
    Feature(#[from] MissingFeature),
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    #[error(transparent)]
    Interfaces(#[from] interfaces::InterfaceError),
    #[error("map {0} missing from the eBPF object or of the wrong type")]
    Map(&'static str),
    #[error("HTTP server on {addr}: {source}")]
    Http { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::runtime::ReloadError),
    #[error("watching policy files: {0}")]
    Watch(#[from] notify::Error),
    #[error("rules: {0}")]
    Rules(#[from] crate::rules::RulesError),
    #[error(transparent)]
    Kubernetes(#[from] crate::kubernetes::KubeError),
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(config: Config) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| AgentError::Io("starting the async runtime", e))?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: Config) -> Result<(), AgentError> {
    let missing =
        sys::missing_capabilities().map_err(|e| AgentError::Io("reading capabilities", e))?;
    if !missing.is_empty() {
        return Err(AgentError::Privileges(missing));
    }
    sys::raise_memlock_limit();
    if sys::ensure_tracefs().map_err(AgentError::Tracefs)? {
        tracing::info!("mounted tracefs at {}", sys::TRACEFS);
    }
    let features = KernelFeatures::probe();
    tracing::info!(kernel = %features.kernel, "kernel features: {}", features.summary());
    features.require_baseline()?;

    let pins = crate::pins::Pins::new(&config.bpf_pin_dir);
    if sys::ensure_bpffs(pins.dir()).map_err(|e| AgentError::Io("mounting bpffs", e))? {
        tracing::info!("mounted bpffs at {}", sys::BPFFS);
    }
    let stamp = loader::stamp(config.conntrack.max_entries, config.policy_map_max_entries);
    let start = pins
        .prepare(
            &stamp,
            &loader::HOST_LINKS,
            &[interfaces::TC_INGRESS_PROGRAM, interfaces::TC_EGRESS_PROGRAM],
        )
        .map_err(|e| AgentError::Io("preparing the bpffs pin directory", e))?;
    let adopt = matches!(start, crate::pins::Start::Adopt);
    // Links of a previous, different object: dropped once ours are attached (no gap).
    let mut previous_links = match start {
        crate::pins::Start::Adopt => None,
        crate::pins::Start::Fresh { previous } => Some(previous),
    };
    let mut ebpf =
        loader::load_object(config.conntrack.max_entries, config.policy_map_max_entries, &pins)?;
    if adopt {
        tracing::info!(pin_dir = %pins.dir().display(), "adopting pinned programs, maps and links of the previous run");
    } else {
        tracing::info!(pin_dir = %pins.dir().display(), replacing = previous_links.as_ref().map_or(0, Vec::len), "loading programs, pinning them with their maps and links");
    }
    log_map_memory(&ebpf);
    start_ebpf_logger(&mut ebpf);

    let table = Arc::new(Mutex::new(InterfaceTable::new(take_map::<PerCpuHashMap<_, _, _>>(
        &mut ebpf,
        net::IFACE_STATS_MAP,
    )?)));
    let loss: PerCpuArray<MapData, u64> = take_map(&mut ebpf, host::EVENT_LOSS_MAP)?;
    let ring: RingBuf<MapData> = take_map(&mut ebpf, host::HOST_EVENTS_MAP)?;
    let net_ring: RingBuf<MapData> = take_map(&mut ebpf, net::NET_EVENTS_MAP)?;
    let net_counters: PerCpuArray<MapData, u64> = take_map(&mut ebpf, net::NET_COUNTERS_MAP)?;
    let policy_maps = PolicyMaps::new(
        take_map(&mut ebpf, net::NET_CONFIG_MAP)?,
        take_map(&mut ebpf, net::ENDPOINTS_MAP)?,
        take_map(&mut ebpf, net::IPCACHE_MAP)?,
        take_map(&mut ebpf, net::POLICY_ALLOW_MAP)?,
        take_map(&mut ebpf, net::POLICY_DENY_MAP)?,
        config.policy_map_max_entries,
    );

    let metrics = Metrics::default();
    let verdicts: PerCpuArray<MapData, net::IfaceCounters> =
        take_map(&mut ebpf, net::VERDICT_COUNTERS_MAP)?;
    let hubble = Arc::new(
        HubbleMetrics::new(
            &config.hubble_metrics,
            Duration::from_secs(config.hubble_metrics_stale_pod_seconds),
        )
        .map_err(|e| AgentError::Io("hubble metrics", std::io::Error::other(e)))?,
    );
    tracing::info!(metrics = ?hubble, "hubble metrics");
    let mut registry =
        metrics.register(&features, Arc::clone(&table), loss, net_counters, verdicts, &hubble);
    let hold_metrics = crate::host::hold::HoldMetrics::default();
    hold_metrics.register(&mut registry);
    let hold_ring: RingBuf<MapData> = take_map(&mut ebpf, host::HOLD_EVENTS_MAP)?;
    let mut conntrack = Conntrack::new(
        take_map(&mut ebpf, net::CONNTRACK_MAP)?,
        config.conntrack,
        crate::conntrack::ConntrackMetrics {
            pressure: metrics.map_pressure.clone(),
            ..metrics.conntrack.clone()
        },
    );
    let mut gc = tokio::spawn(async move {
        loop {
            tokio::time::sleep(conntrack.interval()).await;
            conntrack = tokio::task::spawn_blocking(move || {
                conntrack.sweep(conntrack::clock_ns());
                conntrack
            })
            .await
            .map_err(std::io::Error::other)?;
        }
        #[allow(unreachable_code, reason = "the loop only ends with an error")]
        Ok::<(), std::io::Error>(())
    });
    // The first policy load is a reload: a policy file that does not parse is reported and
    // skipped; only an unreadable directory or endpoints file, or a map too small, stops here.
    let mut policy = PolicyRuntime::new(
        policy_maps,
        config.mode == Mode::Enforce,
        config.policy_dir.clone(),
        config.endpoints_file.clone(),
        metrics.clone(),
    );
    let (cgroup_root, mounted) =
        sys::ensure_cgroup2().map_err(|e| AgentError::Io("finding the cgroup v2 mount", e))?;
    if mounted {
        tracing::info!(
            "no cgroup v2 hierarchy in this mount namespace: mounted it at {}",
            cgroup_root.display()
        );
    }
    let offsets =
        crate::host::offsets::read(std::path::Path::new(crate::host::offsets::VMLINUX_BTF))
            .map_err(|e| AgentError::Io("reading kernel BTF", std::io::Error::other(e)))?;
    let mut host_maps = crate::host::apply::HostMaps::new(
        take_map(&mut ebpf, host::HOST_CONFIG_MAP)?,
        take_map(&mut ebpf, host::HOST_SCOPES_MAP)?,
        take_map(&mut ebpf, host::EXEC_RULES_MAP)?,
        take_map(&mut ebpf, host::FILE_RULES_MAP)?,
        take_map(&mut ebpf, host::BIND_RULES_MAP)?,
        take_map(&mut ebpf, host::SYSCALL_RULES_MAP)?,
        take_map(&mut ebpf, host::INODE_RULES_MAP)?,
    );
    host_maps
        .init(config.mode == Mode::Enforce, std::process::id(), offsets)
        .map_err(|e| AgentError::Io("writing the host config map", std::io::Error::other(e)))?;
    // BPF-LSM hooks deny Block matches before the call where the kernel has them.
    let lsm = crate::host::lsm::start(&mut ebpf, &pins, adopt, &features);
    tracing::info!(lsm_ops = lsm.ops, "host blocking: {}", lsm.summary());
    policy.host = Some(crate::host::HostRuntime::new(host_maps, cgroup_root.clone()));
    // Events from a cgroup the last scan did not know, and cgroups made inside containers,
    // wake an immediate rescan.
    let unknown_cgroup = Arc::new(tokio::sync::Notify::new());
    if let Some(host) = &mut policy.host {
        match crate::host::cgroups::SubtreeWatcher::new(
            cgroup_root.clone(),
            Arc::clone(&unknown_cgroup),
        ) {
            Ok(w) => host.subtrees = Some(w),
            Err(err) => tracing::warn!(
                "not watching container cgroups for nested ones (rescanned every second): {err}"
            ),
        }
    }
    policy.discovery =
        Some(crate::discovery::Resolver::new(config.interfaces.clone(), cgroup_root.clone()));
    let host_view = policy.host.as_ref().map(|h| Arc::clone(&h.view)).unwrap_or_default();
    let (policy_tx, mut policy_changes) = mpsc::channel(1);
    let kubernetes = match &config.kubernetes {
        Some(k) => {
            let sources = crate::kubernetes::start(k, &config.node_name, policy_tx.clone()).await?;
            policy.kubernetes = Some((Arc::clone(&sources.state), config.interfaces.clone()));
            wait_for_first_lists(&sources.state, k.initial_sync_timeout_seconds).await;
            sources.state.refresh_routes();
            // The first load below reads everything listed so far; changes after this point
            // still queue a reload.
            while policy_changes.try_recv().is_ok() {}
            Some(sources)
        }
        None => None,
    };
    let applied = match policy.reload() {
        Ok(applied) => {
            tracing::info!(?applied, "policy applied");
            true
        }
        // Pinned maps adopted from the previous run keep enforcing meanwhile.
        Err(err @ crate::policy::runtime::ReloadError::NotSynced(_)) => {
            tracing::warn!("{err}");
            false
        }
        Err(err) => return Err(err.into()),
    };
    if adopt
        && applied
        && let Some(host) = &mut policy.host
    {
        let removed = host
            .scrub_stale()
            .map_err(|e| AgentError::Io("host maps", std::io::Error::other(e)))?;
        tracing::info!(removed, "removed the previous run's stale host rule entries");
    }
    let _watcher = policy.watch(policy_tx)?;
    // Rules: the first load must succeed too; its interest feeds the kernel filter.
    let mut rules = crate::rules::runtime::RulesRuntime::new(
        config.rules_files.clone(),
        config.rules_min_priority,
        metrics.clone(),
    );
    rules.set_syscall_map(take_map(&mut ebpf, host::RULE_SYSCALLS_MAP)?);
    let (_rules_watcher, mut rules_changes) = if rules.is_empty() {
        (None, mpsc::channel(1).1)
    } else {
        let set = rules.reload()?;
        tracing::info!(
            rules = set.rules.len(),
            running = set.active(),
            skipped = set.skipped.len(),
            interest = ?set.interest,
            "rules loaded"
        );
        if let Some(host) = &mut policy.host {
            host.set_rules_interest(set.interest.clone()).map_err(|e| {
                AgentError::Policy(crate::policy::runtime::ReloadError::HostApply(e))
            })?;
        }
        let (watcher, changes) = rules.watch()?;
        (Some(watcher), changes)
    };
    if let Some(k) = &kubernetes {
        registry
            .register_collector(Box::new(crate::kubernetes::KubeCollector(Arc::clone(&k.state))));
    }
    let registry = Arc::new(registry);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = http::bind(config.metrics_addr)
        .await
        .map_err(|source| AgentError::Http { addr: config.metrics_addr, source })?;
    tracing::info!(addr = %config.metrics_addr, "serving /metrics, /healthz, /readyz");
    let mut server = tokio::spawn(http::serve(
        listener,
        http::State {
            registry,
            ready: Arc::clone(&ready),
            kubernetes: kubernetes.as_ref().map(|k| Arc::clone(&k.state)),
        },
    ));

    let mut attacher = Attacher::new(&mut ebpf, config.interfaces.clone(), pins.clone(), adopt)?;
    if adopt {
        loader::adopt_host(&pins, &lsm.replaced_tracepoints())?;
    } else {
        loader::attach_host(&mut ebpf, &cgroup_root, &pins, &lsm.replaced_tracepoints())?;
        pins.commit(&stamp).map_err(|e| AgentError::Io("stamping the pin directory", e))?;
    }
    tracing::info!(
        cgroup_root = %cgroup_root.display(),
        "host hooks attached: sched_process_exec/exit tracepoints, raw sys_enter/sys_exit, cgroup bind/connect"
    );
    // Held calls (hold and decide): their own reader thread, so output back-pressure never
    // keeps a stopped task waiting; decided records join the host events below.
    let (held_tx, held_rx) = mpsc::unbounded_channel();
    let hold_stop = Arc::new(AtomicBool::new(false));
    let hold_thread = match &mut policy.host {
        Some(host) => {
            let thread = crate::host::hold::HoldReader {
                ring: hold_ring,
                view: Arc::clone(&host.holds),
                enforce: config.mode == Mode::Enforce,
                events: held_tx,
                metrics: hold_metrics,
                stop: Arc::clone(&hold_stop),
            }
            .spawn()
            .map_err(|e| AgentError::Io("starting the hold reader", e))?;
            host.set_holds(true)
                .map_err(|e| AgentError::Io("host config", std::io::Error::other(e)))?;
            Some(thread)
        }
        None => None,
    };
    let clock = sys::BootClock::now().map_err(|e| AgentError::Io("reading clocks", e))?;
    let outputs = Outputs::start(&config.outputs, &config.node_name, &metrics.outputs)
        .map_err(|e| AgentError::Io("starting outputs", e))?;
    let (lines_tx, lines_rx) = mpsc::channel::<OutputLine>(4096);
    let mut writer = tokio::spawn(outputs.run(lines_rx));
    let table_for_names = Arc::clone(&table);
    let formatter = FlowFormatter {
        node_name: config.node_name.clone(),
        clock,
        compiled: Arc::clone(&policy.compiled),
        interface_name: Arc::new(move |index| {
            table_for_names.lock().map(|t| t.name(index).unwrap_or_default()).unwrap_or_default()
        }),
    };
    let mut reader = tokio::spawn(read_events(
        ring,
        metrics.clone(),
        lines_tx.clone(),
        Formatters::Host(
            crate::host::record::HostFormatter {
                node_name: config.node_name.clone(),
                clock,
                view: host_view,
                processes: crate::host::process::ProcessTable::default(),
                unknown_cgroup: Arc::clone(&unknown_cgroup),
            },
            Box::new(RulesStage {
                set: Arc::clone(&rules.current),
                evaluator: crate::rules::Evaluator::new(config.node_name.clone()),
                text: config.rules_output == crate::config::RulesOutput::Text,
            }),
        ),
        Arc::clone(&hubble),
        Some(held_rx),
    ));
    let mut net_reader = tokio::spawn(read_events(
        net_ring,
        metrics.clone(),
        lines_tx,
        Formatters::Flow(formatter),
        Arc::clone(&hubble),
        None,
    ));
    let mut pod_sweep = tokio::time::interval(Duration::from_secs(1));

    let (link_tx, mut link_rx) = mpsc::channel(256);
    let mut watcher = tokio::spawn(interfaces::watch_links(link_tx));
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| AgentError::Io("SIGTERM handler", e))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| AgentError::Io("SIGINT handler", e))?;
    crate::sys::release_free_memory();
    tracing::info!(mode = ?config.mode, node = %config.node_name, interfaces = ?config.interfaces, "sensor started");

    let result = loop {
        tokio::select! {
            Some(event) = link_rx.recv() => {
                if event == LinkEvent::Synced && !ready.load(Ordering::Acquire) {
                    ready.store(true, Ordering::Release);
                    metrics.ready.set(1);
                    tracing::info!(interfaces = attacher.attached_count(), "ready");
                }
                let endpoint_link = match &event {
                    LinkEvent::Present { name, .. } => policy.is_endpoint_interface(name),
                    _ => false,
                };
                let synced = event == LinkEvent::Synced;
                attacher.apply(&table, event);
                if synced && let Some(old) = previous_links.take() && !old.is_empty() {
                    tracing::info!(links = old.len(), "detached the previous object's links");
                    drop(old);
                }
                if endpoint_link && let Err(err) = policy.reapply() {
                    tracing::error!("policy re-apply after interface change: {err}");
                }
            }
            () = unknown_cgroup.notified() => {
                // New cgroups (a container starting, a cgroup made inside one): scope them now.
                if let Some(host) = &mut policy.host {
                    match host.rescan() {
                        Ok(watched) => {
                            metrics.host_watched_cgroups.set(watched as i64);
                        }
                        Err(err) => tracing::error!("host policy scope update: {err}"),
                    }
                }
                // At most one event-driven scan per 20 ms: a burst of new cgroups costs a few.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = pod_sweep.tick() => {
                if let Some(host) = &mut policy.host {
                    match host.rescan() {
                        Ok(watched) => {
                            metrics.host_watched_cgroups.set(watched as i64);
                        }
                        Err(err) => tracing::error!("host policy scope update: {err}"),
                    }
                }
                let live: BTreeSet<(String, String)> = policy
                    .compiled
                    .read()
                    .map(|c| c.pods_by_ip.values().cloned().collect())
                    .unwrap_or_default();
                hubble.forget_stale_pods(&live, std::time::Instant::now());
                // A local pod's host route (its interface) may appear after its IP.
                if let Some(k) = &kubernetes
                    && k.state.refresh_routes()
                    && let Err(err) = policy.reload()
                {
                    tracing::error!("policy reload after a pod route change: {err}");
                }
                // A pod's interface to look for again, or one that went with its namespace.
                if policy.discovery_due()
                    && let Err(err) = policy.reload()
                {
                    tracing::error!("policy reload after an endpoint interface change: {err}");
                }
            }
            Some(()) = rules_changes.recv() => {
                // Load once the burst of writes is over (see `watch::settle`).
                crate::watch::settle(&mut rules_changes, crate::watch::QUIET, crate::watch::MAX_WAIT).await;
                match rules.reload() {
                    Ok(set) => {
                        tracing::info!(rules = set.rules.len(), running = set.active(), skipped = set.skipped.len(), "rules reloaded");
                        if let Some(host) = &mut policy.host
                            && let Err(err) = host.set_rules_interest(set.interest.clone())
                        {
                            tracing::error!("rules kernel filter update: {err}");
                        }
                    }
                    Err(err) => tracing::error!("rules change rejected, previous rules stay: {err}"),
                }
            }
            Some(()) = policy_changes.recv() => {
                // Let a burst of writes (editor save, kubectl cp) settle, then load once.
                let changed = std::time::Instant::now();
                crate::watch::settle(&mut policy_changes, crate::watch::QUIET, crate::watch::MAX_WAIT).await;
                let loading = std::time::Instant::now();
                match policy.reload() {
                    Ok(applied) => tracing::info!(
                        ?applied,
                        settle_ms = (loading - changed).as_secs_f64() * 1e3,
                        reload_ms = loading.elapsed().as_secs_f64() * 1e3,
                        "policy reloaded"
                    ),
                    Err(err @ crate::policy::runtime::ReloadError::NotSynced(_)) => tracing::info!("policy reload deferred: {err}"),
                    Err(err) => tracing::error!("policy change rejected, previous policy stays in force: {err}"),
                }
            }
            res = &mut gc => break Err(AgentError::Io("conntrack gc", flatten(res))),
            res = &mut net_reader => break Err(AgentError::Io("flow event reader", flatten(res))),
            res = &mut writer => break Err(AgentError::Io("output fan-out", flatten(res))),
            _ = sigterm.recv() => break Ok("SIGTERM"),
            _ = sigint.recv() => break Ok("SIGINT"),
            res = &mut watcher => break Err(match res {
                Ok(Ok(())) => AgentError::Io("netlink link watcher", std::io::Error::other("stopped")),
                Ok(Err(err)) => err.into(),
                Err(join) => AgentError::Io("netlink link watcher", std::io::Error::other(join)),
            }),
            res = &mut reader => break Err(AgentError::Io("host event reader", flatten(res))),
            res = &mut server => break Err(AgentError::Http {
                addr: config.metrics_addr,
                source: match res { Ok(Err(err)) => err, Ok(Ok(())) => std::io::Error::other("stopped"), Err(join) => std::io::Error::other(join) },
            }),
        }
    };
    ready.store(false, Ordering::Release);
    // No new holds once nobody will decide them; the reader decides what is in its ring.
    if let Some(host) = &mut policy.host
        && let Err(err) = host.set_holds(false)
    {
        tracing::error!("turning holds off: {err}");
    }
    hold_stop.store(true, Ordering::Release);
    if let Some(thread) = hold_thread {
        let _ = thread.join();
    }
    drop(kubernetes);
    watcher.abort();
    reader.abort();
    net_reader.abort();
    gc.abort();
    writer.abort();
    server.abort();
    let interfaces = attacher.attached_count();
    // Our fds close; the pinned links keep the programs attached, with their maps, until the
    // next start adopts them (rolling upgrade, restart) or `sensor cleanup` removes them.
    drop(attacher);
    drop(ebpf);
    drop(previous_links);
    match result {
        Ok(signal) => {
            tracing::info!(
                signal,
                interfaces,
                pin_dir = %pins.dir().display(),
                "stopped: programs stay attached through their pins (`sensor cleanup` removes them)"
            );
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// Waits (bounded) until every Kubernetes source has listed once, so the first policy applied
/// is the cluster's and not an empty cache's.
async fn wait_for_first_lists(state: &crate::kubernetes::KubeState, timeout_secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
    while !state.unsynced().is_empty() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(unsynced = ?state.unsynced(), "Kubernetes sources not listed after {timeout_secs}s: starting without applying policy (applied once they list)");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!("Kubernetes sources listed");
}

/// States the memory the maps take, as the kernel charges it (memlock) and as declared
/// (max_entries × (key + value)).
fn log_map_memory(ebpf: &Ebpf) {
    let maps = loader::map_memory(ebpf);
    let memlock: u64 = maps.iter().map(|m| m.memlock_bytes).sum();
    let declared: u64 = maps.iter().map(|m| m.declared_bytes).sum();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let largest: Vec<String> =
        maps.iter().take(5).map(|m| format!("{}={:.1}MiB", m.name, mib(m.memlock_bytes))).collect();
    tracing::info!(
        maps = maps.len(),
        memlock_bytes = memlock,
        declared_bytes = declared,
        "eBPF maps take {:.1} MiB of kernel memory (memlock; max_entries x (key+value) = {:.1} MiB); largest: {}",
        mib(memlock),
        mib(declared),
        largest.join(" ")
    );
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, AgentError>
where
    M: TryFrom<aya::maps::Map>,
{
    ebpf.take_map(name).and_then(|m| M::try_from(m).ok()).ok_or(AgentError::Map(name))
}

/// Registers an fd-owning aya object with the reactor for readability.
fn readable<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: aya's ring buffer and logger own their fd and keep it open until they are
    // dropped, which happens only together with the AsyncFd.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// Forwards aya-log records from the programs to our log (they arrive through the `log` crate).
fn start_ebpf_logger(ebpf: &mut Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => match readable(logger) {
            Ok(mut fd) => {
                tokio::spawn(async move {
                    loop {
                        let Ok(mut guard) = fd.readable_mut().await else {
                            break;
                        };
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(err) => tracing::warn!("eBPF log forwarding disabled: {err}"),
        },
        Err(err) => tracing::warn!("eBPF log forwarding disabled: {err}"),
    }
}

fn flatten(res: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Error {
    match res {
        Ok(Err(err)) => err,
        Ok(Ok(())) => std::io::Error::other("stopped"),
        Err(join) => std::io::Error::other(join),
    }
}

/// How a ring buffer's records become JSON: flows (network ring) or host events (host ring,
/// followed by the rules engine).
enum Formatters {
    Flow(FlowFormatter),
    Host(crate::host::record::HostFormatter, Box<RulesStage>),
}

/// The rules engine on the host reader: the live rule set and per-reader evaluation state.
struct RulesStage {
    set: crate::rules::runtime::Shared,
    evaluator: crate::rules::Evaluator,
    /// Falco's text line instead of its JSON.
    text: bool,
}

/// Drains one ring buffer: decode each record, count it, hand its JSON line to the writer.
async fn read_events(
    ring: RingBuf<MapData>,
    metrics: Metrics,
    lines: mpsc::Sender<OutputLine>,
    mut formatter: Formatters,
    hubble: Arc<HubbleMetrics>,
    mut held: Option<mpsc::UnboundedReceiver<HostEvent>>,
) -> std::io::Result<()> {
    let mut ring = readable(ring)?;
    let mut batch = Vec::new();
    loop {
        // Decode under the readiness guard, write after it: ring items borrow the ring.
        // Records of held calls, decided by the hold reader, come in beside the ring's.
        let decided = async {
            match &mut held {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(record) = ring.next() {
                    batch.push(decode::decode_host(&record));
                }
                guard.clear_ready();
            }
            Some(event) = decided => batch.push(Ok(event)),
        }
        let rules_set = match &formatter {
            Formatters::Host(_, stage) => Some(Arc::clone(
                &stage.set.read().unwrap_or_else(std::sync::PoisonError::into_inner),
            )),
            Formatters::Flow(_) => None,
        };
        for event in batch.drain(..) {
            let mut alert = None;
            let line = match (event, &mut formatter) {
                (Ok(HostEvent::Flow(flow)), Formatters::Flow(formatter)) => {
                    let record = formatter.record(&flow);
                    hubble.observe(&flow, &record.flow);
                    serde_json::to_string(&record)
                }
                (Ok(HostEvent::Flow(_)), Formatters::Host(..)) => continue,
                (Ok(event), Formatters::Host(formatter, stage)) => {
                    let Some(enriched) = formatter.enrich(event) else { continue };
                    if let Some(set) = &rules_set
                        && let Some(m) =
                            stage.evaluator.evaluate(set, &enriched, &formatter.processes)
                    {
                        metrics.rules_matches.get_or_create(&m.rule.labels).inc();
                        let priority = crate::outputs::Priority::parse(m.rule.priority.name())
                            .unwrap_or(crate::outputs::Priority::Warning);
                        alert = Some(if stage.text {
                            OutputLine::with_priority(
                                EventKind::Alert,
                                m.text,
                                LineFormat::Text,
                                priority,
                            )
                        } else {
                            OutputLine::with_priority(
                                EventKind::Alert,
                                m.json,
                                LineFormat::Json,
                                priority,
                            )
                        });
                    }
                    let kind = enriched.kind;
                    // Opens only the rules asked for are theirs: no Tetragon record.
                    if kind == "process_file" && enriched.header.action == "observed" {
                        metrics.events.get_or_create(&EventLabels { r#type: "file_rules" }).inc();
                        if let Some(alert) = alert.take()
                            && lines.send(alert).await.is_err()
                        {
                            return Ok(());
                        }
                        continue;
                    }
                    let record = formatter.record(&enriched);
                    let body = record.event.values().next();
                    let action = body.map_or("observed", |b| b.action);
                    let r#type = match kind {
                        "process_exec" => "exec",
                        "process_exit" => "exit",
                        "process_file" => "file",
                        "process_socket" => "socket",
                        _ => "syscall",
                    };
                    metrics.events.get_or_create(&EventLabels { r#type }).inc();
                    metrics
                        .host_events
                        .get_or_create(&crate::metrics::HostEventLabels { r#type, action })
                        .inc();
                    serde_json::to_string(&record)
                }
                (Ok(_), Formatters::Flow(_)) => continue,
                (Err(err), _) => {
                    tracing::warn!("dropping record: {err}");
                    metrics
                        .decode_errors
                        .get_or_create(&ReasonLabels { reason: err.reason() })
                        .inc();
                    continue;
                }
            };
            let kind = match formatter {
                Formatters::Flow(_) => EventKind::Flow,
                Formatters::Host(..) => EventKind::Host,
            };
            let line = OutputLine::new(kind, line.map_err(std::io::Error::other)?);
            for line in std::iter::once(line).chain(alert) {
                if lines.send(line).await.is_err() {
                    return Ok(()); // the fan-out stopped: shutting down
                }
            }
        }
    }
}
