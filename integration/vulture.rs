//! `vivace vulture` against the real server: on a healthy server every trace it writes reads
//! back intact by ID and by search; when the server goes away mid-run, the traces it had
//! acknowledged become unreadable and the vulture must report them missing and fail.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::{free_port, Opts, Server, BIN};

/// A vulture run against `server` with short periods, as a child process.
fn vulture(server: &Server, metrics_port: u16, duration: &str) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .arg("vulture")
        .args(["--otlp-endpoint", &server.otlp_http_url()])
        .args(["--api-endpoint", &server.http_url("")])
        .args(["--write-interval", "200ms"])
        .args(["--spans-per-trace", "4"])
        .args(["--read-delay", "1s"])
        .args(["--retry-for", "3s"])
        .args(["--metrics-port", &metrics_port.to_string()])
        .args(["--duration", duration])
        .arg("--fail-on-error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn vivace vulture")
}

/// The value of one exact sample line (`name{labels} value`) of a Prometheus text.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

fn verified(text: &str, family: &str, result: &str) -> u64 {
    sample(
        text,
        &format!("vivace_vulture_{family}_verified_total{{result=\"{result}\"}}"),
    )
}

/// Scrapes the vulture's own /metrics while it runs.
async fn scrape(client: &reqwest::Client, port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    for _ in 0..50 {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return r.text().await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("vulture metrics never served on {url}");
}

#[tokio::test]
async fn vulture_verifies_a_healthy_server() {
    // Fast flushes, so traces move from the ingester into blocks while the vulture reads.
    let server = Server::start_with(Opts::fast_flush()).await;
    let port = free_port();
    let child = vulture(&server, port, "10s");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let live = scrape(&server.client, port).await;
    assert!(
        sample(&live, "vivace_vulture_traces_written_total") > 0,
        "{live}"
    );
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vulture failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        server.log_tail(30)
    );
    let written = sample(&stdout, "vivace_vulture_traces_written_total");
    assert!(written >= 10, "wrote {written} traces in 10 s:\n{stdout}");
    assert_eq!(sample(&stdout, "vivace_vulture_write_errors_total"), 0);
    // Every acknowledged trace was verified both ways, and every one was intact.
    assert_eq!(
        verified(&stdout, "traces", "ok"),
        written,
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        verified(&stdout, "search", "ok"),
        written,
        "{stdout}\n{stderr}"
    );
    for bad in ["missing", "incomplete", "wrong"] {
        assert_eq!(verified(&stdout, "traces", bad), 0, "{stdout}");
        assert_eq!(verified(&stdout, "search", bad), 0, "{stdout}");
    }
    assert!(!stderr.contains("vulture found a bad trace"), "{stderr}");
}

#[tokio::test]
async fn vulture_reports_traces_lost_with_the_server() {
    let mut server = Server::start().await;
    let port = free_port();
    let child = vulture(&server, port, "6s");
    // Long enough for the first traces to be read back, then the target disappears with
    // traces acknowledged but not yet read.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.kill9();
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "--fail-on-error must fail:\n{stdout}\n{stderr}"
    );
    assert!(verified(&stdout, "traces", "ok") > 0, "{stdout}");
    let missing = verified(&stdout, "traces", "missing");
    assert!(missing > 0, "{stdout}\n{stderr}");
    assert!(verified(&stdout, "search", "missing") > 0, "{stdout}");
    assert!(
        sample(&stdout, "vivace_vulture_write_errors_total") > 0,
        "{stdout}"
    );
    let logged = stderr
        .lines()
        .filter(|l| l.contains("vulture found a bad trace") && l.contains("result=\"missing\""))
        .count()
        + stderr
            .lines()
            .filter(|l| l.contains("vulture found a bad trace") && l.contains("result=missing"))
            .count();
    assert!(
        logged as u64 >= missing,
        "each missing trace is logged:\n{stderr}"
    );
}
