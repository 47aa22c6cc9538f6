//! Disk full under the WAL: ingest is refused with what OTLP exporters retry on (gRPC
//! UNAVAILABLE, HTTP 503), queries keep being served, ingest recovers by itself once space
//! returns, and after kill -9 every acknowledged span is there once and no refused one is.
//!
//! The WAL directory is a 2 MiB tmpfs mounted by the test (we run as root). Where mounting
//! is not allowed (no CAP_SYS_ADMIN), the test falls back to the WAL's test-only write-fault
//! hook and says so (`VIVACE_TEST_NO_MOUNT=1` forces the fallback).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;

use crate::faults::{assert_exactly_once, send_traces, Acked};
use crate::harness::*;
use crate::ingest::{pb_kv, pb_request, pb_span, pb_str};

/// Unmounts the tmpfs when the test ends, even if it fails.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy, so it succeeds while the killed server's files are still being released.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

enum Mode {
    /// Held for its Drop, which unmounts.
    Tmpfs { _mount: Mount },
    /// The WAL's fault hook: writes fail while the switch file exists.
    Injected(PathBuf),
}

fn mount_tmpfs(dir: &Path) -> Result<Mount, String> {
    // Lets a privileged run exercise the fallback too.
    if std::env::var_os("VIVACE_TEST_NO_MOUNT").is_some() {
        return Err("VIVACE_TEST_NO_MOUNT is set".into());
    }
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(Mount(dir.to_owned()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Writes a filler file until the file system refuses more; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).expect("create filler");
    let chunk = vec![0xAAu8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(
                e.raw_os_error(),
                Some(28),
                "filler stopped by {e}, not ENOSPC"
            );
            break;
        }
    }
    // Whatever part of a page is still free goes too.
    while f.write_all(&[0xAA]).is_ok() {}
    let _ = f.sync_all();
    path
}

/// A request of `spans` spans carrying `pad` bytes each, larger than any page left free.
fn big_request(
    tid: &[u8; 16],
    spans: usize,
    pad: usize,
) -> (
    Vec<String>,
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) {
    let mut batch = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..spans {
        let sid = rand_span_id();
        let mut s = pb_span(tid, &sid, "refused", now_nanos() - 1_000_000);
        s.attributes.push(pb_kv("pad", pb_str(&"x".repeat(pad))));
        batch.push(s);
        ids.push(hex::encode(sid));
    }
    (ids, pb_request("disk-full", batch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_disk_full_refuses_ingest_keeps_queries_and_recovers() {
    // Default periods: no block is cut during the test, so the WAL only grows.
    let mut server = Server::start_with(Opts::default()).await;
    server.stop_sigterm().await;
    let wal = server.wal_dir();
    let mode = match mount_tmpfs(&wal) {
        Ok(m) => {
            eprintln!(
                "disk_full: WAL on a 2 MiB tmpfs mounted at {}",
                wal.display()
            );
            Mode::Tmpfs { _mount: m }
        }
        Err(why) => {
            eprintln!(
                "disk_full: cannot mount a tmpfs ({why}); using the WAL's injected write errors instead"
            );
            fs::write(wal.join(vivace::ingester::wal::FAULT_MARKER), b"").unwrap();
            Mode::Injected(wal.join(format!("{}.enospc", vivace::ingester::wal::FAULT_MARKER)))
        }
    };
    server.restart().await;

    let mut acked = Acked::new();
    send_traces(&server, &mut acked, 3, 10, Duration::from_secs(1)).await;

    // The disk fills up.
    let filler = match &mode {
        Mode::Tmpfs { .. } => fill(&wal),
        Mode::Injected(switch) => {
            fs::write(switch, b"").unwrap();
            switch.clone()
        }
    };

    // Ingest is refused, over both protocols, with a message that says why.
    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap();
    let mut refused = Vec::new();
    for _ in 0..3 {
        let tid = rand_trace_id();
        let (_, req) = big_request(&tid, 40, 1000);
        let err = client
            .export(req)
            .await
            .expect_err("export accepted while the wal disk is full");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(
            err.message().contains("write-ahead log unavailable")
                && err.message().to_lowercase().contains("no space left"),
            "unclear refusal: {}",
            err.message()
        );
        refused.push(hex::encode(tid));
    }
    let tid = rand_trace_id();
    let (_, req) = big_request(&tid, 40, 1000);
    let (code, body) = server
        .post_otlp(
            req.encode_to_vec(),
            &[("content-type", "application/x-protobuf")],
        )
        .await;
    assert_eq!(
        code,
        503,
        "OTLP/HTTP on a full disk: {}",
        String::from_utf8_lossy(&body)
    );
    refused.push(hex::encode(tid));

    // Queries keep being served, and the server stays ready.
    assert_exactly_once(&server, &acked).await;
    server.assert_ready().await;

    // Space returns: ingest recovers by itself.
    fs::remove_file(&filler).unwrap();
    send_traces(&server, &mut acked, 3, 10, Duration::from_secs(1)).await;
    let mut after = Acked::new();
    send_traces(&server, &mut after, 2, 10, Duration::from_secs(1)).await;
    acked.extend(after);

    // kill -9 and replay: every acked span once, no refused one, no torn WAL.
    server.kill9();
    server.restart().await;
    let log = server.current_log();
    assert!(
        !log.contains("torn or corrupt tail"),
        "the wal held garbage after the full disk:\n{}",
        server.log_tail(40)
    );
    assert_exactly_once(&server, &acked).await;
    for t in &refused {
        assert!(
            server.trace_v1_proto(t).await.is_none(),
            "refused trace {t} came back after replay"
        );
    }
    eprintln!(
        "disk_full: {} refused requests, {} acked spans all present once after kill -9",
        refused.len(),
        acked.values().map(|s| s.len()).sum::<usize>()
    );
    server.kill9();
    drop(mode);
}
