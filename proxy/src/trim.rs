//! Gives freed memory back to the system after many connections close.
//!
//! glibc's allocator keeps the memory of freed connection buffers in its
//! arenas for reuse: after 5,000 connections closed, a proxy stayed at 165 MiB
//! RSS (benches/README.md, soak). Every [`CHECK_EVERY`] the proxy looks at how
//! many connections are open; once [`TRIM_AFTER_CLOSED`] have closed since the
//! high-water mark, it calls `malloc_trim(0)`, which returns the free pages of
//! every arena. The high-water mark is kept at accept time ([`OpenPeak`]): a
//! burst that opens and closes thousands of connections between two looks
//! would be missed by looking alone (the bench's held workload was: 58 MiB
//! stayed after 5,000 closed). Nothing happens while the count only grows or holds, so a busy
//! proxy pays nothing; a trim of a large heap takes milliseconds, off the
//! runtime's threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

/// How often the number of open connections is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How many connections must have closed since the high-water mark (about
/// 8 MiB of buffers) before memory is handed back.
pub const TRIM_AFTER_CLOSED: usize = 256;

/// The most connections open at once since the trimmer last looked, noted by
/// the accept loops.
#[derive(Debug, Default)]
pub struct OpenPeak(AtomicUsize);

impl OpenPeak {
    /// Notes that `open` connections are open just after an accept.
    pub fn note(&self, open: usize) {
        self.0.fetch_max(open, Ordering::Relaxed);
    }

    /// The peak since the last call; the next one starts from `open`.
    fn take(&self, open: usize) -> usize {
        self.0.swap(open, Ordering::Relaxed).max(open)
    }
}

/// When to trim: the high-water mark of open connections since the last trim.
#[derive(Debug, Default)]
pub struct Trimmer {
    high: usize,
}

impl Trimmer {
    /// Records that `open` connections are open now, and at most `peak` were
    /// since the last look; true when enough have closed since the
    /// high-water mark that freed memory should go back.
    pub fn observe(&mut self, open: usize, peak: usize) -> bool {
        self.high = self.high.max(peak).max(open);
        if self.high - open >= TRIM_AFTER_CLOSED {
            self.high = open;
            true
        } else {
            false
        }
    }
}

/// Returns the allocator's free pages to the system; whether any were.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and is thread-safe.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Watches the connection count (`max` permits of `limiter`, and the peak the
/// accept loops note in `peak`) and trims.
pub async fn run(limiter: Arc<Semaphore>, max: usize, peak: Arc<OpenPeak>) {
    let mut trimmer = Trimmer::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let open = max.saturating_sub(limiter.available_permits());
        if trimmer.observe(open, peak.take(open)) {
            let released = tokio::task::spawn_blocking(release_free_memory)
                .await
                .unwrap_or(false);
            tracing::debug!(
                open,
                released,
                "connections closed; freed memory handed back"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_enough_connections_closed_since_the_high_water_mark() {
        let mut t = Trimmer::default();
        // Growing or steady: never.
        for open in [0, 100, 5000, 5000, 4900] {
            assert!(!t.observe(open, open), "at {open}");
        }
        // 5000 -> 4000: trim, and the mark moves down to what is open.
        assert!(t.observe(4000, 4000));
        assert!(!t.observe(3900, 3900));
        assert!(t.observe(0, 0));
        assert!(!t.observe(0, 0));
        // A new peak and its closing trim again.
        assert!(!t.observe(300, 300));
        assert!(t.observe(10, 10));
    }

    #[test]
    fn a_burst_between_two_looks_is_trimmed_after() {
        let peak = OpenPeak::default();
        let mut t = Trimmer::default();
        assert!(!t.observe(0, peak.take(0)));
        // 5,000 open and close before the next look.
        for open in 1..=5000 {
            peak.note(open);
        }
        assert!(t.observe(0, peak.take(0)), "the burst's memory goes back");
        assert!(!t.observe(0, peak.take(0)), "once");
        // Steady churn well below the mark never trims.
        for _ in 0..10 {
            peak.note(40);
            assert!(!t.observe(30, peak.take(30)));
        }
    }
}
