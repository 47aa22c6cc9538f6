//! Commands that work straight against a bucket, without a server (like tempo-cli):
//! `vivace blocks list|inspect|verify`, `vivace query trace <id>`,
//! `vivace query search '<traceql>'`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};

use crate::api;
use crate::backend::Backend;
use crate::blocklist::{BlockList, PollConfig};
use crate::config::Config;
use crate::frontend::Frontend;
use crate::metrics::Metrics;
use crate::model::{TenantId, TraceId, SINGLE_TENANT};
use crate::querier::Querier;

#[derive(Args, Debug)]
pub struct BucketArgs {
    /// The server's config file: its storage.trace section says where the bucket is.
    #[arg(long = "config.file", env = "VIVACE_CONFIG_FILE")]
    pub(crate) config_file: Option<PathBuf>,
    /// Overrides storage.trace.local.path (with the default local backend).
    #[arg(long = "storage.trace.local.path")]
    pub(crate) local_path: Option<PathBuf>,
    #[arg(long, default_value = SINGLE_TENANT)]
    pub(crate) tenant: String,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum BlocksCommand {
    /// The live blocks of a tenant.
    List(BucketArgs),
    /// One block in detail: meta, row groups, column sizes, bloom shards, tag summary.
    Inspect {
        block_id: String,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// Checks blocks end to end (objects, footer, every row, ID order, bloom, index);
    /// every block of the tenant unless some are named. Exits non-zero if any is broken.
    Verify {
        block_ids: Vec<String>,
        #[command(flatten)]
        bucket: BucketArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueryCommand {
    /// A trace by ID, as Tempo's /api/traces/{id} answers it.
    Trace {
        id: String,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// A TraceQL search over the blocks, as /api/search answers it.
    Search {
        query: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        bucket: BucketArgs,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Backend(#[from] crate::backend::BackendError),
    #[error("{0}")]
    Query(#[from] crate::querier::QueryError),
    #[error("{0}")]
    Invalid(String),
    #[error("trace {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Broken(String),
}

pub(super) fn open_bucket(b: &BucketArgs) -> Result<(TenantId, Backend, Config), ToolError> {
    let mut cfg = match &b.config_file {
        Some(p) => Config::from_file(p, false)?,
        None => Config::default(),
    };
    if let Some(p) = &b.local_path {
        cfg.storage.trace.local.path = p.clone();
    }
    let tenant = TenantId::new(&b.tenant).map_err(|e| ToolError::Invalid(e.to_string()))?;
    let backend = Backend::from_config(&cfg.storage.trace)?;
    Ok((tenant, backend, cfg))
}

async fn open(b: &BucketArgs) -> Result<(TenantId, Arc<Querier>), ToolError> {
    let (tenant, backend, cfg) = open_bucket(b)?;
    let querier = Arc::new(
        Querier::new(
            backend,
            None,
            Arc::new(BlockList::default()),
            Arc::new(Metrics::default()),
            cfg.querier.concurrent_blocks,
        )
        .with_poll_config(PollConfig::from_config(&cfg.storage.trace)),
    );
    querier.poll_blocklist().await?;
    Ok((tenant, querier))
}

/// Runs a blocks command; returns what to print.
pub async fn blocks(cmd: &BlocksCommand) -> Result<String, ToolError> {
    let b = match cmd {
        BlocksCommand::List(b) => b,
        BlocksCommand::Inspect { block_id, bucket } => {
            return super::block_tools::inspect(block_id, bucket).await
        }
        BlocksCommand::Verify { block_ids, bucket } => {
            return super::block_tools::verify(block_ids, bucket).await
        }
    };
    let (tenant, querier) = open(b).await?;
    let mut metas = querier.blocklist().blocks(&tenant);
    metas.sort_by_key(|m| (m.start_time, m.block_id));
    if b.output == Output::Json {
        let list: Vec<_> = metas.iter().map(|m| m.as_ref()).collect();
        return serde_json::to_string_pretty(&list).map_err(|e| ToolError::Invalid(e.to_string()));
    }
    let mut out = format!(
        "{:<36}  {:>8}  {:>10}  {:>12}  {:>5}  {}\n",
        "block", "traces", "spans", "bytes", "level", "start .. end (unix s)"
    );
    for m in &metas {
        out.push_str(&format!(
            "{:<36}  {:>8}  {:>10}  {:>12}  {:>5}  {} .. {}\n",
            m.block_id,
            m.total_objects,
            m.total_spans,
            m.size,
            m.compaction_level,
            m.start_time / 1_000_000_000,
            m.end_time / 1_000_000_000
        ));
    }
    out.push_str(&format!("{} blocks\n", metas.len()));
    Ok(out)
}

/// Runs a query command; returns what to print.
pub async fn query(cmd: &QueryCommand) -> Result<String, ToolError> {
    match cmd {
        QueryCommand::Trace { id, bucket } => {
            let trace_id = TraceId::parse_hex(id).map_err(|e| ToolError::Invalid(e.to_string()))?;
            let (tenant, querier) = open(bucket).await?;
            let frontend = Frontend::new(querier, Arc::new(Metrics::default()));
            let found = frontend
                .trace_by_id(&tenant, &trace_id, None)
                .await?
                .ok_or_else(|| ToolError::NotFound(trace_id.to_hex()))?;
            Ok(api::trace_v1_json(&found.batches))
        }
        QueryCommand::Search {
            query,
            limit,
            bucket,
        } => {
            let req = api::search_request(query, *limit)
                .map_err(|e| ToolError::Invalid(e.to_string()))?;
            let (tenant, querier) = open(bucket).await?;
            let results = querier.search(&tenant, &req).await?;
            Ok(api::search_response_json(&results))
        }
    }
}
