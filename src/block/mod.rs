//! Blocks: the immutable unit of trace storage in the bucket.
//!
//! A block is one Parquet file (`data.parquet`, one row per trace, sorted by trace ID), a
//! sharded bloom filter over its trace IDs (`bloom-N`), a row-group index of maximum trace
//! IDs (`index`) and `meta.json`. See `schema/block.parquet.txt` and `schema/meta.md`.
//!
//! Dedicated attribute columns: a few well-known attributes are stored in their own columns
//! instead of the generic attribute lists when their value type matches the column (string
//! or int). On read they are put back at the start of the attribute list in the fixed order
//! of [`DEDICATED_RESOURCE`] / [`DEDICATED_SPAN`], followed by the remaining attributes in
//! their original order. [`normalize_dedicated`] applies the same reordering to a trace so
//! it can be compared with what a block returns.

mod arrow_cols;
mod bloom;
mod index;
mod levels;
mod meta;
mod pages;
mod project;
mod reader;
mod schema;
pub mod search;
mod slices;
#[doc(hidden)]
pub mod synth;
mod tags;
pub mod tenant_index;
pub(crate) mod wire_rows;
mod writer;

#[cfg(test)]
mod tests;

use bytes::Bytes;

use crate::model::{any_value, KeyValue, ResourceSpans, TenantId, TraceId};

pub use bloom::{bloom_shard_count, bloom_shard_for, build_blooms, BloomShard, BLOOM_SEED};
pub use index::RowGroupIndex;
pub use meta::{unix_nanos_now, writing_key, BlockMeta, DedicatedColumn, FORMAT, WRITING_FILE};
pub use project::row_group_traces_projected;
pub use reader::{
    batch_to_traces, decode_footer, find_trace, find_trace_in_pages, footer_fetch_range, int_stats,
    page_index_start, plan_id_probe, plan_lookup, probe_id_in_pages, read_all_traces,
    row_group_byte_range, row_group_traces, LookupPlan, PageRead, RowGroupTraces, SparseChunk,
};
pub use schema::{arrow_schema, parquet_schema, paths, projection, value_type, SCHEMA_TEXT};
pub use search::{
    decode_row_group, merge_columns, read_hit_columns, reads_hits_apart, ColumnarBlock,
    ColumnarTrace, HitColumns, HitRow, Phase, RowGroupRead, SearchColumns,
};
pub use slices::SlicePlan;
pub use tags::{tags_key, TagCollector, TagSummary, TagValues, MAX_VALUES_PER_TAG, TAGS_FILE};
pub use tenant_index::{CompactedBlockMeta, TenantIndex};
pub use writer::{
    encode_block, encode_block_sliced, encode_block_sliced_into, encode_block_sorted,
    encode_block_sorted_into, BlockParts, SlicedTrace, TraceRows,
};

pub const META_FILE: &str = "meta.json";
/// Replaces `meta.json` once a block has been compacted into another (Tempo's name): the
/// block stays readable by queriers with an older block list until it is deleted.
pub const COMPACTED_META_FILE: &str = "meta.compacted.json";
/// The per-tenant block list object, `<tenant>/index.json.gz` (Tempo's name).
pub const TENANT_INDEX_FILE: &str = "index.json.gz";
pub const DATA_FILE: &str = "data.parquet";
pub const INDEX_FILE: &str = "index";
pub const BLOOM_PREFIX: &str = "bloom-";

/// Parquet compression codec for `data.parquet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockCompression {
    None,
    Snappy,
    /// ZSTD at the given level (1..=22).
    Zstd(i32),
}

#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// Target uncompressed size of a row group. The size is estimated while writing from the
    /// protobuf-encoded size of each trace; a row group is closed once it reaches the target,
    /// so it holds at least one trace.
    pub row_group_size_bytes: usize,
    /// Target false-positive rate of the bloom filter, in (0, 1).
    pub bloom_false_positive: f64,
    /// Target size of one bloom shard.
    pub bloom_shard_size_bytes: usize,
    pub compression: BlockCompression,
    /// Dictionary-encode string and binary columns (integer columns always are).
    pub string_dictionary: bool,
    /// Parquet data page size limit (uncompressed). A trace lookup fetches and decompresses
    /// about one page per column, so small pages make lookups cheap; too small costs space.
    pub data_page_size_bytes: usize,
    /// Rows (traces) at most per data page in every column. Data page sizes do not count
    /// repetition and definition levels, so sparse nested columns need this bound.
    pub data_page_rows: usize,
    /// Spans a data page may hold before `data_page_rows` caps it: a block of small traces
    /// gets up to `data_page_spans / spans per trace` rows per page (from its first row
    /// group), so its pages are as full as those of large traces. 128-row pages of 3–10
    /// span traces made a third of the block page headers, levels that compress poorly in
    /// small frames, and page-index entries. 0 keeps `data_page_rows` as is.
    pub data_page_spans: usize,
    /// Rows (traces) per page of the trace_id column. A lookup decodes the trace IDs of
    /// one such page to find the row; the pages of the other columns are cut by size.
    pub trace_id_page_rows: usize,
    /// Time slices at most per block (see [`SlicePlan::newest_small`]): a newest-first
    /// search with a limit reads the newest slice first and can stop there, and a lookup
    /// probes one row group per slice. The newest slices hold
    /// [`BlockConfig::newest_slice_bytes`] of data each and older ones double, up to this
    /// many.
    pub max_time_slices: usize,
}

impl BlockConfig {
    /// What a cut (ingester, block-builder) compresses with: encoding is most of the CPU
    /// an ingested span costs, and the bytes last only until the compactor rewrites the
    /// block at the default level. Snappy keeps no per-chunk state: zstd sets up a
    /// compression context for every column chunk of a block's many small row groups.
    /// Over sustained 60 s synthetic ingest it gave 6% more acked spans per CPU-second
    /// than zstd(1) (222k against 208k, medians of six and three runs; on the OTel SDK
    /// recording the two were within noise) for 19% more bytes at the cut
    /// (`block/encode_snappy`: 57.7 against 48.4 B/span).
    pub const CUT_COMPRESSION: BlockCompression = BlockCompression::Snappy;

    /// Data in each of a block's two newest time slices: a sixty-fourth of a row group
    /// (512 KiB by default, about 85 synthetic traces), so a limit-20 search over blocks cut
    /// from the same seconds reads about one such slice per block. A sixteenth read 4–5×
    /// the spans (a quarter 2.3–3× more again); the cost is two more levels of slices for a
    /// lookup to probe.
    pub fn newest_slice_bytes(&self) -> usize {
        (self.row_group_size_bytes / 64).max(1)
    }
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self {
            row_group_size_bytes: 32 << 20,
            bloom_false_positive: 0.01,
            bloom_shard_size_bytes: 100 << 10,
            compression: BlockCompression::Zstd(6),
            string_dictionary: true,
            data_page_size_bytes: 8 << 10,
            data_page_rows: 128,
            data_page_spans: 4096,
            trace_id_page_rows: 16,
            max_time_slices: 16,
        }
    }
}

/// One trace to be written: all its fragments.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceInput {
    pub id: TraceId,
    pub batches: Vec<ResourceSpans>,
}

/// A block ready to be uploaded: every object but the keys.
#[derive(Debug, Clone)]
pub struct EncodedBlock {
    pub meta: BlockMeta,
    pub data: Bytes,
    /// Shard N goes to `bloom_key(.., N)`.
    pub blooms: Vec<Bytes>,
    pub index: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block has no traces")]
    Empty,
    #[error("invalid block config: {0}")]
    Config(String),
    #[error("block schema: {0}")]
    Schema(String),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("corrupt block data: {0}")]
    Corrupt(String),
    #[error("corrupt attribute value: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("corrupt bloom filter: {0}")]
    Bloom(String),
    #[error("corrupt row group index: {0}")]
    Index(String),
    #[error("corrupt meta.json: {0}")]
    Meta(#[from] serde_json::Error),
    #[error("traces are not in strictly ascending ID order: {next} after {prev}")]
    NotSorted { prev: TraceId, next: TraceId },
    #[error("reading trace to encode: {0}")]
    Input(String),
    #[error("row group {rg} out of range: block has {count}")]
    RowGroupOutOfRange { rg: usize, count: usize },
}

fn block_prefix(tenant: &TenantId, id: uuid::Uuid) -> String {
    format!("{}/{}/", tenant.as_str(), id)
}

pub fn meta_key(tenant: &TenantId, id: uuid::Uuid) -> String {
    block_prefix(tenant, id) + META_FILE
}

pub fn compacted_meta_key(tenant: &TenantId, id: uuid::Uuid) -> String {
    block_prefix(tenant, id) + COMPACTED_META_FILE
}

pub fn tenant_index_key(tenant: &TenantId) -> String {
    format!("{}/{TENANT_INDEX_FILE}", tenant.as_str())
}

pub fn data_key(tenant: &TenantId, id: uuid::Uuid) -> String {
    block_prefix(tenant, id) + DATA_FILE
}

pub fn bloom_key(tenant: &TenantId, id: uuid::Uuid, shard: u32) -> String {
    format!("{}{BLOOM_PREFIX}{shard}", block_prefix(tenant, id))
}

pub fn index_key(tenant: &TenantId, id: uuid::Uuid) -> String {
    block_prefix(tenant, id) + INDEX_FILE
}

/// The value type a dedicated column accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedicatedType {
    String,
    Int,
}

impl DedicatedType {
    pub fn as_str(self) -> &'static str {
        match self {
            DedicatedType::String => "string",
            DedicatedType::Int => "int",
        }
    }

    fn matches(self, kv: &KeyValue) -> bool {
        let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
        matches!(
            (self, v),
            (
                DedicatedType::String,
                Some(any_value::Value::StringValue(_))
            ) | (DedicatedType::Int, Some(any_value::Value::IntValue(_)))
        )
    }
}

/// An attribute with its own column: (attribute key, column name, type).
pub type Dedicated = (&'static str, &'static str, DedicatedType);

/// Resource attributes with dedicated columns, in the order they are restored on read.
pub const DEDICATED_RESOURCE: [Dedicated; 5] = [
    ("service.name", "service_name", DedicatedType::String),
    (
        "k8s.cluster.name",
        "k8s_cluster_name",
        DedicatedType::String,
    ),
    (
        "k8s.namespace.name",
        "k8s_namespace_name",
        DedicatedType::String,
    ),
    ("k8s.pod.name", "k8s_pod_name", DedicatedType::String),
    (
        "k8s.container.name",
        "k8s_container_name",
        DedicatedType::String,
    ),
];

/// Span attributes with dedicated columns, in the order they are restored on read.
pub const DEDICATED_SPAN: [Dedicated; 7] = [
    ("http.method", "http_method", DedicatedType::String),
    (
        "http.request.method",
        "http_request_method",
        DedicatedType::String,
    ),
    ("http.url", "http_url", DedicatedType::String),
    ("url.path", "url_path", DedicatedType::String),
    ("http.route", "http_route", DedicatedType::String),
    ("http.status_code", "http_status_code", DedicatedType::Int),
    (
        "http.response.status_code",
        "http_response_status_code",
        DedicatedType::Int,
    ),
];

/// For each dedicated attribute, the index of the first attribute with that key and a
/// matching type. Later duplicates stay in the generic list.
pub(crate) fn dedicated_positions<const N: usize>(
    attrs: &[KeyValue],
    spec: &[Dedicated; N],
) -> [Option<usize>; N] {
    let mut out = [None; N];
    for (i, kv) in attrs.iter().enumerate() {
        for (slot, (key, _, ty)) in out.iter_mut().zip(spec) {
            if slot.is_none() && kv.key == *key && ty.matches(kv) {
                *slot = Some(i);
                break;
            }
        }
    }
    out
}

/// [`dedicated_positions`] over attributes read off the wire.
pub(crate) fn wire_positions<const N: usize>(
    attrs: &[wire_rows::Attr<'_>],
    spec: &[Dedicated; N],
) -> [Option<usize>; N] {
    use wire_rows::Value;
    let mut out = [None; N];
    for (i, a) in attrs.iter().enumerate() {
        for (slot, (key, _, ty)) in out.iter_mut().zip(spec) {
            let typed = matches!(
                (ty, a.value),
                (DedicatedType::String, Some(Value::Str(_)))
                    | (DedicatedType::Int, Some(Value::Int(_)))
            );
            if slot.is_none() && a.key == *key && typed {
                *slot = Some(i);
                break;
            }
        }
    }
    out
}

fn normalize_list<const N: usize>(attrs: &mut Vec<KeyValue>, spec: &[Dedicated; N]) {
    let pos = dedicated_positions(attrs, spec);
    if pos.iter().all(Option::is_none) {
        return;
    }
    let mut taken: Vec<Option<KeyValue>> = std::mem::take(attrs).into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(taken.len());
    for p in pos.iter().flatten() {
        if let Some(kv) = taken[*p].take() {
            out.push(kv);
        }
    }
    out.extend(taken.into_iter().flatten());
    *attrs = out;
}

/// Reorders resource and span attributes the way a block read returns them: dedicated
/// attributes first in their fixed order, then the rest in original order.
pub fn normalize_dedicated(batches: &mut [ResourceSpans]) {
    for rs in batches {
        if let Some(r) = rs.resource.as_mut() {
            normalize_list(&mut r.attributes, &DEDICATED_RESOURCE);
        }
        for ss in &mut rs.scope_spans {
            for span in &mut ss.spans {
                normalize_list(&mut span.attributes, &DEDICATED_SPAN);
            }
        }
    }
}
