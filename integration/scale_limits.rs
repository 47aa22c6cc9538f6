//! A tenant's rate shared by the distributors of several nodes (`rate_strategy: global`,
//! issue #10): two `-target=all` nodes on one broker count each other through the bucket,
//! and each accepts about half the tenant's rate; once one stops cleanly the other takes
//! the whole rate back.

use std::time::{Duration, Instant};

use prost::Message;

use crate::harness::*;
use crate::ingest::{pb_request, pb_span};
use crate::kafka::{bucket_and_broker, Broker};
use crate::s3_server::S3Server;
use crate::scale::node_opts;

/// The tenant's rate, bytes/s, across the cluster.
const RATE: u64 = 20_000;
const BURST: u64 = 6_000;
/// Parallel exporters per node: far more than either node's share, so its limit shows.
const SENDERS: usize = 4;

fn limited_opts(s3: &S3Server, broker: &Broker, name: &str) -> Opts {
    let mut o = node_opts(s3, broker, name);
    o.extra_yaml.push_str(&format!(
        "overrides:\n  defaults:\n    ingestion:\n      rate_limit_bytes: {RATE}\n      \
         burst_size_bytes: {BURST}\n      rate_strategy: global\n"
    ));
    o
}

/// One export of about 3 KB (well under the burst), one trace.
fn request() -> Vec<u8> {
    let tid = rand_trace_id();
    let spans = (0..25)
        .map(|_| pb_span(&tid, &rand_span_id(), "op", now_nanos()))
        .collect();
    pb_request("shared-rate", spans).encode_to_vec()
}

/// What one node accepted and refused while `SENDERS` exporters pushed at it for `secs`.
#[derive(Debug, Default)]
struct Tally {
    accepted_bytes: u64,
    accepted: u64,
    refused: u64,
}

async fn push_for(server: &Server, secs: u64) -> Tally {
    let url = server.otlp_http_url();
    let until = Instant::now() + Duration::from_secs(secs);
    let senders = (0..SENDERS).map(|_| {
        let url = url.clone();
        async move {
            let client = reqwest::Client::new();
            let mut t = Tally::default();
            while Instant::now() < until {
                let body = request();
                let n = body.len() as u64;
                let resp = client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .expect("post");
                match resp.status().as_u16() {
                    200 => {
                        t.accepted += 1;
                        t.accepted_bytes += n;
                    }
                    429 => {
                        t.refused += 1;
                        // An exporter backs off; a short pause keeps the CPU for the nodes.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    s => panic!("export answered {s}"),
                }
            }
            t
        }
    });
    let mut total = Tally::default();
    for t in futures::future::join_all(senders).await {
        total.accepted += t.accepted;
        total.accepted_bytes += t.accepted_bytes;
        total.refused += t.refused;
    }
    total
}

/// Accepted bytes per second beyond the burst the bucket starts with: the configured one,
/// raised to the node's rate when below it (as the distributor does).
fn rate_of(t: &Tally, secs: u64, share: u64) -> f64 {
    t.accepted_bytes.saturating_sub(BURST.max(share)) as f64 / secs as f64
}

async fn wait_healthy(server: &Server, want: f64, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if server.metric("vivace_distributors_healthy").await == Some(want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "distributors counted: {:?}, want {want}\n{}",
            server.metric("vivace_distributors_healthy").await,
            server.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_global_rate_limit_is_shared_by_healthy_distributors() {
    let Some((s3, broker)) = bucket_and_broker("vivace-scale-rate").await else {
        return;
    };
    let n0 = Server::start_with(limited_opts(&s3, &broker, "node-0")).await;
    let mut n1 = Server::start_with(limited_opts(&s3, &broker, "node-1")).await;
    wait_healthy(&n0, 2.0, Duration::from_secs(10)).await;
    wait_healthy(&n1, 2.0, Duration::from_secs(10)).await;

    const SECS: u64 = 8;
    let (t0, t1) = tokio::join!(push_for(&n0, SECS), push_for(&n1, SECS));
    let (r0, r1) = (rate_of(&t0, SECS, RATE / 2), rate_of(&t1, SECS, RATE / 2));
    eprintln!(
        "scale-rate: tenant limited to {RATE} B/s (global, burst {BURST}) over 2 nodes, \
         {SECS} s each: node-0 accepted {} exports ({:.0} B/s past the burst), refused {} \
         (429); node-1 accepted {} ({:.0} B/s), refused {}; together {:.0} B/s",
        t0.accepted,
        r0,
        t0.refused,
        t1.accepted,
        r1,
        t1.refused,
        r0 + r1
    );
    let half = RATE as f64 / 2.0;
    for (name, t, r) in [("node-0", &t0, r0), ("node-1", &t1, r1)] {
        assert!(t.refused > 0, "{name} refused nothing over its share");
        // A token bucket admits at most its rate; the lower bound shows the share was
        // really offered and taken (a ~3 KB export more or less at the end).
        assert!(
            r > half * 0.8 && r < half * 1.2,
            "{name} accepted {r:.0} B/s, want about {half} (half of {RATE})"
        );
    }

    // node-1 stops cleanly (leaving the count): node-0 gets the whole rate back.
    n1.stop_sigterm().await;
    let recount = wait_healthy(&n0, 1.0, Duration::from_secs(10)).await;
    const ALONE: u64 = 4;
    let alone = push_for(&n0, ALONE).await;
    let r = rate_of(&alone, ALONE, RATE);
    eprintln!(
        "scale-rate: node-1 stopped, node-0 counted 1 distributor after {recount:?}; alone it \
         accepted {} exports ({r:.0} B/s past the burst), refused {}",
        alone.accepted, alone.refused
    );
    assert!(alone.refused > 0, "node-0 alone refused nothing");
    assert!(
        r > RATE as f64 * 0.8 && r < RATE as f64 * 1.2,
        "node-0 alone accepted {r:.0} B/s, want about {RATE}"
    );
    drop(broker);
}
