use std::collections::HashSet;

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
        let rg = index.row_group_for(id)?;
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
    assert_eq!(index.row_group_for(&TraceId([0; 16])), Some(0));
    assert_eq!(index.row_group_for(&TraceId([1; 16])), Some(0));
    assert_eq!(index.row_group_for(&TraceId([2; 16])), Some(1));
    assert_eq!(index.row_group_for(&TraceId([9; 16])), Some(2));
    assert_eq!(index.row_group_for(&TraceId([10; 16])), None);
    assert!(String::from_utf8(index.to_bytes())
        .expect("utf8")
        .starts_with("{\"rowGroups\":[\"0101"));
}

fn ns(left: i32, right: i32, parent: i32) -> NestedSet {
    NestedSet {
        left,
        right,
        parent,
    }
}

#[test]
fn nested_set_numbers() {
    // a -> (b -> d), c ; stored as a, b, c, d
    let spans: [(&[u8], &[u8]); 4] = [(b"a", b""), (b"b", b"a"), (b"c", b"a"), (b"d", b"b")];
    assert_eq!(
        compute_nested_set(&spans),
        vec![ns(1, 8, -1), ns(2, 5, 1), ns(6, 7, 1), ns(3, 4, 2)]
    );
    // Children listed before their parent, an orphan and a self-parent are all fine.
    let spans: [(&[u8], &[u8]); 4] = [(b"d", b"b"), (b"b", b"a"), (b"a", b""), (b"o", b"missing")];
    assert_eq!(
        compute_nested_set(&spans),
        vec![ns(3, 4, 2), ns(2, 5, 1), ns(1, 6, -1), ns(7, 8, -1)]
    );
    let spans: [(&[u8], &[u8]); 1] = [(b"s", b"s")];
    assert_eq!(compute_nested_set(&spans), vec![ns(1, 2, -1)]);
}

#[test]
fn nested_set_cycle_does_not_panic() {
    let spans: [(&[u8], &[u8]); 4] = [(b"x", b"y"), (b"y", b"x"), (b"r", b""), (b"z", b"x")];
    let got = compute_nested_set(&spans);
    assert_eq!(got[2], ns(1, 2, -1));
    // x starts the cycle as a root, y and z below it.
    assert_eq!(got[0], ns(3, 8, -1));
    assert_eq!(got[1], ns(4, 5, 3));
    assert_eq!(got[3], ns(6, 7, 3));
    // A long chain does not overflow the stack.
    let ids: Vec<[u8; 4]> = (0u32..100_000).map(|i| i.to_be_bytes()).collect();
    let spans: Vec<(&[u8], &[u8])> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (&id[..], if i == 0 { &[][..] } else { &ids[i - 1][..] }))
        .collect();
    let got = compute_nested_set(&spans);
    assert_eq!(got[99_999], ns(100_000, 100_001, 99_999));
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
