//! Columnar search against the OTLP path: the same answers on the same blocks.

use arrow_array::Array;

use super::columns::{list, StrCol};
use super::*;
use crate::block::{encode_block, synth::realistic_traces, BlockConfig};
use crate::model::TenantId;

/// Whether the filter decode of the first row group holds span generic attributes.
fn decodes_span_attrs(query: &str) -> bool {
    decodes_span_column(query, "attrs")
}

/// The filter decode of the first row group of a block of realistic traces, for `query`.
fn first_filter_decode(query: &str) -> arrow_array::StructArray {
    let tenant = TenantId::new("t").unwrap();
    let traces = realistic_traces(50, 3);
    let data = encode_block(
        &tenant,
        uuid::Uuid::nil(),
        0,
        traces,
        &BlockConfig::default(),
    )
    .unwrap()
    .data;
    let md = super::super::decode_footer(data.clone(), data.len() as u64).unwrap();
    let columns = SearchColumns::for_query(&crate::traceql::parse(query).unwrap()).unwrap();
    let read = &columns.plan(&md, |_, _| true).unwrap()[0];
    let fetched = read
        .ranges
        .iter()
        .map(|r| data.slice(r.start as usize..r.end as usize))
        .collect();
    decode_row_group(
        md,
        &columns,
        read,
        Phase::Filter,
        fetched,
        data.len() as u64,
    )
    .unwrap()
}

/// The span column `name` of the filter decode of the first row group, if decoded.
fn decoded_span_column(query: &str, name: &str) -> Option<arrow_array::ArrayRef> {
    let root = first_filter_decode(query);
    let (_, rs) = list(&root, "resource_spans").unwrap();
    let (_, ss) = list(rs, "scope_spans").unwrap();
    let (_, sp) = list(ss, "spans").unwrap();
    sp.column_by_name(name).cloned()
}

/// Whether the filter decode of the first row group holds the span column `name`.
fn decodes_span_column(query: &str, name: &str) -> bool {
    decoded_span_column(query, name).is_some()
}

#[test]
fn nested_sets_are_decoded_only_for_tree_questions() {
    for (query, tree) in [
        ("{ span.http.route =~ \"/api/.*\" }", false),
        ("{ } | count() > 40", false),
        ("{ kind = server } && { kind = client }", false),
        ("{ resource.service.name = \"frontend\" } >> { }", true),
        ("{ parent.span.http.route = \"/x\" }", true),
        ("{ span:childCount > 1 }", true),
        ("{ span:parentID = \"00\" }", true),
    ] {
        assert_eq!(
            decodes_span_column(query, "nested_set_left"),
            tree,
            "{query}"
        );
    }
}

#[test]
fn generic_attributes_are_decoded_only_when_their_dictionary_may_hold_the_name() {
    // http.route always lands in its dedicated column: no generic key holds it.
    assert!(!decodes_span_attrs("{ span.http.route =~ \"/api/.*\" }"));
    // db.system has no dedicated column: the generic list must be read.
    assert!(decodes_span_attrs("{ span.db.system = \"postgresql\" }"));
    assert!(decodes_span_attrs(
        "{ span.http.route = \"/x\" || span.db.system = \"x\" }"
    ));
}

/// Search decodes span names dictionary-encoded: no copy of every name per decode.
#[test]
fn span_names_are_decoded_as_a_dictionary() {
    let root = first_filter_decode("{ name = \"x\" }");
    let block = ColumnarBlock::new(&root).unwrap();
    let Some(StrCol::Dict { keys, values }) = block.name else {
        panic!("span names not read as a dictionary");
    };
    assert!(
        keys.len() > 100 && values.len() < keys.len() / 4,
        "{} keys, {} values",
        keys.len(),
        values.len()
    );
    assert!(!block.name.unwrap().value(0).is_empty());
}

/// The status message, a string per span, is decoded only for queries that read it.
#[test]
fn status_messages_are_decoded_only_for_status_message_questions() {
    for (query, message) in [
        ("{ status = error }", false),
        ("{ } | by(status) | count() > 1", false),
        ("{ statusMessage = \"x\" }", true),
        ("{ status = error } | select(statusMessage)", true),
    ] {
        let status = decoded_span_column(query, "status")
            .unwrap_or_else(|| panic!("{query}: no status decoded"));
        let status = status
            .as_any()
            .downcast_ref::<arrow_array::StructArray>()
            .expect("status is a struct");
        assert!(status.column_by_name("code").is_some(), "{query}");
        assert_eq!(
            status.column_by_name("message").is_some(),
            message,
            "{query}"
        );
    }
}

/// A direct condition answers every span as the engine's generic evaluation does, and
/// conditions it cannot answer from one column are left to the engine.
/// The filter expression of `query`'s first stage, a single `{ ... }`.
fn filter(query: &str) -> crate::traceql::FieldExpr {
    let q = crate::traceql::parse(query).unwrap();
    match &q.pipeline.stages[0] {
        crate::traceql::Stage::Spanset(crate::traceql::SpansetExpr::Filter(f)) => {
            f.expr.clone().unwrap()
        }
        other => panic!("{query}: {other:?}"),
    }
}

/// Every span of a decoded row group, as the engine's view of one span.
fn every_span<'a>(c: &'a ColumnarBlock<'a>) -> Vec<super::view::Core<'a>> {
    use super::columns::range;
    let mut spans = Vec::new();
    for row in 0..c.len() {
        for r in range(c.rs_offsets, row) {
            for s in range(c.ss_offsets, r) {
                spans.extend(range(c.span_offsets, s).map(|g| super::view::Core { c, g, r, s }));
            }
        }
    }
    spans
}

#[test]
fn direct_conditions_agree_with_the_engine_span_by_span() {
    use super::direct::Direct;
    let root = first_filter_decode("{ status = error && duration > 1ms }");
    let c = ColumnarBlock::new(&root).unwrap();
    let mut held = 0;
    for query in [
        "{ status = error }",
        "{ status != error }",
        "{ status = ok }",
        "{ status = unset }",
        "{ error = status }",
        "{ duration > 1ms }",
        "{ duration <= 5ms }",
        "{ 2ms < duration }",
        "{ duration = 0ms }",
        "{ status = error || duration >= 3ms }",
        "{ status != unset && duration < 10ms }",
    ] {
        let e = filter(query);
        let d = Direct::new(&e, &c).unwrap_or_else(|| panic!("{query}: not direct"));
        for span in every_span(&c) {
            let engine = crate::traceql::matches(&e, &span);
            assert_eq!(d.holds(span.g), engine, "{query}: span {}", span.g);
            held += usize::from(engine);
        }
    }
    assert!(held > 0, "some span meets some condition");
    for query in [
        "{ duration > 1 }",
        "{ span.http.route = \"/x\" }",
        "{ status = error && name = \"x\" }",
        "{ kind = server }",
    ] {
        assert!(Direct::new(&filter(query), &c).is_none(), "{query}");
    }
}

#[test]
fn span_filters_agree_with_the_engine_span_by_span() {
    use super::direct::SpanFilter;
    let root = first_filter_decode("{ resource.service.name = \"frontend\" && status = error }");
    let c = ColumnarBlock::new(&root).unwrap();
    let (mut held, mut answered) = (0, 0);
    for query in [
        "{ resource.service.name = \"frontend\" }",
        "{ resource.service.name != \"frontend\" }",
        "{ \"checkout\" = resource.service.name }",
        "{ resource.service.name = \"nope\" }",
        "{ status = error }",
    ] {
        let e = filter(query);
        let f = SpanFilter::new(&e, &c).unwrap_or_else(|| panic!("{query}: not answered"));
        for span in every_span(&c) {
            let engine = crate::traceql::matches(&e, &span);
            if let Some(answer) = f.holds(span.g, span.r) {
                assert_eq!(answer, engine, "{query}: span {}", span.g);
                answered += 1;
            }
            held += usize::from(engine);
        }
    }
    assert!(held > 0 && answered > 0, "{held} held, {answered} answered");
    for query in [
        "{ resource.service.name > \"a\" }",
        "{ .service.name = \"frontend\" }",
        "{ span.service.name = \"frontend\" }",
        "{ parent.resource.service.name = \"frontend\" }",
        "{ resource.service.name = 3 }",
        "{ resource.service.name = \"a\" && status = error }",
    ] {
        assert!(SpanFilter::new(&filter(query), &c).is_none(), "{query}");
    }
}

#[test]
fn hit_columns_equal_the_stored_traces_of_the_rows_asked_for() {
    let tenant = TenantId::new("t").unwrap();
    // Pages of a few rows, so reading hits skips whole pages and records inside pages.
    let cfg = BlockConfig {
        data_page_size_bytes: 256,
        data_page_rows: 2,
        data_page_spans: 0,
        row_group_size_bytes: 64 << 10,
        ..BlockConfig::default()
    };
    let data = encode_block(
        &tenant,
        uuid::Uuid::nil(),
        0,
        realistic_traces(120, 7),
        &cfg,
    )
    .unwrap()
    .data;
    let stored = crate::block::read_all_traces(data.clone()).unwrap();
    let md = super::super::decode_footer(data.clone(), data.len() as u64).unwrap();
    let columns = SearchColumns::for_query(&crate::traceql::parse("{ }").unwrap()).unwrap();
    assert_eq!(columns.late.len(), 9, "{:?}", columns.late);
    let reads = columns.plan(&md, |_, _| true).unwrap();
    assert!(reads.len() > 1, "several row groups: {}", reads.len());
    let mut first_row = 0;
    let mut checked = 0;
    for read in &reads {
        let mut rows: Vec<usize> = (0..read.rows).step_by(3).collect();
        if rows.last() != Some(&(read.rows - 1)) {
            rows.push(read.rows - 1);
        }
        let fetch = |ranges: &[std::ops::Range<u64>]| -> Vec<bytes::Bytes> {
            ranges
                .iter()
                .map(|r| data.slice(r.start as usize..r.end as usize))
                .collect()
        };
        let len = data.len() as u64;
        let hits =
            read_hit_columns(&md, &columns, read, fetch(&read.late_ranges), len, &rows).unwrap();
        // The trace-level values as the bulk decode gives them.
        let filtered = decode_row_group(
            md.clone(),
            &columns,
            read,
            Phase::Filter,
            fetch(&read.ranges),
            len,
        );
        let late = decode_row_group(
            md.clone(),
            &columns,
            read,
            Phase::Report,
            fetch(&read.late_ranges),
            len,
        );
        let all = merge_columns(&filtered.unwrap(), &late.unwrap()).unwrap();
        let bulk = ColumnarBlock::new(&all).unwrap();
        for &row in &rows {
            let hit = hits.row(row).unwrap();
            let trace = &stored[first_row + row];
            assert_eq!(hit.trace_id(), Some(trace.id.0), "row {row}");
            assert_eq!(hit.root_names(), bulk.root_names(row), "row {row}");
            let stats: Vec<_> = hit.service_stats().unwrap().collect();
            assert_eq!(
                stats,
                bulk.service_stats(row).collect::<Vec<_>>(),
                "row {row}"
            );
            assert!(!stats.is_empty(), "row {row} has services");
            let spans: Vec<_> = trace
                .batches
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .collect();
            assert_eq!(
                hit.spans(),
                Some(spans.len()),
                "row {row} of row group {}",
                read.rg
            );
            for (i, s) in spans.iter().enumerate() {
                assert_eq!(hit.span_id(i), Some(&s.span_id[..]));
                assert_eq!(hit.name(i), Some(s.name.as_str()));
                assert_eq!(
                    hit.duration_nano(i),
                    Some(s.end_time_unix_nano - s.start_time_unix_nano)
                );
                checked += 1;
            }
        }
        if !rows.contains(&1) {
            assert!(hits.row(1).is_none(), "row 1 was not asked for");
        }
        first_row += read.rows;
    }
    assert_eq!(first_row, stored.len());
    assert!(checked > 100, "{checked} spans checked");
}

#[test]
fn hit_leaves_the_filter_reads_are_not_read_again() {
    let columns = SearchColumns::for_query(
        &crate::traceql::parse("{ name = \"x\" && duration > 1s && trace:id = \"ab\" }").unwrap(),
    )
    .unwrap();
    let kinds: Vec<_> = columns.late.iter().map(|(_, k)| *k).collect();
    use hits::HitLeaf::*;
    assert_eq!(
        kinds,
        [
            RootService,
            RootName,
            StatsService,
            StatsSpans,
            StatsErrors,
            SpanId
        ]
    );
}
