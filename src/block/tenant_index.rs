//! The per-tenant block list, `<tenant>/index.json.gz` (Tempo's idea and name, our own
//! format; see `schema/meta.md`): gzip-compressed JSON
//! `{"createdAt": RFC 3339, "meta": [BlockMeta...], "compacted": [{...BlockMeta, "compactedTime"}]}`.
//! Written by the compactor after each cycle so queriers read one object instead of
//! listing the bucket and fetching every `meta.json`.

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use super::{BlockError, BlockMeta};

/// Decompressed indexes larger than this are refused: a corrupt or hostile object must
/// not make a poller allocate without bound (a million blocks' metas fit well below it).
const MAX_DECODED_BYTES: u64 = 1 << 30;

/// A block's meta.compacted.json: the block's meta plus when it was compacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CompactedBlockMeta {
    #[serde(flatten)]
    pub meta: BlockMeta,
    /// Unix nanoseconds; RFC 3339 in JSON.
    #[serde(with = "super::meta::rfc3339_nanos", default)]
    pub compacted_time: u64,
    /// Why: "compaction" or "retention"; absent in older markers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted_reason: Option<String>,
}

impl CompactedBlockMeta {
    pub fn from_bytes(b: &[u8]) -> Result<Self, BlockError> {
        Ok(serde_json::from_slice(b)?)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain data; serialisation cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantIndex {
    /// When the index was built (unix nanoseconds; RFC 3339 in JSON). Readers ignore
    /// indexes older than their staleness bound.
    #[serde(with = "super::meta::rfc3339_nanos")]
    pub created_at: u64,
    /// Live blocks (a `meta.json` and no `meta.compacted.json`).
    #[serde(default)]
    pub meta: Vec<BlockMeta>,
    /// Blocks compacted into others, awaiting deletion.
    #[serde(default)]
    pub compacted: Vec<CompactedBlockMeta>,
}

impl TenantIndex {
    pub fn encode(&self) -> Result<Vec<u8>, BlockError> {
        let json = serde_json::to_vec(self)?;
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&json)
            .and_then(|()| gz.finish())
            .map_err(|e| BlockError::Corrupt(format!("gzip tenant index: {e}")))
    }

    pub fn decode(b: &[u8]) -> Result<Self, BlockError> {
        let mut json = Vec::new();
        GzDecoder::new(b)
            .take(MAX_DECODED_BYTES + 1)
            .read_to_end(&mut json)
            .map_err(|e| BlockError::Corrupt(format!("tenant index is not gzip: {e}")))?;
        if json.len() as u64 > MAX_DECODED_BYTES {
            return Err(BlockError::Corrupt(format!(
                "tenant index is larger than {MAX_DECODED_BYTES} bytes decompressed"
            )));
        }
        Ok(serde_json::from_slice(&json)?)
    }

    /// When it was built, as a wall-clock time.
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.created_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n: u64) -> BlockMeta {
        BlockMeta {
            format: super::super::FORMAT.into(),
            block_id: uuid::Uuid::new_v4(),
            tenant_id: "single-tenant".into(),
            start_time: 1_700_000_000_000_000_000 + n,
            end_time: 1_700_000_060_123_456_789,
            total_objects: n,
            size: 4096,
            bloom_shards: 2,
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_through_gzip_json() {
        let idx = TenantIndex {
            created_at: 1_750_000_000_987_654_321,
            meta: vec![meta(1), meta(2)],
            compacted: vec![CompactedBlockMeta {
                meta: meta(3),
                compacted_time: 1_750_000_000_000_000_001,
                compacted_reason: Some("retention".into()),
            }],
        };
        let bytes = idx.encode().unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
        assert_eq!(TenantIndex::decode(&bytes).unwrap(), idx);

        // The documented JSON shape: camelCase, RFC 3339 times, compactedTime beside the
        // block's own fields.
        let mut json = String::new();
        GzDecoder::new(&bytes[..])
            .read_to_string(&mut json)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["createdAt"], "2025-06-15T15:06:40.987654321Z");
        assert_eq!(v["meta"].as_array().unwrap().len(), 2);
        assert_eq!(
            v["compacted"][0]["blockID"],
            idx.compacted[0].meta.block_id.to_string()
        );
        assert_eq!(
            v["compacted"][0]["compactedTime"],
            "2025-06-15T15:06:40.000000001Z"
        );
    }

    #[test]
    fn compacted_meta_reads_a_compactor_marker() {
        let m = meta(7);
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        v["compactedTime"] = "2026-01-02T03:04:05Z".into();
        v["compactedReason"] = "compaction".into();
        let c = CompactedBlockMeta::from_bytes(v.to_string().as_bytes()).unwrap();
        assert_eq!(c.meta, m);
        assert_eq!(c.compacted_time, 1_767_323_045_000_000_000);
        assert_eq!(c.compacted_reason.as_deref(), Some("compaction"));
        assert_eq!(CompactedBlockMeta::from_bytes(&c.to_bytes()).unwrap(), c);
    }

    #[test]
    fn refuses_garbage() {
        assert!(
            TenantIndex::decode(b"{\"createdAt\":1}").is_err(),
            "not gzip"
        );
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"{\"meta\":[]}").unwrap();
        let no_time = gz.finish().unwrap();
        assert!(
            TenantIndex::decode(&no_time).is_err(),
            "createdAt is required"
        );
    }
}
