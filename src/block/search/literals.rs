//! Strings a live trace's encoded bytes must contain for it to match: a search over the
//! ingester's memory skips, undecoded, every trace that lacks one.
//!
//! A string field is stored in protobuf as its raw UTF-8 bytes after a varint of its length,
//! whatever the encoder, so when some span has `resource.service.name = "checkout"`, the
//! bytes `checkout` occur in its trace's chunks right after a length byte of 8 (or 0, the
//! last byte of a length written in more bytes than needed). Two kinds are used: the value
//! of a string equality, and the key of any attribute compared with a literal or matched
//! by a regex (a missing attribute makes either false). Numbers, enums and IDs (hex in
//! TraceQL, raw on the wire) have no single byte form to look for. Built from the same
//! necessary condition ([`Pre`]) that prunes a block's row groups.

use bytes::Bytes;
use memchr::memmem::Finder;

use super::projection::{span_local, Pre};
use crate::model::wire;
use crate::traceql::{CompareOp, FieldExpr, Intrinsic, LogicOp, Scope, Static};

#[derive(Debug, Clone, Default)]
pub(super) enum Literals {
    /// Nothing known: every trace may match.
    #[default]
    True,
    /// The string as a whole field: found, and preceded by `len_last`, the last byte of
    /// its length's varint.
    Contains {
        finder: Box<Finder<'static>>,
        len_last: u8,
        /// A resource attribute: only the resources' bytes are searched.
        resource: bool,
    },
    All(Vec<Literals>),
    AnyOf(Vec<Literals>),
}

impl Literals {
    pub(super) fn from_pre(pre: &Pre) -> Self {
        match pre {
            Pre::True | Pre::Any(None) => Literals::True,
            Pre::Any(Some(e)) => Self::from_expr(e),
            Pre::All(ps) => Self::all(ps.iter().map(Self::from_pre).collect()),
            Pre::AnyOf(ps) => Self::any_of(ps.iter().map(Self::from_pre).collect()),
        }
    }

    /// What a span satisfying `e` (span-local, see [`span_local`]) must hold as bytes.
    fn from_expr(e: &FieldExpr) -> Self {
        match e {
            FieldExpr::Logic { op, lhs, rhs } => {
                let both = vec![Self::from_expr(lhs), Self::from_expr(rhs)];
                match op {
                    LogicOp::And => Self::all(both),
                    LogicOp::Or => Self::any_of(both),
                }
            }
            FieldExpr::Compare { op, lhs, rhs } => match (&**lhs, &**rhs) {
                (field, FieldExpr::Static(st)) | (FieldExpr::Static(st), field)
                    if !matches!(st, Static::Nil) =>
                {
                    // Against a literal (not nil), a missing attribute is never true, not
                    // even with `!=`: its key is a whole string in the span's bytes.
                    let key = Self::key(field);
                    let value = match st {
                        Static::String(s) if *op == CompareOp::Eq && raw_string(field) => {
                            Self::contains(s, is_resource(field))
                        }
                        _ => Literals::True,
                    };
                    Self::all(vec![key, value])
                }
                _ => Literals::True,
            },
            // `=~` and `!~` alike are false on a missing attribute.
            FieldExpr::Regex { lhs, .. } => Self::key(lhs),
            _ => Literals::True,
        }
    }

    /// The key of an attribute read from the span itself (or its resource).
    fn key(field: &FieldExpr) -> Self {
        match field {
            FieldExpr::Attribute(a) if !a.parent => Self::contains(&a.name, is_resource(field)),
            _ => Literals::True,
        }
    }

    fn contains(s: &str, resource: bool) -> Self {
        if s.is_empty() {
            return Literals::True;
        }
        Literals::Contains {
            finder: Box::new(Finder::new(s.as_bytes()).into_owned()),
            len_last: varint_last_byte(s.len() as u64),
            resource,
        }
    }

    fn all(parts: Vec<Literals>) -> Self {
        let parts: Vec<Literals> = parts
            .into_iter()
            .filter(|p| !matches!(p, Literals::True))
            .collect();
        match parts.len() {
            0 => Literals::True,
            _ => Literals::All(parts),
        }
    }

    fn any_of(parts: Vec<Literals>) -> Self {
        if parts.iter().any(|p| matches!(p, Literals::True)) {
            return Literals::True;
        }
        Literals::AnyOf(parts)
    }

    /// Whether a trace whose encoded chunks are `chunks` may match. A string field never
    /// straddles chunks: each holds whole `ResourceSpans`.
    pub(super) fn possible(&self, chunks: &[Bytes]) -> bool {
        match self {
            Literals::True => true,
            Literals::Contains {
                finder,
                len_last,
                resource,
            } => {
                let holds = |c: &[u8]| {
                    finder
                        .find_iter(c)
                        .any(|at| at > 0 && (c[at - 1] == *len_last || c[at - 1] == 0))
                };
                chunks.iter().any(|c| match resource {
                    true => wire::any_resource(c, holds).unwrap_or(true),
                    false => holds(c),
                })
            }
            Literals::All(ps) => ps.iter().all(|p| p.possible(chunks)),
            Literals::AnyOf(ps) => ps.iter().any(|p| p.possible(chunks)),
        }
    }
}

fn is_resource(field: &FieldExpr) -> bool {
    matches!(field, FieldExpr::Attribute(a) if a.scope == Scope::Resource)
}

/// The last byte of `v`'s shortest varint: its highest 7-bit group.
fn varint_last_byte(mut v: u64) -> u8 {
    while v >= 0x80 {
        v >>= 7;
    }
    v as u8
}

/// Whether `field`'s string value is stored verbatim in the span's encoding: attributes
/// (string values and strings in arrays), the span and event names, the status message and
/// the instrumentation scope's name and version.
fn raw_string(field: &FieldExpr) -> bool {
    use Intrinsic as I;
    match field {
        FieldExpr::Attribute(a) => !a.parent && span_local(field),
        FieldExpr::Intrinsic(i) => matches!(
            i,
            I::Name
                | I::StatusMessage
                | I::EventName
                | I::InstrumentationName
                | I::InstrumentationVersion
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traceql::parse;

    /// An encoded `TracesData`: a resource named `service` with one span `name` whose
    /// attribute `x` is `value`.
    fn chunk(service: &str, name: &str, value: &str) -> Bytes {
        use crate::model::{
            any_value, AnyValue, KeyValue, Resource, ResourceSpans, ScopeSpans, Span, TracesData,
        };
        use prost::Message;
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        };
        let data = TracesData {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: name.into(),
                        attributes: vec![kv("x", value)],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        data.encode_to_vec().into()
    }

    fn literals(q: &str) -> Literals {
        let query = parse(q).unwrap();
        Literals::from_pre(&super::super::projection::pre_pipeline(&query.pipeline))
    }

    #[test]
    fn string_equalities_become_required_bytes() {
        let trace = [
            chunk("checkout", "GET", "frontend-legacy"),
            chunk("other", "", ""),
        ];
        let cases = [
            (r#"{ resource.service.name = "checkout" }"#, true),
            (r#"{ resource.service.name = "frontend" }"#, false),
            (r#"{ span.x = "frontend-legacy" }"#, true),
            // Inside a longer string only: not a whole field.
            (r#"{ span.x = "legacy" }"#, false),
            (r#"{ name = "GET" && span.x = "nope" }"#, false),
            (r#"{ name = "GET" || span.x = "nope" }"#, true),
            (r#"{ .a = "nope" } >> { .b = "other" }"#, false),
            (r#"{ .a = "nope" } || { .b = "other" }"#, false),
            (r#"{ .a = "nope" } || { .x = "other" }"#, true),
            // A resource string is looked for in resources only.
            (r#"{ resource.service.name = "GET" }"#, false),
            (r#"{ span.x = "checkout" }"#, true),
            (r#"{ resource.x = "frontend-legacy" }"#, false),
            // Any comparison with a literal, and any regex, needs the attribute's key.
            (r#"{ span.x != "checkout-x" }"#, true),
            (r#"{ span.y != "z" }"#, false),
            (r#"{ span.x =~ "nope.*" }"#, true),
            (r#"{ span.y =~ ".*" }"#, false),
            (r#"{ span.y !~ "z" }"#, false),
            (r#"{ span.x = 200 }"#, true),
            (r#"{ span.http.status_code = 200 }"#, false),
            (r#"{ resource.x > 1 }"#, false),
            // Nil asks for absence (or presence): no constraint.
            (r#"{ span.y = nil }"#, true),
            (r#"{ span.y != nil }"#, true),
            (r#"{ parent.name = "nope" }"#, true),
            (r#"{ trace:rootService = "nope" }"#, true),
            (r#"{ span:id = "0102030405060708" }"#, true),
            (r#"{ status = error }"#, true),
            (r#"{ !(span.x = "nope") }"#, true),
            ("{ }", true),
        ];
        for (q, want) in cases {
            assert_eq!(literals(q).possible(&trace), want, "{q}");
        }
    }

    #[test]
    fn a_length_in_any_valid_varint_form_is_accepted() {
        let long = "x".repeat(300);
        let q = format!(r#"{{ name = "{long}" }}"#);
        // 300 = 0xac 0x02 at its shortest; 0xac 0x82 0x00 is the same length, padded.
        for len in [&[0xac, 0x02][..], &[0xac, 0x82, 0x00][..]] {
            let mut field = vec![0x2a];
            field.extend_from_slice(len);
            field.extend_from_slice(long.as_bytes());
            assert!(literals(&q).possible(&[Bytes::from(field)]), "{len:?}");
        }
        let mut short = vec![0x2a, 0x05];
        short.extend_from_slice(long.as_bytes());
        assert!(!literals(&q).possible(&[Bytes::from(short)]));
        assert_eq!(varint_last_byte(127), 127);
        assert_eq!(varint_last_byte(128), 1);
        assert_eq!(varint_last_byte(300), 2);
    }
}
