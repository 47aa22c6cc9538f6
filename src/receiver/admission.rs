//! What an export may cost in memory before it is decoded: gzip inflated with a ceiling
//! (every member of a multi-member body), the decoded size of an OTLP request estimated
//! from its wire bytes without allocating, and the budget of bytes in flight shared by
//! both receivers. OTLP amplifies (an empty span is 2 bytes on the wire and a ~260-byte
//! struct decoded), so the wire size alone bounds nothing.

use std::io::Read;
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::model::ExportTraceServiceRequest;

/// Why an export is refused before it is decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("request inflates past the {limit} byte limit")]
    InflatedTooLarge { limit: usize },
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
    pub fn retryable(&self) -> bool {
        matches!(self, AdmissionError::Busy { .. })
    }
}

/// Inflates a gzip body of one or more members (RFC 1952 allows several, concatenated;
/// a single-member decoder silently stops after the first), at most `limit` bytes.
pub fn gunzip(data: &[u8], limit: usize) -> Result<Bytes, GunzipError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    let mut dec = flate2::read::MultiGzDecoder::new(data).take(limit as u64 + 1);
    dec.read_to_end(&mut out).map_err(GunzipError::Corrupt)?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    #[error("cannot decompress gzip body: {0}")]
    Corrupt(std::io::Error),
    #[error("request body inflates past the {limit} byte limit")]
    TooLarge { limit: usize },
}

/// Bytes of all exports being decoded and pushed, shared by both receivers.
#[derive(Debug)]
pub struct InflightBudget {
    used: AtomicUsize,
    limit: usize,
}

/// Bytes taken from an [`InflightBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<InflightBudget>,
    bytes: usize,
}

impl InflightBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes`, or refuses without waiting when they are not free.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Result<Reservation, AdmissionError> {
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
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), AdmissionError> {
        let Some(extra) = bytes.checked_sub(self.bytes).filter(|e| *e > 0) else {
            return Ok(());
        };
        let b = &self.budget;
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
pub struct Admission {
    pub budget: Arc<InflightBudget>,
    pub limits: RequestLimits,
}

impl Admission {
    pub fn new(limits: RequestLimits, inflight_bytes: usize) -> Self {
        Self {
            budget: InflightBudget::new(inflight_bytes),
            limits,
        }
    }

    /// Decodes a protobuf request once its estimated decoded size is within the limits
    /// and reserved in `res` (which already holds what was received).
    pub fn decode_protobuf(
        &self,
        res: &mut Reservation,
        body: Bytes,
        held: usize,
    ) -> Result<ExportTraceServiceRequest, DecodeError> {
        let est = estimate_protobuf(&body)?;
        self.limits.check(&est)?;
        res.grow_to(held.saturating_add(est.bytes))?;
        prost::Message::decode(body).map_err(|e| DecodeError::Invalid(e.to_string()))
    }

    /// Decodes a JSON request the same way; its spans are counted once decoded.
    pub fn decode_json(
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
pub enum DecodeError {
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
pub struct RequestLimits {
    pub max_spans: usize,
    pub max_decoded_bytes: usize,
}

/// What decoding a request would allocate, estimated from its encoding.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Spans, when known before decoding (protobuf); JSON counts them after.
    pub spans: usize,
    /// Decoded structs (twice: vectors grow by doubling), strings, and the encoded bytes,
    /// which stay in memory until the WAL has them.
    pub bytes: usize,
}

impl RequestLimits {
    /// Refuses a request whose estimate is over a per-request bound.
    pub fn check(&self, e: &Estimate) -> Result<(), AdmissionError> {
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

/// The OTLP trace messages, as far as decoding allocates them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Msg {
    Request,
    ResourceSpans,
    Resource,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KvList,
}

impl Msg {
    /// The message type of field `field`, when it is a message.
    fn child(self, field: u64) -> Option<Msg> {
        use Msg::*;
        Some(match (self, field) {
            (Request, 1) => ResourceSpans,
            (ResourceSpans, 1) => Resource,
            (ResourceSpans, 2) => ScopeSpans,
            (Resource, 1) => KeyValue,
            (ScopeSpans, 1) => Scope,
            (ScopeSpans, 2) => Span,
            (Scope, 3) => KeyValue,
            (Span, 9) => KeyValue,
            (Span, 11) => Event,
            (Span, 13) => Link,
            (Span, 15) => Status,
            (Event, 3) => KeyValue,
            (Link, 4) => KeyValue,
            (KeyValue, 2) => AnyValue,
            (AnyValue, 5) => ArrayValue,
            (AnyValue, 6) => KvList,
            (ArrayValue, 1) => AnyValue,
            (KvList, 1) => KeyValue,
            _ => return None,
        })
    }

    /// The size of the struct decoding creates for this message (its heap data is
    /// counted separately, as strings or children).
    fn size(self) -> usize {
        use crate::model as m;
        match self {
            Msg::Request => 0,
            Msg::ResourceSpans => size_of::<m::ResourceSpans>(),
            Msg::Resource => size_of::<m::Resource>(),
            Msg::ScopeSpans => size_of::<m::ScopeSpans>(),
            Msg::Scope => size_of::<m::InstrumentationScope>(),
            Msg::Span => size_of::<m::Span>(),
            Msg::Event => size_of::<m::span::Event>(),
            Msg::Link => size_of::<m::span::Link>(),
            Msg::Status => size_of::<m::Status>(),
            Msg::KeyValue => size_of::<m::KeyValue>(),
            Msg::AnyValue => size_of::<m::AnyValue>(),
            Msg::ArrayValue => size_of::<m::ArrayValue>(),
            Msg::KvList => size_of::<m::KeyValueList>(),
        }
    }
}

/// prost refuses deeper nesting too; this keeps the walk's recursion bounded.
const MAX_DEPTH: usize = 100;

/// Walks an `ExportTraceServiceRequest` in protobuf wire format and estimates what
/// decoding it would allocate, without allocating.
pub fn estimate_protobuf(data: &[u8]) -> Result<Estimate, AdmissionError> {
    let mut est = Estimate::default();
    let mut structs = 0usize;
    let mut strings = 0usize;
    walk(
        data,
        Msg::Request,
        0,
        &mut est.spans,
        &mut structs,
        &mut strings,
    )?;
    est.bytes = structs
        .saturating_mul(2)
        .saturating_add(strings)
        .saturating_add(data.len());
    Ok(est)
}

fn walk(
    mut data: &[u8],
    msg: Msg,
    depth: usize,
    spans: &mut usize,
    structs: &mut usize,
    strings: &mut usize,
) -> Result<(), AdmissionError> {
    if depth > MAX_DEPTH {
        return Err(AdmissionError::Malformed("messages nest too deeply"));
    }
    while !data.is_empty() {
        let key = varint(&mut data)?;
        let field = key >> 3;
        match key & 7 {
            0 => {
                varint(&mut data)?;
            }
            1 => data = skip(data, 8)?,
            5 => data = skip(data, 4)?,
            2 => {
                let len = usize::try_from(varint(&mut data)?)
                    .map_err(|_| AdmissionError::Malformed("length overflows"))?;
                if len > data.len() {
                    return Err(AdmissionError::Malformed(
                        "length past the end of the buffer",
                    ));
                }
                let (body, rest) = data.split_at(len);
                data = rest;
                match msg.child(field) {
                    Some(child) => {
                        *structs = structs.saturating_add(child.size());
                        if child == Msg::Span {
                            *spans += 1;
                        }
                        walk(body, child, depth + 1, spans, structs, strings)?;
                    }
                    None => *strings = strings.saturating_add(len),
                }
            }
            _ => return Err(AdmissionError::Malformed("unsupported wire type")),
        }
    }
    Ok(())
}

fn varint(data: &mut &[u8]) -> Result<u64, AdmissionError> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = data
            .split_first()
            .ok_or(AdmissionError::Malformed("truncated varint"))?;
        *data = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(AdmissionError::Malformed("varint longer than 10 bytes"))
}

fn skip(data: &[u8], n: usize) -> Result<&[u8], AdmissionError> {
    data.get(n..)
        .ok_or(AdmissionError::Malformed("truncated fixed-size field"))
}

/// The largest struct a JSON object in an OTLP request can decode into.
fn largest_struct() -> usize {
    [
        Msg::ResourceSpans,
        Msg::Resource,
        Msg::ScopeSpans,
        Msg::Scope,
        Msg::Span,
        Msg::Event,
        Msg::Link,
        Msg::Status,
        Msg::KeyValue,
        Msg::AnyValue,
        Msg::ArrayValue,
        Msg::KvList,
    ]
    .iter()
    .map(|m| m.size())
    .max()
    .unwrap_or(0)
}

/// Bounds what decoding an OTLP/JSON request allocates: each decoded struct comes from one
/// JSON object, so objects (counted outside strings) times the largest struct, plus the
/// text itself, is an upper bound. Spans are counted after decoding.
pub fn estimate_json(data: &[u8]) -> Estimate {
    let (mut objects, mut in_string, mut escaped) = (0usize, false, false);
    for &b in data {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'{' {
            objects += 1;
        }
    }
    Estimate {
        spans: 0,
        bytes: objects
            .saturating_mul(largest_struct())
            .saturating_mul(2)
            .saturating_add(data.len().saturating_mul(2)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KeyValue, ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
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

    fn empty_spans(n: usize) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); n],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn protobuf_estimate_counts_spans_and_amplification() {
        let wire = empty_spans(1000);
        // Two bytes per empty span on the wire.
        assert!(wire.len() < 2100, "{}", wire.len());
        let e = estimate_protobuf(&wire).unwrap();
        assert_eq!(e.spans, 1000);
        assert!(e.bytes >= 1000 * size_of::<Span>(), "{e:?}");
        // A real span counts its strings and attributes too.
        let mut span = Span {
            name: "x".repeat(500),
            ..Default::default()
        };
        span.attributes = vec![KeyValue::default(); 10];
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let e = estimate_protobuf(&req.encode_to_vec()).unwrap();
        assert_eq!(e.spans, 1);
        assert!(e.bytes >= 500 + 10 * size_of::<KeyValue>() + size_of::<Span>());
        assert!(estimate_protobuf(&[0x0a, 0x05, 0x00]).is_err());
    }

    #[test]
    fn json_estimate_bounds_objects_outside_strings() {
        let text = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{},{},{"name":"{{{{"}]}]}]}"#;
        let e = estimate_json(text);
        // Six objects; the braces in the string do not count.
        assert_eq!(e.bytes, 6 * largest_struct() * 2 + text.len() * 2);
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
