//! A block's data.parquet staged on local disk: the encoder (a compaction's merge, an
//! ingester's cut) streams into it and [`super::Backend::put_file`] reads it back one part
//! at a time, so the memory of writing a block does not grow with the block.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use tracing::warn;
use uuid::Uuid;

/// The scratch file could not be created or written.
#[derive(Debug, thiserror::Error)]
#[error("scratch file {}: {source}", path.display())]
pub(crate) struct ScratchError {
    pub(crate) path: PathBuf,
    pub(crate) source: std::io::Error,
}

/// Write buffer of the scratch file: few syscalls, little memory.
const WRITE_BUFFER: usize = 1 << 20;

/// Names the scratch file of one attempt at writing a block and deletes it when dropped:
/// after the upload, on any error, and when the work is cancelled. Each attempt has its own
/// ID, so a retry never meets an earlier attempt's file.
#[derive(Debug)]
pub(crate) struct ScratchFile {
    path: PathBuf,
}

impl ScratchFile {
    /// `prefix` names the writer (`vivace-compaction-`, `vivace-cut-`): each cleans up its
    /// own leftovers.
    pub(crate) fn new(dir: &Path, prefix: &str, id: Uuid) -> Self {
        // The process ID tells a dead process's leftovers (see `remove_leftovers`) from files
        // of other vivace processes sharing the directory.
        Self {
            path: dir.join(format!("{prefix}{}-{id}.parquet", std::process::id())),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the file (and its directory), failing if it exists. Blocking.
    pub(crate) fn create(path: &Path) -> Result<BufWriter<File>, ScratchError> {
        let err = |source| ScratchError {
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

/// Deletes the scratch files named with `prefix` in `dir` left by processes that no longer
/// run (a crash or a kill skips the guards); returns how many. Files of live processes, this
/// one included, are kept. Needs `/proc` to tell; elsewhere nothing is deleted. Blocking.
pub(crate) fn remove_leftovers(dir: &Path, prefix: &str) -> usize {
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => removed += 1,
            Err(err) => {
                warn!(path = %e.path().display(), error = %err, "cannot delete leftover scratch file")
            }
        }
    }
    removed
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot delete scratch file")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const PREFIX: &str = "vivace-test-";

    #[test]
    fn file_is_created_once_and_deleted_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("not-yet");
        let s = ScratchFile::new(&sub, PREFIX, Uuid::new_v4());
        let mut w = ScratchFile::create(s.path()).unwrap();
        w.write_all(b"PAR1").unwrap();
        w.flush().unwrap();
        drop(w);
        assert!(s.path().exists());
        // A second create of the same name is refused rather than truncating the first.
        assert!(matches!(
            ScratchFile::create(s.path()),
            Err(ScratchError { .. })
        ));
        let path = s.path().to_owned();
        drop(s);
        assert!(!path.exists());
        // Dropping a guard whose file was never created is fine.
        drop(ScratchFile::new(&sub, PREFIX, Uuid::new_v4()));
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
    }

    #[test]
    fn leftovers_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A process that has exited: its ID is free until reused.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let id = Uuid::new_v4();
        let dead_file = dir.path().join(format!("{PREFIX}{dead}-{id}.parquet"));
        let own = ScratchFile::new(dir.path(), PREFIX, Uuid::new_v4());
        let other = dir.path().join("unrelated.parquet");
        // Another writer's leftovers are its own to clean.
        let foreign = dir.path().join(format!("vivace-other-{dead}-{id}.parquet"));
        for p in [&dead_file, own.path(), &other, &foreign] {
            std::fs::write(p, b"x").unwrap();
        }
        let removed = remove_leftovers(dir.path(), PREFIX);
        if Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{dead}")).exists() {
            assert_eq!(removed, 1);
            assert!(!dead_file.exists());
        }
        assert!(own.path().exists());
        assert!(other.exists());
        assert!(foreign.exists());
        assert_eq!(remove_leftovers(&dir.path().join("missing"), PREFIX), 0);
    }
}
