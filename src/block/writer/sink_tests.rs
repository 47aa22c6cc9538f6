//! The writer's sink: a file gets the same bytes and sizes as a Vec; short writes and failing sinks.

use std::io::Write;

use parquet::file::metadata::ParquetMetaDataReader;

use super::*;

/// A sink that accepts at most 3 bytes per call, so the tail tracking sees short writes.
struct Dribble(Vec<u8>);

impl Write for Dribble {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(3);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sorted_traces() -> Vec<TraceInput> {
    let mut t = super::super::synth::realistic_traces(200, 7);
    t.sort_by_key(|t| t.id);
    t.dedup_by_key(|t| t.id);
    t
}

fn cfg() -> BlockConfig {
    BlockConfig {
        row_group_size_bytes: 20_000,
        ..BlockConfig::default()
    }
}

#[test]
fn file_sink_gets_the_same_bytes_and_sizes_as_the_vec() {
    let tenant = TenantId::new("t").unwrap();
    let id = uuid::Uuid::nil();
    let in_memory =
        encode_block_sorted(&tenant, id, 2, sorted_traces().into_iter().map(Ok), &cfg()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.parquet");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let parts = encode_block_sorted_into(
        &tenant,
        id,
        2,
        sorted_traces().into_iter().map(Ok),
        &cfg(),
        &mut file,
    )
    .unwrap();
    drop(file);
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk, in_memory.data.as_ref());
    assert_eq!(parts.meta.size, on_disk.len() as u64);
    assert_eq!(parts.meta, in_memory.meta);
    assert_eq!(parts.blooms, in_memory.blooms);
    assert_eq!(parts.index, in_memory.index);

    // The sizes the writer tracked match the file's own footer and page indexes.
    let n = on_disk.len();
    let len = u32::from_le_bytes(on_disk[n - 8..n - 4].try_into().unwrap());
    assert_eq!(parts.meta.footer_size, len + 8);
    let footer_start = n - parts.meta.footer_size as usize;
    let md = ParquetMetaDataReader::decode_metadata(&on_disk[footer_start..n - 8]).unwrap();
    assert!(md.num_row_groups() > 1);
    let first_index = md
        .row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
        .flat_map(|c| [c.column_index_offset(), c.offset_index_offset()])
        .flatten()
        .min()
        .unwrap();
    assert!(parts.meta.page_index_size > 0);
    assert_eq!(
        parts.meta.page_index_size as usize,
        footer_start - first_index as usize
    );
}

#[test]
fn short_writes_keep_the_tail() {
    let tenant = TenantId::new("t").unwrap();
    let mut sink = Dribble(Vec::new());
    let parts = encode_block_sorted_into(
        &tenant,
        uuid::Uuid::nil(),
        0,
        sorted_traces().into_iter().take(20).map(Ok),
        &cfg(),
        &mut sink,
    )
    .unwrap();
    let d = &sink.0;
    assert_eq!(parts.meta.size, d.len() as u64);
    assert_eq!(&d[d.len() - 4..], b"PAR1");
    let len = u32::from_le_bytes(d[d.len() - 8..d.len() - 4].try_into().unwrap());
    assert_eq!(parts.meta.footer_size, len + 8);
}

#[test]
fn a_failing_sink_is_an_error() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let tenant = TenantId::new("t").unwrap();
    let r = encode_block_sorted_into(
        &tenant,
        uuid::Uuid::nil(),
        0,
        sorted_traces().into_iter().map(Ok),
        &cfg(),
        &mut Full,
    );
    assert!(r.is_err());
}
