//! The row-group index: the largest trace ID of each row group, and for a block laid out in
//! time slices the smallest too. In a block sorted by ID throughout, a binary search over
//! the maxima names the only row group that can hold a given ID; in a sliced block (each
//! slice sorted by ID, slices overlapping in ID) every row group whose [min, max] holds the
//! ID is a candidate, at most one per slice.

use serde::{Deserialize, Serialize};

use super::BlockError;
use crate::model::TraceId;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowGroupIndex {
    max_ids: Vec<TraceId>,
    /// Set only when the row groups are not sorted by ID throughout (a sliced block).
    min_ids: Option<Vec<TraceId>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson {
    row_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_ids: Option<Vec<String>>,
}

impl RowGroupIndex {
    /// `max_ids` must be non-decreasing (one entry per row group, in file order).
    pub fn new(max_ids: Vec<TraceId>) -> Result<Self, BlockError> {
        if max_ids.windows(2).any(|w| w[0] > w[1]) {
            return Err(BlockError::Index("row group ids are not sorted".into()));
        }
        Ok(Self {
            max_ids,
            min_ids: None,
        })
    }

    /// Each row group's smallest and largest ID, in file order. When every row group starts
    /// above the one before it ends, the minima add nothing and are dropped, so a block
    /// that is one slice keeps the plain index.
    pub fn with_min_ids(min_ids: Vec<TraceId>, max_ids: Vec<TraceId>) -> Result<Self, BlockError> {
        if min_ids.len() != max_ids.len() {
            return Err(BlockError::Index(format!(
                "{} row group minima for {} maxima",
                min_ids.len(),
                max_ids.len()
            )));
        }
        if min_ids.iter().zip(&max_ids).any(|(lo, hi)| lo > hi) {
            return Err(BlockError::Index(
                "a row group's minimum is above its maximum".into(),
            ));
        }
        let sorted = (1..max_ids.len()).all(|i| min_ids[i] > max_ids[i - 1]);
        if sorted {
            return Self::new(max_ids);
        }
        Ok(Self {
            max_ids,
            min_ids: Some(min_ids),
        })
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, BlockError> {
        let json: IndexJson =
            serde_json::from_slice(b).map_err(|e| BlockError::Index(e.to_string()))?;
        let ids = parse_ids(&json.row_groups)?;
        match json.min_ids {
            None => Self::new(ids),
            Some(min) => Self::with_min_ids(parse_ids(&min)?, ids),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let json = IndexJson {
            row_groups: self.max_ids.iter().map(TraceId::to_hex).collect(),
            min_ids: self
                .min_ids
                .as_ref()
                .map(|m| m.iter().map(TraceId::to_hex).collect()),
        };
        // Serialising plain strings cannot fail.
        serde_json::to_vec(&json).unwrap_or_default()
    }

    /// The row groups that may hold `id`, in file order: in a block sorted throughout, the
    /// first whose maximum is >= `id`; in a sliced one, every row group whose range holds it.
    pub fn row_groups_for(&self, id: &TraceId) -> Vec<usize> {
        match &self.min_ids {
            None => {
                let i = self.max_ids.partition_point(|m| m < id);
                if i < self.max_ids.len() {
                    vec![i]
                } else {
                    Vec::new()
                }
            }
            Some(min) => (0..self.max_ids.len())
                .filter(|&i| &min[i] <= id && id <= &self.max_ids[i])
                .collect(),
        }
    }

    /// Whether the row groups are in time slices rather than sorted by ID throughout.
    pub fn is_sliced(&self) -> bool {
        self.min_ids.is_some()
    }

    pub fn len(&self) -> usize {
        self.max_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.max_ids.is_empty()
    }

    /// Each row group's smallest ID, listed only for a block in time slices.
    pub fn min_ids(&self) -> Option<&[TraceId]> {
        self.min_ids.as_deref()
    }

    pub fn max_ids(&self) -> &[TraceId] {
        &self.max_ids
    }
}

fn parse_ids(hex_ids: &[String]) -> Result<Vec<TraceId>, BlockError> {
    hex_ids
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
        .collect()
}
