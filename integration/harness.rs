//! Test harness: starts `vivace serve` on free loopback ports with a private
//! temp dir, and offers HTTP / OTLP helpers shared by all test modules.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, TracesData};
use prost::Message;

pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_vivace");

/// Ports handed out by this process, so that parallel tests never get the same one.
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

pub(crate) fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut guard = PORTS.lock().unwrap();
        let set = guard.get_or_insert_with(HashSet::new);
        if set.insert(port) {
            return port;
        }
    }
}

/// Knobs of the generated config file.
#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) trace_idle_period: String,
    pub(crate) max_block_duration: String,
    pub(crate) max_block_bytes: u64,
    pub(crate) flush_check_period: String,
    pub(crate) max_request_body_size: u64,
    pub(crate) max_recv_msg_size_mib: u64,
    /// Use the Tempo-style single-dash `-config.file=` flag.
    pub(crate) single_dash_flag: bool,
    /// `storage.trace` lines replacing `backend: local` and its path (e.g. an S3 bucket).
    pub(crate) storage: Option<String>,
    /// Require X-Scope-OrgID on every request.
    pub(crate) multitenancy: bool,
    /// Extra top-level YAML appended to the config (e.g. an `overrides:` section).
    pub(crate) extra_yaml: String,
    /// Extra lines of the `ingester:` section, each indented by two spaces.
    pub(crate) ingester_yaml: String,
    /// `storage.trace.blocklist_poll`.
    pub(crate) blocklist_poll: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            trace_idle_period: "5s".into(),
            max_block_duration: "30m".into(),
            max_block_bytes: 524_288_000,
            flush_check_period: "1s".into(),
            max_request_body_size: 20_971_520,
            max_recv_msg_size_mib: 16,
            single_dash_flag: false,
            storage: None,
            multitenancy: false,
            extra_yaml: String::new(),
            ingester_yaml: String::new(),
            blocklist_poll: "5m".into(),
        }
    }
}

impl Opts {
    /// Short periods so that blocks get cut within a couple of seconds.
    pub(crate) fn fast_flush() -> Self {
        Opts {
            trace_idle_period: "1s".into(),
            max_block_duration: "2s".into(),
            flush_check_period: "200ms".into(),
            ..Opts::default()
        }
    }
}

pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) http_port: u16,
    pub(crate) grpc_port: u16,
    pub(crate) otlp_http_port: u16,
    pub(crate) opts: Opts,
    starts: u32,
    pub(crate) client: reqwest::Client,
}

impl Server {
    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }
    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.path().join("vivace.log")
    }
    pub(crate) fn wal_dir(&self) -> PathBuf {
        self.dir.path().join("data").join("wal")
    }
    pub(crate) fn blocks_dir(&self) -> PathBuf {
        self.dir.path().join("data").join("blocks")
    }
    pub(crate) fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.http_port, path)
    }
    pub(crate) fn otlp_http_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.otlp_http_port)
    }
    pub(crate) fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    pub(crate) fn config_yaml(&self) -> String {
        let o = &self.opts;
        let wal = self.wal_dir();
        let blocks = self.blocks_dir();
        format!(
            r#"multitenancy_enabled: {mt}
server:
  http_listen_address: 127.0.0.1
  http_listen_port: {http}
distributor:
  receivers:
    otlp:
      protocols:
        grpc:
          endpoint: 127.0.0.1:{grpc}
          max_recv_msg_size_mib: {mib}
        http:
          endpoint: 127.0.0.1:{otlp_http}
          max_request_body_size: {body}
ingester:
  trace_idle_period: {idle}
  max_block_duration: {dur}
  max_block_bytes: {bytes}
  flush_check_period: {check}
{ingester_extra}storage:
  trace:
    blocklist_poll: {poll}
    wal:
      path: {wal}
{backend}{extra}"#,
            mt = o.multitenancy,
            extra = o.extra_yaml,
            ingester_extra = o.ingester_yaml,
            poll = o.blocklist_poll,
            http = self.http_port,
            grpc = self.grpc_port,
            otlp_http = self.otlp_http_port,
            mib = o.max_recv_msg_size_mib,
            body = o.max_request_body_size,
            idle = o.trace_idle_period,
            dur = o.max_block_duration,
            bytes = o.max_block_bytes,
            check = o.flush_check_period,
            wal = wal.display(),
            backend = match &o.storage {
                Some(lines) => lines.lines().map(|l| format!("    {l}\n")).collect(),
                None => format!(
                    "    backend: local\n    local:\n      path: {}\n",
                    blocks.display()
                ),
            },
        )
    }

    /// Start a server with default options and wait for `/ready`.
    pub(crate) async fn start() -> Server {
        Server::start_with(Opts::default()).await
    }

    pub(crate) async fn start_with(opts: Opts) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("vivace-it-")
            .tempdir()
            .expect("tempdir");
        let mut server = Server {
            child: None,
            dir,
            http_port: free_port(),
            grpc_port: free_port(),
            otlp_http_port: free_port(),
            opts,
            starts: 0,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        fs::write(server.config_path(), server.config_yaml()).unwrap();
        server.spawn_and_wait().await;
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        use std::io::Write;
        writeln!(log, "===== harness: start #{} =====", self.starts).unwrap();
        let flag = if self.opts.single_dash_flag {
            format!("-config.file={}", self.config_path().display())
        } else {
            format!("--config.file={}", self.config_path().display())
        };
        let child = Command::new(BIN)
            .arg("serve")
            .arg(flag)
            .current_dir(self.dir.path())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn vivace");
        self.child = Some(child);
    }

    async fn spawn_and_wait(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    pub(crate) async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = self.http_url("/ready");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().unwrap() {
                    self.child = None;
                    panic!(
                        "vivace exited before becoming ready: {status}\n{}",
                        self.log_tail(60)
                    );
                }
            }
            if let Ok(resp) = self
                .client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if resp.status().as_u16() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "vivace not ready after {:?}\n{}",
                    READY_TIMEOUT,
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Send SIGTERM and wait (up to `timeout`) for the exit.
    /// Returns the exit status and how long it took.
    pub(crate) async fn stop_sigterm_within(
        &mut self,
        timeout: Duration,
    ) -> (ExitStatus, Duration) {
        let pid = self.pid();
        let t0 = Instant::now();
        // The shell's builtin `kill`, so no procps binary is needed.
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {pid}"))
            .status()
            .expect("run sh -c kill");
        assert!(st.success(), "kill -TERM {pid} failed");
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return (status, t0.elapsed());
            }
            if t0.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!(
                    "vivace did not exit within {timeout:?} of SIGTERM\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM, expecting exit status 0 within 5 s.
    pub(crate) async fn stop_sigterm(&mut self) {
        let (status, _) = self.stop_sigterm_within(Duration::from_secs(5)).await;
        assert!(
            status.success(),
            "vivace exited with {status} after SIGTERM\n{}",
            self.log_tail(40)
        );
    }

    /// SIGKILL (kill -9) and reap.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again with the same config, dirs and ports.
    pub(crate) async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop_sigterm().await;
        }
        self.spawn_and_wait().await;
    }

    pub(crate) fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.log_path()) {
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    }

    /// Log lines written by the current (latest) start only.
    pub(crate) fn current_log(&self) -> String {
        let all = self.log_text();
        let marker = format!("===== harness: start #{} =====", self.starts);
        match all.find(&marker) {
            Some(i) => all[i..].to_string(),
            None => all,
        }
    }

    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "----- vivace log tail ({}) -----\n{}\n-----",
            self.log_path().display(),
            lines[from..].join("\n")
        )
    }

    // ---------- HTTP helpers ----------

    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(self.http_url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_tail(30)));
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    pub(crate) async fn get_accept(
        &self,
        path: &str,
        accept: &str,
    ) -> (u16, Option<String>, Vec<u8>) {
        let resp = self
            .client
            .get(self.http_url(path))
            .header("Accept", accept)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_tail(30)));
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_string());
        (status, ct, resp.bytes().await.unwrap().to_vec())
    }

    /// POST to the OTLP/HTTP endpoint with the given headers.
    pub(crate) async fn post_otlp(
        &self,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Vec<u8>) {
        let mut req = self.client.post(self.otlp_http_url()).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /v1/traces: {e}\n{}", self.log_tail(30)));
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    /// A gRPC client on the API port (h2c), as Grafana's streaming datasource connects.
    pub(crate) async fn streaming_client(&self) -> tonic::client::Grpc<tonic::transport::Channel> {
        let channel = tonic::transport::Channel::from_shared(self.http_url(""))
            .unwrap()
            .connect()
            .await
            .expect("h2c connection to the api port");
        tonic::client::Grpc::new(channel)
    }

    /// Every message of one call to the streaming querier at `path` (e.g.
    /// `/tempopb.StreamingQuerier/Search`), `metadata` sent along; an error from the call or
    /// from any message is returned.
    pub(crate) async fn stream_call<Req, Resp>(
        &self,
        path: &'static str,
        req: Req,
        metadata: &[(&'static str, &str)],
    ) -> Result<Vec<Resp>, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.streaming_client().await;
        grpc.ready().await.unwrap();
        let mut req = tonic::Request::new(req);
        for (k, v) in metadata {
            req.metadata_mut().insert(*k, v.parse().unwrap());
        }
        let mut stream = grpc
            .server_streaming::<_, Resp, _>(
                req,
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream.message().await? {
            out.push(m);
        }
        Ok(out)
    }

    pub(crate) async fn assert_ready(&self) {
        let (status, body) = self.get("/ready").await;
        assert_eq!(status, 200, "/ready after bad input: {body}");
    }

    // ---------- trace lookups ----------

    /// v1 JSON: `Some(batches)` on 200, `None` on 404; panics otherwise.
    pub(crate) async fn trace_v1_json(&self, id: &str) -> Option<serde_json::Value> {
        self.trace_v1_json_q(id, "").await
    }

    pub(crate) async fn trace_v1_json_q(&self, id: &str, query: &str) -> Option<serde_json::Value> {
        let path = format!("/api/traces/{id}{query}");
        let (status, body) = self.get(&path).await;
        match status {
            200 => Some(
                serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("GET {path}: body is not JSON ({e}): {body}")),
            ),
            404 => None,
            s => panic!(
                "GET {path}: unexpected status {s}: {body}\n{}",
                self.log_tail(30)
            ),
        }
    }

    pub(crate) async fn trace_v1_proto(&self, id: &str) -> Option<TracesData> {
        let path = format!("/api/traces/{id}");
        let (status, ct, body) = self.get_accept(&path, "application/protobuf").await;
        match status {
            200 => Some(TracesData::decode(&body[..]).unwrap_or_else(|e| {
                panic!(
                    "GET {path} (protobuf): cannot decode ({e}); content-type {ct:?}; body starts {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )
            })),
            404 => None,
            s => panic!(
                "GET {path} (protobuf): unexpected status {s}: {}\n{}",
                String::from_utf8_lossy(&body),
                self.log_tail(30)
            ),
        }
    }

    pub(crate) async fn trace_v2_json(&self, id: &str) -> serde_json::Value {
        self.trace_v2_json_q(id, "").await
    }

    pub(crate) async fn trace_v2_json_q(&self, id: &str, query: &str) -> serde_json::Value {
        let path = format!("/api/v2/traces/{id}{query}");
        let (status, body) = self.get(&path).await;
        assert_eq!(status, 200, "GET {path}: {body}\n{}", self.log_tail(30));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: body is not JSON ({e}): {body}"))
    }

    pub(crate) async fn trace_v2_proto(&self, id: &str) -> TraceByIdResponse {
        let path = format!("/api/v2/traces/{id}");
        let (status, ct, body) = self.get_accept(&path, "application/protobuf").await;
        assert_eq!(
            status,
            200,
            "GET {path} (protobuf): {}\n{}",
            String::from_utf8_lossy(&body),
            self.log_tail(30)
        );
        TraceByIdResponse::decode(&body[..]).unwrap_or_else(|e| {
            panic!(
                "GET {path} (protobuf): cannot decode ({e}); content-type {ct:?}; body starts {:?}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )
        })
    }

    /// Poll a trace (v1 protobuf) until it has at least `min_spans` spans.
    pub(crate) async fn wait_trace_spans(
        &self,
        id: &str,
        min_spans: usize,
        timeout: Duration,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self
                .trace_v1_proto(id)
                .await
                .map(|t| count_spans(&t.resource_spans))
                .unwrap_or(0);
            if n >= min_spans || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // ---------- metrics / blocks ----------

    pub(crate) async fn metrics_text(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    pub(crate) async fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics_text().await, name)
    }

    /// Paths of all `meta.json` files under `<blocks>/single-tenant/*/`.
    pub(crate) fn block_metas(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let tenant = self.blocks_dir().join("single-tenant");
        if let Ok(rd) = fs::read_dir(&tenant) {
            for e in rd.flatten() {
                let meta = e.path().join("meta.json");
                if meta.is_file() {
                    out.push(meta);
                }
            }
        }
        out.sort();
        out
    }

    /// Wait until at least `n` blocks have been flushed, by metric or by meta.json files.
    pub(crate) async fn wait_blocks_flushed(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let metas = self.block_metas().len();
            let metric = self
                .metric("vivace_ingester_blocks_flushed_total")
                .await
                .unwrap_or(0.0);
            if metas >= n || metric >= n as f64 {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {n} flushed block(s) within {timeout:?}: meta.json files {metas}, \
                     vivace_ingester_blocks_flushed_total {metric}\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Newest WAL segment (`<20 digits>.wal`, highest sequence).
    pub(crate) fn newest_wal_segment(&self) -> Option<PathBuf> {
        wal_segments(&self.wal_dir()).pop()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(80));
        }
    }
}

pub(crate) fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().to_string();
                    name.len() == 24
                        && name.ends_with(".wal")
                        && name[..20].bytes().all(|b| b.is_ascii_digit())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Sum of all samples of a Prometheus metric (with or without labels).
pub(crate) fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let rest = match line.strip_prefix(name) {
            Some(r) => r,
            None => continue,
        };
        let rest = if rest.starts_with('{') {
            match rest.find('}') {
                Some(i) => &rest[i + 1..],
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest
        } else {
            continue;
        };
        let v: f64 = match rest.split_whitespace().next().and_then(|s| s.parse().ok()) {
            Some(v) => v,
            None => continue,
        };
        found = Some(found.unwrap_or(0.0) + v);
    }
    found
}

pub(crate) fn count_spans(rs: &[ResourceSpans]) -> usize {
    rs.iter()
        .flat_map(|r| r.scope_spans.iter())
        .map(|s| s.spans.len())
        .sum()
}

/// `tempopb.TraceByIDResponse` (field 2, the metrics, is skipped as unknown).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TraceByIdResponse {
    #[prost(message, optional, tag = "1")]
    pub(crate) trace: Option<TracesData>,
    #[prost(int32, tag = "3")]
    pub(crate) status: i32,
    #[prost(string, tag = "4")]
    pub(crate) message: String,
}

/// Random 16-byte trace id (never all zero).
pub(crate) fn rand_trace_id() -> [u8; 16] {
    loop {
        let b: [u8; 16] = rand::random();
        if b != [0; 16] {
            return b;
        }
    }
}

pub(crate) fn rand_span_id() -> [u8; 8] {
    loop {
        let b: [u8; 8] = rand::random();
        if b != [0; 8] {
            return b;
        }
    }
}

pub(crate) fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Percent-encodes `s` for a URL query value (RFC 3986 unreserved characters kept).
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
