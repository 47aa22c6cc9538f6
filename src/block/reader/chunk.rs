//! A column chunk assembled from ranged reads (`SparseChunk`), and the guard that turns a
//! decoder panic on malformed data into an error.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};

use crate::block::BlockError;

/// A `ChunkReader` over some byte ranges of a file (e.g. one row group, or a few pages,
/// fetched from object storage). Reads outside the ranges fail instead of returning wrong
/// bytes.
#[derive(Debug, Clone)]
pub struct SparseChunk {
    /// Sorted by start, non-overlapping.
    parts: Arc<[(u64, Bytes)]>,
    file_len: u64,
}

impl SparseChunk {
    /// One contiguous range starting at file offset `start`.
    pub fn new(start: u64, data: Bytes, file_len: u64) -> Self {
        Self {
            parts: Arc::from(vec![(start, data)]),
            file_len,
        }
    }

    /// Several ranges: `(file offset, bytes)`. Errors if they overlap.
    pub fn from_parts(mut parts: Vec<(u64, Bytes)>, file_len: u64) -> Result<Self, BlockError> {
        parts.sort_by_key(|(s, _)| *s);
        for w in parts.windows(2) {
            if w[0].0.saturating_add(w[0].1.len() as u64) > w[1].0 {
                return Err(BlockError::Corrupt("fetched ranges overlap".into()));
            }
        }
        Ok(Self {
            parts: Arc::from(parts),
            file_len,
        })
    }

    /// The ranges a read plan named, `fetched[i]` holding the bytes of `ranges[i]`; errors
    /// if a range is missing or has the wrong length.
    pub fn from_fetched(
        ranges: &[Range<u64>],
        fetched: Vec<Bytes>,
        file_len: u64,
    ) -> Result<Self, BlockError> {
        if fetched.len() != ranges.len() {
            return Err(BlockError::Corrupt(format!(
                "{} ranges fetched for {} planned",
                fetched.len(),
                ranges.len()
            )));
        }
        let mut parts = Vec::with_capacity(fetched.len());
        for (r, b) in ranges.iter().zip(fetched) {
            if b.len() as u64 != r.end - r.start {
                return Err(BlockError::Corrupt(format!(
                    "fetched {} bytes for range {r:?}",
                    b.len()
                )));
            }
            parts.push((r.start, b));
        }
        Self::from_parts(parts, file_len)
    }

    fn slice(&self, start: u64, length: Option<usize>) -> Result<Bytes, ParquetError> {
        let out_of_range = |len: Option<usize>| {
            ParquetError::General(format!(
                "read of {len:?} bytes at {start} is outside the fetched ranges"
            ))
        };
        // The last part starting at or before `start`.
        let i = self.parts.partition_point(|(s, _)| *s <= start);
        let (part_start, data) = i
            .checked_sub(1)
            .and_then(|i| self.parts.get(i))
            .ok_or_else(|| out_of_range(length))?;
        let off = usize::try_from(start - part_start)
            .ok()
            .filter(|o| *o <= data.len())
            .ok_or_else(|| out_of_range(length))?;
        let end = match length {
            Some(l) => off
                .checked_add(l)
                .filter(|e| *e <= data.len())
                .ok_or_else(|| out_of_range(length))?,
            None => data.len(),
        };
        Ok(data.slice(off..end))
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
/// every malformed page, and a corrupt object must not take the process down. Buffers
/// grow geometrically meanwhile ([`crate::alloc::growing`]): parquet grows them a page at
/// a time, and every decode of a block goes through here.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, BlockError>) -> Result<T, BlockError> {
    catch_unwind(AssertUnwindSafe(|| crate::alloc::growing(f))).unwrap_or_else(|_| {
        Err(BlockError::Corrupt(
            "decoder panicked on malformed data".into(),
        ))
    })
}
