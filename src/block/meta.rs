//! `meta.json`: what a block holds, readable without touching `data.parquet`.

use serde::{Deserialize, Serialize};

use super::BlockError;

/// Value of `BlockMeta::format` for blocks written by this module.
pub const FORMAT: &str = "vivace1";

/// A dedicated attribute column, as Tempo lists them: scope is "resource" or "span", type
/// is "string" or "int".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct DedicatedColumn {
    pub scope: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// Times are unix nanoseconds in memory and RFC 3339 strings with nanoseconds in JSON
/// (like Tempo); numbers are also accepted on read. Unknown fields are ignored and missing
/// ones default, so older and newer writers stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct BlockMeta {
    pub format: String,
    #[serde(rename = "blockID")]
    pub block_id: uuid::Uuid,
    #[serde(rename = "tenantID")]
    pub tenant_id: String,
    #[serde(with = "rfc3339_nanos")]
    pub start_time: u64,
    #[serde(with = "rfc3339_nanos")]
    pub end_time: u64,
    /// Traces (rows).
    pub total_objects: u64,
    pub total_spans: u64,
    /// Bytes of data.parquet.
    pub size: u64,
    pub compaction_level: u32,
    /// Row groups.
    pub total_records: u32,
    pub bloom_shards: u32,
    /// Parquet footer length including the trailing 8 bytes (length + magic).
    pub footer_size: u32,
    /// Bytes of the Parquet page indexes (column and offset indexes), which sit right
    /// before the footer: the last `pageIndexSize + footerSize` bytes of data.parquet hold
    /// both, for one ranged read. 0 (or absent, in older blocks) means unknown.
    pub page_index_size: u32,
    pub dedicated_columns: Vec<DedicatedColumn>,
}

/// Now, in unix nanoseconds (the unit of every time in block metadata).
pub fn unix_nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl BlockMeta {
    pub fn from_bytes(b: &[u8]) -> Result<Self, BlockError> {
        Ok(serde_json::from_slice(b)?)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain data; serialisation cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// RFC 3339 with nanoseconds in JSON, unix nanoseconds in memory (numbers also accepted).
pub(crate) mod rfc3339_nanos {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        let t = UNIX_EPOCH + Duration::from_nanos(*v);
        s.collect_str(&humantime::format_rfc3339_nanos(t))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u64),
        Str(String),
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(n),
            Raw::Str(s) => {
                let t: SystemTime = humantime::parse_rfc3339_weak(&s).map_err(de::Error::custom)?;
                let since = t.duration_since(UNIX_EPOCH).map_err(de::Error::custom)?;
                u64::try_from(since.as_nanos()).map_err(de::Error::custom)
            }
        }
    }
}
