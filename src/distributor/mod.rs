//! The distributor: validates incoming spans, regroups them by trace, and hands them to the
//! ingester, then (when the tenant has metrics-generator processors) the accepted request to
//! the generator. Invalid spans are refused one by one (reported back through OTLP
//! `partial_success`), never silently dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use bytes::Bytes;
use prost::Message;

use crate::generator::Generator;
use crate::ingester::{wal, IngestError, Ingester, TraceBatch};

/// Where accepted traces go instead of the ingester's WAL when an ingest log is configured
/// (`src/ingest/` implements it on Kafka). Defined here so the distributor does not depend
/// on the log's client.
#[async_trait::async_trait]
pub trait TraceLog: Send + Sync + 'static {
    /// Returns once the log has acknowledged every trace (acks=all): only then may the
    /// export be acknowledged.
    async fn write(&self, tenant: &TenantId, traces: Vec<TraceBatch>)
        -> Result<(), LogUnavailable>;
}

/// The ingest log refused or did not acknowledge in time: retryable, never an ack.
#[derive(Debug, thiserror::Error)]
#[error("ingest log unavailable: {0}")]
pub struct LogUnavailable(pub String);
use crate::metrics::Metrics;
use crate::model::{ExportTraceServiceRequest, Fragments, ResourceSpans, Span, TenantId, TraceId};
use crate::overrides::{Limits, Overrides};

#[derive(Debug, thiserror::Error)]
pub enum PushError {
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
pub struct PushOutcome {
    pub accepted: usize,
    pub rejected: usize,
    /// Why spans were rejected; empty when none were.
    pub message: String,
}

pub struct Distributor {
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

impl Distributor {
    pub fn new(
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
        }
    }

    /// Sends accepted traces to `log` instead of the ingester's WAL.
    pub fn with_log(mut self, log: Arc<dyn TraceLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// A distributor with no ingester in its process: everything goes to `log`.
    pub fn log_only(
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
        }
    }

    /// Feeds accepted requests of tenants with generator processors to `generator`.
    pub fn with_generator(mut self, generator: Option<Arc<Generator>>) -> Self {
        self.generator = generator;
        self
    }

    fn check_rate(&self, tenant: &TenantId, limits: &Limits, size: u64) -> Result<(), PushError> {
        let (rate, burst) = (
            limits.ingestion.rate_limit_bytes,
            limits
                .ingestion
                .burst_size_bytes
                .max(limits.ingestion.rate_limit_bytes),
        );
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
    /// export over the rate costs no decode; `spans` counts what a refusal refuses (only
    /// called then). Follow with [`Distributor::push_admitted`].
    pub fn admit(
        &self,
        tenant: &TenantId,
        size: u64,
        spans: impl FnOnce() -> usize,
    ) -> Result<(), PushError> {
        let limits = self.overrides.limits(tenant);
        self.check_rate(tenant, &limits, size).inspect_err(|_| {
            self.metrics
                .spans_refused
                .add(tenant.as_str(), "rate_limited", spans() as u64);
        })
    }

    /// Pushes a decoded request. `raw` is its protobuf encoding when the caller has it (gRPC
    /// and OTLP/HTTP protobuf), so the WAL stores the bytes received without re-encoding.
    pub async fn push(
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

    /// Pushes a request whose size [`Distributor::admit`] already took from the rate.
    pub async fn push_admitted(
        &self,
        tenant: &TenantId,
        raw: Bytes,
        req: ExportTraceServiceRequest,
    ) -> Result<PushOutcome, PushError> {
        let limits = self.overrides.limits(tenant);
        let mut grouped = group_by_trace(&req.resource_spans);
        // The request is kept (not copied) only for a tenant whose spans feed the generator.
        let generator = self
            .generator
            .as_ref()
            .filter(|_| !limits.metrics_generator.processors.is_empty());
        let for_generator = match generator {
            Some(_) => Some(req),
            None => {
                drop(req);
                None
            }
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
        if grouped.traces.is_empty() {
            return Ok(outcome);
        }
        let kept: Option<HashSet<TraceId>> =
            (too_large + over_live > 0).then(|| grouped.traces.iter().map(|t| t.id).collect());
        let offer = |req: Option<ExportTraceServiceRequest>| {
            if let (Some(g), Some(req)) = (generator, req) {
                g.offer(tenant, req, raw.len(), kept);
            }
        };
        if let Some(log) = &self.log {
            // Limits were applied above; what is left is acknowledged only once the log
            // has every record.
            return match log.write(tenant, grouped.traces).await {
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
        // The WAL must hold exactly what was accepted, so a replay cannot bring back spans the
        // exporter was told were rejected.
        let payload = if too_large + over_live > 0 {
            let mut kept = Fragments::default();
            for t in &grouped.traces {
                kept.extend(&t.data);
            }
            wal::encode_payload(tenant, &kept.concat())
        } else {
            wal::encode_payload(tenant, &raw)
        };
        match ingester.push(payload, tenant, grouped.traces).await {
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
        let mut refused = 0;
        g.traces.retain(|t| {
            let fits = ingester.live_trace_bytes(tenant, &t.id) + t.data.len() <= max;
            if !fits {
                refused += t.spans;
            }
            fits
        });
        refused
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
        if g.traces.is_empty() {
            return 0;
        }
        let ids: Vec<TraceId> = g.traces.iter().map(|t| t.id).collect();
        let (live, is_live) = ingester.live_traces(tenant, &ids);
        let mut room = max.saturating_sub(live);
        let mut refused = 0;
        let mut i = 0;
        g.traces.retain(|t| {
            let known = is_live[i];
            i += 1;
            if known {
                return true;
            }
            if room > 0 {
                room -= 1;
                return true;
            }
            refused += t.spans;
            false
        });
        refused
    }
}

/// Spans of a request regrouped by trace, with the refused ones counted.
#[derive(Default)]
pub struct Grouped {
    pub traces: Vec<TraceBatch>,
    pub accepted: usize,
    pub rejected: usize,
    pub bad_trace_id: usize,
    pub bad_span_id: usize,
}

impl Grouped {
    fn message(&self) -> String {
        let mut parts = Vec::new();
        if self.bad_trace_id > 0 {
            parts.push(format!(
                "{} spans with an invalid trace id (must be 16 bytes, not all zero)",
                self.bad_trace_id
            ));
        }
        if self.bad_span_id > 0 {
            parts.push(format!(
                "{} spans with an invalid span id (must be 8 bytes, not all zero)",
                self.bad_span_id
            ));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("rejected {}", parts.join(" and "))
        }
    }
}

fn valid_span_id(id: &[u8]) -> bool {
    id.len() == 8 && id.iter().any(|&b| b != 0)
}

/// Splits OTLP resource spans into one encoded fragment per trace, keeping each span under
/// its own resource and scope. Spans are encoded straight from the request: nothing is
/// cloned into new structs.
pub fn group_by_trace(resource_spans: &[ResourceSpans]) -> Grouped {
    let mut g = Grouped::default();
    let mut index: HashMap<TraceId, usize> = HashMap::new();
    let mut per_trace: Vec<(usize, Vec<&Span>)> = Vec::new();
    for rs in resource_spans {
        for ss in &rs.scope_spans {
            per_trace.clear();
            for span in &ss.spans {
                let id = match TraceId::from_bytes(&span.trace_id) {
                    Ok(id) if span.trace_id.len() == 16 => id,
                    _ => {
                        g.bad_trace_id += 1;
                        continue;
                    }
                };
                if !valid_span_id(&span.span_id) {
                    g.bad_span_id += 1;
                    continue;
                }
                g.accepted += 1;
                let t = *index.entry(id).or_insert_with(|| {
                    g.traces.push(TraceBatch {
                        id,
                        data: Fragments::default(),
                        spans: 0,
                    });
                    g.traces.len() - 1
                });
                // Requests usually carry few traces per scope: a short linear search wins.
                match per_trace.iter_mut().find(|(i, _)| *i == t) {
                    Some((_, v)) => v.push(span),
                    None => per_trace.push((t, vec![span])),
                }
            }
            for (t, spans) in &per_trace {
                g.traces[*t].spans += spans.len();
                g.traces[*t].data.push(
                    rs.resource.as_ref(),
                    &rs.schema_url,
                    ss.scope.as_ref(),
                    &ss.schema_url,
                    spans,
                );
            }
        }
    }
    g.rejected = g.bad_trace_id + g.bad_span_id;
    g
}

#[cfg(test)]
mod wire_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstrumentationScope, Resource, ScopeSpans};

    fn span(trace: u8, id: u8) -> Span {
        Span {
            trace_id: if trace == 0 {
                vec![1, 2, 3]
            } else {
                vec![trace; 16]
            },
            span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
            name: format!("span-{id}"),
            ..Default::default()
        }
    }

    #[test]
    fn groups_by_trace_and_counts_rejections() {
        let req = vec![
            ResourceSpans {
                resource: Some(Resource::default()),
                scope_spans: vec![
                    ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "a".into(),
                            ..Default::default()
                        }),
                        spans: vec![span(1, 1), span(2, 2), span(1, 3), span(0, 4)],
                        schema_url: String::new(),
                    },
                    ScopeSpans {
                        scope: None,
                        spans: vec![span(1, 5), span(1, 0)],
                        schema_url: String::new(),
                    },
                ],
                schema_url: String::new(),
            },
            ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans: vec![span(2, 6)],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            },
        ];
        let g = group_by_trace(&req);
        assert_eq!(g.accepted, 5);
        assert_eq!(g.bad_trace_id, 1);
        assert_eq!(g.bad_span_id, 1);
        assert_eq!(g.traces.len(), 2);
        let t1 = &g.traces[0];
        assert_eq!(t1.id, TraceId([1; 16]));
        // one fragment per resource/scope group: span 1+3 in scope a, span 5 unnamed
        let b1 = t1.data.decode().unwrap();
        assert_eq!(b1.len(), 2);
        assert_eq!(b1[0].scope_spans[0].scope.as_ref().unwrap().name, "a");
        let names: Vec<_> = b1[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["span-1", "span-3"]);
        assert_eq!(b1[1].scope_spans[0].spans[0].name, "span-5");
        let b2 = g.traces[1].data.decode().unwrap();
        assert_eq!(b2.len(), 2);
        assert!(b2[1].resource.is_none());
        assert!(g.message().contains("invalid trace id"));
    }
}
