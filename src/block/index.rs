//! The row-group index: the maximum trace ID of each row group. Rows are sorted by ID, so
//! a binary search names the only row group that can hold a given ID.

use serde::{Deserialize, Serialize};

use super::BlockError;
use crate::model::TraceId;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowGroupIndex {
    max_ids: Vec<TraceId>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson {
    row_groups: Vec<String>,
}

impl RowGroupIndex {
    /// `max_ids` must be non-decreasing (one entry per row group, in file order).
    pub fn new(max_ids: Vec<TraceId>) -> Result<Self, BlockError> {
        if max_ids.windows(2).any(|w| w[0] > w[1]) {
            return Err(BlockError::Index("row group ids are not sorted".into()));
        }
        Ok(Self { max_ids })
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, BlockError> {
        let json: IndexJson =
            serde_json::from_slice(b).map_err(|e| BlockError::Index(e.to_string()))?;
        let ids = json
            .row_groups
            .iter()
            .map(|s| {
                if s.len() != 32 {
                    return Err(BlockError::Index(format!("bad trace id {s:?}")));
                }
                let mut id = [0u8; 16];
                hex::decode_to_slice(s, &mut id)
                    .map_err(|e| BlockError::Index(format!("bad trace id {s:?}: {e}")))?;
                Ok(TraceId(id))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(ids)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let json = IndexJson {
            row_groups: self.max_ids.iter().map(TraceId::to_hex).collect(),
        };
        // Serialising plain strings cannot fail.
        serde_json::to_vec(&json).unwrap_or_default()
    }

    /// The first row group whose maximum ID is >= `id`, if any.
    pub fn row_group_for(&self, id: &TraceId) -> Option<usize> {
        let i = self.max_ids.partition_point(|m| m < id);
        (i < self.max_ids.len()).then_some(i)
    }

    pub fn len(&self) -> usize {
        self.max_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.max_ids.is_empty()
    }

    pub fn max_ids(&self) -> &[TraceId] {
        &self.max_ids
    }
}
