//! The bench's own load: a ping-pong server and clients (request/response and connection
//! rate), the policy-update probe, and the host loops (open+close, spawn+exec+wait, paced
//! opens). They run as `xtask __bench-helper ROLE ...` child processes entered into a
//! namespace with nsenter (xtask has no setns without libc); the host loops first move
//! themselves into a cgroup the bench made. Each prints one result line on stdout.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::env::{Netns, Proc, output};

/// Request and response size: one byte each way, like netperf's TCP_RR/TCP_CRR default.
const MSG: usize = 1;

/// `xtask __bench-helper ROLE ARGS...`
pub fn helper_main(args: &[String]) -> anyhow::Result<()> {
    let arg = |i: usize| args.get(i).map(String::as_str).context("missing helper argument");
    match arg(0)? {
        "server" => serve(arg(1)?.parse()?, arg(2)?.parse()?),
        "rr" => {
            let (n, secs) = rr(arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?.parse()?)?;
            println!("{n} {secs}");
            Ok(())
        }
        "crr" => {
            let (n, secs) = crr(arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?.parse()?)?;
            println!("{n} {secs}");
            Ok(())
        }
        "update" => {
            let ms = update(arg(1)?.parse()?, Path::new(arg(2)?), Path::new(arg(3)?), arg(4)?)?;
            println!("{ms}");
            Ok(())
        }
        // open-close|exec CGROUP_PROCS PATH SECS → "operations seconds"
        "open-close" | "exec" => {
            join_cgroup(Path::new(arg(1)?))?;
            let (n, secs) = host_loop(arg(0)? == "exec", Path::new(arg(2)?), arg(3)?.parse()?)?;
            println!("{n} {secs}");
            Ok(())
        }
        // paced CGROUP_PROCS PATH RATE SECS → "opens seconds"
        "paced" => {
            join_cgroup(Path::new(arg(1)?))?;
            let (n, secs) = paced_opens(Path::new(arg(2)?), arg(3)?.parse()?, arg(4)?.parse()?)?;
            println!("{n} {secs}");
            Ok(())
        }
        other => bail!("unknown helper role {other:?}"),
    }
}

/// Echo server: ping-pong on `rr` (thread per connection, until EOF) and one request per
/// connection on `rr + 1` (the server closes after replying, so TIME_WAIT stays on its side).
fn serve(ip: std::net::Ipv4Addr, rr_port: u16) -> anyhow::Result<()> {
    let rr = TcpListener::bind((ip, rr_port))?;
    let crr = TcpListener::bind((ip, rr_port + 1))?;
    for _ in 0..4 {
        let crr = crr.try_clone()?;
        std::thread::spawn(move || {
            for mut conn in crr.incoming().map_while(Result::ok) {
                let _ = conn.set_nodelay(true);
                let mut buf = [0_u8; MSG];
                if conn.read_exact(&mut buf).is_ok() {
                    let _ = conn.write_all(&buf);
                }
            }
        });
    }
    for conn in rr.incoming() {
        let mut conn = conn?;
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let mut buf = [0_u8; MSG];
            while conn.read_exact(&mut buf).is_ok() && conn.write_all(&buf).is_ok() {}
        });
    }
    Ok(())
}

/// `streams` connections each doing request/response back to back for `secs`; returns
/// (transactions, seconds measured).
fn rr(addr: SocketAddr, streams: usize, secs: f64) -> anyhow::Result<(u64, f64)> {
    let barrier = Arc::new(Barrier::new(streams + 1));
    let threads: Vec<_> = (0..streams)
        .map(|_| {
            let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let conn = conn.context("connecting");
                barrier.wait();
                let mut conn = conn?;
                conn.set_nodelay(true)?;
                conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                let end = Instant::now() + Duration::from_secs_f64(secs);
                let mut n = 0_u64;
                let mut buf = [0_u8; MSG];
                while Instant::now() < end {
                    conn.write_all(&buf)?;
                    conn.read_exact(&mut buf)?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut total = 0;
    for t in threads {
        total += t.join().map_err(|_| anyhow::anyhow!("rr thread panicked"))??;
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

/// `streams` loops of connect, request, response, close for `secs`; returns (connections,
/// seconds measured).
fn crr(addr: SocketAddr, streams: usize, secs: f64) -> anyhow::Result<(u64, f64)> {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..streams)
        .map(|_| {
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut n = 0_u64;
                let mut buf = [0_u8; MSG];
                while Instant::now() < end {
                    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                    conn.set_nodelay(true)?;
                    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                    conn.write_all(&buf)?;
                    conn.read_exact(&mut buf)?;
                    // Wait for the server's FIN so the server holds the TIME_WAIT.
                    let _ = conn.read(&mut buf);
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t.join().map_err(|_| anyhow::anyhow!("crr thread panicked"))??;
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

/// One connect + request + response to the connection-per-request port, within `timeout`.
fn probe(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, timeout) else { return false };
    let mut buf = [0_u8; MSG];
    conn.set_read_timeout(Some(timeout)).is_ok()
        && conn.write_all(&buf).is_ok()
        && conn.read_exact(&mut buf).is_ok()
}

/// Renames `tmp` to `dest` (a policy file, as ConfigMap updates and editors do) and polls
/// new connections to `addr` until they are dropped (`expect` = "drop") or pass ("allow").
/// Returns milliseconds from the rename to the start of the first attempt with the expected
/// outcome.
fn update(addr: SocketAddr, tmp: &Path, dest: &Path, expect: &str) -> anyhow::Result<f64> {
    let want_drop = expect == "drop";
    // A passing connection takes well under a millisecond here; a dropped SYN is never
    // answered, so a probe that has not connected within this is taken as dropped.
    let timeout = Duration::from_millis(if want_drop { 100 } else { 20 });
    let t0 = Instant::now();
    fs::rename(tmp, dest).with_context(|| format!("renaming to {}", dest.display()))?;
    loop {
        let at = t0.elapsed();
        if probe(addr, timeout) != want_drop {
            return Ok(at.as_secs_f64() * 1e3);
        }
        if at > Duration::from_secs(60) {
            bail!("policy change not enforced ({expect}) after 60 s");
        }
    }
}

/// Moves this process into the cgroup whose `cgroup.procs` is `procs` (writing "0" moves the
/// writer), so that everything it does and starts is attributed there.
fn join_cgroup(procs: &Path) -> anyhow::Result<()> {
    fs::write(procs, "0").with_context(|| format!("joining {}", procs.display()))
}

/// Iterations between two clock readings in the host loops.
const CHUNK: u64 = 64;
/// Upper bound on the operations of one loop, whatever the clock says.
const MAX_OPS: u64 = 1 << 30;

/// One open+close of `path` (openat(O_RDONLY|O_CLOEXEC) and close, through std), or one
/// spawn+exec+wait of the program `path` (std's Command: posix_spawn, i.e. clone(CLONE_VM |
/// CLONE_VFORK) + execve, then waitpid; stdio inherited, so no extra opens).
fn host_op(exec: bool, path: &Path) -> anyhow::Result<()> {
    if exec {
        let status = Command::new(path)
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .with_context(|| format!("running {}", path.display()))?;
        if !status.success() {
            bail!("{} exited with {status}", path.display());
        }
    } else {
        drop(fs::File::open(path).with_context(|| format!("opening {}", path.display()))?);
    }
    Ok(())
}

/// A warm-up, then `host_op` back to back for `secs`; returns (operations, seconds measured).
fn host_loop(exec: bool, path: &Path, secs: f64) -> anyhow::Result<(u64, f64)> {
    for _ in 0..CHUNK {
        host_op(exec, path)?;
    }
    let start = Instant::now();
    let mut n = 0_u64;
    while n < MAX_OPS && start.elapsed().as_secs_f64() < secs {
        for _ in 0..if exec { 1 } else { CHUNK } {
            host_op(exec, path)?;
            n += 1;
        }
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

/// Opens (and closes) `path` at `rate` per second for `secs`: at every moment the number done
/// is the number due by then (catching up in a burst after a preemption), sleeping 50 µs
/// whenever it is ahead. Returns (opens, seconds): fewer opens than `rate * secs` mean the
/// generator could not keep up.
fn paced_opens(path: &Path, rate: f64, secs: f64) -> anyhow::Result<(u64, f64)> {
    let total = (rate * secs).round() as u64;
    let start = Instant::now();
    let mut n = 0_u64;
    while n < total.min(MAX_OPS) {
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= secs + 0.5 {
            break; // half a second behind: stop, and let the count say so
        }
        let due = ((elapsed * rate) as u64 + 1).min(total);
        if n >= due {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        while n < due {
            drop(fs::File::open(path).with_context(|| format!("opening {}", path.display()))?);
            n += 1;
        }
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

/// Runs the helper in `ns` to completion and returns its result line.
pub fn run_helper(ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let mut cmd = ns.pinned(exe);
    cmd.arg("__bench-helper").args(args).stderr(Stdio::piped());
    Ok(output(&mut cmd)?.trim().to_owned())
}

/// Starts the echo server in `ns` and waits until it accepts connections.
pub fn start_server(ns: &Netns, ip: std::net::Ipv4Addr, rr_port: u16) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe()?;
    let mut cmd = ns.pinned(exe);
    cmd.args(["__bench-helper", "server", &ip.to_string(), &rr_port.to_string()]);
    let mut proc = Proc::spawn(&mut cmd, "bench echo server")?;
    for _ in 0..100 {
        let listening = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["--", "ss", "-Htln", &format!("sport = :{}", rr_port + 1)])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        if listening {
            return Ok(proc);
        }
        proc.check_alive()?;
        super::env::sleep(Duration::from_millis(50))?;
    }
    bail!("echo server did not start listening")
}

/// Parses a "count seconds" helper line into a rate per second.
pub fn rate(line: &str) -> anyhow::Result<f64> {
    let (n, s) = count_and_secs(line)?;
    Ok(n / s)
}

/// Parses a "count seconds" helper line (a count above 0, seconds above 0).
pub fn count_and_secs(line: &str) -> anyhow::Result<(f64, f64)> {
    let mut it = line.split_whitespace().map(str::parse::<f64>);
    match (it.next(), it.next()) {
        (Some(Ok(n)), Some(Ok(s))) if s > 0.0 && n > 0.0 => Ok((n, s)),
        _ => bail!("bad helper output {line:?}"),
    }
}
