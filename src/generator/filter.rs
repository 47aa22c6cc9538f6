//! Span filter policies (`filter_policies`), Tempo's semantics: a span is kept when it matches
//! no `exclude` policy and either matches any `include_any` policy or every `include` policy.
//! A policy matches when all its attributes do: intrinsics `name`, `kind` (`SPAN_KIND_*`) and
//! `status` (`STATUS_CODE_*`), or `span.<key>` / `resource.<key>` attributes, strictly (typed
//! equality) or by an unanchored regex on string values.

use regex::Regex;

use crate::config::generator::{FilterPolicy, MatchType, MatchValue, PolicyMatch};
use crate::model::{any_value, span, status, KeyValue, Span};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("filter policy attribute {key:?}: {msg}")]
    Attribute { key: String, msg: String },
    #[error("filter policy has no include, include_any or exclude")]
    Empty,
}

#[derive(Clone)]
enum Target {
    Name,
    Kind,
    Status,
    Span(String),
    Resource(String),
}

#[derive(Clone)]
enum Test {
    Strict(MatchValue),
    Regex(Regex),
}

#[derive(Clone)]
struct Condition {
    target: Target,
    test: Test,
}

/// A compiled `filter_policies` list.
#[derive(Default, Clone)]
pub(crate) struct SpanFilter {
    include: Vec<Vec<Condition>>,
    include_any: Vec<Vec<Condition>>,
    exclude: Vec<Vec<Condition>>,
}

impl SpanFilter {
    pub(crate) fn new(policies: &[FilterPolicy]) -> Result<Self, FilterError> {
        let mut f = SpanFilter::default();
        for p in policies {
            if p.include.is_none() && p.include_any.is_none() && p.exclude.is_none() {
                return Err(FilterError::Empty);
            }
            for (m, into) in [
                (&p.include, &mut f.include),
                (&p.include_any, &mut f.include_any),
                (&p.exclude, &mut f.exclude),
            ] {
                if let Some(m) = m {
                    into.push(compile(m)?);
                }
            }
        }
        Ok(f)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.include.is_empty() && self.include_any.is_empty() && self.exclude.is_empty()
    }

    pub(crate) fn keep(&self, resource: &[KeyValue], s: &Span) -> bool {
        if self.is_empty() {
            return true;
        }
        if self.exclude.iter().any(|p| matches(p, resource, s)) {
            return false;
        }
        if !self.include_any.is_empty() && self.include_any.iter().any(|p| matches(p, resource, s))
        {
            return true;
        }
        if !self.include.is_empty() {
            return self.include.iter().all(|p| matches(p, resource, s));
        }
        self.include_any.is_empty()
    }
}

fn compile(m: &PolicyMatch) -> Result<Vec<Condition>, FilterError> {
    m.attributes
        .iter()
        .map(|a| {
            let err = |msg: &str| FilterError::Attribute {
                key: a.key.clone(),
                msg: msg.to_owned(),
            };
            let target = match a.key.as_str() {
                "name" => Target::Name,
                "kind" => Target::Kind,
                "status" => Target::Status,
                k => {
                    if let Some(attr) = k.strip_prefix("span.") {
                        Target::Span(attr.to_owned())
                    } else if let Some(attr) = k.strip_prefix("resource.") {
                        Target::Resource(attr.to_owned())
                    } else {
                        return Err(err(
                            "must be name, kind, status, span.<attribute> or resource.<attribute>",
                        ));
                    }
                }
            };
            let test = match m.match_type {
                MatchType::Strict => {
                    match (&target, &a.value) {
                        (Target::Kind, MatchValue::String(v)) if kind_code(v).is_none() => {
                            return Err(err("kind must be one of SPAN_KIND_*"))
                        }
                        (Target::Status, MatchValue::String(v)) if status_code(v).is_none() => {
                            return Err(err("status must be one of STATUS_CODE_*"))
                        }
                        (Target::Name | Target::Kind | Target::Status, MatchValue::String(_)) => {}
                        (Target::Name | Target::Kind | Target::Status, _) => {
                            return Err(err("intrinsic values are strings"))
                        }
                        _ => {}
                    }
                    Test::Strict(a.value.clone())
                }
                MatchType::Regex => match &a.value {
                    MatchValue::String(r) => {
                        Test::Regex(Regex::new(r).map_err(|e| err(&e.to_string()))?)
                    }
                    _ => return Err(err("a regex match needs a string value")),
                },
            };
            Ok(Condition { target, test })
        })
        .collect()
}

fn kind_code(s: &str) -> Option<i32> {
    span::SpanKind::from_str_name(s).map(|k| k as i32)
}

fn status_code(s: &str) -> Option<i32> {
    status::StatusCode::from_str_name(s).map(|k| k as i32)
}

/// The OTLP enum names Tempo matches kinds and statuses against.
pub(crate) fn kind_str(kind: i32) -> &'static str {
    span::SpanKind::try_from(kind).map_or("SPAN_KIND_UNSPECIFIED", |k| k.as_str_name())
}

pub(crate) fn status_str(s: &Span) -> &'static str {
    let code = s.status.as_ref().map_or(0, |st| st.code);
    status::StatusCode::try_from(code).map_or("STATUS_CODE_UNSET", |c| c.as_str_name())
}

fn matches(conds: &[Condition], resource: &[KeyValue], s: &Span) -> bool {
    conds.iter().all(|c| match &c.target {
        Target::Name => test_str(&c.test, &s.name),
        Target::Kind => test_str(&c.test, kind_str(s.kind)),
        Target::Status => test_str(&c.test, status_str(s)),
        Target::Span(k) => find(&s.attributes, k).is_some_and(|v| test_value(&c.test, v)),
        Target::Resource(k) => find(resource, k).is_some_and(|v| test_value(&c.test, v)),
    })
}

fn test_str(t: &Test, v: &str) -> bool {
    match t {
        Test::Regex(r) => r.is_match(v),
        Test::Strict(MatchValue::String(want)) => want == v,
        Test::Strict(_) => false,
    }
}

fn test_value(t: &Test, v: &any_value::Value) -> bool {
    match (t, v) {
        (_, any_value::Value::StringValue(sv)) => test_str(t, sv),
        (Test::Strict(MatchValue::Int(want)), any_value::Value::IntValue(iv)) => want == iv,
        (Test::Strict(MatchValue::Float(want)), any_value::Value::DoubleValue(dv)) => want == dv,
        (Test::Strict(MatchValue::Bool(want)), any_value::Value::BoolValue(bv)) => want == bv,
        _ => false,
    }
}

fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::generator::MatchAttribute;
    use crate::model::{AnyValue, Status};

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn policy(t: MatchType, attrs: &[(&str, MatchValue)]) -> PolicyMatch {
        PolicyMatch {
            match_type: t,
            attributes: attrs
                .iter()
                .map(|(k, v)| MatchAttribute {
                    key: (*k).into(),
                    value: v.clone(),
                })
                .collect(),
        }
    }

    fn span_of(name: &str, kind: span::SpanKind, error: bool, attrs: Vec<KeyValue>) -> Span {
        Span {
            name: name.into(),
            kind: kind as i32,
            status: error.then(|| Status {
                code: status::StatusCode::Error as i32,
                message: String::new(),
            }),
            attributes: attrs,
            ..Default::default()
        }
    }

    #[test]
    fn include_exclude_and_include_any() {
        let res = vec![kv(
            "service.name",
            any_value::Value::StringValue("api".into()),
        )];
        let f = SpanFilter::new(&[FilterPolicy {
            include: Some(policy(
                MatchType::Strict,
                &[
                    ("kind", MatchValue::String("SPAN_KIND_SERVER".into())),
                    ("resource.service.name", MatchValue::String("api".into())),
                ],
            )),
            include_any: None,
            exclude: Some(policy(
                MatchType::Regex,
                &[("span.http.target", MatchValue::String("^/health".into()))],
            )),
        }])
        .unwrap();
        let server = |target: &str| {
            span_of(
                "GET",
                span::SpanKind::Server,
                false,
                vec![kv(
                    "http.target",
                    any_value::Value::StringValue(target.into()),
                )],
            )
        };
        assert!(f.keep(&res, &server("/orders")));
        assert!(!f.keep(&res, &server("/healthz")), "excluded by regex");
        let client = span_of("GET", span::SpanKind::Client, false, vec![]);
        assert!(!f.keep(&res, &client), "not a server span");
        assert!(!f.keep(&[], &server("/orders")), "resource does not match");

        let any = SpanFilter::new(&[FilterPolicy {
            include: None,
            include_any: Some(policy(
                MatchType::Strict,
                &[("status", MatchValue::String("STATUS_CODE_ERROR".into()))],
            )),
            exclude: None,
        }])
        .unwrap();
        assert!(any.keep(&res, &span_of("x", span::SpanKind::Internal, true, vec![])));
        assert!(!any.keep(&res, &span_of("x", span::SpanKind::Internal, false, vec![])));
    }

    #[test]
    fn strict_matches_are_typed() {
        let f = SpanFilter::new(&[FilterPolicy {
            include: Some(policy(
                MatchType::Strict,
                &[("span.http.status_code", MatchValue::Int(500))],
            )),
            ..Default::default()
        }])
        .unwrap();
        let with = |v| {
            span_of(
                "x",
                span::SpanKind::Server,
                false,
                vec![kv("http.status_code", v)],
            )
        };
        assert!(f.keep(&[], &with(any_value::Value::IntValue(500))));
        assert!(!f.keep(&[], &with(any_value::Value::StringValue("500".into()))));
    }

    #[test]
    fn bad_policies_are_errors_naming_the_key() {
        let bad = [
            policy(
                MatchType::Strict,
                &[("kind", MatchValue::String("server".into()))],
            ),
            policy(
                MatchType::Regex,
                &[("span.x", MatchValue::String("(".into()))],
            ),
            policy(MatchType::Strict, &[("duration", MatchValue::Int(1))]),
        ];
        for (p, key) in bad.into_iter().zip(["kind", "span.x", "duration"]) {
            let err = SpanFilter::new(&[FilterPolicy {
                include: Some(p),
                ..Default::default()
            }])
            .err()
            .unwrap()
            .to_string();
            assert!(err.contains(key), "{err}");
        }
        assert!(SpanFilter::new(&[FilterPolicy::default()]).is_err());
    }
}
