//! Tag discovery endpoints, v1 and v2, as Grafana's autocomplete calls them.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{tenant, ApiError, ApiState};
use crate::model::TenantId;
use crate::querier::tags::{TagTarget, TagValue, TagsRequest, ATTRIBUTE_SCOPES, INTRINSIC_TAGS};
use crate::querier::TimeRange;
use crate::traceql::{self, FieldExpr, Query, Scope, SpansetExpr, Stage};

/// Grafana asks for at most 5000 tags or values; so do we by default.
const DEFAULT_LIMIT: usize = 5000;
/// Tempo's `max_bytes_per_tag_values_query`: the response is cut at about this size.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

#[derive(Deserialize, Default)]
pub(super) struct TagParams {
    pub(super) scope: Option<String>,
    pub(super) q: Option<String>,
    pub(super) start: Option<String>,
    pub(super) end: Option<String>,
    pub(super) limit: Option<String>,
}

fn request(p: &TagParams) -> Result<TagsRequest, ApiError> {
    let num = |name: &str, v: &Option<String>| -> Result<Option<u64>, ApiError> {
        match v.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                ApiError::BadRequest(format!("invalid {name} {s:?}: expected a whole number"))
            }),
        }
    };
    let range = match (num("start", &p.start)?, num("end", &p.end)?) {
        (Some(s), Some(e)) if e > s => Some(TimeRange {
            start_s: s,
            end_s: e,
        }),
        (None, None) => None,
        _ => {
            return Err(ApiError::BadRequest(
                "invalid time range: give start and end, end after start".into(),
            ))
        }
    };
    let limit = match num("limit", &p.limit)? {
        None | Some(0) => DEFAULT_LIMIT,
        Some(n) => n as usize,
    };
    // Lenient, as Tempo's: a partial query typed into the editor means "no filter".
    let filter =
        p.q.as_deref()
            .filter(|q| !q.trim().is_empty() && q.trim() != "{}")
            .and_then(|q| traceql::parse(q).ok())
            .filter(|q| !q.is_metrics())
            .map(Arc::new);
    Ok(TagsRequest {
        range,
        filter,
        limit,
    })
}

fn parse_scope(s: Option<&str>) -> Result<Option<&'static str>, ApiError> {
    match s.unwrap_or("") {
        "" | "all" => Ok(None),
        "intrinsic" => Ok(Some("intrinsic")),
        other => ATTRIBUTE_SCOPES
            .iter()
            .find(|x| **x == other)
            .map(|x| Some(*x))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "invalid scope {other:?}: use resource, span, event, link, instrumentation or intrinsic"
                ))
            }),
    }
}

fn frontend(s: &ApiState) -> Result<&crate::frontend::Frontend, ApiError> {
    s.frontend
        .as_deref()
        .ok_or_else(|| ApiError::Unavailable("this process runs no query frontend".into()))
}

/// Keeps adding names while the response stays under the size cap.
fn capped<'a>(items: impl IntoIterator<Item = &'a String>, used: &mut usize) -> Vec<&'a String> {
    let mut out = Vec::new();
    for s in items {
        *used += s.len() + 3;
        if *used > MAX_RESPONSE_BYTES {
            break;
        }
        out.push(s);
    }
    out
}

/// Tag names as v1 lists them: one flat, sorted list (all scopes, or the one asked for).
pub(super) async fn names_v1(
    s: &ApiState,
    tenant: &TenantId,
    p: &TagParams,
) -> Result<Vec<String>, ApiError> {
    let scope = parse_scope(p.scope.as_deref())?;
    let req = request(p)?;
    let names = frontend(s)?.tag_names(tenant, &req).await?;
    let mut all: BTreeSet<String> = BTreeSet::new();
    match scope {
        Some("intrinsic") => all.extend(INTRINSIC_TAGS.iter().map(|s| s.to_string())),
        Some(sc) => all.extend(names.0.get(sc).cloned().unwrap_or_default()),
        None => {
            for set in names.0.values() {
                all.extend(set.iter().cloned());
            }
        }
    }
    let mut used = 0;
    Ok(capped(all.iter().take(req.limit), &mut used)
        .into_iter()
        .cloned()
        .collect())
}

/// Tag names per scope as v2 lists them; scopes without tags are left out (Grafana's
/// datasource expects every listed scope to carry a list), intrinsics always come last.
pub(super) async fn names_v2(
    s: &ApiState,
    tenant: &TenantId,
    p: &TagParams,
) -> Result<Vec<(String, Vec<String>)>, ApiError> {
    let scope = parse_scope(p.scope.as_deref())?;
    let req = request(p)?;
    let names = frontend(s)?.tag_names(tenant, &req).await?;
    let mut scopes = Vec::new();
    let mut used = 0;
    for sc in ATTRIBUTE_SCOPES {
        if scope.is_some_and(|want| want != sc) {
            continue;
        }
        if let Some(set) = names.0.get(sc) {
            let tags = capped(set.iter().take(req.limit), &mut used);
            scopes.push((sc.to_owned(), tags.into_iter().cloned().collect()));
        }
    }
    if scope.is_none() || scope == Some("intrinsic") {
        scopes.push((
            "intrinsic".to_owned(),
            INTRINSIC_TAGS.iter().map(|t| t.to_string()).collect(),
        ));
    }
    Ok(scopes)
}

/// v1 values: plain strings of a bare attribute name (span or resource), or of an
/// intrinsic by its legacy name.
pub(super) async fn values_v1(
    s: &ApiState,
    tenant: &TenantId,
    tag: &str,
    p: &TagParams,
) -> Result<Vec<String>, ApiError> {
    let req = request(p)?;
    let target = match parse_identifier(tag) {
        Ok(t @ TagTarget::Intrinsic(_)) => t,
        _ => TagTarget::Attribute {
            scope: Scope::Unscoped,
            name: tag.to_owned(),
        },
    };
    let values = frontend(s)?.tag_values(tenant, target, &req).await?;
    let strings: BTreeSet<String> = values.into_iter().map(|v| v.value).collect();
    let mut used = 0;
    Ok(capped(strings.iter(), &mut used)
        .into_iter()
        .cloned()
        .collect())
}

/// v2 values: typed, of a TraceQL identifier.
pub(super) async fn values_v2(
    s: &ApiState,
    tenant: &TenantId,
    tag: &str,
    p: &TagParams,
) -> Result<Vec<TagValue>, ApiError> {
    let req = request(p)?;
    let target = parse_identifier(tag)?;
    let values = frontend(s)?.tag_values(tenant, target, &req).await?;
    let mut used = 0;
    let mut list = Vec::new();
    for v in values {
        used += v.value.len() + v.kind.len() + 24;
        if used > MAX_RESPONSE_BYTES {
            break;
        }
        list.push(v);
    }
    Ok(list)
}

pub(super) async fn tags_v1(
    State(s): State<ApiState>,
    QueryParams(p): QueryParams<TagParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let names = names_v1(&s, &tenant(&s, &headers)?, &p).await?;
    Ok(axum::Json(json!({ "tagNames": names, "metrics": {} })).into_response())
}

pub(super) async fn tags_v2(
    State(s): State<ApiState>,
    QueryParams(p): QueryParams<TagParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let scopes: Vec<_> = names_v2(&s, &tenant(&s, &headers)?, &p)
        .await?
        .into_iter()
        .map(|(name, tags)| json!({ "name": name, "tags": tags }))
        .collect();
    Ok(axum::Json(json!({ "scopes": scopes, "metrics": {} })).into_response())
}

/// Grafana encodes the tag in the path twice; axum undoes one layer.
fn decode_tag(raw: &str) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| raw.to_owned())
}

/// A v2 tag identifier (`resource.service.name`, `.http.method`, `name`, `span:status`).
pub(super) fn parse_identifier(tag: &str) -> Result<TagTarget, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!("invalid tag {tag:?}: expected a TraceQL identifier such as resource.service.name or span:name"))
    };
    let q: Query = traceql::parse(&format!("{{ {tag} != nil }}")).map_err(|_| bad())?;
    let Some(Stage::Spanset(SpansetExpr::Filter(f))) = q.pipeline.stages.first() else {
        return Err(bad());
    };
    match &f.expr {
        Some(FieldExpr::Compare { lhs, .. }) => match lhs.as_ref() {
            FieldExpr::Attribute(a) if !a.parent => Ok(TagTarget::Attribute {
                scope: a.scope,
                name: a.name.clone(),
            }),
            FieldExpr::Intrinsic(i) => Ok(TagTarget::Intrinsic(*i)),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

pub(super) async fn tag_values_v1(
    State(s): State<ApiState>,
    Path(tag): Path<String>,
    QueryParams(p): QueryParams<TagParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let values = values_v1(&s, &tenant(&s, &headers)?, &decode_tag(&tag), &p).await?;
    Ok(axum::Json(json!({ "tagValues": values, "metrics": {} })).into_response())
}

pub(super) async fn tag_values_v2(
    State(s): State<ApiState>,
    Path(tag): Path<String>,
    QueryParams(p): QueryParams<TagParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let values: Vec<_> = values_v2(&s, &tenant(&s, &headers)?, &decode_tag(&tag), &p)
        .await?
        .into_iter()
        .map(|v| json!({ "type": v.kind, "value": v.value }))
        .collect();
    Ok(axum::Json(json!({ "tagValues": values, "metrics": {} })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(
            parse_identifier("resource.service.name").unwrap(),
            TagTarget::Attribute {
                scope: Scope::Resource,
                name: "service.name".into()
            }
        );
        assert_eq!(
            parse_identifier(".http.method").unwrap(),
            TagTarget::Attribute {
                scope: Scope::Unscoped,
                name: "http.method".into()
            }
        );
        assert!(matches!(
            parse_identifier("status").unwrap(),
            TagTarget::Intrinsic(traceql::Intrinsic::Status)
        ));
        assert!(parse_identifier("not an identifier").is_err());
    }

    /// Both spellings Tempo offers for autocomplete are listed, and each resolves to an
    /// intrinsic whose values can be asked for.
    #[test]
    fn intrinsic_names_include_scoped_forms() {
        for name in [
            "span:duration",
            "span:kind",
            "span:name",
            "span:status",
            "span:statusMessage",
            "trace:rootName",
            "trace:rootService",
            "traceDuration",
            "duration",
            "rootServiceName",
        ] {
            assert!(INTRINSIC_TAGS.contains(&name), "{name} missing");
        }
        for name in INTRINSIC_TAGS {
            assert!(
                matches!(parse_identifier(name), Ok(TagTarget::Intrinsic(_))),
                "{name}"
            );
        }
        assert!(INTRINSIC_TAGS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn double_encoded_tags() {
        assert_eq!(decode_tag("resource.service.name"), "resource.service.name");
        assert_eq!(decode_tag("span.%22a%20b%22"), "span.\"a b\"");
        assert_eq!(decode_tag("100%"), "100%");
    }

    #[test]
    fn lenient_q_and_scope_validation() {
        let p = TagParams {
            q: Some("{ resource.service.name = ".into()),
            ..Default::default()
        };
        assert!(request(&p).unwrap().filter.is_none());
        assert!(parse_scope(Some("bogus")).is_err());
        assert_eq!(parse_scope(Some("span")).unwrap(), Some("span"));
    }
}
