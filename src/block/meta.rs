//! `meta.json`: what a block holds, readable without touching `data.parquet`.

use serde::{Deserialize, Serialize};

use super::BlockError;

/// The writer's lease in a block folder while it uploads (see `backend::lease`): refreshed
/// until `meta.json` is written, then deleted.
pub const WRITING_FILE: &str = "writing.json";

pub fn writing_key(tenant: &crate::model::TenantId, id: uuid::Uuid) -> String {
    format!("{}/{}/{}", tenant.as_str(), id, WRITING_FILE)
}

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

    /// Tempo's `ingestion_time_range_slack`: the block's times come from client clocks, so
    /// a start before `earliest - slack` or an end after `latest + slack` (a backfill, a
    /// skewed clock, a far-future timestamp) is replaced by the ingestion time it bounds.
    /// Retention and time-range reads then follow when the data arrived, not what clients
    /// claim. `earliest..=latest` is when the block's spans were ingested, in unix nanos.
    /// Returns whether anything changed.
    pub fn clamp_to_ingestion(&mut self, earliest: u64, latest: u64, slack: u64) -> bool {
        let (before, after) = (self.start_time, self.end_time);
        let lowest = earliest.saturating_sub(slack);
        let highest = latest.saturating_add(slack);
        if self.start_time < lowest || self.start_time > highest {
            self.start_time = earliest;
        }
        if self.end_time > highest || self.end_time < lowest || self.end_time < self.start_time {
            self.end_time = latest.max(self.start_time);
        }
        (before, after) != (self.start_time, self.end_time)
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn meta(start: u64, end: u64) -> BlockMeta {
        BlockMeta {
            start_time: start,
            end_time: end,
            ..Default::default()
        }
    }

    /// Times within the slack stay; a backfill, an old clock and a far-future end are
    /// replaced by the ingestion window.
    #[test]
    fn times_are_clamped_to_ingestion_with_slack() {
        let (from, to, slack) = (1_000_000 * S, 1_000_300 * S, 120 * S);
        let mut m = meta(from - 60 * S, to + 60 * S);
        assert!(!m.clamp_to_ingestion(from, to, slack));
        assert_eq!((m.start_time, m.end_time), (from - 60 * S, to + 60 * S));
        // Backfill: a week old. Retention would delete it at the next cycle otherwise.
        let mut m = meta(from - 7 * 86_400 * S, from - 7 * 86_400 * S + S);
        assert!(m.clamp_to_ingestion(from, to, slack));
        assert_eq!((m.start_time, m.end_time), (from, to));
        // Far future end: the block would never expire otherwise.
        let mut m = meta(from + S, u64::MAX / 2);
        assert!(m.clamp_to_ingestion(from, to, slack));
        assert_eq!((m.start_time, m.end_time), (from + S, to));
        // Both ends in the future.
        let mut m = meta(to + 3_600 * S, to + 7_200 * S);
        assert!(m.clamp_to_ingestion(from, to, slack));
        assert_eq!((m.start_time, m.end_time), (from, to));
    }
}
