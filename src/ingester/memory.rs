//! The process's resident memory, sampled for the ingester's memory bound.
//!
//! `max_live_bytes` is enforced on the ingester's own count of what it holds (traces, a
//! share for the allocator, the cut's working set). Under sustained ingest of small spans
//! the process still ran 10–15% above that count at its peaks (buffers outside the
//! ingester, allocator retention beyond its share), so the count alone let peak RSS pass
//! the budget it names. The sampled RSS covers whatever the count misses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::warn;

/// How often RSS is read: at the ~65 MB/s a 2-core node ingests, a few MB arrive between
/// samples, and a read costs a few microseconds.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// The bound uses the highest sample of about the last second: while a cut is written RSS
/// swings by ~100 MiB within 100 ms (row groups built and freed), and a sample taken in a
/// trough would let in traces that the next crest takes past the budget.
const PEAK_OF: usize = 20;

/// The highest RSS sample of about the last second, in bytes; 0 while not watched (then
/// only the count bounds).
#[derive(Default)]
pub(super) struct Resident(AtomicU64);

impl Resident {
    pub(super) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(super) fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed);
    }
}

/// Memory the count did not see: what RSS holds beyond `counted`, at most `counted`
/// again. Capped so that memory held by something else (a query, a compaction in the same
/// process, pages the allocator keeps) refuses ingest only while traces are held, never
/// forever. Half the count was too little: right after a cut's traces are freed, RSS
/// stays up (the allocator returns pages after a delay, and the freed chunks belong to the
/// receiving threads) while the next cut starts, and the process ran 80 MiB past the
/// budget there.
pub(super) fn uncounted(resident: u64, counted: u64) -> u64 {
    resident.saturating_sub(counted).min(counted)
}

/// Samples RSS into `resident` on a thread of its own (a procfs read is a syscall, kept
/// off the async executor) until `resident` is dropped. Does nothing where RSS cannot be
/// read.
pub(super) fn watch(resident: &Arc<Resident>) {
    let Some(first) = read_rss() else {
        warn!("cannot read the process's resident memory: max_live_bytes bounds the ingester's own count only");
        return;
    };
    resident.0.store(first, Ordering::Relaxed);
    let resident: Weak<Resident> = Arc::downgrade(resident);
    let spawned = std::thread::Builder::new()
        .name("vivace-rss".into())
        .spawn(move || {
            let mut recent = Recent::new(first);
            loop {
                std::thread::sleep(SAMPLE_EVERY);
                let Some(resident) = resident.upgrade() else {
                    return;
                };
                if let Some(rss) = read_rss() {
                    resident.0.store(recent.push(rss), Ordering::Relaxed);
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the resident memory sampler");
    }
}

/// The last [`PEAK_OF`] samples, for their maximum.
struct Recent {
    samples: [u64; PEAK_OF],
    next: usize,
}

impl Recent {
    fn new(first: u64) -> Self {
        Self {
            samples: [first; PEAK_OF],
            next: 0,
        }
    }

    /// Adds a sample; returns the highest of the recent ones.
    fn push(&mut self, rss: u64) -> u64 {
        self.samples[self.next] = rss;
        self.next = (self.next + 1) % PEAK_OF;
        self.samples.iter().copied().max().unwrap_or(rss)
    }
}

#[cfg(target_os = "linux")]
fn read_rss() -> Option<u64> {
    // The second field of statm is the resident set, in pages.
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf takes a plain integer and touches no memory of ours.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(not(target_os = "linux"))]
fn read_rss() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncounted_is_what_rss_holds_beyond_the_count_capped_at_the_count() {
        assert_eq!(uncounted(0, 100), 0, "not watched");
        assert_eq!(uncounted(90, 100), 0);
        assert_eq!(uncounted(130, 100), 30);
        assert_eq!(uncounted(1_000, 100), 100, "capped at the count");
        assert_eq!(uncounted(1_000, 0), 0, "nothing held: never refuses");
    }

    #[test]
    fn the_bound_sees_the_highest_recent_sample() {
        let mut r = Recent::new(100);
        assert_eq!(r.push(50), 100, "the first sample is still recent");
        assert_eq!(r.push(300), 300);
        for _ in 0..PEAK_OF - 1 {
            assert_eq!(r.push(10), 300, "a trough does not hide the crest");
        }
        assert_eq!(r.push(20), 20, "the crest aged out");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn rss_is_read_and_grows_with_touched_memory() {
        let before = read_rss().expect("statm readable");
        assert!(
            before > 1 << 20,
            "a test process holds more than 1 MiB: {before}"
        );
        let block = vec![1u8; 64 << 20];
        let after = read_rss().unwrap();
        assert!(
            after >= before + (32 << 20),
            "64 MiB touched: {before} -> {after}"
        );
        drop(std::hint::black_box(block));
    }

    #[test]
    fn watcher_samples_until_its_gauge_is_dropped() {
        let resident = Arc::new(Resident::default());
        watch(&resident);
        if cfg!(target_os = "linux") {
            assert!(resident.get() > 0, "sampled at once");
        }
        let weak = Arc::downgrade(&resident);
        drop(resident);
        assert!(
            weak.upgrade().is_none(),
            "the sampler holds no strong reference"
        );
    }
}
