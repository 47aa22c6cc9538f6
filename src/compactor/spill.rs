//! Time-slice spill files: the merge emits traces in ID order, a sliced block wants them
//! slice by slice. Each merged trace goes to its slice's file next to the scratch output
//! (so each file stays in ID order), and the encoder then reads the files back one after
//! the other. Memory stays one row group; the price is writing the traces once more.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use tracing::warn;

use super::CompactError;
use crate::backend::scratch::ScratchError;
use crate::block::{BlockError, SlicedTrace, TraceInput};
use crate::model::{TraceId, TracesData};

const BUFFER: usize = 256 << 10;

/// The spill files of one compaction, deleted when dropped.
pub(crate) struct Spill {
    paths: Vec<PathBuf>,
    writers: Vec<BufWriter<File>>,
}

impl Spill {
    /// One file per slice, named after `base` (the scratch output, so leftovers of a dead
    /// process are found by the same prefix). Blocking.
    pub(crate) fn create(base: &Path, slices: usize) -> Result<Self, CompactError> {
        let mut spill = Self {
            paths: Vec::with_capacity(slices),
            writers: Vec::with_capacity(slices),
        };
        for s in 0..slices {
            let mut name = base.as_os_str().to_owned();
            name.push(format!(".slice-{s}"));
            let path = PathBuf::from(name);
            let f = File::options()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|source| ScratchError {
                    path: path.clone(),
                    source,
                })?;
            spill.paths.push(path);
            spill.writers.push(BufWriter::with_capacity(BUFFER, f));
        }
        Ok(spill)
    }

    /// Appends `t` to slice `slice`: ID, length, then the batches as one TracesData.
    pub(crate) fn push(&mut self, slice: u32, t: TraceInput) -> Result<(), CompactError> {
        let i = (slice as usize).min(self.writers.len() - 1);
        let body = TracesData {
            resource_spans: t.batches,
        }
        .encode_to_vec();
        let len = u32::try_from(body.len())
            .map_err(|_| CompactError::Internal("a trace over 4 GiB in the spill".into()))?;
        let w = &mut self.writers[i];
        let r = w
            .write_all(t.id.as_bytes())
            .and_then(|()| w.write_all(&len.to_le_bytes()))
            .and_then(|()| w.write_all(&body));
        r.map_err(|source| {
            ScratchError {
                path: self.paths[i].clone(),
                source,
            }
            .into()
        })
    }

    /// Flushes the files and reads them back slice by slice, in the order written.
    pub(crate) fn into_reader(mut self) -> Result<SpillReader, CompactError> {
        for (w, p) in self.writers.drain(..).zip(&self.paths) {
            w.into_inner().map_err(|e| ScratchError {
                path: p.clone(),
                source: e.into_error(),
            })?;
        }
        Ok(SpillReader {
            spill: self,
            slice: 0,
            current: None,
        })
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.writers.clear();
        for p in &self.paths {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(path = %p.display(), error = %e, "cannot delete spill file"),
            }
        }
    }
}

/// The spilled traces, slice by slice, tagged for the sliced encoder.
pub(crate) struct SpillReader {
    spill: Spill,
    slice: usize,
    current: Option<BufReader<File>>,
}

impl SpillReader {
    fn read_one(&mut self) -> Result<Option<SlicedTrace>, BlockError> {
        loop {
            if self.current.is_none() {
                let Some(path) = self.spill.paths.get(self.slice) else {
                    return Ok(None);
                };
                let f = File::open(path).map_err(|e| spill_error(path, &e))?;
                self.current = Some(BufReader::with_capacity(BUFFER, f));
            }
            let path = &self.spill.paths[self.slice];
            let r = self.current.as_mut().expect("opened above");
            let mut head = [0u8; 20];
            match r.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    // The end of this slice's file (records are written whole).
                    self.current = None;
                    self.slice += 1;
                    continue;
                }
                Err(e) => return Err(spill_error(path, &e)),
            }
            let mut id = [0u8; 16];
            id.copy_from_slice(&head[..16]);
            let len = u32::from_le_bytes([head[16], head[17], head[18], head[19]]) as usize;
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).map_err(|e| spill_error(path, &e))?;
            let data = TracesData::decode(body.as_slice())
                .map_err(|e| BlockError::Input(format!("spill file {}: {e}", path.display())))?;
            return Ok(Some(SlicedTrace::decoded(
                self.slice as u32,
                TraceInput {
                    id: TraceId(id),
                    batches: data.resource_spans,
                },
            )));
        }
    }
}

fn spill_error(path: &Path, e: &std::io::Error) -> BlockError {
    BlockError::Input(format!("spill file {}: {e}", path.display()))
}

impl Iterator for SpillReader {
    type Item = Result<SlicedTrace, BlockError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read_one().transpose()
    }
}
