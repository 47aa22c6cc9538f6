//! A partition changing hands with a cut of its last holder in flight (issue #10: "exactly
//! one block per offset range", "a node cut off and brought back"). Killed between a
//! cut's block and its offset commit, the holder leaves a landed cut: the survivor finds
//! it and starts past it rather than rebuilding it. Cut off from the bucket, the holder
//! cannot upload its cut and loses its leases: back on the network it must drop that cut
//! (its partitions' new holder read those records again) rather than upload it late. Either
//! way each acknowledged span is stored in exactly one block.

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
    with_rule(
        s3,
        broker,
        name,
        "    - op: put\n      key_contains: /leases/\n      action: hang\n      while_file_exists: hang-commit\n",
    )
}

/// A node whose bucket requests all match `rule` (a fault-injection rule in YAML).
fn with_rule(s3: &S3Server, broker: &Broker, name: &str, rule: &str) -> Opts {
    let mut o = node_opts(s3, broker, name);
    o.extra_yaml = o.extra_yaml.replace(
        &format!("partition_lease_timeout: {LEASE_TIMEOUT_S}s"),
        &format!("partition_lease_timeout: {TIMEOUT_S}s"),
    );
    o.storage = Some(format!(
        "{}fault_injection:\n  for_testing_only: true\n  rules:\n{rule}",
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

/// Waits until `n` holds every partition (the other node's taken over); how long after
/// `since` that was.
async fn owns_all(n: &Server, since: Instant) -> Duration {
    while metric(n, "vivace_ingest_partitions_owned").await != u64::from(PARTITIONS) {
        assert!(
            since.elapsed() < Duration::from_secs(TIMEOUT_S * 3),
            "the other node's partitions not taken over\n{}",
            n.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    since.elapsed()
}

/// Lease writes (renewals and offset commits) hang while `hang-commit` exists in node-1's
/// directory: its cut lands, its commit never does, and it is killed there.
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
    let takeover = owns_all(&n0, Instant::now()).await;

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

/// node-1 is cut off from the bucket while a block of its is on the way: its uploads and
/// lease renewals time out while `cut-off` exists in its directory; the broker stays
/// reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_a_node_cut_off_from_the_bucket_drops_its_late_cut_and_comes_back() {
    let started = Instant::now();
    let Some((s3, broker)) = bucket_and_broker("vivace-scale-cutoff").await else {
        return;
    };
    // From the moment the marker exists: lease and membership writes, and block uploads,
    // time out (the cut's own record, `cuts/node-1.json`, still lands: the cut-off comes
    // while its block is on the way).
    let cut_off: String = ["/leases/", "/members/", "data.parquet"]
        .iter()
        .map(|k| {
            format!(
                "    - op: any\n      key_contains: \"{k}\"\n      action: timeout\n      \
                 delay: 1s\n      while_file_exists: cut-off\n"
            )
        })
        .collect();
    let n0 = Server::start_with(with_rule(&s3, &broker, "node-0", &cut_off)).await;
    let n1 = Server::start_with(with_rule(&s3, &broker, "node-1", &cut_off)).await;
    wait_shared(&[&n0, &n1], Duration::from_secs(30)).await;
    let mut acked = send(&n0, "cutoff", 20).await;
    acked.extend(send(&n1, "cutoff", 20).await);

    // Cut off: node-1 keeps consuming its partitions until its leases lapse, so it cuts
    // a block it cannot upload.
    let marker = n1.dir.path().join("cut-off");
    fs::write(&marker, b"").unwrap();
    let cut_at = Instant::now();
    acked.extend(send(&n0, "cutoff", 40).await);
    while metric(&n1, "vivace_ingester_flush_failures_total").await == 0 {
        assert!(
            cut_at.elapsed() < Duration::from_secs(TIMEOUT_S),
            "node-1 took no cut while cut off\n{}",
            n1.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let takeover = owns_all(&n0, cut_at).await;
    acked.extend(send(&n0, "cutoff", 20).await);
    // node-0 rebuilds what node-1 could not upload.
    let spans: usize = acked.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (spans_in_blocks(&s3).await.1 as usize) < spans {
        assert!(
            Instant::now() < deadline,
            "node-0 did not store every span\n{}",
            n0.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let before = lease_offsets(&s3).await;

    // Back on the network: the late cut must be dropped, not uploaded.
    fs::remove_file(&marker).unwrap();
    let back = Instant::now();
    while metric(&n1, "vivace_ingester_blocks_abandoned_total").await == 0 {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "node-1 did not drop its late cut\n{}",
            n1.current_log()
                .lines()
                .filter(|l| !l.contains("fault injected") && !l.contains("rskafka"))
                .filter(|l| ["flush", "block", "lost", "lease", "cut"]
                    .iter()
                    .any(|w| l.contains(w)))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rejoined = wait_shared(&[&n0, &n1], Duration::from_secs(TIMEOUT_S * 6)).await;
    let after = lease_offsets(&s3).await;
    for (p, o) in &before {
        let now = after.get(p).copied().unwrap_or(0);
        assert!(
            now >= *o,
            "partition {p}: committed offset went back {o} -> {now}"
        );
    }
    acked.extend(send(&n1, "cutoff", 20).await);
    acked.extend(send(&n0, "cutoff", 20).await);

    let spans: usize = acked.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (spans_in_blocks(&s3).await.1 as usize) < spans && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A little longer: a late or second copy would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (blocks, stored) = spans_in_blocks(&s3).await;
    eprintln!(
        "cut-off: node-1 cut off from the bucket; its partitions taken over {takeover:?} after; \
         back on the network it dropped its late cut and shared again {rejoined:?} after; \
         no committed offset went back; {} traces / {spans} spans acknowledged, {blocks} \
         blocks store {stored}; test took {:?}",
        acked.len(),
        started.elapsed()
    );
    assert_eq!(stored as usize, spans, "spans stored vs acknowledged");
    assert_all_readable(&n1, &acked, "from node-1 after the cut-off").await;
    let want: HashSet<String> = acked.keys().cloned().collect();
    assert_eq!(search_service(&n0, "cutoff").await, want, "search");
    drop(broker);
}
