//! Columns of a decoded row group: typed accessors over the Arrow arrays, attributes,
//! dedicated columns, events and links, and [`ColumnarBlock`].

use std::ops::Range;

use arrow_array::types::Int32Type;
use arrow_array::{
    Array, BinaryArray, DictionaryArray, FixedSizeBinaryArray, Int32Array, Int64Array, ListArray,
    StringArray, StructArray, UInt32Array, UInt64Array,
};
use prost::Message;

pub(super) use crate::block::arrow_cols::{corrupt, ded_cols, get, opt, AttrValues, DedCol};
use crate::block::schema::value_type;
use crate::block::{BlockError, DEDICATED_RESOURCE, DEDICATED_SPAN};
use crate::model::{any_value, AnyValue};
use crate::traceql::{Value, ValueRef};

/// A list column's offsets and element struct.
pub(super) fn list<'a>(
    s: &'a StructArray,
    name: &str,
) -> Result<(&'a [i32], &'a StructArray), BlockError> {
    let l = get::<ListArray>(s, name)?;
    let values = l
        .values()
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| corrupt(format!("column {name} is not a list of structs")))?;
    let offsets = l.value_offsets();
    // Every offset must index the values: checked once so lookups can index freely.
    let len = values.len();
    if offsets.windows(2).any(|w| w[0] < 0 || w[0] > w[1])
        || offsets.last().is_some_and(|&e| e as usize > len)
    {
        return Err(corrupt(format!("bad offsets in {name}")));
    }
    Ok((offsets, values))
}

pub(super) fn opt_list<'a>(
    s: &'a StructArray,
    name: &str,
) -> Result<Option<(&'a [i32], &'a StructArray)>, BlockError> {
    if s.column_by_name(name).is_none() {
        return Ok(None);
    }
    list(s, name).map(Some)
}

pub(super) fn range(offsets: &[i32], i: usize) -> Range<usize> {
    offsets[i] as usize..offsets[i + 1] as usize
}

pub(super) struct Attrs<'a> {
    pub(super) offsets: &'a [i32],
    pub(super) v: AttrValues<'a>,
}

impl<'a> Attrs<'a> {
    pub(super) fn new(s: &'a StructArray) -> Result<Option<Self>, BlockError> {
        let Some((offsets, v)) = opt_list(s, "attrs")? else {
            return Ok(None);
        };
        Ok(Some(Self {
            offsets,
            v: AttrValues::new(v)?,
        }))
    }

    /// The value of the first attribute of `owner` named `name`.
    pub(super) fn find(&self, owner: usize, name: &str) -> Option<Value> {
        self.find_ref(owner, name).map(owned)
    }

    pub(super) fn find_ref(&self, owner: usize, name: &str) -> Option<ValueRef<'a>> {
        let j = range(self.offsets, owner).find(|&j| self.v.key.value(j) == name)?;
        self.value(j)
    }

    pub(super) fn value(&self, j: usize) -> Option<ValueRef<'a>> {
        let ty = self.v.value_type(j)?;
        match ty {
            value_type::STRING if self.v.str.is_valid(j) => {
                Some(ValueRef::Str(self.v.str.value(j)))
            }
            value_type::BOOL if self.v.bool.is_valid(j) => {
                Some(ValueRef::Owned(Value::Bool(self.v.bool.value(j))))
            }
            value_type::INT if self.v.int.is_valid(j) => {
                Some(ValueRef::Owned(Value::Int(self.v.int.value(j))))
            }
            value_type::DOUBLE if self.v.dbl.is_valid(j) => {
                Some(ValueRef::Owned(Value::Float(self.v.dbl.value(j))))
            }
            value_type::ARRAY | value_type::KVLIST | value_type::ENCODED
                if self.v.bytes.is_valid(j) =>
            {
                to_value(&AnyValue::decode(self.v.bytes.value(j)).ok()?).map(ValueRef::Owned)
            }
            _ => None,
        }
    }
}

pub(super) fn owned(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Str(s) => Value::String(s.to_owned()),
        ValueRef::Owned(v) => v,
    }
}

/// A typed value from an OTLP `AnyValue`, as the OTLP view converts it.
pub(super) fn to_value(value: &AnyValue) -> Option<Value> {
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Value::String(s.clone()),
        any_value::Value::IntValue(v) => Value::Int(*v),
        any_value::Value::DoubleValue(v) => Value::Float(*v),
        any_value::Value::BoolValue(v) => Value::Bool(*v),
        any_value::Value::ArrayValue(array) => {
            Value::Array(array.values.iter().filter_map(to_value).collect())
        }
        any_value::Value::KvlistValue(_)
        | any_value::Value::BytesValue(_)
        | any_value::Value::StringValueStrindex(_) => return None,
    })
}

impl<'a> DedCol<'a> {
    /// Row `i`'s value, as the engine reads it.
    pub(super) fn get(&self, i: usize) -> Option<ValueRef<'a>> {
        match *self {
            DedCol::Str(a) => a.is_valid(i).then(|| ValueRef::Str(a.value(i))),
            DedCol::Int(a) => a
                .is_valid(i)
                .then(|| ValueRef::Owned(Value::Int(a.value(i)))),
        }
    }
}

pub(super) struct Events<'a> {
    pub(super) offsets: &'a [i32],
    pub(super) time: &'a Int64Array,
    pub(super) name: &'a StringArray,
    pub(super) attrs: Attrs<'a>,
}

pub(super) struct Links<'a> {
    pub(super) offsets: &'a [i32],
    pub(super) trace_id: &'a BinaryArray,
    pub(super) span_id: &'a BinaryArray,
    pub(super) attrs: Attrs<'a>,
}

pub(super) struct Stats<'a> {
    pub(super) offsets: &'a [i32],
    pub(super) service: &'a StringArray,
    pub(super) spans: &'a UInt32Array,
    pub(super) errors: &'a UInt32Array,
}

/// A required string column, read plainly or dictionary-encoded (see
/// [`search_schema_for`](crate::block::schema::search_schema_for)).
#[derive(Clone, Copy)]
pub(super) enum StrCol<'a> {
    Plain(&'a StringArray),
    Dict {
        keys: &'a [i32],
        values: &'a StringArray,
    },
}

impl<'a> StrCol<'a> {
    fn new(a: &'a dyn Array) -> Result<Self, BlockError> {
        if let Some(plain) = a.as_any().downcast_ref::<StringArray>() {
            return Ok(Self::Plain(plain));
        }
        let dict = a
            .as_any()
            .downcast_ref::<DictionaryArray<Int32Type>>()
            .ok_or_else(|| corrupt("string column has the wrong type"))?;
        let values = dict
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| corrupt("dictionary of a string column holds no strings"))?;
        let keys = dict.keys().values();
        // Checked once so lookups can index freely (the column is required: no null slots).
        if keys.iter().any(|&k| k < 0 || k as usize >= values.len()) {
            return Err(corrupt("dictionary key out of range"));
        }
        Ok(Self::Dict { keys, values })
    }

    pub(super) fn value(&self, i: usize) -> &'a str {
        match *self {
            Self::Plain(a) => a.value(i),
            Self::Dict { keys, values } => values.value(keys[i] as usize),
        }
    }
}

/// Typed views of the projected columns of one decoded row group.
pub struct ColumnarBlock<'a> {
    pub(super) rows: usize,
    pub(super) trace_id: Option<&'a FixedSizeBinaryArray>,
    pub(super) start: &'a UInt64Array,
    pub(super) end: &'a UInt64Array,
    /// Trace-level `root_service_name` and `root_span_name`.
    pub(super) root_names: Option<(&'a StringArray, &'a StringArray)>,
    pub(super) stats: Option<Stats<'a>>,
    pub(super) rs_offsets: &'a [i32],
    pub(super) res: Option<&'a StructArray>,
    pub(super) res_service: Option<&'a StringArray>,
    pub(super) res_attrs: Option<Attrs<'a>>,
    pub(super) res_ded: Vec<(&'static str, DedCol<'a>)>,
    pub(super) ss_offsets: &'a [i32],
    pub(super) scope: Option<&'a StructArray>,
    pub(super) scope_name: Option<&'a StringArray>,
    pub(super) scope_version: Option<&'a StringArray>,
    pub(super) scope_attrs: Option<Attrs<'a>>,
    pub(super) span_offsets: &'a [i32],
    pub(super) span_id: Option<&'a BinaryArray>,
    pub(super) parent_span_id: Option<&'a BinaryArray>,
    pub(super) span_trace_id: Option<&'a BinaryArray>,
    pub(super) name: Option<StrCol<'a>>,
    pub(super) kind: Option<&'a Int32Array>,
    pub(super) span_start: &'a UInt64Array,
    pub(super) duration: Option<&'a UInt64Array>,
    /// The status struct, its code and (when the query reads it) its message.
    pub(super) status: Option<(&'a StructArray, &'a Int32Array, Option<&'a StringArray>)>,
    pub(super) span_attrs: Option<Attrs<'a>>,
    pub(super) span_ded: Vec<(&'static str, DedCol<'a>)>,
    /// Nested sets (left, right, parent), when the query reads the tree.
    pub(super) nested: Option<(&'a Int32Array, &'a Int32Array, &'a Int32Array)>,
    pub(super) events: Option<Events<'a>>,
    pub(super) links: Option<Links<'a>>,
}

impl<'a> ColumnarBlock<'a> {
    /// Views over a row group decoded by [`decode_row_group`](super::decode_row_group).
    pub fn new(root: &'a StructArray) -> Result<Self, BlockError> {
        let trace_id: Option<&FixedSizeBinaryArray> = opt(root, "trace_id")?;
        if trace_id.is_some_and(|t| t.value_length() != 16) {
            return Err(corrupt("trace_id is not 16 bytes"));
        }
        let root_names = match (
            opt(root, "root_service_name")?,
            opt(root, "root_span_name")?,
        ) {
            (Some(service), Some(name)) => Some((service, name)),
            _ => None,
        };
        let stats = match opt_list(root, "service_stats")? {
            Some((offsets, st)) => Some(Stats {
                offsets,
                service: get(st, "service")?,
                spans: get(st, "span_count")?,
                errors: get(st, "error_count")?,
            }),
            None => None,
        };
        let (rs_offsets, rs) = list(root, "resource_spans")?;
        let res: Option<&StructArray> = opt(rs, "resource")?;
        let (ss_offsets, ss) = list(rs, "scope_spans")?;
        let scope: Option<&StructArray> = opt(ss, "scope")?;
        let (span_offsets, sp) = list(ss, "spans")?;
        let status = match opt::<StructArray>(sp, "status")? {
            Some(s) => Some((s, get(s, "code")?, opt(s, "message")?)),
            None => None,
        };
        let events = match opt_list(sp, "events")? {
            Some((offsets, ev)) => Some(Events {
                offsets,
                time: get(ev, "time_since_start_nano")?,
                name: get(ev, "name")?,
                attrs: Attrs::new(ev)?.ok_or_else(|| corrupt("events without attrs"))?,
            }),
            None => None,
        };
        let links = match opt_list(sp, "links")? {
            Some((offsets, lk)) => Some(Links {
                offsets,
                trace_id: get(lk, "trace_id")?,
                span_id: get(lk, "span_id")?,
                attrs: Attrs::new(lk)?.ok_or_else(|| corrupt("links without attrs"))?,
            }),
            None => None,
        };
        let rows = root.len();
        let b = Self {
            rows,
            trace_id,
            start: get(root, "start_time_unix_nano")?,
            end: get(root, "end_time_unix_nano")?,
            root_names,
            stats,
            rs_offsets,
            res_service: match res {
                Some(r) => opt(r, "service_name")?,
                None => None,
            },
            res_attrs: match res {
                Some(r) => Attrs::new(r)?,
                None => None,
            },
            res_ded: match res {
                Some(r) => ded_cols(r, &DEDICATED_RESOURCE, true)?,
                None => Vec::new(),
            },
            res,
            ss_offsets,
            scope_name: match scope {
                Some(s) => opt(s, "name")?,
                None => None,
            },
            scope_version: match scope {
                Some(s) => opt(s, "version")?,
                None => None,
            },
            scope_attrs: match scope {
                Some(s) => Attrs::new(s)?,
                None => None,
            },
            scope,
            span_offsets,
            span_id: opt(sp, "span_id")?,
            parent_span_id: opt(sp, "parent_span_id")?,
            span_trace_id: opt(sp, "trace_id")?,
            name: match sp.column_by_name("name") {
                Some(a) => Some(StrCol::new(a.as_ref())?),
                None => None,
            },
            kind: opt(sp, "kind")?,
            span_start: get(sp, "start_time_unix_nano")?,
            duration: opt(sp, "duration_nano")?,
            status,
            span_attrs: Attrs::new(sp)?,
            span_ded: ded_cols(sp, &DEDICATED_SPAN, true)?,
            nested: match (
                opt(sp, "nested_set_left")?,
                opt(sp, "nested_set_right")?,
                opt(sp, "parent_id")?,
            ) {
                (Some(l), Some(r), Some(p)) => Some((l, r, p)),
                _ => None,
            },
            events,
            links,
        };
        if b.start.len() != rows
            || b.end.len() != rows
            || b.stats
                .as_ref()
                .is_some_and(|s| s.offsets.len() != rows + 1)
            || b.root_names
                .is_some_and(|(s, n)| s.len() != rows || n.len() != rows)
            || b.rs_offsets.len() != rows + 1
        {
            return Err(corrupt("trace columns disagree on the row count"));
        }
        Ok(b)
    }

    /// Traces (rows).
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Hit columns ([`Phase::Report`](super::Phase::Report)) only.
    pub fn trace_id(&self, row: usize) -> Option<[u8; 16]> {
        let mut id = [0u8; 16];
        id.copy_from_slice(self.trace_id?.value(row));
        Some(id)
    }

    /// The root span's service and name as stored at the trace level (empty when the trace
    /// has no root, or the root has none): `None` without the hit columns
    /// ([`Phase::Report`](super::Phase::Report)).
    pub fn root_names(&self, row: usize) -> Option<(Option<&'a str>, Option<&'a str>)> {
        let (service, name) = self.root_names?;
        let some = |s: &'a str| (!s.is_empty()).then_some(s);
        Some((some(service.value(row)), some(name.value(row))))
    }

    /// The earliest span start (stored).
    pub fn start_unix_nano(&self, row: usize) -> u64 {
        self.start.value(row)
    }

    /// The latest span end, at least the start (stored).
    pub fn end_unix_nano(&self, row: usize) -> u64 {
        self.end.value(row)
    }

    pub(super) fn spans_of(&self, row: usize) -> Range<usize> {
        let rs = range(self.rs_offsets, row);
        let ss = self.ss_offsets[rs.start] as usize..self.ss_offsets[rs.end] as usize;
        self.span_offsets[ss.start] as usize..self.span_offsets[ss.end] as usize
    }

    pub fn span_count(&self, row: usize) -> usize {
        self.spans_of(row).len()
    }

    /// `(service, span count, error count)` per service, as stored (sorted by service).
    /// Empty without the hit columns ([`Phase::Report`](super::Phase::Report)).
    pub fn service_stats(&self, row: usize) -> impl Iterator<Item = (&'a str, u32, u32)> + '_ {
        self.stats.iter().flat_map(move |s| {
            range(s.offsets, row).map(|j| (s.service.value(j), s.spans.value(j), s.errors.value(j)))
        })
    }

    /// True when `resource.<col> = value` holds for some resource of the row (see
    /// [`SearchColumns`] required conditions). Unknown columns answer true.
    pub(super) fn has_resource_value(&self, row: usize, key: &str, value: &str) -> bool {
        let Some(col) = self.res_ded.iter().find(|(k, _)| *k == key) else {
            return true;
        };
        let DedCol::Str(a) = col.1 else { return true };
        range(self.rs_offsets, row).any(|r| a.is_valid(r) && a.value(r) == value)
    }
}
