//! The compaction's output file on local disk: the merge streams data.parquet into it and
//! the upload reads it back one part at a time, so a compaction's memory does not grow with
//! its output.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use tracing::warn;
use uuid::Uuid;

use super::CompactError;

/// Write buffer of the scratch file: few syscalls, little memory.
const WRITE_BUFFER: usize = 1 << 20;

/// Names the scratch file of one compaction attempt and deletes it when dropped: after the
/// upload, on any error, and when the compaction is cancelled. Each attempt has its own
/// output ID, so a retry never meets an earlier attempt's file.
#[derive(Debug)]
pub(crate) struct ScratchFile {
    path: PathBuf,
}

impl ScratchFile {
    pub(crate) fn new(dir: &Path, output_id: Uuid) -> Self {
        Self {
            path: dir.join(format!("vivace-compaction-{output_id}.parquet")),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the file (and its directory), failing if it exists. Blocking.
    pub(crate) fn create(path: &Path) -> Result<BufWriter<File>, CompactError> {
        let err = |source| CompactError::Scratch {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let f = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(err)?;
        Ok(BufWriter::with_capacity(WRITE_BUFFER, f))
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot delete compaction scratch file")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn file_is_created_once_and_deleted_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("not-yet");
        let s = ScratchFile::new(&sub, Uuid::new_v4());
        let mut w = ScratchFile::create(s.path()).unwrap();
        w.write_all(b"PAR1").unwrap();
        w.flush().unwrap();
        drop(w);
        assert!(s.path().exists());
        // A second create of the same name is refused rather than truncating the first.
        assert!(matches!(
            ScratchFile::create(s.path()),
            Err(CompactError::Scratch { .. })
        ));
        let path = s.path().to_owned();
        drop(s);
        assert!(!path.exists());
        // Dropping a guard whose file was never created is fine.
        drop(ScratchFile::new(&sub, Uuid::new_v4()));
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
    }
}
