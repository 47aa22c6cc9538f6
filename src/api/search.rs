//! `GET /api/search`: TraceQL (or legacy logfmt tags) search in Tempo's response shape.

use std::sync::Arc;

use axum::extract::{Query as QueryParams, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Value as Json};

use super::{read_tenants, ApiError, ApiState};
use crate::frontend::Frontend;
use crate::model::{AnyValue, ArrayValue, TenantId};
use crate::querier::search::{
    HitSpan, HitSpanset, SearchRequest, SearchResults, ServiceStats, TraceHit,
};
use crate::querier::TimeRange;
use crate::traceql::{self, Value};

/// Tempo's default and ceiling for `limit`.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 262_144;
const DEFAULT_SPSS: usize = 3;
/// Tempo's frontend caps spans per spanset at `max_spans_per_span_set`, default 100.
const MAX_SPSS: usize = 100;
pub(super) const ROOT_NOT_RECEIVED: &str = "<root span not yet received>";

#[derive(Deserialize, Default)]
pub(super) struct SearchParams {
    q: Option<String>,
    tags: Option<String>,
    #[serde(rename = "minDuration")]
    min_duration: Option<String>,
    #[serde(rename = "maxDuration")]
    max_duration: Option<String>,
    limit: Option<String>,
    spss: Option<String>,
    start: Option<String>,
    end: Option<String>,
}

fn parse_num(name: &str, v: &Option<String>) -> Result<Option<u64>, ApiError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<u64>().map(Some).map_err(|_| {
            ApiError::BadRequest(format!("invalid {name} {s:?}: expected a whole number"))
        }),
    }
}

fn parse_duration(name: &str, v: &Option<String>) -> Result<Option<u64>, ApiError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => crate::config::parse_duration(s)
            .map(|d| Some(d.as_nanos() as u64))
            .map_err(|e| ApiError::BadRequest(format!("invalid {name}: {e}"))),
    }
}

/// Turns Tempo's legacy `tags` (logfmt, `key=value key2="v 2"`) into a TraceQL filter.
pub(super) fn tags_to_traceql(tags: &str) -> Result<String, ApiError> {
    let mut conds = Vec::new();
    let mut rest = tags.trim();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or_else(|| {
            ApiError::BadRequest(format!("invalid tags {tags:?}: expected key=value"))
        })?;
        let key = rest[..eq].trim();
        rest = &rest[eq + 1..];
        let value;
        if let Some(after) = rest.strip_prefix('"') {
            let end = after.find('"').ok_or_else(|| {
                ApiError::BadRequest(format!("invalid tags {tags:?}: unclosed quote"))
            })?;
            value = &after[..end];
            rest = after[end + 1..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            value = &rest[..end];
            rest = rest[end..].trim_start();
        }
        if key.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "invalid tags {tags:?}: empty key"
            )));
        }
        let quoted = format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""));
        let cond = match key {
            "name" => format!("name = {quoted}"),
            "status" | "status.code" => match value {
                "ok" | "error" | "unset" => format!("status = {value}"),
                _ => format!("status = {quoted}"),
            },
            _ => {
                let k = format!(".\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
                if value.parse::<i64>().is_ok() {
                    format!("{k} = {value}")
                } else {
                    format!("{k} = {quoted}")
                }
            }
        };
        conds.push(cond);
    }
    if conds.is_empty() {
        return Ok("{}".into());
    }
    Ok(format!("{{ {} }}", conds.join(" && ")))
}

impl SearchParams {
    /// A plain TraceQL search with a limit.
    pub(super) fn from_query(q: &str, limit: u32) -> Self {
        Self {
            q: Some(q.to_owned()),
            limit: Some(limit.to_string()),
            ..Default::default()
        }
    }

    /// The same parameters from a streaming `tempopb.SearchRequest`.
    pub(super) fn from_proto(r: &super::tempopb::SearchRequest) -> Self {
        let nonzero = |v: u32| (v > 0).then(|| v.to_string());
        let mut tags: Vec<String> = r
            .tags
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('"', "")))
            .collect();
        tags.sort();
        Self {
            q: Some(r.query.clone()).filter(|q| !q.is_empty()),
            tags: Some(tags.join(" ")).filter(|t| !t.is_empty()),
            min_duration: nonzero(r.min_duration_ms).map(|v| format!("{v}ms")),
            max_duration: nonzero(r.max_duration_ms).map(|v| format!("{v}ms")),
            limit: nonzero(r.limit),
            spss: nonzero(r.spans_per_span_set),
            start: nonzero(r.start),
            end: nonzero(r.end),
        }
    }
}

pub(super) fn build_request(p: &SearchParams) -> Result<SearchRequest, ApiError> {
    let has_q = p.q.as_deref().is_some_and(|q| !q.trim().is_empty());
    let has_tags = p.tags.as_deref().is_some_and(|t| !t.trim().is_empty());
    if has_q && has_tags {
        return Err(ApiError::BadRequest(
            "invalid request: q and tags cannot both be set".into(),
        ));
    }
    let text = if has_q {
        p.q.clone().unwrap_or_default()
    } else if has_tags {
        tags_to_traceql(p.tags.as_deref().unwrap_or_default())?
    } else {
        "{}".to_owned()
    };
    let query = traceql::parse(&text)
        .map_err(|e| ApiError::BadRequest(format!("invalid TraceQL query: {e}")))?;
    if query.is_metrics() {
        return Err(ApiError::BadRequest(
            "this is a TraceQL metrics query: use /api/metrics/query_range".into(),
        ));
    }
    let limit = match parse_num("limit", &p.limit)? {
        None => DEFAULT_LIMIT,
        Some(0) => {
            return Err(ApiError::BadRequest(
                "invalid limit: must be greater than 0".into(),
            ))
        }
        Some(n) if n as usize > MAX_LIMIT => {
            return Err(ApiError::BadRequest(format!(
                "invalid limit {n}: at most {MAX_LIMIT}"
            )))
        }
        Some(n) => n as usize,
    };
    let spss = match parse_num("spss", &p.spss)? {
        None => DEFAULT_SPSS,
        Some(0) => MAX_SPSS,
        // Tempo's frontend refuses more than `max_spans_per_span_set` rather than capping.
        Some(n) if n as usize > MAX_SPSS => {
            return Err(ApiError::BadRequest(format!(
                "invalid spss {n}: spans per span set exceeds {MAX_SPSS}"
            )))
        }
        Some(n) => n as usize,
    };
    let range = match (parse_num("start", &p.start)?, parse_num("end", &p.end)?) {
        (None, None) => None,
        (Some(s), Some(e)) => {
            if e <= s {
                return Err(ApiError::BadRequest(format!(
                    "invalid time range: end {e} must be after start {s}"
                )));
            }
            Some(TimeRange {
                start_s: s,
                end_s: e,
            })
        }
        _ => {
            return Err(ApiError::BadRequest(
                "start and end must be given together".into(),
            ))
        }
    };
    Ok(SearchRequest {
        query: Arc::new(query),
        limit,
        spss,
        range,
        min_duration_nanos: parse_duration("minDuration", &p.min_duration)?,
        max_duration_nanos: parse_duration("maxDuration", &p.max_duration)?,
    })
}

pub(super) async fn search(
    State(s): State<ApiState>,
    QueryParams(p): QueryParams<SearchParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenants = read_tenants(&s, &headers)?;
    let mut req = build_request(&p)?;
    apply_read_limits(&s, &tenants, &mut req)?;
    let frontend = s
        .frontend
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this process runs no query frontend".into()))?;
    let (results, owners) = search_tenants(frontend, &tenants, &req).await?;
    // Tens of thousands of hits make megabytes of JSON: written off the executor into a
    // buffer sized up front (growing by doubling copied it a dozen times), and the hits
    // freed there too.
    let body = tokio::task::spawn_blocking(move || {
        let spans: usize = results
            .traces
            .iter()
            .flat_map(|t| &t.spansets)
            .map(|ss| ss.spans.len())
            .sum();
        let mut buf = Vec::with_capacity(256 + results.traces.len() * 400 + spans * 250);
        serde_json::to_writer(&mut buf, &ResponseJson(&results, &owners)).map(|()| buf)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("writing search response: {e}")))?
    .map_err(|e| ApiError::Internal(format!("writing search response: {e}")))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Applies the tenants' read limits (the strictest when a read covers several):
/// `max_search_duration` refuses a longer explicit time range, `max_result_limit` caps the
/// limit. A search without a range is not refused, as in Tempo, where it covers recent data.
pub(super) fn apply_read_limits(
    s: &ApiState,
    tenants: &[TenantId],
    req: &mut SearchRequest,
) -> Result<(), ApiError> {
    let Some(overrides) = &s.overrides else {
        return Ok(());
    };
    let strictest = |f: &dyn Fn(&crate::config::overrides::ReadLimits) -> u64| {
        tenants
            .iter()
            .map(|t| f(&overrides.limits(t).read))
            .filter(|v| *v > 0)
            .min()
    };
    if let (Some(max), Some(r)) = (
        strictest(&|l| l.max_search_duration.as_secs()),
        req.range.as_ref(),
    ) {
        let asked = r.end_s.saturating_sub(r.start_s);
        if asked > max {
            return Err(ApiError::BadRequest(format!(
                "range specified by start and end ({asked}s) exceeds max_search_duration ({max}s): reduce the time range"
            )));
        }
    }
    if let Some(max) = strictest(&|l| u64::from(l.max_result_limit)) {
        req.limit = req.limit.min(max as usize);
    }
    Ok(())
}

/// Searches each tenant. With several (Tempo's `a|b`), every hit is marked with the tenant
/// it came from (the second value, parallel to the traces; empty for one tenant), then all
/// are merged newest first and cut to the limit.
pub(super) async fn search_tenants(
    frontend: &Frontend,
    tenants: &[TenantId],
    req: &SearchRequest,
) -> Result<(SearchResults, Vec<TenantId>), ApiError> {
    if let [one] = tenants {
        return Ok((frontend.search(one, req).await?, Vec::new()));
    }
    Ok(frontend.search_in(tenants, req).await?)
}

/// The whole search response, serialised straight from the results: no intermediate JSON
/// tree, and `spanSet` written from the same data as `spanSets[0]` rather than cloned. The
/// second value names each trace's tenant for cross-tenant reads (empty otherwise).
pub(super) struct ResponseJson<'a>(pub(super) &'a SearchResults, pub(super) &'a [TenantId]);

impl Serialize for ResponseJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Traces<'a>(&'a [TraceHit], &'a [TenantId]);
        impl Serialize for Traces<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(
                    self.0
                        .iter()
                        .enumerate()
                        .map(|(i, t)| TraceOut(t, self.1.get(i))),
                )
            }
        }
        let m = &self.0.metrics;
        let mut o = s.serialize_struct("SearchResponse", 2)?;
        o.serialize_field("traces", &Traces(&self.0.traces, self.1))?;
        o.serialize_field(
            "metrics",
            &json!({
                "inspectedTraces": m.inspected_traces,
                "inspectedBytes": m.inspected_bytes.to_string(),
                "inspectedSpans": m.inspected_spans.to_string(),
                "totalBlocks": m.total_blocks,
                "completedJobs": m.completed_jobs,
                "totalJobs": m.total_jobs,
            }),
        )?;
        o.end()
    }
}

struct TraceOut<'a>(&'a TraceHit, Option<&'a TenantId>);

impl Serialize for TraceOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Sets<'a>(&'a [HitSpanset]);
        impl Serialize for Sets<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(SpansetOut))
            }
        }
        struct Stats<'a>(&'a std::collections::BTreeMap<String, ServiceStats>);
        impl Serialize for Stats<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (svc, st) in self.0 {
                    m.serialize_entry(svc, &StatOut(st))?;
                }
                m.end()
            }
        }
        let t = self.0;
        let mut o = s.serialize_map(None)?;
        // Always 32 hex characters: log links depend on the leading zeros.
        o.serialize_entry("traceID", &HexStr(&t.id.0))?;
        o.serialize_entry(
            "rootServiceName",
            t.root_service_name.as_deref().unwrap_or(ROOT_NOT_RECEIVED),
        )?;
        if let Some(n) = &t.root_span_name {
            o.serialize_entry("rootTraceName", n)?;
        }
        o.serialize_entry("startTimeUnixNano", &DecStr(t.start_unix_nano))?;
        let ms = (t.end_unix_nano.saturating_sub(t.start_unix_nano)) / 1_000_000;
        if ms > 0 {
            o.serialize_entry("durationMs", &ms)?;
        }
        if let Some(first) = t.spansets.first() {
            o.serialize_entry("spanSet", &SpansetOut(first))?;
        }
        o.serialize_entry("spanSets", &Sets(&t.spansets))?;
        o.serialize_entry("serviceStats", &Stats(&t.service_stats))?;
        // vivace's addition for cross-tenant reads; Tempo has no field for it.
        if let Some(tenant) = self.1 {
            o.serialize_entry("tenant", tenant.as_str())?;
        }
        o.end()
    }
}

struct SpansetOut<'a>(&'a HitSpanset);

impl Serialize for SpansetOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Spans<'a>(&'a [HitSpan]);
        impl Serialize for Spans<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(SpanOut))
            }
        }
        let set = self.0;
        let mut o = s.serialize_map(None)?;
        o.serialize_entry("spans", &Spans(&set.spans))?;
        o.serialize_entry("matched", &set.matched)?;
        if !set.attributes.is_empty() {
            o.serialize_entry("attributes", &AttrsOut(&set.attributes))?;
        }
        o.end()
    }
}

/// Bytes as a lowercase hex JSON string, formatted on the stack: a response with tens of
/// thousands of spans made a heap string per ID otherwise.
struct HexStr<'a>(&'a [u8]);

impl Serialize for HexStr<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        let Some(out) = buf.get_mut(..self.0.len() * 2) else {
            return s.serialize_str(&hex::encode(self.0));
        };
        match hex::encode_to_slice(self.0, out)
            .ok()
            .and_then(|()| std::str::from_utf8(out).ok())
        {
            Some(text) => s.serialize_str(text),
            None => s.serialize_str(&hex::encode(self.0)),
        }
    }
}

/// A u64 as a decimal JSON string (jsonpb's int64 form), formatted on the stack.
struct DecStr(u64);

impl Serialize for DecStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 20];
        let mut at = buf.len();
        let mut v = self.0;
        loop {
            at -= 1;
            buf[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        s.serialize_str(std::str::from_utf8(&buf[at..]).unwrap_or("0"))
    }
}

struct SpanOut<'a>(&'a HitSpan);

impl Serialize for SpanOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sp = self.0;
        let mut o = s.serialize_map(None)?;
        o.serialize_entry("spanID", &HexStr(&sp.span_id))?;
        if !sp.name.is_empty() {
            o.serialize_entry("name", &sp.name)?;
        }
        o.serialize_entry("startTimeUnixNano", &DecStr(sp.start_unix_nano))?;
        o.serialize_entry("durationNanos", &DecStr(sp.duration_nanos))?;
        if !sp.attributes.is_empty() {
            o.serialize_entry("attributes", &AttrsOut(&sp.attributes))?;
        }
        o.end()
    }
}

/// `{"errorCount":..,"spanCount":..}`: keys in the order a JSON map sorts them, zero
/// values left out as jsonpb does. Written directly: a map per service per hit was a
/// large share of the response's cost for searches with tens of thousands of hits.
struct StatOut<'a>(&'a ServiceStats);

impl Serialize for StatOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if self.0.error_count > 0 {
            m.serialize_entry("errorCount", &self.0.error_count)?;
        }
        m.serialize_entry("spanCount", &self.0.span_count)?;
        m.end()
    }
}

struct AttrsOut<'a>(&'a [(String, Value)]);

impl Serialize for AttrsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct AttrOut<'a>(&'a str, &'a Value);
        impl Serialize for AttrOut<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("key", self.0)?;
                m.serialize_entry("value", &ValueOut(self.1))?;
                m.end()
            }
        }
        s.collect_seq(self.0.iter().map(|(k, v)| AttrOut(k, v)))
    }
}

/// [`value_json`] written without building it, for the common scalar types.
struct ValueOut<'a>(&'a Value);

impl Serialize for ValueOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn one<S: Serializer, T: Serialize + ?Sized>(
            s: S,
            key: &str,
            v: &T,
        ) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(key, v)?;
            m.end()
        }
        match self.0 {
            Value::String(v) => one(s, "stringValue", v),
            Value::Status(v) => one(s, "stringValue", v.as_str()),
            Value::Kind(v) => one(s, "stringValue", v.as_str()),
            Value::Bool(v) => one(s, "boolValue", v),
            Value::Int(v) => one(s, "intValue", &v.to_string()),
            other => value_json(other).serialize(s),
        }
    }
}

pub(super) fn value_json(v: &Value) -> Json {
    super::json::any_value_json(&value_any(v))
}

/// A TraceQL value as the OTLP `AnyValue` Tempo puts in search results: durations as Go
/// duration text, status and kind by name.
pub(super) fn value_any(v: &Value) -> AnyValue {
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

    /// IDs and int64 strings formatted on the stack read as the heap-formatted ones did.
    #[test]
    fn stack_formatted_strings_match_to_string() {
        for v in [0u64, 7, 10, 1_700_000_000_123_456_789, u64::MAX] {
            assert_eq!(
                serde_json::to_string(&DecStr(v)).unwrap(),
                format!("\"{v}\"")
            );
        }
        let id: Vec<u8> = (0..16).map(|i| i * 17).collect();
        for bytes in [&id[..0], &id[..8], &id[..], &[0xab; 40][..]] {
            assert_eq!(
                serde_json::to_string(&HexStr(bytes)).unwrap(),
                format!("\"{}\"", hex::encode(bytes))
            );
        }
    }

    /// Service stats and attributes are written without building JSON maps; the bytes must
    /// be those the maps gave (keys sorted, zero error counts left out).
    #[test]
    fn direct_writers_match_json_maps() {
        use crate::traceql::{SpanKind, Status};
        let attrs: Vec<(String, Value)> = vec![
            ("s".into(), Value::String("/api/x \"q\"".into())),
            ("i".into(), Value::Int(-7)),
            ("b".into(), Value::Bool(true)),
            ("f".into(), Value::Float(1.5)),
            ("d".into(), Value::Duration(1_500_000)),
            ("st".into(), Value::Status(Status::Error)),
            ("k".into(), Value::Kind(SpanKind::Server)),
            (
                "a".into(),
                Value::Array(vec![Value::Int(1), Value::String("x".into())]),
            ),
        ];
        let old_attrs: Vec<Json> = attrs
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": value_json(v) }))
            .collect();
        assert_eq!(
            serde_json::to_string(&AttrsOut(&attrs)).unwrap(),
            serde_json::to_string(&old_attrs).unwrap()
        );
        for (spans, errors) in [(3, 0), (5, 2)] {
            let st = ServiceStats {
                span_count: spans,
                error_count: errors,
            };
            let old = if errors > 0 {
                json!({ "spanCount": spans, "errorCount": errors })
            } else {
                json!({ "spanCount": spans })
            };
            assert_eq!(
                serde_json::to_string(&StatOut(&st)).unwrap(),
                serde_json::to_string(&old).unwrap()
            );
        }
    }

    fn params(pairs: &[(&str, &str)]) -> SearchParams {
        let mut p = SearchParams::default();
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "q" => p.q = v,
                "tags" => p.tags = v,
                "limit" => p.limit = v,
                "spss" => p.spss = v,
                "start" => p.start = v,
                "end" => p.end = v,
                "minDuration" => p.min_duration = v,
                _ => unreachable!(),
            }
        }
        p
    }

    #[test]
    fn request_validation() {
        let r = build_request(&params(&[])).unwrap();
        assert_eq!((r.limit, r.spss), (20, 3));
        assert!(build_request(&params(&[("limit", "0")])).is_err());
        assert!(build_request(&params(&[("q", "{}"), ("tags", "a=b")])).is_err());
        assert!(build_request(&params(&[("start", "10"), ("end", "10")])).is_err());
        assert!(build_request(&params(&[("start", "10")])).is_err());
        assert!(build_request(&params(&[("q", "{ .a = }")])).is_err());
        let err = build_request(&params(&[("q", "{} | rate()")]))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/api/metrics/query_range"),
            "{err}"
        );
        let r = build_request(&params(&[("spss", "0"), ("minDuration", "100ms")])).unwrap();
        assert_eq!(r.spss, MAX_SPSS);
        assert_eq!(r.min_duration_nanos, Some(100_000_000));
        assert_eq!(
            build_request(&params(&[("spss", "100")])).unwrap().spss,
            100
        );
        let err = build_request(&params(&[("spss", "101")])).err().unwrap();
        assert!(matches!(err, ApiError::BadRequest(_)), "{err}");
        assert!(err.to_string().contains("exceeds 100"), "{err}");
    }

    #[test]
    fn legacy_tags_become_traceql() {
        assert_eq!(
            tags_to_traceql(r#"service.name=shop http.status_code=500 name="GET /""#).unwrap(),
            r#"{ ."service.name" = "shop" && ."http.status_code" = 500 && name = "GET /" }"#
        );
        assert!(traceql::parse(&tags_to_traceql("status=error a=b").unwrap()).is_ok());
        assert!(tags_to_traceql("novalue").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(format_duration(1_500_000_000), "1.5s");
        assert_eq!(format_duration(250_000_000), "250ms");
        assert_eq!(format_duration(90_000_000_000), "1m30s");
        assert_eq!(format_duration(999), "999ns");
    }
}
