//! The metrics-generator end to end: spans sent with the OpenTelemetry SDK exporter, metrics
//! remote-written to a real Prometheus (Debian package `prometheus`, started here with
//! `--web.enable-remote-write-receiver`), checked with PromQL against what was sent; and a
//! Prometheus outage during ingest that loses no sample.
//!
//! The binary is `$VIVACE_PROMETHEUS_BIN`, `/usr/bin/prometheus` or `prometheus` on `PATH`.
//! When it is missing the tests fail under CI (`CI` set, as .ci/run does after installing
//! it) and skip with a notice otherwise.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

use crate::harness::*;
use crate::ingest::{export, SpanSpec, Transport};
use crate::process::{find_binary, in_ci, Process};

const APT_HINT: &str = "apt-get install -y prometheus";

struct Prometheus {
    process: Process,
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    client: reqwest::Client,
}

fn prometheus_binary() -> Option<PathBuf> {
    find_binary(
        "VIVACE_PROMETHEUS_BIN",
        &[PathBuf::from("/usr/bin/prometheus")],
        "prometheus",
    )
}

impl Prometheus {
    /// Starts Prometheus on a free port with an empty tsdb. `None` (after saying why) only
    /// when it is not installed and this is not CI.
    async fn start() -> Option<Prometheus> {
        let Some(bin) = prometheus_binary() else {
            if in_ci() {
                panic!(
                    "prometheus binary not found (CI is set, so generator tests cannot be \
                     skipped): run `{APT_HINT}` or set VIVACE_PROMETHEUS_BIN"
                );
            }
            eprintln!("NOTICE: skipping generator test: prometheus not found; run `{APT_HINT}`");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("vivace-prom-")
            .tempdir()
            .expect("tempdir");
        fs::write(
            dir.path().join("prometheus.yml"),
            "global:\n  scrape_interval: 1m\n  evaluation_interval: 1m\n",
        )
        .unwrap();
        let mut p = Prometheus {
            process: Process::new("prometheus", dir.path().join("prometheus.log")),
            dir,
            bin,
            port: free_port(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        p.start_again().await;
        Some(p)
    }

    /// Starts the (stopped) server on the same port and tsdb directory.
    async fn start_again(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--web.enable-remote-write-receiver")
            .arg(format!(
                "--config.file={}",
                self.dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .current_dir(self.dir.path());
        self.process.spawn(cmd);
        let (client, url) = (
            &self.client,
            format!("http://127.0.0.1:{}/-/ready", self.port),
        );
        self.process
            .wait_ready(Duration::from_secs(60), Duration::from_millis(100), || {
                let url = url.clone();
                async move {
                    match client.get(url).send().await {
                        Ok(r) if r.status().is_success() => Ok(()),
                        Ok(r) => Err(format!("/-/ready answered {}", r.status())),
                        Err(e) => Err(e.to_string()),
                    }
                }
            })
            .await;
    }

    /// SIGTERM (so the tsdb is closed cleanly) and wait for the exit.
    async fn stop(&mut self) {
        let Some(mut child) = self.process.take() else {
            return;
        };
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {}", child.id()))
            .status()
            .expect("run sh -c kill");
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        self.process.log_tail(30)
    }

    fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    /// Runs an instant PromQL query; the `data.result` array.
    async fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let resp = self
            .client
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", q)])
            .send()
            .await
            .unwrap_or_else(|e| panic!("query {q}: {e}"));
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["status"], "success", "query {q}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The sum of an instant vector's values (`None` when it is empty).
    async fn value(&self, q: &str) -> Option<f64> {
        let result = self.query(q).await;
        if result.is_empty() {
            return None;
        }
        Some(
            result
                .iter()
                .map(|r| r["value"][1].as_str().unwrap().parse::<f64>().unwrap())
                .sum(),
        )
    }

    /// Polls `q` until it equals `want`; panics with the last value after `timeout`.
    async fn wait_value(&self, q: &str, want: f64, timeout: Duration, vivace: &Server) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.value(q).await;
            if got == Some(want) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{q}: want {want}, got {got:?}\nvivace metrics:\n{}\n{}",
                    generator_metrics(vivace).await,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn generator_metrics(server: &Server) -> String {
    server
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("vivace_generator"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// vivace with both processors on, collecting every second into `prom`.
async fn start_vivace(prom: &Prometheus) -> Server {
    start_vivace_as(prom, "all", "1s").await
}

async fn start_vivace_as(prom: &Prometheus, target: &str, collection_interval: &str) -> Server {
    Server::start_with(Opts {
        extra_yaml: format!(
            r#"target: {target}
metrics_generator:
  registry:
    collection_interval: {collection_interval}
    external_labels:
      source: vivace-it
  processor:
    service_graphs:
      wait: 2s
  storage:
    remote_write:
      - url: {url}
        remote_timeout: 5s
        queue_config:
          min_backoff: 50ms
          max_backoff: 500ms
overrides:
  defaults:
    metrics_generator:
      processors: [service-graphs, span-metrics]
"#,
            url = prom.write_url()
        ),
        ..Opts::default()
    })
    .await
}

fn resource(service: &str) -> Resource {
    Resource::builder_empty()
        .with_attributes([KeyValue::new("service.name", service.to_owned())])
        .build()
}

fn spec(
    trace: [u8; 16],
    id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: &'static str,
    kind: SpanKind,
    start: SystemTime,
    ms: u64,
) -> SpanSpec {
    let mut s = SpanSpec::simple(trace, id, parent, name, start);
    s.kind = kind;
    s.end = start + Duration::from_millis(ms);
    s.attrs = vec![];
    s
}

/// `n` traces of frontend → backend → database; every fifth backend server span fails.
/// Returns (frontend spans, backend spans).
fn checkout_traces(n: usize) -> (Vec<SpanData>, Vec<SpanData>) {
    let (mut fe, mut be) = (Vec::new(), Vec::new());
    let start = SystemTime::now() - Duration::from_secs(1);
    for i in 0..n {
        let t = rand_trace_id();
        let [root, call, server, db] = std::array::from_fn(|_| rand_span_id());
        fe.push(spec(t, root, None, "GET /checkout", SpanKind::Server, start, 200).build());
        fe.push(
            spec(
                t,
                call,
                Some(root),
                "call backend",
                SpanKind::Client,
                start,
                150,
            )
            .build(),
        );
        let mut s = spec(
            t,
            server,
            Some(call),
            "POST /orders",
            SpanKind::Server,
            start,
            90,
        );
        if i % 5 == 0 {
            s.status = Status::error("out of stock");
        }
        be.push(s.build());
        let mut d = spec(
            t,
            db,
            Some(server),
            "SELECT orders",
            SpanKind::Client,
            start,
            20,
        );
        d.attrs = vec![KeyValue::new("db.system", "postgresql")];
        be.push(d.build());
    }
    (fe, be)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_metrics_and_service_graph_reach_prometheus() {
    let Some(prom) = Prometheus::start().await else {
        return;
    };
    let vivace = start_vivace(&prom).await;
    let (fe, be) = checkout_traces(10);
    export(&vivace, Transport::Grpc, &resource("frontend"), fe).await;
    export(&vivace, Transport::Grpc, &resource("backend"), be).await;

    let t = Duration::from_secs(30);
    let calls = "traces_spanmetrics_calls_total";
    prom.wait_value(&format!("sum({calls})"), 40.0, t, &vivace)
        .await;
    prom.wait_value(
        &format!(
            r#"{calls}{{service="frontend",span_name="GET /checkout",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET",source="vivace-it"}}"#
        ),
        10.0,
        t,
        &vivace,
    )
    .await;
    prom.wait_value(
        &format!(r#"{calls}{{service="backend",span_name="POST /orders",status_code="STATUS_CODE_ERROR"}}"#),
        2.0,
        t,
        &vivace,
    )
    .await;
    // 20 ms database spans: none at or under 16 ms, all at or under 32 ms.
    let lat = r#"service="backend",span_name="SELECT orders""#;
    for (q, want) in [
        (format!("traces_spanmetrics_latency_count{{{lat}}}"), 10.0),
        (
            format!(r#"traces_spanmetrics_latency_bucket{{{lat},le="0.016"}}"#),
            0.0,
        ),
        (
            format!(r#"traces_spanmetrics_latency_bucket{{{lat},le="0.032"}}"#),
            10.0,
        ),
        (
            format!(r#"traces_spanmetrics_latency_bucket{{{lat},le="+Inf"}}"#),
            10.0,
        ),
    ] {
        prom.wait_value(&q, want, t, &vivace).await;
    }
    let size = prom
        .value(&format!("sum(traces_spanmetrics_size_total{{{lat}}})"))
        .await
        .unwrap();
    assert!(
        size > 10.0 * 30.0,
        "ten encoded spans are more than 300 bytes: {size}"
    );

    // Service graph: frontend → backend (2 failed), backend → postgresql (database), and
    // user → frontend (virtual node, once the root spans' `wait` has passed).
    let edge = r#"client="frontend",server="backend",connection_type="""#;
    for (q, want) in [
        (format!("traces_service_graph_request_total{{{edge}}}"), 10.0),
        (format!("traces_service_graph_request_failed_total{{{edge}}}"), 2.0),
        (
            format!(r#"traces_service_graph_request_server_seconds_bucket{{{edge},le="0.1"}}"#),
            10.0,
        ),
        (
            format!(r#"traces_service_graph_request_client_seconds_bucket{{{edge},le="0.1"}}"#),
            0.0,
        ),
        (
            format!(r#"traces_service_graph_request_client_seconds_bucket{{{edge},le="0.2"}}"#),
            10.0,
        ),
        (
            r#"traces_service_graph_request_total{client="backend",server="postgresql",connection_type="database"}"#.to_owned(),
            10.0,
        ),
        (
            r#"traces_service_graph_request_total{client="user",server="frontend",connection_type="virtual_node"}"#.to_owned(),
            10.0,
        ),
    ] {
        prom.wait_value(&q, want, t, &vivace).await;
    }
    assert_eq!(
        prom.value(r#"count(traces_service_graph_request_total)"#)
            .await,
        Some(3.0),
        "exactly three edges"
    );
    let m = vivace.metrics_text().await;
    assert_eq!(
        metric_value(&m, "vivace_generator_spans_received_total"),
        Some(40.0)
    );
    assert!(metric_value(&m, "vivace_generator_remote_write_samples_sent_total").unwrap() > 0.0);
    assert_eq!(
        metric_value(&m, "vivace_generator_remote_write_samples_failed_total"),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&m, "vivace_generator_remote_write_samples_dropped_total"),
        Some(0.0)
    );
}

/// Raw samples of one series over the last `range`: (unix seconds, value), oldest first.
async fn raw_samples(prom: &Prometheus, selector: &str, range: &str) -> Vec<(f64, f64)> {
    let result = prom.query(&format!("{selector}[{range}]")).await;
    assert_eq!(result.len(), 1, "{selector}: {result:?}");
    result[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v[0].as_f64().unwrap(),
                v[1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_outage_during_ingest_loses_no_sample() {
    let Some(mut prom) = Prometheus::start().await else {
        return;
    };
    let vivace = start_vivace(&prom).await;
    let res = resource("outage");
    let send = |n: usize| {
        let start = SystemTime::now() - Duration::from_millis(100);
        (0..n)
            .map(|_| {
                spec(
                    rand_trace_id(),
                    rand_span_id(),
                    None,
                    "tick",
                    SpanKind::Internal,
                    start,
                    5,
                )
                .build()
            })
            .collect::<Vec<_>>()
    };
    let series = r#"traces_spanmetrics_calls_total{service="outage",span_name="tick"}"#;
    let t = Duration::from_secs(30);
    export(&vivace, Transport::Grpc, &res, send(5)).await;
    prom.wait_value(series, 5.0, t, &vivace).await;

    prom.stop().await;
    let down = SystemTime::now();
    let mut sent = 5;
    for _ in 0..4 {
        export(&vivace, Transport::Grpc, &res, send(5)).await;
        sent += 5;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let queued = vivace
        .metric("vivace_generator_remote_write_queued_samples")
        .await
        .unwrap();
    assert!(
        queued > 0.0,
        "samples wait in the queue while Prometheus is down"
    );
    prom.start_again().await;
    let up = SystemTime::now();

    prom.wait_value(series, sent as f64, t, &vivace).await;
    // Every collection during the outage arrived: samples about a second apart all through
    // it, never decreasing, and the last one counts every span.
    let samples = raw_samples(&prom, series, "5m").await;
    let (down_s, up_s) = (unix_secs(down), unix_secs(up));
    let during = samples
        .iter()
        .filter(|(ts, _)| *ts > down_s && *ts < up_s)
        .count();
    let outage = up_s - down_s;
    // Collections are a second apart; a loaded CI machine may stretch that, not halve it.
    assert!(
        during as f64 >= outage / 2.0,
        "{during} samples in a {outage:.1} s outage: {samples:?}"
    );
    // A new series starts with a zero at the end of the previous minute (as Tempo sends it).
    let counted: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .skip_while(|(_, v)| *v == 0.0)
        .collect();
    for w in counted.windows(2) {
        // A lost batch would leave a gap as long as the outage (over 12 s).
        assert!(
            w[1].0 - w[0].0 < 5.0,
            "gap in samples: {w:?} of {samples:?}"
        );
        assert!(w[1].1 >= w[0].1, "counter went down: {w:?}");
    }
    assert_eq!(samples.last().unwrap().1, sent as f64);
    let m = vivace.metrics_text().await;
    assert_eq!(
        metric_value(&m, "vivace_generator_remote_write_samples_dropped_total"),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&m, "vivace_generator_remote_write_samples_failed_total"),
        Some(0.0)
    );
    assert!(metric_value(&m, "vivace_generator_remote_write_retries_total").unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_generator_target_derives_metrics_and_stores_nothing() {
    let Some(prom) = Prometheus::start().await else {
        return;
    };
    let vivace = start_vivace_as(&prom, "metrics-generator", "1s").await;
    let (fe, be) = checkout_traces(4);
    export(&vivace, Transport::Grpc, &resource("frontend"), fe).await;
    export(&vivace, Transport::Grpc, &resource("backend"), be).await;
    let t = Duration::from_secs(30);
    prom.wait_value("sum(traces_spanmetrics_calls_total)", 16.0, t, &vivace)
        .await;
    prom.wait_value(
        r#"traces_service_graph_request_total{client="frontend",server="backend"}"#,
        4.0,
        t,
        &vivace,
    )
    .await;
    assert!(
        wal_segments(&vivace.wal_dir()).is_empty(),
        "a generator-only process writes no WAL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_a_last_collection() {
    let Some(prom) = Prometheus::start().await else {
        return;
    };
    // No collection would happen for an hour: only the one at shutdown sends anything.
    let mut vivace = start_vivace_as(&prom, "all", "1h").await;
    let (fe, be) = checkout_traces(3);
    export(&vivace, Transport::Grpc, &resource("frontend"), fe).await;
    export(&vivace, Transport::Grpc, &resource("backend"), be).await;
    assert_eq!(
        prom.value("sum(traces_spanmetrics_calls_total)").await,
        None
    );
    vivace.stop_sigterm().await;
    assert_eq!(
        prom.value("sum(traces_spanmetrics_calls_total)").await,
        Some(12.0),
        "{}",
        prom.log_tail()
    );
    // A restart within the same minute: the new process's counters start again from zero,
    // and Prometheus takes its samples (a zero older than the last process's value would
    // make it refuse the whole request).
    vivace.restart().await;
    let (fe, _) = checkout_traces(2);
    export(&vivace, Transport::Grpc, &resource("frontend"), fe).await;
    vivace.stop_sigterm().await;
    let root = r#"traces_spanmetrics_calls_total{service="frontend",span_name="GET /checkout"}"#;
    assert_eq!(prom.value(root).await, Some(2.0), "{}", prom.log_tail());
    assert_eq!(
        prom.value(&format!("count_over_time({root}[10m])")).await,
        Some(4.0),
        "a zero and a value from each process"
    );
}
