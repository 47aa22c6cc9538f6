//! The bucket commands of the same binary: `vivace blocks list` and `vivace query trace|search`
//! read what a server flushed, with the server stopped.

use std::process::Command;
use std::time::Duration;

use prost::Message;

use crate::harness::*;
use crate::ingest::{pb_request, pb_span};

fn vivace(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vivace"))
        .args(args)
        .arg(format!("--config.file={}", server.config_path().display()))
        .output()
        .expect("run vivace");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_commands_read_flushed_blocks() {
    let mut server = Server::start_with(Opts::fast_flush()).await;
    let tid = rand_trace_id();
    let spans = (0..3)
        .map(|_| pb_span(&tid, &rand_span_id(), "cli-op", now_nanos()))
        .collect();
    let (code, _) = server
        .post_otlp(
            pb_request("cli-svc", spans).encode_to_vec(),
            &[("content-type", "application/x-protobuf")],
        )
        .await;
    assert_eq!(code, 200);
    server.wait_blocks_flushed(1, Duration::from_secs(60)).await;
    server.stop_sigterm().await;

    let (ok, out, err) = vivace(&server, &["blocks", "list", "--output", "json"]);
    assert!(ok, "{err}");
    let blocks: serde_json::Value = serde_json::from_str(&out).expect("json block list");
    let blocks = blocks.as_array().unwrap();
    assert!(!blocks.is_empty(), "{out}");
    assert!(
        blocks.iter().any(|b| b["totalSpans"].as_u64() == Some(3)),
        "{out}"
    );

    let (ok, out, err) = vivace(&server, &["blocks", "list"]);
    assert!(ok && out.contains("blocks"), "{out}{err}");

    let (ok, out, err) = vivace(&server, &["query", "trace", &hex::encode(tid)]);
    assert!(ok, "{err}");
    let trace: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(count_json_spans(&trace["batches"]), 3, "{out}");

    let (ok, out, err) = vivace(
        &server,
        &["query", "search", "{ resource.service.name = \"cli-svc\" }"],
    );
    assert!(ok, "{err}");
    assert!(out.contains(&hex::encode(tid)), "{out}");

    let (ok, _, err) = vivace(&server, &["query", "trace", &hex::encode(rand_trace_id())]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = vivace(&server, &["query", "search", "{ .a = "]);
    assert!(!ok && err.contains("TraceQL"), "{err}");
}

fn count_json_spans(batches: &serde_json::Value) -> usize {
    batches
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
        .map(|ss| ss["spans"].as_array().map_or(0, |s| s.len()))
        .sum()
}

/// `vivace blocks verify|inspect` against a flushed block, then against the same block
/// with an object dropped and with data.parquet damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_verify_and_inspect() {
    let mut server = Server::start_with(Opts::fast_flush()).await;
    let tids: Vec<[u8; 16]> = (0..5).map(|_| rand_trace_id()).collect();
    let spans = tids
        .iter()
        .flat_map(|tid| (0..2).map(|_| pb_span(tid, &rand_span_id(), "verify-op", now_nanos())))
        .collect();
    let (code, _) = server
        .post_otlp(
            pb_request("verify-svc", spans).encode_to_vec(),
            &[("content-type", "application/x-protobuf")],
        )
        .await;
    assert_eq!(code, 200);
    server.wait_blocks_flushed(1, Duration::from_secs(60)).await;
    // The flush's uploads are counted by operation.
    let text = server.metrics_text().await;
    let puts = text
        .lines()
        .find_map(|l| l.strip_prefix("vivace_backend_requests_total{operation=\"put\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(puts.is_some_and(|n| n >= 4), "{text}");
    server.stop_sigterm().await;

    let metas = server.block_metas();
    assert!(!metas.is_empty());
    let block_dirs: Vec<std::path::PathBuf> = metas
        .iter()
        .map(|m| m.parent().unwrap().to_owned())
        .collect();
    let ids: Vec<String> = block_dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();

    let (ok, out, err) = vivace(&server, &["blocks", "verify"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("OK   {}", ids[0])), "{out}");
    let (ok, out, err) = vivace(&server, &["blocks", "verify", "--output", "json"]);
    assert!(ok, "{err}");
    let verdicts: serde_json::Value = serde_json::from_str(&out).expect("json verdicts");
    assert_eq!(verdicts.as_array().unwrap().len(), ids.len(), "{out}");
    assert!(verdicts.as_array().unwrap().iter().all(|v| v["ok"] == true));
    assert!(err.is_empty(), "no progress bar without a terminal: {err}");

    // inspect: the row groups hold every trace the meta counts, five in all.
    let mut traces = 0;
    for id in &ids {
        let (ok, out, err) = vivace(&server, &["blocks", "inspect", id, "--output", "json"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json inspection");
        let in_groups: u64 = v["rowGroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|rg| rg["traces"].as_u64().unwrap())
            .sum();
        assert_eq!(
            in_groups,
            v["meta"]["totalObjects"].as_u64().unwrap(),
            "{out}"
        );
        assert_eq!(v["bloom"]["shards"], v["meta"]["bloomShards"]);
        assert!(v["columns"].as_array().is_some_and(|c| !c.is_empty()));
        assert!(v["tags"]["span"]["names"].as_u64().is_some(), "{out}");
        traces += in_groups;
    }
    assert_eq!(traces, 5);
    let (ok, out, err) = vivace(&server, &["blocks", "inspect", &ids[0]]);
    assert!(
        ok && out.contains("row groups") && out.contains("bloom:"),
        "{out}{err}"
    );

    // A dropped bloom shard: verify fails and names the block and the object.
    let bloom = block_dirs[0].join("bloom-0");
    let saved = std::fs::read(&bloom).unwrap();
    std::fs::remove_file(&bloom).unwrap();
    let (ok, out, err) = vivace(&server, &["blocks", "verify"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!("block {}", ids[0])) && err.contains("bloom-0"),
        "{err}"
    );
    std::fs::write(&bloom, saved).unwrap();
    let (ok, _, err) = vivace(&server, &["blocks", "verify", &ids[0]]);
    assert!(ok, "restored: {err}");

    // data.parquet cut short: the size and the footer no longer match meta.json.
    let data = block_dirs[0].join("data.parquet");
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&data, &bytes[100..]).unwrap();
    let (ok, _, err) = vivace(&server, &["blocks", "verify", &ids[0]]);
    assert!(!ok);
    assert!(
        err.contains(&format!("block {}", ids[0])) && err.contains("data.parquet is"),
        "{err}"
    );
    let (ok, _, err) = vivace(&server, &["blocks", "verify", "not-a-uuid"]);
    assert!(!ok && err.contains("block id"), "{err}");
}

async fn put_block(
    backend: &vivace::backend::Backend,
    tenant: &vivace::model::TenantId,
    traces: Vec<vivace::block::TraceInput>,
) -> vivace::block::BlockMeta {
    use vivace::block;
    let t = tenant.clone();
    let enc = tokio::task::spawn_blocking(move || {
        block::encode_block(
            &t,
            uuid::Uuid::new_v4(),
            0,
            traces,
            &block::BlockConfig::default(),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let id = enc.meta.block_id;
    let mut puts = vec![
        (block::data_key(tenant, id), enc.data.clone()),
        (block::index_key(tenant, id), enc.index.clone()),
    ];
    for (i, b) in enc.blooms.iter().enumerate() {
        puts.push((block::bloom_key(tenant, id, i as u32), b.clone()));
    }
    puts.push((block::meta_key(tenant, id), enc.meta.to_bytes().into()));
    for (k, v) in puts {
        backend.put(&k, v).await.unwrap();
    }
    enc.meta
}

/// Object-store requests per trace-by-ID lookup on a real S3 server, where every page
/// range is its own ranged GET: cold = bloom + index + footer + the page ranges; warm =
/// the page ranges only; blocks that do not hold the trace cost their bloom shard once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_lookup_requests_on_s3() {
    use std::sync::Arc;
    use vivace::block::synth;
    use vivace::blocklist::BlockList;
    use vivace::metrics::Metrics;
    use vivace::model::TenantId;
    use vivace::querier::Querier;

    let Some(s3) = crate::s3_server::S3Server::start("lookup-requests").await else {
        return;
    };
    let backend = s3.backend("lookups");
    let tenant = TenantId::single();
    let mut blocks = Vec::new();
    for seed in 0..6u64 {
        // One bigger block (several MB), where page ranges lie far apart.
        let n = if seed == 3 { 4000 } else { 300 };
        let traces = synth::realistic_traces(n, 500 + seed);
        let wanted = traces[n * 2 / 5].id;
        blocks.push((put_block(&backend, &tenant, traces).await, wanted));
    }
    let querier = |metas: &[vivace::block::BlockMeta]| {
        let q = Querier::new(
            backend.clone(),
            None,
            Arc::new(BlockList::default()),
            Arc::new(Metrics::default()),
            4,
        );
        for m in metas {
            q.blocklist().add(tenant.clone(), m.clone());
        }
        q
    };

    // One block.
    let q = querier(&[blocks[3].0.clone()]);
    let before = backend.requests().total();
    let cold = q.find_trace(&tenant, &blocks[3].1, None).await.unwrap();
    assert_eq!(backend.requests().total() - before, cold.requests);
    let warm = q.find_trace(&tenant, &blocks[3].1, None).await.unwrap();
    assert!(!warm.batches.is_empty());
    assert!(warm.requests >= 1);
    assert_eq!(
        cold.requests,
        warm.requests + 3,
        "bloom, index, footer once"
    );
    let pages = warm.requests;

    // All six blocks, the trace in one of them.
    let metas: Vec<_> = blocks.iter().map(|(m, _)| m.clone()).collect();
    let q = querier(&metas);
    let before = backend.requests().total();
    let cold6 = q.find_trace(&tenant, &blocks[3].1, None).await.unwrap();
    assert_eq!(backend.requests().total() - before, cold6.requests);
    let warm6 = q.find_trace(&tenant, &blocks[3].1, None).await.unwrap();
    assert!(!warm6.batches.is_empty());
    let others = metas.len() as u64 - 1;
    assert!(
        cold6.requests >= 3 + pages + others,
        "cold {}",
        cold6.requests
    );
    // Warm: the holding block's pages; another block only on a bloom false positive.
    assert!(warm6.requests >= pages, "warm {}", warm6.requests);
    // What merging nearby page ranges would trade: requests against bytes read.
    let (meta, id) = &blocks[3];
    let data_key = vivace::block::data_key(&tenant, meta.block_id);
    let tail = backend
        .get_range(&data_key, vivace::block::footer_fetch_range(meta))
        .await
        .unwrap();
    let footer = vivace::block::decode_footer(tail, meta.size).unwrap();
    let vivace::block::LookupPlan::Pages(plan) =
        vivace::block::plan_lookup(&footer, 0, id).unwrap()
    else {
        panic!("page index expected")
    };
    // Nearby page ranges are fetched together: a warm lookup costs a handful of GETs,
    // not one per page range.
    assert!(
        pages < plan.ranges.len() as u64 && pages <= 16,
        "{pages} GETs for {} page ranges",
        plan.ranges.len()
    );
    eprintln!(
        "S3 trace-by-id requests: 1 block cold {} warm {}; {} blocks cold {} warm {} \
         ({} page ranges per lookup, inspected {} bytes)",
        cold.requests,
        warm.requests,
        metas.len(),
        cold6.requests,
        warm6.requests,
        plan.ranges.len(),
        warm6.inspected_bytes
    );
}
