//! Per-tenant limits: defaults from the main config, per-tenant values from a runtime file
//! that is re-read while the server runs (Tempo's `overrides` block and
//! `per_tenant_override_config`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::overrides::{
    CompactionLimits, GeneratorLimits, GlobalLimits, IngestionLimits, Limits, OverridesConfig,
    ReadLimits,
};
use crate::config::ConfigError;
use crate::model::TenantId;

/// The runtime file's shape. A tenant's entry replaces the defaults for the sections it
/// names; unnamed sections keep the defaults.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RuntimeFile {
    overrides: HashMap<String, PartialLimits>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct PartialLimits {
    ingestion: Option<IngestionLimits>,
    global: Option<GlobalLimits>,
    read: Option<ReadLimits>,
    compaction: Option<CompactionLimits>,
    metrics_generator: Option<GeneratorLimits>,
}

/// Current limits for every tenant; cheap to read on every request.
pub(crate) struct Overrides {
    defaults: Limits,
    per_tenant: RwLock<HashMap<String, Arc<Limits>>>,
    file: Option<PathBuf>,
}

impl Overrides {
    pub(crate) fn new(cfg: &OverridesConfig) -> Result<Arc<Self>, ConfigError> {
        let o = Arc::new(Self {
            defaults: cfg.defaults.clone(),
            per_tenant: RwLock::new(HashMap::new()),
            file: cfg.per_tenant_override_config.clone(),
        });
        // A broken file at start-up is a configuration error; later, the last good one stays.
        o.reload()?;
        Ok(o)
    }

    pub(crate) fn limits(&self, tenant: &TenantId) -> Arc<Limits> {
        match self.per_tenant.read().get(tenant.as_str()) {
            Some(l) => l.clone(),
            None => Arc::new(self.defaults.clone()),
        }
    }

    fn reload(&self) -> Result<(), ConfigError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file: RuntimeFile = if text.trim().is_empty() {
            RuntimeFile::default()
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| {
                ConfigError::Parse(format!("overrides file {}: {e}", path.display()))
            })?
        };
        let mut map = HashMap::new();
        for (tenant, p) in file.overrides {
            let mut l = self.defaults.clone();
            if let Some(i) = p.ingestion {
                l.ingestion = i;
            }
            if let Some(g) = p.global {
                l.global = g;
            }
            if let Some(r) = p.read {
                l.read = r;
            }
            if let Some(c) = p.compaction {
                l.compaction = c;
            }
            if let Some(g) = p.metrics_generator {
                l.metrics_generator = g;
            }
            map.insert(tenant, Arc::new(l));
        }
        let n = map.len();
        *self.per_tenant.write() = map;
        info!(file = %path.display(), tenants = n, "overrides loaded");
        Ok(())
    }

    /// Re-reads the runtime file every `every` until the task is dropped.
    pub(crate) async fn run_reloader(self: Arc<Self>, every: Duration) {
        if self.file.is_none() || every.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.reload()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "keeping the previous overrides"),
                Err(e) => warn!(error = %e, "overrides reload task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::overrides::GeneratorProcessor;

    #[test]
    fn defaults_and_runtime_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("overrides.yaml");
        std::fs::write(
            &file,
            "overrides:\n  team-a:\n    ingestion:\n      rate_limit_bytes: 100\n      burst_size_bytes: 200\n",
        )
        .unwrap();
        let o = Overrides::new(&OverridesConfig {
            per_tenant_override_config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap();
        let a = o.limits(&TenantId::new("team-a").unwrap());
        assert_eq!(a.ingestion.rate_limit_bytes, 100);
        assert_eq!(
            a.global.max_bytes_per_trace, 5_000_000,
            "unnamed sections keep defaults"
        );
        let b = o.limits(&TenantId::new("team-b").unwrap());
        assert_eq!(b.ingestion.rate_limit_bytes, 30_000_000);
        // A bad edit is refused and the previous limits stay.
        std::fs::write(&file, "overrides:\n  team-a:\n    nope: 1\n").unwrap();
        let err = o.reload().unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        assert_eq!(
            o.limits(&TenantId::new("team-a").unwrap())
                .ingestion
                .rate_limit_bytes,
            100
        );
        // The generator's processors are a per-tenant section like the others.
        std::fs::write(
            &file,
            "overrides:\n  team-a:\n    metrics_generator:\n      processors: [span-metrics]\n",
        )
        .unwrap();
        o.reload().unwrap();
        let a = o.limits(&TenantId::new("team-a").unwrap());
        assert!(a.metrics_generator.has(GeneratorProcessor::SpanMetrics));
        assert!(!a.metrics_generator.has(GeneratorProcessor::ServiceGraphs));
        assert!(o
            .limits(&TenantId::new("team-b").unwrap())
            .metrics_generator
            .processors
            .is_empty());
        std::fs::write(&file, "overrides: {}\n").unwrap();
        o.reload().unwrap();
        assert_eq!(
            o.limits(&TenantId::new("team-a").unwrap())
                .ingestion
                .rate_limit_bytes,
            30_000_000
        );
    }
}
