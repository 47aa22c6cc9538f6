//! The `/api/search` response body, written byte by byte from the results.
//!
//! An unlimited search returns tens of thousands of traces (megabytes of JSON). Through
//! serde, a fifth of such a search's server CPU went into the response: every constant key
//! was escaped byte by byte and every map went through the serializer's state machine. Here
//! keys are literals, IDs and numbers are formatted into the buffer, and only free text
//! (names, attribute values) is checked for characters JSON must escape. The bytes are
//! those serde wrote, key order included.

use serde_json::Value as Json;

use crate::model::{AnyValue, ArrayValue, TenantId};
use crate::querier::search::{
    HitSpan, HitSpanset, SearchMetrics, SearchResults, ServiceStats, TraceHit,
};
use crate::traceql::Value;

use super::ROOT_NOT_RECEIVED;

/// Writes the whole response for `r`. `owners` names each trace's tenant for cross-tenant
/// reads (parallel to `r.traces`; empty for one tenant).
pub(in crate::api) fn write_response(out: &mut Vec<u8>, r: &SearchResults, owners: &[TenantId]) {
    out.extend_from_slice(b"{\"traces\":[");
    comma_separated(out, r.traces.iter().enumerate(), |out, (i, t)| {
        trace(out, t, owners.get(i));
    });
    out.extend_from_slice(b"],\"metrics\":");
    metrics(out, &r.metrics);
    out.push(b'}');
}

/// A buffer size that holds a typical response without regrowing: growing by doubling
/// copied a large response a dozen times. Generous on purpose: pages never written are
/// never touched. The first spanset's spans are written twice (`spanSet`, `spanSets`).
pub(super) fn size_hint(r: &SearchResults) -> usize {
    let per_trace = |t: &TraceHit| {
        let spans: usize = t.spansets.iter().map(|ss| ss.spans.len()).sum();
        let first = t.spansets.first().map_or(0, |ss| ss.spans.len());
        400 + 64 * t.service_stats.len() + 250 * (spans + first)
    };
    256 + r.traces.iter().map(per_trace).sum::<usize>()
}

/// Keys in the order a JSON map sorts them, as the `json!` map written before did; the two
/// byte counts as strings (jsonpb's int64 form).
fn metrics(out: &mut Vec<u8>, m: &SearchMetrics) {
    out.extend_from_slice(b"{\"completedJobs\":");
    uint(out, m.completed_jobs);
    out.extend_from_slice(b",\"inspectedBytes\":");
    dec_str(out, m.inspected_bytes);
    out.extend_from_slice(b",\"inspectedSpans\":");
    dec_str(out, m.inspected_spans);
    out.extend_from_slice(b",\"inspectedTraces\":");
    uint(out, m.inspected_traces);
    out.extend_from_slice(b",\"totalBlocks\":");
    uint(out, m.total_blocks);
    out.extend_from_slice(b",\"totalJobs\":");
    uint(out, m.total_jobs);
    out.push(b'}');
}

fn trace(out: &mut Vec<u8>, t: &TraceHit, tenant: Option<&TenantId>) {
    // Always 32 hex characters: log links depend on the leading zeros.
    out.extend_from_slice(b"{\"traceID\":");
    hex_str(out, &t.id.0);
    out.extend_from_slice(b",\"rootServiceName\":");
    string(
        out,
        t.root_service_name.as_deref().unwrap_or(ROOT_NOT_RECEIVED),
    );
    // Left out when empty, as jsonpb leaves out empty strings.
    if let Some(n) = t.root_span_name.as_deref().filter(|n| !n.is_empty()) {
        out.extend_from_slice(b",\"rootTraceName\":");
        string(out, n);
    }
    out.extend_from_slice(b",\"startTimeUnixNano\":");
    dec_str(out, t.start_unix_nano);
    let ms = t.end_unix_nano.saturating_sub(t.start_unix_nano) / 1_000_000;
    if ms > 0 {
        out.extend_from_slice(b",\"durationMs\":");
        uint(out, ms);
    }
    // `spanSet` is Tempo's older field: the first of `spanSets`, written twice.
    if let Some(first) = t.spansets.first() {
        out.extend_from_slice(b",\"spanSet\":");
        spanset(out, first);
    }
    out.extend_from_slice(b",\"spanSets\":[");
    comma_separated(out, &t.spansets, spanset);
    out.extend_from_slice(b"],\"serviceStats\":{");
    comma_separated(out, &t.service_stats, |out, (svc, st)| {
        string(out, svc);
        out.push(b':');
        stats(out, st);
    });
    out.push(b'}');
    // vivace's addition for cross-tenant reads; Tempo has no field for it.
    if let Some(tenant) = tenant {
        out.extend_from_slice(b",\"tenant\":");
        string(out, tenant.as_str());
    }
    out.push(b'}');
}

fn spanset(out: &mut Vec<u8>, set: &HitSpanset) {
    out.extend_from_slice(b"{\"spans\":[");
    comma_separated(out, &set.spans, span);
    out.extend_from_slice(b"],\"matched\":");
    uint(out, set.matched as u64);
    if !set.attributes.is_empty() {
        out.extend_from_slice(b",\"attributes\":");
        attributes(out, &set.attributes);
    }
    out.push(b'}');
}

fn span(out: &mut Vec<u8>, sp: &HitSpan) {
    out.extend_from_slice(b"{\"spanID\":");
    hex_str(out, &sp.span_id);
    if !sp.name.is_empty() {
        out.extend_from_slice(b",\"name\":");
        string(out, &sp.name);
    }
    out.extend_from_slice(b",\"startTimeUnixNano\":");
    dec_str(out, sp.start_unix_nano);
    out.extend_from_slice(b",\"durationNanos\":");
    dec_str(out, sp.duration_nanos);
    if !sp.attributes.is_empty() {
        out.extend_from_slice(b",\"attributes\":");
        attributes(out, &sp.attributes);
    }
    out.push(b'}');
}

/// `{"errorCount":..,"spanCount":..}`: keys in sorted order, a zero error count left out
/// as jsonpb leaves zero values out.
fn stats(out: &mut Vec<u8>, st: &ServiceStats) {
    out.push(b'{');
    if st.error_count > 0 {
        out.extend_from_slice(b"\"errorCount\":");
        uint(out, u64::from(st.error_count));
        out.push(b',');
    }
    out.extend_from_slice(b"\"spanCount\":");
    uint(out, u64::from(st.span_count));
    out.push(b'}');
}

fn attributes(out: &mut Vec<u8>, attrs: &[(String, Value)]) {
    out.push(b'[');
    comma_separated(out, attrs, |out, (k, v)| {
        out.extend_from_slice(b"{\"key\":");
        string(out, k);
        out.extend_from_slice(b",\"value\":");
        value(out, v);
        out.push(b'}');
    });
    out.push(b']');
}

/// [`value_json`] written without building it, for the common scalar types.
fn value(out: &mut Vec<u8>, v: &Value) {
    let text = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(b"{\"stringValue\":");
        string(out, s);
        out.push(b'}');
    };
    match v {
        Value::String(s) => text(out, s),
        Value::Status(s) => text(out, s.as_str()),
        Value::Kind(k) => text(out, k.as_str()),
        Value::Bool(b) => out.extend_from_slice(if *b {
            b"{\"boolValue\":true}"
        } else {
            b"{\"boolValue\":false}"
        }),
        Value::Int(i) => {
            out.extend_from_slice(b"{\"intValue\":\"");
            out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes());
            out.extend_from_slice(b"\"}");
        }
        // Rare in search results (durations, floats, arrays): the general path.
        other => match serde_json::to_vec(&value_json(other)) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            // A `Value` tree always serialises; an empty value keeps the JSON whole.
            Err(_) => out.extend_from_slice(b"{}"),
        },
    }
}

/// Writes each item with `write`, commas between.
fn comma_separated<T>(
    out: &mut Vec<u8>,
    items: impl IntoIterator<Item = T>,
    mut write: impl FnMut(&mut Vec<u8>, T),
) {
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
}

fn uint(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A u64 as a decimal JSON string (jsonpb's int64 form).
fn dec_str(out: &mut Vec<u8>, v: u64) {
    out.push(b'"');
    uint(out, v);
    out.push(b'"');
}

/// Bytes as a lowercase hex JSON string.
fn hex_str(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2 + 2);
    out.push(b'"');
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    out.push(b'"');
}

/// A JSON string, escaped as serde_json escapes: quote, backslash and control characters
/// only (`\n`, `\t` and the like by name, the rest as `\u00XX`); everything else, non-ASCII
/// included, as it is.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| needs_escape(b)) {
        out.extend_from_slice(bytes);
    } else {
        let mut from = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !needs_escape(b) {
                continue;
            }
            out.extend_from_slice(&bytes[from..i]);
            from = i + 1;
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                _ => {
                    const DIGITS: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(DIGITS[usize::from(b >> 4)]);
                    out.push(DIGITS[usize::from(b & 0xf)]);
                }
            }
        }
        out.extend_from_slice(&bytes[from..]);
    }
    out.push(b'"');
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

pub(in crate::api) fn value_json(v: &Value) -> Json {
    crate::api::json::any_value_json(&value_any(v))
}

/// A TraceQL value as the OTLP `AnyValue` Tempo puts in search results: durations as Go
/// duration text, status and kind by name.
pub(in crate::api) fn value_any(v: &Value) -> AnyValue {
    use crate::model::any_value::Value as V;
    let value = match v {
        Value::String(s) => V::StringValue(s.clone()),
        Value::Int(i) => V::IntValue(*i),
        Value::Float(f) => V::DoubleValue(*f),
        Value::Bool(b) => V::BoolValue(*b),
        Value::Duration(ns) => V::StringValue(format_duration(*ns)),
        Value::Status(s) => V::StringValue(s.as_str().to_owned()),
        Value::Kind(k) => V::StringValue(k.as_str().to_owned()),
        Value::Array(a) => V::ArrayValue(ArrayValue {
            values: a.iter().map(value_any).collect(),
        }),
    };
    AnyValue { value: Some(value) }
}

/// Go's `time.Duration` text (`1.5s`, `250ms`, `1m30s`), which Tempo prints for durations.
fn format_duration(ns: i64) -> String {
    let neg = ns < 0;
    let n = ns.unsigned_abs();
    let body = if n < 1_000 {
        format!("{n}ns")
    } else if n < 1_000_000 {
        trim(format!("{:.3}", n as f64 / 1e3)) + "µs"
    } else if n < 1_000_000_000 {
        trim(format!("{:.6}", n as f64 / 1e6)) + "ms"
    } else {
        let total_s = n / 1_000_000_000;
        let frac = n % 1_000_000_000;
        let (h, m, s) = (total_s / 3600, (total_s / 60) % 60, total_s % 60);
        let secs = trim(format!("{}.{:09}", s, frac)) + "s";
        match (h, m) {
            (0, 0) => secs,
            (0, m) => format!("{m}m{secs}"),
            (h, m) => format!("{h}h{m}m{secs}"),
        }
    };
    if neg {
        format!("-{body}")
    } else {
        body
    }
}

fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TraceId;
    use crate::querier::search::SpanIdBytes;
    use crate::traceql::{SpanKind, Status};
    use serde_json::json;

    /// The response as a JSON tree built with `json!`, field by field from Tempo's shape: what
    /// the byte writer must read back as.
    fn response_tree(r: &SearchResults, owners: &[TenantId]) -> Json {
        let spanset = |set: &HitSpanset| {
            let spans: Vec<Json> = set
                .spans
                .iter()
                .map(|sp| {
                    let mut o = json!({
                        "spanID": hex::encode(&*sp.span_id),
                        "startTimeUnixNano": sp.start_unix_nano.to_string(),
                        "durationNanos": sp.duration_nanos.to_string(),
                    });
                    if !sp.name.is_empty() {
                        o["name"] = json!(sp.name);
                    }
                    if !sp.attributes.is_empty() {
                        o["attributes"] = attrs_tree(&sp.attributes);
                    }
                    o
                })
                .collect();
            let mut o = json!({ "spans": spans, "matched": set.matched });
            if !set.attributes.is_empty() {
                o["attributes"] = attrs_tree(&set.attributes);
            }
            o
        };
        let traces: Vec<Json> = r
            .traces
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let stats: serde_json::Map<String, Json> = t
                    .service_stats
                    .iter()
                    .map(|(k, st)| {
                        let mut o = json!({ "spanCount": st.span_count });
                        if st.error_count > 0 {
                            o["errorCount"] = json!(st.error_count);
                        }
                        (k.clone(), o)
                    })
                    .collect();
                let mut o = json!({
                    "traceID": hex::encode(t.id.0),
                    "rootServiceName": t.root_service_name.as_deref().unwrap_or(ROOT_NOT_RECEIVED),
                    "startTimeUnixNano": t.start_unix_nano.to_string(),
                    "spanSets": t.spansets.iter().map(spanset).collect::<Vec<_>>(),
                    "serviceStats": stats,
                });
                if let Some(n) = t.root_span_name.as_deref().filter(|n| !n.is_empty()) {
                    o["rootTraceName"] = json!(n);
                }
                let ms = t.end_unix_nano.saturating_sub(t.start_unix_nano) / 1_000_000;
                if ms > 0 {
                    o["durationMs"] = json!(ms);
                }
                if let Some(first) = t.spansets.first() {
                    o["spanSet"] = spanset(first);
                }
                if let Some(tenant) = owners.get(i) {
                    o["tenant"] = json!(tenant.as_str());
                }
                o
            })
            .collect();
        let m = &r.metrics;
        json!({
            "traces": traces,
            "metrics": {
                "inspectedTraces": m.inspected_traces,
                "inspectedBytes": m.inspected_bytes.to_string(),
                "inspectedSpans": m.inspected_spans.to_string(),
                "totalBlocks": m.total_blocks,
                "completedJobs": m.completed_jobs,
                "totalJobs": m.total_jobs,
            },
        })
    }

    fn attrs_tree(attrs: &[(String, Value)]) -> Json {
        attrs
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": value_json(v) }))
            .collect()
    }

    fn write(r: &SearchResults, owners: &[TenantId]) -> Vec<u8> {
        let mut out = Vec::new();
        write_response(&mut out, r, owners);
        out
    }

    fn results() -> SearchResults {
        let attrs: Vec<(String, Value)> = vec![
            (
                "s".into(),
                Value::String("/api/x \"q\" \\ \u{1} \n é".into()),
            ),
            ("i".into(), Value::Int(-7)),
            ("b".into(), Value::Bool(true)),
            ("nb".into(), Value::Bool(false)),
            ("f".into(), Value::Float(1.5)),
            ("d".into(), Value::Duration(1_500_000)),
            ("st".into(), Value::Status(Status::Error)),
            ("k".into(), Value::Kind(SpanKind::Server)),
            (
                "a".into(),
                Value::Array(vec![Value::Int(1), Value::String("x".into())]),
            ),
        ];
        let span = |n: u8, name: &str| HitSpan {
            span_id: SpanIdBytes::new(&[n, 0, 0, 0, 0, 0, 0, 0xff]),
            name: name.into(),
            start_unix_nano: 1_700_000_000_000_000_000 + u64::from(n),
            duration_nanos: u64::from(n) * 1_000,
            attributes: if n == 1 { attrs.clone() } else { Vec::new() },
        };
        let set = |spans: Vec<HitSpan>, with_attrs: bool| HitSpanset {
            spans,
            matched: 3,
            attributes: if with_attrs {
                vec![("count()".into(), Value::Int(3))]
            } else {
                Vec::new()
            },
        };
        let mut stats = std::collections::BTreeMap::new();
        stats.insert(
            "shop \"eu\"".to_owned(),
            ServiceStats {
                span_count: 5,
                error_count: 2,
            },
        );
        stats.insert(
            "cart".to_owned(),
            ServiceStats {
                span_count: 3,
                error_count: 0,
            },
        );
        let mut id = [0u8; 16];
        id[15] = 0x0a;
        SearchResults {
            traces: vec![
                TraceHit {
                    id: TraceId(id),
                    root_service_name: Some("shop".into()),
                    root_span_name: Some("GET /\t".into()),
                    start_unix_nano: 1_700_000_000_000_000_000,
                    end_unix_nano: 1_700_000_000_250_000_000,
                    spansets: vec![
                        set(vec![span(1, "a"), span(2, "")], true),
                        set(vec![span(3, "c")], false),
                    ],
                    service_stats: stats,
                },
                // No root yet, shorter than a millisecond, no spansets, an empty root name.
                TraceHit {
                    id: TraceId([0xab; 16]),
                    root_service_name: None,
                    root_span_name: Some(String::new()),
                    start_unix_nano: 5,
                    end_unix_nano: 10,
                    spansets: Vec::new(),
                    service_stats: Default::default(),
                },
            ],
            metrics: SearchMetrics {
                inspected_traces: 2,
                inspected_bytes: u64::MAX,
                inspected_spans: 0,
                total_blocks: 1,
                completed_jobs: 4,
                total_jobs: 5,
            },
            partial: None,
        }
    }

    /// The written bytes parse to the tree Tempo's shape gives, field for field, with and
    /// without tenant names.
    #[test]
    fn written_response_reads_as_the_json_tree() {
        let r = results();
        let got: Json = serde_json::from_slice(&write(&r, &[])).unwrap();
        assert_eq!(got, response_tree(&r, &[]));
        let owners = [TenantId::new("a").unwrap(), TenantId::new("b-c").unwrap()];
        let got: Json = serde_json::from_slice(&write(&r, &owners)).unwrap();
        assert_eq!(got, response_tree(&r, &owners));
        assert_eq!(got["traces"][1]["tenant"], "b-c");
        assert_eq!(
            got["traces"][0]["traceID"],
            "0000000000000000000000000000000a"
        );
        assert!(got["traces"][1].get("durationMs").is_none());
        assert!(got["traces"][1].get("spanSet").is_none());
        assert!(got["traces"][1].get("rootTraceName").is_none());
    }

    /// Strings are escaped exactly as serde_json escapes them, so responses are byte for
    /// byte what they were.
    #[test]
    fn strings_escape_as_serde_json_does() {
        let all: String = (0u8..0x80).map(char::from).collect();
        for s in ["", "plain", "é ü 日本", "a\"b\\c", "\u{7f}", all.as_str()] {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        let mut out = Vec::new();
        hex_str(&mut out, &[0x00, 0x0f, 0xf0, 0xff]);
        assert_eq!(out, b"\"000ff0ff\"");
        for v in [0u64, 7, 10, u64::MAX] {
            let mut out = Vec::new();
            dec_str(&mut out, v);
            assert_eq!(out, format!("\"{v}\"").into_bytes());
        }
    }

    /// Keys come out in the order the serde writer gave them (not sorted by the parser):
    /// byte-level consumers and diffs against older responses see no change.
    #[test]
    fn keys_keep_their_order() {
        let r = results();
        let text = String::from_utf8(write(&r, &[])).unwrap();
        let at = |k: &str| text.find(k).unwrap_or_else(|| panic!("{k} missing"));
        let order = [
            "\"traceID\"",
            "\"rootServiceName\"",
            "\"rootTraceName\"",
            "\"startTimeUnixNano\"",
            "\"durationMs\"",
            "\"spanSet\"",
            "\"spanSets\"",
            "\"serviceStats\"",
            "\"metrics\"",
        ];
        for w in order.windows(2) {
            assert!(at(w[0]) < at(w[1]), "{} before {}", w[0], w[1]);
        }
        assert!(
            text.contains(r#""cart":{"spanCount":3},"shop \"eu\"":{"errorCount":2,"spanCount":5}"#)
        );
        assert!(text.contains(r#"{"key":"i","value":{"intValue":"-7"}}"#));
        assert!(text.contains(r#"{"key":"nb","value":{"boolValue":false}}"#));
        assert!(text.ends_with(
            r#""metrics":{"completedJobs":4,"inspectedBytes":"18446744073709551615","inspectedSpans":"0","inspectedTraces":2,"totalBlocks":1,"totalJobs":5}}"#
        ));
    }

    #[test]
    fn go_durations() {
        assert_eq!(format_duration(1_500_000_000), "1.5s");
        assert_eq!(format_duration(250_000_000), "250ms");
        assert_eq!(format_duration(90_000_000_000), "1m30s");
        assert_eq!(format_duration(999), "999ns");
    }
}
