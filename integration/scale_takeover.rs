//! Kill -9 a node between writing a cut's block and committing its offsets, with another
//! node alive to take its partitions over (issue #10: "kill the block-builder between
//! upload and offset commit: exactly one block per offset range after"). The survivor must
//! find the dead node's landed cut and start past it, so each acknowledged span is stored
//! in exactly one block, not rebuilt under a second ID.

use std::collections::HashSet;
use std::fs;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::kafka::*;
use crate::s3_server::S3Server;
use crate::scale::*;

/// Long enough that the hung node cuts before its own lease lapses (renewals are lease
/// writes too, so they hang with the commit).
const TIMEOUT_S: u64 = 8;
const DIR: &str = "~ingest/it/vivace-traces";

fn takeover_opts(s3: &S3Server, broker: &Broker, name: &str) -> Opts {
    let mut o = node_opts(s3, broker, name);
    o.extra_yaml = o.extra_yaml.replace(
        &format!("partition_lease_timeout: {LEASE_TIMEOUT_S}s"),
        &format!("partition_lease_timeout: {TIMEOUT_S}s"),
    );
    // Lease writes (renewals and offset commits) hang while `hang-commit` exists in the
    // node's directory.
    o.storage = Some(format!(
        "{}fault_injection:\n  for_testing_only: true\n  rules:\n    - op: put\n      \
         key_contains: /leases/\n      action: hang\n      while_file_exists: hang-commit\n",
        s3.storage_yaml("vivace")
    ));
    o
}

async fn json(s3: &S3Server, key: &str) -> Option<serde_json::Value> {
    let b = s3.backend("vivace").get(key).await.ok()?;
    serde_json::from_slice(&b).ok()
}

/// Whether `instance`'s latest cut is committed: every range's end is its lease's offset
/// (`None` when the instance never cut).
async fn cut_committed(s3: &S3Server, instance: &str) -> Option<bool> {
    let cut = json(s3, &format!("{DIR}/cuts/{instance}.json")).await?;
    for (p, r) in cut["ranges"].as_object()? {
        let lease = json(s3, &format!("{DIR}/leases/{p}.json")).await;
        if lease.is_none_or(|l| l["offset"] != r[1]) {
            return Some(false);
        }
    }
    Some(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_kill9_between_block_and_commit_the_survivor_stores_nothing_twice() {
    let started = Instant::now();
    let Some((s3, broker)) = bucket_and_broker("vivace-scale-takeover").await else {
        return;
    };
    let n0 = Server::start_with(takeover_opts(&s3, &broker, "node-0")).await;
    let mut n1 = Server::start_with(takeover_opts(&s3, &broker, "node-1")).await;
    wait_shared(&[&n0, &n1], Duration::from_secs(30)).await;
    let held_by_n1 = metric(&n1, "vivace_ingest_partitions_owned").await;

    // Node-1's next commit hangs; the spans go through node-0's distributor into every
    // partition, so node-1 cuts its share into a block it cannot commit.
    fs::write(n1.dir.path().join("hang-commit"), b"").unwrap();
    let mut acked = send(&n0, "takeover", 40).await;
    let spans: usize = acked.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(TIMEOUT_S / 2);
    loop {
        let (_, stored) = spans_in_blocks(&s3).await;
        if stored as usize >= spans && cut_committed(&s3, "node-1").await == Some(false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-1 did not cut in time: {stored} of {spans} spans in blocks\n{}",
            n1.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n1.kill9();
    let killed = Instant::now();
    loop {
        if metric(&n0, "vivace_ingest_partitions_owned").await == u64::from(PARTITIONS) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(TIMEOUT_S * 3),
            "node-1's partitions not taken over\n{}",
            n0.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let takeover = killed.elapsed();

    // More traffic into every partition, node-0 alone now.
    acked.extend(send(&n0, "takeover", 30).await);
    let spans: usize = acked.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (blocks, stored) = loop {
        let (b, s) = spans_in_blocks(&s3).await;
        let settled = cut_committed(&s3, "node-0").await == Some(true);
        if (s as usize >= spans && settled) || Instant::now() > deadline {
            break (b, s);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // A little longer: a second copy of node-1's range would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (blocks_after, stored_after) = spans_in_blocks(&s3).await;
    eprintln!(
        "takeover: node-1 held {held_by_n1} of {PARTITIONS} partitions, killed between block \
         and commit; node-0 took them over in {takeover:?}; {} traces / \
         {spans} spans acknowledged, {blocks_after} blocks store {stored_after} (at settle: \
         {blocks} / {stored}); test took {:?}",
        acked.len(),
        started.elapsed()
    );
    assert_eq!(stored_after as usize, spans, "spans stored vs acknowledged");
    assert!(
        n0.current_log()
            .contains("an earlier holder's cut is in the bucket"),
        "the survivor did not adopt node-1's cut\n{}",
        n0.log_tail(30)
    );
    assert_all_readable(&n0, &acked, "after the takeover").await;
    let want: HashSet<String> = acked.keys().cloned().collect();
    assert_eq!(search_service(&n0, "takeover").await, want, "search");
    drop(broker);
}
