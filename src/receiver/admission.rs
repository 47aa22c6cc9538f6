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
use crate::model::ExportTraceServiceRequest;

/// Why an export is refused before it is decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AdmissionError {
    #[error("request holds {spans} spans, more than the {limit} spans allowed per request: send smaller batches")]
    TooManySpans { spans: usize, limit: usize },
    #[error("request would take about {bytes} bytes decoded, more than the {limit} bytes allowed per request: send smaller batches")]
    DecodedTooLarge { bytes: usize, limit: usize },
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

    /// Checks a protobuf request's estimate against the limits and reserves what grouping it
    /// holds (the body and one copy of its spans) without decoding it: the receivers group
    /// protobuf exports from their bytes ([`crate::model::group_encoded`]).
    pub(crate) fn admit_protobuf(
        &self,
        res: &mut Reservation,
        body: &[u8],
        held: usize,
    ) -> Result<(), DecodeError> {
        let est = estimate_protobuf(body)?;
        self.limits.check(&est)?;
        res.grow_to(held.saturating_add(body.len()))?;
        Ok(())
    }

    /// Decodes a JSON request the same way; its spans are counted once decoded.
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
    use crate::receiver::estimate::tests::empty_spans;

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

    #[test]
    fn admitting_waits_for_the_budget_and_never_fits_past_it() {
        let wire = Bytes::from(empty_spans(100));
        let limits = RequestLimits {
            max_spans: 1000,
            max_decoded_bytes: usize::MAX,
        };
        // Room for the body and its grouped copy, no more.
        let admission = Admission::new(limits, 2 * wire.len());
        // Another export holds half the budget: retry later (429).
        let other = admission.budget.try_reserve(wire.len()).unwrap();
        let mut res = admission.budget.try_reserve(wire.len()).unwrap();
        match admission.admit_protobuf(&mut res, &wire, wire.len()) {
            Err(DecodeError::Refused(e)) => assert!(e.retryable(), "{e}"),
            other => panic!("{other:?}"),
        }
        drop(other);
        admission
            .admit_protobuf(&mut res, &wire, wire.len())
            .unwrap();
        assert_eq!(admission.budget.in_use(), 2 * wire.len());
        drop(res);
        // Larger than the whole budget: too large (413), not retryable.
        let small = Admission::new(limits, 100);
        let mut res = small.budget.try_reserve(10).unwrap();
        match small.admit_protobuf(&mut res, &wire, wire.len()) {
            Err(DecodeError::Refused(e)) => assert!(!e.retryable(), "{e}"),
            other => panic!("{other:?}"),
        }
        // Over the span limit: refused before anything is reserved.
        let few = Admission::new(
            RequestLimits {
                max_spans: 10,
                max_decoded_bytes: usize::MAX,
            },
            1 << 20,
        );
        let mut res = few.budget.try_reserve(wire.len()).unwrap();
        assert!(few.admit_protobuf(&mut res, &wire, wire.len()).is_err());
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
