//! Host names that `fd.sip.name`-style conditions compare against, resolved in the
//! background as Falco's DNS manager does: loading rules never waits on DNS, a name that does
//! not resolve (yet) matches no address, and every name is resolved again every
//! [`REFRESH`].

use std::{
    collections::HashMap,
    net::{IpAddr, ToSocketAddrs},
    sync::{Mutex, OnceLock},
    time::Duration,
};

/// How often every watched name is resolved again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Watched names and the addresses they last resolved to.
fn cache() -> &'static Mutex<HashMap<String, Vec<IpAddr>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<IpAddr>>>> = OnceLock::new();
    CACHE.get_or_init(|| {
        // The resolver thread: started with the first watched name.
        let spawned = std::thread::Builder::new().name("rules-dns".into()).spawn(|| {
            loop {
                refresh();
                std::thread::sleep(REFRESH);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("rules: cannot start the DNS resolver thread: {e}");
        }
        Mutex::new(HashMap::new())
    })
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<String, Vec<IpAddr>>> {
    cache().lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Resolves every watched name once (outside the lock).
fn refresh() {
    let names: Vec<String> = lock().keys().cloned().collect();
    for name in names {
        let addrs: Vec<IpAddr> = (name.as_str(), 0)
            .to_socket_addrs()
            .map(|it| it.map(|a| a.ip()).collect())
            .unwrap_or_default();
        lock().insert(name, addrs);
    }
}

/// Adds names to resolve (a name already watched keeps its addresses).
pub fn watch(names: &[Box<str>]) {
    let mut cache = lock();
    for name in names {
        cache.entry(name.to_string()).or_default();
    }
}

/// Whether `ip` is an address one of `names` resolved to.
pub fn any_resolves_to(names: &[Box<str>], ip: IpAddr) -> bool {
    let cache = lock();
    names.iter().any(|n| cache.get(&**n).is_some_and(|addrs| addrs.contains(&ip)))
}

/// Sets a name's addresses directly (tests).
pub fn set(name: &str, addrs: Vec<IpAddr>) {
    lock().insert(name.to_owned(), addrs);
}
