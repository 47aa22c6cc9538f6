//! Entry points for the fuzz targets in `fuzz/`: each takes arbitrary bytes, runs them
//! through the same code a request or a bucket object would reach, and checks a few
//! invariants. Bad input must come back as an error; a panic here is a bug.
//!
//! The fuzz targets are one-line calls into this module, and the unit test below replays
//! the committed seed corpora (`fuzz/corpus/<target>/`) through the same functions, so a
//! plain `cargo test` catches regressions without cargo-fuzz.

use bytes::Bytes;
use prost::Message;

use crate::block::{
    decode_footer, find_trace, find_trace_in_pages, plan_id_probe, plan_lookup, probe_id_in_pages,
    read_all_traces, row_group_byte_range, LookupPlan,
};
use crate::model::{group_by_trace, ExportTraceServiceRequest, ResourceSpans, TraceId};

/// The system allocator with a ceiling on any single allocation: the fuzz targets install it
/// so that a size taken from corrupt input (a length prefix, a row count) aborts the run
/// with the input saved, as libFuzzer's `-malloc_limit_mb` does under a sanitizer, which
/// these builds run without.
pub struct CappedAlloc {
    max: usize,
}

impl CappedAlloc {
    pub const fn new(max: usize) -> Self {
        Self { max }
    }

    fn check(&self, size: usize) {
        if size > self.max {
            use std::io::Write;
            // No formatting: that could allocate inside the allocator.
            let _ = std::io::stderr().write_all(b"fuzzing: single allocation over the cap\n");
            std::process::abort();
        }
    }
}

// SAFETY: forwards to the system allocator unchanged; only refuses (aborts on) large sizes.
unsafe impl std::alloc::GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        self.check(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        self.check(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        self.check(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets, by the name of their folder under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("otlp_protobuf", otlp_protobuf),
    ("otlp_json", otlp_json),
    ("traceql", traceql),
    ("trace_id", trace_id),
    ("block", block),
];

/// An OTLP/HTTP or gRPC protobuf body, decoded as the receivers decode it, then regrouped
/// by trace as the distributor does.
pub fn otlp_protobuf(data: &[u8]) {
    let raw = bytes::Bytes::copy_from_slice(data);
    // The receivers group protobuf exports from their bytes: whatever that accepts must
    // decode (or a cut would fail on an acknowledged span), into the same grouping.
    let wire = crate::model::group_encoded(&raw);
    match ExportTraceServiceRequest::decode(data) {
        Ok(req) => {
            // The receivers' pre-decode estimate accepts what prost accepts and counts the
            // same spans, so its limits apply to exactly the spans that would be decoded.
            let est = crate::receiver::admission::estimate_protobuf(data)
                .expect("the estimate accepts what prost decodes");
            assert_eq!(est.spans, spans_in(&req.resource_spans), "estimated spans");
            if let Ok(w) = wire {
                let g = group_by_trace(&req.resource_spans);
                assert_eq!(w.accepted, g.accepted, "accepted spans");
                assert_eq!(w.rejected, g.rejected, "rejected spans");
                assert_eq!(w.traces().len(), g.traces().len(), "traces");
                for (a, b) in w.traces().iter().zip(g.traces()) {
                    assert_eq!(a.id, b.id);
                    // Compared encoded: a NaN double attribute is never equal to itself.
                    let encoded = |f: &crate::model::Fragments| {
                        f.decode()
                            .ok()
                            .map(|rs| rs.iter().map(Message::encode_to_vec).collect::<Vec<_>>())
                    };
                    assert_eq!(encoded(&a.data), encoded(&b.data), "fragments");
                }
            }
            distribute(&req);
        }
        Err(e) => assert!(wire.is_err(), "grouped bytes prost refuses: {e}"),
    }
}

/// An OTLP/HTTP JSON body, decoded as the HTTP receiver decodes it, then distributed.
pub fn otlp_json(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<ExportTraceServiceRequest>(data) {
        // Each decoded span comes from a JSON object the receivers' estimate counted.
        let est = crate::receiver::admission::estimate_json(data);
        let spans = spans_in(&req.resource_spans);
        assert!(
            est.bytes >= spans * std::mem::size_of::<crate::model::Span>(),
            "estimate {est:?} below {spans} spans"
        );
        distribute(&req);
    }
}

/// The distributor's validation and regrouping: every span is either accepted into exactly
/// one trace fragment or counted as rejected, and fragments decode back to what went in.
fn distribute(req: &ExportTraceServiceRequest) {
    let g = group_by_trace(&req.resource_spans);
    let total = spans_in(&req.resource_spans);
    assert_eq!(
        g.accepted + g.rejected,
        total,
        "every span is accounted for"
    );
    let mut regrouped = 0;
    for t in g.traces() {
        let batches = t
            .data
            .decode()
            .expect("a fragment the distributor encoded decodes");
        let n = spans_in(&batches);
        assert_eq!(n, t.spans, "fragment holds the spans counted for it");
        for s in batches
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            assert_eq!(TraceId::from_bytes(&s.trace_id).ok(), Some(t.id));
        }
        regrouped += n;
    }
    assert_eq!(regrouped, g.accepted, "accepted spans all land in a trace");
}

fn spans_in(batches: &[ResourceSpans]) -> usize {
    batches
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// A TraceQL query: parse (which runs the static checks); an accepted query renders to a
/// canonical form that parses again to the same tree.
pub fn traceql(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(query) = crate::traceql::parse(text) else {
        return;
    };
    let rendered = query.to_string();
    match crate::traceql::parse(&rendered) {
        Ok(again) => assert_eq!(again, query, "{text:?} renders as {rendered:?}"),
        // Rendering adds parentheses (`- -x` becomes `-(-x)`), so a query near the nesting
        // limit can render past it: a resource limit, not a grammar disagreement.
        Err(e) if e.to_string().contains("nests too deeply") => {}
        Err(e) => panic!("{text:?} renders as {rendered:?}, which does not parse: {e}"),
    }
}

/// A trace ID from a URL path, by the API's hex rules: an accepted ID renders as 32 hex
/// characters that parse back to the same ID.
pub fn trace_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = TraceId::parse_hex(text) {
        let hex = id.to_hex();
        assert_eq!(hex.len(), 32);
        assert_eq!(TraceId::parse_hex(&hex), Ok(id));
    }
}

/// Lets panics raised inside the Parquet and Arrow decoders unwind to the
/// `catch_unwind` guard the block reader wraps them in (it turns them into
/// `BlockError::Corrupt`), instead of libFuzzer's hook aborting on them. A panic anywhere
/// else still goes to the previous hook. Call once, from a fuzz target's `init`.
pub fn tolerate_decoder_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_decoder = info.location().is_some_and(|l| {
            let f = l.file();
            ["/parquet-", "/arrow-"].iter().any(|c| f.contains(c))
        });
        if !in_decoder && !raised_by_decoder() {
            previous(info);
        }
    }));
}

/// Whether the first frame below the panic machinery and the standard library is Parquet
/// or Arrow code: a decoder calling `Vec::with_capacity` with a size from a corrupt page
/// panics ("capacity overflow") at a line of `alloc`, not of the decoder.
fn raised_by_decoder() -> bool {
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    let mut past_panic = false;
    for line in trace.lines() {
        let Some((n, sym)) = line.trim_start().split_once(": ") else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let sym = sym.trim_start_matches('<');
        if sym.contains("panic_fmt") || sym.contains("begin_panic") {
            past_panic = true;
            continue;
        }
        let in_std = ["core::", "alloc::", "std::", "__rustc"]
            .iter()
            .any(|p| sym.starts_with(p));
        if past_panic && !in_std {
            return sym.starts_with("parquet::") || sym.starts_with("arrow");
        }
    }
    false
}

/// A (corrupted) `data.parquet`: read whole, by footer and row group, and by page index,
/// as compaction, the querier's row-group lookup, its tag scan and its page lookup do. Every path must
/// return an error or traces, never panic.
pub fn block(data: &[u8]) {
    let file = Bytes::copy_from_slice(data);
    let file_len = file.len() as u64;
    // An ID to look up: the first one the file claims to hold, or one that cannot be there.
    let id = match read_all_traces(file.clone()) {
        Ok(traces) => traces.first().map(|t| t.id),
        Err(_) => None,
    }
    .unwrap_or(TraceId([0x5a; 16]));
    let Ok(md) = decode_footer(file.clone(), file_len) else {
        return;
    };
    for rg in 0..md.num_row_groups() {
        if let Ok(r) = row_group_byte_range(&md, rg) {
            if let Some(bytes) = file.get(r.start as usize..r.end as usize) {
                let bytes = Bytes::copy_from_slice(bytes);
                let _ = find_trace(md.clone(), rg, bytes.clone(), r.start, &id);
                // The tag scan's projected read: one column and what ties spans together.
                let name = format!("{}name", crate::block::paths::SPAN);
                let keep = |p: &str| p == name;
                if let Ok(traces) = crate::block::row_group_traces_projected(
                    md.clone(),
                    rg,
                    bytes,
                    r.start,
                    file_len,
                    3,
                    &keep,
                ) {
                    traces.take_while(Result::is_ok).for_each(drop);
                }
            }
        }
        let pages = |plan: &crate::block::PageRead| -> Option<Vec<Bytes>> {
            plan.ranges
                .iter()
                .map(|r| file.get(r.start as usize..r.end as usize))
                .map(|b| b.map(Bytes::copy_from_slice))
                .collect()
        };
        if let Ok(LookupPlan::Pages(plan)) = plan_lookup(&md, rg, &id) {
            if let Some(fetched) = pages(&plan) {
                let _ = find_trace_in_pages(md.clone(), &plan, fetched, file_len, &id);
            }
        }
        // A sliced block's lookup probes the trace_id page of each candidate first.
        if let Ok(LookupPlan::Pages(plan)) = plan_id_probe(&md, rg, &id) {
            if let Some(fetched) = pages(&plan) {
                let _ = probe_id_in_pages(md.clone(), &plan, fetched, file_len, &id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::block::{encode_block, synth, BlockCompression, BlockConfig};
    use crate::model::TenantId;

    fn corpus_dir(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join("corpus")
            .join(target)
    }

    /// Synthetic traces cut down to two spans of one resource each: small seeds keep the
    /// fuzzer fast, and every column still holds data.
    fn small_traces(n: usize, seed: u64) -> Vec<crate::block::TraceInput> {
        let mut traces = synth::all_kinds_traces(n, seed);
        for t in &mut traces {
            t.batches.truncate(1);
            for rs in &mut t.batches {
                rs.scope_spans.truncate(1);
                for ss in &mut rs.scope_spans {
                    ss.spans.truncate(2);
                }
            }
        }
        traces
    }

    /// The seed block: a few small traces in pages of two rows, so the page-index lookup
    /// path has several pages to choose from.
    fn seed_block() -> Bytes {
        let tenant = TenantId::new("fuzz").unwrap();
        let cfg = BlockConfig {
            row_group_size_bytes: 4_000,
            data_page_size_bytes: 512,
            data_page_rows: 2,
            data_page_spans: 0,
            trace_id_page_rows: 2,
            compression: BlockCompression::None,
            ..BlockConfig::default()
        };
        encode_block(&tenant, uuid::Uuid::nil(), 1, small_traces(4, 7), &cfg)
            .unwrap()
            .data
    }

    /// `VIVACE_WRITE_FUZZ_SEEDS=1 cargo test --lib fuzzing -- --ignored` rewrites the generated seeds
    /// (OTLP requests and the block) when their formats change.
    #[test]
    #[ignore = "writes the seed corpus; run with VIVACE_WRITE_FUZZ_SEEDS=1 when formats change"]
    fn write_generated_seeds() {
        if std::env::var_os("VIVACE_WRITE_FUZZ_SEEDS").is_none() {
            return;
        }
        std::fs::write(corpus_dir("block").join("seed.parquet"), seed_block()).unwrap();
        for (name, traces) in [
            ("all_kinds", small_traces(2, 3)),
            ("realistic", synth::realistic_traces(1, 5)),
        ] {
            let req = ExportTraceServiceRequest {
                resource_spans: traces.into_iter().flat_map(|t| t.batches).collect(),
            };
            std::fs::write(
                corpus_dir("otlp_protobuf").join(format!("{name}.pb")),
                req.encode_to_vec(),
            )
            .unwrap();
            std::fs::write(
                corpus_dir("otlp_json").join(format!("{name}.json")),
                serde_json::to_vec(&req).unwrap(),
            )
            .unwrap();
        }
    }

    /// Every committed seed goes through its target's entry point; a panic fails the test.
    #[test]
    fn seeds_replay_without_panics() {
        for (target, run) in TARGETS {
            let dir = corpus_dir(target);
            let mut seeds = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{target}: seed {path:?} panicked");
                seeds += 1;
            }
            assert!(seeds > 0, "{target}: no seeds in {dir:?}");
        }
    }

    /// The committed seed block is a valid block, so mutations of it start from real
    /// structure.
    #[test]
    fn seed_block_is_valid() {
        let path = corpus_dir("block").join("seed.parquet");
        let data = Bytes::from(std::fs::read(&path).unwrap());
        let traces = read_all_traces(data.clone()).unwrap();
        assert_eq!(traces.len(), 4);
        let md = decode_footer(data.clone(), data.len() as u64).unwrap();
        assert!(md.page_index().is_some(), "seed block carries page indexes");
        let id = traces[2].id;
        let plan = (0..md.num_row_groups())
            .find_map(|rg| match plan_lookup(&md, rg, &id) {
                Ok(LookupPlan::Pages(p)) => Some(p),
                _ => None,
            })
            .expect("page-index plan for a trace in the block");
        let fetched = plan
            .ranges
            .iter()
            .map(|r| data.slice(r.start as usize..r.end as usize))
            .collect();
        let found = find_trace_in_pages(md.clone(), &plan, fetched, data.len() as u64, &id)
            .unwrap()
            .expect("trace found by page lookup");
        assert_eq!(found, traces[2].batches);
    }

    #[test]
    fn entry_points_check_their_invariants() {
        // Shorter trace IDs are padded, so the regrouped fragment holds a 16-byte ID; the
        // check must compare IDs, not bytes.
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![crate::model::ScopeSpans {
                    spans: vec![
                        crate::model::Span {
                            trace_id: vec![1; 16],
                            span_id: vec![2; 8],
                            ..Default::default()
                        },
                        crate::model::Span {
                            trace_id: vec![0; 16],
                            span_id: vec![2; 8],
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        otlp_protobuf(&req.encode_to_vec());
        let g = group_by_trace(&req.resource_spans);
        assert_eq!((g.accepted, g.rejected), (1, 1));
        trace_id(b"0123456789abcdefABCDEF0123456789");
        traceql(b"{ span.http.status_code >= 500 } | count() > 2");
    }

    /// A NaN double attribute (the fuzzer found one in 15 s) is not a mismatch between the
    /// two groupings: NaN is never equal to itself, its encoding is.
    #[test]
    fn a_nan_attribute_groups_the_same_both_ways() {
        use crate::model::{any_value, AnyValue, KeyValue};
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![crate::model::ScopeSpans {
                    spans: vec![crate::model::Span {
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        attributes: vec![KeyValue {
                            key: "d".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::DoubleValue(f64::NAN)),
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        otlp_protobuf(&req.encode_to_vec());
    }
}
