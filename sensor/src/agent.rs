//! Start-up, the event loop, and shutdown. Each step is owned by its module; this one only
//! wires them: kernel → decoder → outputs, link events → attacher.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
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
    config::Config,
    decode::{self, HostEvent},
    features::{KernelFeatures, MissingFeature},
    http,
    interfaces::{self, Attacher, InterfaceTable, LinkEvent},
    loader,
    metrics::{EventLabels, Metrics, ReasonLabels},
    output::{ExecRecord, JsonLines},
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

    let mut ebpf = loader::load_object()?;
    start_ebpf_logger(&mut ebpf);

    let table = Arc::new(Mutex::new(InterfaceTable::new(take_map::<PerCpuHashMap<_, _, _>>(
        &mut ebpf,
        net::IFACE_STATS_MAP,
    )?)));
    let loss: PerCpuArray<MapData, u64> = take_map(&mut ebpf, host::EVENT_LOSS_MAP)?;
    let ring: RingBuf<MapData> = take_map(&mut ebpf, host::HOST_EVENTS_MAP)?;

    let metrics = Metrics::default();
    let registry = Arc::new(metrics.register(&features, Arc::clone(&table), loss));
    let ready = Arc::new(AtomicBool::new(false));
    let listener = http::bind(config.metrics_addr)
        .await
        .map_err(|source| AgentError::Http { addr: config.metrics_addr, source })?;
    tracing::info!(addr = %config.metrics_addr, "serving /metrics, /healthz, /readyz");
    let mut server =
        tokio::spawn(http::serve(listener, http::State { registry, ready: Arc::clone(&ready) }));

    let mut attacher = Attacher::new(&mut ebpf, config.interfaces.clone())?;
    loader::attach_exec(&mut ebpf)?;
    let clock = sys::BootClock::now().map_err(|e| AgentError::Io("reading clocks", e))?;
    let mut reader =
        tokio::spawn(read_host_events(ring, config.node_name.clone(), clock, metrics.clone()));

    let (link_tx, mut link_rx) = mpsc::channel(256);
    let mut watcher = tokio::spawn(interfaces::watch_links(link_tx));
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| AgentError::Io("SIGTERM handler", e))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| AgentError::Io("SIGINT handler", e))?;
    tracing::info!(mode = ?config.mode, node = %config.node_name, interfaces = ?config.interfaces, "sensor started");

    let result = loop {
        tokio::select! {
            Some(event) = link_rx.recv() => {
                if event == LinkEvent::Synced && !ready.load(Ordering::Acquire) {
                    ready.store(true, Ordering::Release);
                    metrics.ready.set(1);
                    tracing::info!(interfaces = attacher.attached_count(), "ready");
                }
                attacher.apply(&mut ebpf, &table, event);
            }
            _ = sigterm.recv() => break Ok("SIGTERM"),
            _ = sigint.recv() => break Ok("SIGINT"),
            res = &mut watcher => break Err(match res {
                Ok(Ok(())) => AgentError::Io("netlink link watcher", std::io::Error::other("stopped")),
                Ok(Err(err)) => err.into(),
                Err(join) => AgentError::Io("netlink link watcher", std::io::Error::other(join)),
            }),
            res = &mut reader => break Err(AgentError::Io("host event reader", match res {
                Ok(Err(err)) => err,
                Ok(Ok(())) => std::io::Error::other("stopped"),
                Err(join) => std::io::Error::other(join),
            })),
            res = &mut server => break Err(AgentError::Http {
                addr: config.metrics_addr,
                source: match res { Ok(Err(err)) => err, Ok(Ok(())) => std::io::Error::other("stopped"), Err(join) => std::io::Error::other(join) },
            }),
        }
    };
    ready.store(false, Ordering::Release);
    watcher.abort();
    reader.abort();
    server.abort();
    let interfaces = attacher.attached_count();
    // Dropping the object closes every program and link fd: tcx links and the tracepoint
    // detach with them, and nothing was pinned.
    drop(attacher);
    drop(ebpf);
    match result {
        Ok(signal) => {
            tracing::info!(signal, interfaces, "stopped: programs detached");
            Ok(())
        }
        Err(err) => Err(err),
    }
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

/// Drains the host ring buffer: decode each record, write it out, count it.
async fn read_host_events(
    ring: RingBuf<MapData>,
    node_name: String,
    clock: sys::BootClock,
    metrics: Metrics,
) -> std::io::Result<()> {
    let mut ring = readable(ring)?;
    let mut out = JsonLines::new(tokio::io::stdout());
    let mut batch = Vec::new();
    loop {
        // Decode under the readiness guard, write after it: ring items borrow the ring.
        {
            let mut guard = ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            while let Some(record) = ring.next() {
                batch.push(decode::decode_host(&record));
            }
            guard.clear_ready();
        }
        for event in batch.drain(..) {
            match event {
                Ok(HostEvent::Exec(exec)) => {
                    out.write(&ExecRecord::new(&exec, &node_name, clock)).await?;
                    metrics.events.get_or_create(&EventLabels { r#type: "exec" }).inc();
                }
                Err(err) => {
                    tracing::warn!("dropping host record: {err}");
                    metrics
                        .decode_errors
                        .get_or_create(&ReasonLabels { reason: err.reason() })
                        .inc();
                }
            }
        }
        out.flush().await?;
    }
}
