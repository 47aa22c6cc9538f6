//! `GET /api/search`: TraceQL (or legacy logfmt tags) search in Tempo's response shape.

use std::sync::Arc;

use axum::extract::{Query as QueryParams, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{read_tenants, ApiError, ApiState};
use crate::frontend::Frontend;
use crate::model::TenantId;
use crate::querier::search::{SearchRequest, SearchResults};
use crate::querier::TimeRange;
use crate::traceql;

mod response;

pub(super) use response::{value_any, write_response};

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
    // Tens of thousands of hits make megabytes of JSON: written off the executor, and the
    // hits freed there too.
    let body = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(response::size_hint(&results));
        response::write_response(&mut buf, &results, &owners);
        buf
    })
    .await
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
