//! Kill -9 one of three nodes mid-ingest and restart it (issue #10's "restart it or not";
//! `scale.rs` covers "not"): the survivors take its partitions over within the lease
//! bound, the restarted node (same instance ID) rejoins and takes its share back by
//! rebalancing, and every acknowledged span, from before the kill, while it was down and
//! after it returned, is found exactly once by ID and by search from every node.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::kafka::*;
use crate::scale::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_kill9_and_restart_a_node_takes_its_partitions_back_every_span_once() {
    let started = Instant::now();
    let Some((s3, broker)) = bucket_and_broker("vivace-scale-restart").await else {
        return;
    };
    let n0 = Server::start_with(node_opts(&s3, &broker, "node-0")).await;
    let n1 = Server::start_with(node_opts(&s3, &broker, "node-1")).await;
    let mut n2 = Server::start_with(node_opts(&s3, &broker, "node-2")).await;
    wait_shared(&[&n0, &n1, &n2], Duration::from_secs(20)).await;
    let mut acked = send(&n2, "restart", 30).await;
    acked.extend(send(&n0, "restart", 15).await);

    // Kill -9 node-2 while the others keep ingesting.
    let (a, takeover) = kill9_mid_ingest([&n0, &n1], &mut n2, "restart", 40, 300).await;
    acked.extend(a);
    assert!(
        takeover <= Duration::from_secs(LEASE_TIMEOUT_S * 2),
        "takeover took {takeover:?}"
    );
    // Traffic while it is down lands in the partitions it will take back.
    acked.extend(send(&n1, "restart", 20).await);

    let lost_before = metric(&n0, "vivace_ingest_partitions_lost_total").await
        + metric(&n1, "vivace_ingest_partitions_lost_total").await;
    // Back with the same instance ID, config and directory.
    let restarting = Instant::now();
    n2.restart().await;
    let ready = restarting.elapsed();
    let returned =
        wait_shared(&[&n0, &n1, &n2], Duration::from_secs(LEASE_TIMEOUT_S * 6)).await + ready;
    let shares = owned(&[&n0, &n1, &n2]).await;
    acked.extend(send(&n2, "restart", 20).await);
    acked.extend(send(&n0, "restart", 10).await);

    let spans: usize = acked.values().map(Vec::len).sum();
    let mut partial = 0;
    for (name, n) in [("node-2", &n2), ("node-0", &n0)] {
        partial += all_readable(
            n,
            &acked,
            &format!("from {name} after the restart"),
            Duration::from_secs(30),
        )
        .await;
    }
    let want: HashSet<String> = acked.keys().cloned().collect();
    for (name, n) in [("node-0", &n0), ("node-1", &n1), ("node-2", &n2)] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = search_service(n, "restart").await;
            if found == want || Instant::now() > deadline {
                assert_eq!(found, want, "search from {name}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut doubled = 0;
    for (trace, ids) in &acked {
        doubled += span_ids(&n1, trace).await.len().saturating_sub(ids.len());
    }
    // Leases the survivors gave up since the restart: the restarted node's share back.
    let given_back = metric(&n0, "vivace_ingest_partitions_lost_total").await
        + metric(&n1, "vivace_ingest_partitions_lost_total").await
        - lost_before;
    eprintln!(
        "scale-restart: node-2's partitions taken over {takeover:?} after kill -9; restarted \
         (ready in {ready:?}), it held its share again {returned:?} after the restart began \
         (owned {shares:?}; the survivors gave up {given_back} leases to it); {} traces / {spans} \
         spans acknowledged, all found once by id and by search on 3 nodes, doubled \
         {doubled}, partial answers on the way {partial}; test took {:?}",
        acked.len(),
        started.elapsed()
    );
    assert_eq!(doubled, 0, "spans doubled in reads");
    assert!(
        given_back >= 1 && shares[2] >= 1,
        "no partition moved back to the restarted node: owned {shares:?}"
    );
    drop(broker);
}
