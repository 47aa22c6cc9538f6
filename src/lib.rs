//! vivace: a distributed tracing backend that speaks Grafana Tempo's API.
//!
//! See ARCHITECTURE.md for the code map and the rules on which module may know what.
//!
//! Public modules are what the binary (`src/main.rs`), the integration tests, the benches
//! and the fuzz targets use; the rest is private to the crate, so rustc reports what nothing
//! uses.

#![deny(rustdoc::broken_intra_doc_links)]

pub mod alloc;
pub mod api;
pub mod app;
pub mod backend;
pub mod block;
pub mod blocklist;
pub mod cli;
mod compactor;
pub mod config;
mod distributor;
mod frontend;
#[doc(hidden)]
pub mod fuzzing;
mod generator;
mod ingest;
pub mod ingester;
pub mod metrics;
pub mod model;
mod overrides;
pub mod querier;
mod receiver;
pub mod traceql;

#[cfg(test)]
mod tidy;
