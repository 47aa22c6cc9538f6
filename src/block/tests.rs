//! Block format tests: write, read back, bloom, index, page-level lookup, statistics.

use std::collections::HashSet;

use std::sync::Arc;

use bytes::Bytes;
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::schema::parser::parse_message_type;

use super::synth::{all_kinds_traces, realistic_traces, Rng};
use super::*;
use crate::model::{combine, TenantId, TraceId};

fn tenant() -> TenantId {
    TenantId::new("t1").expect("tenant")
}

fn small_cfg() -> BlockConfig {
    BlockConfig {
        row_group_size_bytes: 40_000,
        ..BlockConfig::default()
    }
}

/// What a block read must return for `input`: sorted by ID, duplicates combined,
/// dedicated attributes moved to the front.
fn expected(input: &[TraceInput]) -> Vec<TraceInput> {
    let mut sorted = input.to_vec();
    sorted.sort_by_key(|t| t.id);
    let mut out: Vec<TraceInput> = Vec::new();
    for t in sorted {
        match out.last_mut() {
            Some(last) if last.id == t.id => {
                let mut all = std::mem::take(&mut last.batches);
                all.extend(t.batches);
                last.batches = combine(all);
            }
            _ => out.push(t),
        }
    }
    for t in &mut out {
        normalize_dedicated(&mut t.batches);
    }
    out
}

fn input_with_duplicate() -> Vec<TraceInput> {
    let mut input = all_kinds_traces(80, 1);
    // A second fragment of one trace, arriving separately.
    let extra = realistic_traces(1, 99).remove(0);
    input.push(TraceInput {
        id: input[3].id,
        batches: extra.batches,
    });
    input
}

#[test]
fn round_trip_whole_file() {
    let input = input_with_duplicate();
    let want = expected(&input);
    let block = encode_block(&tenant(), uuid::Uuid::nil(), 0, input, &small_cfg()).expect("encode");
    assert!(
        block.meta.total_records > 3,
        "want several row groups, got {}",
        block.meta.total_records
    );
    assert_eq!(block.meta.total_objects, want.len() as u64);
    assert_eq!(
        block.meta.total_spans,
        want.iter()
            .map(|t| crate::model::span_count(&t.batches) as u64)
            .sum::<u64>()
    );
    assert_eq!(block.meta.size, block.data.len() as u64);
    let got = read_all_traces(block.data.clone()).expect("read");
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "trace {}", w.id);
    }
}

#[test]
fn round_trip_by_id() {
    let input = input_with_duplicate();
    let want = expected(&input);
    let block = encode_block(&tenant(), uuid::Uuid::nil(), 0, input, &small_cfg()).expect("encode");
    let data = block.data.clone();
    let tail = data.slice(data.len() - block.meta.footer_size as usize..);
    let md = decode_footer(tail, data.len() as u64).expect("footer");
    let index = RowGroupIndex::from_bytes(&block.index).expect("index");
    assert_eq!(index.len(), md.num_row_groups());
    assert_eq!(index.len(), block.meta.total_records as usize);
    let fetch = |id: &TraceId| {
        let rg = index.row_groups_for(id).first().copied()?;
        let r = row_group_byte_range(&md, rg).expect("range");
        let bytes = data.slice(r.start as usize..r.end as usize);
        find_trace(md.clone(), rg, bytes, r.start, id).expect("find")
    };
    for w in &want {
        assert_eq!(fetch(&w.id).as_ref(), Some(&w.batches), "trace {}", w.id);
    }
    let mut rng = Rng::new(5);
    let present: HashSet<TraceId> = want.iter().map(|t| t.id).collect();
    for _ in 0..50 {
        let id = rng.trace_id();
        if !present.contains(&id) {
            assert_eq!(fetch(&id), None);
        }
    }
    // An out-of-range row group and bytes from the wrong place are errors, not panics.
    assert!(find_trace(md.clone(), 10_000, Bytes::new(), 0, &want[0].id).is_err());
    let r = row_group_byte_range(&md, 0).expect("range");
    let shifted = data.slice(r.start as usize + 7..r.end as usize + 7);
    assert!(find_trace(md.clone(), 0, shifted, r.start, &want[0].id).is_err());
    assert!(find_trace(md, 0, data.slice(0..10), r.start, &want[0].id).is_err());
}

#[test]
fn single_trace_and_empty_input() {
    let input = realistic_traces(1, 3);
    let block = encode_block(
        &tenant(),
        uuid::Uuid::nil(),
        1,
        input.clone(),
        &BlockConfig::default(),
    )
    .expect("encode");
    assert_eq!(block.meta.total_records, 1);
    assert_eq!(block.blooms.len(), 1);
    assert_eq!(read_all_traces(block.data).expect("read"), expected(&input));
    assert!(matches!(
        encode_block(
            &tenant(),
            uuid::Uuid::nil(),
            0,
            vec![],
            &BlockConfig::default()
        ),
        Err(BlockError::Empty)
    ));
    let bad = BlockConfig {
        bloom_false_positive: 1.5,
        ..BlockConfig::default()
    };
    assert!(matches!(
        encode_block(
            &tenant(),
            uuid::Uuid::nil(),
            0,
            realistic_traces(1, 3),
            &bad
        ),
        Err(BlockError::Config(_))
    ));
}

#[test]
fn trace_level_columns() {
    use arrow_array::{Array, StringArray, UInt64Array};
    let input = realistic_traces(20, 8);
    let block = encode_block(
        &tenant(),
        uuid::Uuid::nil(),
        0,
        input.clone(),
        &BlockConfig::default(),
    )
    .expect("encode");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(block.data)
        .expect("reader")
        .build()
        .expect("build");
    let want = expected(&input);
    let mut row = 0;
    for batch in reader {
        let batch = batch.expect("batch");
        let names = batch.column_by_name("root_span_name").expect("col");
        let names = names.as_any().downcast_ref::<StringArray>().expect("str");
        let durs = batch.column_by_name("duration_nano").expect("col");
        let durs = durs.as_any().downcast_ref::<UInt64Array>().expect("u64");
        for i in 0..batch.num_rows() {
            let spans: Vec<_> = want[row]
                .batches
                .iter()
                .flat_map(|b| &b.scope_spans)
                .flat_map(|s| &s.spans)
                .collect();
            let root = spans
                .iter()
                .find(|s| s.parent_span_id.is_empty())
                .expect("root");
            assert_eq!(names.value(i), root.name);
            let start = spans
                .iter()
                .map(|s| s.start_time_unix_nano)
                .min()
                .unwrap_or(0);
            let end = spans
                .iter()
                .map(|s| s.end_time_unix_nano)
                .max()
                .unwrap_or(0);
            assert_eq!(durs.value(i), end - start);
            row += 1;
        }
    }
    assert_eq!(row, want.len());
}

/// Chunk statistics are written where search prunes by them (times, durations, status,
/// trace IDs, dedicated resource strings) and left out of other byte-array columns.
#[test]
fn statistics_only_where_pruning_reads_them() {
    let block = encode_block(
        &tenant(),
        uuid::Uuid::nil(),
        0,
        realistic_traces(20, 3),
        &BlockConfig::default(),
    )
    .expect("encode");
    let md = footer_of(&block);
    let rg = md.row_group(0);
    let stats = |path: String| {
        rg.columns()
            .iter()
            .find(|c| c.column_path().string() == path)
            .unwrap_or_else(|| panic!("no column {path}"))
            .statistics()
            .is_some()
    };
    for path in [
        paths::TRACE_ID.to_owned(),
        paths::START_TIME.to_owned(),
        format!("{}service_name", paths::RESOURCE),
        format!("{}duration_nano", paths::SPAN),
        format!("{}status.code", paths::SPAN),
    ] {
        assert!(stats(path.clone()), "{path} has no statistics");
    }
    for path in [
        format!("{}name", paths::SPAN),
        format!("{}{}str", paths::SPAN, paths::ATTRS),
        format!("{}{}key", paths::RESOURCE, paths::ATTRS),
        paths::ROOT_SERVICE_NAME.to_owned(),
    ] {
        assert!(!stats(path.clone()), "{path} has statistics");
    }
}

#[test]
fn written_schema_matches_schema_file() {
    let block = encode_block(
        &tenant(),
        uuid::Uuid::nil(),
        0,
        realistic_traces(3, 1),
        &BlockConfig::default(),
    )
    .expect("encode");
    let md = ParquetMetaDataReader::new()
        .parse_and_finish(&block.data)
        .expect("footer");
    let want = parse_message_type(SCHEMA_TEXT).expect("schema text");
    assert_eq!(md.file_metadata().schema_descr().root_schema(), &want);
}

#[test]
fn bloom_has_no_false_negatives_and_few_false_positives() {
    let mut rng = Rng::new(42);
    let ids: Vec<TraceId> = (0..20_000).map(|_| rng.trace_id()).collect();
    // Small shards so several are used.
    let shard_size = 4096;
    let blooms = build_blooms(&ids, 0.01, shard_size).expect("blooms");
    let n = blooms.len() as u32;
    assert_eq!(
        n,
        bloom_shard_count(ids.len(), 0.01, shard_size).expect("count")
    );
    assert!(n > 1);
    let shards: Vec<BloomShard> = blooms
        .iter()
        .map(|b| BloomShard::from_bytes(b).expect("shard"))
        .collect();
    for id in &ids {
        assert!(shards[bloom_shard_for(id, n) as usize].may_contain(id));
    }
    let present: HashSet<TraceId> = ids.iter().copied().collect();
    let mut fp = 0;
    let mut tried = 0;
    while tried < 10_000 {
        let id = rng.trace_id();
        if present.contains(&id) {
            continue;
        }
        tried += 1;
        if shards[bloom_shard_for(&id, n) as usize].may_contain(&id) {
            fp += 1;
        }
    }
    assert!(fp < 300, "false positive rate {}%", fp as f64 / 100.0);
}

#[test]
fn bloom_from_block_and_shard_bounds() {
    let input = realistic_traces(50, 2);
    let block = encode_block(
        &tenant(),
        uuid::Uuid::nil(),
        0,
        input.clone(),
        &BlockConfig::default(),
    )
    .expect("encode");
    assert_eq!(block.meta.bloom_shards as usize, block.blooms.len());
    let shard = BloomShard::from_bytes(&block.blooms[0]).expect("shard");
    for t in &input {
        assert!(shard.may_contain(&t.id));
    }
    assert_eq!(bloom_shard_count(1, 0.01, 100 << 10).expect("count"), 1);
    assert_eq!(bloom_shard_count(1 << 30, 0.01, 1).expect("count"), 1000);
    assert_eq!(bloom_shard_for(&TraceId([7; 16]), 0), 0);
    assert_ne!(BLOOM_SEED[..16], BLOOM_SEED[16..]);
}

#[test]
fn index_lookup() {
    let ids = [TraceId([1; 16]), TraceId([5; 16]), TraceId([9; 16])];
    let index = RowGroupIndex::new(ids.to_vec()).expect("index");
    let round = RowGroupIndex::from_bytes(&index.to_bytes()).expect("parse");
    assert_eq!(round, index);
    assert_eq!(
        index.row_groups_for(&TraceId([0; 16])).first().copied(),
        Some(0)
    );
    assert_eq!(
        index.row_groups_for(&TraceId([1; 16])).first().copied(),
        Some(0)
    );
    assert_eq!(
        index.row_groups_for(&TraceId([2; 16])).first().copied(),
        Some(1)
    );
    assert_eq!(
        index.row_groups_for(&TraceId([9; 16])).first().copied(),
        Some(2)
    );
    assert_eq!(
        index.row_groups_for(&TraceId([10; 16])).first().copied(),
        None
    );
    assert!(String::from_utf8(index.to_bytes())
        .expect("utf8")
        .starts_with("{\"rowGroups\":[\"0101"));
}

#[test]
fn corrupt_data_is_an_error() {
    let block = encode_block(
        &tenant(),
        uuid::Uuid::nil(),
        0,
        realistic_traces(30, 4),
        &small_cfg(),
    )
    .expect("encode");
    let data = block.data.clone();
    let len = data.len();
    let index = RowGroupIndex::from_bytes(&block.index).expect("index");
    let ids: Vec<TraceId> = read_all_traces(data.clone())
        .expect("read")
        .iter()
        .map(|t| t.id)
        .take(5)
        .collect();
    assert!(read_all_traces(Bytes::from_static(b"")).is_err());
    assert!(read_all_traces(Bytes::from_static(b"garbage garbage garbage")).is_err());
    assert!(read_all_traces(data.slice(..len / 2)).is_err());
    assert!(read_all_traces(data.slice(len / 2..)).is_err());
    assert!(decode_footer(Bytes::from_static(b"PAR1"), 4).is_err());
    assert!(decode_footer(Bytes::from_static(b"xxxxxxxxxxxxxxxxxxxx"), 20).is_err());
    let footer = block.meta.footer_size as usize;
    assert!(decode_footer(data.slice(len - footer + 10..), len as u64).is_err());
    assert!(decode_footer(data.slice(len - footer..), 10).is_err());
    // Flipped bytes anywhere: an error or (rarely) a different trace, never a panic.
    let mut rng = Rng::new(9);
    for _ in 0..200 {
        let mut bad = data.to_vec();
        let at = rng.range(0, len as u64 - 1) as usize;
        bad[at] ^= 1 << rng.range(0, 7);
        let _ = read_all_traces(Bytes::from(bad.clone()));
        let tail = Bytes::from(bad[len - footer..].to_vec());
        if let Ok(md) = decode_footer(tail, len as u64) {
            for rg in 0..md.num_row_groups() {
                if let Ok(r) = row_group_byte_range(&md, rg) {
                    let bytes = Bytes::from(bad[r.start as usize..r.end as usize].to_vec());
                    let _ = find_trace(md.clone(), rg, bytes, r.start, &TraceId([3; 16]));
                }
            }
        }
        // The page-index path, through the same corrupt copy.
        let bad_block = EncodedBlock {
            data: Bytes::from(bad),
            ..block.clone()
        };
        let r = footer_fetch_range(&block.meta);
        if let Ok(md) = decode_footer(bad_block.data.slice(r.start as usize..), len as u64) {
            for id in &ids {
                let _ = lookup(&bad_block, &md, &index, id);
            }
        }
    }
}

#[test]
fn corrupt_bloom_index_meta_are_errors() {
    for b in [&b""[..], b"garbage", &[0u8; 200][..]] {
        assert!(BloomShard::from_bytes(b).is_err());
        assert!(RowGroupIndex::from_bytes(b).is_err());
        assert!(BlockMeta::from_bytes(b).is_err());
    }
    let good = build_blooms(&[TraceId([1; 16])], 0.01, 1024)
        .expect("bloom")
        .remove(0);
    assert!(BloomShard::from_bytes(&good[..good.len() - 1]).is_err());
    assert!(RowGroupIndex::from_bytes(br#"{"rowGroups":["zz"]}"#).is_err());
    assert!(
        RowGroupIndex::from_bytes(br#"{"rowGroups":["0000000000000000000000000000000g"]}"#)
            .is_err()
    );
    let unsorted = format!(
        r#"{{"rowGroups":["{}","{}"]}}"#,
        "2".repeat(32),
        "1".repeat(32)
    );
    assert!(RowGroupIndex::from_bytes(unsorted.as_bytes()).is_err());
}

#[test]
fn meta_json_shape() {
    let block = encode_block(
        &tenant(),
        uuid::Uuid::from_u128(7),
        2,
        realistic_traces(5, 1),
        &BlockConfig::default(),
    )
    .expect("encode");
    let m = &block.meta;
    let json: serde_json::Value = serde_json::from_slice(&m.to_bytes()).expect("json");
    for key in [
        "format",
        "blockID",
        "tenantID",
        "startTime",
        "endTime",
        "totalObjects",
        "totalSpans",
        "size",
        "compactionLevel",
        "totalRecords",
        "bloomShards",
        "footerSize",
        "pageIndexSize",
        "dedicatedColumns",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    assert_eq!(json["format"], "vivace1");
    assert_eq!(json["tenantID"], "t1");
    assert!(json["startTime"].as_str().expect("str").ends_with('Z'));
    assert_eq!(json["dedicatedColumns"][0]["name"], "service.name");
    assert_eq!(BlockMeta::from_bytes(&m.to_bytes()).expect("parse"), *m);
    assert!(m.start_time > 0 && m.end_time >= m.start_time);
    // Footer size lets a reader fetch exactly the footer.
    let len = block.data.len();
    assert_eq!(&block.data[len - 4..], b"PAR1");
    assert!(decode_footer(block.data.slice(len - m.footer_size as usize..), len as u64).is_ok());
    // Unknown fields and numeric times are accepted.
    let mut v = json.clone();
    v["somethingNew"] = serde_json::json!({"x": 1});
    v["startTime"] = serde_json::json!(m.start_time);
    let parsed = BlockMeta::from_bytes(&serde_json::to_vec(&v).expect("ser")).expect("parse");
    assert_eq!(parsed, *m);
}

#[test]
fn object_keys() {
    let id = uuid::Uuid::from_u128(1);
    let t = tenant();
    assert_eq!(
        meta_key(&t, id),
        "t1/00000000-0000-0000-0000-000000000001/meta.json"
    );
    assert_eq!(
        data_key(&t, id),
        "t1/00000000-0000-0000-0000-000000000001/data.parquet"
    );
    assert_eq!(
        bloom_key(&t, id, 3),
        "t1/00000000-0000-0000-0000-000000000001/bloom-3"
    );
    assert_eq!(
        index_key(&t, id),
        "t1/00000000-0000-0000-0000-000000000001/index"
    );
}

#[test]
fn projection_by_path() {
    let descr = parquet_schema().expect("schema");
    let span_name = format!("{}name", paths::SPAN);
    assert!(projection(&descr, &[paths::TRACE_ID, &span_name]).is_ok());
    assert!(projection(&descr, &[paths::RESOURCE]).is_ok());
    assert!(projection(&descr, &["nope"]).is_err());
}

/// Size and speed figures for the format options: run with
/// `cargo test --release --lib block::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure() {
    let input = realistic_traces(20_000, 11);
    let spans: usize = input
        .iter()
        .map(|t| crate::model::span_count(&t.batches))
        .sum();
    println!("{} traces, {spans} spans", input.len());
    for (name, compression) in [
        ("snappy", BlockCompression::Snappy),
        ("zstd(1)", BlockCompression::Zstd(1)),
        ("zstd(3)", BlockCompression::Zstd(3)),
        ("zstd(6)", BlockCompression::Zstd(6)),
    ] {
        for dict in [true, false] {
            let cfg = BlockConfig {
                compression,
                string_dictionary: dict,
                ..BlockConfig::default()
            };
            let t = std::time::Instant::now();
            let block =
                encode_block(&tenant(), uuid::Uuid::nil(), 0, input.clone(), &cfg).expect("encode");
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{name:8} dict={dict:5}: {:.1} bytes/span, {:.0} spans/s encode, {} row groups",
                block.data.len() as f64 / spans as f64,
                spans as f64 / secs,
                block.meta.total_records
            );
        }
    }
    let t = std::time::Instant::now();
    let block = encode_block(
        &tenant(),
        uuid::Uuid::nil(),
        0,
        input.clone(),
        &BlockConfig::default(),
    )
    .expect("encode");
    let enc = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let n = read_all_traces(block.data).expect("read").len();
    println!(
        "default: encode {:.0} spans/s, read_all {:.0} spans/s ({n} traces)",
        spans as f64 / enc,
        spans as f64 / t.elapsed().as_secs_f64()
    );
}

/// Looks `id` up the way the querier does: footer + page indexes from one tail read, then
/// the planned pages only (or the whole row group when there is no page index).
fn lookup(
    block: &EncodedBlock,
    md: &Arc<parquet::file::metadata::ParquetMetaData>,
    index: &RowGroupIndex,
    id: &TraceId,
) -> Result<(Option<Vec<crate::model::ResourceSpans>>, u64), BlockError> {
    let data = &block.data;
    let Some(rg) = index.row_groups_for(id).first().copied() else {
        return Ok((None, 0));
    };
    match plan_lookup(md, rg, id)? {
        LookupPlan::Absent => Ok((None, 0)),
        LookupPlan::Pages(plan) => {
            let fetched: Vec<Bytes> = plan
                .ranges
                .iter()
                .map(|r| data.slice(r.start as usize..r.end as usize))
                .collect();
            let n = plan.total_bytes();
            Ok((
                find_trace_in_pages(md.clone(), &plan, fetched, data.len() as u64, id)?,
                n,
            ))
        }
        LookupPlan::RowGroup(r) => {
            let bytes = data.slice(r.start as usize..r.end as usize);
            let n = bytes.len() as u64;
            Ok((find_trace(md.clone(), rg, bytes, r.start, id)?, n))
        }
    }
}

fn footer_of(block: &EncodedBlock) -> Arc<parquet::file::metadata::ParquetMetaData> {
    let r = footer_fetch_range(&block.meta);
    decode_footer(
        block.data.slice(r.start as usize..r.end as usize),
        block.data.len() as u64,
    )
    .expect("footer")
}

/// Lookup cost for page-size options: run with
/// `cargo test --release --lib block::tests::measure_lookup -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_lookup() {
    // MEASURE_BLOCK=path/data.parquet measures on a block's traces (data vivace's generator
    // did not make, e.g. benches/otel_sdk_traffic.py's) instead of the synthetic ones.
    let input = match std::env::var("MEASURE_BLOCK") {
        Ok(path) => read_all_traces(Bytes::from(std::fs::read(path).expect("read block")))
            .expect("decode block"),
        Err(_) => realistic_traces(9_300, 21),
    };
    let spans: usize = input
        .iter()
        .map(|t| crate::model::span_count(&t.batches))
        .sum();
    println!("{} traces, {spans} spans", input.len());
    let ids: Vec<TraceId> = input.iter().map(|t| t.id).collect();
    // page bytes:rows:trace_id rows[:spans per page (data_page_spans, 0 by default)]
    let pages: Vec<(usize, usize, usize, usize)> = std::env::var("PAGES")
        .unwrap_or("8192:128:16,8192:128:16:4096,8192:256:16,8192:1024:64".into())
        .split(',')
        .map(|p| {
            let v: Vec<usize> = p.split(':').map(|x| x.parse().expect("num")).collect();
            (v[0], v[1], v[2], v.get(3).copied().unwrap_or(0))
        })
        .collect();
    for (page, rows, id_rows, page_spans) in pages {
        let cfg = BlockConfig {
            data_page_size_bytes: page,
            data_page_rows: rows,
            trace_id_page_rows: id_rows,
            data_page_spans: page_spans,
            ..BlockConfig::default()
        };
        let t = std::time::Instant::now();
        let block =
            encode_block(&tenant(), uuid::Uuid::nil(), 0, input.clone(), &cfg).expect("encode");
        let enc = t.elapsed().as_secs_f64();
        let md = footer_of(&block);
        let index = RowGroupIndex::from_bytes(&block.index).expect("index");
        let mut rng = Rng::new(3);
        let mut times = Vec::new();
        let mut bytes = Vec::new();
        for _ in 0..300 {
            let id = ids[rng.range(0, ids.len() as u64 - 1) as usize];
            let t = std::time::Instant::now();
            let (found, n) = lookup(&block, &md, &index, &id).expect("lookup");
            times.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(found.is_some());
            bytes.push(n);
        }
        times.sort_by(f64::total_cmp);
        bytes.sort();
        println!(
            "page {page:8} rows {rows:5} id_rows {id_rows:5} spans {page_spans:5}: {:.1} B/span, footer+index {} B, encode {:.0} spans/s, {} rgs; lookup bytes p50 {} p99 {}, ms p50 {:.2} p99 {:.2}",
            block.data.len() as f64 / spans as f64,
            block.meta.footer_size + block.meta.page_index_size,
            spans as f64 / enc,
            block.meta.total_records,
            bytes[bytes.len() / 2],
            bytes[bytes.len() * 99 / 100],
            times[times.len() / 2],
            times[times.len() * 99 / 100],
        );
    }
}

/// Several row groups of several pages each, so lookups touch a fraction of a row group.
fn paged_cfg() -> BlockConfig {
    BlockConfig {
        row_group_size_bytes: 300_000,
        data_page_size_bytes: 2048,
        data_page_rows: 4,
        data_page_spans: 0,
        trace_id_page_rows: 2,
        ..BlockConfig::default()
    }
}

#[test]
fn round_trip_by_page_index() {
    let mut input = input_with_duplicate();
    input.extend(realistic_traces(150, 12));
    let want = expected(&input);
    for cfg in [paged_cfg(), small_cfg(), BlockConfig::default()] {
        let block =
            encode_block(&tenant(), uuid::Uuid::nil(), 0, input.clone(), &cfg).expect("encode");
        assert!(block.meta.page_index_size > 0);
        let md = footer_of(&block);
        assert!(
            md.page_index().is_some(),
            "one tail read loads the page index"
        );
        assert_eq!(page_index_start(&md), None);
        let index = RowGroupIndex::from_bytes(&block.index).expect("index");
        if cfg.row_group_size_bytes == paged_cfg().row_group_size_bytes {
            assert!(
                index.len() > 2,
                "want several row groups, got {}",
                index.len()
            );
        }
        for w in &want {
            let rg = index.row_groups_for(&w.id).first().copied().expect("rg");
            let LookupPlan::Pages(plan) = plan_lookup(&md, rg, &w.id).expect("plan") else {
                panic!("trace {} not planned through the page index", w.id);
            };
            assert!(!plan.rows.is_empty() && plan.rows.len() <= cfg.trace_id_page_rows);
            assert!(plan.ranges.windows(2).all(|p| p[0].end < p[1].start));
            let whole = row_group_byte_range(&md, rg).expect("range");
            if cfg.data_page_rows == paged_cfg().data_page_rows {
                assert!(plan.total_bytes() < whole.end - whole.start);
            }
            let (got, _) = lookup(&block, &md, &index, &w.id).expect("lookup");
            assert_eq!(got.as_ref(), Some(&w.batches), "trace {}", w.id);
        }
        let present: HashSet<TraceId> = want.iter().map(|t| t.id).collect();
        let mut rng = Rng::new(17);
        for _ in 0..100 {
            let id = rng.trace_id();
            if !present.contains(&id) {
                assert_eq!(lookup(&block, &md, &index, &id).expect("lookup").0, None);
            }
        }
    }
}

#[test]
fn block_without_page_index_size_is_readable() {
    let input = realistic_traces(60, 31);
    let want = expected(&input);
    let block = encode_block(&tenant(), uuid::Uuid::nil(), 0, input, &paged_cfg()).expect("encode");
    // meta.json of an older writer: no pageIndexSize.
    let mut json: serde_json::Value = serde_json::from_slice(&block.meta.to_bytes()).expect("json");
    json.as_object_mut()
        .expect("object")
        .remove("pageIndexSize");
    let old = BlockMeta::from_bytes(&serde_json::to_vec(&json).expect("ser")).expect("meta");
    assert_eq!(old.page_index_size, 0);
    let len = block.data.len() as u64;
    let r = footer_fetch_range(&old);
    assert_eq!(r.end - r.start, u64::from(old.footer_size));
    let md = decode_footer(block.data.slice(r.start as usize..), len).expect("footer");
    let index = RowGroupIndex::from_bytes(&block.index).expect("index");
    // Without the page index: the whole-row-group path still finds everything.
    assert!(md.page_index().is_none());
    for w in want.iter().take(10) {
        let rg = index.row_groups_for(&w.id).first().copied().expect("rg");
        assert!(matches!(
            plan_lookup(&md, rg, &w.id).expect("plan"),
            LookupPlan::RowGroup(_)
        ));
        assert_eq!(
            lookup(&block, &md, &index, &w.id)
                .expect("lookup")
                .0
                .as_ref(),
            Some(&w.batches)
        );
    }
    // A second, longer read from where the footer says the page index starts.
    let start = page_index_start(&md).expect("page index start");
    assert_eq!(
        len - start,
        u64::from(block.meta.page_index_size + block.meta.footer_size)
    );
    let md = decode_footer(block.data.slice(start as usize..), len).expect("footer");
    assert!(md.page_index().is_some());
    for w in &want {
        let rg = index.row_groups_for(&w.id).first().copied().expect("rg");
        assert!(matches!(
            plan_lookup(&md, rg, &w.id).expect("plan"),
            LookupPlan::Pages(_)
        ));
        assert_eq!(
            lookup(&block, &md, &index, &w.id)
                .expect("lookup")
                .0
                .as_ref(),
            Some(&w.batches)
        );
    }
}

#[test]
fn streaming_encode_matches_and_checks_order() {
    let input = expected(&realistic_traces(40, 5));
    let cfg = paged_cfg();
    let whole = encode_block(&tenant(), uuid::Uuid::nil(), 0, input.clone(), &cfg).expect("encode");
    let streamed = encode_block_sorted(
        &tenant(),
        uuid::Uuid::nil(),
        0,
        input.clone().into_iter().map(Ok),
        &cfg,
    )
    .expect("encode");
    assert_eq!(streamed.data, whole.data);
    assert_eq!(streamed.meta, whole.meta);
    assert_eq!(streamed.index, whole.index);
    assert_eq!(streamed.blooms, whole.blooms);

    let enc = |traces: Vec<Result<TraceInput, BlockError>>| {
        encode_block_sorted(&tenant(), uuid::Uuid::nil(), 0, traces, &cfg)
    };
    let mut swapped = input.clone();
    swapped.swap(10, 11);
    assert!(matches!(
        enc(swapped.into_iter().map(Ok).collect()),
        Err(BlockError::NotSorted { .. })
    ));
    let mut dup = input.clone();
    dup.insert(5, dup[4].clone());
    assert!(matches!(
        enc(dup.into_iter().map(Ok).collect()),
        Err(BlockError::NotSorted { .. })
    ));
    let mut failing: Vec<Result<TraceInput, BlockError>> = input.into_iter().map(Ok).collect();
    failing.insert(20, Err(BlockError::Input("boom".into())));
    assert!(matches!(enc(failing), Err(BlockError::Input(m)) if m == "boom"));
    assert!(matches!(enc(Vec::new()), Err(BlockError::Empty)));
    let bad = BlockConfig {
        data_page_rows: 0,
        ..paged_cfg()
    };
    assert!(matches!(
        encode_block(
            &tenant(),
            uuid::Uuid::nil(),
            0,
            realistic_traces(2, 1),
            &bad
        ),
        Err(BlockError::Config(_))
    ));
}

#[test]
fn corrupt_page_index_and_ranges_are_errors() {
    let input = realistic_traces(60, 41);
    let want = expected(&input);
    let block = encode_block(&tenant(), uuid::Uuid::nil(), 0, input, &paged_cfg()).expect("encode");
    let len = block.data.len();
    let md = footer_of(&block);
    let index = RowGroupIndex::from_bytes(&block.index).expect("index");
    let id = want[7].id;
    let rg = index.row_groups_for(&id).first().copied().expect("rg");
    let LookupPlan::Pages(plan) = plan_lookup(&md, rg, &id).expect("plan") else {
        panic!("no page plan");
    };
    let fetch = |plan: &PageRead| -> Vec<Bytes> {
        plan.ranges
            .iter()
            .map(|r| block.data.slice(r.start as usize..r.end as usize))
            .collect()
    };
    let find = |plan: &PageRead, fetched: Vec<Bytes>| {
        find_trace_in_pages(md.clone(), plan, fetched, len as u64, &id)
    };
    assert!(find(&plan, fetch(&plan)).expect("find").is_some());
    // Missing, short and shifted ranges.
    let mut fewer = fetch(&plan);
    fewer.pop();
    assert!(find(&plan, fewer).is_err());
    let mut short = fetch(&plan);
    short[0] = short[0].slice(1..);
    assert!(find(&plan, short).is_err());
    let shifted: Vec<Bytes> = plan
        .ranges
        .iter()
        .map(|r| block.data.slice(r.start as usize + 3..r.end as usize + 3))
        .collect();
    assert!(find(&plan, shifted).is_err());
    // A plan that leaves pages out, or names rows outside the row group.
    let mut partial = plan.clone();
    partial.ranges.truncate(partial.ranges.len() / 2);
    assert!(find(&partial, fetch(&partial)).is_err());
    let mut rows = plan.clone();
    rows.rows = 0..1_000_000;
    assert!(find(&rows, fetch(&rows)).is_err());
    let mut rg_out = plan.clone();
    rg_out.rg = 1_000;
    assert!(find(&rg_out, fetch(&rg_out)).is_err());
    // Flipped bits in the page indexes: an error or a consistent index, never a panic.
    let pi_start = len - (block.meta.page_index_size + block.meta.footer_size) as usize;
    let pi_end = len - block.meta.footer_size as usize;
    let mut rng = Rng::new(23);
    let mut errors = 0;
    for _ in 0..300 {
        let mut bad = block.data.to_vec();
        let at = rng.range(pi_start as u64, pi_end as u64 - 1) as usize;
        bad[at] ^= 1 << rng.range(0, 7);
        let bad_block = EncodedBlock {
            data: Bytes::from(bad),
            ..block.clone()
        };
        match decode_footer(bad_block.data.slice(pi_start..), len as u64) {
            Err(_) => errors += 1,
            Ok(md) => {
                for w in want.iter().step_by(7) {
                    let _ = lookup(&bad_block, &md, &index, &w.id);
                }
            }
        }
    }
    assert!(errors > 0);
    // A page index pointing past the footer read.
    assert!(decode_footer(block.data.slice(pi_start + 1..), len as u64)
        .expect("footer without page index")
        .page_index()
        .is_none());
}

/// Per-column compressed bytes and the whole block directory (data, blooms, index,
/// tags.json): `cargo test --release --lib block::tests::measure_columns -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_columns() {
    let input = realistic_traces(20_000, 11);
    let spans: usize = input
        .iter()
        .map(|t| crate::model::span_count(&t.batches))
        .sum();
    let mut tags = TagCollector::default();
    for t in &input {
        tags.add_trace(&t.batches);
    }
    let tags_len = tags.finish().to_bytes().len();
    let t = std::time::Instant::now();
    let cfg = BlockConfig::default();
    let block = encode_block(&tenant(), uuid::Uuid::nil(), 0, input.clone(), &cfg).expect("encode");
    let enc = t.elapsed().as_secs_f64();
    let md = footer_of(&block);
    let mut cols: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for rg in md.row_groups() {
        for c in rg.columns() {
            let e = cols.entry(c.column_path().string()).or_default();
            e.0 += c.compressed_size();
            e.1 += c.uncompressed_size();
        }
    }
    let mut v: Vec<_> = cols.into_iter().collect();
    v.sort_by_key(|(_, (c, _))| -*c);
    for (p, (c, u)) in v.iter().take(40) {
        println!(
            "{:8.2} B/span {:8.2} raw  {}",
            *c as f64 / spans as f64,
            *u as f64 / spans as f64,
            p.replace("resource_spans.list.element.", "rs.")
                .replace("scope_spans.list.element.", "ss.")
                .replace("spans.list.element.", "sp.")
                .replace("attrs.list.element.", "a.")
        );
    }
    let blooms: usize = block.blooms.iter().map(|b| b.len()).sum();
    let total = block.data.len() + blooms + block.index.len() + tags_len;
    println!(
        "data {:.2} footer+pageindex {:.2} bloom {:.2} index {:.2} tags {:.2} => total {:.2} B/span; encode {:.0} spans/s",
        block.data.len() as f64 / spans as f64,
        (block.meta.footer_size + block.meta.page_index_size) as f64 / spans as f64,
        blooms as f64 / spans as f64,
        block.index.len() as f64 / spans as f64,
        tags_len as f64 / spans as f64,
        total as f64 / spans as f64,
        spans as f64 / enc
    );
}

/// Blocks from older writers (required `parent_span_id` and attribute `type`, absolute
/// span starts, no `vivace.span_start` key) still read back whole and by ID.
#[test]
fn reads_blocks_of_older_writers() {
    let mut input = input_with_duplicate();
    input.extend(realistic_traces(60, 13));
    input.extend(all_kinds_traces(40, 14));
    let want = expected(&input);
    super::writer::legacy::ON.with(|c| c.set(true));
    let block = encode_block(&tenant(), uuid::Uuid::nil(), 0, input.clone(), &paged_cfg());
    super::writer::legacy::ON.with(|c| c.set(false));
    let block = block.expect("encode");
    let md = footer_of(&block);
    assert!(md.file_metadata().key_value_metadata().is_none());
    let parent = md
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .find(|c| c.path().string() == format!("{}parent_span_id", paths::SPAN))
        .expect("parent_span_id")
        .self_type()
        .is_optional();
    assert!(!parent, "an older writer's schema");
    let got = read_all_traces(block.data.clone()).expect("read");
    assert_eq!(got, want);
    let index = RowGroupIndex::from_bytes(&block.index).expect("index");
    for w in &want {
        let (got, _) = lookup(&block, &md, &index, &w.id).expect("lookup");
        assert_eq!(got.as_ref(), Some(&w.batches), "trace {}", w.id);
    }
    // The current writer leaves parent IDs out and writes relative span starts.
    let block = encode_block(&tenant(), uuid::Uuid::nil(), 0, input, &paged_cfg()).expect("encode");
    assert!(footer_of(&block)
        .file_metadata()
        .key_value_metadata()
        .is_some());
    assert_eq!(read_all_traces(block.data).expect("read"), want);
}

/// Traces of one or two spans: with `data_page_spans` their pages hold as many spans as
/// those of large traces (more rows than `data_page_rows`), and lookups still find each.
#[test]
fn small_traces_get_fuller_pages_and_stay_found() {
    let mut input = realistic_traces(3_000, 31);
    for t in &mut input {
        t.batches.truncate(1);
        t.batches[0].scope_spans.truncate(1);
        t.batches[0].scope_spans[0].spans.truncate(2);
    }
    input.sort_by_key(|t| t.id);
    let want = expected(&input);
    let pages_of = |cfg: &BlockConfig| {
        let block =
            encode_block(&tenant(), uuid::Uuid::nil(), 0, input.clone(), cfg).expect("encode");
        let md = footer_of(&block);
        let index = RowGroupIndex::from_bytes(&block.index).expect("index");
        for w in want.iter().step_by(97) {
            let (got, _) = lookup(&block, &md, &index, &w.id).expect("lookup");
            assert_eq!(got.as_ref(), Some(&w.batches), "trace {}", w.id);
        }
        let name = md
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.path().string() == format!("{}name", paths::SPAN))
            .expect("span name column");
        let pi = md.page_index().expect("page index");
        let pages: usize = (0..md.num_row_groups())
            .map(|rg| {
                pi.offset_index(rg, name)
                    .expect("offsets")
                    .page_locations()
                    .len()
            })
            .sum();
        (pages, block.data.len())
    };
    let fixed = BlockConfig {
        data_page_spans: 0,
        ..BlockConfig::default()
    };
    let (fixed_pages, fixed_bytes) = pages_of(&fixed);
    let (pages, bytes) = pages_of(&BlockConfig::default());
    // 3,000 rows: at least 24 pages of 128 rows, against a few of up to 2,048.
    assert!(
        fixed_pages >= 3_000 / 128,
        "{fixed_pages} pages at 128 rows"
    );
    assert!(
        pages * 4 <= fixed_pages,
        "{pages} pages against {fixed_pages}"
    );
    assert!(bytes < fixed_bytes, "{bytes} bytes against {fixed_bytes}");
}
