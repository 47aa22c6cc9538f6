//! Record framing and the payload layout.

use std::io::Read;
use std::ops::Range;

use bytes::{BufMut, Bytes};

use super::MAX_RECORD;
use crate::model::{Fragments, TenantId};

pub(crate) const HEADER_LEN: usize = 8;

pub(super) fn encode_into(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.reserve(HEADER_LEN + payload.len());
    buf.put_u32_le(payload.len() as u32);
    buf.put_u32_le(crc32c::crc32c(payload));
    buf.extend_from_slice(payload);
}

/// What a segment holds: the payload ranges of its intact records, the end of the last
/// one, and what had to be skipped to find them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Parsed {
    pub(crate) records: Vec<Range<usize>>,
    /// End of the last intact record: anything after it is a torn or corrupt tail.
    pub(crate) good_len: usize,
    /// Corrupt stretches between intact records that were stepped over.
    pub(crate) skipped_regions: usize,
    /// Bytes in those stretches (not counting the tail).
    pub(crate) skipped_bytes: usize,
}

/// Reads the record starting at `pos`, if one is intact there.
fn record_at(data: &[u8], pos: usize) -> Option<Range<usize>> {
    if data.len() - pos < HEADER_LEN {
        return None;
    }
    let len = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
    let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
    let start = pos + HEADER_LEN;
    if len > MAX_RECORD || data.len() - start < len {
        return None;
    }
    (crc32c::crc32c(&data[start..start + len]) == crc).then_some(start..start + len)
}

/// Splits a segment into its intact records. A corrupt record in the middle (a bad sector,
/// a flipped bit) does not cost the records after it: the parser resynchronises on the next
/// offset where a header's length fits and its checksum matches. Empty records are not
/// accepted while resynchronising, since a run of zero bytes (a torn page) would match.
/// Checksumming candidates is bounded to a few times the segment's size, so garbage full
/// of plausible lengths cannot make replay quadratic; past that the rest is a tail.
pub(super) fn parse_segment(data: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    let mut pos = 0;
    let mut budget = data.len().saturating_mul(4).saturating_add(64 << 20);
    while pos < data.len() {
        if let Some(r) = record_at(data, pos) {
            pos = r.end;
            p.records.push(r);
            p.good_len = pos;
            continue;
        }
        let next = (pos + 1..data.len().saturating_sub(HEADER_LEN - 1)).find(|&q| {
            if budget == 0 {
                return true;
            }
            let len = u32::from_le_bytes([data[q], data[q + 1], data[q + 2], data[q + 3]]) as usize;
            if len == 0 || len > MAX_RECORD || data.len() - q - HEADER_LEN < len {
                return false;
            }
            budget = budget.saturating_sub(len);
            record_at(data, q).is_some()
        });
        let next = next.filter(|_| budget > 0);
        match next {
            Some(q) => {
                p.skipped_regions += 1;
                p.skipped_bytes += q - pos;
                pos = q;
            }
            None => break,
        }
    }
    p
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("wal record too short")]
    Short,
    #[error("wal record has unknown kind {0}")]
    Kind(u8),
    #[error("wal record has a bad tenant: {0}")]
    Tenant(String),
    #[error("wal record cannot be inflated: {0}")]
    Inflate(std::io::Error),
}

const KIND_OTLP_TRACES: u8 = 1;
/// The request as a gzip body (one or more members), as the exporter sent it.
const KIND_OTLP_TRACES_GZIP: u8 = 2;

/// A payload is `[kind u8][tenant len u8][tenant][OTLP ExportTraceServiceRequest protobuf]`.
pub(crate) fn encode_payload(tenant: &TenantId, otlp: &[u8]) -> Bytes {
    payload(KIND_OTLP_TRACES, tenant, otlp)
}

/// [`encode_payload`] of the request whose gzip encoding is `gzip`, kept compressed.
pub(crate) fn encode_payload_gzip(tenant: &TenantId, gzip: &[u8]) -> Bytes {
    payload(KIND_OTLP_TRACES_GZIP, tenant, gzip)
}

fn payload(kind: u8, tenant: &TenantId, body: &[u8]) -> Bytes {
    let t = tenant.as_str().as_bytes();
    let mut b = Vec::with_capacity(2 + t.len() + body.len());
    b.push(kind);
    b.push(t.len() as u8);
    b.extend_from_slice(t);
    b.extend_from_slice(body);
    Bytes::from(b)
}

/// [`encode_payload`] of the concatenation of `parts` (each a valid OTLP encoding), copied
/// once.
pub(crate) fn encode_payload_parts(tenant: &TenantId, parts: &[Fragments]) -> Bytes {
    let t = tenant.as_str().as_bytes();
    let len: usize = parts.iter().map(Fragments::len).sum();
    let mut b = Vec::with_capacity(2 + t.len() + len);
    b.push(KIND_OTLP_TRACES);
    b.push(t.len() as u8);
    b.extend_from_slice(t);
    for p in parts {
        p.write_to(&mut b);
    }
    Bytes::from(b)
}

pub(crate) fn decode_payload(p: &Bytes) -> Result<(TenantId, Bytes), RecordError> {
    if p.len() < 2 {
        return Err(RecordError::Short);
    }
    let kind = p[0];
    if kind != KIND_OTLP_TRACES && kind != KIND_OTLP_TRACES_GZIP {
        return Err(RecordError::Kind(kind));
    }
    let tl = p[1] as usize;
    if p.len() < 2 + tl {
        return Err(RecordError::Short);
    }
    let name =
        std::str::from_utf8(&p[2..2 + tl]).map_err(|e| RecordError::Tenant(e.to_string()))?;
    let tenant = TenantId::new(name).map_err(|e| RecordError::Tenant(e.to_string()))?;
    let body = p.slice(2 + tl..);
    if kind == KIND_OTLP_TRACES {
        return Ok((tenant, body));
    }
    // The receiver inflated these bytes within its message limit; the record's checksum
    // held, so the bound here only guards against a bug, not against hostile input.
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&body[..])
        .take(MAX_RECORD as u64)
        .read_to_end(&mut out)
        .map_err(RecordError::Inflate)?;
    Ok((tenant, Bytes::from(out)))
}
