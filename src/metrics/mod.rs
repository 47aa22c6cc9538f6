//! Process metrics in Prometheus text format. One `Metrics` value is created at start-up and
//! handed to each component: no global registry.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

mod stage;
pub(crate) use stage::{thread_cpu_nanos, Stage, StageCpu, StageTimer};

#[derive(Default, Debug)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.add(1);
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default, Debug)]
pub(crate) struct Gauge(AtomicU64);

impl Gauge {
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters keyed by one label value (a refusal reason, a route).
#[derive(Default, Debug)]
pub(crate) struct LabeledCounter(Mutex<BTreeMap<String, u64>>);

impl LabeledCounter {
    pub(crate) fn add(&self, label: &str, n: u64) {
        *self.0.lock().entry(label.to_owned()).or_default() += n;
    }
    #[cfg(test)]
    pub(crate) fn get(&self, label: &str) -> u64 {
        self.0.lock().get(label).copied().unwrap_or(0)
    }
}

/// Object-store requests by operation, counted by `Backend` (every clone of a backend
/// shares one set) and rendered as `vivace_backend_requests_total{operation=...}`.
#[derive(Default, Debug)]
pub struct BackendRequests {
    pub(crate) get: Counter,
    pub(crate) get_range: Counter,
    pub(crate) put: Counter,
    pub(crate) list: Counter,
    pub(crate) delete: Counter,
}

impl BackendRequests {
    /// (operation label, count), in a fixed order.
    pub(crate) fn by_operation(&self) -> [(&'static str, u64); 5] {
        [
            ("get", self.get.get()),
            ("get_range", self.get_range.get()),
            ("put", self.put.get()),
            ("list", self.list.get()),
            ("delete", self.delete.get()),
        ]
    }

    /// Requests of every operation.
    pub fn total(&self) -> u64 {
        self.by_operation().iter().map(|(_, n)| n).sum()
    }
}

/// Refused spans keyed by (tenant, reason): who was refused, and why.
#[derive(Default, Debug)]
pub(crate) struct RefusedSpans(Mutex<BTreeMap<(String, String), u64>>);

impl RefusedSpans {
    pub(crate) fn add(&self, tenant: &str, reason: &str, n: u64) {
        if n > 0 {
            *self
                .0
                .lock()
                .entry((tenant.to_owned(), reason.to_owned()))
                .or_default() += n;
        }
    }
}

const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default, Debug, Clone)]
struct Hist {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Latency histograms keyed by one label value.
#[derive(Default, Debug)]
pub(crate) struct LabeledHistogram(Mutex<BTreeMap<String, Hist>>);

impl LabeledHistogram {
    pub(crate) fn observe(&self, label: &str, secs: f64) {
        let mut m = self.0.lock();
        let h = m.entry(label.to_owned()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }
}

#[derive(Default, Debug)]
pub struct Metrics {
    pub(crate) spans_received: Counter,
    pub(crate) bytes_received: Counter,
    pub(crate) spans_refused: RefusedSpans,
    pub(crate) wal_fsyncs: Counter,
    pub(crate) wal_records: Counter,
    pub(crate) wal_bytes: Counter,
    pub(crate) live_traces: Gauge,
    pub(crate) live_bytes: Gauge,
    /// Memory of the traces a cut took, held until their blocks are committed.
    pub(crate) flushing_bytes: Gauge,
    pub(crate) blocks_flushed: Counter,
    pub(crate) pressure_cuts: Counter,
    pub(crate) traces_flushed: Counter,
    pub(crate) flush_failures: Counter,
    /// Blocks of cuts whose partitions all moved to other nodes before the upload.
    pub(crate) blocks_abandoned: Counter,
    pub(crate) blocklist_length: Gauge,
    pub(crate) query_duration: LabeledHistogram,
    pub(crate) compactor_blocks_compacted: Counter,
    pub(crate) compactor_bytes_written: Counter,
    pub(crate) compactor_spans_written: Counter,
    pub(crate) compactor_spans_discarded: LabeledCounter,
    pub(crate) compactor_blocks_deleted: LabeledCounter,
    /// Shared with the process's `Backend` (see `Backend::counting_into`).
    pub(crate) backend_requests: std::sync::Arc<BackendRequests>,
    pub(crate) generator: GeneratorMetrics,
    /// Ingest partitions whose lease this node holds (`ingest:` only).
    pub(crate) ingest_partitions_owned: Gauge,
    /// Leases this node took over from another holder (stale or released).
    pub(crate) ingest_partition_takeovers: Counter,
    /// Leases this node lost (not renewed in time, or taken by another node).
    pub(crate) ingest_partitions_lost: Counter,
    /// CPU time by ingest stage (`vivace_stage_cpu_seconds_total`).
    pub(crate) stage_cpu: StageCpu,
    /// Distributors sharing `global` tenant rates, this one included (`ingest:` only).
    pub(crate) distributors_healthy: Gauge,
    /// Waits of queries for held partitions to reach a high watermark, by outcome.
    pub(crate) ingest_query_wait: LabeledHistogram,
}

/// The metrics-generator's own health: what it processed, skipped and sent.
#[derive(Default, Debug)]
pub(crate) struct GeneratorMetrics {
    pub(crate) spans_received: Counter,
    /// Spans not turned into metrics, by reason (`queue_full`, `outside_slack`, ...).
    pub(crate) spans_discarded: LabeledCounter,
    pub(crate) active_series: Gauge,
    pub(crate) series_refused: Counter,
    pub(crate) edges_expired: Counter,
    pub(crate) edges_dropped: Counter,
    pub(crate) samples_sent: Counter,
    /// Samples the endpoint refused for good (a 4xx other than 429).
    pub(crate) samples_failed: Counter,
    /// Samples dropped because an endpoint's queue was full.
    pub(crate) samples_dropped: Counter,
    pub(crate) samples_queued: Gauge,
    pub(crate) send_retries: Counter,
}

impl GeneratorMetrics {
    fn render(&self, s: &mut String) {
        counter(
            s,
            "vivace_generator_spans_received_total",
            "Spans the metrics-generator processed.",
            self.spans_received.get(),
        );
        labeled(
            s,
            "vivace_generator_spans_discarded_total",
            "Spans the metrics-generator skipped, by reason.",
            &self.spans_discarded,
        );
        gauge(
            s,
            "vivace_generator_active_series",
            "Series held by the metrics-generator, all tenants.",
            self.active_series.get(),
        );
        counter(
            s,
            "vivace_generator_series_refused_total",
            "New series not created because a tenant reached max_active_series.",
            self.series_refused.get(),
        );
        counter(
            s,
            "vivace_generator_service_graph_edges_expired_total",
            "Unpaired service-graph edges that expired.",
            self.edges_expired.get(),
        );
        counter(
            s,
            "vivace_generator_service_graph_edges_dropped_total",
            "Spans not paired because the edge store was full.",
            self.edges_dropped.get(),
        );
        counter(
            s,
            "vivace_generator_remote_write_samples_sent_total",
            "Samples accepted by remote-write endpoints.",
            self.samples_sent.get(),
        );
        counter(
            s,
            "vivace_generator_remote_write_samples_failed_total",
            "Samples a remote-write endpoint refused for good.",
            self.samples_failed.get(),
        );
        counter(
            s,
            "vivace_generator_remote_write_samples_dropped_total",
            "Samples dropped because a remote-write queue was full.",
            self.samples_dropped.get(),
        );
        gauge(
            s,
            "vivace_generator_remote_write_queued_samples",
            "Samples waiting to be sent, all endpoints.",
            self.samples_queued.get(),
        );
        counter(
            s,
            "vivace_generator_remote_write_retries_total",
            "Remote-write requests retried after a recoverable error.",
            self.send_retries.get(),
        );
    }
}

impl Metrics {
    pub(crate) fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        counter(
            &mut s,
            "vivace_distributor_spans_received_total",
            "Spans accepted and acknowledged.",
            self.spans_received.get(),
        );
        counter(
            &mut s,
            "vivace_distributor_bytes_received_total",
            "OTLP request bytes received (decompressed).",
            self.bytes_received.get(),
        );
        let _ = writeln!(
            s,
            "# HELP vivace_distributor_spans_refused_total Spans refused, by tenant and reason.\n# TYPE vivace_distributor_spans_refused_total counter"
        );
        // Tenant IDs cannot hold '"' or '\\' (model::TenantId), so they need no escaping.
        for ((tenant, reason), n) in self.spans_refused.0.lock().iter() {
            let _ = writeln!(
                s,
                "vivace_distributor_spans_refused_total{{reason=\"{reason}\",tenant=\"{tenant}\"}} {n}"
            );
        }
        counter(
            &mut s,
            "vivace_wal_fsyncs_total",
            "WAL fsyncs (group commits).",
            self.wal_fsyncs.get(),
        );
        counter(
            &mut s,
            "vivace_wal_records_total",
            "WAL records written.",
            self.wal_records.get(),
        );
        counter(
            &mut s,
            "vivace_wal_bytes_total",
            "WAL bytes written.",
            self.wal_bytes.get(),
        );
        gauge(
            &mut s,
            "vivace_ingest_partitions_owned",
            "Ingest partitions whose lease this node holds.",
            self.ingest_partitions_owned.get(),
        );
        counter(
            &mut s,
            "vivace_ingest_partition_takeovers_total",
            "Ingest partition leases taken over from another holder.",
            self.ingest_partition_takeovers.get(),
        );
        counter(
            &mut s,
            "vivace_ingest_partitions_lost_total",
            "Ingest partition leases this node lost.",
            self.ingest_partitions_lost.get(),
        );
        gauge(
            &mut s,
            "vivace_distributors_healthy",
            "Distributors sharing global tenant rates, this one included.",
            self.distributors_healthy.get(),
        );
        gauge(
            &mut s,
            "vivace_ingester_live_traces",
            "Traces held in memory.",
            self.live_traces.get(),
        );
        gauge(
            &mut s,
            "vivace_ingester_live_bytes",
            "Memory held by live traces: bytes as received plus chunk handles and map entries.",
            self.live_bytes.get(),
        );
        gauge(
            &mut s,
            "vivace_ingester_flushing_bytes",
            "Memory held by traces being written into blocks; with live bytes and the cut's working set, what max_live_bytes bounds.",
            self.flushing_bytes.get(),
        );
        counter(
            &mut s,
            "vivace_ingester_blocks_flushed_total",
            "Blocks committed to the backend.",
            self.blocks_flushed.get(),
        );
        counter(
            &mut s,
            "vivace_ingester_pressure_cuts_total",
            "Blocks cut early, with every live trace, because memory was nearly full.",
            self.pressure_cuts.get(),
        );
        counter(
            &mut s,
            "vivace_ingester_traces_flushed_total",
            "Traces written into blocks.",
            self.traces_flushed.get(),
        );
        counter(
            &mut s,
            "vivace_ingester_flush_failures_total",
            "Block flushes that failed and will be retried.",
            self.flush_failures.get(),
        );
        counter(
            &mut s,
            "vivace_ingester_blocks_abandoned_total",
            "Blocks not written because every ingest partition of their cut moved to another node (its new holder reads those records again).",
            self.blocks_abandoned.get(),
        );
        gauge(
            &mut s,
            "vivace_querier_blocklist_length",
            "Blocks known to the querier.",
            self.blocklist_length.get(),
        );
        let _ = writeln!(
            s,
            "# HELP vivace_backend_requests_total Object-store requests, by operation.\n# TYPE vivace_backend_requests_total counter"
        );
        for (op, n) in self.backend_requests.by_operation() {
            let _ = writeln!(s, "vivace_backend_requests_total{{operation=\"{op}\"}} {n}");
        }
        counter(
            &mut s,
            "vivace_compactor_blocks_compacted_total",
            "Input blocks merged into compacted blocks.",
            self.compactor_blocks_compacted.get(),
        );
        counter(
            &mut s,
            "vivace_compactor_bytes_written_total",
            "Bytes of data.parquet written by compactions.",
            self.compactor_bytes_written.get(),
        );
        counter(
            &mut s,
            "vivace_compactor_spans_written_total",
            "Spans written into compacted blocks.",
            self.compactor_spans_written.get(),
        );
        labeled(
            &mut s,
            "vivace_compactor_spans_discarded_total",
            "Spans dropped while compacting, by reason.",
            &self.compactor_spans_discarded,
        );
        labeled(
            &mut s,
            "vivace_compactor_blocks_deleted_total",
            "Blocks deleted from the bucket, by reason.",
            &self.compactor_blocks_deleted,
        );
        histogram(
            &mut s,
            "vivace_query_duration_seconds",
            "Query latency by route.",
            "route",
            &self.query_duration,
        );
        histogram(
            &mut s,
            "vivace_ingest_query_wait_seconds",
            "Time queries waited for held ingest partitions to apply records up to the high watermark, by outcome (immediate, reached, lagging).",
            "outcome",
            &self.ingest_query_wait,
        );
        self.generator.render(&mut s);
        self.stage_cpu.render(&mut s);
        s
    }
}

fn histogram(s: &mut String, name: &str, help: &str, label: &str, h: &LabeledHistogram) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (value, h) in h.0.lock().iter() {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "{name}_bucket{{{label}=\"{value}\",le=\"{b}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            s,
            "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}\n{name}_sum{{{label}=\"{value}\"}} {}\n{name}_count{{{label}=\"{value}\"}} {}",
            h.count, h.sum, h.count
        );
    }
}

fn counter(s: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

fn labeled(s: &mut String, name: &str, help: &str, c: &LabeledCounter) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
    for (reason, n) in c.0.lock().iter() {
        let _ = writeln!(s, "{name}{{reason=\"{reason}\"}} {n}");
    }
}

fn gauge(s: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.spans_received.add(7);
        m.spans_refused.add("team-a", "invalid_trace_id", 2);
        m.query_duration.observe("trace_by_id", 0.003);
        m.backend_requests.get_range.add(3);
        let text = m.render();
        assert!(text.contains("vivace_backend_requests_total{operation=\"get_range\"} 3\n"));
        assert!(text.contains("vivace_backend_requests_total{operation=\"put\"} 0\n"));
        assert!(text.contains("vivace_distributor_spans_received_total 7\n"));
        assert!(text
            .contains("vivace_distributor_spans_refused_total{reason=\"invalid_trace_id\",tenant=\"team-a\"} 2\n"));
        assert!(text.contains(
            "vivace_query_duration_seconds_bucket{route=\"trace_by_id\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(
            "vivace_query_duration_seconds_bucket{route=\"trace_by_id\",le=\"0.0025\"} 0\n"
        ));
    }
}
