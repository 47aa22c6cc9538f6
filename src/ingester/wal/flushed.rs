//! Flush markers: which traces a cut wrote into blocks, for the segments the cut kept.
//!
//! A cut keeps the segment before its boundary while traces that arrived there are still
//! live, instead of re-appending them to the new segment. That segment also holds the
//! data of traces the cut wrote into blocks; the marker `<boundary>.flushed` names them, so
//! a replay skips their records in segments before `boundary` rather than writing them
//! into a second block. A marker that cannot be read is ignored: that can only bring
//! those spans back twice (merged at read time and by the compactor), never lose any.
//!
//! Layout: `VVFL`, version (u8), boundary (u64 LE), then per tenant its name length
//! (u8), name, trace count (u32 LE) and 16-byte IDs, and last the crc32c (u32 LE) of
//! everything before it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::{io_err, sync_dir, WalError};
use crate::model::{TenantId, TraceId};

const MAGIC: &[u8; 4] = b"VVFL";
const VERSION: u8 = 1;
const SUFFIX: &str = ".flushed";

pub(super) fn marker_path(dir: &Path, boundary: u64) -> PathBuf {
    dir.join(format!("{boundary:020}{SUFFIX}"))
}

/// Boundaries of the markers in `dir`, ascending.
pub(super) fn list(dir: &Path) -> Result<Vec<u64>, WalError> {
    super::list_numbered(dir, SUFFIX)
}

pub(super) fn encode(boundary: u64, traces: &[(TenantId, Vec<TraceId>)]) -> Vec<u8> {
    let ids: usize = traces.iter().map(|(_, v)| v.len()).sum();
    let mut b = Vec::with_capacity(17 + traces.len() * 260 + ids * 16);
    b.extend_from_slice(MAGIC);
    b.push(VERSION);
    b.extend_from_slice(&boundary.to_le_bytes());
    for (tenant, ids) in traces {
        // Tenant IDs are at most 150 bytes (see `TenantId::new`).
        let name = tenant.as_str().as_bytes();
        b.push(name.len() as u8);
        b.extend_from_slice(name);
        b.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in ids {
            b.extend_from_slice(&id.0);
        }
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Writes a marker durably: a temporary file, fsynced, renamed into place, and the
/// directory fsynced, so a marker is either whole or absent.
pub(super) fn write(dir: &Path, boundary: u64, body: &[u8]) -> Result<(), WalError> {
    let path = marker_path(dir, boundary);
    let tmp = path.with_extension("flushed.tmp");
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(body)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    sync_dir(dir)
}

/// Deletes the markers of boundaries up to `seq`: they only speak of segments before
/// their boundary, and those are gone. Returns how many were deleted.
pub(super) fn delete_up_to(dir: &Path, seq: u64) -> Result<usize, WalError> {
    let mut n = 0;
    // A marker a crash left half-written never became one.
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".flushed.tmp"))
        {
            let p = entry.path();
            fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
            n += 1;
        }
    }
    for b in list(dir)?.into_iter().filter(|&b| b <= seq) {
        let p = marker_path(dir, b);
        fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
        n += 1;
    }
    Ok(n)
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Malformed(&'static str);

fn decode(data: &[u8]) -> Result<(u64, HashMap<TenantId, HashSet<TraceId>>), Malformed> {
    let (body, crc) = data.split_last_chunk::<4>().ok_or(Malformed("too short"))?;
    if crc32c::crc32c(body) != u32::from_le_bytes(*crc) {
        return Err(Malformed("checksum mismatch"));
    }
    let rest = body.strip_prefix(MAGIC).ok_or(Malformed("not a marker"))?;
    let (&version, rest) = rest.split_first().ok_or(Malformed("too short"))?;
    if version != VERSION {
        return Err(Malformed("unknown version"));
    }
    let (boundary, mut rest) = rest
        .split_first_chunk::<8>()
        .ok_or(Malformed("too short"))?;
    let mut out: HashMap<TenantId, HashSet<TraceId>> = HashMap::new();
    while let Some((&len, r)) = rest.split_first() {
        let (name, r) = r
            .split_at_checked(len as usize)
            .ok_or(Malformed("truncated"))?;
        let tenant = std::str::from_utf8(name)
            .ok()
            .and_then(|n| TenantId::new(n).ok())
            .ok_or(Malformed("bad tenant"))?;
        let (count, r) = r.split_first_chunk::<4>().ok_or(Malformed("truncated"))?;
        let count = u32::from_le_bytes(*count) as usize;
        let (ids, r) = r
            .split_at_checked(count.checked_mul(16).ok_or(Malformed("truncated"))?)
            .ok_or(Malformed("truncated"))?;
        let set = out.entry(tenant).or_default();
        set.extend(ids.chunks_exact(16).map(|c| {
            let mut id = [0u8; 16];
            id.copy_from_slice(c);
            TraceId(id)
        }));
        rest = r;
    }
    Ok((u64::from_le_bytes(*boundary), out))
}

/// The traces already in blocks, by the markers found when the WAL was opened.
#[derive(Debug, Default)]
pub(crate) struct Flushed {
    /// (boundary, traces written from the segments before it)
    markers: Vec<(u64, HashMap<TenantId, HashSet<TraceId>>)>,
}

impl Flushed {
    /// Reads every marker in `dir`; one that cannot be read is skipped with a warning.
    pub(super) fn read(dir: &Path) -> Result<Self, WalError> {
        let mut markers = Vec::new();
        for b in list(dir)? {
            let path = marker_path(dir, b);
            let data = fs::read(&path).map_err(|e| io_err(&path, e))?;
            match decode(&data) {
                Ok((boundary, traces)) if boundary == b => markers.push((boundary, traces)),
                Ok((boundary, _)) => warn!(
                    marker = %path.display(),
                    boundary,
                    "wal flush marker names another boundary than its file, ignoring it"
                ),
                Err(e) => warn!(
                    marker = %path.display(),
                    error = %e,
                    "unreadable wal flush marker, ignoring it (its traces may be written twice)"
                ),
            }
        }
        Ok(Self { markers })
    }

    /// Whether `tenant`'s trace `id`, read from `segment`, is already in a block.
    pub(crate) fn contains(&self, segment: u64, tenant: &TenantId, id: &TraceId) -> bool {
        self.markers.iter().any(|(boundary, traces)| {
            segment < *boundary && traces.get(tenant).is_some_and(|s| s.contains(id))
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.markers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traces() -> Vec<(TenantId, Vec<TraceId>)> {
        vec![
            (TenantId::single(), vec![TraceId([1; 16]), TraceId([2; 16])]),
            (TenantId::new("acme").unwrap(), vec![TraceId([3; 16])]),
        ]
    }

    #[test]
    fn a_marker_reads_back_and_applies_only_before_its_boundary() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 7, &encode(7, &traces())).unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![7]);
        let f = Flushed::read(dir.path()).unwrap();
        let single = TenantId::single();
        let acme = TenantId::new("acme").unwrap();
        assert!(f.contains(6, &single, &TraceId([1; 16])));
        assert!(f.contains(3, &acme, &TraceId([3; 16])));
        // Not before the boundary, another tenant's, or not listed.
        assert!(!f.contains(7, &single, &TraceId([1; 16])));
        assert!(!f.contains(6, &acme, &TraceId([1; 16])));
        assert!(!f.contains(6, &single, &TraceId([9; 16])));
        assert_eq!(delete_up_to(dir.path(), 6).unwrap(), 0);
        std::fs::write(
            marker_path(dir.path(), 9).with_extension("flushed.tmp"),
            b"torn",
        )
        .unwrap();
        assert_eq!(
            delete_up_to(dir.path(), 7).unwrap(),
            2,
            "marker 7 and the torn one"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(Flushed::read(dir.path()).unwrap().is_empty());
    }

    /// Any damage makes the marker unreadable as a whole: a marker must never drop a
    /// trace it did not name.
    #[test]
    fn a_damaged_marker_is_ignored() {
        let good = encode(5, &traces());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flipped byte {i} went unnoticed");
        }
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "truncated to {n}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(marker_path(dir.path(), 5), &good[..good.len() - 1]).unwrap();
        // A marker under another boundary's name is not trusted either.
        std::fs::write(marker_path(dir.path(), 6), &good).unwrap();
        let f = Flushed::read(dir.path()).unwrap();
        assert!(f.is_empty());
    }
}
