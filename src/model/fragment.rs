//! A trace's spans held as protobuf bytes instead of structs: about a quarter of the memory,
//! and free to hand to the WAL or decode on demand.
//!
//! Each chunk is a sequence of `ResourceSpans` entries encoded as field 1, which is exactly
//! the wire form of both OTLP `TracesData` and `ExportTraceServiceRequest`: chunks
//! concatenate into a valid message, so a WAL record can reuse them without re-encoding.
//! Chunks are immutable and shared, so a snapshot of a live trace costs a few refcounts.

use bytes::Bytes;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, message, WireType};
use prost::Message;

use super::{InstrumentationScope, Resource, ResourceSpans, Span, TracesData};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragments {
    chunks: Vec<Bytes>,
    len: usize,
    /// Earliest span start and latest span end (unix ns) over every chunk, kept as spans
    /// are pushed: search orders and prunes live traces by time without decoding them.
    start: u64,
    end: u64,
}

impl Default for Fragments {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            start: u64::MAX,
            end: 0,
        }
    }
}

impl Fragments {
    /// One already-encoded group (a whole request in tests, a trace read back from the
    /// ingest log or another node), checked once as decoding would check it, without
    /// decoding it, and its time range learnt on the way.
    pub(crate) fn from_encoded(bytes: Bytes) -> Result<Self, super::WireError> {
        let (start, end) = super::wire::span_times(&bytes)?;
        Ok(Self {
            len: bytes.len(),
            chunks: vec![bytes],
            start,
            end,
        })
    }

    /// Bytes taken as they are, times unknown (`start() > end()`): for tests that need a
    /// chunk that does not decode.
    #[cfg(test)]
    pub(crate) fn from_encoded_unchecked(bytes: Bytes) -> Self {
        Self {
            len: bytes.len(),
            chunks: vec![bytes],
            ..Self::default()
        }
    }

    fn note_times(&mut self, s: &Span) {
        self.start = self.start.min(s.start_time_unix_nano);
        self.end = self
            .end
            .max(s.end_time_unix_nano.max(s.start_time_unix_nano));
    }

    /// Earliest span start (unix ns); `u64::MAX` when no span is known.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Latest span end (unix ns); 0 when no span is known.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Appends one resource/scope group holding `spans`, without copying them into structs.
    pub fn push(
        &mut self,
        resource: Option<&Resource>,
        resource_schema_url: &str,
        scope: Option<&InstrumentationScope>,
        scope_schema_url: &str,
        spans: &[&Span],
    ) {
        let str_len = |tag: u32, s: &str| {
            if s.is_empty() {
                0
            } else {
                key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
            }
        };
        let scope_len = scope.map_or(0, |s| message::encoded_len(1, s))
            + spans
                .iter()
                .map(|s| message::encoded_len(2, *s))
                .sum::<usize>()
            + str_len(3, scope_schema_url);
        let rs_len = resource.map_or(0, |r| message::encoded_len(1, r))
            + key_len(2)
            + encoded_len_varint(scope_len as u64)
            + scope_len
            + str_len(3, resource_schema_url);
        let mut chunk = Vec::with_capacity(key_len(1) + encoded_len_varint(rs_len as u64) + rs_len);
        let buf = &mut chunk;
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint(rs_len as u64, buf);
        if let Some(r) = resource {
            message::encode(1, r, buf);
        }
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(scope_len as u64, buf);
        if let Some(s) = scope {
            message::encode(1, s, buf);
        }
        for s in spans {
            message::encode(2, *s, buf);
            self.note_times(s);
        }
        if !scope_schema_url.is_empty() {
            encode_key(3, WireType::LengthDelimited, buf);
            encode_varint(scope_schema_url.len() as u64, buf);
            buf.extend_from_slice(scope_schema_url.as_bytes());
        }
        if !resource_schema_url.is_empty() {
            encode_key(3, WireType::LengthDelimited, buf);
            encode_varint(resource_schema_url.len() as u64, buf);
            buf.extend_from_slice(resource_schema_url.as_bytes());
        }
        self.len += chunk.len();
        self.push_chunk(Bytes::from(chunk));
    }

    /// Appends one resource/scope group made of received bytes: `rs_fields` and
    /// `ss_fields` are whole fields (key included) of the `ResourceSpans` and `ScopeSpans`
    /// other than their lists, `spans` whole `spans` fields with their start and end times.
    /// Decoding the result gives what decoding the request gave for these spans.
    pub(crate) fn push_encoded<'a>(
        &mut self,
        rs_fields: &[&[u8]],
        ss_fields: &[&[u8]],
        spans: impl Iterator<Item = (&'a [u8], u64, u64)> + Clone,
    ) {
        let ss_len = ss_fields.iter().map(|f| f.len()).sum::<usize>()
            + spans.clone().map(|(b, _, _)| b.len()).sum::<usize>();
        let rs_len = rs_fields.iter().map(|f| f.len()).sum::<usize>()
            + key_len(2)
            + encoded_len_varint(ss_len as u64)
            + ss_len;
        let mut chunk = Vec::with_capacity(key_len(1) + encoded_len_varint(rs_len as u64) + rs_len);
        encode_key(1, WireType::LengthDelimited, &mut chunk);
        encode_varint(rs_len as u64, &mut chunk);
        for f in rs_fields {
            chunk.extend_from_slice(f);
        }
        encode_key(2, WireType::LengthDelimited, &mut chunk);
        encode_varint(ss_len as u64, &mut chunk);
        for f in ss_fields {
            chunk.extend_from_slice(f);
        }
        for (b, start, end) in spans {
            chunk.extend_from_slice(b);
            self.start = self.start.min(start);
            self.end = self.end.max(end.max(start));
        }
        self.len += chunk.len();
        self.push_chunk(Bytes::from(chunk));
    }

    fn push_chunk(&mut self, chunk: Bytes) {
        // Most small traces arrive whole: one handle, not the four a growing Vec starts at.
        if self.chunks.capacity() == 0 {
            self.chunks.reserve_exact(1);
        }
        self.chunks.push(chunk);
    }

    /// Chunk handles allocated: with [`Fragments::len`], what the trace holds in memory.
    pub fn chunk_capacity(&self) -> usize {
        self.chunks.capacity()
    }

    pub fn extend(&mut self, other: &Fragments) {
        self.chunks.extend(other.chunks.iter().cloned());
        self.len += other.len;
        self.start = self.start.min(other.start);
        self.end = self.end.max(other.end);
    }

    /// The encoded chunks, each whole `ResourceSpans` entries.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the chunks to `out`: [`Fragments::concat`] into a buffer of the caller's.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
    }

    /// One contiguous encoding (a valid `TracesData` / `ExportTraceServiceRequest`).
    pub fn concat(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out
    }

    pub fn decode(&self) -> Result<Vec<ResourceSpans>, prost::DecodeError> {
        let mut out = Vec::new();
        for c in &self.chunks {
            out.extend(TracesData::decode(c.as_ref())?.resource_spans);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{any_value, AnyValue, KeyValue, ScopeSpans};

    #[test]
    fn encodes_like_prost_and_concatenates() {
        let resource = Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("svc".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "lib".into(),
            version: "1".into(),
            ..Default::default()
        };
        let spans: Vec<Span> = (1..4u8)
            .map(|i| Span {
                trace_id: vec![9; 16],
                span_id: vec![i; 8],
                name: format!("op{i}"),
                ..Default::default()
            })
            .collect();
        let refs: Vec<&Span> = spans.iter().collect();
        let mut f = Fragments::default();
        f.push(Some(&resource), "rs-url", Some(&scope), "ss-url", &refs);
        f.push(None, "", None, "", &refs[..1]);
        let expect = vec![
            ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans: spans.clone(),
                    schema_url: "ss-url".into(),
                }],
                schema_url: "rs-url".into(),
            },
            ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans: spans[..1].to_vec(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            },
        ];
        assert_eq!(f.decode().unwrap(), expect);
        // Byte-identical to prost's own encoding of the same message.
        let prost_bytes = TracesData {
            resource_spans: expect,
        }
        .encode_to_vec();
        assert_eq!(f.concat(), prost_bytes);
    }
}
