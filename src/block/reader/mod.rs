//! Block decoding: Parquet footer and row-group helpers for ranged reads from object
//! storage (`footer`, `chunk`), trace lookup by ID (`lookup`), and the conversion of record
//! batches back into OTLP traces (`otlp`); streaming every trace of a row group lives here.

mod chunk;
mod footer;
mod lookup;
mod otlp;

pub use chunk::*;
pub use footer::*;
pub use lookup::*;
pub use otlp::*;

use std::sync::Arc;

use bytes::Bytes;
use parquet::file::metadata::ParquetMetaData;

use super::pages::CheckedRead;
use super::{BlockError, TraceInput};

/// The traces of one row group, decoded `batch_rows` rows at a time: what the compactor
/// streams from each input block. `rg_bytes` hold [`row_group_byte_range`] of the row group
/// (starting at file offset `rg_start`), `file_len` is the length of data.parquet. Only one
/// record batch is decoded at once; derived columns are not read.
pub fn row_group_traces(
    md: Arc<ParquetMetaData>,
    rg: usize,
    rg_bytes: Bytes,
    rg_start: u64,
    file_len: u64,
    batch_rows: usize,
) -> Result<RowGroupTraces, BlockError> {
    if rg >= md.num_row_groups() {
        return Err(BlockError::RowGroupOutOfRange {
            rg,
            count: md.num_row_groups(),
        });
    }
    let reader = open_row_group(&md, rg, rg_bytes, rg_start, file_len, batch_rows, &|p| {
        needed_for_traces(p)
    })?;
    Ok(RowGroupTraces {
        md,
        fill: None,
        reader,
        decoded: Vec::new().into_iter(),
    })
}

/// A reader of row group `rg` (its bytes given) that decodes only the leaves `keep` accepts.
pub(crate) fn open_row_group(
    md: &Arc<ParquetMetaData>,
    rg: usize,
    rg_bytes: Bytes,
    rg_start: u64,
    file_len: u64,
    batch_rows: usize,
    keep: &dyn Fn(&str) -> bool,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, BlockError> {
    let chunk = SparseChunk::new(rg_start, rg_bytes, file_len);
    guarded(|| {
        let descr = md.file_metadata().schema_descr();
        let leaves = (0..descr.num_columns()).filter(|&i| keep(&descr.column(i).path().string()));
        CheckedRead::new(chunk, md.clone())
            .with_schema(read_schema(md)?)
            .with_leaves(leaves)
            .with_row_groups(vec![rg])
            .with_batch_size(batch_rows.max(1))
            .build()
    })
}

/// Iterator returned by [`row_group_traces`] and [`super::row_group_traces_projected`]:
/// traces in file (ID) order.
pub struct RowGroupTraces {
    pub(crate) md: Arc<ParquetMetaData>,
    /// For a projected read: the block's row type, whose left-out fields are added back
    /// as nulls so the usual conversion to OTLP applies.
    pub(crate) fill: Option<arrow_schema::DataType>,
    pub(crate) reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    pub(crate) decoded: std::vec::IntoIter<TraceInput>,
}

impl Iterator for RowGroupTraces {
    type Item = Result<TraceInput, BlockError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(t) = self.decoded.next() {
                return Some(Ok(t));
            }
            let (reader, md, fill) = (&mut self.reader, &self.md, &self.fill);
            let batch = guarded(|| {
                let Some(batch) = reader.next().transpose()? else {
                    return Ok(None);
                };
                let batch = match fill {
                    Some(full) => super::project::fill_batch(batch, full)?,
                    None => batch,
                };
                Ok(Some(batch_to_traces(&batch, md)?))
            });
            match batch {
                Ok(Some(traces)) => self.decoded = traces.into_iter(),
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod row_group_tests {
    use super::*;
    use crate::block::{encode_block, synth, BlockConfig};
    use crate::model::TenantId;

    #[test]
    fn row_group_traces_stream_every_trace_in_order() {
        let input = synth::realistic_traces(300, 5);
        let cfg = BlockConfig {
            row_group_size_bytes: 50_000,
            ..BlockConfig::default()
        };
        let tenant = TenantId::new("t").unwrap();
        let block = encode_block(&tenant, uuid::Uuid::new_v4(), 0, input, &cfg).unwrap();
        let want = read_all_traces(block.data.clone()).unwrap();
        let md = decode_footer(block.data.clone(), block.meta.size).unwrap();
        assert!(md.num_row_groups() > 1, "test needs several row groups");
        let mut got = Vec::new();
        for rg in 0..md.num_row_groups() {
            let r = row_group_byte_range(&md, rg).unwrap();
            let bytes = block.data.slice(r.start as usize..r.end as usize);
            let it = row_group_traces(md.clone(), rg, bytes, r.start, block.meta.size, 7).unwrap();
            for t in it {
                got.push(t.unwrap());
            }
        }
        assert_eq!(got, want);
        // Bytes of another row group are an error, not wrong traces.
        let r = row_group_byte_range(&md, 1).unwrap();
        let wrong = block.data.slice(r.start as usize..r.end as usize);
        let it = row_group_traces(md.clone(), 0, wrong, r.start, block.meta.size, 7);
        assert!(it.is_err() || it.unwrap().any(|t| t.is_err()));
        assert!(row_group_traces(md.clone(), 99, Bytes::new(), 0, 1, 7).is_err());
    }
}
