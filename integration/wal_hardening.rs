//! WAL hardening end to end: one WAL directory per process (a second `vivace serve` on the
//! same data dir is refused and the first keeps serving), and start-up validation of block
//! settings that could never encode a block.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;

use crate::harness::*;
use crate::ingest::*;

/// Runs `vivace serve` with `config` until it exits (killed after 30 s); returns whether it
/// succeeded and everything it printed.
fn run_to_exit(config: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg(format!("--config.file={}", config.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vivace");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the second vivace did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_on_one_wal_dir_is_refused_and_first_keeps_serving() {
    let server = Server::start().await;
    // Same data dir, other ports: only the WAL directory is shared.
    let yaml = server
        .config_yaml()
        .replace(
            &format!("http_listen_port: {}", server.http_port),
            &format!("http_listen_port: {}", free_port()),
        )
        .replace(
            &format!("127.0.0.1:{}", server.grpc_port),
            &format!("127.0.0.1:{}", free_port()),
        )
        .replace(
            &format!("127.0.0.1:{}", server.otlp_http_port),
            &format!("127.0.0.1:{}", free_port()),
        );
    let second = server.dir.path().join("second.yaml");
    fs::write(&second, yaml).unwrap();
    let segments_before = wal_segments(&server.wal_dir());

    let (ok, out) = tokio::task::spawn_blocking(move || run_to_exit(&second))
        .await
        .unwrap();
    assert!(!ok, "a second vivace on the same wal dir started:\n{out}");
    let wal = server.wal_dir().display().to_string();
    assert!(out.contains(&wal), "error does not name {wal}:\n{out}");
    assert!(out.contains("locked"), "{out}");
    // It neither cut nor created segments in the first one's directory.
    assert_eq!(wal_segments(&server.wal_dir()), segments_before);

    // The first still ingests and serves.
    let tid = rand_trace_id();
    let spans = (0..3u8)
        .map(|i| pb_span(&tid, &[i + 1; 8], "op", now_nanos()))
        .collect();
    let body = pb_request("svc", spans).encode_to_vec();
    let (code, resp) = server
        .post_otlp(body, &[("content-type", "application/x-protobuf")])
        .await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&resp));
    let n = server
        .wait_trace_spans(&hex::encode(tid), 3, Duration::from_secs(10))
        .await;
    assert_eq!(n, 3);
}

/// kill -9, then a flipped byte inside the middle one of three WAL records: after the
/// restart the records before and after it are served, and the log says what was skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_record_mid_segment_costs_only_that_record() {
    let mut server = Server::start().await;
    let tids: Vec<[u8; 16]> = (0..3).map(|_| rand_trace_id()).collect();
    for tid in &tids {
        let spans = (0..2u8)
            .map(|i| pb_span(tid, &[i + 1; 8], "op", now_nanos()))
            .collect();
        let body = pb_request("svc", spans).encode_to_vec();
        let (code, resp) = server
            .post_otlp(body, &[("content-type", "application/x-protobuf")])
            .await;
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&resp));
    }
    server.kill9();
    let seg = server.newest_wal_segment().expect("a wal segment");
    let mut data = fs::read(&seg).unwrap();
    // [u32 len][u32 crc][payload]: flip a payload byte of the second record.
    let len0 = u32::from_le_bytes(data[0..4].try_into().unwrap()) as usize;
    let second = 8 + len0;
    let len1 = u32::from_le_bytes(data[second..second + 4].try_into().unwrap()) as usize;
    assert!(
        second + 8 + len1 < data.len(),
        "three records in one segment"
    );
    data[second + 8 + len1 / 2] ^= 0x5a;
    fs::write(&seg, &data).unwrap();

    server.restart().await;
    for (i, tid) in tids.iter().enumerate() {
        let n = server
            .wait_trace_spans(&hex::encode(tid), 2, Duration::from_secs(2))
            .await;
        let want = if i == 1 { 0 } else { 2 };
        assert_eq!(n, want, "trace {i}");
    }
    let log = server.log_text();
    let skipped = format!("skipped_bytes={}", 8 + len1);
    assert!(log.contains(&skipped), "no `{skipped}` in the log:\n{log}");
}

/// A block setting that could never encode a block is refused at start, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_bloom_shard_size_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    fs::write(
        &config,
        format!(
            "server:\n  http_listen_address: 127.0.0.1\n  http_listen_port: {}\n\
             storage:\n  trace:\n    wal:\n      path: {}\n    local:\n      path: {}\n    \
             block:\n      bloom_filter_shard_size_bytes: 0\n",
            free_port(),
            dir.path().join("wal").display(),
            dir.path().join("blocks").display(),
        ),
    )
    .unwrap();
    let (ok, out) = tokio::task::spawn_blocking(move || run_to_exit(&config))
        .await
        .unwrap();
    assert!(!ok, "started with a zero bloom shard size:\n{out}");
    assert!(
        out.contains("storage.trace.block.bloom_filter_shard_size_bytes"),
        "{out}"
    );
}
