//! How far this node's consumer has applied each partition it holds, and the bounded wait
//! a query makes on it: an acknowledged span sits in the log below the high watermark the
//! query learned at its start, so once a partition has applied every record below that
//! offset the span is in the ingester (or a block it wrote), and the answer may count the
//! partition as covered. A partition that does not get there within
//! `ingest.query_wait_timeout` is lagging, and the answer says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::querier::remote::{Lag, LocalPartitions, Reached};

/// One held partition: the next offset to apply (every record below it is applied) and
/// whether a fetch since the partition was gained reached the high watermark.
#[derive(Debug, Clone, Copy)]
struct Progress {
    next: i64,
    ready: bool,
}

/// The partitions this node consumes and how far each is applied. Until a partition has
/// caught up, its live traces lack what the previous owner held; until it has applied up
/// to a query's watermark, they lack what was acknowledged before the query began.
pub(crate) struct CaughtUp {
    parts: Mutex<BTreeMap<i32, Progress>>,
    /// Bumped on every change so waiters re-check.
    changed: watch::Sender<()>,
    wait: Duration,
    metrics: Arc<Metrics>,
}

impl Default for CaughtUp {
    fn default() -> Self {
        Self::new(Duration::from_secs(2), Arc::default())
    }
}

impl CaughtUp {
    /// `wait` bounds how long a query waits for a partition to reach its watermark.
    pub(crate) fn new(wait: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            parts: Mutex::new(BTreeMap::new()),
            changed: watch::channel(()).0,
            wait,
            metrics,
        }
    }

    fn update(&self, f: impl FnOnce(&mut BTreeMap<i32, Progress>)) {
        f(&mut self.parts.lock());
        self.changed.send_replace(());
    }

    /// A reader of `p` starts at `next`: everything below is in committed blocks.
    pub(crate) fn start(&self, p: i32, next: i64) {
        self.update(|m| {
            m.insert(p, Progress { next, ready: false });
        });
    }

    /// Every record of `p` below `next` is applied.
    pub(crate) fn applied(&self, p: i32, next: i64) {
        self.update(|m| {
            if let Some(g) = m.get_mut(&p) {
                g.next = g.next.max(next);
            }
        });
    }

    /// A fetch of `p` saw the high watermark `high`: caught up once applied up to it.
    pub(crate) fn fetched(&self, p: i32, high: i64) {
        self.update(|m| {
            if let Some(g) = m.get_mut(&p) {
                g.ready |= g.next >= high;
            }
        });
    }

    /// `p` is no longer consumed here.
    pub(crate) fn stop(&self, p: i32) {
        self.update(|m| {
            m.remove(&p);
        });
    }

    /// Held partitions that have caught up.
    pub(crate) fn ready(&self) -> Vec<i32> {
        self.parts
            .lock()
            .iter()
            .filter(|(_, g)| g.ready)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Every partition held here, caught up or not.
    pub(crate) fn held(&self) -> Vec<i32> {
        self.parts.lock().keys().copied().collect()
    }

    /// The held partitions of `wanted`, split by whether each has applied every record
    /// below its wanted offset.
    fn check(&self, wanted: &BTreeMap<i32, i64>) -> Reached {
        let parts = self.parts.lock();
        let mut out = Reached::default();
        for (p, want) in wanted {
            let Some(g) = parts.get(p) else { continue };
            if g.next >= *want {
                out.covered.push(*p);
            } else {
                out.lagging.push(Lag {
                    partition: *p,
                    applied: g.next,
                    wanted: *want,
                });
            }
        }
        out
    }

    /// Waits up to the configured bound for the held partitions of `wanted` to reach their
    /// offsets; partitions not held here are in neither list.
    pub(crate) async fn reach(&self, wanted: &BTreeMap<i32, i64>) -> Reached {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.wait;
        // Subscribed before the first check, so no change after it goes unnoticed.
        let mut rx = self.changed.subscribe();
        let mut waited = false;
        let r = loop {
            let r = self.check(wanted);
            if r.lagging.is_empty() {
                break r;
            }
            waited = true;
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => break self.check(wanted),
            }
        };
        let outcome = match (waited, r.lagging.is_empty()) {
            (false, _) => "immediate",
            (true, true) => "reached",
            (true, false) => "lagging",
        };
        self.metrics
            .ingest_query_wait
            .observe(outcome, started.elapsed().as_secs_f64());
        r
    }
}

#[async_trait]
impl LocalPartitions for CaughtUp {
    fn ready(&self) -> Vec<i32> {
        CaughtUp::ready(self)
    }

    async fn reach(&self, wanted: &BTreeMap<i32, i64>) -> Reached {
        CaughtUp::reach(self, wanted).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(wait_ms: u64) -> Arc<CaughtUp> {
        Arc::new(CaughtUp::new(
            Duration::from_millis(wait_ms),
            Arc::default(),
        ))
    }

    #[test]
    fn ready_only_after_applying_up_to_a_fetched_high_watermark() {
        let c = progress(10);
        c.start(1, 5);
        c.fetched(1, 8);
        assert!(c.ready().is_empty(), "ready before applying up to 8");
        c.applied(1, 8);
        c.fetched(1, 8);
        assert_eq!(c.ready(), vec![1]);
        assert_eq!(c.held(), vec![1]);
        // A new reader (the partition regained) starts over.
        c.start(1, 8);
        assert!(c.ready().is_empty());
        c.stop(1);
        assert!(c.held().is_empty());
    }

    #[tokio::test]
    async fn reach_covers_applied_partitions_at_once() {
        let c = progress(5_000);
        c.start(0, 10);
        c.start(2, 0);
        c.applied(2, 7);
        let t0 = Instant::now();
        // Partition 3 is not held here: neither covered nor lagging.
        let r = c.reach(&BTreeMap::from([(0, 10), (2, 7), (3, 99)])).await;
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "waited {:?}",
            t0.elapsed()
        );
        assert_eq!(r.covered, vec![0, 2]);
        assert!(r.lagging.is_empty());
        let text = c.metrics.render();
        assert!(
            text.contains("vivace_ingest_query_wait_seconds_count{outcome=\"immediate\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn reach_waits_for_records_applied_meanwhile() {
        let c = progress(5_000);
        c.start(4, 3);
        let applier = {
            let c = c.clone();
            tokio::spawn(async move {
                for next in 4..=9 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    c.applied(4, next);
                }
            })
        };
        let t0 = Instant::now();
        let r = c.reach(&BTreeMap::from([(4, 9)])).await;
        let took = t0.elapsed();
        applier.await.unwrap();
        assert_eq!(r.covered, vec![4]);
        assert!(r.lagging.is_empty());
        assert!(
            took >= Duration::from_millis(100),
            "returned before record 8 was applied: {took:?}"
        );
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert!(c
            .metrics
            .render()
            .contains("vivace_ingest_query_wait_seconds_count{outcome=\"reached\"} 1"));
    }

    #[tokio::test]
    async fn a_partition_short_of_its_watermark_at_the_bound_is_lagging() {
        let c = progress(150);
        c.start(0, 0);
        c.start(1, 0);
        c.applied(0, 4);
        c.applied(1, 2);
        let t0 = Instant::now();
        let r = c.reach(&BTreeMap::from([(0, 4), (1, 6)])).await;
        let took = t0.elapsed();
        assert_eq!(r.covered, vec![0]);
        assert_eq!(
            r.lagging,
            vec![Lag {
                partition: 1,
                applied: 2,
                wanted: 6
            }]
        );
        assert!(
            took >= Duration::from_millis(150),
            "gave up early: {took:?}"
        );
        assert!(took < Duration::from_secs(2), "not bounded: {took:?}");
        assert!(c
            .metrics
            .render()
            .contains("vivace_ingest_query_wait_seconds_count{outcome=\"lagging\"} 1"));
    }
}
