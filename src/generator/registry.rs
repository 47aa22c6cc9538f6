//! The pieces of a tenant's metric registry: series keys, classic histograms with exemplars,
//! and the `Emitter` that turns a collection into remote-write time series the way Tempo's
//! registry does (external labels, empty labels left out, a zero sample before the first
//! value of a new series so `increase()` sees its first increment).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::remote_write::{Exemplar, Label, Sample, TimeSeries};

/// Label values packed into one byte string (each value length-prefixed), so a series is
/// found with one hash lookup and no allocation when it already exists.
#[derive(Default)]
pub(crate) struct KeyBuf(Vec<u8>);

impl KeyBuf {
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    pub(crate) fn push(&mut self, value: &str, max_len: usize) {
        let v = truncate(value, max_len);
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v.as_bytes());
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The label values packed by `KeyBuf::push`, in order.
pub(crate) fn key_values(key: &[u8]) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = key;
    while rest.len() >= 4 {
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(v) = rest.get(4..4 + n) else { break };
        // Values were pushed as `&str` cut at a char boundary, so this cannot fail.
        out.push(std::str::from_utf8(v).unwrap_or(""));
        rest = &rest[4 + n..];
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A classic histogram: per-bucket counts (not cumulative), sum, count, and per bucket the
/// last trace seen since the previous collection (the exemplar).
#[derive(Clone, Debug)]
pub(crate) struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
    exemplars: Vec<Option<([u8; 16], f64)>>,
}

impl Hist {
    /// A histogram over `bounds` (upper bounds, increasing) plus `+Inf`.
    pub(crate) fn new(bounds: &[f64]) -> Self {
        Self {
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
            exemplars: vec![None; bounds.len() + 1],
        }
    }

    pub(crate) fn observe(&mut self, bounds: &[f64], v: f64, trace_id: Option<[u8; 16]>) {
        // Prometheus buckets are `le`: a value equal to a bound belongs to that bucket.
        let i = bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
        if let Some(id) = trace_id {
            self.exemplars[i] = Some((id, v));
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn sum(&self) -> f64 {
        self.sum
    }

    /// Cumulative count of bucket `i` (`le` = `bounds[i]`, or `+Inf` past the last bound).
    pub(crate) fn cumulative(&self, i: usize) -> u64 {
        self.counts[..=i].iter().sum()
    }
}

/// A tenant's `max_active_series`: new series are admitted while the tenant holds fewer.
#[derive(Default, Debug)]
pub(crate) struct SeriesBudget {
    /// Zero: no limit.
    pub(crate) max: usize,
    pub(crate) active: usize,
    pub(crate) refused: u64,
}

impl SeriesBudget {
    /// Admits a new entry worth `weight` series, or counts the refusal.
    pub(crate) fn admit(&mut self, weight: usize) -> bool {
        if self.max != 0 && self.active + weight > self.max {
            self.refused += 1;
            return false;
        }
        self.active += weight;
        true
    }
}

/// Prometheus' label-name rule: anything but `[a-zA-Z0-9_]` becomes `_`, and a name may not
/// start with a digit.
pub(crate) fn sanitize_label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Series count of one histogram: each bucket, `+Inf`, `_sum` and `_count`.
pub(crate) fn hist_series(bounds: &[f64]) -> usize {
    bounds.len() + 3
}

/// Turns one collection into time series, all stamped with the same time.
pub(crate) struct Emitter<'a> {
    external: &'a BTreeMap<String, String>,
    ts_ms: i64,
    /// Where the zero sample of a new series goes: the end of the previous minute (Tempo's
    /// choice), but after the previous collection so a series that went stale and came
    /// back is never out of order. A process's first collection cannot know what an earlier
    /// process sent a moment ago, so its zeros go just before the first value: Prometheus
    /// refuses a whole request for one sample older than its series' last.
    zero_ms: i64,
    pub(crate) out: Vec<TimeSeries>,
}

impl<'a> Emitter<'a> {
    pub(crate) fn new(external: &'a BTreeMap<String, String>, ts_ms: i64, prev_ms: i64) -> Self {
        let end_of_last_minute = ts_ms - ts_ms.rem_euclid(60_000) - 1000;
        let zero_ms = if prev_ms <= 0 {
            ts_ms - 1
        } else {
            end_of_last_minute.max(prev_ms + 1).min(ts_ms - 1)
        };
        Self {
            external,
            ts_ms,
            zero_ms,
            out: Vec::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn samples(&self) -> usize {
        self.out.iter().map(|t| t.samples.len()).sum()
    }

    fn labels(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        extra: Option<(&str, &str)>,
    ) -> Vec<Label> {
        let mut out: Vec<Label> = Vec::with_capacity(labels.len() + self.external.len() + 2);
        out.push(Label {
            name: "__name__".into(),
            value: name.into(),
        });
        for (n, v) in labels.iter().copied().chain(extra) {
            // An empty value is no label at all in Prometheus.
            if !v.is_empty() {
                out.push(Label {
                    name: n.into(),
                    value: v.into(),
                });
            }
        }
        for (n, v) in self.external {
            if !v.is_empty() && !out.iter().any(|l| l.name == *n) {
                out.push(Label {
                    name: n.clone(),
                    value: v.clone(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        out
    }

    fn push(&mut self, labels: Vec<Label>, value: f64, new: bool, exemplar: Option<Exemplar>) {
        let mut samples = Vec::with_capacity(2);
        if new {
            samples.push(Sample {
                value: 0.0,
                timestamp: self.zero_ms,
            });
        }
        samples.push(Sample {
            value,
            timestamp: self.ts_ms,
        });
        self.out.push(TimeSeries {
            labels,
            samples,
            exemplars: exemplar.into_iter().collect(),
        });
    }

    pub(crate) fn counter(&mut self, name: &str, labels: &[(&str, &str)], value: f64, new: bool) {
        let l = self.labels(name, labels, None);
        self.push(l, value, new, None);
    }

    /// Emits `<name>_bucket{le}`, `_sum` and `_count`, and takes the exemplars.
    pub(crate) fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        h: &mut Hist,
        new: bool,
    ) {
        let mut le = String::new();
        for i in 0..=bounds.len() {
            le.clear();
            match bounds.get(i) {
                Some(b) => {
                    let _ = write!(le, "{b}");
                }
                None => le.push_str("+Inf"),
            }
            let l = self.labels(&format!("{name}_bucket"), labels, Some(("le", le.as_str())));
            let exemplar = h.exemplars[i].take().map(|(id, v)| Exemplar {
                labels: vec![Label {
                    name: "traceID".into(),
                    value: hex::encode(id),
                }],
                value: v,
                timestamp: self.ts_ms,
            });
            self.push(l, h.cumulative(i) as f64, new, exemplar);
        }
        let l = self.labels(&format!("{name}_sum"), labels, None);
        // Tempo sends no zero sample for `_sum`: a sum can start anywhere.
        self.push(l, h.sum(), false, None);
        let l = self.labels(&format!("{name}_count"), labels, None);
        self.push(l, h.count() as f64, new, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_values_are_cut_at_char_boundaries() {
        let mut k = KeyBuf::default();
        k.push("checkout", 100);
        k.push("", 100);
        k.push("héllo", 2);
        assert_eq!(key_values(k.as_bytes()), ["checkout", "", "h"]);
    }

    #[test]
    fn histogram_buckets_are_le_and_cumulative() {
        let bounds = [0.1, 0.2, 0.4];
        let mut h = Hist::new(&bounds);
        for v in [0.05, 0.1, 0.15, 0.4, 3.0] {
            h.observe(&bounds, v, Some([7; 16]));
        }
        assert_eq!(
            (0..4).map(|i| h.cumulative(i)).collect::<Vec<_>>(),
            [2, 3, 4, 5]
        );
        assert_eq!(h.count(), 5);
        assert!((h.sum() - 3.7).abs() < 1e-9);
    }

    #[test]
    fn emitter_sorts_labels_adds_external_ones_and_zero_samples_new_series() {
        let external = BTreeMap::from([("cluster".to_owned(), "eu".to_owned())]);
        // 12:00:30.5 with the previous collection at 12:00:15.5
        let ts = 1_800_000_030_500 - 1_800_000_030_500 % 60_000 + 30_500;
        let mut e = Emitter::new(&external, ts, ts - 15_000);
        e.counter("c_total", &[("service", "a"), ("span_name", "")], 3.0, true);
        let t = &e.out[0];
        let names: Vec<_> = t.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "cluster", "service"]);
        assert_eq!(t.samples.len(), 2);
        assert_eq!(t.samples[0].value, 0.0);
        assert_eq!(t.samples[0].timestamp, ts - 15_000 + 1);
        assert_eq!(t.samples[1].timestamp, ts);
        let mut first = Emitter::new(&external, ts, 0);
        first.counter("c_total", &[], 1.0, true);
        assert_eq!(first.out[0].samples[0].timestamp, ts - 1);
        let mut later = Emitter::new(&external, ts, ts - 45_000);
        later.counter("c_total", &[], 1.0, true);
        let minute = ts - ts % 60_000;
        assert_eq!(
            later.out[0].samples[0].timestamp,
            minute - 1000,
            "end of last minute"
        );

        let bounds = [0.5, 1.0];
        let mut h = Hist::new(&bounds);
        h.observe(&bounds, 0.7, Some([1; 16]));
        e.histogram("lat", &[("service", "a")], &bounds, &mut h, false);
        let le: Vec<_> = e.out[1..4]
            .iter()
            .map(|t| {
                let l = t.labels.iter().find(|l| l.name == "le").unwrap();
                (l.value.clone(), t.samples[0].value)
            })
            .collect();
        assert_eq!(
            le,
            [
                ("0.5".to_owned(), 0.0),
                ("1".to_owned(), 1.0),
                ("+Inf".to_owned(), 1.0)
            ]
        );
        assert_eq!(e.out[2].exemplars[0].labels[0].value, "01".repeat(16));
        assert!(e.out[1].exemplars.is_empty());
        assert_eq!(e.samples(), 2 + 5);
    }
}
