//! The ingest-log record: what a distributor produces and a consumer reads back. Its byte
//! layout is the contract in `schema/ingest-record.md`; partitioning lives here too, since
//! every distributor must pick the same partition for a trace.

use bytes::{Buf, BufMut, Bytes};

use crate::model::{Fragments, TenantId, TraceBatch, TraceId};

/// The only version written so far; readers refuse any other.
pub(crate) const VERSION: u8 = 1;

/// A tenant id is at most 150 bytes (`TenantId`), so its length fits one byte.
const MAX_TENANT: usize = 150;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RecordError {
    #[error("ingest record is truncated: {0}")]
    Truncated(&'static str),
    #[error("ingest record version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    #[error("ingest record has a bad tenant id: {0}")]
    Tenant(String),
    #[error("ingest record has {0} trailing bytes")]
    Trailing(usize),
    #[error("ingest record trace {trace} does not decode as otlp: {reason}")]
    Otlp { trace: TraceId, reason: String },
}

/// One tenant's traces bound for one partition.
pub(crate) struct Record {
    pub(crate) tenant: TenantId,
    pub(crate) traces: Vec<TraceBatch>,
}

impl Record {
    /// Bytes the encoding will take.
    pub(crate) fn encoded_len(&self) -> usize {
        2 + self.tenant.as_str().len()
            + 4
            + self
                .traces
                .iter()
                .map(|t| trace_entry_len(&t.data))
                .sum::<usize>()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded_len());
        let tenant = self.tenant.as_str().as_bytes();
        b.put_u8(VERSION);
        // TenantId guarantees at most 150 bytes.
        b.put_u8(tenant.len().min(MAX_TENANT) as u8);
        b.put_slice(&tenant[..tenant.len().min(MAX_TENANT)]);
        b.put_u32(self.traces.len() as u32);
        for t in &self.traces {
            b.put_slice(&t.id.0);
            b.put_u32(t.spans as u32);
            b.put_u32(t.data.len() as u32);
            b.put_slice(&t.data.concat());
        }
        b
    }

    /// Decodes and checks a record: every trace's bytes must parse as OTLP, so a corrupt
    /// record is refused whole instead of poisoning a block later.
    pub(crate) fn decode(mut b: Bytes) -> Result<Record, RecordError> {
        if b.remaining() < 2 {
            return Err(RecordError::Truncated("header"));
        }
        let version = b.get_u8();
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        let tl = b.get_u8() as usize;
        if b.remaining() < tl {
            return Err(RecordError::Truncated("tenant"));
        }
        let name = b.split_to(tl);
        let name = std::str::from_utf8(&name).map_err(|e| RecordError::Tenant(e.to_string()))?;
        let tenant = TenantId::new(name).map_err(|e| RecordError::Tenant(e.to_string()))?;
        if b.remaining() < 4 {
            return Err(RecordError::Truncated("trace count"));
        }
        let n = b.get_u32() as usize;
        // Each entry takes at least 24 bytes: a count larger than that is corrupt, and must
        // not size an allocation.
        if n > b.remaining() / 24 {
            return Err(RecordError::Truncated("trace entries"));
        }
        let mut traces = Vec::with_capacity(n);
        for _ in 0..n {
            if b.remaining() < 24 {
                return Err(RecordError::Truncated("trace entry"));
            }
            let mut id = [0u8; 16];
            b.copy_to_slice(&mut id);
            let id = TraceId(id);
            let spans = b.get_u32() as usize;
            let len = b.get_u32() as usize;
            if b.remaining() < len {
                return Err(RecordError::Truncated("trace data"));
            }
            let data = b.split_to(len);
            let data = Fragments::from_encoded(data).map_err(|e| RecordError::Otlp {
                trace: id,
                reason: e.to_string(),
            })?;
            traces.push(TraceBatch { id, data, spans });
        }
        if b.has_remaining() {
            return Err(RecordError::Trailing(b.remaining()));
        }
        Ok(Record { tenant, traces })
    }
}

fn trace_entry_len(data: &Fragments) -> usize {
    16 + 4 + 4 + data.len()
}

/// The partition of a trace: FNV-1a (64-bit) over the tenant, a zero byte, and the trace
/// ID, modulo the partition count. Written out here rather than taken from a hasher crate
/// so its output can never change under a dependency update: every distributor, of every
/// version, must send a trace to the same partition.
pub(crate) fn partition_for(tenant: &TenantId, trace: &TraceId, partitions: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let bytes = tenant
        .as_str()
        .as_bytes()
        .iter()
        .chain(std::iter::once(&0u8))
        .chain(trace.0.iter());
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    (h % u64::from(partitions.max(1))) as u32
}

/// Groups a request's traces into records: one per partition, split further so no record
/// passes `max_bytes` (a single trace larger than that gets a record of its own).
pub(crate) fn records_by_partition(
    tenant: &TenantId,
    traces: Vec<TraceBatch>,
    partitions: u32,
    max_bytes: usize,
) -> Vec<(u32, Record)> {
    let mut per: std::collections::BTreeMap<u32, Vec<Vec<TraceBatch>>> = Default::default();
    let header = 2 + tenant.as_str().len() + 4;
    let mut sizes: std::collections::BTreeMap<u32, usize> = Default::default();
    for t in traces {
        let p = partition_for(tenant, &t.id, partitions);
        let entry = trace_entry_len(&t.data);
        let groups = per.entry(p).or_default();
        let size = sizes.entry(p).or_insert(header);
        if groups.is_empty() || (*size + entry > max_bytes && *size > header) {
            groups.push(Vec::new());
            *size = header;
        }
        *size += entry;
        groups.last_mut().expect("pushed above").push(t);
    }
    per.into_iter()
        .flat_map(|(p, groups)| {
            groups.into_iter().map(move |traces| {
                (
                    p,
                    Record {
                        tenant: tenant.clone(),
                        traces,
                    },
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ResourceSpans, ScopeSpans, Span};

    fn batch(trace: u8, spans: u8) -> TraceBatch {
        let s: Vec<Span> = (1..=spans)
            .map(|i| Span {
                trace_id: vec![trace; 16],
                span_id: vec![0, 0, 0, 0, 0, 0, 0, i],
                name: format!("s{i}"),
                ..Default::default()
            })
            .collect();
        let refs: Vec<&Span> = s.iter().collect();
        let mut data = Fragments::default();
        data.push(None, "", None, "", &refs);
        TraceBatch {
            id: TraceId([trace; 16]),
            data,
            spans: spans as usize,
        }
    }

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[test]
    fn round_trips_tenant_and_traces() {
        let r = Record {
            tenant: tenant("team-a"),
            traces: vec![batch(1, 2), batch(2, 3)],
        };
        let bytes = r.encode();
        assert_eq!(bytes.len(), r.encoded_len());
        assert_eq!(bytes[0], VERSION);
        let back = Record::decode(Bytes::from(bytes)).unwrap();
        assert_eq!(back.tenant.as_str(), "team-a");
        assert_eq!(back.traces.len(), 2);
        assert_eq!(back.traces[1].id, TraceId([2; 16]));
        assert_eq!(back.traces[1].spans, 3);
        let rs: Vec<ResourceSpans> = back.traces[1].data.decode().unwrap();
        let names: Vec<&str> = rs
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s: &ScopeSpans| &s.spans)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["s1", "s2", "s3"]);
    }

    #[test]
    fn refuses_every_truncation_and_bad_header_without_panicking() {
        let good = Record {
            tenant: tenant("t"),
            traces: vec![batch(7, 2)],
        }
        .encode();
        for cut in 0..good.len() {
            assert!(
                Record::decode(Bytes::copy_from_slice(&good[..cut])).is_err(),
                "a record cut at {cut} bytes decoded"
            );
        }
        let mut v2 = good.clone();
        v2[0] = 2;
        assert_eq!(
            Record::decode(Bytes::from(v2)).err(),
            Some(RecordError::Version(2))
        );
        let mut slash = good.clone();
        slash[2] = b'/';
        assert!(matches!(
            Record::decode(Bytes::from(slash)),
            Err(RecordError::Tenant(_))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            Record::decode(Bytes::from(trailing)).err(),
            Some(RecordError::Trailing(1))
        );
        // A huge trace count must not allocate or loop: refused as truncated.
        let mut count = good;
        count[3..7].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Record::decode(Bytes::from(count)).is_err());
    }

    #[test]
    fn corrupt_otlp_is_refused() {
        let mut r = Record {
            tenant: tenant("t"),
            traces: vec![batch(3, 1)],
        }
        .encode();
        // The first byte of the OTLP data: field 1 length-delimited, turned into field 0.
        let at = 2 + 1 + 4 + 24;
        r[at] = 0x00;
        assert!(matches!(
            Record::decode(Bytes::from(r)),
            Err(RecordError::Otlp { .. })
        ));
    }

    #[test]
    fn partitioning_is_stable_and_spreads() {
        // Pinned values: changing the hash would send a live trace to two partitions
        // across a rolling upgrade.
        let t = tenant("single-tenant");
        assert_eq!(
            partition_for(&t, &TraceId([0x11; 16]), 16),
            partition_for(&t, &TraceId([0x11; 16]), 16)
        );
        let pinned: Vec<u32> = (1..=8u8)
            .map(|i| partition_for(&t, &TraceId([i; 16]), 1000))
            .collect();
        assert_eq!(pinned, PINNED);
        // The tenant is part of the key.
        let differs = (0..64u8)
            .filter(|i| {
                partition_for(&t, &TraceId([*i; 16]), 1 << 16)
                    != partition_for(&tenant("other"), &TraceId([*i; 16]), 1 << 16)
            })
            .count();
        assert!(differs > 60, "{differs}");
        // Spread: 4096 random-ish ids over 8 partitions, none empty or over twice its share.
        let mut counts = [0usize; 8];
        for i in 0..4096u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            id[8..12].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
            counts[partition_for(&t, &TraceId(id), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 256 && c < 1024), "{counts:?}");
        assert_eq!(partition_for(&t, &TraceId([9; 16]), 1), 0);
        assert_eq!(partition_for(&t, &TraceId([9; 16]), 0), 0);
    }

    // Computed independently from the spec in schema/ingest-record.md.
    const PINNED: [u32; 8] = [340, 316, 860, 228, 372, 276, 892, 820];

    #[test]
    fn records_group_by_partition_and_respect_the_size_bound() {
        let t = tenant("t");
        let traces: Vec<TraceBatch> = (1..=40u8).map(|i| batch(i, 3)).collect();
        let one = trace_entry_len(&batch(1, 3).data);
        let records = records_by_partition(&t, traces, 4, 7 + one * 3);
        let total: usize = records.iter().map(|(_, r)| r.traces.len()).sum();
        assert_eq!(total, 40);
        for (p, r) in &records {
            assert!(r.traces.len() <= 3, "{}", r.traces.len());
            assert!(r.encoded_len() <= 7 + one * 3);
            for tr in &r.traces {
                assert_eq!(partition_for(&t, &tr.id, 4), *p);
            }
        }
        // A trace larger than the bound still goes, alone.
        let big = records_by_partition(&t, vec![batch(1, 50), batch(1, 50)], 4, 64);
        assert_eq!(big.len(), 2);
    }
}
