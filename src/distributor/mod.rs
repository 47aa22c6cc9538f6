//! The distributor: validates incoming spans, regroups them by trace, and hands them to the
//! ingester, then (when the tenant has metrics-generator processors) the accepted request to
//! the generator. Invalid spans are refused one by one (reported back through OTLP
//! `partial_success`), never silently dropped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use bytes::Bytes;
use prost::Message;

use crate::generator::Generator;
use crate::ingester::{IngestError, Ingester};

/// Where accepted traces go instead of the ingester's WAL when an ingest log is configured
/// (`src/ingest/` implements it on Kafka). Defined here so the distributor does not depend
/// on the log's client.
#[async_trait::async_trait]
pub(crate) trait TraceLog: Send + Sync + 'static {
    /// Returns once the log has acknowledged every trace (acks=all): only then may the
    /// export be acknowledged.
    async fn write(&self, tenant: &TenantId, traces: Vec<TraceBatch>)
        -> Result<(), LogUnavailable>;
}

/// The ingest log refused or did not acknowledge in time: retryable, never an ack.
#[derive(Debug, thiserror::Error)]
#[error("ingest log unavailable: {0}")]
pub(crate) struct LogUnavailable(pub(crate) String);
use crate::config::overrides::Limits;
use crate::metrics::Metrics;
use crate::model::{
    group_by_trace, ExportTraceServiceRequest, Grouped, TenantId, TraceBatch, TraceId,
};
use crate::overrides::Overrides;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Log(#[from] LogUnavailable),
    #[error("ingestion rate limit ({rate} bytes/s, burst {burst} bytes) exceeded for tenant {tenant}: retry in {retry_after:?}")]
    RateLimited {
        tenant: TenantId,
        rate: u64,
        burst: u64,
        retry_after: Duration,
    },
    #[error("request of {size} bytes is larger than tenant {tenant}'s burst size of {burst} bytes: send smaller batches")]
    LargerThanBurst {
        tenant: TenantId,
        size: u64,
        burst: u64,
    },
}

/// What happened to a request's spans.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PushOutcome {
    pub(crate) accepted: usize,
    pub(crate) rejected: usize,
    /// Why spans were rejected; empty when none were.
    pub(crate) message: String,
}

pub(crate) struct Distributor {
    /// The ingester of this process; `None` on a distributor-only node, which sends
    /// everything to the ingest log (the live-trace limits are then not checked here), and
    /// in a generator-only process (`-target=metrics-generator`), which stores nothing.
    ingester: Option<Arc<Ingester>>,
    generator: Option<Arc<Generator>>,
    metrics: Arc<Metrics>,
    overrides: Arc<Overrides>,
    buckets: Mutex<HashMap<TenantId, Bucket>>,
    /// With `ingest.enabled`, the log accepted traces are produced to (the ingester then
    /// reads them back from it); `None` keeps the embedded WAL.
    log: Option<Arc<dyn TraceLog>>,
    /// Distributors sharing each tenant's rate under `rate_strategy: global`.
    healthy: Arc<HealthyDistributors>,
}

/// How many distributors are healthy, this one included: with `ingest:` the nodes count
/// each other through the bucket (`ingest::distributors`); otherwise it stays 1, so a
/// `global` rate is the whole rate, as `local`. Defined here so the distributor does not
/// depend on the ingest log.
#[derive(Debug)]
pub(crate) struct HealthyDistributors(AtomicUsize);

impl Default for HealthyDistributors {
    fn default() -> Self {
        Self(AtomicUsize::new(1))
    }
}

impl HealthyDistributors {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, n: usize) {
        self.0.store(n.max(1), Ordering::Relaxed);
    }
}

/// A token bucket of bytes per tenant.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Takes `n` bytes, or says how long until they would be there.
    fn take(&mut self, n: u64, rate: u64, burst: u64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate as f64).min(burst as f64);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (n as f64 - self.tokens) / rate as f64,
            ))
        }
    }
}

/// An export's protobuf bytes as the receiver has them.
pub(crate) struct Received {
    /// The `ExportTraceServiceRequest` encoding.
    pub(crate) raw: Bytes,
    /// `raw` gzip-compressed, as it arrived, if it did: the WAL keeps these bytes (a
    /// ninth of `raw` on the synthetic exports of BENCHMARKS.md) when the whole request
    /// is kept.
    pub(crate) gzip: Option<Bytes>,
}

impl Distributor {
    pub(crate) fn new(
        ingester: Option<Arc<Ingester>>,
        metrics: Arc<Metrics>,
        overrides: Arc<Overrides>,
    ) -> Self {
        Self {
            ingester,
            generator: None,
            metrics,
            overrides,
            buckets: Mutex::new(HashMap::new()),
            log: None,
            healthy: Arc::default(),
        }
    }

    /// Sends accepted traces to `log` instead of the ingester's WAL.
    pub(crate) fn with_log(mut self, log: Arc<dyn TraceLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// A distributor with no ingester in its process: everything goes to `log`.
    pub(crate) fn log_only(
        log: Arc<dyn TraceLog>,
        metrics: Arc<Metrics>,
        overrides: Arc<Overrides>,
    ) -> Self {
        Self {
            ingester: None,
            generator: None,
            metrics,
            overrides,
            buckets: Mutex::new(HashMap::new()),
            log: Some(log),
            healthy: Arc::default(),
        }
    }

    /// Shares `global` tenant rates among the distributors `healthy` counts.
    pub(crate) fn with_healthy(mut self, healthy: Arc<HealthyDistributors>) -> Self {
        self.healthy = healthy;
        self
    }

    /// Feeds accepted requests of tenants with generator processors to `generator`.
    pub(crate) fn with_generator(mut self, generator: Option<Arc<Generator>>) -> Self {
        self.generator = generator;
        self
    }

    fn check_rate(&self, tenant: &TenantId, limits: &Limits, size: u64) -> Result<(), PushError> {
        let (rate, burst) = limits.ingestion.per_distributor(self.healthy.get());
        if rate == 0 {
            return Ok(());
        }
        if size > burst {
            return Err(PushError::LargerThanBurst {
                tenant: tenant.clone(),
                size,
                burst,
            });
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(tenant.clone()).or_insert(Bucket {
            tokens: burst as f64,
            last: now,
        });
        bucket
            .take(size, rate, burst, now)
            .map_err(|retry_after| PushError::RateLimited {
                tenant: tenant.clone(),
                rate,
                burst,
                retry_after,
            })
    }

    /// Takes a protobuf request's size from the tenant's rate before it is decoded, so an
    /// export over the rate, or one the ingester has no room for, costs no decode; `spans`
    /// counts what a refusal refuses (only called then). Follow with
    /// [`Distributor::push_admitted`].
    pub(crate) fn admit(
        &self,
        tenant: &TenantId,
        size: u64,
        spans: impl FnOnce() -> usize,
    ) -> Result<(), PushError> {
        // A request holds at least its encoded size once grouped: if that does not fit, the
        // check after grouping would refuse it too. Checked first, so a refused export
        // takes nothing from the rate.
        if let (Some(ingester), None) = (&self.ingester, &self.log) {
            if let Err(e) = ingester.has_room(size) {
                self.metrics.spans_refused.add(
                    tenant.as_str(),
                    "live_bytes_exceeded",
                    spans() as u64,
                );
                return Err(e.into());
            }
        }
        let limits = self.overrides.limits(tenant);
        self.check_rate(tenant, &limits, size).inspect_err(|_| {
            self.metrics
                .spans_refused
                .add(tenant.as_str(), "rate_limited", spans() as u64);
        })
    }

    /// Pushes a decoded request. `raw` is its protobuf encoding when the caller has it (gRPC
    /// and OTLP/HTTP protobuf), so the WAL stores the bytes received without re-encoding.
    pub(crate) async fn push(
        &self,
        tenant: &TenantId,
        raw: Option<Bytes>,
        req: ExportTraceServiceRequest,
    ) -> Result<PushOutcome, PushError> {
        let raw = match raw {
            Some(r) => r,
            None => Bytes::from(req.encode_to_vec()),
        };
        let spans = || {
            req.resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len())
                .sum()
        };
        self.admit(tenant, raw.len() as u64, spans)?;
        self.push_admitted(tenant, raw, req).await
    }

    /// Pushes a decoded request whose size [`Distributor::admit`] already took from the rate.
    pub(crate) async fn push_admitted(
        &self,
        tenant: &TenantId,
        raw: Bytes,
        req: ExportTraceServiceRequest,
    ) -> Result<PushOutcome, PushError> {
        let grouped = group_by_trace(&req.resource_spans);
        self.push_grouped(tenant, Received { raw, gzip: None }, grouped, Some(req))
            .await
    }

    /// Where the receivers charge the CPU of their stages (inflate, group).
    pub(crate) fn stage_cpu(&self) -> &crate::metrics::StageCpu {
        &self.metrics.stage_cpu
    }

    /// Whether `tenant`'s exports are decoded into structs (their spans feed the
    /// metrics-generator): the receivers then bound that decode too.
    pub(crate) fn decodes_for(&self, tenant: &TenantId) -> bool {
        self.generator_for(&self.overrides.limits(tenant)).is_some()
    }

    /// The generator a tenant with these limits feeds, if it has processors.
    fn generator_for(&self, limits: &Limits) -> Option<&Arc<Generator>> {
        self.generator
            .as_ref()
            .filter(|_| !limits.metrics_generator.processors.is_empty())
    }

    /// Pushes a request already grouped by trace, admitted by [`Distributor::admit`]. The
    /// receivers group protobuf exports from their bytes ([`crate::model::group_encoded`])
    /// and pass no `req`: it is decoded here only for a tenant whose spans feed the
    /// generator.
    pub(crate) async fn push_grouped(
        &self,
        tenant: &TenantId,
        received: Received,
        mut grouped: Grouped,
        req: Option<ExportTraceServiceRequest>,
    ) -> Result<PushOutcome, PushError> {
        let Received { raw, gzip } = received;
        let limits = self.overrides.limits(tenant);
        let generator = self.generator_for(&limits);
        // Grouping checked the bytes as prost does, so this decode does not fail.
        let for_generator = match generator {
            Some(_) => req.or_else(|| ExportTraceServiceRequest::decode(raw.clone()).ok()),
            None => None,
        };
        let too_large = self.drop_oversized_traces(tenant, &limits, &mut grouped);
        let over_live = self.drop_new_traces_over_limit(tenant, &limits, &mut grouped);
        let mut outcome = PushOutcome {
            accepted: grouped.accepted,
            rejected: grouped.rejected,
            message: grouped.message(),
        };
        let mut refuse = |reason: &str, n: usize, msg: String| {
            if n == 0 {
                return;
            }
            self.metrics
                .spans_refused
                .add(tenant.as_str(), reason, n as u64);
            outcome.accepted -= n;
            outcome.rejected += n;
            outcome.message = if outcome.message.is_empty() {
                msg
            } else {
                format!("{}; {msg}", outcome.message)
            };
        };
        refuse(
            "trace_too_large",
            too_large,
            format!(
                "rejected {too_large} spans of traces larger than max_bytes_per_trace ({} bytes)",
                limits.global.max_bytes_per_trace
            ),
        );
        refuse(
            "live_traces_exceeded",
            over_live,
            format!(
                "LIVE_TRACES_EXCEEDED: rejected {over_live} spans of new traces, tenant {tenant} already has max_traces_per_user ({}) live traces",
                limits.ingestion.max_traces_per_user
            ),
        );
        self.metrics.spans_refused.add(
            tenant.as_str(),
            "invalid_trace_id",
            grouped.bad_trace_id as u64,
        );
        self.metrics.spans_refused.add(
            tenant.as_str(),
            "invalid_span_id",
            grouped.bad_span_id as u64,
        );
        if grouped.traces().is_empty() {
            return Ok(outcome);
        }
        let kept: Option<HashSet<TraceId>> =
            (!grouped.is_whole()).then(|| grouped.traces().iter().map(|t| t.id).collect());
        let offer = |req: Option<ExportTraceServiceRequest>| {
            if let (Some(g), Some(req)) = (generator, req) {
                g.offer(tenant, req, raw.len(), kept);
            }
        };
        if let Some(log) = &self.log {
            // Limits were applied above; what is left is acknowledged only once the log
            // has every record.
            return match log.write(tenant, grouped.into_traces()).await {
                Ok(()) => {
                    self.metrics.spans_received.add(outcome.accepted as u64);
                    self.metrics.bytes_received.add(raw.len() as u64);
                    offer(for_generator);
                    Ok(outcome)
                }
                Err(e) => {
                    self.metrics.spans_refused.add(
                        tenant.as_str(),
                        "ingest_log_unavailable",
                        outcome.accepted as u64,
                    );
                    Err(e.into())
                }
            };
        }
        let Some(ingester) = &self.ingester else {
            // A generator-only process (`-target=metrics-generator`) stores nothing: the
            // spans feed its generator. Anything else must never ack what went nowhere.
            if self.generator.is_none() {
                return Err(
                    LogUnavailable("no ingester and no ingest log in this process".into()).into(),
                );
            }
            self.metrics.spans_received.add(outcome.accepted as u64);
            self.metrics.bytes_received.add(raw.len() as u64);
            offer(for_generator);
            return Ok(outcome);
        };
        match ingester
            .push_received(tenant, &raw, gzip.as_deref(), grouped)
            .await
        {
            Ok(()) => {
                self.metrics.spans_received.add(outcome.accepted as u64);
                self.metrics.bytes_received.add(raw.len() as u64);
                offer(for_generator);
                Ok(outcome)
            }
            Err(e) => {
                let reason = match &e {
                    IngestError::LiveBytesExceeded { .. } => "live_bytes_exceeded",
                    IngestError::Wal(_) => "wal_unavailable",
                };
                self.metrics
                    .spans_refused
                    .add(tenant.as_str(), reason, outcome.accepted as u64);
                Err(e.into())
            }
        }
    }
}

impl Distributor {
    /// Removes traces this request would grow past `max_bytes_per_trace`; returns how many
    /// spans that refused.
    fn drop_oversized_traces(&self, tenant: &TenantId, limits: &Limits, g: &mut Grouped) -> usize {
        let max = limits.global.max_bytes_per_trace as usize;
        let Some(ingester) = self.ingester.as_ref().filter(|_| max != 0) else {
            return 0;
        };
        g.retain(|t| ingester.live_trace_bytes(tenant, &t.id) + t.data.len() <= max)
    }

    /// Removes traces that are not live yet once the tenant has `max_traces_per_user` live
    /// traces (new traces of this request count too); returns how many spans that refused.
    /// Spans of traces already live are always kept, so a trace is never cut in half.
    fn drop_new_traces_over_limit(
        &self,
        tenant: &TenantId,
        limits: &Limits,
        g: &mut Grouped,
    ) -> usize {
        let max = limits.ingestion.max_traces_per_user as usize;
        let Some(ingester) = self.ingester.as_ref().filter(|_| max != 0) else {
            return 0;
        };
        if g.traces().is_empty() {
            return 0;
        }
        let ids: Vec<TraceId> = g.traces().iter().map(|t| t.id).collect();
        let (live, is_live) = ingester.live_traces(tenant, &ids);
        let mut room = max.saturating_sub(live);
        let mut i = 0;
        g.retain(|_| {
            let known = is_live[i];
            i += 1;
            if known {
                return true;
            }
            if room > 0 {
                room -= 1;
                return true;
            }
            false
        })
    }
}

#[cfg(test)]
mod wire_tests;

#[cfg(test)]
mod rate_tests {
    use super::*;
    use crate::config::overrides::{OverridesConfig, RateStrategy};

    fn distributor(strategy: RateStrategy, healthy: &Arc<HealthyDistributors>) -> Distributor {
        let mut cfg = OverridesConfig::default();
        cfg.defaults.ingestion.rate_limit_bytes = 1000;
        cfg.defaults.ingestion.burst_size_bytes = 1000;
        cfg.defaults.ingestion.rate_strategy = strategy;
        let overrides = Overrides::new(&cfg).unwrap();
        Distributor::new(None, Arc::new(Metrics::default()), overrides)
            .with_healthy(healthy.clone())
    }

    /// Bytes admitted in 100-byte requests before the first refusal, from a full bucket.
    fn admitted(d: &Distributor, tenant: &TenantId) -> u64 {
        let mut n = 0;
        while d.admit(tenant, 100, || 1).is_ok() {
            n += 100;
            assert!(n < 100_000, "never refused");
        }
        n
    }

    #[test]
    fn global_rate_is_shared_by_healthy_distributors() {
        let tenant = TenantId::new("t").unwrap();
        let healthy = Arc::new(HealthyDistributors::default());
        healthy.set(2);
        let d = distributor(RateStrategy::Global, &healthy);
        // The burst is the distributor's own: the first second's allowance is unchanged.
        assert_eq!(admitted(&d, &tenant), 1000);
        match d.admit(&tenant, 100, || 1) {
            Err(PushError::RateLimited {
                rate, retry_after, ..
            }) => {
                assert_eq!(rate, 500, "half the tenant's rate on each of 2");
                // 100 bytes at 500 B/s, less what refilled since the bucket emptied.
                assert!(retry_after <= Duration::from_millis(200));
                assert!(retry_after > Duration::from_millis(150), "{retry_after:?}");
            }
            other => panic!("expected a rate refusal, got {other:?}"),
        }
        // A distributor leaving gives the survivor the whole rate back.
        healthy.set(1);
        match d.admit(&tenant, 100, || 1) {
            Err(PushError::RateLimited { rate, .. }) => assert_eq!(rate, 1000),
            other => panic!("expected a rate refusal, got {other:?}"),
        }
        healthy.set(0);
        assert_eq!(healthy.get(), 1, "this distributor always counts itself");
    }

    /// An ingester without room refuses an export by its encoded size before it is decoded,
    /// and the refusal takes nothing from the tenant's rate.
    #[test]
    fn a_full_ingester_refuses_before_decode_without_taking_the_rate() {
        use crate::backend::Backend;
        use crate::block::BlockConfig;
        use crate::config::IngesterConfig;
        use crate::ingester::wal::Wal;

        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let (wal, _) = Wal::open(dir.path(), metrics.clone()).unwrap();
        let ingester = Ingester::new(
            IngesterConfig {
                max_live_bytes: 150,
                ..IngesterConfig::default()
            },
            Arc::new(wal),
            Backend::memory(),
            BlockConfig::default(),
            metrics.clone(),
            Arc::new(|_| {}),
        );
        let mut cfg = OverridesConfig::default();
        cfg.defaults.ingestion.rate_limit_bytes = 1000;
        cfg.defaults.ingestion.burst_size_bytes = 1000;
        let d = Distributor::new(
            Some(ingester),
            metrics.clone(),
            Overrides::new(&cfg).unwrap(),
        );
        let tenant = TenantId::new("t").unwrap();
        for _ in 0..20 {
            match d.admit(&tenant, 200, || 7) {
                Err(PushError::Ingest(IngestError::LiveBytesExceeded { limit, .. })) => {
                    assert_eq!(limit, 150)
                }
                other => panic!("expected a memory refusal, got {other:?}"),
            }
        }
        // Still a full bucket, and what fits is admitted.
        assert_eq!(admitted(&d, &tenant), 1000);
        let text = metrics.render();
        assert!(
            text.lines()
                .any(|l| l.contains("live_bytes_exceeded") && l.ends_with(" 140")),
            "20 refusals of 7 spans counted"
        );
    }

    #[test]
    fn local_rate_ignores_other_distributors() {
        let tenant = TenantId::new("t").unwrap();
        let healthy = Arc::new(HealthyDistributors::default());
        healthy.set(4);
        let d = distributor(RateStrategy::Local, &healthy);
        assert_eq!(admitted(&d, &tenant), 1000);
        match d.admit(&tenant, 100, || 1) {
            Err(PushError::RateLimited { rate, .. }) => assert_eq!(rate, 1000),
            other => panic!("expected a rate refusal, got {other:?}"),
        }
    }
}
