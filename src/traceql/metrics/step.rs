//! Step choice and alignment of a metrics request, as Tempo does it: the default step is
//! about 1/240 of the range, rounded to a friendly unit; the range is widened to whole steps
//! and buckets are right-closed, `(t, t + step]`, each stamped with its end.

const SECOND: u64 = 1_000_000_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
/// Under a minute, steps are multiples of 50 ms.
const FINE: u64 = 50_000_000;

/// The step Tempo picks when the request gives none: range/240, rounded down to whole
/// hours, 5 minutes or minutes from a minute up, to 50 ms multiples below; at least 1 s.
pub fn default_step(start_ns: u64, end_ns: u64) -> u64 {
    let raw = end_ns.saturating_sub(start_ns) / 240;
    let unit = if raw >= HOUR {
        HOUR
    } else if raw >= 5 * MINUTE {
        5 * MINUTE
    } else if raw >= MINUTE {
        MINUTE
    } else {
        FINE
    };
    (raw / unit * unit).max(SECOND)
}

/// The buckets of one request: `count` right-closed intervals of `step` after `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    /// Exclusive lower end of the first bucket, in unix nanoseconds.
    pub start_ns: u64,
    pub step_ns: u64,
    pub count: usize,
}

impl Buckets {
    /// A range query: start rounded down and end up to whole steps, then one more step
    /// before start, so the first sample covers the step the user asked to start in.
    pub fn range(start_ns: u64, end_ns: u64, step_ns: u64) -> Self {
        let step = step_ns.max(1);
        let start = (start_ns / step * step).saturating_sub(step);
        let end = end_ns.div_ceil(step) * step;
        Self {
            start_ns: start,
            step_ns: step,
            count: ((end - start) / step).max(1) as usize,
        }
    }

    /// An instant query: one bucket, `(start, end]`.
    pub fn instant(start_ns: u64, end_ns: u64) -> Self {
        Self {
            start_ns,
            step_ns: end_ns.saturating_sub(start_ns).max(1),
            count: 1,
        }
    }

    pub fn end_ns(&self) -> u64 {
        self.start_ns + self.step_ns * self.count as u64
    }

    /// The bucket holding a span that starts at `t`, if any.
    pub fn index(&self, t: u64) -> Option<usize> {
        if t <= self.start_ns || t > self.end_ns() {
            return None;
        }
        Some(((t - self.start_ns).div_ceil(self.step_ns) - 1) as usize)
    }

    /// The timestamp a bucket's sample carries: its end, in milliseconds.
    pub fn timestamp_ms(&self, i: usize) -> i64 {
        ((self.start_ns + self.step_ns * (i as u64 + 1)) / 1_000_000) as i64
    }

    pub fn step_seconds(&self) -> f64 {
        self.step_ns as f64 / SECOND as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_step_is_a_240th_rounded_to_a_friendly_unit() {
        assert_eq!(default_step(0, HOUR), 15 * SECOND);
        assert_eq!(default_step(0, 24 * HOUR), 5 * MINUTE);
        assert_eq!(default_step(0, 7 * 24 * HOUR), 40 * MINUTE);
        assert_eq!(default_step(0, 10 * 24 * HOUR), HOUR);
        assert_eq!(default_step(0, 5 * MINUTE), 1_250_000_000);
        assert_eq!(default_step(0, 30 * SECOND), SECOND);
    }

    #[test]
    fn range_is_widened_to_whole_steps_plus_one_before() {
        let b = Buckets::range(1_003 * SECOND, 1_027 * SECOND, 10 * SECOND);
        assert_eq!(b.start_ns, 990 * SECOND);
        assert_eq!(b.end_ns(), 1_030 * SECOND);
        assert_eq!(b.count, 4);
        assert_eq!(b.timestamp_ms(0), 1_000_000);
        assert_eq!(b.timestamp_ms(3), 1_030_000);
    }

    #[test]
    fn buckets_are_right_closed() {
        let b = Buckets::range(1_000 * SECOND, 1_030 * SECOND, 10 * SECOND);
        // A span exactly on a boundary belongs to the bucket that ends there.
        assert_eq!(b.index(1_010 * SECOND), Some(1));
        assert_eq!(b.timestamp_ms(1), 1_010_000);
        assert_eq!(b.index(1_010 * SECOND + 1), Some(2));
        assert_eq!(b.index(b.start_ns), None);
        assert_eq!(b.index(b.end_ns()), Some(b.count - 1));
        assert_eq!(b.index(b.end_ns() + 1), None);
    }
}
