//! Evaluating a search on one source: a memory trace through the OTLP view, a block's
//! row group through the columnar view (filter columns first, hit columns only for row
//! groups with hits), and the spansets and service stats of each hit.

use std::collections::BTreeMap;
use std::sync::Arc;

use parquet::file::metadata::ParquetMetaData;

use crate::block::{self, ColumnarBlock, ColumnarTrace};
use crate::model::{status, ResourceSpans, TraceId};
use crate::querier::TimeRange;
use crate::traceql::engine::{self, SpansetMatch};
use crate::traceql::otlp::OtlpTrace;
use crate::traceql::Query;
use crate::traceql::WireTrace;

use super::*;

/// The parts of a request the blocking evaluation needs.
#[derive(Clone)]
pub(super) struct SearchParams {
    pub(super) query: Arc<Query>,
    pub(super) spss: usize,
    pub(super) range: Option<TimeRange>,
    pub(super) min_duration_nanos: Option<u64>,
    pub(super) max_duration_nanos: Option<u64>,
}

impl From<&SearchRequest> for SearchParams {
    fn from(r: &SearchRequest) -> Self {
        Self {
            query: r.query.clone(),
            spss: r.spss,
            range: r.range,
            min_duration_nanos: r.min_duration_nanos,
            max_duration_nanos: r.max_duration_nanos,
        }
    }
}

impl SearchParams {
    /// Whether a trace starting at `start` and lasting `duration` (ns) is within the
    /// request's time range and duration bounds.
    fn admits(&self, start: u64, duration: u64) -> bool {
        self.range
            .is_none_or(|r| r.overlaps_nanos(start, start + duration))
            && self.min_duration_nanos.is_none_or(|m| duration >= m)
            && self.max_duration_nanos.is_none_or(|m| duration <= m)
    }

    pub(super) fn evaluate(&self, id: TraceId, batches: &[ResourceSpans], p: &mut Partial) {
        let trace = OtlpTrace::new(batches);
        p.metrics.inspected_traces += 1;
        p.metrics.inspected_spans += trace.spans() as u64;
        let start = trace.start_unix_nano();
        let duration = trace.duration_nanos();
        if !self.admits(start, duration) {
            return;
        }
        let matches = match engine::Prepared::new(&self.query).evaluate(&trace, self.spss) {
            Ok(m) => m,
            Err(_) => return,
        };
        if matches.is_empty() {
            return;
        }
        p.hits.push(TraceHit {
            id,
            root_service_name: trace.root_service_name().map(str::to_owned),
            root_span_name: trace.root_span_name().map(str::to_owned),
            start_unix_nano: start,
            end_unix_nano: start + duration,
            spansets: matches
                .into_iter()
                .map(|m| spanset(&trace, m, self.spss))
                .collect(),
            service_stats: service_stats(batches),
        });
    }
}

impl SearchParams {
    /// [`SearchParams::evaluate`] over a live trace's encoded chunks ([`WireTrace`]),
    /// without decoding it into structs: the same hits.
    pub(super) fn evaluate_wire(
        &self,
        query: &engine::Prepared<'_>,
        id: TraceId,
        trace: &WireTrace<'_>,
        p: &mut Partial,
    ) {
        p.metrics.inspected_traces += 1;
        p.metrics.inspected_spans += trace.spans() as u64;
        let start = trace.start_unix_nano();
        let duration = trace.duration_nanos();
        if !self.admits(start, duration) {
            return;
        }
        let matches = match query.evaluate(trace, self.spss) {
            Ok(m) if !m.is_empty() => m,
            _ => return,
        };
        let mut service_stats: BTreeMap<String, ServiceStats> = BTreeMap::new();
        for (svc, spans, errors) in trace.services() {
            let e = service_stats.entry((*svc).to_owned()).or_default();
            e.span_count += spans;
            e.error_count += errors;
        }
        p.hits.push(TraceHit {
            id,
            root_service_name: trace.root_service_name().map(str::to_owned),
            root_span_name: trace.root_span_name().map(str::to_owned),
            start_unix_nano: start,
            end_unix_nano: start + duration,
            spansets: matches
                .into_iter()
                .map(|m| {
                    spanset_with(m, self.spss, |i| HitSpan {
                        span_id: SpanIdBytes::new(trace.span_id(i)),
                        name: trace.span_name(i).to_owned(),
                        start_unix_nano: trace.span_start_unix_nano(i),
                        duration_nanos: trace.span_duration_nanos(i),
                        attributes: Vec::new(),
                    })
                })
                .collect(),
            service_stats,
        });
    }
}

/// What filtering one row group leaves for reporting: the decoded filter columns and the
/// matching rows with their spansets.
pub(super) struct Pending {
    pub(super) filtered: arrow_array::StructArray,
    pub(super) matches: Vec<(usize, Vec<SpansetMatch>)>,
}

impl SearchParams {
    /// Evaluates every trace of one row group of a block (see [`block::SearchColumns`]),
    /// given its filter columns ([`block::Phase::Filter`]). Traces outside the time range or
    /// the duration bounds, or failing the query's required resource values, are skipped
    /// before evaluation and not counted as inspected.
    pub(super) fn filter_row_group(
        &self,
        md: Arc<ParquetMetaData>,
        columns: &block::SearchColumns,
        read: &block::RowGroupRead,
        fetched: Vec<bytes::Bytes>,
        file_len: u64,
        p: &mut Partial,
    ) -> Result<Pending, block::BlockError> {
        let filtered =
            block::decode_row_group(md, columns, read, block::Phase::Filter, fetched, file_len)?;
        let data = ColumnarBlock::new(&filtered)?;
        let mut trace = ColumnarTrace::new(&data);
        let mut matches = Vec::new();
        let query = engine::Prepared::new(&self.query);
        for row in 0..data.len() {
            let start = data.start_unix_nano(row);
            let end = data.end_unix_nano(row);
            if let Some(r) = self.range {
                if !r.overlaps_nanos(start, end) {
                    continue;
                }
            }
            let duration = end - start;
            if self.min_duration_nanos.is_some_and(|m| duration < m)
                || self.max_duration_nanos.is_some_and(|m| duration > m)
            {
                continue;
            }
            if !trace.may_match(columns, row) {
                continue;
            }
            p.metrics.inspected_traces += 1;
            p.metrics.inspected_spans += data.span_count(row) as u64;
            if !trace.spans_may_match(columns, row) {
                continue;
            }
            trace.load(row)?;
            match query.evaluate(&trace, self.spss) {
                Ok(m) if !m.is_empty() => matches.push((row, m)),
                _ => {}
            }
        }
        drop(trace);
        drop(data);
        Ok(Pending { filtered, matches })
    }

    /// Builds the hits of `pending` once the hit columns ([`block::Phase::Report`]) of the
    /// same row group are fetched.
    pub(super) fn report_row_group(
        &self,
        md: Arc<ParquetMetaData>,
        columns: &block::SearchColumns,
        read: &block::RowGroupRead,
        pending: Pending,
        fetched: Vec<bytes::Bytes>,
        file_len: u64,
    ) -> Result<Vec<TraceHit>, block::BlockError> {
        // Read apart, every hit column comes from the hit rows alone, and the filter
        // columns locate the spans; else every hit column is decoded for every row.
        let (apart, all) = if block::reads_hits_apart(pending.matches.len(), read.rows) {
            let rows: Vec<usize> = pending.matches.iter().map(|(row, _)| *row).collect();
            let apart = block::read_hit_columns(&md, columns, read, fetched, file_len, &rows)?;
            (apart, pending.filtered)
        } else {
            let late = block::decode_row_group(
                md,
                columns,
                read,
                block::Phase::Report,
                fetched,
                file_len,
            )?;
            let all = block::merge_columns(&pending.filtered, &late)?;
            (block::HitColumns::default(), all)
        };
        let data = ColumnarBlock::new(&all)?;
        let mut trace = ColumnarTrace::new(&data);
        let mut hits = Vec::with_capacity(pending.matches.len());
        let corrupt = |what: &str| block::BlockError::Corrupt(format!("{what} not decoded"));
        for (row, matches) in pending.matches {
            // Span positions only: the spans were evaluated in the filter phase.
            trace.locate(row)?;
            let hit = apart.row(row);
            if hit
                .and_then(|h| h.spans())
                .is_some_and(|n| n != trace.located_spans())
            {
                return Err(block::BlockError::Corrupt(
                    "hit columns disagree with the filter columns on a row's spans".into(),
                ));
            }
            let id = hit
                .and_then(|h| h.trace_id())
                .or_else(|| data.trace_id(row))
                .ok_or_else(|| corrupt("trace_id"))?;
            let mut service_stats: BTreeMap<String, ServiceStats> = BTreeMap::new();
            let mut add = |(svc, spans, errors): (&str, u32, u32)| {
                let e = service_stats.entry(svc.to_owned()).or_default();
                e.span_count += spans;
                e.error_count += errors;
            };
            match hit.and_then(|h| h.service_stats()) {
                Some(stats) => stats.for_each(&mut add),
                None => data.service_stats(row).for_each(&mut add),
            }
            let start = data.start_unix_nano(row);
            let (root_service, root_name) = hit
                .and_then(|h| h.root_names())
                .or_else(|| data.root_names(row))
                .ok_or_else(|| corrupt("root names"))?;
            hits.push(TraceHit {
                id: TraceId(id),
                root_service_name: root_service.map(str::to_owned),
                root_span_name: root_name.map(str::to_owned),
                start_unix_nano: start,
                end_unix_nano: data.end_unix_nano(row),
                spansets: matches
                    .into_iter()
                    .map(|m| {
                        spanset_with(m, self.spss, |i| HitSpan {
                            span_id: SpanIdBytes::new(
                                hit.and_then(|h| h.span_id(i))
                                    .unwrap_or_else(|| trace.span_id(i)),
                            ),
                            name: hit
                                .and_then(|h| h.name(i))
                                .unwrap_or_else(|| trace.span_name(i))
                                .to_owned(),
                            start_unix_nano: trace.span_start_unix_nano(i),
                            duration_nanos: match hit.and_then(|h| h.duration_nano(i)) {
                                Some(d) => trace.span_duration_from(i, d),
                                None => trace.span_duration_nanos(i),
                            },
                            attributes: Vec::new(),
                        })
                    })
                    .collect(),
                service_stats,
            });
        }
        Ok(hits)
    }

    /// Both phases of one row group with a synchronous fetch.
    #[cfg(test)]
    pub(super) fn search_row_group(
        &self,
        md: Arc<ParquetMetaData>,
        columns: &block::SearchColumns,
        read: &block::RowGroupRead,
        fetch: impl Fn(&[std::ops::Range<u64>]) -> Vec<bytes::Bytes>,
        file_len: u64,
        p: &mut Partial,
    ) -> Result<(), block::BlockError> {
        let pending =
            self.filter_row_group(md.clone(), columns, read, fetch(&read.ranges), file_len, p)?;
        if pending.matches.is_empty() {
            return Ok(());
        }
        let late = fetch(&read.late_ranges);
        p.hits
            .extend(self.report_row_group(md, columns, read, pending, late, file_len)?);
        Ok(())
    }
}

pub(super) fn spanset_with(
    m: SpansetMatch,
    spss: usize,
    span: impl Fn(usize) -> HitSpan,
) -> HitSpanset {
    let matched = m.spans.len();
    let keep = if spss == 0 {
        matched
    } else {
        spss.min(matched)
    };
    let mut span_attrs = m.span_attributes.into_iter();
    let spans = m
        .spans
        .iter()
        .take(keep)
        .map(|&i| HitSpan {
            attributes: span_attrs.next().unwrap_or_default(),
            ..span(i)
        })
        .collect();
    HitSpanset {
        spans,
        matched,
        attributes: m.attributes,
    }
}

pub(super) fn spanset(trace: &OtlpTrace<'_>, m: SpansetMatch, spss: usize) -> HitSpanset {
    spanset_with(m, spss, |i| {
        let s = trace.span(i);
        HitSpan {
            span_id: SpanIdBytes::new(&s.span_id),
            name: s.name.clone(),
            start_unix_nano: s.start_time_unix_nano,
            duration_nanos: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
            attributes: Vec::new(),
        }
    })
}

pub(super) fn service_stats(batches: &[ResourceSpans]) -> BTreeMap<String, ServiceStats> {
    let mut out: BTreeMap<String, ServiceStats> = BTreeMap::new();
    for rs in batches {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(crate::model::any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let e = out.entry(service).or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                e.span_count += 1;
                if s.status
                    .as_ref()
                    .is_some_and(|st| st.code == status::StatusCode::Error as i32)
                {
                    e.error_count += 1;
                }
            }
        }
    }
    out
}
