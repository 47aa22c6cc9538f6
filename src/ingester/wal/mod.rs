//! The write-ahead log: a span is acknowledged only once the record holding it is fsynced here.
//!
//! Segments are files `<20-digit sequence>.wal`. A record is
//! `[u32 LE payload length][u32 LE crc32c(payload)][payload]`. One writer thread owns the
//! file and commits in groups: every append that queued while the previous fsync ran shares
//! the next one, so many concurrent exports cost one fsync.
//!
//! A failed write or fsync (disk full, I/O error, read-only file system) refuses the whole
//! group, cuts whatever part of it reached the file, and moves the next group to a fresh
//! segment, so a later replay never meets garbage in the middle of a segment and the
//! writer recovers by itself once the disk takes writes again.
//!
//! Only one process may use a WAL directory: `open` takes an exclusive lock (`flock`) on
//! the directory itself (released when the last handle is dropped or the process dies), since
//! two writers would each cut the other's "torn tail" and delete the other's segments.
//!
//! A corrupt record in the middle of a segment costs only itself: replay resynchronises on
//! the next intact record and reports what it skipped ([`ReplayStats`]).
//!
//! Segment deletion and its directory fsync run on the writer thread too, never on the
//! async executor.
//!
//! Test-only hook, for machines where a test cannot mount a small file system: when the
//! file [`FAULT_MARKER`] exists in the WAL directory at start-up, every group commit fails
//! with "no space left" (after writing half its bytes, as a filling disk does) while the
//! file `FAULT_MARKER.enospc` exists there.

mod flushed;
mod record;
mod replay;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{info, warn};

pub(crate) use flushed::Flushed;
#[cfg(test)]
pub(crate) use record::HEADER_LEN;
pub(crate) use record::{
    decode_payload, encode_payload, encode_payload_gzip, encode_payload_parts,
};
#[cfg(test)]
pub(crate) use replay::read_only;
pub(crate) use replay::Replay;
pub use replay::{ReplayStats, ReplayedRecord};

use crate::metrics::{thread_cpu_nanos, Metrics, Stage};

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal io error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("wal is closed")]
    Closed,
    /// The Kafka ingest log standing in for the WAL (see `src/ingest/`).
    #[error("ingest log: {0}")]
    Log(String),
    #[error("wal record of {0} bytes is larger than the 1 GiB limit")]
    TooLarge(usize),
    #[error("wal directory {0} is locked by another process; each vivace needs its own storage.trace.wal.path")]
    Locked(PathBuf),
}

pub(super) fn io_err(path: &Path, source: io::Error) -> WalError {
    WalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Largest record accepted; also the bound replay trusts a length header up to.
pub(crate) const MAX_RECORD: usize = 1 << 30;

/// Name of the test-only fault hook's marker file (see the module docs).
pub const FAULT_MARKER: &str = "FAULT_INJECTION_FOR_TESTING";

enum Cmd {
    Append {
        payload: Bytes,
        done: oneshot::Sender<Result<u64, WalError>>,
    },
    Rotate {
        done: oneshot::Sender<Result<u64, WalError>>,
    },
    DeleteBefore {
        seq: u64,
        done: oneshot::Sender<Result<usize, WalError>>,
    },
    MarkFlushed {
        boundary: u64,
        body: Vec<u8>,
        done: oneshot::Sender<Result<(), WalError>>,
    },
}

/// Handle to the WAL; cheap to clone.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Cmd>,
    /// The segment started at open: everything this process appends is in it or later.
    opened: u64,
    stats: ReplayStats,
    dir: Arc<Path>,
    /// Holds the directory lock for as long as any handle lives.
    _lock: Arc<File>,
}

/// Takes the exclusive lock on the WAL directory (on the directory itself, so no extra
/// file appears in it), or says the directory is in use.
fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let f = File::open(dir).map_err(|e| io_err(dir, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(WalError::Locked(dir.to_owned())),
        Err(fs::TryLockError::Error(e)) => Err(io_err(dir, e)),
    }
}

impl Wal {
    /// Opens the WAL directory and reads back every intact record at once (see
    /// `Wal::open_lazy`, which the ingester uses, to read one segment at a time).
    pub fn open(
        dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Vec<ReplayedRecord>), WalError> {
        let (mut wal, mut replay) = Self::open_lazy(dir, metrics)?;
        let mut replayed = Vec::new();
        while let Some(records) = replay.next_segment()? {
            replayed.extend(records);
        }
        wal.stats = replay.stats();
        Ok((wal, replayed))
    }

    /// [`Wal::open_lazy`] on a blocking thread: opening creates, locks and fsyncs the
    /// directory, which must not stall the async executor.
    pub(crate) async fn open_async(
        dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Replay), WalError> {
        let d = dir.to_owned();
        tokio::task::spawn_blocking(move || Self::open_lazy(&d, metrics))
            .await
            .map_err(|e| io_err(dir, io::Error::other(e.to_string())))?
    }

    /// Locks the WAL directory and starts a fresh segment after the newest one; the
    /// returned [`Replay`] reads the older segments back one at a time (cutting torn tails),
    /// so replay never holds the whole WAL in memory.
    pub(crate) fn open_lazy(dir: &Path, metrics: Arc<Metrics>) -> Result<(Self, Replay), WalError> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let lock = lock_dir(dir)?;
        let segments = list_segments(dir)?;
        let stats = ReplayStats::default();
        // A flush marker speaks of the segments before its boundary: new segments start at
        // or past every boundary, so no marker can apply to them (even if segments were
        // deleted by hand and the markers left).
        let past_markers = flushed::list(dir)?.last().copied().unwrap_or(0);
        let next = segments.last().map_or(1, |s| s + 1).max(past_markers);
        let mut writer = Writer::create(dir.to_owned(), next, metrics)?;
        if dir.join(FAULT_MARKER).exists() {
            let switch = dir.join(format!("{FAULT_MARKER}.enospc"));
            warn!(
                switch = %switch.display(),
                "WAL FAULT INJECTION IS ON: writes fail while the switch file exists; for testing only"
            );
            writer.fault_switch = Some(switch);
        }
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("vivace-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_err(dir, e))?;
        info!(
            dir = %dir.display(),
            segments = segments.len(),
            "wal opened"
        );
        let replay = Replay::new(dir.to_owned(), segments, Flushed::read(dir)?);
        Ok((
            Self {
                tx,
                opened: next,
                stats,
                dir: dir.into(),
                _lock: Arc::new(lock),
            },
            replay,
        ))
    }

    /// The segment started when the WAL was opened; older ones are replayed ones.
    pub(crate) fn opened_segment(&self) -> u64 {
        self.opened
    }

    /// The directory the segments live in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// What `open` had to skip or cut to read the WAL back.
    pub fn replay_stats(&self) -> ReplayStats {
        self.stats
    }

    /// Appends one record and returns once it is on disk, with the segment it landed in.
    pub async fn append(&self, payload: Bytes) -> Result<u64, WalError> {
        if payload.len() > MAX_RECORD {
            return Err(WalError::TooLarge(payload.len()));
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append { payload, done })
            .map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Closes the current segment and starts a new one; returns the new segment's number.
    /// Every append acknowledged before this call is in an older segment.
    pub(crate) async fn rotate(&self) -> Result<u64, WalError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Rotate { done })
            .map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Records durably that `traces` are in blocks, for the segments before `boundary`
    /// that are kept (see [`Flushed`]). Written on the writer thread.
    pub(crate) async fn mark_flushed(
        &self,
        boundary: u64,
        traces: &[(crate::model::TenantId, Vec<crate::model::TraceId>)],
    ) -> Result<(), WalError> {
        let body = flushed::encode(boundary, traces);
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::MarkFlushed {
                boundary,
                body,
                done,
            })
            .map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Deletes every segment numbered below `seq` (their data is safe in the backend or
    /// carried over), and the flush markers that spoke only of those. Unlinks and the
    /// directory fsync run on the writer thread.
    pub(crate) async fn delete_segments_before(&self, seq: u64) -> Result<usize, WalError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::DeleteBefore { seq, done })
            .map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }
}

pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    list_numbered(dir, ".wal")
}

/// The numbers of the files `<number><suffix>` in `dir`, ascending.
pub(super) fn list_numbered(dir: &Path, suffix: &str) -> Result<Vec<u64>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        if let Ok(seq) = stem.parse::<u64>() {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

struct Writer {
    dir: PathBuf,
    seq: u64,
    file: File,
    len: u64,
    buf: Vec<u8>,
    metrics: Arc<Metrics>,
    /// A write or fsync failed on the current segment: the next group goes to a new one.
    broken: bool,
    /// Test-only: writes fail while this file exists.
    fault_switch: Option<PathBuf>,
}

impl Writer {
    fn create(dir: PathBuf, seq: u64, metrics: Arc<Metrics>) -> Result<Self, WalError> {
        let path = segment_path(&dir, seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
        sync_dir(&dir)?;
        Ok(Self {
            dir,
            seq,
            file,
            len,
            buf: Vec::with_capacity(1 << 20),
            metrics,
            broken: false,
            fault_switch: None,
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut waiting: Vec<oneshot::Sender<Result<u64, WalError>>> = Vec::new();
        // This thread does nothing but the WAL: all its CPU is the WAL stage's.
        let mut charged = thread_cpu_nanos();
        // Block for the first command, then take everything already queued: that is the group.
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Append { payload, done } => {
                        record::encode_into(&mut self.buf, &payload);
                        waiting.push(done);
                        // Bound a group so one fsync never waits on an unbounded write.
                        if self.buf.len() < 64 << 20 {
                            next = rx.try_recv().ok();
                        }
                    }
                    Cmd::Rotate { done } => {
                        self.commit(&mut waiting);
                        let _ = done.send(self.rotate());
                        next = rx.try_recv().ok();
                    }
                    Cmd::DeleteBefore { seq, done } => {
                        self.commit(&mut waiting);
                        let _ = done.send(self.delete_before(seq));
                        next = rx.try_recv().ok();
                    }
                    Cmd::MarkFlushed {
                        boundary,
                        body,
                        done,
                    } => {
                        self.commit(&mut waiting);
                        let _ = done.send(flushed::write(&self.dir, boundary, &body));
                        next = rx.try_recv().ok();
                    }
                }
            }
            self.commit(&mut waiting);
            let now = thread_cpu_nanos();
            self.metrics
                .stage_cpu
                .add_nanos(Stage::Wal, now.saturating_sub(charged));
            charged = now;
        }
        // Channel closed: every sender is gone, so nothing waits on us.
        let _ = self.file.sync_data();
    }

    fn commit(&mut self, waiting: &mut Vec<oneshot::Sender<Result<u64, WalError>>>) {
        if waiting.is_empty() {
            return;
        }
        let result = self.write_group();
        let records = waiting.len() as u64;
        match result {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.metrics.wal_fsyncs.inc();
                self.metrics.wal_records.add(records);
                self.metrics.wal_bytes.add(self.buf.len() as u64);
                for w in waiting.drain(..) {
                    let _ = w.send(Ok(self.seq));
                }
            }
            Err(e) => {
                let (path, source) = match e {
                    WalError::Io { path, source } => (path, source),
                    other => (
                        segment_path(&self.dir, self.seq),
                        io::Error::other(other.to_string()),
                    ),
                };
                warn!(segment = %path.display(), records, error = %source, "wal write failed, refusing the group");
                let kind = source.kind();
                let msg = source.to_string();
                for w in waiting.drain(..) {
                    let _ = w.send(Err(io_err(&path, io::Error::new(kind, msg.clone()))));
                }
            }
        }
        self.buf.clear();
    }

    /// Writes and fsyncs the buffered group. On failure the segment is cut back to its
    /// acknowledged prefix; if that fails too, or the fsync failed, it is marked broken and
    /// the next group starts a new segment.
    fn write_group(&mut self) -> Result<(), WalError> {
        if self.broken {
            // The old segment ends with acknowledged records only (or, if even the cut
            // failed, with a torn tail that replay cuts off); nothing is appended after it.
            let next = Writer::create(self.dir.clone(), self.seq + 1, self.metrics.clone())?;
            info!(segment = next.seq, "wal writes resume in a new segment");
            self.seq = next.seq;
            self.file = next.file;
            self.len = next.len;
            self.broken = false;
        }
        let path = segment_path(&self.dir, self.seq);
        let injected = self.fault_switch.as_ref().is_some_and(|f| f.exists());
        let written = if injected {
            // As a filling disk does: part of the group lands, then the write fails.
            self.file
                .write_all(&self.buf[..self.buf.len() / 2])
                .and_then(|()| {
                    Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "no space left on device (injected for testing)",
                    ))
                })
        } else {
            self.file.write_all(&self.buf)
        };
        // After a failed fsync the kernel may have dropped the dirty pages: the file can no
        // longer be trusted to hold what was written, so it is not written to again.
        let (result, fsync_failed) = match written {
            Ok(()) => match self.file.sync_data() {
                Ok(()) => return Ok(()),
                Err(e) => (e, true),
            },
            Err(e) => (e, false),
        };
        // Drop whatever part of the group reached the file, so the segment stays a clean
        // sequence of acknowledged records.
        if let Err(e2) = self
            .file
            .set_len(self.len)
            .and_then(|()| self.file.sync_data())
        {
            warn!(segment = %path.display(), error = %e2, "cannot cut the failed write off the wal segment; replay will cut it");
            self.broken = true;
        }
        if fsync_failed {
            self.broken = true;
        }
        Err(io_err(&path, result))
    }

    fn delete_before(&self, seq: u64) -> Result<usize, WalError> {
        // Never the segment being written, whatever the caller asked.
        let seq = seq.min(self.seq);
        let mut n = 0;
        for s in list_segments(&self.dir)? {
            if s < seq {
                let p = segment_path(&self.dir, s);
                fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
                n += 1;
            }
        }
        // Markers go after the segments they speak of: one left behind alone is harmless.
        let markers = flushed::delete_up_to(&self.dir, seq)?;
        if n + markers > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(n)
    }

    fn rotate(&mut self) -> Result<u64, WalError> {
        let path = segment_path(&self.dir, self.seq);
        // A broken segment's acknowledged prefix was synced before the failure; syncing
        // it again could only repeat the error and block every cut.
        if !self.broken {
            self.file.sync_all().map_err(|e| io_err(&path, e))?;
        }
        let next = Writer::create(self.dir.clone(), self.seq + 1, self.metrics.clone())?;
        self.seq = next.seq;
        self.file = next.file;
        self.len = next.len;
        self.broken = false;
        Ok(self.seq)
    }
}

#[cfg(test)]
mod tests;
