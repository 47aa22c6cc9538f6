//! Block decoding: Parquet footer and row-group helpers for ranged reads from object
//! storage, and the conversion of record batches (full schema) back into OTLP traces.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use arrow_array::{
    Array, BinaryArray, BooleanArray, FixedSizeBinaryArray, Float64Array, Int32Array, Int64Array,
    ListArray, RecordBatch, StringArray, StructArray, UInt32Array, UInt64Array,
};
use bytes::{Buf, Bytes};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::metadata::{FooterTail, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::reader::{ChunkReader, Length};
use prost::Message;

use super::schema::{arrow_schema, value_type};
use super::{BlockError, Dedicated, DedicatedType, TraceInput, DEDICATED_RESOURCE, DEDICATED_SPAN};
use crate::model::{
    any_value, span, AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans,
    Span, Status, TraceId,
};

/// Decodes the Parquet footer. `tail` is the last `meta.footerSize` bytes of data.parquet
/// (more is fine); `file_len` is the length of data.parquet. Column chunk ranges are checked
/// against the file so later reads cannot be sent outside it.
pub fn decode_footer(tail: Bytes, file_len: u64) -> Result<Arc<ParquetMetaData>, BlockError> {
    let n = tail.len();
    let last8: [u8; 8] = tail
        .get(n.saturating_sub(8)..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| BlockError::Corrupt(format!("footer of {n} bytes is too short")))?;
    let ft = FooterTail::try_new(&last8)?;
    if ft.is_encrypted_footer() {
        return Err(BlockError::Corrupt(
            "encrypted footers are not supported".into(),
        ));
    }
    let meta_len = ft.metadata_length();
    let footer_len = meta_len
        .checked_add(8)
        .filter(|l| *l <= n && (*l as u64) <= file_len)
        .ok_or_else(|| {
            BlockError::Corrupt(format!("footer metadata of {meta_len} bytes does not fit"))
        })?;
    let md = ParquetMetaDataReader::decode_metadata(&tail[n - footer_len..n - 8])?;
    validate(&md, file_len - footer_len as u64)?;
    Ok(Arc::new(md))
}

/// Checks every column chunk lies within the data part of the file. The parquet reader
/// asserts on negative offsets, so this must run before handing metadata to it.
fn validate(md: &ParquetMetaData, data_end: u64) -> Result<(), BlockError> {
    for rg in 0..md.num_row_groups() {
        let r = row_group_byte_range(md, rg)?;
        if r.end > data_end {
            return Err(BlockError::Corrupt(format!(
                "row group {rg} ends at {} past the data end {data_end}",
                r.end
            )));
        }
    }
    Ok(())
}

/// The bytes covering all column chunks of row group `rg`.
pub fn row_group_byte_range(md: &ParquetMetaData, rg: usize) -> Result<Range<u64>, BlockError> {
    let rgm = md
        .row_groups()
        .get(rg)
        .ok_or(BlockError::RowGroupOutOfRange {
            rg,
            count: md.num_row_groups(),
        })?;
    let mut range: Option<Range<u64>> = None;
    for c in rgm.columns() {
        let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
        let bad = || BlockError::Corrupt(format!("bad column chunk range in row group {rg}"));
        let start = u64::try_from(start).map_err(|_| bad())?;
        let len = u64::try_from(c.compressed_size()).map_err(|_| bad())?;
        let end = start.checked_add(len).ok_or_else(bad)?;
        range = Some(match range {
            None => start..end,
            Some(r) => r.start.min(start)..r.end.max(end),
        });
    }
    range.ok_or_else(|| BlockError::Corrupt(format!("row group {rg} has no columns")))
}

/// A `ChunkReader` over one contiguous byte range of a file (e.g. one row group fetched
/// from object storage). Reads outside the range fail instead of returning wrong bytes.
#[derive(Debug, Clone)]
pub struct SparseChunk {
    start: u64,
    data: Bytes,
    file_len: u64,
}

impl SparseChunk {
    pub fn new(start: u64, data: Bytes, file_len: u64) -> Self {
        Self {
            start,
            data,
            file_len,
        }
    }

    fn slice(&self, start: u64, length: Option<usize>) -> Result<Bytes, ParquetError> {
        let out_of_range = || {
            ParquetError::General(format!(
                "read at {start} is outside the fetched range {}..{}",
                self.start,
                self.start + self.data.len() as u64
            ))
        };
        let off = start
            .checked_sub(self.start)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|o| *o <= self.data.len())
            .ok_or_else(out_of_range)?;
        let end = match length {
            Some(l) => off
                .checked_add(l)
                .filter(|e| *e <= self.data.len())
                .ok_or_else(out_of_range)?,
            None => self.data.len(),
        };
        Ok(self.data.slice(off..end))
    }
}

impl Length for SparseChunk {
    fn len(&self) -> u64 {
        self.file_len
    }
}

impl ChunkReader for SparseChunk {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> Result<Self::T, ParquetError> {
        Ok(self.slice(start, None)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        self.slice(start, Some(length))
    }
}

/// Runs decoding with a last-resort guard: the parquet decoders are not hardened against
/// every malformed page, and a corrupt object must not take the process down.
fn guarded<T>(f: impl FnOnce() -> Result<T, BlockError>) -> Result<T, BlockError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(BlockError::Corrupt(
            "decoder panicked on malformed data".into(),
        ))
    })
}

fn reader_options() -> Result<ArrowReaderOptions, BlockError> {
    Ok(ArrowReaderOptions::new().with_schema(arrow_schema()?))
}

/// Finds one trace in row group `rg`, given only that row group's bytes (`rg_bytes`, which
/// start at file offset `rg_start`). Reads the trace_id column first, then decodes only
/// the matching row.
pub fn find_trace(
    md: Arc<ParquetMetaData>,
    rg: usize,
    rg_bytes: Bytes,
    rg_start: u64,
    id: &TraceId,
) -> Result<Option<Vec<ResourceSpans>>, BlockError> {
    let rows = md
        .row_groups()
        .get(rg)
        .ok_or(BlockError::RowGroupOutOfRange {
            rg,
            count: md.num_row_groups(),
        })?
        .num_rows();
    let rows = usize::try_from(rows)
        .map_err(|_| BlockError::Corrupt(format!("row group {rg} has {rows} rows")))?;
    if rows == 0 {
        return Ok(None);
    }
    let file_len = rg_start.saturating_add(rg_bytes.len() as u64);
    let chunk = SparseChunk::new(rg_start, rg_bytes, file_len);
    guarded(|| {
        let meta = ArrowReaderMetadata::try_new(md, reader_options()?)?;
        let ids = ParquetRecordBatchReaderBuilder::new_with_metadata(chunk.clone(), meta.clone());
        let mask = ProjectionMask::roots(ids.parquet_schema(), [0]);
        let ids = ids
            .with_projection(mask)
            .with_row_groups(vec![rg])
            .with_batch_size(rows)
            .build()?;
        let mut pos = None;
        let mut base = 0usize;
        for batch in ids {
            let batch = batch?;
            let col = batch
                .column(0)
                .as_any()
                .downcast_ref::<FixedSizeBinaryArray>()
                .ok_or_else(|| BlockError::Corrupt("trace_id column has the wrong type".into()))?;
            if let Some(i) = (0..col.len()).find(|&i| col.value(i) == id.as_bytes()) {
                pos = Some(base + i);
                break;
            }
            base += col.len();
        }
        let Some(pos) = pos else {
            return Ok(None);
        };
        let selection = RowSelection::from(vec![RowSelector::skip(pos), RowSelector::select(1)]);
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(chunk, meta)
            .with_row_groups(vec![rg])
            .with_row_selection(selection)
            .with_batch_size(1)
            .build()?;
        for batch in reader {
            if let Some(t) = batch_to_traces(&batch?)?.into_iter().next() {
                return Ok(Some(t.batches));
            }
        }
        Ok(None)
    })
}

/// Reads every trace of a whole data.parquet, in file (ID) order.
pub fn read_all_traces(data: Bytes) -> Result<Vec<TraceInput>, BlockError> {
    guarded(|| {
        let file_len = data.len() as u64;
        let md = ParquetMetaDataReader::new().parse_and_finish(&data)?;
        let footer = footer_len_of(&data)?;
        validate(&md, file_len.saturating_sub(footer))?;
        let meta = ArrowReaderMetadata::try_new(Arc::new(md), reader_options()?)?;
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(data, meta)
            .with_batch_size(1024)
            .build()?;
        let mut out = Vec::new();
        for batch in reader {
            out.extend(batch_to_traces(&batch?)?);
        }
        Ok(out)
    })
}

fn footer_len_of(data: &[u8]) -> Result<u64, BlockError> {
    let n = data.len();
    let b: [u8; 4] = data
        .get(n.saturating_sub(8)..n.saturating_sub(4))
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| BlockError::Corrupt("file shorter than a footer".into()))?;
    Ok(u64::from(u32::from_le_bytes(b)) + 8)
}

/// Converts a record batch of the full block schema into traces.
pub fn batch_to_traces(batch: &RecordBatch) -> Result<Vec<TraceInput>, BlockError> {
    let root = StructArray::from(batch.clone());
    let cols = TraceCols::new(&root)?;
    (0..root.len()).map(|row| cols.trace(row)).collect()
}

fn corrupt(msg: impl Into<String>) -> BlockError {
    BlockError::Corrupt(msg.into())
}

fn get<'a, T: Array + 'static>(s: &'a StructArray, name: &str) -> Result<&'a T, BlockError> {
    s.column_by_name(name)
        .ok_or_else(|| corrupt(format!("missing column {name}")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| corrupt(format!("column {name} has the wrong type")))
}

/// A list column: its offsets and its element struct.
struct ListCols<'a> {
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

struct AttrCols<'a> {
    list: ListCols<'a>,
    key: &'a StringArray,
    ty: &'a Int32Array,
    str: &'a StringArray,
    int: &'a Int64Array,
    dbl: &'a Float64Array,
    bool: &'a BooleanArray,
    bytes: &'a BinaryArray,
}

impl<'a> AttrCols<'a> {
    fn new(s: &'a StructArray) -> Result<Self, BlockError> {
        let list = ListCols::new(s, "attrs")?;
        let v = list.values;
        Ok(Self {
            key: get(v, "key")?,
            ty: get(v, "type")?,
            str: get(v, "str")?,
            int: get(v, "int")?,
            dbl: get(v, "dbl")?,
            bool: get(v, "bool")?,
            bytes: get(v, "bytes")?,
            list,
        })
    }

    fn read_into(&self, row: usize, out: &mut Vec<KeyValue>) -> Result<(), BlockError> {
        use any_value::Value;
        for j in self.list.range(row)? {
            let missing = || corrupt(format!("attribute {} has no value", self.key.value(j)));
            let value = match self.ty.value(j) {
                value_type::NONE => None,
                value_type::EMPTY => Some(AnyValue { value: None }),
                value_type::STRING if self.str.is_valid(j) => Some(AnyValue {
                    value: Some(Value::StringValue(self.str.value(j).to_string())),
                }),
                value_type::BOOL if self.bool.is_valid(j) => Some(AnyValue {
                    value: Some(Value::BoolValue(self.bool.value(j))),
                }),
                value_type::INT if self.int.is_valid(j) => Some(AnyValue {
                    value: Some(Value::IntValue(self.int.value(j))),
                }),
                value_type::DOUBLE if self.dbl.is_valid(j) => Some(AnyValue {
                    value: Some(Value::DoubleValue(self.dbl.value(j))),
                }),
                value_type::BYTES if self.bytes.is_valid(j) => Some(AnyValue {
                    value: Some(Value::BytesValue(self.bytes.value(j).to_vec())),
                }),
                value_type::ARRAY | value_type::KVLIST | value_type::ENCODED
                    if self.bytes.is_valid(j) =>
                {
                    Some(AnyValue::decode(self.bytes.value(j))?)
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
                key: self.key.value(j).to_string(),
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

enum DedRead<'a> {
    Str(&'static str, &'a StringArray),
    Int(&'static str, &'a Int64Array),
}

fn ded_cols<'a>(
    s: &'a StructArray,
    spec: &'static [Dedicated],
) -> Result<Vec<DedRead<'a>>, BlockError> {
    spec.iter()
        .map(|(key, col, ty)| {
            Ok(match ty {
                DedicatedType::String => DedRead::Str(key, get(s, col)?),
                DedicatedType::Int => DedRead::Int(key, get(s, col)?),
            })
        })
        .collect()
}

fn read_dedicated(cols: &[DedRead<'_>], row: usize, out: &mut Vec<KeyValue>) {
    use any_value::Value;
    for c in cols {
        let (key, value) = match c {
            DedRead::Str(k, a) if a.is_valid(row) => {
                (k, Value::StringValue(a.value(row).to_string()))
            }
            DedRead::Int(k, a) if a.is_valid(row) => (k, Value::IntValue(a.value(row))),
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
struct TraceCols<'a> {
    trace_id: &'a FixedSizeBinaryArray,
    rs: ListCols<'a>,
    res: &'a StructArray,
    res_attrs: AttrCols<'a>,
    res_dropped: &'a UInt32Array,
    res_entity_refs: &'a BinaryArray,
    res_ded: Vec<DedRead<'a>>,
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
    span_ded: Vec<DedRead<'a>>,
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
            res_ded: ded_cols(res, &DEDICATED_RESOURCE)?,
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
            span_ded: ded_cols(sp, &DEDICATED_SPAN)?,
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
                    .map(|i| self.span(id, i))
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

    fn span(&self, trace: TraceId, i: usize) -> Result<Span, BlockError> {
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
            parent_span_id: self.parent_span_id.value(i).to_vec(),
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
