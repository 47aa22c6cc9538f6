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
}

impl LocalRoot {
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
