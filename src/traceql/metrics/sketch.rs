//! The values behind a quantile: exact while few, then a log-bucketed sketch whose answers
//! are within 1% of the true value (relative), so memory stays bounded however many spans
//! a bucket of a series holds. Tempo's own estimate is a power of two (up to 100% off).

use std::collections::BTreeMap;

/// Values kept exactly per cell before switching to the sketch: quantiles over fewer
/// spans are exact.
const EXACT_MAX: usize = 2048;
/// Relative accuracy of the sketch: a reported quantile is within 1% of a true value of
/// the same rank.
const ALPHA: f64 = 0.01;

#[derive(Debug, Clone, Default)]
pub(crate) struct Values {
    exact: Vec<f64>,
    sketch: Option<Box<Sketch>>,
}

/// Counts per logarithmic bucket: bucket `i` holds values in `(γ^(i-1), γ^i]`, with
/// `γ = (1+α)/(1-α)`, and reports `2γ^i/(γ+1)`, within α of any value in it.
#[derive(Debug, Clone, Default)]
struct Sketch {
    positive: BTreeMap<i32, u64>,
    negative: BTreeMap<i32, u64>,
    zeros: u64,
    count: u64,
}

fn gamma() -> f64 {
    (1.0 + ALPHA) / (1.0 - ALPHA)
}

impl Sketch {
    fn add(&mut self, v: f64) {
        self.count += 1;
        // Below ~1e-300 the logarithm loses meaning: such values count as zero.
        if v.abs() < 1e-300 || !v.is_finite() {
            self.zeros += 1;
            return;
        }
        let i = (v.abs().ln() / gamma().ln()).ceil() as i32;
        let side = if v > 0.0 {
            &mut self.positive
        } else {
            &mut self.negative
        };
        *side.entry(i).or_default() += 1;
    }

    fn merge(&mut self, other: &Sketch) {
        self.count += other.count;
        self.zeros += other.zeros;
        for (i, n) in &other.positive {
            *self.positive.entry(*i).or_default() += n;
        }
        for (i, n) in &other.negative {
            *self.negative.entry(*i).or_default() += n;
        }
    }

    fn value_of(i: i32) -> f64 {
        let g = gamma();
        2.0 * g.powi(i) / (g + 1.0)
    }

    /// The value at rank `q * (count - 1)` (nearest rank).
    fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        let rank = (q * (self.count - 1) as f64).round() as u64;
        let mut seen = 0u64;
        // Ascending: the most negative first (largest magnitude), then zeros, then positive.
        for (i, n) in self.negative.iter().rev() {
            seen += n;
            if seen > rank {
                return -Self::value_of(*i);
            }
        }
        seen += self.zeros;
        if seen > rank {
            return 0.0;
        }
        for (i, n) in &self.positive {
            seen += n;
            if seen > rank {
                return Self::value_of(*i);
            }
        }
        self.positive
            .keys()
            .next_back()
            .map_or(0.0, |i| Self::value_of(*i))
    }
}

impl Values {
    pub(crate) fn add(&mut self, v: f64) {
        match &mut self.sketch {
            Some(s) => s.add(v),
            None => {
                self.exact.push(v);
                if self.exact.len() > EXACT_MAX {
                    self.switch_to_sketch();
                }
            }
        }
    }

    fn switch_to_sketch(&mut self) {
        let mut s = Sketch::default();
        for v in self.exact.drain(..) {
            s.add(v);
        }
        self.exact = Vec::new();
        self.sketch = Some(Box::new(s));
    }

    pub(crate) fn merge(&mut self, mut other: Values) {
        if self.sketch.is_none() && other.sketch.is_none() {
            self.exact.append(&mut other.exact);
            if self.exact.len() > EXACT_MAX {
                self.switch_to_sketch();
            }
            return;
        }
        if self.sketch.is_none() {
            self.switch_to_sketch();
        }
        if other.sketch.is_none() {
            other.switch_to_sketch();
        }
        if let (Some(mine), Some(theirs)) = (&mut self.sketch, &other.sketch) {
            mine.merge(theirs);
        }
    }

    /// The `q` quantile: exact (linear interpolation between the closest ranks) while the
    /// values are kept, else the sketch's estimate.
    pub(crate) fn quantile(&mut self, q: f64) -> f64 {
        let q = q.clamp(0.0, 1.0);
        match &self.sketch {
            Some(s) => s.quantile(q),
            None => exact_quantile(&mut self.exact, q),
        }
    }
}

/// The exact `q` quantile: linear interpolation between the closest ranks.
pub(crate) fn exact_quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let pos = q * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    values[lo] + (values[hi] - values[lo]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_values_are_exact() {
        let mut v = Values::default();
        for x in [4.0, 1.0, 3.0, 2.0] {
            v.add(x);
        }
        assert_eq!(v.quantile(0.5), 2.5);
        assert!(v.sketch.is_none());
    }

    #[test]
    fn many_values_stay_within_one_percent_and_bounded() {
        // Durations from 1 µs to ~10 s on a skewed spread, as latencies are.
        let mut all = Vec::new();
        let mut a = Values::default();
        let mut b = Values::default();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = 1e-6 * 10f64.powf((x % 10_000) as f64 / 1_000.0);
            all.push(v);
            if i % 3 == 0 {
                a.add(v)
            } else {
                b.add(v)
            }
        }
        a.merge(b);
        let s = a.sketch.as_ref().expect("switched to the sketch");
        assert!(s.positive.len() < 1_500, "{} buckets", s.positive.len());
        let mut sorted = all;
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let truth = sorted[(q * (sorted.len() - 1) as f64).round() as usize];
            let got = a.quantile(q);
            assert!(
                (got - truth).abs() <= ALPHA * truth * 1.0001,
                "q {q}: got {got}, true {truth}"
            );
        }
    }

    #[test]
    fn zero_and_negative_values_keep_their_order() {
        let mut v = Values::default();
        for i in 0..5_000 {
            v.add(f64::from(i % 5) - 2.0); // -2..=2
        }
        assert!(v.sketch.is_some());
        assert!((v.quantile(0.0) + 2.0).abs() <= 0.02 * 2.0);
        assert_eq!(v.quantile(0.5), 0.0);
        assert!((v.quantile(1.0) - 2.0).abs() <= 0.02 * 2.0);
    }
}
