//! Timing helpers for search evaluation (ignored by default).

use std::time::Instant;

use super::tests_support::*;
use crate::block::{self, BlockConfig};

/// `cargo test --release --lib columnar_search_speed -- --ignored --nocapture`
#[test]
#[ignore]
fn columnar_search_speed() {
    let traces = block::synth::realistic_traces(10_000, 7);
    let spans: usize = traces
        .iter()
        .map(|t| crate::model::span_count(&t.batches))
        .sum();
    let tenant = crate::model::TenantId::new("t").unwrap();
    let bytes = block::encode_block(
        &tenant,
        uuid::Uuid::nil(),
        0,
        traces,
        &BlockConfig::default(),
    )
    .unwrap()
    .data;
    eprintln!("{spans} spans, {} bytes", bytes.len());
    for q in [
        "{ duration > 500ms }",
        "{ status = error }",
        "{ resource.service.name = \"checkout\" }",
        "{ span.http.route =~ \"/api/.*\" }",
        "{ resource.service.name = \"frontend\" } >> { status = error }",
        "{ } | count() > 40",
    ] {
        let p = params(q, None).unwrap();
        let t = Instant::now();
        let decoded = decode_only(&p, &bytes);
        let dec = t.elapsed();
        let t = Instant::now();
        let (hits, _) = columnar_path(&p, &bytes);
        let col = t.elapsed();
        let t = Instant::now();
        let old = otlp_path(&p, &bytes);
        let otlp = t.elapsed();
        assert_eq!(hits.len(), old.len());
        eprintln!(
            "{q:70} hits {:6} decode {:6.1} ms ({decoded} B) columnar {:7.1} ms otlp {:7.1} ms",
            hits.len(),
            dec.as_secs_f64() * 1e3,
            col.as_secs_f64() * 1e3,
            otlp.as_secs_f64() * 1e3
        );
    }
}
