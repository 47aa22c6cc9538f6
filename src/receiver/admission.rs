//! What an export may cost in memory before it is decoded: gzip inflated with a ceiling
//! (every member of a multi-member body), the decoded size of an OTLP request estimated
//! from its wire bytes without allocating, and the budget of bytes in flight shared by
//! both receivers. OTLP amplifies (an empty span is 2 bytes on the wire and a ~260-byte
//! struct decoded), so the wire size alone bounds nothing.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

pub(crate) use super::estimate::{estimate_json, estimate_protobuf, Estimate};
use crate::model::{
    group_encoded_within, grouped_len, ExportTraceServiceRequest, GroupError, Grouped,
};

/// Why an export is refused before it is decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AdmissionError {
    #[error("request holds {spans} spans, more than the {limit} spans allowed per request: send smaller batches")]
    TooManySpans { spans: usize, limit: usize },
    #[error("request would take about {bytes} bytes decoded, more than the {limit} bytes allowed per request: send smaller batches")]
    DecodedTooLarge { bytes: usize, limit: usize },
    /// Each trace's fragment repeats its resource and scope: many traces under a large
    /// resource multiply it.
    #[error("request grouped by trace would take more than the {limit} bytes allowed per request (its resource is repeated for each trace): send smaller batches")]
    GroupedTooLarge { limit: usize },
    #[error("too many export bytes in flight ({limit} byte budget): retry later")]
    Busy { limit: usize },
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
}

impl AdmissionError {
    /// Whether waiting can help (429 / RESOURCE_EXHAUSTED with RetryInfo) or the request
    /// itself is too large (413 / RESOURCE_EXHAUSTED without it).
    pub(crate) fn retryable(&self) -> bool {
        matches!(self, AdmissionError::Busy { .. })
    }
}

/// Inflates a gzip body of one or more members (RFC 1952 allows several, concatenated;
/// a single-member decoder silently stops after the first), at most `limit` bytes.
pub(crate) fn gunzip(data: &[u8], limit: usize) -> Result<Bytes, GunzipError> {
    let mut out = Vec::new();
    gunzip_into(data, limit, &mut out)?;
    Ok(Bytes::from(out))
}

/// [`gunzip`], appending to `out`; returns the bytes appended.
pub(crate) fn gunzip_into(
    data: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<usize, GunzipError> {
    out.reserve(inflated_size_hint(data).min(limit));
    let before = out.len();
    let mut dec = flate2::read::MultiGzDecoder::new(data).take(limit as u64 + 1);
    dec.read_to_end(out).map_err(GunzipError::Corrupt)?;
    let n = out.len() - before;
    if n > limit {
        out.truncate(before);
        return Err(GunzipError::TooLarge { limit });
    }
    Ok(n)
}

/// What a gzip body inflates to, to size the buffer once: the last member's trailer holds
/// its size (mod 2^32), which for the usual single member is the whole. Bounded by
/// deflate's largest ratio (~1032:1) so a forged trailer cannot reserve more than the
/// body could really produce.
fn inflated_size_hint(data: &[u8]) -> usize {
    let trailer = data
        .len()
        .checked_sub(4)
        .and_then(|at| data.get(at..))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, |b| u32::from_le_bytes(b) as usize);
    let most = data.len().saturating_mul(1032);
    if trailer > 0 {
        trailer.min(most)
    } else {
        data.len().saturating_mul(4)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum GunzipError {
    #[error("cannot decompress gzip body: {0}")]
    Corrupt(std::io::Error),
    #[error("request body inflates past the {limit} byte limit")]
    TooLarge { limit: usize },
}

/// Bytes of all exports being decoded and pushed, shared by both receivers.
#[derive(Debug)]
pub(crate) struct InflightBudget {
    used: AtomicUsize,
    limit: usize,
}

/// Bytes taken from an [`InflightBudget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<InflightBudget>,
    bytes: usize,
}

impl InflightBudget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes`, or refuses without waiting when they are not free.
    pub(crate) fn try_reserve(
        self: &Arc<Self>,
        bytes: usize,
    ) -> Result<Reservation, AdmissionError> {
        let mut r = Reservation {
            budget: self.clone(),
            bytes: 0,
        };
        r.grow_to(bytes)?;
        Ok(r)
    }
}

impl Reservation {
    /// Makes this reservation `bytes` large (it never shrinks).
    pub(crate) fn grow_to(&mut self, bytes: usize) -> Result<(), AdmissionError> {
        let Some(extra) = bytes.checked_sub(self.bytes).filter(|e| *e > 0) else {
            return Ok(());
        };
        let b = &self.budget;
        // Larger than the whole budget: waiting cannot help.
        if bytes > b.limit {
            return Err(AdmissionError::DecodedTooLarge {
                bytes,
                limit: b.limit,
            });
        }
        b.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(extra).filter(|n| *n <= b.limit)
            })
            .map_err(|_| AdmissionError::Busy { limit: b.limit })?;
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The bounds both receivers apply before and while decoding an export.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    pub(crate) budget: Arc<InflightBudget>,
    pub(crate) limits: RequestLimits,
}

impl Admission {
    pub(crate) fn new(limits: RequestLimits, inflight_bytes: usize) -> Self {
        Self {
            budget: InflightBudget::new(inflight_bytes),
            limits,
        }
    }

    /// Groups a protobuf request by trace from its bytes, within the per-request bounds,
    /// and reserves what that holds: the body and its traces' fragments. `decoded`: the
    /// request is also to be decoded into structs (for the metrics-generator), so the
    /// size of that decode is estimated first, without decoding.
    pub(crate) fn group_protobuf(
        &self,
        res: &mut Reservation,
        body: &Bytes,
        held: usize,
        decoded: bool,
    ) -> Result<Grouped, DecodeError> {
        if decoded {
            self.limits.check(&estimate_protobuf(body)?)?;
        }
        let grouped =
            group_encoded_within(body, self.limits.max_decoded_bytes).map_err(|e| match e {
                GroupError::Invalid(e) => DecodeError::Invalid(e.to_string()),
                GroupError::TooLarge { limit } => {
                    DecodeError::Refused(AdmissionError::GroupedTooLarge { limit })
                }
            })?;
        let spans = grouped.accepted + grouped.rejected;
        self.limits.check(&Estimate { spans, bytes: 0 })?;
        res.grow_to(held.saturating_add(grouped.bytes()))?;
        Ok(grouped)
    }

    /// Decodes a JSON request within the per-request bounds; its spans are counted once decoded.
    pub(crate) fn decode_json(
        &self,
        res: &mut Reservation,
        body: &[u8],
        held: usize,
    ) -> Result<ExportTraceServiceRequest, DecodeError> {
        let est = estimate_json(body);
        self.limits.check(&est)?;
        res.grow_to(held.saturating_add(est.bytes))?;
        let req: ExportTraceServiceRequest =
            serde_json::from_slice(body).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        let spans: usize = req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.limits.check(&Estimate { spans, bytes: 0 })?;
        if grouped_len(&req.resource_spans) > self.limits.max_decoded_bytes {
            return Err(DecodeError::Refused(AdmissionError::GroupedTooLarge {
                limit: self.limits.max_decoded_bytes,
            }));
        }
        Ok(req)
    }
}

/// Why a request body did not become a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error(transparent)]
    Refused(AdmissionError),
    #[error("{0}")]
    Invalid(String),
}

impl From<AdmissionError> for DecodeError {
    fn from(e: AdmissionError) -> Self {
        match e {
            AdmissionError::Malformed(m) => DecodeError::Invalid(m.to_string()),
            e => DecodeError::Refused(e),
        }
    }
}

/// Per-request bounds, from `distributor.*` in the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLimits {
    pub(crate) max_spans: usize,
    pub(crate) max_decoded_bytes: usize,
}

impl RequestLimits {
    /// Refuses a request whose estimate is over a per-request bound.
    pub(crate) fn check(&self, e: &Estimate) -> Result<(), AdmissionError> {
        if e.spans > self.max_spans {
            return Err(AdmissionError::TooManySpans {
                spans: e.spans,
                limit: self.max_spans,
            });
        }
        if e.bytes > self.max_decoded_bytes {
            return Err(AdmissionError::DecodedTooLarge {
                bytes: e.bytes,
                limit: self.max_decoded_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use std::io::Write;

    /// `data` as one gzip member.
    pub(crate) fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gunzip_reads_every_member_and_respects_the_limit() {
        let mut two = gz(b"first member, ");
        two.extend(gz(b"second member"));
        assert_eq!(
            &gunzip(&two, 1000).unwrap()[..],
            b"first member, second member"
        );
        let big = gz(&vec![7u8; 10_000]);
        assert_eq!(gunzip(&big, 10_000).unwrap().len(), 10_000);
        assert!(matches!(
            gunzip(&big, 9_999),
            Err(GunzipError::TooLarge { .. })
        ));
        assert!(matches!(
            gunzip(b"not gzip", 100),
            Err(GunzipError::Corrupt(_))
        ));
    }

    #[test]
    fn limits_refuse_oversized_requests() {
        let limits = RequestLimits {
            max_spans: 10,
            max_decoded_bytes: 1000,
        };
        assert!(limits
            .check(&Estimate {
                spans: 10,
                bytes: 1000
            })
            .is_ok());
        let e = limits
            .check(&Estimate {
                spans: 11,
                bytes: 0,
            })
            .unwrap_err();
        assert!(!e.retryable() && e.to_string().contains("11 spans"), "{e}");
        let e = limits
            .check(&Estimate {
                spans: 1,
                bytes: 1001,
            })
            .unwrap_err();
        assert!(matches!(e, AdmissionError::DecodedTooLarge { .. }));
    }

    /// `traces` spans, each its own trace, under one resource of `resource_bytes`.
    fn many_traces(traces: usize, resource_bytes: usize) -> ExportTraceServiceRequest {
        use crate::model::{
            any_value, AnyValue, KeyValue, Resource, ResourceSpans, ScopeSpans, Span,
        };
        let big = KeyValue {
            key: "big".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("x".repeat(resource_bytes))),
            }),
            ..Default::default()
        };
        let spans = (0..traces)
            .map(|i| Span {
                trace_id: (i as u128 + 1).to_be_bytes().to_vec(),
                span_id: vec![1; 8],
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![big],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn grouping_waits_for_the_budget_and_never_fits_past_it() {
        use prost::Message;
        let wire = Bytes::from(many_traces(100, 10).encode_to_vec());
        let limits = RequestLimits {
            max_spans: 1000,
            max_decoded_bytes: usize::MAX,
        };
        let grouped = crate::model::group_encoded(&wire).unwrap().bytes();
        assert!(grouped > wire.len(), "each trace repeats the resource");
        // Room for the body and its grouped copy, no more.
        let admission = Admission::new(limits, wire.len() + grouped);
        // Another export holds part of the budget: retry later (429).
        let other = admission.budget.try_reserve(wire.len()).unwrap();
        let mut res = admission.budget.try_reserve(wire.len()).unwrap();
        match admission.group_protobuf(&mut res, &wire, wire.len(), false) {
            Err(DecodeError::Refused(e)) => assert!(e.retryable(), "{e}"),
            other => panic!("{:?}", other.map(|g| g.bytes())),
        }
        drop(other);
        let g = admission
            .group_protobuf(&mut res, &wire, wire.len(), false)
            .unwrap();
        assert_eq!(g.accepted, 100);
        assert_eq!(admission.budget.in_use(), wire.len() + grouped);
        drop(res);
        // Larger than the whole budget: too large (413), not retryable.
        let small = Admission::new(limits, 100);
        let mut res = small.budget.try_reserve(10).unwrap();
        match small.group_protobuf(&mut res, &wire, wire.len(), false) {
            Err(DecodeError::Refused(e)) => assert!(!e.retryable(), "{e}"),
            other => panic!("{:?}", other.map(|g| g.bytes())),
        }
        // Over the span limit.
        let few = Admission::new(
            RequestLimits {
                max_spans: 10,
                max_decoded_bytes: usize::MAX,
            },
            1 << 20,
        );
        let mut res = few.budget.try_reserve(wire.len()).unwrap();
        assert!(matches!(
            few.group_protobuf(&mut res, &wire, wire.len(), false),
            Err(DecodeError::Refused(AdmissionError::TooManySpans { .. }))
        ));
        // Decoded for the generator: the decode estimate applies too.
        let tight = Admission::new(
            RequestLimits {
                max_spans: 1000,
                // Room for the grouping (its bound counts a few bytes more per trace),
                // not for 100 decoded spans (~300 bytes of struct each, twice).
                max_decoded_bytes: 2 * grouped,
            },
            1 << 30,
        );
        let mut res = tight.budget.try_reserve(0).unwrap();
        assert!(tight.group_protobuf(&mut res, &wire, 0, false).is_ok());
        assert!(matches!(
            tight.group_protobuf(&mut res, &wire, 0, true),
            Err(DecodeError::Refused(AdmissionError::DecodedTooLarge { .. }))
        ));
    }

    /// A 64 KiB resource over 2,000 one-span traces is a 150 KB export that would group
    /// into ~130 MB: refused as too large before any fragment is made, in both encodings.
    #[test]
    fn a_large_resource_over_many_traces_is_refused_before_it_is_copied() {
        use prost::Message;
        let req = many_traces(2_000, 64 << 10);
        let wire = Bytes::from(req.encode_to_vec());
        assert!(wire.len() < 200_000);
        let limits = RequestLimits {
            max_spans: 100_000,
            max_decoded_bytes: 16 << 20,
        };
        let admission = Admission::new(limits, 1 << 30);
        let mut res = admission.budget.try_reserve(0).unwrap();
        match admission.group_protobuf(&mut res, &wire, wire.len(), false) {
            Err(DecodeError::Refused(e @ AdmissionError::GroupedTooLarge { .. })) => {
                assert!(!e.retryable());
                assert!(e.to_string().contains("repeated for each trace"), "{e}");
            }
            other => panic!("{:?}", other.map(|g| g.bytes())),
        }
        assert_eq!(admission.budget.in_use(), 0);
        let json = serde_json::to_vec(&req).unwrap();
        assert!(matches!(
            admission.decode_json(&mut res, &json, json.len()),
            Err(DecodeError::Refused(AdmissionError::GroupedTooLarge { .. }))
        ));
        // The same spans in one trace group into about their own size.
        let mut one = req;
        for s in &mut one.resource_spans[0].scope_spans[0].spans {
            s.trace_id = vec![7; 16];
        }
        let wire = Bytes::from(one.encode_to_vec());
        let g = admission
            .group_protobuf(&mut res, &wire, wire.len(), false)
            .unwrap();
        assert!(g.bytes() < 2 * wire.len());
        // The JSON path's count, from structs, agrees with the bytes grouping made.
        let est = crate::model::grouped_len(&one.resource_spans);
        assert!(est.abs_diff(g.bytes()) <= 16, "{est} vs {}", g.bytes());
    }

    #[test]
    fn budget_refuses_past_its_limit_and_frees_on_drop() {
        let budget = InflightBudget::new(100);
        let mut a = budget.try_reserve(60).unwrap();
        assert!(budget.try_reserve(41).unwrap_err().retryable());
        let b = budget.try_reserve(40).unwrap();
        assert_eq!(budget.in_use(), 100);
        assert!(a.grow_to(61).is_err());
        drop(b);
        a.grow_to(100).unwrap();
        assert_eq!(budget.in_use(), 100);
        drop(a);
        assert_eq!(budget.in_use(), 0);
    }
}
