//! Time slices: a block's traces split by start time into runs of row groups, each run
//! sorted by trace ID. Blocks sorted by ID throughout have every row group span the
//! block's whole time range, so a newest-first search with a limit reads them whole; with
//! slices it reads the newest slice's row groups and stops once the rest are older.

/// Start-time boundaries of a block's slices: slice `i` holds the traces that start in
/// `[bounds[i - 1], bounds[i])` (open at both ends of the block).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlicePlan {
    bounds: Vec<u64>,
}

impl SlicePlan {
    /// One slice: a block sorted by ID throughout.
    pub fn single() -> Self {
        Self::default()
    }

    /// How many slices `bytes` of data get: one per `slice_bytes`, at least one, at most
    /// `max`.
    pub fn count(bytes: u64, slice_bytes: usize, max: usize) -> usize {
        let per = (slice_bytes as u64).max(1);
        usize::try_from(bytes.div_ceil(per))
            .unwrap_or(usize::MAX)
            .clamp(1, max.max(1))
    }

    /// Up to `slices` slices of about equal weight over `samples` (start time, weight):
    /// the boundaries are weighted quantiles of the starts. Equal starts never straddle a
    /// boundary, so there may be fewer slices than asked for.
    pub fn from_samples(samples: &mut [(u64, u64)], slices: usize) -> Self {
        if slices <= 1 || samples.len() <= 1 {
            return Self::single();
        }
        samples.sort_unstable_by_key(|s| s.0);
        let total: u128 = samples.iter().map(|s| u128::from(s.1)).sum();
        let mut bounds = Vec::with_capacity(slices - 1);
        let mut acc: u128 = 0;
        let mut next = 1u128;
        let first = samples[0].0;
        for &(start, weight) in samples.iter() {
            // A boundary goes at the first start past each 1/slices of the weight.
            while next < slices as u128 && acc * slices as u128 >= total * next {
                // A boundary at the earliest start would leave slice 0 empty.
                if start > first && bounds.last().is_none_or(|&b| b < start) {
                    bounds.push(start);
                }
                next += 1;
            }
            acc += u128::from(weight);
        }
        Self { bounds }
    }

    /// Which slice a trace starting at `start` (unix ns) belongs to.
    pub fn slice_of(&self, start: u64) -> u32 {
        u32::try_from(self.bounds.partition_point(|&b| b <= start)).unwrap_or(u32::MAX)
    }

    pub fn len(&self) -> usize {
        self.bounds.len() + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_split_evenly() {
        let mut samples: Vec<(u64, u64)> = (0..100).map(|i| (i * 10, 1)).collect();
        let plan = SlicePlan::from_samples(&mut samples, 4);
        assert_eq!(plan.len(), 4);
        let mut per = [0usize; 4];
        for i in 0..100u64 {
            per[plan.slice_of(i * 10) as usize] += 1;
        }
        assert_eq!(per, [25, 25, 25, 25]);
        // Slices follow time: later starts never go to an earlier slice.
        assert!((0..999).all(|t| plan.slice_of(t) <= plan.slice_of(t + 1)));
    }

    #[test]
    fn weights_move_the_boundaries() {
        // Half the weight in the last sample: it gets a slice of its own.
        let mut samples: Vec<(u64, u64)> = (0..10).map(|i| (i, 1)).collect();
        samples.push((100, 10));
        let plan = SlicePlan::from_samples(&mut samples, 2);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan.slice_of(9), 0);
        assert_eq!(plan.slice_of(100), 1);
    }

    #[test]
    fn equal_starts_stay_together_and_counts_are_bounded() {
        let mut samples = vec![(5u64, 1u64); 50];
        assert_eq!(SlicePlan::from_samples(&mut samples, 8).len(), 1);
        assert_eq!(SlicePlan::single().slice_of(u64::MAX), 0);
        assert_eq!(SlicePlan::count(0, 100, 16), 1);
        assert_eq!(SlicePlan::count(250, 100, 16), 3);
        assert_eq!(SlicePlan::count(u64::MAX, 1, 16), 16);
    }
}
