//! `model::group_encoded` (grouping the received bytes) against `group_by_trace` (grouping
//! decoded structs): the same traces, spans and times, and never a request accepted that
//! prost would refuse to decode.

use bytes::Bytes;
use prost::Message;
use rand::{Rng, SeedableRng};

use crate::block::synth;
use crate::model::{
    any_value, group_by_trace, group_encoded, AnyValue, ExportTraceServiceRequest, KeyValue,
    ResourceSpans, ScopeSpans, Span,
};

fn request(seed: u64) -> ExportTraceServiceRequest {
    sized_request(seed, 20, 5)
}

fn sized_request(seed: u64, realistic: usize, all_kinds: usize) -> ExportTraceServiceRequest {
    let mut resource_spans: Vec<ResourceSpans> = synth::realistic_traces(realistic, seed)
        .into_iter()
        .flat_map(|t| t.batches)
        .collect();
    resource_spans.extend(
        synth::all_kinds_traces(all_kinds, seed)
            .into_iter()
            .flat_map(|t| t.batches),
    );
    ExportTraceServiceRequest { resource_spans }
}

fn assert_same(req: &ExportTraceServiceRequest, raw: &Bytes) {
    let want = group_by_trace(&req.resource_spans);
    let got = group_encoded(raw).expect("valid request");
    assert_eq!(got.accepted, want.accepted);
    assert_eq!(got.bad_trace_id, want.bad_trace_id);
    assert_eq!(got.bad_span_id, want.bad_span_id);
    assert_eq!(got.traces().len(), want.traces().len());
    for (g, w) in got.traces().iter().zip(want.traces()) {
        assert_eq!(g.id, w.id);
        assert_eq!(g.spans, w.spans);
        assert_eq!(g.data.decode().unwrap(), w.data.decode().unwrap());
        assert_eq!(
            (g.data.start(), g.data.end()),
            (w.data.start(), w.data.end())
        );
    }
}

#[test]
fn grouping_the_bytes_gives_what_grouping_the_structs_gives() {
    for seed in 0..5 {
        let req = request(seed);
        assert_same(&req, &Bytes::from(req.encode_to_vec()));
    }
}

#[test]
fn bad_ids_are_counted_and_left_out_as_before() {
    let span = |trace: Vec<u8>, id: Vec<u8>| Span {
        trace_id: trace,
        span_id: id,
        name: "s".into(),
        start_time_unix_nano: 5,
        end_time_unix_nano: 9,
        ..Default::default()
    };
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span(vec![1; 16], vec![1; 8]),
                    span(vec![0; 16], vec![2; 8]),
                    span(vec![1; 8], vec![3; 8]),
                    span(vec![1; 16], vec![0; 8]),
                    span(vec![1; 16], vec![4; 4]),
                    span(vec![2; 16], vec![5; 8]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    assert_same(&req, &Bytes::from(req.encode_to_vec()));
    let g = group_encoded(&Bytes::from(req.encode_to_vec())).unwrap();
    assert_eq!((g.accepted, g.bad_trace_id, g.bad_span_id), (2, 2, 2));
}

#[test]
fn invalid_utf8_deep_in_an_attribute_is_refused_like_prost_refuses_it() {
    let mut req = request(1);
    let marker = "MARKER-VALUE";
    req.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(KeyValue {
            key: "k".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::ArrayValue(crate::model::ArrayValue {
                    values: vec![AnyValue {
                        value: Some(any_value::Value::StringValue(marker.into())),
                    }],
                })),
            }),
            ..Default::default()
        });
    let mut raw = req.encode_to_vec();
    let at = raw
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .unwrap();
    raw[at] = 0xff;
    assert!(ExportTraceServiceRequest::decode(&raw[..]).is_err());
    assert!(group_encoded(&Bytes::from(raw)).is_err());
}

/// Random damage to valid requests: whatever the walk accepts, prost decodes, and to the
/// same grouping. (The reverse does not have to hold everywhere: nesting deeper than 64 is
/// refused here and decoded by prost up to 100.)
#[test]
fn damaged_requests_accepted_here_decode_and_group_the_same() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let base = sized_request(3, 2, 1).encode_to_vec();
    let (mut accepted, mut refused_both) = (0, 0);
    for _ in 0..2_000 {
        let mut m = base.clone();
        for _ in 0..rng.random_range(1..4) {
            match rng.random_range(0..3) {
                0 => {
                    let i = rng.random_range(0..m.len());
                    m[i] = rng.random();
                }
                1 => {
                    let i = rng.random_range(0..m.len());
                    m.truncate(i);
                }
                _ => {
                    let i = rng.random_range(0..=m.len());
                    m.insert(i, rng.random());
                }
            }
            if m.is_empty() {
                break;
            }
        }
        let raw = Bytes::from(m);
        let decoded = ExportTraceServiceRequest::decode(raw.clone());
        // The check a trace read back from the ingest log gets agrees with decoding too.
        assert_eq!(
            crate::model::Fragments::from_encoded(raw.clone()).is_ok(),
            decoded.is_ok() && group_encoded(&raw).is_ok()
        );
        match (group_encoded(&raw), decoded) {
            (Ok(_), Err(e)) => panic!("accepted bytes prost refuses: {e}"),
            (Ok(_), Ok(req)) => {
                assert_same(&req, &raw);
                accepted += 1;
            }
            (Err(_), Err(_)) => refused_both += 1,
            (Err(e), Ok(_)) => panic!("refused bytes prost decodes: {e}"),
        }
    }
    assert!(
        accepted > 100 && refused_both > 100,
        "{accepted} {refused_both}"
    );
}
