//! The metrics-generator: turns accepted spans into Tempo's span metrics and service-graph
//! metrics per tenant, and sends them to Prometheus remote-write endpoints.
//!
//! The distributor hands each accepted request over with `offer`, which never blocks and
//! never fails ingest: past `max_queued_bytes` a request is skipped (counted). One thread
//! owns every tenant's processors; it aggregates spans, expires service-graph edges, and every
//! `collection_interval` encodes all series into compressed remote-write batches. One async
//! task per endpoint sends them (see `remote_write`).

pub(crate) mod attrs;
pub(crate) mod filter;
pub(crate) mod registry;
pub(crate) mod remote_write;
pub(crate) mod servicegraphs;
pub(crate) mod spanmetrics;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::generator::{
    check_buckets, MetricsGeneratorConfig, ProcessorConfig, ProcessorOverrides,
};
use crate::config::overrides::{GeneratorLimits, GeneratorProcessor};
use crate::metrics::Metrics;
use crate::model::{ExportTraceServiceRequest, TenantId, TraceId};
use crate::overrides::Overrides;

pub(crate) use filter::FilterError;
use filter::SpanFilter;
use registry::{Emitter, SeriesBudget};
use remote_write::Endpoint;
use servicegraphs::ServiceGraphs;
use spanmetrics::SpanMetrics;

#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    #[error("metrics_generator.processor.{processor}.filter_policies: {source}")]
    Filter {
        processor: &'static str,
        source: FilterError,
    },
    #[error("metrics_generator.storage.remote_write: {0}")]
    Client(String),
}

/// Requests waiting for the generator thread, at most; `max_queued_bytes` bounds them too.
const CHANNEL_REQUESTS: usize = 4096;

/// How often waiting service-graph edges are checked for expiry (Tempo: 2 s).
const EXPIRE_EVERY: Duration = Duration::from_millis(500);

struct Job {
    tenant: TenantId,
    req: ExportTraceServiceRequest,
    bytes: usize,
    kept: Option<HashSet<TraceId>>,
}

pub(crate) struct Generator {
    tx: SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    endpoints: Vec<Arc<Endpoint>>,
    senders: Mutex<Vec<JoinHandle<()>>>,
}

impl Generator {
    /// Starts the generator thread and one sender task per endpoint (call inside a tokio
    /// runtime).
    pub(crate) fn start(
        cfg: &MetricsGeneratorConfig,
        overrides: Arc<Overrides>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, GeneratorError> {
        let filter =
            SpanFilter::new(&cfg.processor.span_metrics.filter_policies).map_err(|source| {
                GeneratorError::Filter {
                    processor: "span_metrics",
                    source,
                }
            })?;
        let graph_filter =
            SpanFilter::new(&cfg.processor.service_graphs.filter_policies).map_err(|source| {
                GeneratorError::Filter {
                    processor: "service_graphs",
                    source,
                }
            })?;
        let all_pending = Arc::new(AtomicU64::new(0));
        let endpoints: Vec<Arc<Endpoint>> = cfg
            .storage
            .remote_write
            .iter()
            .map(|rw| {
                Endpoint::new(
                    rw.clone(),
                    cfg.storage.remote_write_add_org_id_header,
                    metrics.clone(),
                    all_pending.clone(),
                )
            })
            .collect();
        let mut senders = Vec::new();
        if !endpoints.is_empty() {
            let client = remote_write::client().map_err(GeneratorError::Client)?;
            for ep in &endpoints {
                senders.push(tokio::spawn(ep.clone().run(client.clone())));
            }
        } else {
            info!(
                "metrics-generator has no remote_write endpoint: series are generated but not sent"
            );
        }
        let (tx, rx) = sync_channel(CHANNEL_REQUESTS);
        let queued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            cfg: cfg.clone(),
            filter,
            graph_filter,
            overrides,
            metrics: metrics.clone(),
            queued: queued.clone(),
            tenants: HashMap::new(),
            endpoints: endpoints.clone(),
            stop: stop.clone(),
            prev_collect_ms: 0,
        };
        let handle = std::thread::Builder::new()
            .name("metrics-generator".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| {
                GeneratorError::Client(format!("cannot start the generator thread: {e}"))
            })?;
        Ok(Arc::new(Self {
            tx,
            queued,
            max_queued: cfg.max_queued_bytes,
            metrics,
            stop,
            worker: Mutex::new(Some(handle)),
            endpoints,
            senders: Mutex::new(senders),
        }))
    }

    /// Hands an accepted request over. `bytes` is its encoded size; `kept`, when some of its
    /// traces were refused, names the traces that were accepted.
    pub(crate) fn offer(
        &self,
        tenant: &TenantId,
        req: ExportTraceServiceRequest,
        bytes: usize,
        kept: Option<HashSet<TraceId>>,
    ) {
        let skip = |req: &ExportTraceServiceRequest| {
            let spans: usize = req
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len())
                .sum();
            self.metrics
                .generator
                .spans_discarded
                .add("queue_full", spans as u64);
        };
        if self.queued.fetch_add(bytes, Ordering::AcqRel) + bytes > self.max_queued {
            self.queued.fetch_sub(bytes, Ordering::AcqRel);
            skip(&req);
            return;
        }
        let job = Job {
            tenant: tenant.clone(),
            req,
            bytes,
            kept,
        };
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
            self.tx.try_send(job)
        {
            self.queued.fetch_sub(bytes, Ordering::AcqRel);
            skip(&job.req);
        }
    }

    /// Stops the generator: one last collection, then up to `deadline` for the endpoints to
    /// take what is queued.
    pub(crate) async fn shutdown(&self, deadline: Duration) {
        self.stop.store(true, Ordering::Release);
        let worker = self.worker.lock().take();
        if let Some(w) = worker {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        let until = Instant::now() + deadline;
        while self.endpoints.iter().any(|e| e.pending() > 0) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left: u64 = self.endpoints.iter().map(|e| e.pending()).sum();
        if left > 0 {
            warn!(
                samples = left,
                "remote-write samples not sent before shutdown"
            );
        }
        for s in self.senders.lock().drain(..) {
            s.abort();
        }
    }
}

/// One tenant's processors and series.
struct Tenant {
    span_metrics: Option<SpanMetrics>,
    service_graphs: Option<ServiceGraphs>,
    budget: SeriesBudget,
    /// The per-tenant settings `processor` was built from.
    applied: ProcessorOverrides,
    processor: ProcessorConfig,
    sm_filter: SpanFilter,
    sg_filter: SpanFilter,
}

/// A tenant's processor settings with its overrides in place, checked.
fn tenant_settings(
    o: &ProcessorOverrides,
    base: &ProcessorConfig,
) -> Result<(ProcessorConfig, SpanFilter, SpanFilter), String> {
    let p = o.apply(base);
    check_buckets(
        "span_metrics.histogram_buckets",
        &p.span_metrics.histogram_buckets,
    )?;
    check_buckets(
        "service_graphs.histogram_buckets",
        &p.service_graphs.histogram_buckets,
    )?;
    let sm = SpanFilter::new(&p.span_metrics.filter_policies)
        .map_err(|e| format!("span_metrics.filter_policies: {e}"))?;
    let sg = SpanFilter::new(&p.service_graphs.filter_policies)
        .map_err(|e| format!("service_graphs.filter_policies: {e}"))?;
    Ok((p, sm, sg))
}

struct Worker {
    cfg: MetricsGeneratorConfig,
    filter: SpanFilter,
    graph_filter: SpanFilter,
    overrides: Arc<Overrides>,
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
    tenants: HashMap<TenantId, Tenant>,
    endpoints: Vec<Arc<Endpoint>>,
    stop: Arc<AtomicBool>,
    /// When the previous collection ran (all tenants are collected together), so a series
    /// that comes back, even of a tenant turned off and on, never goes back in time.
    prev_collect_ms: i64,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn valid_span_id(id: &[u8]) -> bool {
    id.len() == 8 && id.iter().any(|&b| b != 0)
}

impl Worker {
    fn run(&mut self, rx: Receiver<Job>) {
        let interval = self.cfg.registry.collection_interval;
        let mut next_collect = Instant::now() + interval;
        let mut next_expire = Instant::now() + EXPIRE_EVERY;
        loop {
            let wait = next_collect
                .min(next_expire)
                .saturating_duration_since(Instant::now());
            let disconnected = match rx.recv_timeout(wait) {
                Ok(job) => {
                    self.process(job);
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            let stopping = disconnected || self.stop.load(Ordering::Acquire);
            if stopping {
                // Ingest has drained: what was accepted goes into the last collection.
                while let Ok(job) = rx.try_recv() {
                    self.process(job);
                }
            }
            let now = Instant::now();
            if now >= next_expire || stopping {
                self.expire(now);
                next_expire = now + EXPIRE_EVERY;
            }
            if now >= next_collect || stopping {
                self.collect();
                // After a stall, the next collection is an interval from now, not a burst.
                next_collect = (next_collect + interval).max(now);
            }
            if stopping {
                return;
            }
        }
    }

    fn tenant(&mut self, tenant: &TenantId, limits: &GeneratorLimits) -> Option<&mut Tenant> {
        if limits.processors.is_empty() {
            // Turned off for this tenant: its series are no longer sent.
            self.tenants.remove(tenant);
            return None;
        }
        // Looked up before inserting: a request of a known tenant clones no id.
        if !self.tenants.contains_key(tenant) {
            let t = Tenant {
                span_metrics: None,
                service_graphs: None,
                budget: SeriesBudget::default(),
                applied: ProcessorOverrides::default(),
                processor: self.cfg.processor.clone(),
                sm_filter: self.filter.clone(),
                sg_filter: self.graph_filter.clone(),
            };
            self.tenants.insert(tenant.clone(), t);
        }
        let cfg = &self.cfg;
        let t = self.tenants.get_mut(tenant)?;
        if t.applied != limits.processor {
            // New per-tenant settings start the tenant's processors (and series) afresh.
            match tenant_settings(&limits.processor, &cfg.processor) {
                Ok((processor, sm_filter, sg_filter)) => {
                    t.processor = processor;
                    t.sm_filter = sm_filter;
                    t.sg_filter = sg_filter;
                    t.span_metrics = None;
                    t.service_graphs = None;
                }
                Err(e) => {
                    warn!(tenant = %tenant, error = %e, "per-tenant generator settings refused, keeping the previous ones")
                }
            }
            t.applied = limits.processor.clone();
        }
        let max_len = cfg.registry.max_label_value_length;
        match (limits.has(GeneratorProcessor::SpanMetrics), &t.span_metrics) {
            (true, None) => {
                t.span_metrics = Some(SpanMetrics::new(
                    &t.processor.span_metrics,
                    t.sm_filter.clone(),
                    max_len,
                ))
            }
            (false, Some(_)) => t.span_metrics = None,
            _ => {}
        }
        match (
            limits.has(GeneratorProcessor::ServiceGraphs),
            &t.service_graphs,
        ) {
            (true, None) => {
                t.service_graphs = Some(ServiceGraphs::new(
                    &t.processor.service_graphs,
                    t.sg_filter.clone(),
                    max_len,
                ))
            }
            (false, Some(_)) => t.service_graphs = None,
            _ => {}
        }
        t.budget.max = limits.max_active_series as usize;
        Some(t)
    }

    fn process(&mut self, job: Job) {
        self.queued.fetch_sub(job.bytes, Ordering::AcqRel);
        let limits = self.overrides.limits(&job.tenant);
        let slack = self.cfg.metrics_ingestion_time_range_slack.as_nanos() as u64;
        let metrics = self.metrics.clone();
        let Some(t) = self.tenant(&job.tenant, &limits.metrics_generator) else {
            return;
        };
        let (now, now_ms, now_ns) = (Instant::now(), unix_ms(), unix_ns());
        let (mut received, mut outside) = (0u64, 0u64);
        for rs in &job.req.resource_spans {
            let resource = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
            let service = attrs::find("service.name", &[resource]);
            for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                // The same checks the distributor made: only accepted spans count.
                let Ok(trace_id) = <[u8; 16]>::try_from(s.trace_id.as_slice()) else {
                    continue;
                };
                if trace_id == [0; 16] || !valid_span_id(&s.span_id) {
                    continue;
                }
                if let Some(kept) = &job.kept {
                    if !kept.contains(&TraceId(trace_id)) {
                        continue;
                    }
                }
                received += 1;
                if slack > 0 && s.end_time_unix_nano.abs_diff(now_ns) > slack {
                    outside += 1;
                    continue;
                }
                if let Some(sm) = &mut t.span_metrics {
                    let svc = service.as_deref().unwrap_or("");
                    sm.push(resource, svc, s, trace_id, now_ms, &mut t.budget);
                }
                if let Some(sg) = &mut t.service_graphs {
                    let svc = service.as_deref();
                    sg.push(resource, svc, s, trace_id, now, now_ms, &mut t.budget);
                }
            }
        }
        metrics.generator.spans_received.add(received);
        metrics
            .generator
            .spans_discarded
            .add("outside_metrics_ingestion_slack", outside);
    }

    fn expire(&mut self, now: Instant) {
        let now_ms = unix_ms();
        let mut expired = 0;
        for t in self.tenants.values_mut() {
            if let Some(sg) = &mut t.service_graphs {
                sg.expire(now, now_ms, &mut t.budget);
                expired += std::mem::take(&mut sg.expired);
            }
        }
        self.metrics.generator.edges_expired.add(expired);
    }

    fn collect(&mut self) {
        let now_ms = unix_ms();
        let stale_before = now_ms - self.cfg.registry.stale_duration.as_millis() as i64;
        let max_samples = self
            .endpoints
            .iter()
            .map(|e| e.max_samples_per_send())
            .min()
            .unwrap_or(usize::MAX);
        let (mut active, mut refused, mut dropped, mut filtered) = (0, 0, 0, 0);
        for (tenant, t) in &mut self.tenants {
            let mut e = Emitter::new(
                &self.cfg.registry.external_labels,
                now_ms,
                self.prev_collect_ms,
            );
            let mut series = 0;
            if let Some(sm) = &mut t.span_metrics {
                sm.collect(&mut e, stale_before);
                series += sm.series_count();
                filtered += std::mem::take(&mut sm.filtered);
            }
            if let Some(sg) = &mut t.service_graphs {
                sg.collect(&mut e, stale_before);
                series += sg.series_count();
                dropped += std::mem::take(&mut sg.dropped);
            }
            t.budget.active = series;
            active += series;
            refused += std::mem::take(&mut t.budget.refused);
            if self.endpoints.is_empty() || e.out.is_empty() {
                continue;
            }
            for batch in remote_write::encode_batches(tenant.as_str(), e.out, max_samples) {
                for ep in &self.endpoints {
                    ep.push(batch.clone());
                }
            }
        }
        self.prev_collect_ms = now_ms;
        let g = &self.metrics.generator;
        g.active_series.set(active as u64);
        g.series_refused.add(refused);
        g.edges_dropped.add(dropped);
        g.spans_discarded.add("span_metrics_filtered", filtered);
    }
}

#[cfg(test)]
mod tests;
