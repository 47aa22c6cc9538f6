//! CPU time by ingest stage, so a profile of where ingest spends its CPU is one scrape of
//! `/metrics` away (benches/bench.sh prints it). Each stage is a synchronous section on one
//! thread, timed with that thread's CPU clock: waiting (I/O, locks held elsewhere, the
//! executor) does not count, and what no stage names (the gRPC/HTTP stack, the runtime)
//! is the process's CPU minus their sum.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The stages, in the order they are rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Inflating gzip request bodies.
    Inflate,
    /// Checking an export and grouping its spans by trace (from the bytes or by decoding).
    Group,
    /// Adding grouped traces to the ingester's live traces.
    Head,
    /// The WAL writer thread: framing, writes and fsync calls.
    Wal,
    /// Encoding blocks (Parquet, bloom, index) at a cut.
    BlockEncode,
}

const STAGES: [(Stage, &str); 5] = [
    (Stage::Inflate, "inflate"),
    (Stage::Group, "group"),
    (Stage::Head, "head"),
    (Stage::Wal, "wal"),
    (Stage::BlockEncode, "block_encode"),
];

/// Nanoseconds of thread CPU per stage.
#[derive(Default, Debug)]
pub(crate) struct StageCpu([AtomicU64; STAGES.len()]);

impl StageCpu {
    pub(crate) fn add_nanos(&self, stage: Stage, nanos: u64) {
        self.0[stage as usize].fetch_add(nanos, Ordering::Relaxed);
    }

    /// Runs `f`, charging the CPU this thread spends in it to `stage`.
    pub(crate) fn time<T>(&self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let _timer = self.start(stage);
        f()
    }

    /// Charges this thread's CPU to `stage` until the timer is dropped (early returns
    /// included). Drop it before any `.await`: the task may resume on another thread.
    pub(crate) fn start(&self, stage: Stage) -> StageTimer<'_> {
        StageTimer {
            cpu: self,
            stage,
            start: thread_cpu_nanos(),
        }
    }

    pub(crate) fn seconds(&self, stage: Stage) -> f64 {
        self.0[stage as usize].load(Ordering::Relaxed) as f64 / 1e9
    }

    pub(super) fn render(&self, s: &mut String) {
        let name = "vivace_stage_cpu_seconds_total";
        let _ = writeln!(
            s,
            "# HELP {name} Thread CPU time spent in each ingest stage.\n# TYPE {name} counter"
        );
        for (stage, label) in STAGES {
            let _ = writeln!(s, "{name}{{stage=\"{label}\"}} {}", self.seconds(stage));
        }
    }
}

pub(crate) struct StageTimer<'a> {
    cpu: &'a StageCpu,
    stage: Stage,
    start: u64,
}

impl StageTimer<'_> {
    /// Charges what was spent so far, so a long section shows up while it runs.
    pub(crate) fn charge(&mut self) {
        let now = thread_cpu_nanos();
        self.cpu
            .add_nanos(self.stage, now.saturating_sub(self.start));
        self.start = now;
    }
}

impl Drop for StageTimer<'_> {
    fn drop(&mut self) {
        self.cpu
            .add_nanos(self.stage, thread_cpu_nanos().saturating_sub(self.start));
    }
}

/// This thread's CPU time so far (user + system), in nanoseconds.
pub(crate) fn thread_cpu_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock ID is a constant the kernel
    // knows; on failure the call leaves `ts` zeroed, which reads as no time spent.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_charged_the_cpu_spent_in_it_and_not_its_sleep() {
        let cpu = StageCpu::default();
        // Spins for 20 ms of this thread's CPU, however loaded the machine is.
        let spun = cpu.time(Stage::BlockEncode, || {
            let t = thread_cpu_nanos();
            let mut x = 0u64;
            while thread_cpu_nanos() - t < 20_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            x
        });
        std::hint::black_box(spun);
        cpu.time(Stage::Wal, || {
            std::thread::sleep(std::time::Duration::from_millis(30))
        });
        assert!(cpu.seconds(Stage::BlockEncode) >= 0.02, "{cpu:?}");
        assert!(cpu.seconds(Stage::Wal) < 0.01, "{cpu:?}");
        // A running timer shows what it spent at each charge, and the rest when dropped.
        let before = cpu.seconds(Stage::Group);
        let mut timer = cpu.start(Stage::Group);
        let t = thread_cpu_nanos();
        while thread_cpu_nanos() - t < 5_000_000 {
            std::hint::black_box(t);
        }
        timer.charge();
        let charged = cpu.seconds(Stage::Group);
        assert!(charged - before >= 0.005, "{cpu:?}");
        drop(timer);
        assert!(cpu.seconds(Stage::Group) >= charged);
        let mut s = String::new();
        cpu.render(&mut s);
        assert!(s.contains("vivace_stage_cpu_seconds_total{stage=\"block_encode\"} 0.0"));
        assert!(s.contains("vivace_stage_cpu_seconds_total{stage=\"inflate\"} 0\n"));
    }
}
