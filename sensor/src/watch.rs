//! Debouncing of the policy and rule file watchers' change notifications: a burst of writes
//! (an editor's save, `kubectl cp`, a ConfigMap update's symlink swap) is loaded once, as soon
//! as it is over, instead of after a fixed sleep.

use std::time::Duration;

use tokio::{sync::mpsc, time::Instant};

/// No further change for this long: the burst is over.
pub const QUIET: Duration = Duration::from_millis(20);
/// A writer that never pauses is loaded this long after its first change anyway.
pub const MAX_WAIT: Duration = Duration::from_millis(500);

/// Called once a first change has arrived: waits until `quiet` passes without another change,
/// or until `max` after the call, whichever comes first, consuming the changes that arrive
/// meanwhile. Returns how many did. A change arriving after the return stays queued and
/// triggers the next load, so none is lost.
pub async fn settle(changes: &mut mpsc::Receiver<()>, quiet: Duration, max: Duration) -> usize {
    let deadline = Instant::now() + max;
    let mut more = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return more;
        }
        match tokio::time::timeout_at((now + quiet).min(deadline), changes.recv()).await {
            Ok(Some(())) => more += 1,
            // Quiet period over, or the watcher is gone.
            Ok(None) | Err(_) => return more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_single_change_settles_after_the_quiet_period() {
        let (_tx, mut rx) = mpsc::channel(1);
        let start = Instant::now();
        assert_eq!(settle(&mut rx, QUIET, MAX_WAIT).await, 0);
        assert_eq!(start.elapsed(), QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn each_change_restarts_the_quiet_period() {
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(15)).await;
                tx.send(()).await.expect("send");
            }
            // Keep the channel open: settling must end by the quiet period, not by closing.
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let start = Instant::now();
        assert_eq!(settle(&mut rx, QUIET, MAX_WAIT).await, 3);
        assert_eq!(start.elapsed(), Duration::from_millis(45) + QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_never_pauses_is_loaded_after_the_cap() {
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if tx.send(()).await.is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        let more = settle(&mut rx, QUIET, MAX_WAIT).await;
        assert_eq!(start.elapsed(), MAX_WAIT);
        assert!(more >= 90, "{more} changes consumed");
    }
}
