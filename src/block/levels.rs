//! A check of every data page of a repeated column, made as the page passes to the
//! decoders of a reader that skips rows (`block::pages`): it must hold as many repetition
//! levels as its header counts values. parquet's `skip_records` loops forever on a page whose levels end early (its
//! read path checks this, its skip path does not), so a corrupt block would pin a blocking
//! thread; checked here, it fails fast with an error instead. Counting levels reads only
//! run headers.

use parquet::basic::Encoding;
use parquet::column::page::Page;
use parquet::schema::types::ColumnDescriptor;

/// Whether `page`, of `column`, holds as many repetition levels as it counts values;
/// the error says what is short.
pub(super) fn check_rep_levels(page: &Page, column: &ColumnDescriptor) -> Result<(), String> {
    let max_rep = column.max_rep_level();
    if max_rep <= 0 {
        // Without repetition levels every level is a row: skipping always progresses.
        return Ok(());
    }
    let bit_width = bit_width(max_rep);
    let (levels, values) = match page {
        Page::DataPage {
            buf,
            num_values,
            rep_level_encoding,
            ..
        } => (
            v1_rep_levels(buf, *rep_level_encoding, bit_width, *num_values as usize)?,
            *num_values as usize,
        ),
        Page::DataPageV2 {
            buf,
            num_values,
            rep_levels_byte_len,
            ..
        } => {
            let data = buf
                .get(..*rep_levels_byte_len as usize)
                .ok_or("repetition levels past the page end")?;
            (
                count_hybrid(data, bit_width, *num_values as usize),
                *num_values as usize,
            )
        }
        Page::DictionaryPage { .. } => return Ok(()),
    };
    if levels < values {
        return Err(format!("{levels} repetition levels for {values} values"));
    }
    Ok(())
}

/// Repetition levels of a v1 data page: a 4-byte length, then RLE/bit-packed runs (or,
/// with the deprecated BIT_PACKED encoding, bare bit-packed values).
fn v1_rep_levels(
    buf: &[u8],
    encoding: Encoding,
    bit_width: usize,
    want: usize,
) -> Result<usize, String> {
    match encoding {
        Encoding::RLE => {
            let len = v1_levels_len(buf, encoding, bit_width, want)
                .ok_or("repetition levels past the page end")?;
            Ok(count_hybrid(&buf[4..len], bit_width, want))
        }
        #[allow(deprecated)]
        Encoding::BIT_PACKED => Ok(buf.len().saturating_mul(8) / bit_width.max(1)),
        other => Err(format!("repetition levels in unsupported encoding {other}")),
    }
}

/// Bits per level for levels up to `max`.
pub(super) fn bit_width(max: i16) -> usize {
    16 - (max as u16).leading_zeros() as usize
}

/// The bytes the `n` levels at the start of a v1 data page take: RLE levels are prefixed
/// by their length, bit-packed ones take `ceil(n * bit_width / 8)`. `None` when they
/// overrun `buf` or the encoding is not one levels use.
#[allow(deprecated)] // BIT_PACKED levels: old writers still produce them
pub(super) fn v1_levels_len(
    buf: &[u8],
    encoding: Encoding,
    bit_width: usize,
    n: usize,
) -> Option<usize> {
    let len = match encoding {
        Encoding::RLE => 4 + u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize,
        Encoding::BIT_PACKED => n.checked_mul(bit_width)?.div_ceil(8),
        _ => return None,
    };
    (len <= buf.len()).then_some(len)
}

/// How many values the RLE/bit-packed hybrid runs in `data` hold, counting up to `want`.
fn count_hybrid(mut data: &[u8], bit_width: usize, want: usize) -> usize {
    let value_bytes = bit_width.div_ceil(8);
    let mut n = 0usize;
    while n < want && !data.is_empty() {
        let Some((header, rest)) = varint(data) else {
            break;
        };
        data = rest;
        if header & 1 == 1 {
            // Bit-packed: groups of 8 values, `bit_width` bytes per group; a cut-off last
            // group holds what its bytes hold.
            let groups = usize::try_from(header >> 1).unwrap_or(usize::MAX);
            let bytes = groups.saturating_mul(bit_width);
            let have = bytes.min(data.len());
            n = n.saturating_add(have.saturating_mul(8) / bit_width.max(1));
            data = &data[have..];
        } else {
            if data.len() < value_bytes {
                break;
            }
            n = n.saturating_add(usize::try_from(header >> 1).unwrap_or(usize::MAX));
            data = &data[value_bytes..];
        }
    }
    n
}

/// An unsigned LEB128 varint at the start of `data`, and what follows it.
pub(super) fn varint(data: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, &b) in data.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some((v, &data[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{
        decode_footer, find_trace, find_trace_in_pages, plan_lookup, row_group_byte_range,
        LookupPlan,
    };
    use crate::model::TraceId;
    use bytes::Bytes;

    /// The fuzzer's block whose levels end before its page headers' value counts: every
    /// lookup that would skip rows in it returns an error naming the page (it used to spin
    /// forever in parquet's `skip_records`).
    #[test]
    fn truncated_levels_fail_fast_instead_of_spinning() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/block/regress-parquet-skip-records-loop");
        let data = Bytes::from(std::fs::read(path).unwrap());
        // On a thread, so a spin fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(lookup_errors(data)));
        let errors = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("lookups in the corrupt block finish");
        assert!(
            errors.iter().any(|e| e.contains("repetition levels for")),
            "{errors:?}"
        );
    }

    fn lookup_errors(data: Bytes) -> Vec<String> {
        let md = decode_footer(data.clone(), data.len() as u64).unwrap();
        let mut errors = Vec::new();
        // IDs the trace_id column holds: the lookups reach the skip for each.
        for byte in 0..=255u8 {
            let id = TraceId([byte; 16]);
            for rg in 0..md.num_row_groups() {
                let r = row_group_byte_range(&md, rg).unwrap();
                let bytes = data.slice(r.start as usize..r.end as usize);
                if let Err(e) = find_trace(md.clone(), rg, bytes, r.start, &id) {
                    errors.push(e.to_string());
                }
                if let Ok(LookupPlan::Pages(plan)) = plan_lookup(&md, rg, &id) {
                    let fetched = plan
                        .ranges
                        .iter()
                        .map(|r| data.slice(r.start as usize..r.end as usize))
                        .collect();
                    if let Err(e) =
                        find_trace_in_pages(md.clone(), &plan, fetched, data.len() as u64, &id)
                    {
                        errors.push(e.to_string());
                    }
                }
            }
        }
        errors
    }

    #[test]
    fn hybrid_runs_are_counted() {
        // RLE run of 5 values (header 5 << 1), one value byte at bit width 1.
        assert_eq!(count_hybrid(&[10, 1], 1, 100), 5);
        // Bit-packed: one group (header 1 << 1 | 1), 8 values in 1 byte at width 1.
        assert_eq!(count_hybrid(&[3, 0xff], 1, 100), 8);
        // A bit-packed run cut short holds only what its bytes hold.
        assert_eq!(count_hybrid(&[5, 0xff], 2, 100), 4);
        // No runs at all: no levels.
        assert_eq!(count_hybrid(&[], 1, 100), 0);
        // RLE run missing its value byte.
        assert_eq!(count_hybrid(&[10], 1, 100), 0);
    }

    #[test]
    fn v1_levels_need_their_length_prefix() {
        assert!(v1_rep_levels(&[1, 0], Encoding::RLE, 1, 1).is_err());
        assert_eq!(
            v1_rep_levels(&[2, 0, 0, 0, 10, 1], Encoding::RLE, 1, 5),
            Ok(5)
        );
        assert!(v1_rep_levels(&[9, 0, 0, 0, 10, 1], Encoding::RLE, 1, 5).is_err());
    }
}
