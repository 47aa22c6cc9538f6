//! Storage on a real S3-compatible server (SeaweedFS, see `s3_server`): the conformance
//! suite that memory and local pass in unit tests, and vivace end to end with the bucket
//! as the only state that survives.

use std::time::{Duration, Instant};

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use serde_json::Value as J;

use vivace::backend::{conformance, BackendError};

use crate::harness::*;
use crate::ingest::*;
use crate::s3_server::S3Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conformance() {
    let Some(s3) = S3Server::start("conformance").await else {
        return;
    };
    let t0 = Instant::now();
    conformance::run(&s3.backend("")).await;
    eprintln!("conformance on bare bucket: {:?}", t0.elapsed());

    // The same suite below a prefix; every key it wrote is under the prefix.
    let t0 = Instant::now();
    conformance::run(&s3.backend("team-a/traces")).await;
    eprintln!("conformance below a prefix: {:?}", t0.elapsed());
    let bare = s3.backend("");
    let under = bare.list("team-a/traces/tenant-a").await.unwrap();
    assert!(!under.is_empty());
    assert!(under
        .iter()
        .all(|k| k.starts_with("team-a/traces/tenant-a/")));
    assert_eq!(
        bare.list_dirs(Some("team-a")).await.unwrap(),
        vec!["traces".to_owned()]
    );

    // Wrong credentials are an error, never "not found" or an empty listing.
    let mut cfg = s3.s3_config("");
    cfg.secret_key = vivace::config::Secret("wrong".into());
    let wrong = vivace::backend::Backend::from_config(&vivace::config::TraceStorageConfig {
        backend: vivace::config::BackendKind::S3,
        s3: cfg,
        ..Default::default()
    })
    .unwrap();
    assert!(matches!(
        wrong.get("tenant-a/ranges/data.parquet").await,
        Err(BackendError::Store(_))
    ));
    assert!(wrong.list("tenant-d").await.is_err());
}

/// Requests issued while the server is down are retried with backoff and succeed once it
/// is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_requests_retry_while_the_server_restarts() {
    let Some(mut s3) = S3Server::start("retries").await else {
        return;
    };
    let b = s3.backend("");
    b.put("t/blk/meta.json", bytes::Bytes::from_static(b"{\"v\":1}"))
        .await
        .unwrap();
    s3.stop();
    let t0 = Instant::now();
    let put = {
        let b = b.clone();
        tokio::spawn(async move {
            b.put("t/blk/index", bytes::Bytes::from_static(b"idx"))
                .await
        })
    };
    let get = {
        let b = b.clone();
        tokio::spawn(async move { b.get("t/blk/meta.json").await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if put.is_finished() {
        panic!("the put gave up at once: {:?}", put.await.unwrap());
    }
    s3.start_again().await;
    put.await
        .unwrap()
        .expect("put retried until the server came back");
    assert_eq!(
        get.await.unwrap().expect("get retried"),
        bytes::Bytes::from_static(b"{\"v\":1}")
    );
    eprintln!(
        "requests completed {:?} after the server went down",
        t0.elapsed()
    );
    assert_eq!(
        b.get("t/blk/index").await.unwrap(),
        bytes::Bytes::from_static(b"idx")
    );
}

/// vivace flushes blocks to S3; a fresh vivace with an empty WAL dir, pointed at the same
/// bucket, serves the trace by ID and through search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bucket_is_the_source_of_truth() {
    let Some(s3) = S3Server::start("vivace-e2e").await else {
        return;
    };
    let prefix = "cluster-1";
    let opts = Opts {
        storage: Some(s3.storage_yaml(prefix)),
        ..Opts::fast_flush()
    };
    let mut first = Server::start_with(opts.clone()).await;
    assert!(
        first.log_text().contains("s3:vivace-e2e@http://127.0.0.1:"),
        "startup log names the bucket\n{}",
        first.log_tail(20)
    );

    let service = format!("s3-shop-{}", hex::encode(&rand_span_id()[..3]));
    let trace_id = rand_trace_id();
    let (root_id, child_id) = (rand_span_id(), rand_span_id());
    let base = base_time();
    let mut root = SpanSpec::simple(trace_id, root_id, None, "GET /cart", base);
    root.kind = SpanKind::Server;
    root.end = at(base, 250_000_000);
    root.attrs = vec![KeyValue::new("http.method", "GET")];
    let child = SpanSpec::simple(
        trace_id,
        child_id,
        Some(root_id),
        "redis get",
        at(base, 10_000_000),
    );
    let resource = Resource::builder_empty()
        .with_attribute(KeyValue::new("service.name", service.clone()))
        .build();
    export(
        &first,
        Transport::Grpc,
        &resource,
        vec![root.build(), child.build()],
    )
    .await;
    first.wait_blocks_flushed(1, Duration::from_secs(60)).await;

    // The block is in the bucket, below the prefix, committed by its meta.json.
    let bare = s3.backend("");
    let keys = bare.list(&format!("{prefix}/single-tenant")).await.unwrap();
    assert!(
        keys.iter().any(|k| k.ends_with("/meta.json")),
        "no meta.json under {prefix}/single-tenant: {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.ends_with("/data.parquet")),
        "{keys:?}"
    );
    first.stop_sigterm().await;

    // A brand-new process: new temp dir, empty WAL, same bucket.
    let second = Server::start_with(opts).await;
    assert_ne!(second.dir.path(), first.dir.path());
    let id = hex::encode(trace_id);
    let n = second
        .wait_trace_spans(&id, 2, Duration::from_secs(30))
        .await;
    assert_eq!(
        n,
        2,
        "trace read back from the bucket\n{}",
        second.log_tail(30)
    );
    let v2 = second.trace_v2_json(&id).await;
    let text = v2.to_string();
    assert!(
        text.contains("GET /cart") && text.contains("redis get"),
        "{text}"
    );

    let q = format!("{{ resource.service.name = \"{service}\" && kind = server }}");
    let (code, body) = second
        .get(&format!("/api/search?q={}", url_encode(&q)))
        .await;
    assert_eq!(code, 200, "{body}");
    let resp: J = serde_json::from_str(&body).unwrap();
    let hit = resp["traces"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["traceID"] == id.as_str()))
        .unwrap_or_else(|| panic!("search did not find {id}: {resp}"));
    assert_eq!(hit["rootServiceName"], service.as_str());
    assert_eq!(hit["rootTraceName"], "GET /cart");
    assert_eq!(hit["durationMs"], 250);
}
