//! The wire path (`TraceRows::Encoded`) against the decoded one: the same block, byte for
//! byte, and the same tag summary, or a fallback that gives them.

use bytes::Bytes;
use prost::Message;

use super::{encode_block_sliced_into, SlicedTrace, TraceRows};
use crate::block::synth::{all_kinds_traces, realistic_traces};
use crate::block::wire_rows::WireRows;
use crate::block::{BlockConfig, BlockError, TagCollector, TagSummary, TraceInput};
use crate::model::{combine, Fragments, ResourceSpans, TenantId, TracesData};

fn chunk(batches: &[ResourceSpans]) -> Bytes {
    Bytes::from(
        TracesData {
            resource_spans: batches.to_vec(),
        }
        .encode_to_vec(),
    )
}

/// A trace as a live trace holds it: one chunk per `ResourceSpans`, with its first two
/// repeated as a late copy (a retried export) so combining has work to do.
fn fragments(t: &TraceInput) -> Fragments {
    let mut f = Fragments::default();
    for rs in &t.batches {
        f.extend(&Fragments::from_encoded(chunk(std::slice::from_ref(rs))).unwrap());
    }
    f.extend(&Fragments::from_encoded(chunk(&t.batches[..t.batches.len().min(2)])).unwrap());
    f
}

fn encode(
    traces: &[(u32, TraceInput)],
    rows: impl Fn(&TraceInput) -> TraceRows,
) -> Result<(Vec<u8>, TagSummary), BlockError> {
    let cfg = BlockConfig {
        // Several row groups and slices.
        row_group_size_bytes: 256 << 10,
        ..BlockConfig::default()
    };
    let mut tags = TagCollector::default();
    let mut data = Vec::new();
    let inputs = traces.iter().map(|(slice, t)| {
        Ok(SlicedTrace {
            slice: *slice,
            id: t.id,
            rows: rows(t),
        })
    });
    let tenant = TenantId::new("t").unwrap();
    let id = uuid::Uuid::nil();
    encode_block_sliced_into(&tenant, id, 0, inputs, &cfg, Some(&mut tags), &mut data)?;
    Ok((data, tags.finish()))
}

fn sorted(mut traces: Vec<TraceInput>) -> Vec<(u32, TraceInput)> {
    traces.sort_by_key(|t| t.id);
    traces.dedup_by_key(|t| t.id);
    let half = traces.len() / 2;
    traces
        .into_iter()
        .enumerate()
        .map(|(i, t)| (u32::from(i >= half), t))
        .collect::<Vec<_>>()
}

fn same_both_ways(traces: &[(u32, TraceInput)]) -> (usize, usize) {
    let wire = encode(traces, |t| TraceRows::Encoded(fragments(t))).unwrap();
    let decoded = encode(traces, |t| {
        TraceRows::Decoded(combine(fragments(t).decode().unwrap()))
    })
    .unwrap();
    assert!(wire.0 == decoded.0, "the blocks differ");
    assert_eq!(wire.1, decoded.1, "the tag summaries differ");
    let read = traces
        .iter()
        .filter(|(_, t)| WireRows::parse(fragments(t).chunks()).is_some())
        .count();
    (read, traces.len())
}

#[test]
fn realistic_traces_read_off_the_wire_make_the_decoded_block() {
    let (read, all) = same_both_ways(&sorted(realistic_traces(400, 11)));
    // Every one of them took the wire path: nothing there needs prost.
    assert_eq!(read, all);
}

#[test]
fn every_field_and_edge_case_makes_the_decoded_block() {
    let traces = sorted(all_kinds_traces(300, 5));
    let (read, all) = same_both_ways(&traces);
    // Entity refs are left to prost; the rest is read off the wire.
    assert!(read > all / 2 && read < all, "{read} of {all}");
}

/// `body` as field `number` of a message.
fn field(number: u32, body: &[u8]) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let mut out = Vec::new();
    encode_key(number, WireType::LengthDelimited, &mut out);
    encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// A `TracesData` chunk holding one span's raw bytes, no resource or scope.
fn raw_chunk(span: &[u8]) -> Bytes {
    Bytes::from(field(1, &field(2, &field(2, span))))
}

#[test]
fn what_the_wire_reader_leaves_to_prost_is_decoded() {
    let mut traces = realistic_traces(20, 3);
    traces.sort_by_key(|t| t.id);
    let t = &traces[0];
    let span = t.batches[0].scope_spans[0].spans[0].encode_to_vec();
    assert!(WireRows::parse(&[raw_chunk(&span)]).is_some());
    // The name given twice (prost keeps the last), an unknown field, a second status
    // (prost merges the two): each is declined, and decoded instead.
    let odd = [
        [&span[..], &[0x2a, 4, b'l', b'a', b's', b't']].concat(),
        [&span[..], &[0xa8, 0x02, 1]].concat(),
        [&span[..], &[0x7a, 2, 0x18, 2]].concat(),
    ];
    for body in odd {
        let f = Fragments::from_encoded(raw_chunk(&body)).unwrap();
        assert!(WireRows::parse(f.chunks()).is_none());
        let input = vec![(
            0,
            TraceInput {
                id: t.id,
                batches: vec![],
            },
        )];
        let wire = encode(&input, |_| TraceRows::Encoded(f.clone())).unwrap();
        let decoded = encode(&input, |_| TraceRows::Decoded(combine(f.decode().unwrap()))).unwrap();
        assert!(wire.0 == decoded.0, "the blocks differ");
        assert_eq!(wire.1, decoded.1);
    }
    // Bytes that do not decode either way are an input error, not a panic.
    let bad = [&span[..], &[0x2a, 2, 0xff, 0xfe]].concat();
    let f = Fragments::from_encoded_unchecked(raw_chunk(&bad));
    let input = vec![(
        0,
        TraceInput {
            id: t.id,
            batches: vec![],
        },
    )];
    let err = encode(&input, |_| TraceRows::Encoded(f.clone())).unwrap_err();
    assert!(matches!(err, BlockError::Input(_)), "{err}");
}

/// Traces of many resources, each of many scopes, sent twice over (as late copies): past
/// the count where resources and scopes are found by a map instead of a scan, they still
/// fold as the decoded path folds them.
#[test]
fn many_resources_and_scopes_fold_as_decoded() {
    let mut traces = realistic_traces(40, 17);
    traces.sort_by_key(|t| t.id);
    traces.dedup_by_key(|t| t.id);
    for t in &mut traces {
        let first = t.batches[0].clone();
        let mut many = Vec::new();
        for r in 0..20 {
            let mut rs = first.clone();
            if let Some(res) = rs.resource.as_mut() {
                res.dropped_attributes_count = r % 12;
            }
            let ss = rs.scope_spans[0].clone();
            rs.scope_spans = (0..15)
                .map(|s| {
                    let mut ss = ss.clone();
                    ss.schema_url = format!("s{}", s % 11);
                    for span in &mut ss.spans {
                        span.span_id = [r as u8, s as u8, 0, 0, 0, 0, 0, 1].to_vec();
                    }
                    ss
                })
                .collect();
            many.push(rs);
        }
        t.batches = many;
    }
    let traces: Vec<(u32, TraceInput)> = traces.into_iter().map(|t| (0, t)).collect();
    let mut probe = Fragments::default();
    for rs in &traces[0].1.batches {
        probe.extend(&Fragments::from_encoded(chunk(std::slice::from_ref(rs))).unwrap());
    }
    let rows = WireRows::parse(probe.chunks()).expect("read off the wire");
    // 20 resources of 12 distinct bodies, each with 11 distinct scopes.
    assert_eq!(rows.resources.len(), 12);
    assert!(rows.resources.iter().all(|r| r.scopes.len() == 11));
    let (read, all) = same_both_ways(&traces);
    assert_eq!(read, all);
}
