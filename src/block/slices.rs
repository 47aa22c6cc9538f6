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

    /// Slices for `bytes` of data whose traces start as `samples` (start time, weight) say,
    /// smallest at the newest end: the newest two hold `unit_bytes` of data each, every
    /// older one twice the one after it, and the oldest the rest; at most `max` slices,
    /// and one while the data is not larger than a unit. A newest-first search with a
    /// limit stops after a unit or two of a block of any size, and a lookup probes about
    /// log2(bytes / unit_bytes) row groups.
    pub fn newest_small(
        samples: &mut [(u64, u64)],
        bytes: u64,
        unit_bytes: usize,
        max: usize,
    ) -> Self {
        let units = bytes as f64 / unit_bytes.max(1) as f64;
        // Each slice's far end, counted in units from the newest end.
        let mut from_newest = Vec::new();
        let mut reach = 1.0f64;
        while reach < units && from_newest.len() + 1 < max {
            from_newest.push(reach / units);
            reach *= 2.0;
        }
        let cuts: Vec<f64> = from_newest.iter().rev().map(|f| 1.0 - f).collect();
        Self::at_fractions(samples, &cuts)
    }

    /// `slices` slices of about equal weight (tests, and a baseline to measure against).
    pub fn even(samples: &mut [(u64, u64)], slices: usize) -> Self {
        let cuts: Vec<f64> = (1..slices).map(|i| i as f64 / slices as f64).collect();
        Self::at_fractions(samples, &cuts)
    }

    /// Boundaries at the weighted quantiles `cuts` (ascending fractions of the total
    /// weight) of the starts in `samples`. Equal starts never straddle a boundary, so there
    /// may be fewer slices than asked for.
    fn at_fractions(samples: &mut [(u64, u64)], cuts: &[f64]) -> Self {
        if cuts.is_empty() || samples.len() <= 1 {
            return Self::single();
        }
        samples.sort_unstable_by_key(|s| s.0);
        let total: u128 = samples.iter().map(|s| u128::from(s.1)).sum();
        let targets: Vec<u128> = cuts
            .iter()
            .map(|c| (total as f64 * c.clamp(0.0, 1.0)).round() as u128)
            .collect();
        let mut bounds = Vec::with_capacity(cuts.len());
        let mut acc: u128 = 0;
        let mut next = 0;
        let first = samples[0].0;
        for &(start, weight) in samples.iter() {
            // A boundary goes at the first start past each target weight.
            while next < targets.len() && acc >= targets[next] {
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
        let plan = SlicePlan::even(&mut samples, 4);
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
        let plan = SlicePlan::even(&mut samples, 2);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan.slice_of(9), 0);
        assert_eq!(plan.slice_of(100), 1);
    }

    #[test]
    fn equal_starts_stay_together_and_counts_are_bounded() {
        let mut samples = vec![(5u64, 1u64); 50];
        assert_eq!(SlicePlan::even(&mut samples, 8).len(), 1);
        assert_eq!(SlicePlan::newest_small(&mut samples, 5000, 10, 16).len(), 1);
        assert_eq!(SlicePlan::single().slice_of(u64::MAX), 0);
    }

    /// Slice sizes, newest first, of a plan over `n` equal-weight traces a unit apart.
    fn sizes_newest_first(n: u64, unit: usize, max: usize) -> Vec<usize> {
        let mut samples: Vec<(u64, u64)> = (0..n).map(|i| (i, 1)).collect();
        let plan = SlicePlan::newest_small(&mut samples, n, unit, max);
        let mut per = vec![0usize; plan.len()];
        for i in 0..n {
            per[plan.slice_of(i) as usize] += 1;
        }
        per.reverse();
        per
    }

    #[test]
    fn newest_slices_are_one_unit_and_each_older_one_doubles() {
        assert_eq!(sizes_newest_first(100, 10, 16), [10, 10, 20, 40, 20]);
        assert_eq!(sizes_newest_first(160, 10, 16), [10, 10, 20, 40, 80]);
        // At most `max` slices: the oldest takes the rest.
        assert_eq!(sizes_newest_first(1000, 10, 3), [10, 10, 980]);
        // Not more than a unit of data: one slice.
        assert_eq!(sizes_newest_first(10, 10, 16), [10]);
        assert_eq!(sizes_newest_first(11, 10, 16), [10, 1]);
        assert_eq!(sizes_newest_first(1000, 10, 1), [1000]);
    }
}
