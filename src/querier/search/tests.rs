//! Search over memory and blocks agrees, hit for hit.

use bytes::Bytes;

use super::tests_support::*;

use super::*;
use crate::block::{self, BlockConfig, TraceInput};
use crate::model::{any_value, AnyValue, KeyValue, Resource, ResourceSpans, ScopeSpans, Span};
use crate::traceql::engine_tests::{cases, dataset};

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// Traces where dedicated attribute names hold other types or repeat, so the generic
/// list must be consulted next to the dedicated column.
fn dedicated_edge_cases() -> Vec<(String, Vec<ResourceSpans>)> {
    use any_value::Value as V;
    let span = |id: u8, parent: u8, name: &str, attrs: Vec<KeyValue>| Span {
        trace_id: vec![40; 16],
        span_id: vec![40, id, 0, 0, 0, 0, 0, 0],
        parent_span_id: if parent == 0 {
            Vec::new()
        } else {
            vec![40, parent, 0, 0, 0, 0, 0, 0]
        },
        name: name.into(),
        start_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(id) * 1_000_000,
        end_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(id) * 3_000_000,
        attributes: attrs,
        ..Default::default()
    };
    let batches = vec![
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", V::IntValue(7)),
                    kv("k8s.pod.name", V::StringValue("pod-1".into())),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span(
                        1,
                        0,
                        "typed",
                        vec![
                            kv("http.status_code", V::StringValue("200".into())),
                            kv("http.method", V::IntValue(3)),
                            kv("http.method", V::StringValue("GET".into())),
                            kv("http.route", V::StringValue("/first".into())),
                            kv("http.route", V::StringValue("/second".into())),
                        ],
                    ),
                    span(
                        2,
                        1,
                        "child",
                        vec![kv("http.status_code", V::IntValue(503))],
                    ),
                ],
                ..Default::default()
            }],
            ..Default::default()
        },
        ResourceSpans {
            resource: None,
            scope_spans: vec![ScopeSpans {
                spans: vec![span(3, 2, "no-resource", vec![])],
                ..Default::default()
            }],
            ..Default::default()
        },
    ];
    // Every parent missing: no root, so no root names in either path.
    let orphans = ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv("service.name", V::StringValue("orphans".into()))],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans: [4, 5]
                .into_iter()
                .map(|id| Span {
                    trace_id: vec![41; 16],
                    ..span(id, 9, "orphan", vec![])
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    vec![("t40".into(), batches), ("t41".into(), vec![orphans])]
}

const EXTRA_QUERIES: [&str; 13] = [
    "{ resource.service.name = \"orphans\" }",
    "{ span.http.status_code = \"200\" }",
    "{ span.http.status_code = 503 }",
    "{ span.http.method = 3 }",
    "{ span.http.method = \"GET\" }",
    "{ span.http.route = \"/first\" }",
    "{ .http.route = \"/second\" }",
    "{ resource.service.name = 7 }",
    "{ resource.k8s.pod.name = \"pod-1\" }",
    "{ resource.service.name = \"frontend\" } >> { status = error }",
    "{ resource.service.name = \"nope\" }",
    "{ trace:rootService = \"frontend\" && trace:id != nil } | select(span:parentID)",
    "{ } | by(resource.service.name) | count() > 1",
];

/// Every engine case's trace and the edge cases of dedicated columns.
fn all_traces() -> Vec<(String, Vec<ResourceSpans>)> {
    let mut data = dataset();
    data.extend(dedicated_edge_cases());
    data
}

/// Every engine case's query and the extra ones.
fn all_queries() -> Vec<&'static str> {
    cases()
        .into_iter()
        .map(|(q, _)| q)
        .chain(EXTRA_QUERIES)
        .collect()
}

/// A trace's encoded chunks as a live trace holds them: one per resource.
fn live_chunks(batches: &[ResourceSpans]) -> Vec<Bytes> {
    use prost::Message;
    batches
        .iter()
        .map(|b| {
            crate::model::TracesData {
                resource_spans: vec![b.clone()],
            }
            .encode_to_vec()
            .into()
        })
        .collect()
}

fn encode(data: &[(String, Vec<ResourceSpans>)], cfg: &BlockConfig) -> Bytes {
    let traces: Vec<TraceInput> = data
        .iter()
        .map(|(_, batches)| {
            let first = &batches[0].scope_spans[0].spans[0];
            let mut id = [0u8; 16];
            id.copy_from_slice(&first.trace_id);
            TraceInput {
                id: TraceId(id),
                batches: batches.clone(),
            }
        })
        .collect();
    let tenant = TenantId::new("t").unwrap();
    block::encode_block(&tenant, uuid::Uuid::nil(), 0, traces, cfg)
        .unwrap()
        .data
}

#[test]
fn columnar_search_matches_the_otlp_path_on_every_engine_case() {
    let data = all_traces();
    let one_group = BlockConfig::default();
    let many_groups = BlockConfig {
        row_group_size_bytes: 1,
        ..BlockConfig::default()
    };
    // Plain string pages: search reads span names as a dictionary, which parquet then
    // builds from the values.
    let plain_strings = BlockConfig {
        string_dictionary: false,
        ..BlockConfig::default()
    };
    let queries = all_queries();
    for cfg in [one_group, many_groups, plain_strings] {
        let bytes = encode(&data, &cfg);
        let (mut compared, mut hits) = (0, 0);
        // Queries whose hits' span columns are read apart in a one-row-group block, and
        // queries whose are decoded for every row (`block::reads_hits_apart`).
        let (mut apart, mut every_row) = (0, 0);
        for q in &queries {
            let Some(params) = params(q, None) else {
                continue;
            };
            let expected = otlp_path(&params, &bytes);
            let (actual, _) = columnar_path(&params, &bytes);
            assert_eq!(actual, expected, "query {q}");
            compared += 1;
            hits += expected.len();
            if !expected.is_empty() {
                match block::reads_hits_apart(expected.len(), data.len()) {
                    true => apart += 1,
                    false => every_row += 1,
                }
            }
        }
        assert!(
            compared >= 80 && hits > 200,
            "{compared} queries, {hits} hits"
        );
        assert!(apart > 10 && every_row > 3, "{apart} / {every_row}");
    }
}

#[test]
fn row_groups_outside_the_range_or_without_the_service_are_skipped() {
    let data = dataset();
    let cfg = BlockConfig {
        row_group_size_bytes: 1,
        ..BlockConfig::default()
    };
    let bytes = encode(&data, &cfg);
    // Every row group holds one trace: the service filter prunes all but its traces.
    let p = params("{ resource.service.name = \"solo\" }", None).unwrap();
    let (hits, groups) = columnar_path(&p, &bytes);
    assert_eq!(hits.len(), 1);
    assert_eq!(groups, 1);
    assert_eq!(hits, otlp_path(&p, &bytes));
    // A range long before the data set: nothing is read.
    let r = TimeRange {
        start_s: 1_000,
        end_s: 2_000,
    };
    let p = params("{}", Some(r)).unwrap();
    assert_eq!(columnar_path(&p, &bytes), (Vec::new(), 0));
}

#[test]
fn row_groups_are_pruned_by_duration_and_status_statistics() {
    let data = dataset();
    let cfg = BlockConfig {
        row_group_size_bytes: 1,
        ..BlockConfig::default()
    };
    let bytes = encode(&data, &cfg);
    let (all, groups) = columnar_path(&params("{}", None).unwrap(), &bytes);
    assert_eq!(groups, all.len());
    // No span lasts an hour: nothing is read, in either operand order.
    for q in ["{ duration > 1h }", "{ 1h <= duration }"] {
        let p = params(q, None).unwrap();
        assert_eq!(columnar_path(&p, &bytes), (Vec::new(), 0), "{q}");
    }
    // Only traces with an error span are read, and the answer is unchanged.
    let p = params("{ status = error }", None).unwrap();
    let (hits, read) = columnar_path(&p, &bytes);
    assert!(!hits.is_empty() && read < groups, "{read} of {groups}");
    assert_eq!(hits, otlp_path(&p, &bytes));
    // Either side of `||` may match: no pruning on the error side alone.
    let p = params("{ status = error || duration > 1h }", None).unwrap();
    assert_eq!(columnar_path(&p, &bytes).0, otlp_path(&p, &bytes));
}

/// The live-trace prefilter is a necessary condition: on every engine case, a trace it
/// skips (its encoded spans lack a string the query requires) has no hit when evaluated.
#[test]
fn live_traces_skipped_for_a_missing_string_never_match() {
    let data = all_traces();
    let queries = all_queries();
    let (mut skipped, mut queries_skipping) = (0, 0);
    for q in &queries {
        let Some(params) = params(q, None) else {
            continue;
        };
        let columns = block::SearchColumns::for_query(&params.query).unwrap();
        let before = skipped;
        for (i, (_, batches)) in data.iter().enumerate() {
            if columns.literals_possible(&live_chunks(batches)) {
                continue;
            }
            skipped += 1;
            let mut p = Partial::default();
            params.evaluate(TraceId([i as u8; 16]), batches, &mut p);
            assert!(
                p.hits.is_empty(),
                "query {q} skipped trace {i}, which matches"
            );
        }
        queries_skipping += usize::from(skipped > before);
    }
    assert!(
        skipped > 500 && queries_skipping > 50,
        "{skipped} skips over {queries_skipping} queries"
    );
}

/// A live trace evaluated from its encoded chunks gives the hits its decoded structs give,
/// on every engine case: spansets, reported attributes, root, service stats.
#[test]
fn live_traces_read_from_their_bytes_match_the_decoded_path_on_every_engine_case() {
    let data = all_traces();
    let queries = all_queries();
    let chunks: Vec<Vec<Bytes>> = data.iter().map(|(_, b)| live_chunks(b)).collect();
    let (mut compared, mut hits) = (0, 0);
    for q in &queries {
        for spss in [0, 2] {
            let Some(mut params) = params(q, None) else {
                continue;
            };
            params.spss = spss;
            let prepared = crate::traceql::engine::Prepared::new(&params.query);
            let (mut wire, mut decoded) = (Partial::default(), Partial::default());
            for (i, ((_, batches), chunks)) in data.iter().zip(&chunks).enumerate() {
                let id = TraceId([i as u8; 16]);
                let trace = crate::traceql::WireTrace::new(chunks).expect("parses");
                params.evaluate_wire(&prepared, id, &trace, &mut wire);
                params.evaluate(id, batches, &mut decoded);
            }
            assert_eq!(wire.hits, decoded.hits, "query {q}, spss {spss}");
            assert_eq!(wire.metrics, decoded.metrics, "query {q}");
            compared += 1;
            hits += decoded.hits.len();
        }
    }
    assert!(
        compared >= 160 && hits > 400,
        "{compared} runs, {hits} hits"
    );
}
