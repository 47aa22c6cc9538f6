//! Conditional writes for coordination objects (ingest partition leases): create only if
//! absent (If-None-Match) and replace only the version last read (If-Match on its ETag).
//! Two nodes racing on one key: exactly one wins, the other is told so.

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::{Backend, BackendError};

/// The version of an object as the store names it (ETag and/or version ID); what an
/// If-Match write compares against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    e_tag: Option<String>,
    version: Option<String>,
}

impl ObjectVersion {
    /// A stable text for comparing observations: changes whenever the object is rewritten.
    pub fn fingerprint(&self) -> String {
        format!(
            "{}/{}",
            self.e_tag.as_deref().unwrap_or(""),
            self.version.as_deref().unwrap_or("")
        )
    }

    fn update(&self) -> UpdateVersion {
        UpdateVersion {
            e_tag: self.e_tag.clone(),
            version: self.version.clone(),
        }
    }
}

/// Why a conditional write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// Someone else wrote (or created, or deleted) the object first.
    #[error("conditional write on {0} lost: the object changed")]
    Conflict(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl Backend {
    /// The object's bytes and version; `None` when it does not exist.
    pub async fn get_versioned(
        &self,
        key: &str,
    ) -> Result<Option<(Bytes, ObjectVersion)>, BackendError> {
        self.requests.get.inc();
        match self.store.get(&ObjectPath::from(key)).await {
            Ok(r) => {
                let version = ObjectVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                Ok(Some((r.bytes().await?, version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `data` at `key` only if no object is there.
    pub async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<ObjectVersion, CasError> {
        self.put_mode(key, data, PutMode::Create).await
    }

    /// Writes `data` at `key` only if the object is still at `expected`.
    pub async fn put_if_match(
        &self,
        key: &str,
        data: Bytes,
        expected: &ObjectVersion,
    ) -> Result<ObjectVersion, CasError> {
        let path = ObjectPath::from(key);
        match self
            .put_mode(key, data.clone(), PutMode::Update(expected.update()))
            .await
        {
            Err(CasError::Backend(BackendError::Store(object_store::Error::NotImplemented {
                ..
            }))) => {
                // The local filesystem has no If-Match: compare, then write. Racy only
                // between processes sharing one directory, which is not a multi-node setup.
                let current = self.get_versioned(key).await?;
                if current.as_ref().map(|(_, v)| v) != Some(expected) {
                    return Err(CasError::Conflict(key.to_owned()));
                }
                self.requests.put.inc();
                let r = self
                    .store
                    .put_opts(&path, PutPayload::from(data), PutOptions::default())
                    .await
                    .map_err(BackendError::from)?;
                Ok(ObjectVersion {
                    e_tag: r.e_tag,
                    version: r.version,
                })
            }
            other => other,
        }
    }

    async fn put_mode(
        &self,
        key: &str,
        data: Bytes,
        mode: PutMode,
    ) -> Result<ObjectVersion, CasError> {
        self.requests.put.inc();
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&ObjectPath::from(key), PutPayload::from(data), opts)
            .await
        {
            Ok(r) => Ok(ObjectVersion {
                e_tag: r.e_tag,
                version: r.version,
            }),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::NotFound { .. }) => Err(CasError::Conflict(key.to_owned())),
            Err(e) => Err(CasError::Backend(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_once_then_update_only_the_version_read() {
        let b = Backend::memory();
        let v1 = b
            .put_if_absent("l/0", Bytes::from_static(b"a"))
            .await
            .unwrap();
        assert!(matches!(
            b.put_if_absent("l/0", Bytes::from_static(b"b")).await,
            Err(CasError::Conflict(_))
        ));
        let v2 = b
            .put_if_match("l/0", Bytes::from_static(b"c"), &v1)
            .await
            .unwrap();
        assert_ne!(v1.fingerprint(), v2.fingerprint());
        // A writer still holding v1 has lost.
        assert!(matches!(
            b.put_if_match("l/0", Bytes::from_static(b"d"), &v1).await,
            Err(CasError::Conflict(_))
        ));
        let (bytes, v) = b.get_versioned("l/0").await.unwrap().unwrap();
        assert_eq!((bytes.as_ref(), v), (&b"c"[..], v2));
        assert!(b.get_versioned("l/1").await.unwrap().is_none());
    }
}
