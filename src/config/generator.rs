//! `metrics_generator:`, shaped like Tempo's: the span-metrics and service-graphs processors,
//! the per-tenant registry, and Prometheus remote write. Which tenants get which processors
//! is a per-tenant override (`overrides.*.metrics_generator.processors`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsGeneratorConfig {
    pub processor: ProcessorConfig,
    pub registry: RegistryConfig,
    pub storage: GeneratorStorageConfig,
    /// Spans whose end time is further than this from now are not turned into metrics
    /// (zero: no check). Tempo's default.
    #[serde(with = "duration")]
    pub metrics_ingestion_time_range_slack: Duration,
    /// Not a Tempo key: bytes of accepted OTLP requests waiting for the generator; past it
    /// requests are skipped by the generator (counted), never refused to the sender.
    pub max_queued_bytes: usize,
}

impl Default for MetricsGeneratorConfig {
    fn default() -> Self {
        Self {
            processor: ProcessorConfig::default(),
            registry: RegistryConfig::default(),
            storage: GeneratorStorageConfig::default(),
            metrics_ingestion_time_range_slack: Duration::from_secs(30),
            max_queued_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    pub span_metrics: SpanMetricsConfig,
    pub service_graphs: ServiceGraphsConfig,
}

/// Tempo's default latency buckets for span metrics: 0.002 s doubling to 16.384 s.
pub fn default_span_metrics_buckets() -> Vec<f64> {
    (0..14).map(|i| 0.002 * f64::from(1u32 << i)).collect()
}

/// Tempo's default service-graph buckets: 0.1 s doubling to 12.8 s.
pub fn default_service_graph_buckets() -> Vec<f64> {
    (0..8).map(|i| 0.1 * f64::from(1u32 << i)).collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanMetricsConfig {
    pub histogram_buckets: Vec<f64>,
    /// Span or resource attributes added as labels (`http.method` becomes `http_method`).
    pub dimensions: Vec<String>,
    pub intrinsic_dimensions: IntrinsicDimensions,
    pub filter_policies: Vec<FilterPolicy>,
}

impl Default for SpanMetricsConfig {
    fn default() -> Self {
        Self {
            histogram_buckets: default_span_metrics_buckets(),
            dimensions: Vec::new(),
            intrinsic_dimensions: IntrinsicDimensions::default(),
            filter_policies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IntrinsicDimensions {
    pub service: bool,
    pub span_name: bool,
    pub span_kind: bool,
    pub status_code: bool,
    pub status_message: bool,
}

impl Default for IntrinsicDimensions {
    fn default() -> Self {
        Self {
            service: true,
            span_name: true,
            span_kind: true,
            status_code: true,
            status_message: false,
        }
    }
}

/// One of Tempo's span filter policies: a span is kept when it matches no `exclude`, and
/// matches every `include` (or any `include_any`).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterPolicy {
    pub include: Option<PolicyMatch>,
    pub include_any: Option<PolicyMatch>,
    pub exclude: Option<PolicyMatch>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyMatch {
    pub match_type: MatchType,
    #[serde(default)]
    pub attributes: Vec<MatchAttribute>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MatchType {
    Strict,
    Regex,
}

/// `key` is `name`, `kind`, `status`, `span.<attr>` or `resource.<attr>`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchAttribute {
    pub key: String,
    pub value: MatchValue,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MatchValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceGraphsConfig {
    /// How long an unpaired client or server span waits for its other half.
    #[serde(with = "duration")]
    pub wait: Duration,
    /// Unpaired edges held at most; spans past it are not paired (counted).
    pub max_items: usize,
    pub histogram_buckets: Vec<f64>,
    /// Attributes added as labels; the side seen last wins unless
    /// `enable_client_server_prefix` gives each side its own `client_`/`server_` label.
    pub dimensions: Vec<String>,
    pub enable_client_server_prefix: bool,
    /// Adds `virtual_node` = `client` or `server` to edges inferred at expiry.
    pub enable_virtual_node_label: bool,
    /// Adds `traces_service_graph_request_messaging_system_seconds`: from a producer span's
    /// end to its consumer span's start.
    pub enable_messaging_system_latency_histogram: bool,
    /// Spans left out of the graph; the other half of a left-out span is left out too.
    pub filter_policies: Vec<FilterPolicy>,
    /// Accepted for tempo.yaml compatibility: one vivace thread does all the pairing.
    pub workers: usize,
    /// Attributes that name an uninstrumented peer (a virtual node), first found wins.
    pub peer_attributes: Vec<String>,
    /// Attributes that mark a client span as a database call, first found names it.
    pub database_name_attributes: Vec<String>,
}

impl Default for ServiceGraphsConfig {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(10),
            max_items: 10_000,
            histogram_buckets: default_service_graph_buckets(),
            dimensions: Vec::new(),
            enable_client_server_prefix: false,
            enable_virtual_node_label: false,
            enable_messaging_system_latency_histogram: false,
            filter_policies: Vec::new(),
            workers: 10,
            peer_attributes: ["peer.service", "db.name", "db.system", "db.system.name"]
                .map(String::from)
                .to_vec(),
            database_name_attributes: ["db.namespace", "db.name", "db.system", "db.system.name"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Per-tenant processor settings (`overrides.*.metrics_generator.processor`): each key
/// given replaces that key of `metrics_generator.processor` for the tenant.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorOverrides {
    pub span_metrics: SpanMetricsOverrides,
    pub service_graphs: ServiceGraphsOverrides,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SpanMetricsOverrides {
    pub dimensions: Option<Vec<String>>,
    pub intrinsic_dimensions: Option<IntrinsicDimensions>,
    pub filter_policies: Option<Vec<FilterPolicy>>,
    pub histogram_buckets: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceGraphsOverrides {
    pub dimensions: Option<Vec<String>>,
    pub peer_attributes: Option<Vec<String>>,
    pub histogram_buckets: Option<Vec<f64>>,
    pub enable_client_server_prefix: Option<bool>,
    pub enable_virtual_node_label: Option<bool>,
    pub filter_policies: Option<Vec<FilterPolicy>>,
}

impl ProcessorOverrides {
    /// `base` with this tenant's keys in place.
    pub fn apply(&self, base: &ProcessorConfig) -> ProcessorConfig {
        let mut out = base.clone();
        let (sm, o) = (&mut out.span_metrics, &self.span_metrics);
        if let Some(v) = &o.dimensions {
            sm.dimensions = v.clone();
        }
        if let Some(v) = &o.intrinsic_dimensions {
            sm.intrinsic_dimensions = v.clone();
        }
        if let Some(v) = &o.filter_policies {
            sm.filter_policies = v.clone();
        }
        if let Some(v) = &o.histogram_buckets {
            sm.histogram_buckets = v.clone();
        }
        let (sg, o) = (&mut out.service_graphs, &self.service_graphs);
        if let Some(v) = &o.dimensions {
            sg.dimensions = v.clone();
        }
        if let Some(v) = &o.peer_attributes {
            sg.peer_attributes = v.clone();
        }
        if let Some(v) = &o.histogram_buckets {
            sg.histogram_buckets = v.clone();
        }
        if let Some(v) = o.enable_client_server_prefix {
            sg.enable_client_server_prefix = v;
        }
        if let Some(v) = o.enable_virtual_node_label {
            sg.enable_virtual_node_label = v;
        }
        if let Some(v) = &o.filter_policies {
            sg.filter_policies = v.clone();
        }
        out
    }
}

/// Histogram buckets must be a non-empty increasing list.
pub fn check_buckets(key: &str, buckets: &[f64]) -> Result<(), String> {
    if buckets.is_empty() || buckets.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("{key} must be a non-empty increasing list"));
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// How often every tenant's series are sent.
    #[serde(with = "duration")]
    pub collection_interval: Duration,
    /// A series not updated for this long is no longer sent.
    #[serde(with = "duration")]
    pub stale_duration: Duration,
    /// Labels added to every series.
    pub external_labels: BTreeMap<String, String>,
    /// Longer label values are cut to this many bytes.
    pub max_label_value_length: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            collection_interval: Duration::from_secs(15),
            stale_duration: Duration::from_secs(15 * 60),
            external_labels: BTreeMap::new(),
            max_label_value_length: 2048,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorStorageConfig {
    /// Accepted for tempo.yaml compatibility: vivace queues samples in memory, not in a WAL
    /// under this path.
    pub path: Option<std::path::PathBuf>,
    pub remote_write: Vec<RemoteWriteConfig>,
    /// Send the tenant as `X-Scope-OrgID` (Tempo's default: on).
    pub remote_write_add_org_id_header: bool,
    /// How long shutdown waits for queued samples to be sent.
    #[serde(with = "duration")]
    pub remote_write_flush_deadline: Duration,
}

impl Default for GeneratorStorageConfig {
    fn default() -> Self {
        Self {
            path: None,
            remote_write: Vec::new(),
            remote_write_add_org_id_header: true,
            remote_write_flush_deadline: Duration::from_secs(60),
        }
    }
}

/// The subset of a Prometheus `remote_write` entry that vivace implements.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    pub url: String,
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_remote_timeout", with = "duration")]
    pub remote_timeout: Duration,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default)]
    pub queue_config: QueueConfig,
}

fn default_remote_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    #[serde(default)]
    pub password: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Samples held for this endpoint while it cannot be reached; past it the oldest are
    /// dropped (counted). The default holds over ten minutes of 100k series at 15 s.
    pub capacity: usize,
    pub max_samples_per_send: usize,
    #[serde(with = "duration")]
    pub min_backoff: Duration,
    #[serde(with = "duration")]
    pub max_backoff: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 5_000_000,
            max_samples_per_send: 2000,
            min_backoff: Duration::from_millis(30),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl MetricsGeneratorConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(format!("metrics_generator.{msg}")));
        if self.registry.collection_interval.is_zero() {
            return bad("registry.collection_interval must be greater than zero".into());
        }
        for (key, buckets) in [
            (
                "processor.span_metrics.histogram_buckets",
                &self.processor.span_metrics.histogram_buckets,
            ),
            (
                "processor.service_graphs.histogram_buckets",
                &self.processor.service_graphs.histogram_buckets,
            ),
        ] {
            check_buckets(key, buckets)
                .map_err(|e| ConfigError::Invalid(format!("metrics_generator.{e}")))?;
        }
        if self.processor.service_graphs.max_items == 0 {
            return bad("processor.service_graphs.max_items must be greater than zero".into());
        }
        if self.max_queued_bytes == 0 {
            return bad("max_queued_bytes must be greater than zero".into());
        }
        for name in self.registry.external_labels.keys() {
            if !valid_label_name(name) {
                return bad(format!(
                    "registry.external_labels: {name:?} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"
                ));
            }
        }
        for (i, rw) in self.storage.remote_write.iter().enumerate() {
            for (k, v) in &rw.headers {
                if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || http::HeaderValue::from_str(v).is_err()
                {
                    return bad(format!(
                        "storage.remote_write[{i}].headers: {k:?} is not a valid http header"
                    ));
                }
            }
            if !(rw.url.starts_with("http://") || rw.url.starts_with("https://")) {
                return bad(format!(
                    "storage.remote_write[{i}].url must be an http:// or https:// url, got {:?}",
                    rw.url
                ));
            }
            let q = &rw.queue_config;
            if q.capacity == 0 || q.max_samples_per_send == 0 {
                return bad(format!(
                    "storage.remote_write[{i}].queue_config.capacity and max_samples_per_send must be greater than zero"
                ));
            }
            if q.min_backoff.is_zero() || q.max_backoff < q.min_backoff {
                return bad(format!(
                    "storage.remote_write[{i}].queue_config needs 0 < min_backoff <= max_backoff"
                ));
            }
        }
        Ok(())
    }
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::overrides::GeneratorProcessor;
    use crate::config::Config;

    #[test]
    fn tempo_shaped_generator_config_parses() {
        let cfg = Config::from_yaml(
            r#"
metrics_generator:
  registry:
    collection_interval: 1s
    stale_duration: 5m
    external_labels:
      cluster: eu
  processor:
    span_metrics:
      dimensions: [http.method]
      intrinsic_dimensions:
        status_message: true
      filter_policies:
        - exclude:
            match_type: regex
            attributes:
              - key: span.http.target
                value: ^/health
    service_graphs:
      wait: 2s
      max_items: 500
      workers: 4
      enable_client_server_prefix: true
  storage:
    path: /var/tempo/generator/wal
    remote_write_add_org_id_header: false
    remote_write:
      - url: http://prometheus:9090/api/v1/write
        headers:
          X-Extra: a
        queue_config:
          capacity: 100
overrides:
  defaults:
    metrics_generator:
      processors: [service-graphs, span-metrics]
      max_active_series: 1000
"#,
        )
        .unwrap();
        let g = &cfg.metrics_generator;
        assert_eq!(g.registry.collection_interval, Duration::from_secs(1));
        assert_eq!(g.registry.external_labels["cluster"], "eu");
        assert_eq!(g.processor.span_metrics.dimensions, ["http.method"]);
        assert!(g.processor.span_metrics.intrinsic_dimensions.status_message);
        assert!(g.processor.span_metrics.intrinsic_dimensions.service);
        assert_eq!(g.processor.span_metrics.filter_policies.len(), 1);
        assert_eq!(g.processor.service_graphs.wait, Duration::from_secs(2));
        assert_eq!(g.processor.service_graphs.max_items, 500);
        assert!(g.processor.service_graphs.enable_client_server_prefix);
        assert!(!g.storage.remote_write_add_org_id_header);
        let rw = &g.storage.remote_write[0];
        assert_eq!(rw.queue_config.capacity, 100);
        assert_eq!(rw.queue_config.max_samples_per_send, 2000);
        assert_eq!(rw.headers["X-Extra"], "a");
        let d = &cfg.overrides.defaults.metrics_generator;
        assert!(d.has(GeneratorProcessor::SpanMetrics) && d.has(GeneratorProcessor::ServiceGraphs));
        assert_eq!(d.max_active_series, 1000);
    }

    #[test]
    fn defaults_are_tempos() {
        let g = MetricsGeneratorConfig::default();
        let sm = &g.processor.span_metrics.histogram_buckets;
        assert_eq!(sm.len(), 14);
        assert_eq!((sm[0], sm[13]), (0.002, 16.384));
        let sg = &g.processor.service_graphs.histogram_buckets;
        assert_eq!(sg.len(), 8);
        assert!((sg[7] - 12.8).abs() < 1e-12);
        assert_eq!(g.registry.collection_interval, Duration::from_secs(15));
        assert_eq!(g.registry.stale_duration, Duration::from_secs(900));
        assert!(g.storage.remote_write_add_org_id_header);
        assert!(crate::config::overrides::Limits::default()
            .metrics_generator
            .processors
            .is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_them() {
        for (yaml, needle) in [
            ("metrics_generator:\n  registry:\n    colection_interval: 1s\n", "colection_interval"),
            ("metrics_generator:\n  processor:\n    span_metrics:\n      dimension: [a]\n", "dimension"),
            ("metrics_generator:\n  storage:\n    remote_write:\n      - url: http://x\n        urls: y\n", "urls"),
            ("metrics_generator:\n  registry:\n    collection_interval: 0s\n", "collection_interval"),
            ("metrics_generator:\n  storage:\n    remote_write:\n      - url: prometheus:9090\n", "remote_write[0].url"),
            ("metrics_generator:\n  processor:\n    service_graphs:\n      histogram_buckets: [1, 0.5]\n", "histogram_buckets"),
            ("overrides:\n  defaults:\n    metrics_generator:\n      processors: [local-blocks]\n", "local-blocks"),
            ("metrics_generator:\n  registry:\n    external_labels:\n      my-label: x\n", "my-label"),
            ("overrides:\n  defaults:\n    metrics_generator:\n      processor:\n        span_metrics:\n          dimensons: [a]\n", "dimensons"),
            ("overrides:\n  defaults:\n    metrics_generator:\n      processor:\n        service_graphs:\n          histogram_buckets: []\n", "overrides.defaults.metrics_generator.processor.service_graphs.histogram_buckets"),
            ("metrics_generator:\n  storage:\n    remote_write:\n      - url: http://x\n        headers:\n          \"a b\": c\n", "headers"),
        ] {
            let err = Config::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }
}
