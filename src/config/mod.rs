//! The YAML configuration, shaped like tempo.yaml so a Tempo user's file mostly just works.
//!
//! Every struct denies unknown fields, so a typo is an error that names the key instead of a
//! silently ignored setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod auth;
mod duration;
pub mod faults;
pub mod generator;
mod ingest;
pub mod overrides;

pub use ingest::{IngestConfig, KafkaConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Which components this process runs (`all` by default).
    pub target: Option<String>,
    pub multitenancy_enabled: bool,
    pub server: ServerConfig,
    pub distributor: DistributorConfig,
    pub ingester: IngesterConfig,
    pub querier: QuerierConfig,
    pub query_frontend: QueryFrontendConfig,
    pub compactor: CompactorConfig,
    pub storage: StorageConfig,
    /// The metrics-generator (span metrics, service graphs, remote write).
    pub metrics_generator: generator::MetricsGeneratorConfig,
    pub overrides: overrides::OverridesConfig,
    /// Built-in authentication (off by default); see `api::auth`.
    pub auth: auth::AuthConfig,
    /// The Kafka-protocol ingest log (Tempo 3's `ingest:`); off by default.
    pub ingest: IngestConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub http_listen_address: String,
    pub http_listen_port: u16,
    /// Accepted for tempo.yaml compatibility; vivace serves no separate gRPC API port yet.
    pub grpc_listen_port: Option<u16>,
    pub log_level: String,
    pub log_format: String,
    /// How long SIGTERM waits for in-flight requests before giving up on them.
    #[serde(with = "duration")]
    pub graceful_shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_listen_address: "0.0.0.0".into(),
            http_listen_port: 3200,
            grpc_listen_port: None,
            log_level: "info".into(),
            log_format: "logfmt".into(),
            graceful_shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl ServerConfig {
    pub fn http_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr(&format!(
            "{}:{}",
            self.http_listen_address, self.http_listen_port
        ))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributorConfig {
    pub receivers: ReceiversConfig,
    /// Not Tempo keys: bounds on what one export may cost in memory once decoded. OTLP
    /// protobuf amplifies (an empty span is 2 bytes on the wire, ~260 bytes decoded), so
    /// wire-size limits alone do not bound memory. A request over either per-request bound
    /// is refused as too large (HTTP 413 / gRPC RESOURCE_EXHAUSTED without retry).
    pub max_spans_per_request: usize,
    /// Size of one request once taken apart: its spans grouped by trace (each trace's
    /// copy of the resource and scope included), and, for a tenant whose spans feed the
    /// metrics-generator, the estimated decoded structs, strings and received bytes.
    pub max_decoded_request_bytes: usize,
    /// Estimated bytes of all requests being decoded and pushed at once, across both
    /// receivers; past it exports are refused as retryable (HTTP 429 / RESOURCE_EXHAUSTED
    /// with RetryInfo) until earlier ones finish.
    pub max_inflight_request_bytes: usize,
}

impl Default for DistributorConfig {
    fn default() -> Self {
        Self {
            receivers: ReceiversConfig::default(),
            max_spans_per_request: 100_000,
            max_decoded_request_bytes: 128 * 1024 * 1024,
            max_inflight_request_bytes: 512 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiversConfig {
    pub otlp: OtlpReceiverConfig,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    pub protocols: OtlpProtocols,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpProtocols {
    pub grpc: Option<GrpcReceiverConfig>,
    pub http: Option<HttpReceiverConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcReceiverConfig {
    pub endpoint: String,
    /// Largest accepted (decompressed) request, as the OpenTelemetry Collector names it.
    pub max_recv_msg_size_mib: usize,
}

impl Default for GrpcReceiverConfig {
    fn default() -> Self {
        Self {
            endpoint: "0.0.0.0:4317".into(),
            max_recv_msg_size_mib: 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpReceiverConfig {
    pub endpoint: String,
    /// Largest accepted request body in bytes, before and after decompression.
    pub max_request_body_size: usize,
}

impl Default for HttpReceiverConfig {
    fn default() -> Self {
        Self {
            endpoint: "0.0.0.0:4318".into(),
            max_request_body_size: 20 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngesterConfig {
    /// A trace with no new spans for this long is written into the next block.
    #[serde(with = "duration")]
    pub trace_idle_period: Duration,
    /// A trace still receiving spans after this long is written anyway (late spans are
    /// merged at read time and by the compactor).
    #[serde(with = "duration")]
    pub max_trace_live: Duration,
    #[serde(with = "duration")]
    pub max_block_duration: Duration,
    pub max_block_bytes: u64,
    #[serde(with = "duration")]
    pub flush_check_period: Duration,
    /// Exports are refused (not dropped) once the traces in memory would hold more than
    /// this: received bytes, their handles and map entries, the allocator's share, and the
    /// working set of a cut being written; and what the process's RSS, with room left for
    /// the next cut's working set, holds beyond that count (up to as much again), so peak
    /// RSS stays under this figure.
    pub max_live_bytes: u64,
    /// Target uncompressed size of a Parquet row group.
    pub row_group_size_bytes: usize,
    /// Tempo's `ingestion_time_range_slack`: a block's start and end may differ from when
    /// its spans were ingested by this much; beyond it the ingestion time is used.
    #[serde(with = "duration")]
    pub ingestion_time_range_slack: Duration,
}

impl Default for IngesterConfig {
    fn default() -> Self {
        Self {
            trace_idle_period: Duration::from_secs(5),
            max_trace_live: Duration::from_secs(30),
            // Everything not yet in a block is held in memory, so blocks are cut sooner than
            // Tempo 2.x's 30m/500MB head blocks; the compactor merges them later.
            max_block_duration: Duration::from_secs(5 * 60),
            max_block_bytes: 256 * 1024 * 1024,
            flush_check_period: Duration::from_secs(5),
            max_live_bytes: 1024 * 1024 * 1024,
            row_group_size_bytes: 32 * 1024 * 1024,
            ingestion_time_range_slack: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CompactorConfig {
    pub compaction: CompactionConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Blocks are merged only with blocks whose newest span falls in the same window.
    #[serde(with = "duration")]
    pub compaction_window: Duration,
    /// Blocks whose newest span is older than this are deleted (per-tenant override:
    /// `overrides.*.compaction.block_retention`).
    #[serde(with = "duration")]
    pub block_retention: Duration,
    /// Compacted input blocks stay readable this long before they are deleted, so queriers
    /// with an older block list still find them.
    #[serde(with = "duration")]
    pub compacted_block_retention: Duration,
    /// Traces at most in one compaction's output.
    pub max_compaction_objects: u64,
    /// Bytes of data.parquet at most in one compaction's output.
    pub max_block_bytes: u64,
    /// Input blocks per compaction.
    pub min_input_blocks: usize,
    pub max_input_blocks: usize,
    /// How often the compactor looks for work.
    #[serde(with = "duration")]
    pub compaction_cycle: Duration,
    /// Where a compaction writes its output's data.parquet before uploading it (up to
    /// `max_block_bytes` of disk per compaction); the system temp dir when unset. Not a
    /// Tempo key.
    pub scratch_dir: Option<std::path::PathBuf>,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        // Tempo's defaults, except the cycle, which Tempo does not expose.
        Self {
            compaction_window: Duration::from_secs(3600),
            block_retention: Duration::from_secs(336 * 3600),
            compacted_block_retention: Duration::from_secs(3600),
            max_compaction_objects: 6_000_000,
            max_block_bytes: 100 * 1024 * 1024 * 1024,
            min_input_blocks: 2,
            max_input_blocks: 4,
            compaction_cycle: Duration::from_secs(30),
            scratch_dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuerierConfig {
    /// How many blocks one trace-by-ID lookup reads at once.
    pub concurrent_blocks: usize,
    /// Not a Tempo key: bytes of data.parquet one tag-names or tag-values request may read
    /// from blocks it must scan (a `q` filter, or no usable tag summary); past it the answer
    /// is partial and says so in the log (zero: no limit).
    pub max_tag_scan_bytes: u64,
}

impl Default for QuerierConfig {
    fn default() -> Self {
        Self {
            concurrent_blocks: 16,
            max_tag_scan_bytes: 512 * 1024 * 1024,
        }
    }
}

/// `query_frontend`: only the TraceQL metrics limits are read; vivace shards nothing.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct QueryFrontendConfig {
    pub metrics: MetricsQueryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsQueryConfig {
    /// Longest range a metrics query may cover (a tenant's `read.max_metrics_duration`
    /// overrides it; zero: no limit).
    #[serde(with = "duration")]
    pub max_duration: Duration,
    /// Exemplars per query at most.
    pub max_exemplars: usize,
    /// Series per response at most; past it the answer is partial and says so (zero: no
    /// limit). Not zero by default, unlike Tempo: a `by()` on a unique attribute would
    /// otherwise hold a series per span.
    pub max_response_series: usize,
}

impl Default for MetricsQueryConfig {
    fn default() -> Self {
        Self {
            max_duration: Duration::from_secs(24 * 3600),
            max_exemplars: 100,
            max_response_series: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub trace: TraceStorageConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Local,
    Memory,
    S3,
    Gcs,
    Azure,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceStorageConfig {
    pub backend: BackendKind,
    #[serde(with = "duration")]
    pub blocklist_poll: Duration,
    /// A tenant index (`<tenant>/index.json.gz`) older than this is ignored and the
    /// bucket is listed instead; 0 means 3 × `blocklist_poll` (Tempo's name and default).
    #[serde(with = "duration")]
    pub blocklist_poll_stale_tenant_index: Duration,
    pub wal: WalConfig,
    pub local: LocalConfig,
    pub s3: S3Config,
    pub gcs: GcsConfig,
    pub azure: AzureConfig,
    pub block: BlockStorageConfig,
    /// FOR TESTING ONLY: makes storage calls fail on purpose (see `backend::faulty`).
    pub fault_injection: Option<faults::FaultInjectionConfig>,
}

impl Default for TraceStorageConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Local,
            blocklist_poll: Duration::from_secs(5 * 60),
            blocklist_poll_stale_tenant_index: Duration::ZERO,
            wal: WalConfig::default(),
            local: LocalConfig::default(),
            s3: S3Config::default(),
            gcs: GcsConfig::default(),
            azure: AzureConfig::default(),
            block: BlockStorageConfig::default(),
            fault_injection: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    pub path: PathBuf,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./data/wal"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    pub path: PathBuf,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./data/blocks"),
        }
    }
}

/// A configured secret (key, password): deserialized from a plain string, never printed by
/// `Debug`, so logging a config does not leak it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

/// `storage.trace.s3`, with Tempo's key names. Anything left empty falls back to the
/// standard AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub bucket: String,
    /// `host[:port]` (Tempo style) or a full `http(s)://` URL; empty means AWS.
    pub endpoint: String,
    pub region: String,
    /// Every key is written below this prefix.
    pub prefix: String,
    pub access_key: String,
    pub secret_key: Secret,
    pub session_token: Secret,
    /// Plain http to the endpoint (local S3-compatible servers).
    pub insecure: bool,
    /// Accept any TLS certificate (self-signed test servers).
    pub insecure_skip_verify: bool,
    /// Path-style requests (`endpoint/bucket/key`); needed by most S3-compatible servers.
    pub forcepathstyle: bool,
    /// Objects larger than this are uploaded in parts of this size (0: 16 MiB).
    pub part_size: u64,
}

/// `storage.trace.gcs`. Credentials come from `GOOGLE_APPLICATION_CREDENTIALS` /
/// `GOOGLE_SERVICE_ACCOUNT*` unless `service_account` names a key file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GcsConfig {
    pub bucket_name: String,
    pub prefix: String,
    /// Base URL override, e.g. for a GCS emulator.
    pub endpoint: String,
    /// Plain http to `endpoint`.
    pub insecure: bool,
    /// Path of a service-account JSON key file.
    pub service_account: String,
}

/// `storage.trace.azure`. The key may also come from `AZURE_STORAGE_ACCOUNT_KEY`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureConfig {
    pub container_name: String,
    pub storage_account_name: String,
    pub storage_account_key: Secret,
    pub endpoint_suffix: String,
    pub prefix: String,
}

impl Default for AzureConfig {
    fn default() -> Self {
        Self {
            container_name: String::new(),
            storage_account_name: String::new(),
            storage_account_key: Secret::default(),
            endpoint_suffix: "blob.core.windows.net".into(),
            prefix: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockStorageConfig {
    pub bloom_filter_false_positive: f64,
    pub bloom_filter_shard_size_bytes: usize,
}

impl Default for BlockStorageConfig {
    fn default() -> Self {
        Self {
            bloom_filter_false_positive: 0.01,
            bloom_filter_shard_size_bytes: 100 * 1024,
        }
    }
}

impl Config {
    /// Reads a YAML file; `expand_env` replaces `${VAR}` and `${VAR:-default}` first.
    pub fn from_file(path: &Path, expand_env: bool) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = if expand_env {
            expand_env_vars(&text)
        } else {
            text
        };
        Self::from_yaml(&text)
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        // An empty file is a valid config: all defaults.
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let cfg: Config =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let ing = &self.ingester;
        if ing.flush_check_period.is_zero() {
            return Err(ConfigError::Invalid(
                "ingester.flush_check_period must be greater than zero".into(),
            ));
        }
        if ing.max_block_bytes == 0 {
            return Err(ConfigError::Invalid(
                "ingester.max_block_bytes must be greater than zero".into(),
            ));
        }
        let fp = self.storage.trace.block.bloom_filter_false_positive;
        if !(fp > 0.0 && fp < 1.0) {
            return Err(ConfigError::Invalid(format!(
                "storage.trace.block.bloom_filter_false_positive must be in (0, 1), got {fp}"
            )));
        }
        // A block that cannot be encoded would keep its traces (and the WAL) pinned forever:
        // refuse such settings at start instead.
        if self.storage.trace.block.bloom_filter_shard_size_bytes == 0 {
            return Err(ConfigError::Invalid(
                "storage.trace.block.bloom_filter_shard_size_bytes must be greater than zero"
                    .into(),
            ));
        }
        if ing.row_group_size_bytes == 0 {
            return Err(ConfigError::Invalid(
                "ingester.row_group_size_bytes must be greater than zero".into(),
            ));
        }
        if ing.max_live_bytes == 0 {
            return Err(ConfigError::Invalid(
                "ingester.max_live_bytes must be greater than zero".into(),
            ));
        }
        let st = &self.storage.trace;
        let missing = match st.backend {
            BackendKind::S3 if st.s3.bucket.is_empty() => Some("storage.trace.s3.bucket"),
            BackendKind::Gcs if st.gcs.bucket_name.is_empty() => {
                Some("storage.trace.gcs.bucket_name")
            }
            BackendKind::Azure if st.azure.container_name.is_empty() => {
                Some("storage.trace.azure.container_name")
            }
            BackendKind::Azure if st.azure.storage_account_name.is_empty() => {
                Some("storage.trace.azure.storage_account_name")
            }
            _ => None,
        };
        if let Some(key) = missing {
            return Err(ConfigError::Invalid(format!(
                "{key} must be set for backend {:?}",
                st.backend
            )));
        }
        let d = &self.distributor;
        if d.max_spans_per_request == 0
            || d.max_decoded_request_bytes == 0
            || d.max_inflight_request_bytes == 0
        {
            return Err(ConfigError::Invalid(
                "distributor.max_spans_per_request, max_decoded_request_bytes and max_inflight_request_bytes must be greater than zero".into(),
            ));
        }
        if let Some(g) = &self.distributor.receivers.otlp.protocols.grpc {
            parse_addr(&g.endpoint)?;
        }
        if let Some(h) = &self.distributor.receivers.otlp.protocols.http {
            parse_addr(&h.endpoint)?;
        }
        self.server.http_addr()?;
        self.ingest.validate()?;
        // Nodes read each other's live traces of every tenant: with credentials deciding
        // tenants, that door needs a key of its own.
        if self.ingest.enabled
            && self.auth.enabled
            && self.ingest.peer_token_file.is_none()
            && self.ingest.peer_token_env.is_none()
        {
            return Err(ConfigError::Invalid(
                "ingest.peer_token_file or ingest.peer_token_env must be set when auth is enabled: nodes read each other's live traces through /internal/live".into(),
            ));
        }
        self.metrics_generator.validate()?;
        let p = self
            .overrides
            .defaults
            .metrics_generator
            .processor
            .apply(&self.metrics_generator.processor);
        for (key, b) in [
            (
                "span_metrics.histogram_buckets",
                &p.span_metrics.histogram_buckets,
            ),
            (
                "service_graphs.histogram_buckets",
                &p.service_graphs.histogram_buckets,
            ),
        ] {
            generator::check_buckets(key, b).map_err(|e| {
                ConfigError::Invalid(format!(
                    "overrides.defaults.metrics_generator.processor.{e}"
                ))
            })?;
        }
        Ok(())
    }

    /// The receivers `vivace serve` starts with no config: both OTLP protocols on their
    /// standard ports.
    pub fn with_default_receivers(mut self) -> Self {
        let p = &mut self.distributor.receivers.otlp.protocols;
        if p.grpc.is_none() && p.http.is_none() {
            p.grpc = Some(GrpcReceiverConfig::default());
            p.http = Some(HttpReceiverConfig::default());
        }
        self
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, ConfigError> {
    // Tempo configs often write ":4317"; that means every interface.
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse()
        .map_err(|e| ConfigError::Invalid(format!("bad listen address {s:?}: {e}")))
}

/// For duration fields in other modules' config structs.
pub fn deserialize_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    duration::deserialize(d)
}

/// Parses a Go-style duration (`5s`, `1m30s`, `100ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, ConfigError> {
    parse_addr(s)
}

fn expand_env_vars(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let expr = &after[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                match std::env::var(name) {
                    Ok(v) => out.push_str(&v),
                    Err(_) => out.push_str(default.unwrap_or("")),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tempo_shaped_file_parses() {
        let cfg = Config::from_yaml(
            r#"
server:
  http_listen_port: 3300
distributor:
  receivers:
    otlp:
      protocols:
        grpc:
          endpoint: 127.0.0.1:14317
        http:
          endpoint: ":14318"
ingester:
  trace_idle_period: 2s
  max_block_duration: 1m
  max_block_bytes: 1000000
storage:
  trace:
    backend: local
    blocklist_poll: 30s
    wal:
      path: /tmp/w
    local:
      path: /tmp/b
"#,
        )
        .unwrap();
        assert_eq!(cfg.server.http_listen_port, 3300);
        assert_eq!(cfg.ingester.trace_idle_period, Duration::from_secs(2));
        assert_eq!(cfg.ingester.max_block_duration, Duration::from_secs(60));
        assert_eq!(cfg.storage.trace.blocklist_poll, Duration::from_secs(30));
        assert_eq!(cfg.storage.trace.wal.path, PathBuf::from("/tmp/w"));
        let http = cfg.distributor.receivers.otlp.protocols.http.unwrap();
        assert_eq!(parse_listen_addr(&http.endpoint).unwrap().port(), 14318);
    }

    #[test]
    fn demo_stack_config_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/vivace.yaml");
        let cfg = Config::from_file(&path, false).unwrap();
        assert_eq!(cfg.storage.trace.backend, BackendKind::S3);
    }

    #[test]
    fn scale_demo_config_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/scale/vivace.yaml");
        let cfg = Config::from_file(&path, false).unwrap();
        assert!(cfg.ingest.enabled);
        assert_eq!(
            cfg.overrides.defaults.ingestion.rate_strategy,
            crate::config::overrides::RateStrategy::Global
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_yaml("server:\n  nope: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let err = Config::from_yaml("storage:\n  trace:\n    bakend: local\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bakend"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Config::from_yaml("ingester:\n  trace_idle_period: soon\n").is_err());
        assert!(Config::from_yaml("storage:\n  trace:\n    backend: tape\n").is_err());
        assert!(Config::from_yaml("server:\n  http_listen_address: 'not an ip'\n").is_err());
    }

    #[test]
    fn settings_that_cannot_encode_a_block_are_rejected_naming_the_key() {
        for (yaml, key) in [
            (
                "storage:\n  trace:\n    block:\n      bloom_filter_shard_size_bytes: 0\n",
                "storage.trace.block.bloom_filter_shard_size_bytes",
            ),
            (
                "ingester:\n  row_group_size_bytes: 0\n",
                "ingester.row_group_size_bytes",
            ),
            (
                "ingester:\n  max_live_bytes: 0\n",
                "ingester.max_live_bytes",
            ),
        ] {
            let err = Config::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(key), "{yaml}: {err}");
        }
    }

    #[test]
    fn object_store_sections_parse() {
        let cfg = Config::from_yaml(
            r#"
storage:
  trace:
    backend: s3
    s3:
      bucket: tempo
      endpoint: minio:9000
      region: eu-west-1
      prefix: team-a
      access_key: AK
      secret_key: SK
      insecure: true
      forcepathstyle: true
    gcs:
      bucket_name: g
      prefix: p
    azure:
      container_name: c
      storage_account_name: acct
      storage_account_key: k
      endpoint_suffix: blob.core.usgovcloudapi.net
      prefix: p
"#,
        )
        .unwrap();
        let s3 = &cfg.storage.trace.s3;
        assert_eq!(cfg.storage.trace.backend, BackendKind::S3);
        assert_eq!(s3.bucket, "tempo");
        assert_eq!(s3.endpoint, "minio:9000");
        assert_eq!(s3.secret_key.expose(), "SK");
        assert!(s3.insecure && s3.forcepathstyle);
        assert!(
            !format!("{cfg:?}").contains("SK"),
            "secrets are not printed"
        );
        assert_eq!(cfg.storage.trace.gcs.bucket_name, "g");
        assert_eq!(
            cfg.storage.trace.azure.endpoint_suffix,
            "blob.core.usgovcloudapi.net"
        );
        let err = Config::from_yaml("storage:\n  trace:\n    backend: s3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.trace.s3.bucket"), "{err}");
        let err = Config::from_yaml("storage:\n  trace:\n    s3:\n      buckett: x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("buckett"), "{err}");
        let err = Config::from_yaml(
            "storage:\n  trace:\n    backend: azure\n    azure:\n      container_name: c\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage_account_name"), "{err}");
    }

    #[test]
    fn env_expansion() {
        std::env::set_var("VIVACE_TEST_PORT", "3999");
        let text = expand_env_vars("a: ${VIVACE_TEST_PORT}\nb: ${VIVACE_UNSET_X:-dflt}\n");
        assert_eq!(text, "a: 3999\nb: dflt\n");
    }
}
