//! Reading a WAL back at start-up, one segment at a time: intact records are returned,
//! corrupt stretches in the middle of a segment are stepped over (and counted), and a torn
//! or corrupt tail is cut off so the segment ends with intact records only.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::warn;

use super::{io_err, record, segment_path, Flushed, WalError};

/// A record read back at start-up, with the segment it came from.
pub struct ReplayedRecord {
    pub segment: u64,
    pub payload: Bytes,
}

/// What replay had to step over to read a WAL back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Corrupt stretches in the middle of segments, skipped to reach the records after them.
    pub skipped_regions: usize,
    pub skipped_bytes: usize,
    /// Torn or corrupt tails cut off the ends of segments.
    pub cut_bytes: usize,
}

/// The segments that existed when the WAL was opened, read back in order.
pub(crate) struct Replay {
    dir: PathBuf,
    segments: std::vec::IntoIter<u64>,
    stats: ReplayStats,
    flushed: Flushed,
}

impl Replay {
    pub(super) fn new(dir: PathBuf, segments: Vec<u64>, flushed: Flushed) -> Self {
        Self {
            dir,
            segments: segments.into_iter(),
            stats: ReplayStats::default(),
            flushed,
        }
    }

    /// Traces the flush markers say are in blocks already: their records are skipped.
    pub(crate) fn flushed(&self) -> &Flushed {
        &self.flushed
    }

    /// The intact records of the next segment, or `None` once every segment was read.
    pub(crate) fn next_segment(&mut self) -> Result<Option<Vec<ReplayedRecord>>, WalError> {
        let Some(seq) = self.segments.next() else {
            return Ok(None);
        };
        let path = segment_path(&self.dir, seq);
        let data = fs::read(&path).map_err(|e| io_err(&path, e))?;
        let parsed = record::parse_segment(&data);
        if parsed.skipped_regions > 0 {
            warn!(
                segment = %path.display(),
                skipped_regions = parsed.skipped_regions,
                skipped_bytes = parsed.skipped_bytes,
                recovered_records = parsed.records.len(),
                "wal segment has corrupt records in the middle, skipped them and kept the records after them"
            );
            self.stats.skipped_regions += parsed.skipped_regions;
            self.stats.skipped_bytes += parsed.skipped_bytes;
        }
        let good_len = parsed.good_len;
        if good_len < data.len() {
            self.stats.cut_bytes += data.len() - good_len;
            warn!(
                segment = %path.display(),
                kept_bytes = good_len,
                cut_bytes = data.len() - good_len,
                "wal segment has a torn or corrupt tail, cutting it off"
            );
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            f.set_len(good_len as u64).map_err(|e| io_err(&path, e))?;
            f.sync_all().map_err(|e| io_err(&path, e))?;
        }
        let data = Bytes::from(data);
        Ok(Some(
            parsed
                .records
                .into_iter()
                .map(|r| ReplayedRecord {
                    segment: seq,
                    payload: data.slice(r),
                })
                .collect(),
        ))
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// What was skipped or cut so far.
    pub(crate) fn stats(&self) -> ReplayStats {
        self.stats
    }
}

/// Reads every intact record of a WAL directory without locking or changing it: for tools
/// and tests that look at a WAL another handle owns.
#[cfg(test)]
pub(crate) fn read_only(dir: &Path) -> Result<(Vec<ReplayedRecord>, ReplayStats), WalError> {
    let mut out = Vec::new();
    let mut stats = ReplayStats::default();
    for seq in super::list_segments(dir)? {
        let path = segment_path(dir, seq);
        let data = Bytes::from(fs::read(&path).map_err(|e| io_err(&path, e))?);
        let parsed = record::parse_segment(&data);
        stats.skipped_regions += parsed.skipped_regions;
        stats.skipped_bytes += parsed.skipped_bytes;
        stats.cut_bytes += data.len() - parsed.good_len;
        out.extend(parsed.records.into_iter().map(|r| ReplayedRecord {
            segment: seq,
            payload: data.slice(r),
        }));
    }
    Ok((out, stats))
}
