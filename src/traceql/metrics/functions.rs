//! What each metrics function keeps per bucket and the value it reports: counts for
//! `rate`/`count_over_time`/`histogram_over_time`, sums and extremes, and the values behind
//! quantiles (`sketch`).

use super::super::ast::MetricsFunction;
use super::super::eval::Value;

/// One bucket of one series.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cell {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    /// Kept only for quantiles.
    values: super::sketch::Values,
}

impl Cell {
    pub(crate) fn add(&mut self, value: f64, keep: bool) {
        if self.count == 0 {
            self.min = value;
            self.max = value;
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        self.count += 1;
        self.sum += value;
        if keep {
            self.values.add(value);
        }
    }

    pub(crate) fn merge(&mut self, other: Cell) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = other;
            return;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.values.merge(other.values);
    }

    /// The reported value; NaN where the function has nothing to say (left out).
    pub(crate) fn value(&mut self, function: &MetricsFunction, step_seconds: f64, q: f64) -> f64 {
        use MetricsFunction as F;
        match function {
            F::Rate => self.count as f64 / step_seconds,
            F::CountOverTime | F::HistogramOverTime(_) | F::Compare { .. } => self.count as f64,
            _ if self.count == 0 => f64::NAN,
            F::SumOverTime(_) => self.sum,
            F::MinOverTime(_) => self.min,
            F::MaxOverTime(_) => self.max,
            F::AvgOverTime(_) => self.sum / self.count as f64,
            F::QuantileOverTime { .. } => self.values.quantile(q),
        }
    }
}

/// A value as a metrics function reads it: numbers as they are, durations in seconds.
pub(crate) fn numeric(value: &Value) -> Option<f64> {
    match value {
        Value::Int(v) => Some(*v as f64),
        Value::Float(v) => Some(*v),
        Value::Duration(ns) => Some(*ns as f64 / 1e9),
        _ => None,
    }
}

/// Tempo's histogram bucket for a value: the next power of two, taken in nanoseconds for
/// durations (so labels read 0.067108864 for 2^26 ns), on the value itself otherwise.
pub(crate) fn histogram_bucket(value: &Value) -> Option<f64> {
    match value {
        Value::Duration(ns) => Some((*ns).max(1).unsigned_abs().next_power_of_two() as f64 / 1e9),
        Value::Int(v) => Some(if *v <= 1 {
            1.0
        } else {
            v.unsigned_abs().next_power_of_two() as f64
        }),
        Value::Float(v) if v.is_finite() => Some(if *v <= 0.0 {
            0.0
        } else {
            2f64.powf(v.log2().ceil())
        }),
        _ => None,
    }
}

/// The function's name, for the `__name__` label of an ungrouped series.
pub(crate) fn name(function: &MetricsFunction) -> &'static str {
    use MetricsFunction as F;
    match function {
        F::Rate => "rate",
        F::CountOverTime => "count_over_time",
        F::MinOverTime(_) => "min_over_time",
        F::MaxOverTime(_) => "max_over_time",
        F::AvgOverTime(_) => "avg_over_time",
        F::SumOverTime(_) => "sum_over_time",
        F::QuantileOverTime { .. } => "quantile_over_time",
        F::HistogramOverTime(_) => "histogram_over_time",
        F::Compare { .. } => "compare",
    }
}

#[cfg(test)]
mod tests {
    use super::super::sketch::exact_quantile as quantile;
    use super::*;

    #[test]
    fn quantiles_are_exact() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&mut v, 0.0), 1.0);
        assert_eq!(quantile(&mut v, 1.0), 4.0);
        assert_eq!(quantile(&mut v, 0.5), 2.5);
        let mut one = vec![7.0];
        assert_eq!(quantile(&mut one, 0.99), 7.0);
        assert!(quantile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn histogram_buckets_are_powers_of_two_in_nanoseconds() {
        assert_eq!(
            histogram_bucket(&Value::Duration(50_000_000)),
            Some(0.067108864)
        );
        assert_eq!(
            histogram_bucket(&Value::Duration(1 << 26)),
            Some(0.067108864)
        );
        assert_eq!(histogram_bucket(&Value::Int(5)), Some(8.0));
        assert_eq!(histogram_bucket(&Value::Float(0.3)), Some(0.5));
        assert_eq!(histogram_bucket(&Value::String("x".into())), None);
    }
}
