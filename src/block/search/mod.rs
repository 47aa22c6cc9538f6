//! Columnar TraceQL search over a block: which column chunks a query needs, which row
//! groups can be skipped from the footer alone, decoding one row group's projected columns,
//! and [`ColumnarTrace`], traceql's [`TraceView`](crate::traceql::TraceView) over the decoded Arrow arrays (no OTLP
//! structs, strings borrowed from the arrays until the evaluator asks for a value).
//!
//! The answers are those of [`crate::traceql::OtlpTrace`] over the traces
//! [`super::read_all_traces`] returns: an attribute is the dedicated column's value when set
//! (it comes first on read), else the first generic attribute with that key; span order,
//! roots (first span without a parent span ID) and nested sets are the stored ones.
//!
//! `projection` says which columns a query needs (and `literals` which strings a live
//! trace must contain), `prune` which row groups can be skipped
//! and how one is decoded, `hits` reads the span columns only hits report for the hit rows
//! alone, `direct` answers status and duration conditions from their columns, `columns`
//! reads the decoded Arrow arrays, `view` is the engine's view of a trace over them.

mod columns;
mod direct;
mod hits;
mod literals;
mod projection;
mod prune;
#[cfg(test)]
mod tests;
mod view;

pub use columns::ColumnarBlock;
pub use hits::{read_hit_columns, reads_hits_apart, HitColumns, HitRow};
pub use projection::SearchColumns;
pub use prune::{decode_row_group, merge_columns, Phase, RowGroupRead};
pub use view::ColumnarTrace;
