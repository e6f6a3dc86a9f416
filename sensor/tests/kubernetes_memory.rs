//! Memory the Kubernetes cache holds per pod, measured with a counting allocator (its own test
//! binary: the allocator sees nothing but this test). Pods are real API JSON
//! (src/kubernetes/testdata/pod-frontend.json) with names, IPs and ReplicaSet labels varied.
//!
//! `cargo test --release -p sensor --test kubernetes_memory -- --nocapture` prints the figure.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        Arc,
        atomic::{AtomicIsize, Ordering},
    },
    time::Duration,
};

use sensor::kubernetes::{
    state::{self, KubeState, PodSink},
    translate,
    watch::Sink,
};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PODS: usize = 10_000;

fn pods(local: bool) -> Vec<translate::Pod> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/kubernetes/testdata/pod-frontend.json");
    let text = std::fs::read_to_string(path).expect("fixture");
    let template: serde_json::Value = serde_json::from_str(&text).expect("json");
    (0..PODS)
        .map(|i| {
            let mut pod = template.clone();
            let deployment = i % 200;
            pod["metadata"]["name"] = format!("frontend-{deployment}-7c9f6d8b5d-{i:05}").into();
            pod["metadata"]["namespace"] = format!("team-{}", i % 50).into();
            pod["metadata"]["labels"]["app"] = format!("service-{deployment}").into();
            pod["status"]["podIPs"] = serde_json::json!([
                { "ip": format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256) },
            ]);
            if !local {
                pod["status"]["containerStatuses"] = serde_json::json!([]);
            }
            serde_json::from_value(pod).expect("pod")
        })
        .collect()
}

/// Live bytes the cache holds for PODS pods, transient API objects freed.
fn held_bytes(local: bool) -> isize {
    let state = Arc::new(KubeState::new([state::CLUSTER_PODS], Duration::ZERO, Vec::new()));
    let before = LIVE.load(Ordering::Relaxed);
    let mut sink = PodSink { state: Arc::clone(&state), local };
    sink.replace(pods(local)); // consumes (and frees) the API objects
    let held = LIVE.load(Ordering::Relaxed) - before;
    let store = if local { state::LOCAL_PODS } else { state::CLUSTER_PODS };
    assert_eq!(state.counts()[store].0, PODS);
    held
}

#[test]
fn the_pod_cache_costs_under_half_a_kibibyte_per_remote_pod() {
    // Remote pods: namespace, name, labels, IPs.
    let remote = held_bytes(false) as f64 / PODS as f64;
    println!("remote pod: {remote:.0} bytes held per pod ({PODS} pods)");
    assert!(remote > 100.0, "the measurement must see the cache: {remote}");
    assert!(remote < 512.0, "{remote} bytes per remote pod");
    // Local pods also keep their container ids (64 hex characters each) and each container's
    // image, image digest and start time for the rules' `container.*` fields. A node holds
    // at most its max-pods of them (110 by default), so they get a looser bound than the
    // cluster-wide remote pods.
    let local = held_bytes(true) as f64 / PODS as f64;
    println!("local pod: {local:.0} bytes held per pod ({PODS} pods)");
    assert!(local < 1024.0, "{local} bytes per local pod");
}
