//! The `overrides` section of the config: per-tenant limits and their defaults (Tempo's
//! `overrides` block). `crate::overrides` keeps the current values per tenant and reloads
//! the runtime file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The limits of one tenant. Zero means "no limit".
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub ingestion: IngestionLimits,
    pub global: GlobalLimits,
    pub read: ReadLimits,
    pub compaction: CompactionLimits,
    pub metrics_generator: GeneratorLimits,
}

/// Which metrics-generator processors run for a tenant (none by default, as in Tempo).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorLimits {
    pub processors: Vec<GeneratorProcessor>,
    /// Series the tenant's generator may hold at once; new ones past it are not created
    /// (zero: no limit).
    pub max_active_series: u64,
    /// The tenant's own span-metrics and service-graphs settings.
    pub processor: super::generator::ProcessorOverrides,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum GeneratorProcessor {
    #[serde(rename = "span-metrics")]
    SpanMetrics,
    #[serde(rename = "service-graphs")]
    ServiceGraphs,
}

impl GeneratorLimits {
    pub fn has(&self, p: GeneratorProcessor) -> bool {
        self.processors.contains(&p)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ReadLimits {
    /// Longest `end - start` a search may ask for (zero: no limit).
    #[serde(deserialize_with = "super::deserialize_duration")]
    pub max_search_duration: Duration,
    /// Largest `limit` a search may ask for; larger ones are cut to it (zero: no limit).
    pub max_result_limit: u32,
    /// Longest range a TraceQL metrics query may cover (zero: the frontend's
    /// `query_frontend.metrics.max_duration`).
    #[serde(deserialize_with = "super::deserialize_duration")]
    pub max_metrics_duration: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionLimits {
    /// Blocks whose newest span is older than this are deleted (zero: the compactor's
    /// `block_retention`).
    #[serde(deserialize_with = "super::deserialize_duration")]
    pub block_retention: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestionLimits {
    /// Sustained ingest rate per tenant, in bytes of OTLP per second.
    pub rate_limit_bytes: u64,
    /// How far above the rate a tenant may burst.
    pub burst_size_bytes: u64,
    /// Live (not yet flushed) traces a tenant may have at once; spans of new traces past it
    /// are refused (zero: no limit besides the ingester's memory bound).
    pub max_traces_per_user: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalLimits {
    /// Spans that would grow a live trace past this are refused (partial success).
    pub max_bytes_per_trace: u64,
}

impl Default for IngestionLimits {
    fn default() -> Self {
        // Tempo's defaults.
        Self {
            rate_limit_bytes: 30_000_000,
            burst_size_bytes: 30_000_000,
            max_traces_per_user: 0,
        }
    }
}

impl Default for GlobalLimits {
    fn default() -> Self {
        Self {
            max_bytes_per_trace: 5_000_000,
        }
    }
}

/// The `overrides` section of the main config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverridesConfig {
    pub defaults: Limits,
    /// YAML file `overrides: {<tenant>: <limits>}`, re-read every `per_tenant_override_period`.
    pub per_tenant_override_config: Option<PathBuf>,
    #[serde(deserialize_with = "super::deserialize_duration")]
    pub per_tenant_override_period: Duration,
}

impl Default for OverridesConfig {
    fn default() -> Self {
        Self {
            defaults: Limits::default(),
            per_tenant_override_config: None,
            per_tenant_override_period: Duration::from_secs(10),
        }
    }
}
