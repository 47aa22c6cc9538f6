//! Columnar TraceQL search over a block: which column chunks a query needs, which row
//! groups can be skipped from the footer alone, decoding one row group's projected columns,
//! and [`ColumnarTrace`], traceql's [`TraceView`] over the decoded Arrow arrays (no OTLP
//! structs, strings borrowed from the arrays until the evaluator asks for a value).
//!
//! The answers are those of [`crate::traceql::OtlpTrace`] over the traces
//! [`super::read_all_traces`] returns: an attribute is the dedicated column's value when set
//! (it comes first on read), else the first generic attribute with that key; span order,
//! roots (first span without a parent span ID) and nested sets are the stored ones.

use std::cell::Cell;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use arrow_array::{
    Array, BinaryArray, BooleanArray, FixedSizeBinaryArray, Float64Array, Int32Array, Int64Array,
    ListArray, StringArray, StructArray, UInt32Array, UInt64Array,
};
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;
use prost::Message;

use super::reader::{
    absolute_span_starts, chunk_range, coalesce, guarded, reader_options, span_starts_relative,
    SparseChunk,
};
use super::schema::{parquet_schema, paths, value_type};
use super::{BlockError, Dedicated, DedicatedType, DEDICATED_RESOURCE, DEDICATED_SPAN};
use crate::model::{any_value, AnyValue, NestedSet};
use crate::traceql::{
    Aggregate, FieldExpr, Intrinsic, Pipeline, Query, ScalarExpr, Scope, SpanKind, SpanView,
    SpansetExpr, SpansetOp, Stage, Static, Status, TraceView, Value, ValueRef,
};

// ---------------------------------------------------------------------------------------------
// Projection

/// The columns a query reads, and conditions every matching trace must meet.
#[derive(Debug, Clone)]
pub struct SearchColumns {
    /// Parquet leaf column indices, ascending: what filtering reads.
    leaves: Vec<usize>,
    /// Leaf columns only hits need (IDs, names, durations, service stats): read for a row
    /// group only when it has hits. Disjoint from `leaves`.
    late: Vec<usize>,
    /// `(dedicated resource column path, value)`: a matching trace has a resource whose
    /// column holds the value (the query's first stage requires `resource.x = "value"`).
    required: Vec<(String, String)>,
    /// A condition on single spans some spans of a matching trace must meet.
    precheck: Pre,
    /// Generic attribute lists read only to look up these names: left undecoded in a row
    /// group whose key dictionary holds none of them (see [`dictionary_lacks`]).
    generic: Vec<GenericAttrs>,
}

#[derive(Debug, Clone)]
struct GenericAttrs {
    /// Every leaf of the list, ascending.
    leaves: Vec<usize>,
    /// The `key` leaf.
    key: usize,
    names: Vec<String>,
}

/// A necessary condition for a trace to match, checked span by span on the columns before
/// the engine runs: `Any(e)` holds when some span satisfies the filter expression `e`.
#[derive(Debug, Clone, Default)]
enum Pre {
    /// No constraint known.
    #[default]
    True,
    /// Some span satisfies the expression (`None`: some span exists).
    Any(Option<FieldExpr>),
    All(Vec<Pre>),
    AnyOf(Vec<Pre>),
}

/// Whether a single span, without its trace (no parent, children, nested set or
/// trace-level intrinsics), answers `e` as it would inside its trace.
fn span_local(e: &FieldExpr) -> bool {
    use Intrinsic as I;
    match e {
        FieldExpr::Static(_) => true,
        FieldExpr::Attribute(a) => !a.parent,
        FieldExpr::Intrinsic(i) => matches!(
            i,
            I::Duration
                | I::Name
                | I::Status
                | I::StatusMessage
                | I::Kind
                | I::SpanId
                | I::Parent
                | I::EventName
                | I::EventTimeSinceStart
                | I::LinkTraceId
                | I::LinkSpanId
                | I::InstrumentationName
                | I::InstrumentationVersion
        ),
        FieldExpr::Logic { lhs, rhs, .. }
        | FieldExpr::Compare { lhs, rhs, .. }
        | FieldExpr::Arith { lhs, rhs, .. } => span_local(lhs) && span_local(rhs),
        FieldExpr::Regex { lhs, .. } | FieldExpr::Not(lhs) | FieldExpr::Neg(lhs) => span_local(lhs),
    }
}

fn pre_spanset(e: &SpansetExpr) -> Pre {
    match e {
        SpansetExpr::Filter(f) => match &f.expr {
            None => Pre::Any(None),
            Some(e) if span_local(e) => Pre::Any(Some(e.clone())),
            Some(_) => Pre::True,
        },
        SpansetExpr::Binary { op, lhs, rhs } => {
            use SpansetOp as O;
            match op {
                O::Or => Pre::AnyOf(vec![pre_spanset(lhs), pre_spanset(rhs)]),
                // The negated forms keep right-hand spans even when the left matched none.
                O::NotChild | O::NotParent | O::NotDescendant | O::NotAncestor | O::NotSibling => {
                    pre_spanset(rhs)
                }
                _ => Pre::All(vec![pre_spanset(lhs), pre_spanset(rhs)]),
            }
        }
        SpansetExpr::Pipeline(p) => pre_pipeline(p),
    }
}

fn pre_pipeline(p: &Pipeline) -> Pre {
    // A trace whose first stage keeps nothing never reaches the later ones.
    match p.stages.first() {
        Some(Stage::Spanset(e)) => pre_spanset(e),
        _ => Pre::True,
    }
}

#[derive(Default)]
struct Needs {
    span_attrs: bool,
    res_attrs: bool,
    /// Attribute names looked up in the span and resource generic lists.
    span_names: Vec<String>,
    res_names: Vec<String>,
    scope_attrs: bool,
    span_ded: Vec<&'static str>,
    res_ded: Vec<&'static str>,
    scope_fields: bool,
    status: bool,
    kind: bool,
    span_trace_id: bool,
    events: bool,
    links: bool,
    name: bool,
    span_id: bool,
    parent_span_id: bool,
    duration: bool,
    root: bool,
    /// The span tree (nested sets): structural operators, `parent.` attributes and the
    /// intrinsics derived from the tree.
    tree: bool,
}

impl Needs {
    fn attribute(&mut self, scope: Scope, name: &str) {
        let ded = |spec: &[Dedicated], out: &mut Vec<&'static str>| {
            for (key, col, _) in spec {
                if *key == name && !out.contains(col) {
                    out.push(col);
                }
            }
        };
        match scope {
            Scope::Span => {
                self.span_attrs = true;
                if !self.span_names.iter().any(|n| n == name) {
                    self.span_names.push(name.to_owned());
                }
                ded(&DEDICATED_SPAN, &mut self.span_ded);
            }
            Scope::Resource => {
                self.res_attrs = true;
                if !self.res_names.iter().any(|n| n == name) {
                    self.res_names.push(name.to_owned());
                }
                ded(&DEDICATED_RESOURCE, &mut self.res_ded);
            }
            Scope::Unscoped => {
                self.attribute(Scope::Span, name);
                self.attribute(Scope::Resource, name);
            }
            Scope::Instrumentation => self.scope_attrs = true,
            Scope::Event => self.events = true,
            Scope::Link => self.links = true,
        }
    }

    fn intrinsic(&mut self, i: Intrinsic) {
        use Intrinsic as I;
        match i {
            I::Status | I::StatusMessage => self.status = true,
            I::Kind => self.kind = true,
            I::TraceId => self.span_trace_id = true,
            I::EventName | I::EventTimeSinceStart => self.events = true,
            I::LinkTraceId | I::LinkSpanId => self.links = true,
            I::InstrumentationName | I::InstrumentationVersion => self.scope_fields = true,
            I::Name => self.name = true,
            I::SpanId => self.span_id = true,
            // A left-out parent span ID is the parent span's span_id.
            I::ParentId => {
                self.parent_span_id = true;
                self.span_id = true;
                self.tree = true;
            }
            I::Parent => self.parent_span_id = true,
            I::Duration => self.duration = true,
            I::TraceRootName | I::TraceRootService => self.root = true,
            I::ChildCount | I::NestedSetLeft | I::NestedSetRight | I::NestedSetParent => {
                self.tree = true
            }
            // Always read while filtering: trace times.
            I::TraceDuration => {}
        }
    }

    fn field(&mut self, e: &FieldExpr) {
        match e {
            FieldExpr::Static(_) => {}
            FieldExpr::Attribute(a) => {
                self.tree |= a.parent;
                self.attribute(a.scope, &a.name)
            }
            FieldExpr::Intrinsic(i) => self.intrinsic(*i),
            FieldExpr::Logic { lhs, rhs, .. }
            | FieldExpr::Compare { lhs, rhs, .. }
            | FieldExpr::Arith { lhs, rhs, .. } => {
                self.field(lhs);
                self.field(rhs);
            }
            FieldExpr::Regex { lhs, .. } | FieldExpr::Not(lhs) | FieldExpr::Neg(lhs) => {
                self.field(lhs)
            }
        }
    }

    fn aggregate(&mut self, a: &Aggregate) {
        match a {
            Aggregate::Count => {}
            Aggregate::Avg(f) | Aggregate::Min(f) | Aggregate::Max(f) | Aggregate::Sum(f) => {
                self.field(f)
            }
        }
    }

    fn scalar(&mut self, e: &ScalarExpr) {
        match e {
            ScalarExpr::Static(_) => {}
            ScalarExpr::Aggregate(a) => self.aggregate(a),
            ScalarExpr::Arith { lhs, rhs, .. } => {
                self.scalar(lhs);
                self.scalar(rhs);
            }
            ScalarExpr::Pipeline {
                pipeline,
                aggregate,
            } => {
                self.pipeline(pipeline);
                self.aggregate(aggregate);
            }
        }
    }

    fn spanset(&mut self, e: &SpansetExpr) {
        match e {
            SpansetExpr::Filter(f) => {
                if let Some(e) = &f.expr {
                    self.field(e);
                }
            }
            SpansetExpr::Binary { op, lhs, rhs } => {
                self.tree |= !matches!(op, SpansetOp::And | SpansetOp::Or);
                self.spanset(lhs);
                self.spanset(rhs);
            }
            SpansetExpr::Pipeline(p) => self.pipeline(p),
        }
    }

    fn pipeline(&mut self, p: &Pipeline) {
        for stage in &p.stages {
            match stage {
                Stage::Spanset(e) => self.spanset(e),
                Stage::ScalarFilter(f) => {
                    self.scalar(&f.lhs);
                    self.scalar(&f.rhs);
                }
                Stage::GroupBy(f) => self.field(f),
                Stage::Select(fs) => fs.iter().for_each(|f| self.field(f)),
                Stage::Coalesce => {}
            }
        }
    }
}

/// `resource.<dedicated string attribute> = "v"` conditions a span must meet for `e` to
/// hold: the conjuncts of a filter expression.
fn required_in_field(e: &FieldExpr, out: &mut Vec<(String, String)>) {
    match e {
        FieldExpr::Logic {
            op: crate::traceql::LogicOp::And,
            lhs,
            rhs,
        } => {
            required_in_field(lhs, out);
            required_in_field(rhs, out);
        }
        FieldExpr::Compare {
            op: crate::traceql::CompareOp::Eq,
            lhs,
            rhs,
        } => {
            let (attr, value) = match (&**lhs, &**rhs) {
                (FieldExpr::Attribute(a), FieldExpr::Static(Static::String(v)))
                | (FieldExpr::Static(Static::String(v)), FieldExpr::Attribute(a)) => (a, v),
                _ => return,
            };
            if attr.parent || attr.scope != Scope::Resource {
                return;
            }
            for (key, col, ty) in &DEDICATED_RESOURCE {
                if *key == attr.name && *ty == DedicatedType::String {
                    out.push((format!("{}{col}", paths::RESOURCE), value.clone()));
                }
            }
        }
        _ => {}
    }
}

/// Conditions some span of a trace must meet for the spanset expression to match it.
fn required_in_spanset(e: &SpansetExpr, out: &mut Vec<(String, String)>) {
    match e {
        SpansetExpr::Filter(f) => {
            if let Some(e) = &f.expr {
                required_in_field(e, out);
            }
        }
        SpansetExpr::Binary { op, lhs, rhs } => {
            use SpansetOp as O;
            match op {
                O::Or => {}
                // The negated forms keep right-hand spans even when the left matched none.
                O::NotChild | O::NotParent | O::NotDescendant | O::NotAncestor | O::NotSibling => {
                    required_in_spanset(rhs, out)
                }
                _ => {
                    required_in_spanset(lhs, out);
                    required_in_spanset(rhs, out);
                }
            }
        }
        SpansetExpr::Pipeline(p) => required_in_pipeline(p, out),
    }
}

fn required_in_pipeline(p: &Pipeline, out: &mut Vec<(String, String)>) {
    // A trace whose first stage keeps nothing never reaches the later ones.
    if let Some(Stage::Spanset(e)) = p.stages.first() {
        required_in_spanset(e, out);
    }
}

/// Parquet leaf indices (ascending, distinct) of dotted paths; a path ending in `.` takes
/// every leaf below it.
fn leaf_indices(wanted: &[String]) -> Result<Vec<usize>, BlockError> {
    let descr = parquet_schema()?;
    let mut leaves = Vec::new();
    for w in wanted {
        let before = leaves.len();
        for (i, col) in descr.columns().iter().enumerate() {
            let p = col.path().string();
            if p == *w || (w.ends_with('.') && p.starts_with(w.as_str())) {
                leaves.push(i);
            }
        }
        if leaves.len() == before {
            return Err(BlockError::Schema(format!("no column matches {w}")));
        }
    }
    leaves.sort_unstable();
    leaves.dedup();
    Ok(leaves)
}

impl SearchColumns {
    /// The columns needed to evaluate `query` and report its hits.
    pub fn for_query(query: &Query) -> Result<Self, BlockError> {
        let mut needs = Needs::default();
        needs.pipeline(&query.pipeline);
        let span = |leaf: &str| format!("{}{leaf}", paths::SPAN);
        let service = format!("{}service_name", paths::RESOURCE);
        let mut wanted: Vec<String> = vec![
            paths::START_TIME.into(),
            paths::END_TIME.into(),
            span("start_time_unix_nano"),
        ];
        let report: Vec<String> = vec![
            paths::TRACE_ID.into(),
            "service_stats.".into(),
            span("span_id"),
            span("parent_span_id"),
            span("name"),
            span("duration_nano"),
            service.clone(),
        ];
        // Three int columns per span that only tree questions read.
        if needs.tree {
            wanted.push(span("nested_set_left"));
            wanted.push(span("nested_set_right"));
            wanted.push(span("parent_id"));
        }
        if needs.name || needs.root {
            wanted.push(span("name"));
        }
        if needs.parent_span_id || needs.root {
            wanted.push(span("parent_span_id"));
        }
        if needs.root {
            wanted.push(service);
        }
        if needs.span_id {
            wanted.push(span("span_id"));
        }
        if needs.duration {
            wanted.push(span("duration_nano"));
        }
        if needs.span_attrs {
            wanted.push(format!("{}{}", paths::SPAN, paths::ATTRS));
        }
        wanted.extend(needs.span_ded.iter().map(|c| span(c)));
        if needs.res_attrs {
            wanted.push(format!("{}{}", paths::RESOURCE, paths::ATTRS));
        }
        wanted.extend(
            needs
                .res_ded
                .iter()
                .map(|c| format!("{}{c}", paths::RESOURCE)),
        );
        if needs.scope_attrs {
            wanted.push(format!("{}{}", paths::SCOPE, paths::ATTRS));
        }
        if needs.scope_fields {
            wanted.push(format!("{}name", paths::SCOPE));
            wanted.push(format!("{}version", paths::SCOPE));
        }
        if needs.status {
            wanted.push(span("status."));
        }
        if needs.kind {
            wanted.push(span("kind"));
        }
        if needs.span_trace_id {
            wanted.push(span("trace_id"));
            wanted.push(paths::TRACE_ID.into());
        }
        if needs.events {
            wanted.push(span("events."));
        }
        if needs.links {
            wanted.push(span("links."));
        }
        let leaves = leaf_indices(&wanted)?;
        let mut generic = Vec::new();
        for (on, prefix, names) in [
            (needs.span_attrs, paths::SPAN, &needs.span_names),
            (needs.res_attrs, paths::RESOURCE, &needs.res_names),
        ] {
            if on && !names.is_empty() {
                let list = format!("{prefix}{}", paths::ATTRS);
                generic.push(GenericAttrs {
                    leaves: leaf_indices(std::slice::from_ref(&list))?,
                    key: leaf_indices(&[format!("{list}key")])?[0],
                    names: names.clone(),
                });
            }
        }
        let mut late = leaf_indices(&report)?;
        late.retain(|i| leaves.binary_search(i).is_err());
        let mut required = Vec::new();
        let mut precheck = Pre::True;
        if !query.is_metrics() {
            required_in_pipeline(&query.pipeline, &mut required);
            precheck = pre_pipeline(&query.pipeline);
        }
        Ok(Self {
            leaves,
            late,
            required,
            precheck,
            generic,
        })
    }

    /// The row groups of a block that may hold matching traces and the byte ranges of
    /// their projected column chunks. `overlaps(min start, max end)` says whether traces
    /// within those bounds can fall in the requested time range (chunk statistics of the
    /// trace start and end columns); row groups whose dedicated-column statistics exclude a
    /// required value are skipped too. No I/O.
    pub fn plan(
        &self,
        md: &ParquetMetaData,
        overlaps: impl Fn(u64, u64) -> bool,
    ) -> Result<Vec<RowGroupRead>, BlockError> {
        let mut out = Vec::new();
        for (rg, rgm) in md.row_groups().iter().enumerate() {
            let rows = usize::try_from(rgm.num_rows()).unwrap_or(0);
            if rows == 0 {
                continue;
            }
            let col = |path: &str| {
                rgm.columns()
                    .iter()
                    .find(|c| c.column_path().string() == path)
            };
            let int_stat = |path: &str, max: bool| match col(path)?.statistics()? {
                Statistics::Int64(s) => {
                    let v = if max { s.max_opt() } else { s.min_opt() };
                    v.map(|v| *v as u64)
                }
                _ => None,
            };
            if let (Some(min_start), Some(max_end)) = (
                int_stat(paths::START_TIME, false),
                int_stat(paths::END_TIME, true),
            ) {
                if !overlaps(min_start, max_end) {
                    continue;
                }
            }
            let excluded = self.required.iter().any(|(path, value)| {
                let Some(Statistics::ByteArray(s)) = col(path).and_then(|c| c.statistics()) else {
                    return false;
                };
                if s.null_count_opt() == Some(rgm.num_rows() as u64)
                    && s.min_opt().is_none()
                    && s.max_opt().is_none()
                {
                    // Only nulls: no resource has the value.
                    return true;
                }
                match (s.min_opt(), s.max_opt()) {
                    (Some(min), Some(max)) => {
                        let v = value.as_bytes();
                        v < min.data() || v > max.data()
                    }
                    _ => false,
                }
            });
            if excluded || !pre_possible(&self.precheck, rgm) {
                continue;
            }
            let chunks = |leaves: &[usize]| -> Result<Vec<Range<u64>>, BlockError> {
                let ranges = leaves
                    .iter()
                    .map(|&ci| chunk_range(rgm.column(ci), rg))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(coalesce(ranges, 0))
            };
            out.push(RowGroupRead {
                rg,
                rows,
                ranges: chunks(&self.leaves)?,
                late_ranges: chunks(&self.late)?,
            });
        }
        Ok(out)
    }
}

/// Whether some span of the row group may meet `pre`, judging by column chunk statistics
/// of span durations and status codes. True when unsure.
fn pre_possible(pre: &Pre, rgm: &parquet::file::metadata::RowGroupMetaData) -> bool {
    match pre {
        Pre::True | Pre::Any(None) => true,
        Pre::All(ps) => ps.iter().all(|p| pre_possible(p, rgm)),
        Pre::AnyOf(ps) => ps.iter().any(|p| pre_possible(p, rgm)),
        Pre::Any(Some(e)) => expr_possible(e, rgm),
    }
}

/// See [`pre_possible`]: can a span of the row group satisfy `e`?
fn expr_possible(e: &FieldExpr, rgm: &parquet::file::metadata::RowGroupMetaData) -> bool {
    use crate::traceql::{CompareOp as C, LogicOp};
    let stats = |leaf: &str| {
        let path = format!("{}{leaf}", paths::SPAN);
        rgm.columns()
            .iter()
            .find(|c| c.column_path().string() == path)
            .and_then(|c| c.statistics())
    };
    match e {
        FieldExpr::Logic { op, lhs, rhs } => match op {
            LogicOp::And => expr_possible(lhs, rgm) && expr_possible(rhs, rgm),
            LogicOp::Or => expr_possible(lhs, rgm) || expr_possible(rhs, rgm),
        },
        FieldExpr::Compare { op, lhs, rhs } => {
            // Intrinsic on the left; `500ms < duration` is `duration > 500ms`.
            let (op, field, value) = match (&**lhs, &**rhs) {
                (FieldExpr::Intrinsic(i), FieldExpr::Static(v)) => (*op, *i, v),
                (FieldExpr::Static(v), FieldExpr::Intrinsic(i)) => {
                    let flipped = match op {
                        C::Lt => C::Gt,
                        C::Lte => C::Gte,
                        C::Gt => C::Lt,
                        C::Gte => C::Lte,
                        other => *other,
                    };
                    (flipped, *i, v)
                }
                _ => return true,
            };
            match (field, value) {
                // A span's duration is at most its stored duration_nano (the end is
                // computed from it, saturating), so only lower bounds prune.
                (Intrinsic::Duration, Static::Duration(x)) => {
                    let Some(Statistics::Int64(s)) = stats("duration_nano") else {
                        return true;
                    };
                    let Some(&max) = s.max_opt() else { return true };
                    // Unsigned values stored in int64.
                    let max = max as u64;
                    let Ok(x) = u64::try_from(*x) else {
                        return true;
                    };
                    match op {
                        C::Gt => max > x,
                        C::Gte | C::Eq => max >= x,
                        _ => true,
                    }
                }
                // Unset is also a missing status: only ok and error prune.
                (Intrinsic::Status, Static::Status(st)) if op == C::Eq => {
                    let code = match st {
                        Status::Ok => 1,
                        Status::Error => 2,
                        Status::Unset => return true,
                    };
                    match stats("status.code") {
                        Some(Statistics::Int32(s)) => match (s.min_opt(), s.max_opt()) {
                            (Some(&min), Some(&max)) => min <= code && code <= max,
                            // No non-null code: every span's status is unset.
                            (None, None) => s.null_count_opt().is_none(),
                            _ => true,
                        },
                        _ => true,
                    }
                }
                _ => true,
            }
        }
        _ => true,
    }
}

/// One row group to read: fetch `ranges` and call [`decode_row_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowGroupRead {
    pub rg: usize,
    pub rows: usize,
    /// Sorted, disjoint byte ranges of data.parquet: the column chunks filtering reads.
    pub ranges: Vec<Range<u64>>,
    /// The column chunks only hits need ([`Phase::Report`]).
    pub late_ranges: Vec<Range<u64>>,
}

impl RowGroupRead {
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    pub fn late_bytes(&self) -> u64 {
        self.late_ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// The ranges of a phase.
    pub fn ranges(&self, phase: Phase) -> &[Range<u64>] {
        match phase {
            Phase::Filter => &self.ranges,
            Phase::Report => &self.late_ranges,
        }
    }
}

/// Which columns of a row group to decode: what filtering needs, or what only hits need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Filter,
    Report,
}

/// Decodes the columns of one phase of one row group; `fetched[i]` holds
/// `read.ranges(phase)[i]`. A [`Phase::Report`] decode is combined with the filter decode
/// by [`merge_columns`].
pub fn decode_row_group(
    md: Arc<ParquetMetaData>,
    columns: &SearchColumns,
    read: &RowGroupRead,
    phase: Phase,
    fetched: Vec<Bytes>,
    file_len: u64,
) -> Result<StructArray, BlockError> {
    let ranges = read.ranges(phase);
    let leaves = match phase {
        Phase::Filter => &columns.leaves,
        Phase::Report => &columns.late,
    };
    if fetched.len() != ranges.len() {
        return Err(BlockError::Corrupt(format!(
            "{} ranges fetched for {} planned",
            fetched.len(),
            ranges.len()
        )));
    }
    let mut parts = Vec::with_capacity(fetched.len());
    for (r, b) in ranges.iter().zip(fetched) {
        if b.len() as u64 != r.end - r.start {
            return Err(BlockError::Corrupt(format!(
                "fetched {} bytes for range {r:?}",
                b.len()
            )));
        }
        parts.push((r.start, b));
    }
    let chunk = SparseChunk::from_parts(parts, file_len)?;
    guarded(|| {
        // Generic attribute lists that cannot hold a name the query looks up are not
        // decoded: for dedicated attributes they usually hold none.
        let mut skip: Vec<usize> = Vec::new();
        if phase == Phase::Filter {
            for g in &columns.generic {
                if dictionary_lacks(&md, read.rg, g.key, &chunk, &g.names)? {
                    skip.extend(&g.leaves);
                }
            }
        }
        let meta = ArrowReaderMetadata::try_new(md.clone(), reader_options(&md)?)?;
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(chunk, meta);
        let mask = ProjectionMask::leaves(
            builder.parquet_schema(),
            leaves.iter().copied().filter(|l| !skip.contains(l)),
        );
        let reader = builder
            .with_projection(mask)
            .with_row_groups(vec![read.rg])
            .with_batch_size(read.rows.max(1))
            .build()?;
        let mut batches = Vec::new();
        for b in reader {
            batches.push(b?);
        }
        let batch = match batches.len() {
            0 => return Err(BlockError::Corrupt("row group decoded to nothing".into())),
            1 => batches.pop().expect("one batch"),
            _ => arrow::compute::concat_batches(&batches[0].schema(), &batches)?,
        };
        let root = StructArray::from(batch);
        if phase == Phase::Filter && span_starts_relative(&md) {
            return absolute_span_starts(&root);
        }
        Ok(root)
    })
}

/// Whether a string column chunk provably holds none of `names`: every data page is
/// dictionary-encoded and no dictionary entry equals a name. False when unsure.
fn dictionary_lacks(
    md: &ParquetMetaData,
    rg: usize,
    leaf: usize,
    chunk: &SparseChunk,
    names: &[String],
) -> Result<bool, BlockError> {
    use parquet::basic::{Encoding, PageType};
    use parquet::column::page::{Page, PageReader};
    use parquet::file::serialized_reader::SerializedPageReader;
    let rgm = md.row_group(rg);
    let col = rgm.column(leaf);
    if col.dictionary_page_offset().is_none() {
        return Ok(false);
    }
    let is_dict = |e: Encoding| matches!(e, Encoding::PLAIN_DICTIONARY | Encoding::RLE_DICTIONARY);
    let all_dict = match (col.page_encoding_stats_mask(), col.page_encoding_stats()) {
        (Some(mask), _) => mask.encodings().all(is_dict),
        (None, Some(stats)) => stats
            .iter()
            .filter(|s| s.page_type != PageType::DICTIONARY_PAGE)
            .all(|s| is_dict(s.encoding)),
        (None, None) => false,
    };
    if !all_dict {
        return Ok(false);
    }
    let rows = usize::try_from(rgm.num_rows()).unwrap_or(0);
    let mut pages = SerializedPageReader::new(Arc::new(chunk.clone()), col, rows, None)?;
    let Some(Page::DictionaryPage {
        buf,
        num_values,
        encoding: Encoding::PLAIN | Encoding::PLAIN_DICTIONARY,
        ..
    }) = pages.get_next_page()?
    else {
        return Ok(false);
    };
    // PLAIN byte arrays: a little-endian u32 length, then the bytes.
    let mut rest: &[u8] = &buf;
    for _ in 0..num_values {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Ok(false);
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Ok(false);
        }
        let (value, tail) = tail.split_at(len);
        if names.iter().any(|n| n.as_bytes() == value) {
            return Ok(false);
        }
        rest = tail;
    }
    Ok(true)
}

/// Combines two decodes of the same rows of a row group (different columns) into one
/// array: struct fields are united, lists of structs keep the first side's offsets (both
/// sides have the same, being the same rows) with their elements merged.
pub fn merge_columns(a: &StructArray, b: &StructArray) -> Result<StructArray, BlockError> {
    use arrow_array::ArrayRef;
    use arrow_schema::{DataType, Field, Fields};
    fn merge_array(x: &ArrayRef, y: &ArrayRef) -> Result<ArrayRef, BlockError> {
        match (x.data_type(), y.data_type()) {
            (DataType::Struct(_), DataType::Struct(_)) => {
                let (x, y) = (
                    x.as_any().downcast_ref::<StructArray>(),
                    y.as_any().downcast_ref::<StructArray>(),
                );
                match (x, y) {
                    (Some(x), Some(y)) => Ok(Arc::new(merge_columns(x, y)?)),
                    _ => Err(corrupt("struct column has the wrong type")),
                }
            }
            (DataType::List(_), DataType::List(_)) => {
                let (Some(xl), Some(yl)) = (
                    x.as_any().downcast_ref::<ListArray>(),
                    y.as_any().downcast_ref::<ListArray>(),
                ) else {
                    return Err(corrupt("list column has the wrong type"));
                };
                if xl.value_offsets() != yl.value_offsets() {
                    return Err(corrupt("decodes of one row group disagree"));
                }
                let values = merge_array(xl.values(), yl.values())?;
                let field = Arc::new(Field::new("element", values.data_type().clone(), false));
                Ok(Arc::new(ListArray::try_new(
                    field,
                    xl.offsets().clone(),
                    values,
                    xl.nulls().cloned(),
                )?))
            }
            _ => Ok(x.clone()),
        }
    }
    if a.len() != b.len() {
        return Err(corrupt("decodes of one row group disagree on rows"));
    }
    let mut fields: Vec<Arc<Field>> = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (f, x) in a.fields().iter().zip(a.columns()) {
        let merged = match b.column_by_name(f.name()) {
            Some(y) => merge_array(x, y)?,
            None => x.clone(),
        };
        fields.push(Arc::new(Field::new(
            f.name(),
            merged.data_type().clone(),
            f.is_nullable(),
        )));
        arrays.push(merged);
    }
    for (f, y) in b.fields().iter().zip(b.columns()) {
        if a.column_by_name(f.name()).is_none() {
            fields.push(f.clone());
            arrays.push(y.clone());
        }
    }
    let nulls = a.nulls().or(b.nulls()).cloned();
    Ok(StructArray::try_new(Fields::from(fields), arrays, nulls)?)
}

// ---------------------------------------------------------------------------------------------
// Columns of a decoded row group

fn corrupt(msg: impl Into<String>) -> BlockError {
    BlockError::Corrupt(msg.into())
}

fn get<'a, T: Array + 'static>(s: &'a StructArray, name: &str) -> Result<&'a T, BlockError> {
    opt(s, name)?.ok_or_else(|| corrupt(format!("missing column {name}")))
}

/// A column that may not be projected.
fn opt<'a, T: Array + 'static>(
    s: &'a StructArray,
    name: &str,
) -> Result<Option<&'a T>, BlockError> {
    match s.column_by_name(name) {
        None => Ok(None),
        Some(c) => c
            .as_any()
            .downcast_ref::<T>()
            .map(Some)
            .ok_or_else(|| corrupt(format!("column {name} has the wrong type"))),
    }
}

/// A list column's offsets and element struct.
fn list<'a>(s: &'a StructArray, name: &str) -> Result<(&'a [i32], &'a StructArray), BlockError> {
    let l = get::<ListArray>(s, name)?;
    let values = l
        .values()
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| corrupt(format!("column {name} is not a list of structs")))?;
    let offsets = l.value_offsets();
    // Every offset must index the values: checked once so lookups can index freely.
    let len = values.len();
    if offsets.windows(2).any(|w| w[0] < 0 || w[0] > w[1])
        || offsets.last().is_some_and(|&e| e as usize > len)
    {
        return Err(corrupt(format!("bad offsets in {name}")));
    }
    Ok((offsets, values))
}

fn opt_list<'a>(
    s: &'a StructArray,
    name: &str,
) -> Result<Option<(&'a [i32], &'a StructArray)>, BlockError> {
    if s.column_by_name(name).is_none() {
        return Ok(None);
    }
    list(s, name).map(Some)
}

fn range(offsets: &[i32], i: usize) -> Range<usize> {
    offsets[i] as usize..offsets[i + 1] as usize
}

struct Attrs<'a> {
    offsets: &'a [i32],
    key: &'a StringArray,
    ty: &'a Int32Array,
    str: &'a StringArray,
    int: &'a Int64Array,
    dbl: &'a Float64Array,
    bool: &'a BooleanArray,
    bytes: &'a BinaryArray,
}

impl<'a> Attrs<'a> {
    fn new(s: &'a StructArray) -> Result<Option<Self>, BlockError> {
        let Some((offsets, v)) = opt_list(s, "attrs")? else {
            return Ok(None);
        };
        Ok(Some(Self {
            offsets,
            key: get(v, "key")?,
            ty: get(v, "type")?,
            str: get(v, "str")?,
            int: get(v, "int")?,
            dbl: get(v, "dbl")?,
            bool: get(v, "bool")?,
            bytes: get(v, "bytes")?,
        }))
    }

    /// The value of the first attribute of `owner` named `name`.
    fn find(&self, owner: usize, name: &str) -> Option<Value> {
        self.find_ref(owner, name).map(owned)
    }

    fn find_ref(&self, owner: usize, name: &str) -> Option<ValueRef<'a>> {
        let j = range(self.offsets, owner).find(|&j| self.key.value(j) == name)?;
        self.value(j)
    }

    fn value(&self, j: usize) -> Option<ValueRef<'a>> {
        let ty = if self.ty.is_valid(j) {
            self.ty.value(j)
        } else {
            value_type::implied(
                self.str.is_valid(j),
                self.int.is_valid(j),
                self.dbl.is_valid(j),
                self.bool.is_valid(j),
                self.bytes.is_valid(j),
            )?
        };
        match ty {
            value_type::STRING if self.str.is_valid(j) => Some(ValueRef::Str(self.str.value(j))),
            value_type::BOOL if self.bool.is_valid(j) => {
                Some(ValueRef::Owned(Value::Bool(self.bool.value(j))))
            }
            value_type::INT if self.int.is_valid(j) => {
                Some(ValueRef::Owned(Value::Int(self.int.value(j))))
            }
            value_type::DOUBLE if self.dbl.is_valid(j) => {
                Some(ValueRef::Owned(Value::Float(self.dbl.value(j))))
            }
            value_type::ARRAY | value_type::KVLIST | value_type::ENCODED
                if self.bytes.is_valid(j) =>
            {
                to_value(&AnyValue::decode(self.bytes.value(j)).ok()?).map(ValueRef::Owned)
            }
            _ => None,
        }
    }
}

fn owned(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Str(s) => Value::String(s.to_owned()),
        ValueRef::Owned(v) => v,
    }
}

/// A typed value from an OTLP `AnyValue`, as the OTLP view converts it.
fn to_value(value: &AnyValue) -> Option<Value> {
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Value::String(s.clone()),
        any_value::Value::IntValue(v) => Value::Int(*v),
        any_value::Value::DoubleValue(v) => Value::Float(*v),
        any_value::Value::BoolValue(v) => Value::Bool(*v),
        any_value::Value::ArrayValue(array) => {
            Value::Array(array.values.iter().filter_map(to_value).collect())
        }
        any_value::Value::KvlistValue(_)
        | any_value::Value::BytesValue(_)
        | any_value::Value::StringValueStrindex(_) => return None,
    })
}

enum Ded<'a> {
    Str(&'a StringArray),
    Int(&'a Int64Array),
}

impl<'a> Ded<'a> {
    fn get(&self, i: usize) -> Option<ValueRef<'a>> {
        match *self {
            Ded::Str(a) => a.is_valid(i).then(|| ValueRef::Str(a.value(i))),
            Ded::Int(a) => a
                .is_valid(i)
                .then(|| ValueRef::Owned(Value::Int(a.value(i)))),
        }
    }
}

fn ded_cols<'a>(
    s: &'a StructArray,
    spec: &[Dedicated],
) -> Result<Vec<(&'static str, Ded<'a>)>, BlockError> {
    let mut out = Vec::new();
    for (key, col, ty) in spec {
        match ty {
            DedicatedType::String => {
                if let Some(a) = opt(s, col)? {
                    out.push((*key, Ded::Str(a)));
                }
            }
            DedicatedType::Int => {
                if let Some(a) = opt(s, col)? {
                    out.push((*key, Ded::Int(a)));
                }
            }
        }
    }
    Ok(out)
}

struct Events<'a> {
    offsets: &'a [i32],
    time: &'a Int64Array,
    name: &'a StringArray,
    attrs: Attrs<'a>,
}

struct Links<'a> {
    offsets: &'a [i32],
    trace_id: &'a BinaryArray,
    span_id: &'a BinaryArray,
    attrs: Attrs<'a>,
}

struct Stats<'a> {
    offsets: &'a [i32],
    service: &'a StringArray,
    spans: &'a UInt32Array,
    errors: &'a UInt32Array,
}

/// Typed views of the projected columns of one decoded row group.
pub struct ColumnarBlock<'a> {
    rows: usize,
    trace_id: Option<&'a FixedSizeBinaryArray>,
    start: &'a UInt64Array,
    end: &'a UInt64Array,
    stats: Option<Stats<'a>>,
    rs_offsets: &'a [i32],
    res: Option<&'a StructArray>,
    res_service: Option<&'a StringArray>,
    res_attrs: Option<Attrs<'a>>,
    res_ded: Vec<(&'static str, Ded<'a>)>,
    ss_offsets: &'a [i32],
    scope: Option<&'a StructArray>,
    scope_name: Option<&'a StringArray>,
    scope_version: Option<&'a StringArray>,
    scope_attrs: Option<Attrs<'a>>,
    span_offsets: &'a [i32],
    span_id: Option<&'a BinaryArray>,
    parent_span_id: Option<&'a BinaryArray>,
    span_trace_id: Option<&'a BinaryArray>,
    name: Option<&'a StringArray>,
    kind: Option<&'a Int32Array>,
    span_start: &'a UInt64Array,
    duration: Option<&'a UInt64Array>,
    status: Option<(&'a StructArray, &'a Int32Array, &'a StringArray)>,
    span_attrs: Option<Attrs<'a>>,
    span_ded: Vec<(&'static str, Ded<'a>)>,
    /// Nested sets (left, right, parent), when the query reads the tree.
    nested: Option<(&'a Int32Array, &'a Int32Array, &'a Int32Array)>,
    events: Option<Events<'a>>,
    links: Option<Links<'a>>,
}

impl<'a> ColumnarBlock<'a> {
    /// Views over a row group decoded by [`decode_row_group`].
    pub fn new(root: &'a StructArray) -> Result<Self, BlockError> {
        let trace_id: Option<&FixedSizeBinaryArray> = opt(root, "trace_id")?;
        if trace_id.is_some_and(|t| t.value_length() != 16) {
            return Err(corrupt("trace_id is not 16 bytes"));
        }
        let stats = match opt_list(root, "service_stats")? {
            Some((offsets, st)) => Some(Stats {
                offsets,
                service: get(st, "service")?,
                spans: get(st, "span_count")?,
                errors: get(st, "error_count")?,
            }),
            None => None,
        };
        let (rs_offsets, rs) = list(root, "resource_spans")?;
        let res: Option<&StructArray> = opt(rs, "resource")?;
        let (ss_offsets, ss) = list(rs, "scope_spans")?;
        let scope: Option<&StructArray> = opt(ss, "scope")?;
        let (span_offsets, sp) = list(ss, "spans")?;
        let status = match opt::<StructArray>(sp, "status")? {
            Some(s) => Some((s, get(s, "code")?, get(s, "message")?)),
            None => None,
        };
        let events = match opt_list(sp, "events")? {
            Some((offsets, ev)) => Some(Events {
                offsets,
                time: get(ev, "time_since_start_nano")?,
                name: get(ev, "name")?,
                attrs: Attrs::new(ev)?.ok_or_else(|| corrupt("events without attrs"))?,
            }),
            None => None,
        };
        let links = match opt_list(sp, "links")? {
            Some((offsets, lk)) => Some(Links {
                offsets,
                trace_id: get(lk, "trace_id")?,
                span_id: get(lk, "span_id")?,
                attrs: Attrs::new(lk)?.ok_or_else(|| corrupt("links without attrs"))?,
            }),
            None => None,
        };
        let rows = root.len();
        let b = Self {
            rows,
            trace_id,
            start: get(root, "start_time_unix_nano")?,
            end: get(root, "end_time_unix_nano")?,
            stats,
            rs_offsets,
            res_service: match res {
                Some(r) => opt(r, "service_name")?,
                None => None,
            },
            res_attrs: match res {
                Some(r) => Attrs::new(r)?,
                None => None,
            },
            res_ded: match res {
                Some(r) => ded_cols(r, &DEDICATED_RESOURCE)?,
                None => Vec::new(),
            },
            res,
            ss_offsets,
            scope_name: match scope {
                Some(s) => opt(s, "name")?,
                None => None,
            },
            scope_version: match scope {
                Some(s) => opt(s, "version")?,
                None => None,
            },
            scope_attrs: match scope {
                Some(s) => Attrs::new(s)?,
                None => None,
            },
            scope,
            span_offsets,
            span_id: opt(sp, "span_id")?,
            parent_span_id: opt(sp, "parent_span_id")?,
            span_trace_id: opt(sp, "trace_id")?,
            name: opt(sp, "name")?,
            kind: opt(sp, "kind")?,
            span_start: get(sp, "start_time_unix_nano")?,
            duration: opt(sp, "duration_nano")?,
            status,
            span_attrs: Attrs::new(sp)?,
            span_ded: ded_cols(sp, &DEDICATED_SPAN)?,
            nested: match (
                opt(sp, "nested_set_left")?,
                opt(sp, "nested_set_right")?,
                opt(sp, "parent_id")?,
            ) {
                (Some(l), Some(r), Some(p)) => Some((l, r, p)),
                _ => None,
            },
            events,
            links,
        };
        if b.start.len() != rows
            || b.end.len() != rows
            || b.stats
                .as_ref()
                .is_some_and(|s| s.offsets.len() != rows + 1)
            || b.rs_offsets.len() != rows + 1
        {
            return Err(corrupt("trace columns disagree on the row count"));
        }
        Ok(b)
    }

    /// Traces (rows).
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Hit columns ([`Phase::Report`]) only.
    pub fn trace_id(&self, row: usize) -> Option<[u8; 16]> {
        let mut id = [0u8; 16];
        id.copy_from_slice(self.trace_id?.value(row));
        Some(id)
    }

    /// The earliest span start (stored).
    pub fn start_unix_nano(&self, row: usize) -> u64 {
        self.start.value(row)
    }

    /// The latest span end, at least the start (stored).
    pub fn end_unix_nano(&self, row: usize) -> u64 {
        self.end.value(row)
    }

    fn spans_of(&self, row: usize) -> Range<usize> {
        let rs = range(self.rs_offsets, row);
        let ss = self.ss_offsets[rs.start] as usize..self.ss_offsets[rs.end] as usize;
        self.span_offsets[ss.start] as usize..self.span_offsets[ss.end] as usize
    }

    pub fn span_count(&self, row: usize) -> usize {
        self.spans_of(row).len()
    }

    /// `(service, span count, error count)` per service, as stored (sorted by service).
    /// Empty without the hit columns ([`Phase::Report`]).
    pub fn service_stats(&self, row: usize) -> impl Iterator<Item = (&'a str, u32, u32)> + '_ {
        self.stats.iter().flat_map(move |s| {
            range(s.offsets, row).map(|j| (s.service.value(j), s.spans.value(j), s.errors.value(j)))
        })
    }

    /// True when `resource.<col> = value` holds for some resource of the row (see
    /// [`SearchColumns`] required conditions). Unknown columns answer true.
    fn has_resource_value(&self, row: usize, key: &str, value: &str) -> bool {
        let Some(col) = self.res_ded.iter().find(|(k, _)| *k == key) else {
            return true;
        };
        let Ded::Str(a) = col.1 else { return true };
        range(self.rs_offsets, row).any(|r| a.is_valid(r) && a.value(r) == value)
    }
}

// ---------------------------------------------------------------------------------------------
// The engine's view

/// A span: its row-group-wide index and its resource and scope.
#[derive(Clone, Copy)]
struct Core<'a> {
    c: &'a ColumnarBlock<'a>,
    g: usize,
    r: usize,
    s: usize,
}

#[derive(Clone, Copy)]
struct TraceInfo<'a> {
    row: usize,
    first: Option<Core<'a>>,
    root: Option<Core<'a>>,
    duration: u64,
}

struct ColSpan<'a> {
    core: Core<'a>,
    parent: Option<Core<'a>>,
    nested: NestedSet,
    children: u32,
    /// Shared by every span of the view and set by each `load`: a copy per span made
    /// loading a trace cost more than filtering it.
    trace: Rc<Cell<TraceInfo<'a>>>,
}

/// One trace of a decoded row group as traceql's [`TraceView`]. [`ColumnarTrace::load`]
/// switches to another row and reuses the buffers.
pub struct ColumnarTrace<'a> {
    c: &'a ColumnarBlock<'a>,
    spans: Vec<ColSpan<'a>>,
    by_left: Vec<u32>,
    info: TraceInfo<'a>,
    shared: Rc<Cell<TraceInfo<'a>>>,
    /// Row-group-wide index of the row's first span: span `i` of the row is `first_g + i`.
    first_g: usize,
    /// Spans in the row.
    n: usize,
}

const NONE: u32 = u32::MAX;

fn nanos(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn hex_id(id: &[u8]) -> Option<Value> {
    (!id.is_empty()).then(|| Value::String(hex::encode(id)))
}

fn gather(values: impl Iterator<Item = Value>) -> Option<Value> {
    let mut it = values;
    let first = it.next()?;
    match it.next() {
        None => Some(first),
        Some(second) => {
            let mut all = vec![first, second];
            all.extend(it);
            Some(Value::Array(all))
        }
    }
}

impl<'a> ColumnarTrace<'a> {
    pub fn new(c: &'a ColumnarBlock<'a>) -> Self {
        let info = TraceInfo {
            row: 0,
            first: None,
            root: None,
            duration: 0,
        };
        Self {
            c,
            spans: Vec::new(),
            by_left: Vec::new(),
            info,
            shared: Rc::new(Cell::new(info)),
            first_g: 0,
            n: 0,
        }
    }

    /// Makes the hit accessors ([`ColumnarTrace::span_id`], ..., root names) show trace
    /// `row` without building the engine's view of its spans: reporting needs no more.
    pub fn locate(&mut self, row: usize) -> Result<(), BlockError> {
        self.spans.clear();
        self.info = self.trace_info(row)?;
        Ok(())
    }

    /// Checks the row's offsets and finds its first and root spans.
    fn trace_info(&mut self, row: usize) -> Result<TraceInfo<'a>, BlockError> {
        let c = self.c;
        if row >= c.rows {
            return Err(corrupt("row out of range"));
        }
        let spans = c.spans_of(row);
        if spans.end > c.span_start.len() || c.rs_offsets[row + 1] as usize > c.ss_offsets.len() {
            return Err(corrupt("span offsets out of range"));
        }
        self.first_g = spans.start;
        self.n = spans.len();
        let mut first = None;
        let mut root = None;
        'find: for r in range(c.rs_offsets, row) {
            for s in range(c.ss_offsets, r) {
                for g in range(c.span_offsets, s) {
                    let core = Core { c, g, r, s };
                    first = first.or(Some(core));
                    if c.parent_span_id
                        .is_some_and(|p| p.is_valid(g) && p.value(g).is_empty())
                    {
                        root = Some(core);
                        break 'find;
                    }
                }
            }
        }
        let (start, end) = (c.start.value(row), c.end.value(row));
        Ok(TraceInfo {
            row,
            first,
            root,
            duration: end.saturating_sub(start),
        })
    }

    /// Does the row pass the query's required resource conditions (a cheap column check
    /// before evaluation)? See [`SearchColumns::for_query`].
    pub fn may_match(&self, columns: &SearchColumns, row: usize) -> bool {
        columns.required.iter().all(|(path, value)| {
            let col = path.strip_prefix(paths::RESOURCE).unwrap_or(path);
            match DEDICATED_RESOURCE.iter().find(|(_, c, _)| *c == col) {
                Some((key, _, _)) => self.c.has_resource_value(row, key, value),
                None => true,
            }
        })
    }

    /// Does some span of the row meet the query's span-level precondition (see [`Pre`])?
    /// Evaluates the first stage's filters span by span, without building the trace.
    pub fn spans_may_match(&self, columns: &SearchColumns, row: usize) -> bool {
        self.pre(&columns.precheck, row)
    }

    fn pre(&self, pre: &Pre, row: usize) -> bool {
        let c = self.c;
        match pre {
            Pre::True => true,
            Pre::All(ps) => ps.iter().all(|p| self.pre(p, row)),
            Pre::AnyOf(ps) => ps.iter().any(|p| self.pre(p, row)),
            Pre::Any(expr) => range(c.rs_offsets, row).any(|r| {
                range(c.ss_offsets, r).any(|s| {
                    range(c.span_offsets, s).any(|g| match expr {
                        None => true,
                        Some(e) => crate::traceql::matches(e, &Core { c, g, r, s }),
                    })
                })
            }),
        }
    }

    /// Makes this view show trace `row`.
    pub fn load(&mut self, row: usize) -> Result<(), BlockError> {
        let c = self.c;
        self.spans.clear();
        // The trace-level fields first, so each span copies them once.
        self.info = self.trace_info(row)?;
        let (first_g, n) = (self.first_g, self.n);
        self.shared.set(self.info);
        // Nested-set left numbers of one trace are distinct and within 1..=2n.
        self.by_left.clear();
        self.by_left.resize(2 * n + 2, NONE);
        for r in range(c.rs_offsets, row) {
            for s in range(c.ss_offsets, r) {
                for g in range(c.span_offsets, s) {
                    let core = Core { c, g, r, s };
                    // Without the columns (no tree question) no span has a parent.
                    let nested = match c.nested {
                        Some((l, r, p)) => NestedSet {
                            left: l.value(g),
                            right: r.value(g),
                            parent: p.value(g),
                        },
                        None => NestedSet {
                            left: 0,
                            right: 0,
                            parent: 0,
                        },
                    };
                    if let Some(slot) = usize::try_from(nested.left)
                        .ok()
                        .and_then(|l| self.by_left.get_mut(l))
                    {
                        // Like a map built in span order: the last span wins.
                        *slot = (g - first_g) as u32;
                    }
                    self.spans.push(ColSpan {
                        core,
                        parent: None,
                        nested,
                        children: 0,
                        trace: self.shared.clone(),
                    });
                }
            }
        }
        for i in 0..self.spans.len() {
            let p = self.spans[i].nested.parent;
            let parent = usize::try_from(p)
                .ok()
                .filter(|&p| p > 0)
                .and_then(|p| self.by_left.get(p).copied())
                .filter(|&p| p != NONE && p as usize != i);
            if let Some(p) = parent {
                self.spans[p as usize].children += 1;
                self.spans[i].parent = Some(self.spans[p as usize].core);
            }
        }
        Ok(())
    }

    pub fn row(&self) -> usize {
        self.info.row
    }

    /// The row-group-wide index of span `i` of the shown trace.
    fn g(&self, i: usize) -> usize {
        assert!(i < self.n, "span {i} of a trace with {} spans", self.n);
        self.first_g + i
    }

    /// Hit columns ([`Phase::Report`]) only; empty otherwise.
    pub fn span_id(&self, i: usize) -> &'a [u8] {
        self.c.span_id.map_or(&[], |a| a.value(self.g(i)))
    }

    /// Hit columns ([`Phase::Report`]) only; empty otherwise.
    pub fn span_name(&self, i: usize) -> &'a str {
        self.c.name.map_or("", |a| a.value(self.g(i)))
    }

    pub fn span_start_unix_nano(&self, i: usize) -> u64 {
        self.c.span_start.value(self.g(i))
    }

    /// End minus start, as an OTLP span read back from the block gives it.
    pub fn span_duration_nanos(&self, i: usize) -> u64 {
        let core = Core {
            c: self.c,
            g: self.g(i),
            r: 0,
            s: 0,
        };
        core.duration().unwrap_or(0)
    }

    /// `service.name` of the root span's resource (the first span without a parent ID).
    pub fn root_service_name(&self) -> Option<&'a str> {
        self.info.root.and_then(|r| r.service_name())
    }

    pub fn root_span_name(&self) -> Option<&'a str> {
        self.info.root.and_then(|r| Some(r.c.name?.value(r.g)))
    }
}

impl<'a> Core<'a> {
    fn start(&self) -> u64 {
        self.c.span_start.value(self.g)
    }

    fn duration(&self) -> Option<u64> {
        let start = self.start();
        Some(
            start
                .wrapping_add(self.c.duration?.value(self.g))
                .saturating_sub(start),
        )
    }

    fn resource_valid(&self) -> bool {
        self.c.res.is_some_and(|r| r.is_valid(self.r))
    }

    fn scope_valid(&self) -> bool {
        self.c.scope.is_some_and(|s| s.is_valid(self.s))
    }

    fn service_name(&self) -> Option<&'a str> {
        let col = self.c.res_service?;
        (self.resource_valid() && col.is_valid(self.r)).then(|| col.value(self.r))
    }

    fn status_code(&self) -> Option<i32> {
        let (st, code, _) = self.c.status?;
        st.is_valid(self.g).then(|| code.value(self.g))
    }
}

impl SpanView for Core<'_> {
    fn attribute_ref(&self, scope: Scope, name: &str) -> Option<ValueRef<'_>> {
        let c = self.c;
        match scope {
            Scope::Span => {
                if let Some((_, d)) = c.span_ded.iter().find(|(k, _)| *k == name) {
                    if let Some(v) = d.get(self.g) {
                        return Some(v);
                    }
                }
                c.span_attrs.as_ref()?.find_ref(self.g, name)
            }
            Scope::Resource => {
                if !self.resource_valid() {
                    return None;
                }
                if let Some((_, d)) = c.res_ded.iter().find(|(k, _)| *k == name) {
                    if let Some(v) = d.get(self.r) {
                        return Some(v);
                    }
                }
                c.res_attrs.as_ref()?.find_ref(self.r, name)
            }
            Scope::Instrumentation => {
                if !self.scope_valid() {
                    return None;
                }
                c.scope_attrs.as_ref()?.find_ref(self.s, name)
            }
            _ => self.attribute(scope, name).map(ValueRef::Owned),
        }
    }

    fn attribute(&self, scope: Scope, name: &str) -> Option<Value> {
        let c = self.c;
        match scope {
            Scope::Span | Scope::Resource | Scope::Instrumentation => {
                self.attribute_ref(scope, name).map(owned)
            }
            Scope::Event => {
                let ev = c.events.as_ref()?;
                gather(range(ev.offsets, self.g).filter_map(|e| ev.attrs.find(e, name)))
            }
            Scope::Link => {
                let lk = c.links.as_ref()?;
                gather(range(lk.offsets, self.g).filter_map(|l| lk.attrs.find(l, name)))
            }
            Scope::Unscoped => self
                .attribute(Scope::Span, name)
                .or_else(|| self.attribute(Scope::Resource, name)),
        }
    }

    fn intrinsic(&self, intrinsic: Intrinsic) -> Option<Value> {
        let c = self.c;
        let g = self.g;
        Some(match intrinsic {
            Intrinsic::Duration => Value::Duration(nanos(self.duration()?)),
            Intrinsic::Name => Value::String(c.name?.value(g).to_owned()),
            Intrinsic::Status => Value::Status(match self.status_code() {
                Some(1) => Status::Ok,
                Some(2) => Status::Error,
                _ => Status::Unset,
            }),
            Intrinsic::StatusMessage => {
                let (st, _, msg) = c.status?;
                Value::String(if st.is_valid(g) {
                    msg.value(g).to_owned()
                } else {
                    String::new()
                })
            }
            Intrinsic::Kind => Value::Kind(match c.kind?.value(g) {
                1 => SpanKind::Internal,
                2 => SpanKind::Server,
                3 => SpanKind::Client,
                4 => SpanKind::Producer,
                5 => SpanKind::Consumer,
                _ => SpanKind::Unspecified,
            }),
            Intrinsic::SpanId => return hex_id(c.span_id?.value(g)),
            // A null (left-out) parent span ID needs the parent span: see `ColSpan`.
            Intrinsic::ParentId => {
                let p = c.parent_span_id?;
                return p.is_valid(g).then(|| hex_id(p.value(g))).flatten();
            }
            // Null: left out because the parent span is in the trace.
            Intrinsic::Parent => {
                let p = c.parent_span_id?;
                return (p.is_null(g) || !p.value(g).is_empty()).then_some(Value::Bool(true));
            }
            Intrinsic::EventName => {
                let ev = c.events.as_ref()?;
                return gather(
                    range(ev.offsets, g).map(|e| Value::String(ev.name.value(e).to_owned())),
                );
            }
            Intrinsic::EventTimeSinceStart => {
                let ev = c.events.as_ref()?;
                let start = self.start();
                return gather(range(ev.offsets, g).map(|e| {
                    let t = start.wrapping_add(ev.time.value(e) as u64);
                    Value::Duration(nanos(t.saturating_sub(start)))
                }));
            }
            Intrinsic::LinkTraceId => {
                let lk = c.links.as_ref()?;
                return gather(range(lk.offsets, g).filter_map(|l| hex_id(lk.trace_id.value(l))));
            }
            Intrinsic::LinkSpanId => {
                let lk = c.links.as_ref()?;
                return gather(range(lk.offsets, g).filter_map(|l| hex_id(lk.span_id.value(l))));
            }
            Intrinsic::InstrumentationName => {
                if !self.scope_valid() {
                    return None;
                }
                let name = c.scope_name?.value(self.s);
                return (!name.is_empty()).then(|| Value::String(name.to_owned()));
            }
            Intrinsic::InstrumentationVersion => {
                if !self.scope_valid() {
                    return None;
                }
                let version = c.scope_version?.value(self.s);
                return (!version.is_empty()).then(|| Value::String(version.to_owned()));
            }
            Intrinsic::ChildCount
            | Intrinsic::TraceDuration
            | Intrinsic::TraceRootName
            | Intrinsic::TraceRootService
            | Intrinsic::TraceId
            | Intrinsic::NestedSetLeft
            | Intrinsic::NestedSetRight
            | Intrinsic::NestedSetParent => return None,
        })
    }
}

impl SpanView for ColSpan<'_> {
    fn attribute(&self, scope: Scope, name: &str) -> Option<Value> {
        self.core.attribute(scope, name)
    }

    fn attribute_ref(&self, scope: Scope, name: &str) -> Option<ValueRef<'_>> {
        self.core.attribute_ref(scope, name)
    }

    fn intrinsic(&self, intrinsic: Intrinsic) -> Option<Value> {
        let t = self.trace.get();
        Some(match intrinsic {
            Intrinsic::ChildCount => Value::Int(i64::from(self.children)),
            Intrinsic::NestedSetLeft => Value::Int(i64::from(self.nested.left)),
            Intrinsic::NestedSetRight => Value::Int(i64::from(self.nested.right)),
            Intrinsic::NestedSetParent => Value::Int(i64::from(self.nested.parent)),
            Intrinsic::TraceDuration => Value::Duration(nanos(t.duration)),
            Intrinsic::TraceRootName => {
                let r = t.root?;
                Value::String(r.c.name?.value(r.g).to_owned())
            }
            Intrinsic::TraceRootService => Value::String(t.root?.service_name()?.to_owned()),
            Intrinsic::TraceId => {
                let first = t.first?;
                let c = first.c;
                return match c.span_trace_id {
                    Some(a) if a.is_valid(first.g) => hex_id(a.value(first.g)),
                    _ => hex_id(c.trace_id?.value(t.row)),
                };
            }
            Intrinsic::ParentId
                if self
                    .core
                    .c
                    .parent_span_id
                    .is_some_and(|p| p.is_null(self.core.g)) =>
            {
                let p = self.parent?;
                return hex_id(p.c.span_id?.value(p.g));
            }
            other => return self.core.intrinsic(other),
        })
    }

    fn parent(&self) -> Option<&dyn SpanView> {
        self.parent.as_ref().map(|p| p as &dyn SpanView)
    }
}

impl TraceView for ColumnarTrace<'_> {
    fn span_count(&self) -> usize {
        self.spans.len()
    }

    fn span_view(&self, i: usize) -> &dyn SpanView {
        &self.spans[i]
    }

    fn nested_set(&self, i: usize) -> NestedSet {
        self.spans[i].nested
    }

    fn start_unix_nano(&self, i: usize) -> u64 {
        self.spans[i].core.start()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{encode_block, synth::realistic_traces, BlockConfig};
    use crate::model::TenantId;

    /// Whether the filter decode of the first row group holds span generic attributes.
    fn decodes_span_attrs(query: &str) -> bool {
        decodes_span_column(query, "attrs")
    }

    /// Whether the filter decode of the first row group holds the span column `name`.
    fn decodes_span_column(query: &str, name: &str) -> bool {
        let tenant = TenantId::new("t").unwrap();
        let traces = realistic_traces(50, 3);
        let data = encode_block(
            &tenant,
            uuid::Uuid::nil(),
            0,
            traces,
            &BlockConfig::default(),
        )
        .unwrap()
        .data;
        let md = super::super::decode_footer(data.clone(), data.len() as u64).unwrap();
        let columns = SearchColumns::for_query(&crate::traceql::parse(query).unwrap()).unwrap();
        let read = &columns.plan(&md, |_, _| true).unwrap()[0];
        let fetched = read
            .ranges
            .iter()
            .map(|r| data.slice(r.start as usize..r.end as usize))
            .collect();
        let root = decode_row_group(
            md,
            &columns,
            read,
            Phase::Filter,
            fetched,
            data.len() as u64,
        )
        .unwrap();
        let (_, rs) = list(&root, "resource_spans").unwrap();
        let (_, ss) = list(rs, "scope_spans").unwrap();
        let (_, sp) = list(ss, "spans").unwrap();
        sp.column_by_name(name).is_some()
    }

    #[test]
    fn nested_sets_are_decoded_only_for_tree_questions() {
        for (query, tree) in [
            ("{ span.http.route =~ \"/api/.*\" }", false),
            ("{ } | count() > 40", false),
            ("{ kind = server } && { kind = client }", false),
            ("{ resource.service.name = \"frontend\" } >> { }", true),
            ("{ parent.span.http.route = \"/x\" }", true),
            ("{ span:childCount > 1 }", true),
            ("{ span:parentID = \"00\" }", true),
        ] {
            assert_eq!(
                decodes_span_column(query, "nested_set_left"),
                tree,
                "{query}"
            );
        }
    }

    #[test]
    fn generic_attributes_are_decoded_only_when_their_dictionary_may_hold_the_name() {
        // http.route always lands in its dedicated column: no generic key holds it.
        assert!(!decodes_span_attrs("{ span.http.route =~ \"/api/.*\" }"));
        // db.system has no dedicated column: the generic list must be read.
        assert!(decodes_span_attrs("{ span.db.system = \"postgresql\" }"));
        assert!(decodes_span_attrs(
            "{ span.http.route = \"/x\" || span.db.system = \"x\" }"
        ));
    }
}
