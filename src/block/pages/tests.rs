//! Tests for the page check: hand-built pages with hostile counts, pages parquet itself
//! writes (which must pass and decode unchanged), and the block the fuzzer found.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, ListArray, RecordBatch, StringArray};
use arrow::compute::concat_batches;
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, Type as PhysicalType, ZstdLevel};
use parquet::column::page::Page;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::{ColumnDescPtr, SchemaDescriptor};

use super::{check_page, CheckedRead, DeltaHeader};

fn column(message: &str) -> ColumnDescPtr {
    let schema = SchemaDescriptor::new(Arc::new(parse_message_type(message).unwrap()));
    schema.column(0)
}

/// A DELTA_BINARY_PACKED header: 128 values per block in 4 miniblocks, `count` values,
/// first value 0.
fn delta_header(count: u64) -> Vec<u8> {
    let mut out = vec![0x80, 0x01, 0x04];
    let mut v = count;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.push(0x00);
    out
}

fn v2(buf: Vec<u8>, num_values: u32, encoding: Encoding) -> Page {
    Page::DataPageV2 {
        buf: Bytes::from(buf),
        num_values,
        encoding,
        num_nulls: 0,
        num_rows: num_values,
        def_levels_byte_len: 0,
        rep_levels_byte_len: 0,
        is_compressed: false,
        statistics: None,
    }
}

#[test]
fn a_delta_length_count_past_the_page_is_refused() {
    let col = column("message m { required binary s; }");
    // The count the fuzzer found: ~117M lengths claimed by a page of ten values.
    let err = check_page(
        &v2(
            delta_header(117_000_000),
            10,
            Encoding::DELTA_LENGTH_BYTE_ARRAY,
        ),
        &col,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("claims 117000000 lengths"),
        "{err}"
    );
    // A page of 2^31 values still may not claim more than the cap.
    let err = check_page(
        &v2(
            delta_header(1 << 31),
            u32::MAX,
            Encoding::DELTA_LENGTH_BYTE_ARRAY,
        ),
        &col,
    )
    .unwrap_err();
    assert!(err.to_string().contains("at most 33554432"), "{err}");
    check_page(
        &v2(delta_header(10), 10, Encoding::DELTA_LENGTH_BYTE_ARRAY),
        &col,
    )
    .unwrap();
    // Other encodings are not parsed.
    check_page(&v2(delta_header(1 << 40), 10, Encoding::PLAIN), &col).unwrap();
    // A header cut short is an error, not a read past the page.
    assert!(check_page(&v2(vec![0x80], 10, Encoding::DELTA_LENGTH_BYTE_ARRAY), &col).is_err());
}

#[test]
fn v1_levels_are_stepped_over_before_the_values() {
    let col = column("message m { optional binary s; }");
    let page = |count: u64| {
        // RLE definition levels: a 4-byte length, then one run of ten 1s.
        let mut buf = vec![2, 0, 0, 0, 10 << 1, 1];
        buf.extend(delta_header(count));
        Page::DataPage {
            buf: Bytes::from(buf),
            num_values: 10,
            encoding: Encoding::DELTA_LENGTH_BYTE_ARRAY,
            def_level_encoding: Encoding::RLE,
            rep_level_encoding: Encoding::RLE,
            statistics: None,
        }
    };
    check_page(&page(10), &col).unwrap();
    assert!(check_page(&page(11), &col).is_err());
    // Levels whose stated length overruns the page.
    let overrun = Page::DataPage {
        buf: Bytes::from_static(&[200, 0, 0, 0, 1]),
        num_values: 10,
        encoding: Encoding::DELTA_LENGTH_BYTE_ARRAY,
        def_level_encoding: Encoding::RLE,
        rep_level_encoding: Encoding::RLE,
        statistics: None,
    };
    assert!(check_page(&overrun, &col).is_err());
}

#[test]
fn a_delta_byte_array_suffix_count_is_checked_too() {
    let col = column("message m { required binary s; }");
    // One prefix length (no deltas, so the stream is its header), then the suffixes.
    let page = |suffixes: u64| {
        let mut buf = delta_header(1);
        buf.extend(delta_header(suffixes));
        v2(buf, 1, Encoding::DELTA_BYTE_ARRAY)
    };
    check_page(&page(1), &col).unwrap();
    let err = check_page(&page(1 << 33), &col).unwrap_err();
    assert!(err.to_string().contains("claims 8589934592"), "{err}");
}

#[test]
fn a_dictionary_claiming_more_entries_than_its_bytes_is_refused() {
    let dict = |num_values: u32, len: usize| Page::DictionaryPage {
        buf: Bytes::from(vec![0u8; len]),
        num_values,
        encoding: Encoding::PLAIN,
        is_sorted: false,
    };
    let strings = column("message m { required binary s; }");
    check_page(&dict(4, 16), &strings).unwrap();
    assert!(check_page(&dict(5, 16), &strings).is_err());
    assert!(check_page(&dict(u32::MAX, 16), &strings).is_err());
    let ints = column("message m { required int64 v; }");
    assert_eq!(ints.physical_type(), PhysicalType::INT64);
    check_page(&dict(2, 16), &ints).unwrap();
    assert!(check_page(&dict(3, 16), &ints).is_err());
}

#[test]
fn stream_end_walks_blocks_and_stops_at_the_last_needed_miniblock() {
    // 1 + 129 values: the first value, one full block of 128 deltas (4 miniblocks of 32,
    // widths 1, 0, 2, 8), then a block with one delta in its first miniblock (width 3);
    // the other widths of that block are present, their miniblocks are not.
    let mut buf = delta_header(130);
    let header = buf.len();
    buf.extend([0x00, 1, 0, 2, 8]);
    buf.extend(vec![0u8; 4 + 8 + 32]);
    buf.extend([0x00, 3, 7, 7, 7]);
    buf.extend(vec![0u8; 12]);
    let end = buf.len();
    buf.extend([0xaa; 5]); // what follows the stream
    let h = DeltaHeader::parse(&buf).unwrap();
    assert_eq!((h.count, h.len), (130, header));
    assert_eq!(h.stream_end(&buf), Some(end));
    // A stream whose miniblocks run past the page.
    assert_eq!(h.stream_end(&buf[..end - 1]), None);
}

/// Pages parquet itself writes pass the check and decode as written: every delta byte-array
/// layout, v1 and v2 pages, nested and null values, many pages per chunk, and each codec
/// (zstd pages are decompressed by `block::pages`, the others by parquet).
#[test]
fn pages_parquet_writes_decode_through_the_check() {
    let words: Vec<Option<String>> = (0..3000)
        .map(|i| (i % 7 != 3).then(|| format!("service-{}-{}", i % 13, "x".repeat(i % 40))))
        .collect();
    let flat: ArrayRef = Arc::new(StringArray::from(words.clone()));
    let lists: ArrayRef = Arc::new(ListArray::from_iter_primitive::<
        arrow::datatypes::Int32Type,
        _,
        _,
    >(
        (0..3000).map(|i| (i % 5 != 0).then(|| (0..i % 4).map(Some).collect::<Vec<_>>())),
    ));
    let nested_words: ArrayRef = {
        let values = StringArray::from(words[..1500].to_vec());
        let offsets = arrow_buffer::OffsetBuffer::from_lengths((0..1500).map(|i| i % 2));
        Arc::new(ListArray::new(
            Arc::new(Field::new("item", DataType::Utf8, true)),
            offsets,
            Arc::new(values.slice(0, 750)),
            None,
        ))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("length", DataType::Utf8, true),
        Field::new("prefix", DataType::Utf8, true),
        Field::new("ints", lists.data_type().clone(), true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![flat.clone(), flat.clone(), lists.clone()],
    )
    .unwrap();
    let nested_schema = Arc::new(Schema::new(vec![Field::new(
        "words",
        nested_words.data_type().clone(),
        true,
    )]));
    let nested = RecordBatch::try_new(nested_schema.clone(), vec![nested_words]).unwrap();
    // A column of only nulls: its v2 pages store no values at all.
    let nulls_schema = Arc::new(Schema::new(vec![Field::new("none", DataType::Utf8, true)]));
    let nulls = RecordBatch::try_new(
        nulls_schema,
        vec![Arc::new(StringArray::from(vec![None::<&str>; 500]))],
    )
    .unwrap();
    let codecs = [
        Compression::UNCOMPRESSED,
        Compression::SNAPPY,
        Compression::ZSTD(ZstdLevel::try_new(3).unwrap()),
    ];
    for (version, codec) in [WriterVersion::PARQUET_1_0, WriterVersion::PARQUET_2_0]
        .into_iter()
        .flat_map(|v| codecs.map(|c| (v, c)))
    {
        for (batch, encodings) in [
            (
                &batch,
                vec![
                    ("length", Encoding::DELTA_LENGTH_BYTE_ARRAY),
                    ("prefix", Encoding::DELTA_BYTE_ARRAY),
                ],
            ),
            (
                &nested,
                vec![("words.list.item", Encoding::DELTA_BYTE_ARRAY)],
            ),
            (&nulls, vec![("none", Encoding::DELTA_LENGTH_BYTE_ARRAY)]),
            // Dictionary pages, compressed like the data pages.
            (&batch, vec![]),
        ] {
            let mut props = WriterProperties::builder()
                .set_writer_version(version)
                .set_compression(codec)
                .set_dictionary_enabled(encodings.is_empty())
                .set_data_page_row_count_limit(100)
                .set_write_batch_size(50);
            for (path, e) in &encodings {
                let path = parquet::schema::types::ColumnPath::from(
                    path.split('.').map(String::from).collect::<Vec<_>>(),
                );
                props = props.set_column_encoding(path, *e);
            }
            let mut file = Vec::new();
            let mut w =
                ArrowWriter::try_new(&mut file, batch.schema(), Some(props.build())).unwrap();
            w.write(batch).unwrap();
            w.close().unwrap();
            let file = Bytes::from(file);
            let md = ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Required)
                .parse_and_finish(&file)
                .unwrap();
            let read: Vec<RecordBatch> = CheckedRead::new(file, Arc::new(md))
                .with_schema(batch.schema())
                .with_batch_size(333)
                .build()
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let read = concat_batches(&batch.schema(), &read).unwrap();
            assert_eq!(&read, batch, "{version:?} {codec:?} {encodings:?}");
        }
    }
}

/// The block the CI fuzz smoke found (a page claiming ~117M lengths) is refused with an
/// error naming the claim, before parquet allocates for it.
#[test]
fn the_fuzzed_block_is_refused_by_the_check() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/corpus/block/delta-length-count"
    );
    let data = Bytes::from(std::fs::read(path).unwrap());
    let err = crate::block::read_all_traces(data).unwrap_err();
    assert!(err.to_string().contains("claims"), "{err}");
}
