//! `GET /api/metrics/query_range` and `GET /api/metrics/query`: TraceQL metrics in Tempo's
//! JSON (proto3 JSON: int64 as strings, zero values left out) and protobuf shapes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query as QueryParams, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::tempopb;
use super::{protobuf, read_tenants, wants_protobuf, ApiError, ApiState};
use crate::model::TenantId;
use crate::querier::metrics::{plan, MetricsResults};
use crate::querier::search::SearchMetrics;
use crate::traceql::metrics::{default_step, Buckets, Label, LabelValue, Series};

/// Tempo's `query_frontend.metrics.max_intervals`: more buckets than this is a step too
/// small for the range.
const MAX_INTERVALS: u64 = 10_000;
/// Tempo's default range when neither `start` nor `since` is given.
const DEFAULT_SINCE: Duration = Duration::from_secs(3600);

#[derive(Deserialize, Default, Debug)]
pub(super) struct MetricsParams {
    pub(super) q: Option<String>,
    /// Prometheus' name for `q`, which Grafana still sends.
    pub(super) query: Option<String>,
    pub(super) start: Option<String>,
    pub(super) end: Option<String>,
    pub(super) since: Option<String>,
    pub(super) step: Option<String>,
    pub(super) exemplars: Option<String>,
}

/// A checked request: the query text, its range in unix ns, the step (None: instant).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MetricsRequest {
    pub(super) query: String,
    pub(super) start_ns: u64,
    pub(super) end_ns: u64,
    pub(super) step_ns: Option<u64>,
    pub(super) exemplars: Option<usize>,
}

pub(super) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Tempo's timestamp forms: unix seconds (10 digits or fewer), unix nanoseconds, fractional
/// seconds, or RFC 3339.
pub(super) fn parse_timestamp(name: &str, v: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "could not parse '{name}' parameter {v:?}: expected unix seconds, unix nanoseconds or RFC 3339"
        ))
    };
    if v.contains('.') {
        if let Ok(f) = v.parse::<f64>() {
            if f.is_finite() && f >= 0.0 {
                let ms = (f * 1000.0).round() as u64;
                return Ok(ms * 1_000_000);
            }
        }
    }
    if let Ok(n) = v.parse::<u64>() {
        return Ok(if v.len() <= 10 {
            n.saturating_mul(1_000_000_000)
        } else {
            n
        });
    }
    let t = humantime::parse_rfc3339_weak(v).map_err(|_| bad())?;
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .map_err(|_| bad())
}

/// A step as seconds (`15`, `0.5`) or a duration (`15s`, `1m30s`).
fn parse_step(v: &str) -> Result<u64, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("invalid step {v:?}: {why}"));
    let ns = match v.parse::<f64>() {
        Ok(s) if s.is_finite() => {
            if s <= 0.0 {
                return Err(bad("step must be positive"));
            }
            (s * 1e9) as u64
        }
        Ok(_) => return Err(bad("not a finite number")),
        Err(_) => crate::config::parse_duration(v)
            .map_err(|e| bad(&e.to_string()))
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))?,
    };
    if ns == 0 {
        return Err(bad("step must be positive"));
    }
    Ok(ns)
}

impl MetricsParams {
    /// Range or instant (`instant`: no step), checked as Tempo's frontend checks it.
    pub(super) fn check(&self, instant: bool, now: u64) -> Result<MetricsRequest, ApiError> {
        let query = self
            .q
            .as_deref()
            .or(self.query.as_deref())
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| ApiError::BadRequest("missing q: a TraceQL metrics query".into()))?
            .to_owned();
        let since = match self.since.as_deref().filter(|s| !s.is_empty()) {
            None => DEFAULT_SINCE,
            Some(s) => crate::config::parse_duration(s)
                .map_err(|e| ApiError::BadRequest(format!("could not parse 'since': {e}")))?,
        };
        let end = match self.end.as_deref().filter(|s| !s.is_empty()) {
            None => now,
            Some(e) => parse_timestamp("end", e)?,
        };
        let start = match self.start.as_deref().filter(|s| !s.is_empty()) {
            None => end
                .min(now)
                .saturating_sub(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)),
            Some(s) => parse_timestamp("start", s)?,
        };
        if start >= end {
            return Err(ApiError::BadRequest(format!(
                "invalid time range: end {end} must be after start {start}"
            )));
        }
        let step_ns = if instant {
            None
        } else {
            let step = match self.step.as_deref().filter(|s| !s.is_empty()) {
                None => default_step(start, end),
                Some(s) => parse_step(s)?,
            };
            if (end - start) / step > MAX_INTERVALS {
                return Err(ApiError::BadRequest(format!(
                    "step of {} is too small, minimum step for given range is {}",
                    humantime::format_duration(Duration::from_nanos(step)),
                    humantime::format_duration(Duration::from_nanos((end - start) / MAX_INTERVALS))
                )));
            }
            Some(step)
        };
        let exemplars = match self.exemplars.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(e) => Some(e.parse::<usize>().map_err(|_| {
                ApiError::BadRequest(format!("invalid exemplars {e:?}: expected a whole number"))
            })?),
        };
        Ok(MetricsRequest {
            query,
            start_ns: start,
            end_ns: end,
            step_ns,
            exemplars,
        })
    }
}

/// Runs a checked request for each tenant (limits applied), merging tenants' series.
pub(super) async fn run(
    s: &ApiState,
    tenants: &[TenantId],
    req: &MetricsRequest,
) -> Result<MetricsResults, ApiError> {
    let limits = &s.query_limits;
    let max_duration = strictest_duration(s, tenants, limits.max_duration);
    if !max_duration.is_zero() && req.end_ns - req.start_ns > max_duration.as_nanos() as u64 {
        return Err(ApiError::BadRequest(format!(
            "metrics query time range exceeds the maximum allowed duration of {}",
            humantime::format_duration(max_duration)
        )));
    }
    let query = crate::traceql::parse(&req.query)
        .map_err(|e| ApiError::BadRequest(format!("invalid TraceQL query: {e}")))?;
    let buckets = match req.step_ns {
        Some(step) => Buckets::range(req.start_ns, req.end_ns, step),
        None => Buckets::instant(req.start_ns, req.end_ns),
    };
    let exemplars = req
        .exemplars
        .unwrap_or(limits.max_exemplars)
        .min(limits.max_exemplars);
    let frontend = s
        .frontend
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this process runs no query frontend".into()))?;
    let (evaluator, columns) = plan(&query, buckets, limits.max_series, exemplars)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    frontend
        .metrics(tenants, evaluator, columns)
        .await
        .map_err(ApiError::from)
}

/// The smallest non-zero limit among the tenants' `read.max_metrics_duration` and the
/// frontend's own.
fn strictest_duration(s: &ApiState, tenants: &[TenantId], frontend: Duration) -> Duration {
    let mut all: Vec<Duration> = vec![frontend];
    if let Some(o) = &s.overrides {
        all.extend(
            tenants
                .iter()
                .map(|t| o.limits(t).read.max_metrics_duration),
        );
    }
    all.into_iter()
        .filter(|d| !d.is_zero())
        .min()
        .unwrap_or_default()
}

pub(super) async fn query_range(
    State(s): State<ApiState>,
    QueryParams(p): QueryParams<MetricsParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    respond(&s, &p, &headers, false).await
}

pub(super) async fn query_instant(
    State(s): State<ApiState>,
    QueryParams(p): QueryParams<MetricsParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    respond(&s, &p, &headers, true).await
}

/// Both endpoints: check, run, and answer in the shape the request asked for.
async fn respond(
    s: &ApiState,
    p: &MetricsParams,
    headers: &HeaderMap,
    instant: bool,
) -> Result<Response, ApiError> {
    let tenants = read_tenants(s, headers)?;
    let req = p.check(instant, now_ns())?;
    let r = run(s, &tenants, &req).await?;
    Ok(match (instant, wants_protobuf(headers)) {
        (false, true) => protobuf(range_proto(&r)),
        (true, true) => protobuf(instant_proto(&r)),
        (_, false) => axum::Json(ResponseJson {
            results: &r,
            instant,
        })
        .into_response(),
    })
}

/// Tempo's message when the series limit cut the answer.
fn partial_message(r: &MetricsResults) -> Option<String> {
    if r.output.truncated {
        return Some("response exceeds the maximum number of series: results are partial".into());
    }
    r.partial.clone()
}

// ---------------------------------------------------------------------------------------------
// Protobuf

pub(super) fn label_proto(l: &Label) -> crate::model::KeyValue {
    use crate::model::any_value::Value as V;
    let value = match &l.value {
        LabelValue::Nil => None,
        LabelValue::String(s) => Some(V::StringValue(s.clone())),
        LabelValue::Int(i) => Some(V::IntValue(*i)),
        LabelValue::Float(f) => Some(V::DoubleValue(*f)),
        LabelValue::Bool(b) => Some(V::BoolValue(*b)),
    };
    crate::model::KeyValue {
        key: l.key.clone(),
        value: Some(crate::model::AnyValue { value }),
        ..Default::default()
    }
}

fn metrics_proto(m: &SearchMetrics) -> tempopb::SearchMetrics {
    tempopb::SearchMetrics {
        inspected_traces: u32::try_from(m.inspected_traces).unwrap_or(u32::MAX),
        inspected_bytes: m.inspected_bytes,
        total_blocks: u32::try_from(m.total_blocks).unwrap_or(u32::MAX),
        completed_jobs: u32::try_from(m.completed_jobs).unwrap_or(u32::MAX),
        total_jobs: u32::try_from(m.total_jobs).unwrap_or(u32::MAX),
        total_block_bytes: 0,
        inspected_spans: m.inspected_spans,
    }
}

fn status(r: &MetricsResults) -> (i32, String) {
    match partial_message(r) {
        Some(m) => (tempopb::PartialStatus::Partial as i32, m),
        None => (tempopb::PartialStatus::Complete as i32, String::new()),
    }
}

pub(super) fn range_proto(r: &MetricsResults) -> tempopb::QueryRangeResponse {
    let (status, message) = status(r);
    tempopb::QueryRangeResponse {
        series: r
            .output
            .series
            .iter()
            .map(|s| tempopb::TimeSeries {
                labels: s.labels.iter().map(label_proto).collect(),
                samples: s
                    .samples
                    .iter()
                    .map(|x| tempopb::Sample {
                        timestamp_ms: x.timestamp_ms,
                        value: x.value,
                    })
                    .collect(),
                exemplars: s
                    .exemplars
                    .iter()
                    .map(|e| tempopb::Exemplar {
                        labels: e.labels.iter().map(label_proto).collect(),
                        value: e.value,
                        timestamp_ms: e.timestamp_ms,
                    })
                    .collect(),
            })
            .collect(),
        metrics: Some(metrics_proto(&r.metrics)),
        status,
        message,
    }
}

/// An instant query's one value per series: its single bucket's sample.
fn instant_value(s: &Series) -> f64 {
    s.samples.first().map_or(0.0, |x| x.value)
}

pub(super) fn instant_proto(r: &MetricsResults) -> tempopb::QueryInstantResponse {
    let (status, message) = status(r);
    tempopb::QueryInstantResponse {
        series: r
            .output
            .series
            .iter()
            .map(|s| tempopb::InstantSeries {
                labels: s.labels.iter().map(label_proto).collect(),
                value: instant_value(s),
            })
            .collect(),
        metrics: Some(metrics_proto(&r.metrics)),
        status,
        message,
    }
}

// ---------------------------------------------------------------------------------------------
// JSON, written straight from the results

/// A double as proto3 JSON writes it: whole numbers without a fraction, infinities as
/// strings.
struct Num(f64);

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_nan() {
            s.serialize_str("NaN")
        } else if v.is_infinite() {
            s.serialize_str(if v > 0.0 { "Infinity" } else { "-Infinity" })
        } else if v.fract() == 0.0 && v.abs() < 9.0e15 {
            s.serialize_i64(v as i64)
        } else {
            s.serialize_f64(v)
        }
    }
}

struct LabelJson<'a>(&'a Label);

impl Serialize for LabelJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Value<'a>(&'a LabelValue);
        impl Serialize for Value<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(None)?;
                match self.0 {
                    LabelValue::Nil => {}
                    LabelValue::String(v) => m.serialize_entry("stringValue", v)?,
                    LabelValue::Int(v) => m.serialize_entry("intValue", &v.to_string())?,
                    LabelValue::Float(v) => m.serialize_entry("doubleValue", &Num(*v))?,
                    LabelValue::Bool(v) => m.serialize_entry("boolValue", v)?,
                }
                m.end()
            }
        }
        let mut o = s.serialize_struct("KeyValue", 2)?;
        o.serialize_field("key", &self.0.key)?;
        o.serialize_field("value", &Value(&self.0.value))?;
        o.end()
    }
}

struct Labels<'a>(&'a [Label]);

impl Serialize for Labels<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(LabelJson))
    }
}

struct MetricsJson<'a>(&'a SearchMetrics);

impl Serialize for MetricsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let m = self.0;
        let mut o = s.serialize_map(None)?;
        // uint64 fields as strings, uint32 as numbers; zeros left out.
        if m.inspected_traces > 0 {
            o.serialize_entry("inspectedTraces", &m.inspected_traces)?;
        }
        if m.inspected_bytes > 0 {
            o.serialize_entry("inspectedBytes", &m.inspected_bytes.to_string())?;
        }
        if m.total_blocks > 0 {
            o.serialize_entry("totalBlocks", &m.total_blocks)?;
        }
        if m.completed_jobs > 0 {
            o.serialize_entry("completedJobs", &m.completed_jobs)?;
        }
        if m.total_jobs > 0 {
            o.serialize_entry("totalJobs", &m.total_jobs)?;
        }
        if m.inspected_spans > 0 {
            o.serialize_entry("inspectedSpans", &m.inspected_spans.to_string())?;
        }
        o.end()
    }
}

struct SeriesJson<'a>(&'a Series);

impl Serialize for SeriesJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Sample(i64, f64);
        impl Serialize for Sample {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("timestampMs", &self.0.to_string())?;
                if self.1 != 0.0 {
                    m.serialize_entry("value", &Num(self.1))?;
                }
                m.end()
            }
        }
        struct ExemplarJson<'a>(&'a crate::traceql::metrics::Exemplar);
        impl Serialize for ExemplarJson<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let e = self.0;
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("labels", &Labels(&e.labels))?;
                if e.value != 0.0 {
                    m.serialize_entry("value", &Num(e.value))?;
                }
                m.serialize_entry("timestampMs", &e.timestamp_ms.to_string())?;
                m.end()
            }
        }
        let series = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("labels", &Labels(&series.labels))?;
        m.serialize_entry(
            "samples",
            &series
                .samples
                .iter()
                .map(|x| Sample(x.timestamp_ms, x.value))
                .collect::<Vec<_>>(),
        )?;
        if !series.exemplars.is_empty() {
            m.serialize_entry(
                "exemplars",
                &series
                    .exemplars
                    .iter()
                    .map(ExemplarJson)
                    .collect::<Vec<_>>(),
            )?;
        }
        m.end()
    }
}

/// `tempopb.QueryRangeResponse` (samples per series) or `tempopb.QueryInstantResponse` (one
/// value per series) as JSON: the two differ only in how a series is written.
struct ResponseJson<'a> {
    results: &'a MetricsResults,
    instant: bool,
}

impl Serialize for ResponseJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Instant<'a>(&'a Series);
        impl Serialize for Instant<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("labels", &Labels(&self.0.labels))?;
                let v = instant_value(self.0);
                if v != 0.0 {
                    m.serialize_entry("value", &Num(v))?;
                }
                m.end()
            }
        }
        struct All<'a>(&'a [Series], bool);
        impl Serialize for All<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if self.1 {
                    s.collect_seq(self.0.iter().map(Instant))
                } else {
                    s.collect_seq(self.0.iter().map(SeriesJson))
                }
            }
        }
        let r = self.results;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("series", &All(&r.output.series, self.instant))?;
        m.serialize_entry("metrics", &MetricsJson(&r.metrics))?;
        if let Some(msg) = partial_message(r) {
            m.serialize_entry("status", "PARTIAL")?;
            m.serialize_entry("message", &msg)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn params(pairs: &[(&str, &str)]) -> MetricsParams {
        let mut p = MetricsParams::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "q" => p.q = v,
                "start" => p.start = v,
                "end" => p.end = v,
                "since" => p.since = v,
                "step" => p.step = v,
                "exemplars" => p.exemplars = v,
                _ => unreachable!(),
            }
        }
        p
    }

    #[test]
    fn timestamps_in_every_form_tempo_takes() {
        let s = 1_700_000_000u64;
        assert_eq!(
            parse_timestamp("start", "1700000000").unwrap(),
            s * 1_000_000_000
        );
        assert_eq!(
            parse_timestamp("start", "1700000000123456789").unwrap(),
            s * 1_000_000_000 + 123_456_789
        );
        assert_eq!(
            parse_timestamp("start", "1700000000.5").unwrap(),
            s * 1_000_000_000 + 500_000_000
        );
        assert_eq!(
            parse_timestamp("start", "2023-11-14T22:13:20Z").unwrap(),
            s * 1_000_000_000
        );
        assert!(parse_timestamp("start", "yesterday").is_err());
    }

    #[test]
    fn range_defaults_and_checks() {
        let r = params(&[("q", "{} | rate()")]).check(false, NOW).unwrap();
        assert_eq!(r.end_ns, NOW);
        assert_eq!(r.start_ns, NOW - 3600 * 1_000_000_000);
        assert_eq!(r.step_ns, Some(15 * 1_000_000_000));
        let r = params(&[("q", "{} | rate()"), ("since", "5m"), ("step", "30s")])
            .check(false, NOW)
            .unwrap();
        assert_eq!(r.end_ns - r.start_ns, 300 * 1_000_000_000);
        assert_eq!(r.step_ns, Some(30 * 1_000_000_000));
        assert_eq!(
            params(&[("q", "{} | rate()"), ("step", "2.5")])
                .check(false, NOW)
                .unwrap()
                .step_ns,
            Some(2_500_000_000)
        );
        let instant = params(&[("q", "{} | rate()"), ("step", "1s")])
            .check(true, NOW)
            .unwrap();
        assert_eq!(instant.step_ns, None);

        for bad in [
            params(&[]),
            params(&[("q", "{} | rate()"), ("step", "0")]),
            params(&[("q", "{} | rate()"), ("step", "-5")]),
            params(&[("q", "{} | rate()"), ("step", "soon")]),
            params(&[("q", "{} | rate()"), ("step", "100ms")]),
            params(&[("q", "{} | rate()"), ("start", "20"), ("end", "10")]),
            params(&[("q", "{} | rate()"), ("exemplars", "many")]),
        ] {
            let e = bad.check(false, NOW).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{bad:?}: {e}");
        }
        let e = params(&[("q", "{} | rate()"), ("step", "100ms")])
            .check(false, NOW)
            .unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
    }

    #[test]
    fn json_shape_is_proto3_json() {
        let r = MetricsResults {
            output: crate::traceql::metrics::MetricsOutput {
                series: vec![Series {
                    labels: vec![
                        Label {
                            key: "resource.service.name".into(),
                            value: LabelValue::String("checkout".into()),
                        },
                        Label {
                            key: "span.http.status_code".into(),
                            value: LabelValue::Int(500),
                        },
                        Label {
                            key: "p".into(),
                            value: LabelValue::Float(0.9),
                        },
                        Label {
                            key: "span.missing".into(),
                            value: LabelValue::Nil,
                        },
                    ],
                    samples: vec![
                        crate::traceql::metrics::Sample {
                            timestamp_ms: 1_000,
                            value: 15.0,
                        },
                        crate::traceql::metrics::Sample {
                            timestamp_ms: 2_000,
                            value: 0.0,
                        },
                        crate::traceql::metrics::Sample {
                            timestamp_ms: 3_000,
                            value: 0.25,
                        },
                    ],
                    exemplars: Vec::new(),
                }],
                truncated: false,
            },
            metrics: SearchMetrics {
                inspected_bytes: 42,
                completed_jobs: 1,
                total_jobs: 1,
                ..Default::default()
            },
            partial: None,
        };
        let json = serde_json::to_string(&ResponseJson {
            results: &r,
            instant: false,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"series":[{"labels":[{"key":"resource.service.name","value":{"stringValue":"checkout"}},{"key":"span.http.status_code","value":{"intValue":"500"}},{"key":"p","value":{"doubleValue":0.9}},{"key":"span.missing","value":{}}],"samples":[{"timestampMs":"1000","value":15},{"timestampMs":"2000"},{"timestampMs":"3000","value":0.25}]}],"metrics":{"inspectedBytes":"42","completedJobs":1,"totalJobs":1}}"#
        );
        let json = serde_json::to_string(&ResponseJson {
            results: &r,
            instant: true,
        })
        .unwrap();
        assert!(json.starts_with(r#"{"series":[{"labels":["#), "{json}");
        assert!(json.contains(r#""value":15}"#), "{json}");
    }
}
