//! TraceQL, Tempo's query language: lexer, parser, static checks, canonical rendering and a
//! per-span evaluator for spanset filters.
//!
//! `traceql` knows nothing of Parquet, object storage or HTTP; storage answers the questions
//! of [`SpanView`].
//!
//! ```
//! use vivace::traceql::parse;
//! let query = parse("{ span.http.status_code >= 500 && duration > 1s } | count() > 2").unwrap();
//! assert!(!query.is_metrics());
//! assert_eq!(
//!     query.to_string(),
//!     "{ span.http.status_code >= 500 && span:duration > 1s } | count() > 2"
//! );
//! ```

mod ast;
mod check;
pub mod engine;
mod error;
mod eval;
mod lexer;
pub mod metrics;
pub mod otlp;
mod parser;
mod tree;
pub mod wire;

pub use ast::*;
pub use engine::{evaluate, evaluate_view, EvalError, SpansetMatch, TraceView};
pub use error::ParseError;
pub use eval::{eval, matches, SpanView, Value, ValueRef};
pub use otlp::OtlpTrace;
pub use parser::parse;
pub use wire::WireTrace;

#[cfg(test)]
pub(crate) mod engine_tests;
#[cfg(test)]
mod tests;
