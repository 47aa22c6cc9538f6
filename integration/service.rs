//! Service endpoints, metrics and configuration handling.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use crate::harness::*;
use crate::ingest::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_echo_buildinfo() {
    let server = Server::start().await;
    let (status, body) = server.get("/ready").await;
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "ready");
    let (status, body) = server.get("/api/echo").await;
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "echo");

    let (status, body) = server.get("/api/status/buildinfo").await;
    assert_eq!(status, 200, "buildinfo: {body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("buildinfo not JSON ({e}): {body}"));
    for key in [
        "version",
        "revision",
        "branch",
        "buildUser",
        "buildDate",
        "goVersion",
    ] {
        assert!(
            v.get(key).is_some_and(|x| x.is_string()),
            "buildinfo lacks string key {key:?}: {v}"
        );
    }
    let version = v["version"].as_str().unwrap();
    let core = version.split(['-', '+']).next().unwrap();
    let parts: Vec<u64> = core
        .split('.')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("version {version:?} is not semver"))
        })
        .collect();
    assert_eq!(
        parts.len(),
        3,
        "version {version:?} is not MAJOR.MINOR.PATCH"
    );
    assert!(
        (parts[0], parts[1], parts[2]) >= (2, 7, 0),
        "version {version:?} < 2.7.0 (Grafana would not enable streaming)"
    );
    let (status, _) = server.get("/no/such/endpoint").await;
    assert_eq!(status, 404, "unknown path should be 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exposed_and_counting() {
    let server = Server::start().await;
    let text = server.metrics_text().await;
    for name in [
        "vivace_distributor_spans_received_total",
        "vivace_wal_fsyncs_total",
        "vivace_ingester_blocks_flushed_total",
    ] {
        assert!(
            metric_value(&text, name).is_some(),
            "/metrics lacks a sample for {name}:\n{text}"
        );
    }
    let spans0 = metric_value(&text, "vivace_distributor_spans_received_total").unwrap();
    let fsyncs0 = metric_value(&text, "vivace_wal_fsyncs_total").unwrap();

    let tid = rand_trace_id();
    let res = Resource::builder_empty()
        .with_attribute(KeyValue::new("service.name", "metrics"))
        .build();
    let spans = (0..3u64)
        .map(|i| SpanSpec::simple(tid, rand_span_id(), None, "m", at(base_time(), i)).build())
        .collect();
    export(&server, Transport::Grpc, &res, spans).await;

    let text = server.metrics_text().await;
    let spans1 = metric_value(&text, "vivace_distributor_spans_received_total").unwrap();
    let fsyncs1 = metric_value(&text, "vivace_wal_fsyncs_total").unwrap();
    assert!(
        spans1 >= spans0 + 3.0,
        "spans_received_total {spans0} -> {spans1} after 3 spans"
    );
    assert!(
        fsyncs1 >= fsyncs0 + 1.0,
        "wal_fsyncs_total {fsyncs0} -> {fsyncs1} after an acked export"
    );
    // Prometheus text: every sample line is `name[{labels}] value`.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "malformed metrics line: {line:?}"
        );
    }
}

/// Run `vivace serve --config.file=<yaml>` that is expected to fail.
fn run_expect_fail(yaml: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let err_path = dir.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg(format!("--config.file={}", cfg.display()))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vivace kept running with an invalid config:\n{yaml}\nstderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status,
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

#[test]
fn unknown_config_key_is_rejected() {
    let (status, stderr) = run_expect_fail(&format!(
        "server:\n  http_listen_address: 127.0.0.1\n  http_listen_port: {}\n  nope: 1\n",
        free_port()
    ));
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(
        stderr.contains("nope"),
        "stderr should name the unknown key `nope`:\n{stderr}"
    );
    // Flow-style as in the brief.
    let (status, stderr) = run_expect_fail("server: {nope: 1}\n");
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(stderr.contains("nope"), "stderr:\n{stderr}");
}

#[test]
fn missing_config_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg(format!(
            "--config.file={}",
            dir.path().join("does-not-exist.yaml").display()
        ))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(
        !out.stderr.is_empty(),
        "a missing config file should be reported on stderr"
    );
}

/// Tempo-style single-dash `-config.file=PATH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tempo_style_config_flag() {
    let server = Server::start_with(Opts {
        single_dash_flag: true,
        ..Opts::default()
    })
    .await;
    let (status, body) = server.get("/api/echo").await;
    assert_eq!((status, body.trim()), (200, "echo"));
}
