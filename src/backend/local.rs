//! Durability of the local-filesystem bucket: `object_store`'s `LocalFileSystem` renames
//! each object into place without fsync, so after a power loss a committed `meta.json`
//! could point at block files that never reached the disk. Every local put is made durable
//! here (the file, then each directory from its parent up to the bucket root) before the
//! put returns, so "put returned" means "survives power loss" as it does on a real bucket.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::BackendError;

/// Test hook: records, in order, every put the local bucket completed (`put <key>`) and
/// every fsync it issued (`fsync <path>`, relative to the bucket root, `.` for the root) so
/// tests can prove the order of
/// syncs against other steps (puts, WAL truncation) that push into the same log.
pub type SyncLog = Arc<Mutex<Vec<String>>>;

#[derive(Clone, Debug)]
pub(super) struct LocalRoot {
    pub(super) root: PathBuf,
    pub(super) log: Option<SyncLog>,
    /// Whether `put_file` may hard-link the file into the bucket: off when faults are
    /// injected into the store, so every put goes through it.
    pub(super) link_files: bool,
}

impl LocalRoot {
    /// Puts the finished file `src` at `key` as a hard link, off the async executor: no
    /// byte is read or written again, where a copy read the whole block into memory and
    /// wrote it a second time. A link appears whole, as a rename does. Returns false when
    /// the bucket cannot link it (another filesystem, no hard links): the caller copies.
    /// The caller makes the object durable.
    pub(super) async fn link_file(&self, key: &str, src: &Path) -> Result<bool, BackendError> {
        if !self.link_files {
            return Ok(false);
        }
        let dest = self.root.join(key);
        let src = src.to_owned();
        let linked = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let link = || std::fs::hard_link(&src, &dest);
            match link() {
                Ok(()) => Ok(true),
                // A retried put of the same key: the new file replaces the old one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::remove_file(&dest)?;
                    link().map(|()| true)
                }
                Err(e) if src.exists() => {
                    tracing::debug!(error = %e, "cannot hard-link into the local bucket, copying");
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| BackendError::Setup(format!("link task failed: {e}")))?;
        linked.map_err(|e| {
            BackendError::Store(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: format!("link {key}: {e}").into(),
            })
        })
    }

    /// Fsyncs the object at `key` and every directory from its parent up to the root, off
    /// the async executor.
    pub(super) async fn sync_object(&self, key: &str) -> Result<(), BackendError> {
        let this = self.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || this.sync_object_blocking(&key))
            .await
            .map_err(|e| BackendError::Setup(format!("fsync task failed: {e}")))?
    }

    fn sync_object_blocking(&self, key: &str) -> Result<(), BackendError> {
        if let Some(log) = &self.log {
            log.lock().push(format!("put {key}"));
        }
        let file = self.root.join(key);
        self.sync(&file)?;
        // New block and tenant directories are entries in their parents: each level must
        // be synced for the file to be reachable after a crash.
        let mut dir = file.parent();
        while let Some(d) = dir {
            self.sync(d)?;
            if d == self.root {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    fn sync(&self, path: &Path) -> Result<(), BackendError> {
        File::open(path).and_then(|f| f.sync_all()).map_err(|e| {
            BackendError::Store(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: format!("fsync {}: {e}", path.display()).into(),
            })
        })?;
        if let Some(log) = &self.log {
            let rel = path.strip_prefix(&self.root).unwrap_or(path);
            let rel = if rel.as_os_str().is_empty() {
                ".".to_owned()
            } else {
                rel.display().to_string()
            };
            log.lock().push(format!("fsync {rel}"));
        }
        Ok(())
    }
}
