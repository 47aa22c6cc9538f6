//! The write-ahead log: a span is acknowledged only once the record holding it is fsynced here.
//!
//! Segments are files `<20-digit sequence>.wal`. A record is
//! `[u32 LE payload length][u32 LE crc32c(payload)][payload]`. One writer thread owns the
//! file and commits in groups: every append that queued while the previous fsync ran shares
//! the next one, so many concurrent exports cost one fsync.

mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{info, warn};

pub use record::{decode_payload, encode_payload, RecordError, HEADER_LEN};

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal io error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("wal is closed")]
    Closed,
    #[error("wal record of {0} bytes is larger than the 1 GiB limit")]
    TooLarge(usize),
}

fn io_err(path: &Path, source: io::Error) -> WalError {
    WalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Largest record accepted; also the bound replay trusts a length header up to.
pub const MAX_RECORD: usize = 1 << 30;

/// A record read back at start-up, with the segment it came from.
pub struct ReplayedRecord {
    pub segment: u64,
    pub payload: Bytes,
}

enum Cmd {
    Append {
        payload: Bytes,
        done: oneshot::Sender<Result<u64, WalError>>,
    },
    Rotate {
        done: oneshot::Sender<Result<u64, WalError>>,
    },
}

/// Handle to the WAL; cheap to clone.
#[derive(Clone)]
pub struct Wal {
    dir: PathBuf,
    tx: mpsc::Sender<Cmd>,
}

impl Wal {
    /// Opens the WAL directory, reads back every intact record (cutting a torn or corrupt tail
    /// with a warning), and starts a fresh segment after the newest one.
    pub fn open(
        dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Vec<ReplayedRecord>), WalError> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let segments = list_segments(dir)?;
        let mut replayed = Vec::new();
        for &seq in &segments {
            let path = segment_path(dir, seq);
            let data = fs::read(&path).map_err(|e| io_err(&path, e))?;
            let (records, good_len) = record::parse_segment(&data);
            if good_len < data.len() {
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
            for r in records {
                replayed.push(ReplayedRecord {
                    segment: seq,
                    payload: data.slice(r),
                });
            }
        }
        let next = segments.last().map_or(1, |s| s + 1);
        let writer = Writer::create(dir.to_owned(), next, metrics)?;
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("vivace-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_err(dir, e))?;
        info!(
            dir = %dir.display(),
            segments = segments.len(),
            records = replayed.len(),
            "wal opened"
        );
        Ok((
            Self {
                dir: dir.to_owned(),
                tx,
            },
            replayed,
        ))
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
    pub async fn rotate(&self) -> Result<u64, WalError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Rotate { done })
            .map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Deletes every segment numbered below `seq`: their data is safe in the backend.
    pub fn delete_segments_before(&self, seq: u64) -> Result<usize, WalError> {
        let mut n = 0;
        for s in list_segments(&self.dir)? {
            if s < seq {
                let p = segment_path(&self.dir, s);
                fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
                n += 1;
            }
        }
        if n > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(n)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".wal") {
            if let Ok(seq) = stem.parse::<u64>() {
                out.push(seq);
            }
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
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut waiting: Vec<oneshot::Sender<Result<u64, WalError>>> = Vec::new();
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
                }
            }
            self.commit(&mut waiting);
        }
        // Channel closed: every sender is gone, so nothing waits on us.
        let _ = self.file.sync_data();
    }

    fn commit(&mut self, waiting: &mut Vec<oneshot::Sender<Result<u64, WalError>>>) {
        if waiting.is_empty() {
            return;
        }
        let path = segment_path(&self.dir, self.seq);
        let result = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
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
                warn!(segment = %path.display(), error = %e, "wal write failed, refusing the group");
                // Drop whatever part of the group reached the file so the segment stays a
                // clean sequence of records that were acknowledged.
                if let Err(e2) = self.file.set_len(self.len) {
                    warn!(error = %e2, "cannot truncate wal segment after failed write");
                }
                let kind = e.kind();
                let msg = e.to_string();
                for w in waiting.drain(..) {
                    let _ = w.send(Err(io_err(&path, io::Error::new(kind, msg.clone()))));
                }
            }
        }
        self.buf.clear();
    }

    fn rotate(&mut self) -> Result<u64, WalError> {
        let path = segment_path(&self.dir, self.seq);
        self.file.sync_all().map_err(|e| io_err(&path, e))?;
        let next = Writer::create(self.dir.clone(), self.seq + 1, self.metrics.clone())?;
        self.seq = next.seq;
        self.file = next.file;
        self.len = next.len;
        Ok(self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    #[tokio::test]
    async fn append_replay_and_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let m = metrics();
        let (wal, replayed) = Wal::open(dir.path(), m.clone()).unwrap();
        assert!(replayed.is_empty());
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let w = wal.clone();
            tasks.push(tokio::spawn(async move {
                w.append(Bytes::from(format!("record-{i}"))).await.unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 1);
        }
        let fsyncs = m.wal_fsyncs.get();
        assert!(
            (1..200).contains(&fsyncs),
            "group commit shared fsyncs: {fsyncs}"
        );
        assert_eq!(wal.rotate().await.unwrap(), 2);
        wal.append(Bytes::from_static(b"in-two")).await.unwrap();
        drop(wal);

        let (_wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
        assert_eq!(replayed.len(), 201);
        assert_eq!(replayed.last().unwrap().segment, 2);
        assert_eq!(&replayed.last().unwrap().payload[..], b"in-two");
        let mut seen: Vec<_> = replayed[..200]
            .iter()
            .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 200);
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_later_appends_survive() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), metrics()).unwrap();
        wal.append(Bytes::from_static(b"first")).await.unwrap();
        wal.append(Bytes::from_static(b"second")).await.unwrap();
        drop(wal);
        // A header promising 100 bytes followed by only 3: a write torn by a crash.
        let seg = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        f.write_all(&[1, 2, 3, 4, 5, 6, 7]).unwrap();
        drop(f);

        let (wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
        let got: Vec<_> = replayed.iter().map(|r| r.payload.to_vec()).collect();
        assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
        wal.append(Bytes::from_static(b"third")).await.unwrap();
        drop(wal);
        let (_wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
        assert_eq!(replayed.len(), 3);
    }

    #[tokio::test]
    async fn corrupt_checksum_stops_replay_of_that_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), metrics()).unwrap();
        wal.append(Bytes::from_static(b"good")).await.unwrap();
        wal.append(Bytes::from_static(b"flipped")).await.unwrap();
        drop(wal);
        let seg = segment_path(dir.path(), 1);
        let mut data = fs::read(&seg).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        fs::write(&seg, &data).unwrap();
        let (_wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
        assert_eq!(replayed.len(), 1);
        assert_eq!(&replayed[0].payload[..], b"good");
    }

    #[tokio::test]
    async fn old_segments_are_deleted_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), metrics()).unwrap();
        wal.append(Bytes::from_static(b"a")).await.unwrap();
        let new = wal.rotate().await.unwrap();
        wal.append(Bytes::from_static(b"b")).await.unwrap();
        assert_eq!(wal.delete_segments_before(new).unwrap(), 1);
        drop(wal);
        let (_wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
        assert_eq!(replayed.len(), 1);
        assert_eq!(&replayed[0].payload[..], b"b");
    }
}
