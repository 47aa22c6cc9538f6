//! Record framing and the payload layout.

use std::ops::Range;

use bytes::{BufMut, Bytes};

use super::MAX_RECORD;
use crate::model::TenantId;

pub const HEADER_LEN: usize = 8;

pub(super) fn encode_into(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.reserve(HEADER_LEN + payload.len());
    buf.put_u32_le(payload.len() as u32);
    buf.put_u32_le(crc32c::crc32c(payload));
    buf.extend_from_slice(payload);
}

/// Splits a segment into the payload ranges of its intact records and the length of the
/// intact prefix; anything after the first bad record is a torn or corrupt tail.
pub(super) fn parse_segment(data: &[u8]) -> (Vec<Range<usize>>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while data.len() - pos >= HEADER_LEN {
        let len =
            u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        let start = pos + HEADER_LEN;
        if len > MAX_RECORD || data.len() - start < len {
            break;
        }
        let payload = &data[start..start + len];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        out.push(start..start + len);
        pos = start + len;
    }
    (out, pos)
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("wal record too short")]
    Short,
    #[error("wal record has unknown kind {0}")]
    Kind(u8),
    #[error("wal record has a bad tenant: {0}")]
    Tenant(String),
}

const KIND_OTLP_TRACES: u8 = 1;

/// A payload is `[kind u8][tenant len u8][tenant][OTLP ExportTraceServiceRequest protobuf]`.
pub fn encode_payload(tenant: &TenantId, otlp: &[u8]) -> Bytes {
    let t = tenant.as_str().as_bytes();
    let mut b = Vec::with_capacity(2 + t.len() + otlp.len());
    b.push(KIND_OTLP_TRACES);
    b.push(t.len() as u8);
    b.extend_from_slice(t);
    b.extend_from_slice(otlp);
    Bytes::from(b)
}

pub fn decode_payload(p: &Bytes) -> Result<(TenantId, Bytes), RecordError> {
    if p.len() < 2 {
        return Err(RecordError::Short);
    }
    if p[0] != KIND_OTLP_TRACES {
        return Err(RecordError::Kind(p[0]));
    }
    let tl = p[1] as usize;
    if p.len() < 2 + tl {
        return Err(RecordError::Short);
    }
    let name =
        std::str::from_utf8(&p[2..2 + tl]).map_err(|e| RecordError::Tenant(e.to_string()))?;
    let tenant = TenantId::new(name).map_err(|e| RecordError::Tenant(e.to_string()))?;
    Ok((tenant, p.slice(2 + tl..)))
}
