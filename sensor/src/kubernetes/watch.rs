//! One list-then-watch loop per resource, as client-go's reflector does it:
//! - list (paged), hand the whole set to the sink, remember the list's resourceVersion;
//! - watch from that version; every event moves the version on (bookmarks too);
//! - a watch that ends (server timeout, dropped connection) resumes from the last version;
//! - `410 Gone` (the version was compacted away) relists;
//! - errors back off exponentially with jitter, and the source's health says since when it
//!   has been failing, so a cache that stopped following the API is reported as stale.
//! - a resource the API does not serve (404: CRD not installed) is an empty, healthy source,
//!   listed again every `absent_retry` in case it gets installed.

use std::{
    fmt::Debug,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use kube::{
    Api,
    api::{ListParams, WatchEvent, WatchParams},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// What a watched resource's objects go to.
pub trait Sink<K>: Send {
    /// The complete set after a (re)list: everything not in it is gone.
    fn replace(&mut self, objects: Vec<K>);
    fn apply(&mut self, object: K);
    fn delete(&mut self, object: K);
}

/// Timing of the loop (tests shorten it).
#[derive(Debug, Clone)]
pub struct Timing {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The server closes each watch after this many seconds; we resume (client-go: 5–10 min).
    pub watch_timeout_secs: u32,
    pub absent_retry: Duration,
    /// Page size of a list.
    pub page: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            watch_timeout_secs: 290,
            absent_retry: Duration::from_secs(60),
            page: 500,
        }
    }
}

/// Health of one source, read by `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct Health {
    inner: Mutex<HealthState>,
}

#[derive(Debug, Clone, Default)]
pub struct HealthState {
    /// A list has completed at least once (or the resource is absent).
    pub synced: bool,
    /// The API does not serve the resource (404).
    pub absent: bool,
    /// Set at the first failure since the last success; cleared by a list or a watch that
    /// the server accepted.
    pub failing_since: Option<Instant>,
    pub last_error: Option<String>,
    pub lists: u64,
    pub relists_expired: u64,
    pub resumes: u64,
    pub errors: u64,
    /// Events whose object did not decode (skipped; the rest of the stream goes on).
    pub bad_events: u64,
}

impl Health {
    pub fn get(&self) -> HealthState {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn update(&self, f: impl FnOnce(&mut HealthState)) {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn ok(&self) {
        self.update(|h| {
            h.failing_since = None;
            h.last_error = None;
        });
    }

    fn failed(&self, err: &str) {
        self.update(|h| {
            h.failing_since.get_or_insert_with(Instant::now);
            h.last_error = Some(err.to_owned());
            h.errors += 1;
        });
    }
}

impl HealthState {
    /// Stale: never synced, or failing for longer than `grace`.
    pub fn stale(&self, grace: Duration) -> bool {
        !self.synced || self.failing_since.is_some_and(|t| t.elapsed() >= grace)
    }
}

struct Backoff {
    timing: Timing,
    next: Duration,
}

impl Backoff {
    fn new(timing: &Timing) -> Self {
        Self { timing: timing.clone(), next: timing.backoff_min }
    }

    fn reset(&mut self) {
        self.next = self.timing.backoff_min;
    }

    /// Sleeps the current delay ± 25 % (a whole DaemonSet reconnecting after an API server
    /// restart should not arrive in step), then doubles it up to the cap.
    async fn wait(&mut self) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = 0.75 + f64::from(nanos % 1000) / 2000.0;
        tokio::time::sleep(self.next.mul_f64(jitter)).await;
        self.next = (self.next * 2).min(self.timing.backoff_max);
    }
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Lists every page; returns the objects and the list's resourceVersion.
async fn list_all<K>(api: &Api<K>, params: &ListParams) -> kube::Result<(Vec<K>, String)>
where
    K: Clone + DeserializeOwned + Debug,
{
    let mut params = params.clone();
    let mut objects = Vec::new();
    loop {
        let page = api.list(&params).await?;
        objects.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params.continue_token = Some(token),
            None => return Ok((objects, page.metadata.resource_version.unwrap_or_default())),
        }
    }
}

fn skip_bad_event(name: &str, health: &Health, err: &dyn std::fmt::Display) {
    tracing::warn!(resource = name, "skipping a watch event that did not decode: {err}");
    health.update(|h| h.bad_events += 1);
}

fn version_of<K: kube::Resource>(object: &K) -> Option<String> {
    object.meta().resource_version.clone()
}

/// Runs until the task is dropped. `changed` gets a unit after every change of the sink.
pub async fn run<K, S>(
    name: &'static str,
    api: Api<K>,
    field_selector: Option<String>,
    mut sink: S,
    health: Arc<Health>,
    changed: mpsc::Sender<()>,
    timing: Timing,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    S: Sink<K>,
{
    let notify = || {
        // A full channel already holds a pending reload.
        let _ = changed.try_send(());
    };
    let mut backoff = Backoff::new(&timing);
    let list_params = ListParams {
        field_selector: field_selector.clone(),
        limit: Some(timing.page),
        ..ListParams::default()
    };
    'relist: loop {
        let mut version = match list_all(&api, &list_params).await {
            Ok((objects, version)) => {
                let count = objects.len();
                sink.replace(objects);
                health.ok();
                health.update(|h| {
                    h.synced = true;
                    h.absent = false;
                    h.lists += 1;
                });
                notify();
                tracing::debug!(resource = name, objects = count, version, "listed");
                backoff.reset();
                version
            }
            Err(err) if status_code(&err) == Some(404) => {
                let first = !health.get().absent;
                sink.replace(Vec::new());
                health.ok();
                health.update(|h| {
                    h.synced = true;
                    h.absent = true;
                });
                if first {
                    tracing::info!(
                        resource = name,
                        "not served by the API server (CRD not installed?): treated as empty, checked again every {:?}",
                        timing.absent_retry
                    );
                    notify();
                }
                tokio::time::sleep(timing.absent_retry).await;
                continue 'relist;
            }
            Err(err) => {
                tracing::warn!(resource = name, "list failed: {err}");
                health.failed(&err.to_string());
                backoff.wait().await;
                continue 'relist;
            }
        };
        loop {
            let params = WatchParams {
                field_selector: field_selector.clone(),
                timeout: Some(timing.watch_timeout_secs),
                bookmarks: true,
                ..WatchParams::default()
            };
            let stream = match api.watch(&params, &version).await {
                Ok(stream) => stream,
                Err(err) if status_code(&err) == Some(410) => {
                    health.update(|h| h.relists_expired += 1);
                    tracing::info!(resource = name, version, "watch version expired: relisting");
                    continue 'relist;
                }
                // The resource went away while watched (its CRD was deleted): the list
                // finds it absent, which is an empty, healthy source, not a failing one.
                Err(err) if status_code(&err) == Some(404) => {
                    tracing::info!(resource = name, "watch: resource no longer served, relisting");
                    continue 'relist;
                }
                Err(err) => {
                    tracing::warn!(resource = name, "watch failed: {err}");
                    health.failed(&err.to_string());
                    backoff.wait().await;
                    continue;
                }
            };
            health.ok();
            let opened = Instant::now();
            let mut stream = std::pin::pin!(stream);
            let mut failed = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
                        version = version_of(&object).unwrap_or(version);
                        sink.apply(object);
                        notify();
                    }
                    Ok(WatchEvent::Deleted(object)) => {
                        version = version_of(&object).unwrap_or(version);
                        sink.delete(object);
                        notify();
                    }
                    Ok(WatchEvent::Bookmark(bookmark)) => {
                        version = bookmark.metadata.resource_version;
                    }
                    Ok(WatchEvent::Error(status)) if status.code == 410 => {
                        health.update(|h| h.relists_expired += 1);
                        tracing::info!(
                            resource = name,
                            version,
                            "watch version expired: relisting"
                        );
                        continue 'relist;
                    }
                    Ok(WatchEvent::Error(status)) => {
                        tracing::warn!(resource = name, "watch error: {}", status.message);
                        health.failed(&status.message);
                        failed = true;
                        break;
                    }
                    // One object the slim types cannot read; the stream itself is fine. (kube
                    // reports a line that is no event as a Status: code 0 when it was none.)
                    Err(err @ kube::Error::SerdeError(_)) => skip_bad_event(name, &health, &err),
                    Err(kube::Error::Api(status)) if status.code == 0 => {
                        skip_bad_event(name, &health, &status);
                    }
                    Err(err) => {
                        tracing::warn!(resource = name, "watch stream broke: {err}");
                        health.failed(&err.to_string());
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                health.update(|h| h.resumes += 1);
                tracing::debug!(resource = name, version, "watch ended: resuming");
            }
            // A failing server, or one that closes every watch at once, must not be hammered.
            if failed || opened.elapsed() < Duration::from_secs(1) {
                backoff.wait().await;
            } else {
                backoff.reset();
            }
        }
    }
}
