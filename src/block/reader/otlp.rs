//! Record batches of the block schema back into OTLP traces: span starts made absolute,
//! attribute lists and dedicated columns read back, and whole-file reads.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, FixedSizeBinaryArray, Int32Array, Int64Array, ListArray,
    RecordBatch, StringArray, StructArray, UInt32Array, UInt64Array,
};
use bytes::Bytes;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use prost::Message;

use crate::block::schema::value_type;
use crate::block::{BlockError, TraceInput, DEDICATED_RESOURCE, DEDICATED_SPAN};
use crate::model::{
    any_value, span, AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans,
    Span, Status, TraceId,
};

use super::*;
use crate::block::arrow_cols::{corrupt, ded_cols, get, opt, AttrValues, DedCol};

/// Footer key-value metadata: with value [`SPAN_START_RELATIVE`], span
/// `start_time_unix_nano` holds the span start minus the trace's `start_time_unix_nano`
/// (wrapping). Older blocks, without the key, hold absolute times.
pub(crate) const SPAN_START_KEY: &str = "vivace.span_start";
pub(crate) const SPAN_START_RELATIVE: &str = "trace";

pub(crate) fn span_starts_relative(md: &ParquetMetaData) -> bool {
    md.file_metadata().key_value_metadata().is_some_and(|kvs| {
        kvs.iter()
            .any(|kv| kv.key == SPAN_START_KEY && kv.value.as_deref() == Some(SPAN_START_RELATIVE))
    })
}

pub(super) fn list_values<'a>(
    s: &'a StructArray,
    name: &str,
) -> Option<(&'a ListArray, &'a StructArray)> {
    let l = s
        .column_by_name(name)?
        .as_any()
        .downcast_ref::<ListArray>()?;
    let v = l.values().as_any().downcast_ref::<StructArray>()?;
    Some((l, v))
}

pub(super) fn with_column(
    s: &StructArray,
    name: &str,
    col: ArrayRef,
) -> Result<StructArray, BlockError> {
    let (fields, mut cols, nulls) = s.clone().into_parts();
    let i = fields
        .iter()
        .position(|f| f.name() == name)
        .ok_or_else(|| corrupt(format!("missing column {name}")))?;
    cols[i] = col;
    Ok(StructArray::try_new(fields, cols, nulls)?)
}

pub(super) fn with_values(l: &ListArray, values: StructArray) -> Result<ArrayRef, BlockError> {
    let (field, offsets, _, nulls) = l.clone().into_parts();
    Ok(Arc::new(ListArray::try_new(
        field,
        offsets,
        Arc::new(values),
        nulls,
    )?))
}

/// Turns the trace-relative span start times of a decoded (possibly projected) block
/// batch into absolute ones. A batch without span start times is returned as is.
pub(crate) fn absolute_span_starts(root: &StructArray) -> Result<StructArray, BlockError> {
    let name = "start_time_unix_nano";
    let Some((rs, rs_v)) = list_values(root, "resource_spans") else {
        return Ok(root.clone());
    };
    let Some((ss, ss_v)) = list_values(rs_v, "scope_spans") else {
        return Ok(root.clone());
    };
    let Some((sp, sp_v)) = list_values(ss_v, "spans") else {
        return Ok(root.clone());
    };
    let Some(rel) = sp_v.column_by_name(name) else {
        return Ok(root.clone());
    };
    let rel: &UInt64Array = rel
        .as_any()
        .downcast_ref()
        .ok_or_else(|| corrupt("span start_time_unix_nano has the wrong type"))?;
    let base: &UInt64Array = get(root, name)?;
    let (rso, sso, spo) = (rs.value_offsets(), ss.value_offsets(), sp.value_offsets());
    let bad = || corrupt("list offsets out of range");
    let idx = |o: &[i32], i: usize| -> Result<usize, BlockError> {
        o.get(i)
            .and_then(|&v| usize::try_from(v).ok())
            .ok_or_else(bad)
    };
    let mut out: Vec<u64> = rel.values().to_vec();
    for row in 0..root.len() {
        let (r0, r1) = (idx(rso, row)?, idx(rso, row + 1)?);
        let (s0, s1) = (idx(sso, r0)?, idx(sso, r1)?);
        let (g0, g1) = (idx(spo, s0)?, idx(spo, s1)?);
        let b = base.value(row);
        for v in out.get_mut(g0..g1).ok_or_else(bad)? {
            *v = v.wrapping_add(b);
        }
    }
    let starts: ArrayRef = Arc::new(UInt64Array::new(out.into(), rel.nulls().cloned()));
    let sp_v = with_column(sp_v, name, starts)?;
    let ss_v = with_column(ss_v, "spans", with_values(sp, sp_v)?)?;
    let rs_v = with_column(rs_v, "scope_spans", with_values(ss, ss_v)?)?;
    with_column(root, "resource_spans", with_values(rs, rs_v)?)
}

/// Reads every trace of a whole data.parquet, in file (ID) order.
pub fn read_all_traces(data: Bytes) -> Result<Vec<TraceInput>, BlockError> {
    guarded(|| {
        let file_len = data.len() as u64;
        let md = ParquetMetaDataReader::new().parse_and_finish(&data)?;
        let footer = footer_len_of(&data)?;
        validate(&md, file_len.saturating_sub(footer))?;
        let schema = read_schema(&md)?;
        let md = Arc::new(md);
        let reader = CheckedRead::new(data, md.clone())
            .with_schema(schema)
            .with_batch_size(1024)
            .build()?;
        let mut out = Vec::new();
        for batch in reader {
            out.extend(batch_to_traces(&batch?, &md)?);
        }
        Ok(out)
    })
}

pub(super) fn footer_len_of(data: &[u8]) -> Result<u64, BlockError> {
    let n = data.len();
    let b: [u8; 4] = data
        .get(n.saturating_sub(8)..n.saturating_sub(4))
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| BlockError::Corrupt("file shorter than a footer".into()))?;
    Ok(u64::from(u32::from_le_bytes(b)) + 8)
}

/// Converts a record batch of the full block schema into traces.
/// `md` is the footer of the file the batch comes from (see `SPAN_START_KEY`).
pub fn batch_to_traces(
    batch: &RecordBatch,
    md: &ParquetMetaData,
) -> Result<Vec<TraceInput>, BlockError> {
    let mut root = StructArray::from(batch.clone());
    if span_starts_relative(md) {
        root = absolute_span_starts(&root)?;
    }
    let cols = TraceCols::new(&root)?;
    (0..root.len()).map(|row| cols.trace(row)).collect()
}

/// A list column: its offsets and its element struct.
pub(super) struct ListCols<'a> {
    offsets: &'a [i32],
    values: &'a StructArray,
}

impl<'a> ListCols<'a> {
    fn new(s: &'a StructArray, name: &str) -> Result<Self, BlockError> {
        let list = get::<ListArray>(s, name)?;
        let values = list
            .values()
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| corrupt(format!("column {name} is not a list of structs")))?;
        Ok(Self {
            offsets: list.value_offsets(),
            values,
        })
    }

    fn range(&self, row: usize) -> Result<Range<usize>, BlockError> {
        let bad = || corrupt("list offsets out of range");
        let start = usize::try_from(*self.offsets.get(row).ok_or_else(bad)?).map_err(|_| bad())?;
        let end =
            usize::try_from(*self.offsets.get(row + 1).ok_or_else(bad)?).map_err(|_| bad())?;
        if start > end || end > self.values.len() {
            return Err(bad());
        }
        Ok(start..end)
    }
}

pub(super) struct AttrCols<'a> {
    list: ListCols<'a>,
    v: AttrValues<'a>,
}

impl<'a> AttrCols<'a> {
    fn new(s: &'a StructArray) -> Result<Self, BlockError> {
        let list = ListCols::new(s, "attrs")?;
        let v = AttrValues::new(list.values)?;
        Ok(Self { list, v })
    }

    fn read_into(&self, row: usize, out: &mut Vec<KeyValue>) -> Result<(), BlockError> {
        use any_value::Value;
        for j in self.list.range(row)? {
            let missing = || corrupt(format!("attribute {} has no value", self.v.key.value(j)));
            let ty = self.v.value_type(j).ok_or_else(missing)?;
            let value = match ty {
                value_type::NONE => None,
                value_type::EMPTY => Some(AnyValue { value: None }),
                value_type::STRING if self.v.str.is_valid(j) => Some(AnyValue {
                    value: Some(Value::StringValue(self.v.str.value(j).to_string())),
                }),
                value_type::BOOL if self.v.bool.is_valid(j) => Some(AnyValue {
                    value: Some(Value::BoolValue(self.v.bool.value(j))),
                }),
                value_type::INT if self.v.int.is_valid(j) => Some(AnyValue {
                    value: Some(Value::IntValue(self.v.int.value(j))),
                }),
                value_type::DOUBLE if self.v.dbl.is_valid(j) => Some(AnyValue {
                    value: Some(Value::DoubleValue(self.v.dbl.value(j))),
                }),
                value_type::BYTES if self.v.bytes.is_valid(j) => Some(AnyValue {
                    value: Some(Value::BytesValue(self.v.bytes.value(j).to_vec())),
                }),
                value_type::ARRAY | value_type::KVLIST | value_type::ENCODED
                    if self.v.bytes.is_valid(j) =>
                {
                    Some(AnyValue::decode(self.v.bytes.value(j))?)
                }
                value_type::STRING
                | value_type::BOOL
                | value_type::INT
                | value_type::DOUBLE
                | value_type::BYTES
                | value_type::ARRAY
                | value_type::KVLIST
                | value_type::ENCODED => return Err(missing()),
                other => return Err(corrupt(format!("unknown attribute value type {other}"))),
            };
            out.push(KeyValue {
                key: self.v.key.value(j).to_string(),
                key_strindex: 0,
                value,
            });
        }
        Ok(())
    }

    fn read(&self, row: usize) -> Result<Vec<KeyValue>, BlockError> {
        let mut out = Vec::new();
        self.read_into(row, &mut out)?;
        Ok(out)
    }
}

pub(super) fn read_dedicated(
    cols: &[(&'static str, DedCol<'_>)],
    row: usize,
    out: &mut Vec<KeyValue>,
) {
    use any_value::Value;
    for c in cols {
        let (key, value) = match c {
            (k, DedCol::Str(a)) if a.is_valid(row) => {
                (k, Value::StringValue(a.value(row).to_string()))
            }
            (k, DedCol::Int(a)) if a.is_valid(row) => (k, Value::IntValue(a.value(row))),
            _ => continue,
        };
        out.push(KeyValue {
            key: key.to_string(),
            key_strindex: 0,
            value: Some(AnyValue { value: Some(value) }),
        });
    }
}

/// Typed views of every column of the full schema, resolved once per batch.
pub(super) struct TraceCols<'a> {
    trace_id: &'a FixedSizeBinaryArray,
    rs: ListCols<'a>,
    res: &'a StructArray,
    res_attrs: AttrCols<'a>,
    res_dropped: &'a UInt32Array,
    res_entity_refs: &'a BinaryArray,
    res_ded: Vec<(&'static str, DedCol<'a>)>,
    rs_schema_url: &'a StringArray,
    ss: ListCols<'a>,
    scope: &'a StructArray,
    scope_name: &'a StringArray,
    scope_version: &'a StringArray,
    scope_attrs: AttrCols<'a>,
    scope_dropped: &'a UInt32Array,
    ss_schema_url: &'a StringArray,
    spans: ListCols<'a>,
    span_id: &'a BinaryArray,
    parent_span_id: &'a BinaryArray,
    /// Absent from lookups of older blocks, where no parent span ID is left out.
    ns_left: Option<&'a Int32Array>,
    ns_parent: Option<&'a Int32Array>,
    span_trace_id: &'a BinaryArray,
    trace_state: &'a StringArray,
    flags: &'a UInt32Array,
    name: &'a StringArray,
    kind: &'a Int32Array,
    start: &'a UInt64Array,
    duration: &'a UInt64Array,
    status: &'a StructArray,
    status_code: &'a Int32Array,
    status_message: &'a StringArray,
    span_attrs: AttrCols<'a>,
    span_dropped_attrs: &'a UInt32Array,
    span_ded: Vec<(&'static str, DedCol<'a>)>,
    events: ListCols<'a>,
    ev_time: &'a Int64Array,
    ev_name: &'a StringArray,
    ev_attrs: AttrCols<'a>,
    ev_dropped: &'a UInt32Array,
    dropped_events: &'a UInt32Array,
    links: ListCols<'a>,
    link_trace_id: &'a BinaryArray,
    link_span_id: &'a BinaryArray,
    link_trace_state: &'a StringArray,
    link_flags: &'a UInt32Array,
    link_attrs: AttrCols<'a>,
    link_dropped: &'a UInt32Array,
    dropped_links: &'a UInt32Array,
}

impl<'a> TraceCols<'a> {
    fn new(root: &'a StructArray) -> Result<Self, BlockError> {
        let trace_id: &FixedSizeBinaryArray = get(root, "trace_id")?;
        if trace_id.value_length() != 16 {
            return Err(corrupt("trace_id is not 16 bytes"));
        }
        let rs = ListCols::new(root, "resource_spans")?;
        let res: &StructArray = get(rs.values, "resource")?;
        let ss = ListCols::new(rs.values, "scope_spans")?;
        let scope: &StructArray = get(ss.values, "scope")?;
        let spans = ListCols::new(ss.values, "spans")?;
        let sp = spans.values;
        let status: &StructArray = get(sp, "status")?;
        let events = ListCols::new(sp, "events")?;
        let links = ListCols::new(sp, "links")?;
        let ev = events.values;
        let lk = links.values;
        Ok(Self {
            trace_id,
            res_attrs: AttrCols::new(res)?,
            res_dropped: get(res, "dropped_attributes_count")?,
            res_entity_refs: get(res, "entity_refs")?,
            res_ded: ded_cols(res, &DEDICATED_RESOURCE, false)?,
            res,
            rs_schema_url: get(rs.values, "schema_url")?,
            rs,
            scope_name: get(scope, "name")?,
            scope_version: get(scope, "version")?,
            scope_attrs: AttrCols::new(scope)?,
            scope_dropped: get(scope, "dropped_attributes_count")?,
            scope,
            ss_schema_url: get(ss.values, "schema_url")?,
            ss,
            span_id: get(sp, "span_id")?,
            parent_span_id: get(sp, "parent_span_id")?,
            ns_left: opt(sp, "nested_set_left")?,
            ns_parent: opt(sp, "parent_id")?,
            span_trace_id: get(sp, "trace_id")?,
            trace_state: get(sp, "trace_state")?,
            flags: get(sp, "flags")?,
            name: get(sp, "name")?,
            kind: get(sp, "kind")?,
            start: get(sp, "start_time_unix_nano")?,
            duration: get(sp, "duration_nano")?,
            status_code: get(status, "code")?,
            status_message: get(status, "message")?,
            status,
            span_attrs: AttrCols::new(sp)?,
            span_dropped_attrs: get(sp, "dropped_attributes_count")?,
            span_ded: ded_cols(sp, &DEDICATED_SPAN, false)?,
            dropped_events: get(sp, "dropped_events_count")?,
            dropped_links: get(sp, "dropped_links_count")?,
            spans,
            ev_time: get(ev, "time_since_start_nano")?,
            ev_name: get(ev, "name")?,
            ev_attrs: AttrCols::new(ev)?,
            ev_dropped: get(ev, "dropped_attributes_count")?,
            events,
            link_trace_id: get(lk, "trace_id")?,
            link_span_id: get(lk, "span_id")?,
            link_trace_state: get(lk, "trace_state")?,
            link_flags: get(lk, "flags")?,
            link_attrs: AttrCols::new(lk)?,
            link_dropped: get(lk, "dropped_attributes_count")?,
            links,
        })
    }

    fn trace(&self, row: usize) -> Result<TraceInput, BlockError> {
        let mut id = [0u8; 16];
        id.copy_from_slice(self.trace_id.value(row));
        let id = TraceId(id);
        let parents = self.parent_ids(row)?;
        let mut batches = Vec::new();
        for r in self.rs.range(row)? {
            let resource = if self.res.is_valid(r) {
                let mut attributes = Vec::new();
                read_dedicated(&self.res_ded, r, &mut attributes);
                self.res_attrs.read_into(r, &mut attributes)?;
                let entity_refs = if self.res_entity_refs.is_valid(r) {
                    Resource::decode(self.res_entity_refs.value(r))?.entity_refs
                } else {
                    Vec::new()
                };
                Some(Resource {
                    attributes,
                    dropped_attributes_count: self.res_dropped.value(r),
                    entity_refs,
                })
            } else {
                None
            };
            let mut scope_spans = Vec::new();
            for s in self.ss.range(r)? {
                let scope = self
                    .scope
                    .is_valid(s)
                    .then(|| -> Result<_, BlockError> {
                        Ok(InstrumentationScope {
                            name: self.scope_name.value(s).to_string(),
                            version: self.scope_version.value(s).to_string(),
                            attributes: self.scope_attrs.read(s)?,
                            dropped_attributes_count: self.scope_dropped.value(s),
                        })
                    })
                    .transpose()?;
                let spans = self
                    .spans
                    .range(s)?
                    .map(|i| self.span(id, i, &parents))
                    .collect::<Result<Vec<_>, _>>()?;
                scope_spans.push(ScopeSpans {
                    scope,
                    spans,
                    schema_url: self.ss_schema_url.value(s).to_string(),
                });
            }
            batches.push(ResourceSpans {
                resource,
                scope_spans,
                schema_url: self.rs_schema_url.value(r).to_string(),
            });
        }
        Ok(TraceInput { id, batches })
    }

    /// When some parent span IDs of `row` are left out (null): the span index of each
    /// nested-set left number in the row (the first span with that number).
    fn parent_ids(&self, row: usize) -> Result<Option<Vec<usize>>, BlockError> {
        let mut first = None;
        let mut last = 0;
        for r in self.rs.range(row)? {
            for s in self.ss.range(r)? {
                let spans = self.spans.range(s)?;
                first.get_or_insert(spans.start);
                last = last.max(spans.end);
            }
        }
        let Some(first) = first else {
            return Ok(None);
        };
        if first > last || (first..last).all(|i| self.parent_span_id.is_valid(i)) {
            return Ok(None);
        }
        let (Some(left), Some(_)) = (self.ns_left, self.ns_parent) else {
            return Err(corrupt("parent span IDs left out without nested sets"));
        };
        if last > left.len() {
            return Err(corrupt("nested set column shorter than the spans"));
        }
        let mut by_left = vec![usize::MAX; 2 * (last - first) + 2];
        for i in first..last {
            if let Some(slot) = usize::try_from(left.value(i))
                .ok()
                .and_then(|l| by_left.get_mut(l))
            {
                if *slot == usize::MAX {
                    *slot = i;
                }
            }
        }
        Ok(Some(by_left))
    }

    fn parent_span_id(
        &self,
        i: usize,
        parents: &Option<Vec<usize>>,
    ) -> Result<Vec<u8>, BlockError> {
        if self.parent_span_id.is_valid(i) {
            return Ok(self.parent_span_id.value(i).to_vec());
        }
        let bad = || corrupt("left-out parent span ID has no parent span");
        let (Some(by_left), Some(p)) = (parents, self.ns_parent) else {
            return Err(bad());
        };
        let j = usize::try_from(p.value(i))
            .ok()
            .and_then(|p| by_left.get(p))
            .copied()
            .filter(|&j| j != usize::MAX && j < self.span_id.len())
            .ok_or_else(bad)?;
        Ok(self.span_id.value(j).to_vec())
    }

    fn span(
        &self,
        trace: TraceId,
        i: usize,
        parents: &Option<Vec<usize>>,
    ) -> Result<Span, BlockError> {
        let start = self.start.value(i);
        let mut attributes = Vec::new();
        read_dedicated(&self.span_ded, i, &mut attributes);
        self.span_attrs.read_into(i, &mut attributes)?;
        let events = self
            .events
            .range(i)?
            .map(|e| {
                Ok(span::Event {
                    time_unix_nano: start.wrapping_add(self.ev_time.value(e) as u64),
                    name: self.ev_name.value(e).to_string(),
                    attributes: self.ev_attrs.read(e)?,
                    dropped_attributes_count: self.ev_dropped.value(e),
                })
            })
            .collect::<Result<Vec<_>, BlockError>>()?;
        let links = self
            .links
            .range(i)?
            .map(|l| {
                Ok(span::Link {
                    trace_id: self.link_trace_id.value(l).to_vec(),
                    span_id: self.link_span_id.value(l).to_vec(),
                    trace_state: self.link_trace_state.value(l).to_string(),
                    attributes: self.link_attrs.read(l)?,
                    dropped_attributes_count: self.link_dropped.value(l),
                    flags: self.link_flags.value(l),
                })
            })
            .collect::<Result<Vec<_>, BlockError>>()?;
        Ok(Span {
            trace_id: if self.span_trace_id.is_valid(i) {
                self.span_trace_id.value(i).to_vec()
            } else {
                trace.as_bytes().to_vec()
            },
            span_id: self.span_id.value(i).to_vec(),
            trace_state: self.trace_state.value(i).to_string(),
            parent_span_id: self.parent_span_id(i, parents)?,
            flags: self.flags.value(i),
            name: self.name.value(i).to_string(),
            kind: self.kind.value(i),
            start_time_unix_nano: start,
            end_time_unix_nano: start.wrapping_add(self.duration.value(i)),
            attributes,
            dropped_attributes_count: self.span_dropped_attrs.value(i),
            events,
            dropped_events_count: self.dropped_events.value(i),
            links,
            dropped_links_count: self.dropped_links.value(i),
            status: self.status.is_valid(i).then(|| Status {
                message: self.status_message.value(i).to_string(),
                code: self.status_code.value(i),
            }),
        })
    }
}
