//! `vivace blocks inspect <id>` and `vivace blocks verify [<id>...]`: a block's anatomy, and
//! an end-to-end check of every object of a block against its meta.json.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::Duration;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use uuid::Uuid;

use super::tools::{open_bucket, BucketArgs, Output, ToolError};
use crate::backend::{Backend, BackendError};
use crate::block::{
    self, BlockMeta, BloomShard, CompactedBlockMeta, RowGroupIndex, TagSummary, TraceInput,
    BLOOM_PREFIX, COMPACTED_META_FILE, DATA_FILE, INDEX_FILE, META_FILE, TAGS_FILE,
};
use crate::model::{TenantId, TraceId};

/// A progress bar on stderr, drawn only for people: never when stderr is not a terminal
/// or when the output is JSON (scripts read it).
fn progress(len: u64, output: Output) -> ProgressBar {
    if output == Output::Json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn parse_block_id(s: &str) -> Result<Uuid, ToolError> {
    Uuid::parse_str(s).map_err(|e| ToolError::Invalid(format!("block id {s:?}: {e}")))
}

/// Names of the objects in a block's folder.
async fn block_files(
    backend: &Backend,
    tenant: &TenantId,
    id: Uuid,
) -> Result<BTreeSet<String>, BackendError> {
    let prefix = format!("{}/{id}", tenant.as_str());
    Ok(backend
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_owned))
        .collect())
}

/// The block's meta: `meta.json`, or for a compacted block its marker (which wins when a
/// crash left both). `Ok(None)`: neither exists.
async fn read_meta(
    backend: &Backend,
    tenant: &TenantId,
    id: Uuid,
    files: &BTreeSet<String>,
) -> Result<Option<(BlockMeta, bool)>, String> {
    let (key, compacted) = if files.contains(COMPACTED_META_FILE) {
        (block::compacted_meta_key(tenant, id), true)
    } else if files.contains(META_FILE) {
        (block::meta_key(tenant, id), false)
    } else {
        return Ok(None);
    };
    let bytes = backend.get(&key).await.map_err(|e| e.to_string())?;
    let meta = if compacted {
        CompactedBlockMeta::from_bytes(&bytes).map(|c| c.meta)
    } else {
        BlockMeta::from_bytes(&bytes)
    };
    meta.map(|m| Some((m, compacted)))
        .map_err(|e| format!("{key}: {e}"))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RowGroupInfo {
    index: usize,
    traces: i64,
    uncompressed_bytes: i64,
    compressed_bytes: i64,
    #[serde(rename = "maxTraceID", skip_serializing_if = "Option::is_none")]
    max_trace_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ColumnInfo {
    path: String,
    compressed_bytes: i64,
    uncompressed_bytes: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BloomInfo {
    shards: u32,
    total_bytes: u64,
    shard_bytes: Vec<u64>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct ScopeTags {
    names: usize,
    values: usize,
    truncated_names: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Inspection {
    meta: BlockMeta,
    compacted: bool,
    objects: Vec<String>,
    row_groups: Vec<RowGroupInfo>,
    columns: Vec<ColumnInfo>,
    bloom: BloomInfo,
    /// Per scope; absent when the block has no tags.json.
    tags: Option<BTreeMap<String, ScopeTags>>,
}

pub(super) async fn inspect(block_id: &str, b: &BucketArgs) -> Result<String, ToolError> {
    let id = parse_block_id(block_id)?;
    let (tenant, backend, _) = open_bucket(b)?;
    let files = block_files(&backend, &tenant, id).await?;
    let (meta, compacted) = read_meta(&backend, &tenant, id, &files)
        .await
        .map_err(ToolError::Invalid)?
        .ok_or_else(|| ToolError::Invalid(format!("block {id}: no {META_FILE} in the bucket")))?;
    let bar = progress(3 + u64::from(meta.bloom_shards), b.output);

    bar.set_message("footer");
    let data_key = block::data_key(&tenant, id);
    let tail = backend
        .get_range(&data_key, block::footer_fetch_range(&meta))
        .await?;
    let size = meta.size;
    let footer = tokio::task::spawn_blocking(move || block::decode_footer(tail, size))
        .await
        .map_err(|e| ToolError::Invalid(e.to_string()))?
        .map_err(|e| ToolError::Invalid(format!("block {id}: {e}")))?;
    bar.inc(1);

    bar.set_message("index");
    let index = match backend.get(&block::index_key(&tenant, id)).await {
        Ok(bytes) => RowGroupIndex::from_bytes(&bytes).ok(),
        Err(BackendError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    bar.inc(1);
    let mut row_groups = Vec::new();
    let mut columns: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (i, rg) in footer.row_groups().iter().enumerate() {
        let mut compressed = 0;
        for c in rg.columns() {
            let e = columns.entry(c.column_path().string()).or_default();
            e.0 += c.compressed_size();
            e.1 += c.uncompressed_size();
            compressed += c.compressed_size();
        }
        row_groups.push(RowGroupInfo {
            index: i,
            traces: rg.num_rows(),
            uncompressed_bytes: rg.total_byte_size(),
            compressed_bytes: compressed,
            max_trace_id: index
                .as_ref()
                .and_then(|ix| ix.max_ids().get(i))
                .map(TraceId::to_hex),
        });
    }
    let mut columns: Vec<ColumnInfo> = columns
        .into_iter()
        .map(|(path, (c, u))| ColumnInfo {
            path,
            compressed_bytes: c,
            uncompressed_bytes: u,
        })
        .collect();
    columns.sort_by_key(|c| std::cmp::Reverse(c.compressed_bytes));

    let mut shard_bytes = Vec::new();
    for shard in 0..meta.bloom_shards {
        bar.set_message(format!("bloom {shard}"));
        match backend.get(&block::bloom_key(&tenant, id, shard)).await {
            Ok(bytes) => shard_bytes.push(bytes.len() as u64),
            Err(BackendError::NotFound(_)) => shard_bytes.push(0),
            Err(e) => return Err(e.into()),
        }
        bar.inc(1);
    }

    bar.set_message("tags");
    let tags = match backend.get(&block::tags_key(&tenant, id)).await {
        Ok(bytes) => TagSummary::from_bytes(&bytes).ok().map(|t| {
            t.scopes
                .iter()
                .map(|(scope, names)| {
                    let s = ScopeTags {
                        names: names.len(),
                        values: names.values().map(|v| v.values.len()).sum(),
                        truncated_names: names.values().filter(|v| v.truncated).count(),
                    };
                    (scope.clone(), s)
                })
                .collect()
        }),
        Err(BackendError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    bar.finish_and_clear();

    let report = Inspection {
        bloom: BloomInfo {
            shards: meta.bloom_shards,
            total_bytes: shard_bytes.iter().sum(),
            shard_bytes,
        },
        meta,
        compacted,
        objects: files.into_iter().collect(),
        row_groups,
        columns,
        tags,
    };
    if b.output == Output::Json {
        return serde_json::to_string_pretty(&report)
            .map_err(|e| ToolError::Invalid(e.to_string()));
    }
    Ok(inspection_table(&report))
}

fn inspection_table(r: &Inspection) -> String {
    let m = &r.meta;
    let mut out = format!(
        "block {}{}\n  tenant {}  format {}  level {}\n  {} traces, {} spans, {} bytes, {} row groups\n  time {} .. {} (unix ns)\n  objects: {}\n",
        m.block_id,
        if r.compacted { " (compacted)" } else { "" },
        m.tenant_id,
        m.format,
        m.compaction_level,
        m.total_objects,
        m.total_spans,
        m.size,
        m.total_records,
        m.start_time,
        m.end_time,
        r.objects.join(" "),
    );
    out.push_str(&format!(
        "\nrow groups\n  {:>5}  {:>8}  {:>12}  {:>12}  max trace id\n",
        "#", "traces", "compressed", "uncompressed"
    ));
    for rg in &r.row_groups {
        out.push_str(&format!(
            "  {:>5}  {:>8}  {:>12}  {:>12}  {}\n",
            rg.index,
            rg.traces,
            rg.compressed_bytes,
            rg.uncompressed_bytes,
            rg.max_trace_id.as_deref().unwrap_or("-")
        ));
    }
    out.push_str(&format!(
        "\ncolumns (largest first)\n  {:>12}  {:>12}  path\n",
        "compressed", "uncompressed"
    ));
    for c in &r.columns {
        out.push_str(&format!(
            "  {:>12}  {:>12}  {}\n",
            c.compressed_bytes,
            c.uncompressed_bytes,
            // Parquet's list nesting spelled short: a.list.element.b → a[].b
            c.path.replace(".list.element", "[]")
        ));
    }
    out.push_str(&format!(
        "\nbloom: {} shards, {} bytes\n",
        r.bloom.shards, r.bloom.total_bytes
    ));
    match &r.tags {
        None => out.push_str("tags: no tags.json\n"),
        Some(scopes) => {
            out.push_str("tags (names / values / truncated names)\n");
            for (scope, s) in scopes {
                out.push_str(&format!(
                    "  {scope:<16} {:>6} {:>8} {:>6}\n",
                    s.names, s.values, s.truncated_names
                ));
            }
        }
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Verdict {
    block: Uuid,
    ok: bool,
    /// Not checked: a folder without meta.json is a block still being written (or what a
    /// crashed flush left), invisible to queries.
    skipped: bool,
    traces: u64,
    problems: Vec<String>,
}

pub(super) async fn verify(block_ids: &[String], b: &BucketArgs) -> Result<String, ToolError> {
    let (tenant, backend, _) = open_bucket(b)?;
    let ids: Vec<Uuid> = if block_ids.is_empty() {
        backend
            .list_dirs(Some(tenant.as_str()))
            .await?
            .iter()
            .filter_map(|d| Uuid::parse_str(d).ok())
            .collect()
    } else {
        block_ids
            .iter()
            .map(|s| parse_block_id(s))
            .collect::<Result<_, _>>()?
    };
    let bar = progress(ids.len() as u64, b.output);
    let mut verdicts = Vec::with_capacity(ids.len());
    for id in ids {
        bar.set_message(id.to_string());
        verdicts.push(verify_block(&backend, &tenant, id, !block_ids.is_empty()).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let broken: Vec<&Verdict> = verdicts.iter().filter(|v| !v.ok).collect();
    let report = if b.output == Output::Json {
        serde_json::to_string_pretty(&verdicts).map_err(|e| ToolError::Invalid(e.to_string()))?
    } else {
        let mut out = String::new();
        for v in &verdicts {
            if v.skipped {
                out.push_str(&format!(
                    "SKIP {}: no {META_FILE} (not committed)\n",
                    v.block
                ));
            } else if v.ok {
                out.push_str(&format!("OK   {} ({} traces)\n", v.block, v.traces));
            } else {
                out.push_str(&format!("FAIL {}: {}\n", v.block, v.problems.join("; ")));
            }
        }
        out.push_str(&format!(
            "{} blocks checked, {} broken\n",
            verdicts.iter().filter(|v| !v.skipped).count(),
            broken.len()
        ));
        out
    };
    if broken.is_empty() {
        return Ok(report);
    }
    // The full report still goes to stdout; the error names each broken block.
    println!("{}", report.trim_end());
    let mut msg = format!("{} of {} blocks are broken", broken.len(), verdicts.len());
    for v in broken {
        msg.push_str(&format!("\n  block {}: {}", v.block, v.problems.join("; ")));
    }
    Err(ToolError::Broken(msg))
}

/// Checks one block; backend errors other than missing objects abort the whole run (the
/// bucket is unreachable, not the block broken).
async fn verify_block(
    backend: &Backend,
    tenant: &TenantId,
    id: Uuid,
    named: bool,
) -> Result<Verdict, ToolError> {
    let mut v = Verdict {
        block: id,
        ok: false,
        skipped: false,
        traces: 0,
        problems: Vec::new(),
    };
    let files = block_files(backend, tenant, id).await?;
    let meta = match read_meta(backend, tenant, id, &files).await {
        Ok(Some((m, _))) => m,
        Ok(None) if !named => {
            v.skipped = true;
            v.ok = true;
            return Ok(v);
        }
        Ok(None) => {
            v.problems.push(format!("no {META_FILE}"));
            return Ok(v);
        }
        Err(e) => {
            v.problems.push(format!("meta does not parse: {e}"));
            return Ok(v);
        }
    };
    if meta.block_id != id {
        v.problems
            .push(format!("meta names block {} instead", meta.block_id));
    }
    let mut wanted = vec![
        DATA_FILE.to_owned(),
        INDEX_FILE.to_owned(),
        TAGS_FILE.to_owned(),
    ];
    wanted.extend((0..meta.bloom_shards).map(|i| format!("{BLOOM_PREFIX}{i}")));
    let missing: Vec<&String> = wanted.iter().filter(|f| !files.contains(*f)).collect();
    if !missing.is_empty() {
        v.problems.push(format!(
            "missing {}",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    let data = match get_opt(backend, &block::data_key(tenant, id)).await? {
        Some(d) => d,
        None => return Ok(v),
    };
    if data.len() as u64 != meta.size {
        v.problems.push(format!(
            "data.parquet is {} bytes, meta says {}",
            data.len(),
            meta.size
        ));
    }
    let index = match get_opt(backend, &block::index_key(tenant, id)).await? {
        Some(b) => match RowGroupIndex::from_bytes(&b) {
            Ok(i) => Some(i),
            Err(e) => {
                v.problems.push(format!("index: {e}"));
                None
            }
        },
        None => None,
    };
    let mut blooms = Vec::new();
    for shard in 0..meta.bloom_shards {
        match get_opt(backend, &block::bloom_key(tenant, id, shard)).await? {
            Some(b) => match BloomShard::from_bytes(&b) {
                Ok(bl) => blooms.push(Some(bl)),
                Err(e) => {
                    v.problems.push(format!("bloom-{shard}: {e}"));
                    blooms.push(None);
                }
            },
            None => blooms.push(None),
        }
    }

    // Decoding every row is CPU-bound: off the executor.
    let m = meta.clone();
    let problems = tokio::task::spawn_blocking(move || check_data(&m, data, index, &blooms))
        .await
        .map_err(|e| ToolError::Invalid(e.to_string()))?;
    v.traces = problems.0;
    v.problems.extend(problems.1);
    v.ok = v.problems.is_empty();
    Ok(v)
}

async fn get_opt(backend: &Backend, key: &str) -> Result<Option<Bytes>, ToolError> {
    match backend.get(key).await {
        Ok(b) => Ok(Some(b)),
        Err(BackendError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The checks that need the decoded data: footer against meta, every row, ID order,
/// bloom membership, index maxima. Returns (traces decoded, problems).
fn check_data(
    meta: &BlockMeta,
    data: Bytes,
    index: Option<RowGroupIndex>,
    blooms: &[Option<BloomShard>],
) -> (u64, Vec<String>) {
    let mut problems = Vec::new();
    let size = data.len() as u64;
    let footer_len = data
        .get(data.len().saturating_sub(8)..data.len().saturating_sub(4))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u64::from(u32::from_le_bytes(b)) + 8);
    if footer_len != Some(u64::from(meta.footer_size)) {
        problems.push(format!(
            "footer is {} bytes, meta says {}",
            footer_len.map_or("?".into(), |n| n.to_string()),
            meta.footer_size
        ));
    }
    let tail_len = (u64::from(meta.footer_size) + u64::from(meta.page_index_size)).min(size);
    let footer = match block::decode_footer(data.slice((size - tail_len) as usize..), size) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!("footer: {e}"));
            return (0, problems);
        }
    };
    let row_groups = footer.num_row_groups();
    if row_groups != meta.total_records as usize {
        problems.push(format!(
            "{row_groups} row groups, meta says {}",
            meta.total_records
        ));
    }
    let traces: Vec<TraceInput> = match block::read_all_traces(data) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("rows do not decode: {e}"));
            return (0, problems);
        }
    };
    let n = traces.len() as u64;
    if n != meta.total_objects {
        problems.push(format!("{n} traces, meta says {}", meta.total_objects));
    }
    let spans: u64 = traces
        .iter()
        .flat_map(|t| &t.batches)
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len() as u64)
        .sum();
    if spans != meta.total_spans {
        problems.push(format!("{spans} spans, meta says {}", meta.total_spans));
    }
    // Rows ascend by ID within each row group; a block in time slices restarts the order
    // at each slice, so across row groups the IDs need only be unique.
    let mut at = 0usize;
    for rg in footer.row_groups() {
        let rows = usize::try_from(rg.num_rows()).unwrap_or(0);
        let group = traces.get(at..(at + rows).min(traces.len())).unwrap_or(&[]);
        if let Some(w) = group.windows(2).find(|w| w[0].id >= w[1].id) {
            problems.push(format!(
                "trace IDs not strictly ascending: {} then {}",
                w[0].id, w[1].id
            ));
            break;
        }
        at += rows;
    }
    let unique: std::collections::HashSet<TraceId> = traces.iter().map(|t| t.id).collect();
    if unique.len() != traces.len() {
        problems.push(format!(
            "{} trace IDs appear more than once",
            traces.len() - unique.len()
        ));
    }
    if blooms.iter().all(Option::is_some) {
        let absent = traces
            .iter()
            .filter(|t| {
                let shard = block::bloom_shard_for(&t.id, meta.bloom_shards) as usize;
                !blooms
                    .get(shard)
                    .and_then(Option::as_ref)
                    .is_some_and(|b| b.may_contain(&t.id))
            })
            .count();
        if absent > 0 {
            problems.push(format!("bloom filter misses {absent} trace IDs"));
        }
    }
    if let Some(index) = index {
        let (mut minima, mut maxima) = (Vec::new(), Vec::with_capacity(row_groups));
        let mut at = 0usize;
        for rg in footer.row_groups() {
            minima.push(traces.get(at).map(|t| t.id));
            at += usize::try_from(rg.num_rows()).unwrap_or(0);
            maxima.push(traces.get(at.wrapping_sub(1)).map(|t| t.id));
        }
        if let Some(min) = index.min_ids() {
            let listed: Vec<Option<TraceId>> = min.iter().copied().map(Some).collect();
            if listed != minima {
                problems.push("index lists row-group minima that do not match the data".into());
            }
        }
        let expected: Vec<Option<TraceId>> = index.max_ids().iter().copied().map(Some).collect();
        if expected != maxima {
            problems.push(format!(
                "index lists {} row-group maxima that do not match the data",
                expected.iter().zip(&maxima).filter(|(a, b)| a != b).count()
                    + expected.len().abs_diff(maxima.len())
            ));
        }
    }
    (n, problems)
}
