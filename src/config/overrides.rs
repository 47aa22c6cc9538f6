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
    /// How far above the rate a tenant may burst. Always per distributor, whatever the
    /// strategy (as in Tempo): a tenant's largest request must fit it on every node.
    pub burst_size_bytes: u64,
    /// `local`: every distributor allows the whole rate. `global`: the rate is the tenant's
    /// across the cluster, each healthy distributor allowing its share (`ingest:` nodes
    /// count each other; a single node's share is the whole rate).
    pub rate_strategy: RateStrategy,
    /// Live (not yet flushed) traces a tenant may have at once; spans of new traces past it
    /// are refused (zero: no limit besides the ingester's memory bound).
    pub max_traces_per_user: u64,
}

/// Tempo's `ingestion.rate_strategy` (`ingestion_rate_strategy` in its legacy layout).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateStrategy {
    #[default]
    Local,
    Global,
}

impl IngestionLimits {
    /// The rate and burst one distributor enforces when `healthy` distributors (at least
    /// one: this one) share the tenant: the rate divided among them under `global`, the
    /// burst never, and never below the rate it is a burst of.
    pub fn per_distributor(&self, healthy: usize) -> (u64, u64) {
        let rate = match self.rate_strategy {
            RateStrategy::Local => self.rate_limit_bytes,
            // Rounded up, so a limit never becomes 0 ("no limit") by division.
            RateStrategy::Global => self.rate_limit_bytes.div_ceil(healthy.max(1) as u64),
        };
        (rate, self.burst_size_bytes.max(rate))
    }
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
            rate_strategy: RateStrategy::Local,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(yaml: &str) -> IngestionLimits {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn local_strategy_keeps_the_whole_rate_on_every_distributor() {
        let l = limits("rate_limit_bytes: 1000\nburst_size_bytes: 4000\n");
        assert_eq!(l.rate_strategy, RateStrategy::Local, "Tempo's default");
        assert_eq!(l.per_distributor(1), (1000, 4000));
        assert_eq!(l.per_distributor(3), (1000, 4000));
    }

    #[test]
    fn global_strategy_shares_the_rate_but_not_the_burst() {
        let l = limits("rate_limit_bytes: 1000\nburst_size_bytes: 4000\nrate_strategy: global\n");
        assert_eq!(l.per_distributor(1), (1000, 4000));
        assert_eq!(l.per_distributor(2), (500, 4000));
        // Rounded up: three shares never add up to less than the tenant's rate.
        assert_eq!(l.per_distributor(3), (334, 4000));
        // Nobody counted (not even this node, before its first round): the whole rate.
        assert_eq!(l.per_distributor(0), (1000, 4000));
    }

    #[test]
    fn global_strategy_edge_cases() {
        // A burst below the share is raised to it, as for a local rate.
        let l = limits("rate_limit_bytes: 1000\nburst_size_bytes: 10\nrate_strategy: global\n");
        assert_eq!(l.per_distributor(2), (500, 500));
        // No limit stays no limit; a tiny one never divides down to "no limit".
        let none = limits("rate_limit_bytes: 0\nrate_strategy: global\n");
        assert_eq!(none.per_distributor(4).0, 0);
        let tiny = limits("rate_limit_bytes: 1\nburst_size_bytes: 1\nrate_strategy: global\n");
        assert_eq!(tiny.per_distributor(4), (1, 1));
        let bad = serde_yaml_ng::from_str::<IngestionLimits>("rate_strategy: shared\n");
        assert!(bad.is_err(), "unknown strategies are refused");
    }
}
