//! Groups the spans of an encoded `ExportTraceServiceRequest` by trace without decoding it
//! into structs: the hot path of every export.
//!
//! Decoding a request into owned structs (a `String` per attribute key and value, a `Vec`
//! per list) and encoding each trace's spans again cost more CPU than the rest of ingest.
//! Here the received bytes are walked once: every field is checked as prost's decoder
//! checks it (wire types, UTF-8 strings, lengths, nesting), so whatever is accepted decodes
//! later, and each trace's fragment is made of copies of the spans' own bytes, with their
//! resource and scope fields copied beside them. Unknown fields are kept, as prost skips
//! them on decode; field order within a message is kept, so decoding gives what decoding
//! the request would have given.

use bytes::Bytes;

use super::{Fragments, Grouped, TraceBatch, TraceId};

/// Why a request is not a valid `ExportTraceServiceRequest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid protobuf: {0}")]
pub struct WireError(pub(crate) &'static str);

/// Below prost's recursion limit (100), so nothing accepted here fails to decode there.
const MAX_DEPTH: usize = 64;

/// The OTLP trace messages. Shared with the receivers' pre-decode estimate
/// (`receiver/estimate.rs`), so the two walks read one table of the protos.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Msg {
    Request,
    ResourceSpans,
    Resource,
    EntityRef,
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

/// What a known field holds, as the OTLP protos (opentelemetry-proto 0.33) declare it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Varint,
    Fixed64,
    Fixed32,
    Str,
    Bytes,
    Message(Msg),
    Unknown,
}

pub(crate) fn kind(msg: Msg, field: u64) -> Kind {
    use Kind::*;
    use Msg as M;
    match (msg, field) {
        (M::Request, 1) => Message(M::ResourceSpans),
        (M::ResourceSpans, 1) => Message(M::Resource),
        (M::ResourceSpans, 2) => Message(M::ScopeSpans),
        (M::ResourceSpans, 3) => Str,
        (M::Resource, 1) => Message(M::KeyValue),
        (M::Resource, 2) => Varint,
        (M::Resource, 3) => Message(M::EntityRef),
        (M::EntityRef, 1..=4) => Str,
        (M::ScopeSpans, 1) => Message(M::Scope),
        (M::ScopeSpans, 2) => Message(M::Span),
        (M::ScopeSpans, 3) => Str,
        (M::Scope, 1 | 2) => Str,
        (M::Scope, 3) => Message(M::KeyValue),
        (M::Scope, 4) => Varint,
        (M::Span, 1 | 2 | 4) => Bytes,
        (M::Span, 3 | 5) => Str,
        (M::Span, 6 | 10 | 12 | 14) => Varint,
        (M::Span, 7 | 8) => Fixed64,
        (M::Span, 9) => Message(M::KeyValue),
        (M::Span, 11) => Message(M::Event),
        (M::Span, 13) => Message(M::Link),
        (M::Span, 15) => Message(M::Status),
        (M::Span, 16) => Fixed32,
        (M::Event, 1) => Fixed64,
        (M::Event, 2) => Str,
        (M::Event, 3) => Message(M::KeyValue),
        (M::Event, 4) => Varint,
        (M::Link, 1 | 2) => Bytes,
        (M::Link, 3) => Str,
        (M::Link, 4) => Message(M::KeyValue),
        (M::Link, 5) => Varint,
        (M::Link, 6) => Fixed32,
        (M::Status, 2) => Str,
        (M::Status, 3) => Varint,
        (M::KeyValue, 1) => Str,
        (M::KeyValue, 2) => Message(M::AnyValue),
        (M::KeyValue, 3) => Varint,
        (M::AnyValue, 1) => Str,
        (M::AnyValue, 2 | 3 | 8) => Varint,
        (M::AnyValue, 4) => Fixed64,
        (M::AnyValue, 5) => Message(M::ArrayValue),
        (M::AnyValue, 6) => Message(M::KvList),
        (M::AnyValue, 7) => Bytes,
        (M::ArrayValue, 1) => Message(M::AnyValue),
        (M::KvList, 1) => Message(M::KeyValue),
        _ => Unknown,
    }
}

/// One field as read: its number, wire type, the whole field's bytes (key included) and,
/// for length-delimited fields, the payload; for fixed64 fields, the value.
struct Field<'a> {
    number: u64,
    whole: &'a [u8],
    payload: &'a [u8],
    fixed64: u64,
}

/// Reads the fields of one message body in order.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    fn next(&mut self, msg: Msg, depth: usize) -> Result<Option<Field<'a>>, WireError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let start = self.rest;
        let key = varint(&mut self.rest)?;
        if key > u64::from(u32::MAX) {
            return Err(WireError("invalid key"));
        }
        let (number, wire) = (key >> 3, key & 7);
        if number == 0 {
            return Err(WireError("field number 0"));
        }
        let k = kind(msg, number);
        let mut payload: &[u8] = &[];
        let mut fixed64 = 0;
        match (wire, k) {
            (0, Kind::Varint | Kind::Unknown) => {
                varint(&mut self.rest)?;
            }
            (1, Kind::Fixed64 | Kind::Unknown) => {
                let b = take(&mut self.rest, 8)?;
                fixed64 = u64::from_le_bytes(b.try_into().expect("8 bytes"));
            }
            (5, Kind::Fixed32 | Kind::Unknown) => {
                take(&mut self.rest, 4)?;
            }
            (2, Kind::Str | Kind::Bytes | Kind::Message(_) | Kind::Unknown) => {
                let len = usize::try_from(varint(&mut self.rest)?)
                    .map_err(|_| WireError("length overflows"))?;
                payload = take(&mut self.rest, len)?;
                match k {
                    Kind::Str => {
                        super::walk::utf8(payload).ok_or(WireError("string is not valid UTF-8"))?;
                    }
                    // The levels down to spans are checked by the grouping walk itself.
                    Kind::Message(Msg::ResourceSpans | Msg::ScopeSpans | Msg::Span) => {}
                    Kind::Message(child) => check(payload, child, depth + 1)?,
                    _ => {}
                }
            }
            (3, Kind::Unknown) => self.rest = skip_group(self.rest, number, depth + 1)?,
            _ => return Err(WireError("wire type does not match the field")),
        }
        let used = start.len() - self.rest.len();
        Ok(Some(Field {
            number,
            whole: &start[..used],
            payload,
            fixed64,
        }))
    }
}

/// Checks a whole message body as prost would decode it.
fn check(body: &[u8], msg: Msg, depth: usize) -> Result<(), WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError("messages nest too deeply"));
    }
    let mut fields = Fields::new(body);
    while fields.next(msg, depth)?.is_some() {}
    Ok(())
}

/// Skips the fields of an unknown group up to its end tag, as prost does.
pub(crate) fn skip_group(mut data: &[u8], number: u64, depth: usize) -> Result<&[u8], WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError("messages nest too deeply"));
    }
    loop {
        let key = varint(&mut data)?;
        if key > u64::from(u32::MAX) || key >> 3 == 0 {
            return Err(WireError("invalid key"));
        }
        match key & 7 {
            0 => {
                varint(&mut data)?;
            }
            1 => {
                take(&mut data, 8)?;
            }
            5 => {
                take(&mut data, 4)?;
            }
            2 => {
                let len = usize::try_from(varint(&mut data)?)
                    .map_err(|_| WireError("length overflows"))?;
                take(&mut data, len)?;
            }
            3 => data = skip_group(data, key >> 3, depth + 1)?,
            4 if key >> 3 == number => return Ok(data),
            _ => return Err(WireError("unmatched group end")),
        }
    }
}

/// Keys, lengths and small numbers are one byte: that case is inlined into every walk
/// (it was a quarter of a search's samples when out of line).
#[inline]
pub(crate) fn varint(data: &mut &[u8]) -> Result<u64, WireError> {
    match data.split_first() {
        Some((&b, rest)) if b < 0x80 => {
            *data = rest;
            Ok(u64::from(b))
        }
        _ => varint_long(data),
    }
}

fn varint_long(data: &mut &[u8]) -> Result<u64, WireError> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = data.split_first().ok_or(WireError("truncated varint"))?;
        *data = rest;
        // The tenth byte may only carry the top bit of a u64, as prost requires.
        if i == 9 && b > 1 {
            return Err(WireError("varint overflows 64 bits"));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(WireError("varint longer than 10 bytes"))
}

#[inline]
pub(crate) fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if n > data.len() {
        return Err(WireError("length past the end of the buffer"));
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Ok(head)
}

/// A span as the grouping needs it: its whole field (to copy) and what routes it.
struct SpanRef<'a> {
    whole: &'a [u8],
    trace_id: &'a [u8],
    span_id: &'a [u8],
    start: u64,
    end: u64,
}

fn span_ref<'a>(whole: &'a [u8], body: &'a [u8], depth: usize) -> Result<SpanRef<'a>, WireError> {
    let mut s = SpanRef {
        whole,
        trace_id: &[],
        span_id: &[],
        start: 0,
        end: 0,
    };
    let mut fields = Fields::new(body);
    // Later occurrences of a scalar field win, as on decode.
    while let Some(f) = fields.next(Msg::Span, depth)? {
        match f.number {
            1 => s.trace_id = f.payload,
            2 => s.span_id = f.payload,
            7 => s.start = f.fixed64,
            8 => s.end = f.fixed64,
            _ => {}
        }
    }
    Ok(s)
}

fn valid_span_id(id: &[u8]) -> bool {
    id.len() == 8 && id.iter().any(|&b| b != 0)
}

/// Why a request was not grouped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error(transparent)]
    Invalid(#[from] WireError),
    /// The traces' fragments would pass the bound: each repeats its resource and scope, so
    /// a request whose spans belong to many traces under one large resource multiplies it.
    #[error("grouped by trace the request would take more than {limit} bytes")]
    TooLarge { limit: usize },
}

/// Checks `req` and groups its spans by trace. Spans with a trace ID that is not 16 bytes
/// or all zero, or a span ID that is not 8 bytes or all zero, are counted and left out.
pub fn group_encoded(req: &Bytes) -> Result<Grouped, WireError> {
    group_encoded_within(req, usize::MAX).map_err(|e| match e {
        GroupError::Invalid(e) => e,
        GroupError::TooLarge { .. } => unreachable!("no bound"),
    })
}

/// [`group_encoded`], refusing once the fragments it makes would hold more than
/// `max_bytes` (checked before each is allocated).
pub fn group_encoded_within(req: &Bytes, max_bytes: usize) -> Result<Grouped, GroupError> {
    let mut total = 0usize;
    let mut traces: Vec<TraceBatch> = Vec::new();
    let (mut accepted, mut bad_trace_id, mut bad_span_id) = (0, 0, 0);
    let mut index: std::collections::HashMap<TraceId, usize> = Default::default();
    // Per scope group: (trace index, its spans), reused across groups.
    let mut per_trace: Vec<(usize, Vec<SpanRef<'_>>)> = Vec::new();
    let mut rs_other: Vec<&[u8]> = Vec::new();
    let mut scopes: Vec<&[u8]> = Vec::new();
    let mut ss_other: Vec<&[u8]> = Vec::new();
    let mut top = Fields::new(req);
    while let Some(f) = top.next(Msg::Request, 0)? {
        // Unknown fields of the request itself are checked and dropped, as decoding drops them.
        if f.number != 1 {
            continue;
        }
        let rs = f.payload;
        rs_other.clear();
        scopes.clear();
        let mut fields = Fields::new(rs);
        while let Some(f) = fields.next(Msg::ResourceSpans, 1)? {
            if f.number == 2 {
                scopes.push(f.payload);
            } else {
                rs_other.push(f.whole);
            }
        }
        for ss in &scopes {
            ss_other.clear();
            per_trace.clear();
            let mut fields = Fields::new(ss);
            while let Some(f) = fields.next(Msg::ScopeSpans, 2)? {
                if f.number != 2 {
                    ss_other.push(f.whole);
                    continue;
                }
                let span = span_ref(f.whole, f.payload, 3)?;
                let id = match TraceId::from_bytes(span.trace_id) {
                    Ok(id) if span.trace_id.len() == 16 => id,
                    _ => {
                        bad_trace_id += 1;
                        continue;
                    }
                };
                if !valid_span_id(span.span_id) {
                    bad_span_id += 1;
                    continue;
                }
                accepted += 1;
                let t = *index.entry(id).or_insert_with(|| {
                    traces.push(TraceBatch {
                        id,
                        data: Fragments::default(),
                        spans: 0,
                    });
                    traces.len() - 1
                });
                // Requests usually carry few traces per scope: a short linear search wins.
                match per_trace.iter_mut().find(|(i, _)| *i == t) {
                    Some((_, v)) => v.push(span),
                    None => per_trace.push((t, vec![span])),
                }
            }
            // Each trace's chunk repeats the resource and scope fields (plus a few bytes
            // of keys and lengths).
            let shared = rs_other.iter().map(|f| f.len()).sum::<usize>()
                + ss_other.iter().map(|f| f.len()).sum::<usize>()
                + 16;
            for (_, spans) in &per_trace {
                let own: usize = spans.iter().map(|s| s.whole.len()).sum();
                total = total.saturating_add(shared + own);
            }
            if total > max_bytes {
                return Err(GroupError::TooLarge { limit: max_bytes });
            }
            for (t, spans) in &per_trace {
                let trace = &mut traces[*t];
                trace.spans += spans.len();
                trace.data.push_encoded(
                    &rs_other,
                    &ss_other,
                    spans.iter().map(|s| (s.whole, s.start, s.end)),
                );
            }
        }
    }
    Ok(Grouped::from_parts(
        traces,
        accepted,
        bad_trace_id,
        bad_span_id,
    ))
}

/// Checks an encoded `TracesData` (or request: both are `resource_spans` at field 1) as
/// decoding would, and returns its spans' earliest start and latest end (`u64::MAX`, 0
/// when it holds none): what a trace read back from the ingest log or another node needs,
/// without building its structs.
pub(crate) fn span_times(data: &[u8]) -> Result<(u64, u64), WireError> {
    let (mut start, mut end) = (u64::MAX, 0);
    let mut top = Fields::new(data);
    while let Some(rs) = top.next(Msg::Request, 0)? {
        if rs.number != 1 {
            continue;
        }
        let mut fields = Fields::new(rs.payload);
        while let Some(ss) = fields.next(Msg::ResourceSpans, 1)? {
            if ss.number != 2 {
                continue;
            }
            let mut spans = Fields::new(ss.payload);
            while let Some(f) = spans.next(Msg::ScopeSpans, 2)? {
                if f.number == 2 {
                    let s = span_ref(f.whole, f.payload, 3)?;
                    start = start.min(s.start);
                    end = end.max(s.end.max(s.start));
                }
            }
        }
    }
    Ok((start, end))
}

/// Whether `pred` holds for the encoded `Resource` of some `ResourceSpans` in `chunk` (a
/// `TracesData` body), walking only the top two levels: a search looking for a resource
/// string reads a few hundred bytes of a trace instead of all of it. `None` when the bytes
/// do not parse (then the caller cannot rule anything out).
pub(crate) fn any_resource(chunk: &[u8], mut pred: impl FnMut(&[u8]) -> bool) -> Option<bool> {
    let mut top = chunk;
    while !top.is_empty() {
        let (number, body) = next_field(&mut top)?;
        let Some(mut rs) = body.filter(|_| number == 1) else {
            continue;
        };
        while !rs.is_empty() {
            let (number, body) = next_field(&mut rs)?;
            if let Some(resource) = body.filter(|_| number == 1) {
                if pred(resource) {
                    return Some(true);
                }
            }
        }
    }
    Some(false)
}

/// One field of a message body: its number and, for a length-delimited field, its payload.
/// `None` for bytes that do not parse, and for groups (never in OTLP traces).
fn next_field<'a>(data: &mut &'a [u8]) -> Option<(u64, Option<&'a [u8]>)> {
    let key = varint(data).ok()?;
    let body = match key & 7 {
        0 => {
            varint(data).ok()?;
            None
        }
        1 => {
            take(data, 8).ok()?;
            None
        }
        5 => {
            take(data, 4).ok()?;
            None
        }
        2 => {
            let len = usize::try_from(varint(data).ok()?).ok()?;
            Some(take(data, len).ok()?)
        }
        _ => return None,
    };
    Some((key >> 3, body))
}
