//! The generator's queueing and per-tenant settings, driven without a server.

use super::*;
use crate::config::overrides::{Limits, OverridesConfig};
use crate::model::{ResourceSpans, ScopeSpans, Span};

fn request(spans: usize) -> ExportTraceServiceRequest {
    let now = unix_ns();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (1..=spans as u8)
                    .map(|i| Span {
                        trace_id: vec![i; 16],
                        span_id: vec![i; 8],
                        name: "op".into(),
                        start_time_unix_nano: now - 1_000_000,
                        end_time_unix_nano: now,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn offer_never_blocks_skips_past_the_bound_and_only_accepted_traces_count() {
    let cfg = MetricsGeneratorConfig {
        max_queued_bytes: 100,
        ..Default::default()
    };
    let overrides = Overrides::new(&OverridesConfig {
        defaults: Limits {
            metrics_generator: GeneratorLimits {
                processors: vec![GeneratorProcessor::SpanMetrics],
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let metrics = Arc::new(Metrics::default());
    let g = Generator::start(&cfg, overrides, metrics.clone()).unwrap();
    let tenant = TenantId::new("t").unwrap();
    g.offer(&tenant, request(3), 1000, None);
    assert_eq!(metrics.generator.spans_discarded.get("queue_full"), 3);
    // Of four spans, the traces of two were refused by the distributor.
    let kept: HashSet<TraceId> = [TraceId([1; 16]), TraceId([3; 16])].into();
    g.offer(&tenant, request(4), 10, Some(kept));
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.generator.spans_received.get() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    g.stop.store(true, Ordering::Release);
    g.worker.lock().take().unwrap().join().unwrap();
    assert_eq!(metrics.generator.spans_received.get(), 2);
    // One label set: calls, size and 14 + 3 latency series.
    assert_eq!(metrics.generator.active_series.get(), 2 + 17);
    assert_eq!(g.queued.load(Ordering::Acquire), 0);
}

#[test]
fn per_tenant_settings_replace_the_defaults_and_bad_ones_are_refused() {
    let limits_yaml = "processors: [span-metrics]\nprocessor:\n  span_metrics:\n    dimensions: [region]\n    intrinsic_dimensions: {span_kind: false}\n";
    let limits: GeneratorLimits = serde_yaml_ng::from_str(limits_yaml).unwrap();
    let overrides = Overrides::new(&OverridesConfig::default()).unwrap();
    let (_tx, _rx) = sync_channel::<Job>(1);
    let mut w = Worker {
        cfg: MetricsGeneratorConfig::default(),
        filter: SpanFilter::default(),
        graph_filter: SpanFilter::default(),
        overrides,
        metrics: Arc::new(Metrics::default()),
        queued: Arc::new(AtomicUsize::new(0)),
        tenants: HashMap::new(),
        endpoints: Vec::new(),
        stop: Arc::new(AtomicBool::new(false)),
        prev_collect_ms: 0,
    };
    let tenant = TenantId::new("t").unwrap();
    let t = w.tenant(&tenant, &limits).unwrap();
    let mut budget = SeriesBudget::default();
    let req = request(1);
    let s = &req.resource_spans[0].scope_spans[0].spans[0];
    let sm = t.span_metrics.as_mut().unwrap();
    sm.push(&[], "svc", s, [1; 16], 1, &mut budget);
    let ext = Default::default();
    let mut e = Emitter::new(&ext, 10_000, 0);
    sm.collect(&mut e, 0);
    let names: Vec<&str> = e.out[0].labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["__name__", "service", "span_name", "status_code"]);
    assert_eq!(t.processor.span_metrics.dimensions, ["region"]);

    // Buckets that do not increase are refused; the previous settings stay.
    let bad: GeneratorLimits = serde_yaml_ng::from_str(
        "processors: [span-metrics]\nprocessor:\n  span_metrics:\n    histogram_buckets: [2, 1]\n",
    )
    .unwrap();
    let t = w.tenant(&tenant, &bad).unwrap();
    assert_eq!(t.processor.span_metrics.dimensions, ["region"]);
    let err = tenant_settings(&bad.processor, &MetricsGeneratorConfig::default().processor)
        .err()
        .unwrap();
    assert!(err.contains("histogram_buckets"), "{err}");
}
