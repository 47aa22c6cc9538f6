//! Sharded bloom filter over a block's trace IDs. Sharding keeps each object small so a
//! lookup fetches ~100 KiB rather than the whole filter.

use bloomfilter::Bloom;

use super::BlockError;
use crate::model::TraceId;

/// Fixed so filters written by one process are readable by any other. The two halves seed
/// the two SipHash keys and must differ: equal keys make both hashes identical, collapsing
/// the k hash functions into one and tripling the false-positive rate.
pub const BLOOM_SEED: [u8; 32] = *b"vivace-bloom-k1!vivace-bloom-k2!";

const MAX_SHARDS: u64 = 1000;
// Far above what any sane rate needs (1% -> 7); guards against corrupt headers.
const MAX_HASHES: u32 = 64;

/// Which shard holds `id`: FNV-1a-32 of the 16 ID bytes modulo the shard count.
pub fn bloom_shard_for(id: &TraceId, shards: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % shards.max(1)
}

fn check_params(fp: f64, shard_size_bytes: usize) -> Result<(), BlockError> {
    if !(fp > 0.0 && fp < 1.0) {
        return Err(BlockError::Config(format!(
            "bloom false positive rate {fp} is not in (0, 1)"
        )));
    }
    if shard_size_bytes == 0 {
        return Err(BlockError::Config("bloom shard size is zero".into()));
    }
    Ok(())
}

/// Number of shards for `items` IDs: total filter size over the shard size, 1..=1000.
pub fn bloom_shard_count(
    items: usize,
    fp: f64,
    shard_size_bytes: usize,
) -> Result<u32, BlockError> {
    check_params(fp, shard_size_bytes)?;
    let total_bytes = Bloom::<[u8; 16]>::compute_bitmap_size(items.max(1), fp) as u64;
    let shards = total_bytes
        .div_ceil(shard_size_bytes as u64)
        .clamp(1, MAX_SHARDS);
    // Clamped to at most 1000 above.
    Ok(shards as u32)
}

/// Builds the serialised shards for `ids`.
pub fn build_blooms(
    ids: &[TraceId],
    fp: f64,
    shard_size_bytes: usize,
) -> Result<Vec<Vec<u8>>, BlockError> {
    let shards = bloom_shard_count(ids.len(), fp, shard_size_bytes)?;
    let per_shard = ids.len().div_ceil(shards as usize).max(1);
    let mut blooms = (0..shards)
        .map(|_| {
            Bloom::<[u8; 16]>::new_for_fp_rate_with_seed(per_shard, fp, &BLOOM_SEED)
                .map_err(|e| BlockError::Config(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for id in ids {
        blooms[bloom_shard_for(id, shards) as usize].set(id.as_bytes());
    }
    Ok(blooms.into_iter().map(|b| b.into_bytes()).collect())
}

/// One deserialised shard.
pub struct BloomShard {
    bloom: Bloom<[u8; 16]>,
}

impl std::fmt::Debug for BloomShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BloomShard")
            .field("bits", &self.bloom.len())
            .field("hashes", &self.bloom.number_of_hash_functions())
            .finish()
    }
}

impl BloomShard {
    pub fn from_bytes(b: &[u8]) -> Result<Self, BlockError> {
        let bloom = Bloom::from_slice(b).map_err(|e| BlockError::Bloom(e.to_lowercase()))?;
        // A zero-bit bitmap would divide by zero on lookup. (`is_empty` means "no bit set"
        // in this crate, hence the explicit length.)
        #[allow(clippy::len_zero)]
        if bloom.len() == 0 {
            return Err(BlockError::Bloom("empty bitmap".into()));
        }
        if bloom.number_of_hash_functions() > MAX_HASHES {
            return Err(BlockError::Bloom(format!(
                "{} hash functions",
                bloom.number_of_hash_functions()
            )));
        }
        Ok(Self { bloom })
    }

    pub fn may_contain(&self, id: &TraceId) -> bool {
        self.bloom.check(id.as_bytes())
    }
}
