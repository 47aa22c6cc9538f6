//! Traces of a row group read with only some columns: what tag discovery needs for one tag
//! (a span attribute, a resource attribute, an intrinsic). The leaves left out are filled
//! with null columns of the block schema's types, so the usual conversion to OTLP applies:
//! left-out fields come back empty, which the caller does not look at.

use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, ListArray, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields};
use bytes::Bytes;
use parquet::file::metadata::ParquetMetaData;

use super::reader::{open_row_group, RowGroupTraces};
use super::schema::{arrow_schema_for, paths};
use super::BlockError;

/// Leaves every projected read keeps: the trace ID and what restores parent span IDs
/// (root spans are told by their missing parent).
fn always(path: &str) -> bool {
    path == paths::TRACE_ID
        || path == paths::START_TIME
        || path.strip_prefix(paths::SPAN).is_some_and(|leaf| {
            ["span_id", "parent_span_id", "nested_set_left", "parent_id"].contains(&leaf)
        })
}

/// Like [`super::row_group_traces`], reading only the leaves `keep` accepts (plus those
/// that tie spans to their parents).
pub fn row_group_traces_projected(
    md: Arc<ParquetMetaData>,
    rg: usize,
    rg_bytes: Bytes,
    rg_start: u64,
    file_len: u64,
    batch_rows: usize,
    keep: &dyn Fn(&str) -> bool,
) -> Result<RowGroupTraces, BlockError> {
    if rg >= md.num_row_groups() {
        return Err(BlockError::RowGroupOutOfRange {
            rg,
            count: md.num_row_groups(),
        });
    }
    let full = arrow_schema_for(md.file_metadata().schema_descr())?;
    let reader = open_row_group(&md, rg, rg_bytes, rg_start, file_len, batch_rows, &|p| {
        always(p) || keep(p)
    })?;
    Ok(RowGroupTraces {
        md,
        fill: Some(DataType::Struct(full.fields().clone())),
        reader,
        decoded: Vec::new().into_iter(),
    })
}

/// A projected batch with every left-out field of `full` (the block's row type) added back
/// as a null column.
pub(crate) fn fill_batch(batch: RecordBatch, full: &DataType) -> Result<RecordBatch, BlockError> {
    let root: ArrayRef = Arc::new(StructArray::from(batch));
    Ok(RecordBatch::from(fill(&root, full)?.as_struct().clone()))
}

/// `array` (a projection of a `target`-typed column) with every left-out field of `target`
/// added back as a null column.
fn fill(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, BlockError> {
    let bad = || BlockError::Corrupt("projected column does not match the block schema".into());
    match target {
        DataType::Struct(fields) => {
            let s = array.as_struct_opt().ok_or_else(bad)?;
            let mut out_fields: Vec<Field> = Vec::with_capacity(fields.len());
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(fields.len());
            for f in fields.iter() {
                match s.column_by_name(f.name()) {
                    Some(c) => {
                        let c = fill(c, f.data_type())?;
                        out_fields.push(f.as_ref().clone().with_data_type(c.data_type().clone()));
                        cols.push(c);
                    }
                    None => {
                        out_fields.push(f.as_ref().clone().with_nullable(true));
                        cols.push(new_null_array(f.data_type(), s.len()));
                    }
                }
            }
            if cols.is_empty() {
                return Ok(array.clone());
            }
            let s = StructArray::try_new(Fields::from(out_fields), cols, s.nulls().cloned())?;
            Ok(Arc::new(s))
        }
        DataType::List(field) => {
            let l = array.as_list_opt::<i32>().ok_or_else(bad)?;
            let values = fill(l.values(), field.data_type())?;
            let field = Arc::new(
                field
                    .as_ref()
                    .clone()
                    .with_data_type(values.data_type().clone()),
            );
            Ok(Arc::new(ListArray::try_new(
                field,
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )?))
        }
        _ => Ok(array.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{
        decode_footer, encode_block, row_group_byte_range, synth, BlockConfig, TraceInput,
    };
    use crate::model::TenantId;

    #[test]
    fn projected_reads_keep_the_columns_asked_for() {
        let tenant = TenantId::new("t").unwrap();
        let traces = synth::realistic_traces(20, 3);
        let b = encode_block(
            &tenant,
            uuid::Uuid::nil(),
            0,
            traces.clone(),
            &BlockConfig::default(),
        )
        .unwrap();
        let md = decode_footer(b.data.clone(), b.data.len() as u64).unwrap();
        let r = row_group_byte_range(&md, 0).unwrap();
        let bytes = b.data.slice(r.start as usize..r.end as usize);
        let keep = |p: &str| p == format!("{}name", paths::SPAN);
        let got: Vec<TraceInput> =
            row_group_traces_projected(md.clone(), 0, bytes, r.start, b.meta.size, 7, &keep)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let mut want = traces;
        want.sort_by_key(|t| t.id);
        assert_eq!(got.len(), md.row_group(0).num_rows() as usize);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.id, w.id);
            let spans = |t: &TraceInput| -> Vec<(Vec<u8>, String, bool, usize)> {
                let mut v: Vec<_> = t
                    .batches
                    .iter()
                    .flat_map(|rs| &rs.scope_spans)
                    .flat_map(|ss| &ss.spans)
                    .map(|s| {
                        (
                            s.span_id.clone(),
                            s.name.clone(),
                            s.parent_span_id.is_empty(),
                            s.attributes.len(),
                        )
                    })
                    .collect();
                v.sort();
                v
            };
            let (gs, ws) = (spans(g), spans(w));
            assert_eq!(gs.len(), ws.len());
            for (a, b) in gs.iter().zip(&ws) {
                // Names and which spans are roots survive; attributes were not read.
                assert_eq!((&a.0, &a.1, a.2), (&b.0, &b.1, b.2));
                assert_eq!(a.3, 0);
            }
            assert!(ws.iter().any(|s| s.3 > 0), "the source has attributes");
        }
    }
}
