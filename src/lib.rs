//! vivace: a distributed tracing backend that speaks Grafana Tempo's API.
//!
//! See ARCHITECTURE.md for the code map and the rules on which module may know what.

pub mod api;
pub mod app;
pub mod backend;
pub mod block;
pub mod blocklist;
pub mod cli;
pub mod compactor;
pub mod config;
pub mod distributor;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod generator;
pub mod ingest;
pub mod ingester;
pub mod metrics;
pub mod model;
pub mod overrides;
pub mod querier;
pub mod receiver;
pub mod traceql;

#[cfg(test)]
mod tidy;
