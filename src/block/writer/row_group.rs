//! One row group's worth of traces, buffered column by column and assembled into a record
//! batch when the row group is flushed; nested-set numbers and derivable parent IDs per trace.

use std::collections::BTreeMap;

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, FixedSizeBinaryArray, Int32Array, Int64Array, RecordBatch, UInt32Array, UInt64Array,
};
use arrow_buffer::Buffer;
use arrow_schema::SchemaRef;
use prost::Message;

mod wire;

use super::columns::*;
use super::legacy;
use crate::block::schema::{child, list_element, struct_fields};
use crate::block::{dedicated_positions, BlockError, DEDICATED_RESOURCE, DEDICATED_SPAN};
use crate::model::{
    any_value, nested_sets, parent_indices, status, NestedSet, Resource, ResourceSpans, TraceId,
};

/// For each span of a trace (`(span_id, parent_span_id)` in storage order), whether its parent span ID
/// can be left out of the block: it is the span ID of the first span of the trace whose
/// `nested_set_left` equals the span's `parent_id`, which is how readers restore it.
pub(crate) fn derivable_parents(spans: &[(&[u8], &[u8])], nested: &[NestedSet]) -> Vec<bool> {
    let mut by_left = vec![usize::MAX; 2 * spans.len() + 2];
    for (i, ns) in nested.iter().enumerate() {
        if let Some(slot) = usize::try_from(ns.left)
            .ok()
            .and_then(|l| by_left.get_mut(l))
        {
            if *slot == usize::MAX {
                *slot = i;
            }
        }
    }
    spans
        .iter()
        .zip(nested)
        .map(|((_, parent), ns)| {
            !parent.is_empty()
                && usize::try_from(ns.parent)
                    .ok()
                    .and_then(|p| by_left.get(p))
                    .and_then(|&j| spans.get(j))
                    .is_some_and(|(id, _)| id == parent)
        })
        .collect()
}

/// What the trace level needs of one span.
struct SpanFacts<'a> {
    service: &'a str,
    id: &'a [u8],
    parent: &'a [u8],
    start: u64,
    end: u64,
    name: &'a str,
    error: bool,
}

/// What [`RowGroupBuilder::push_trace_level`] worked out for the span rows.
struct Layout {
    summary: TraceSummary,
    nested: Vec<NestedSet>,
    derived: Vec<bool>,
    span_base: u64,
}

pub(super) struct TraceSummary {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) spans: u64,
}

/// Everything buffered for one row group.
pub(super) struct RowGroupBuilder {
    pub(super) est_bytes: usize,
    // trace level
    trace_id: Vec<u8>,
    start: Vec<u64>,
    end: Vec<u64>,
    duration: Vec<u64>,
    root_service: StringBuilder,
    root_span: StringBuilder,
    stats_offsets: Vec<i32>,
    stats_service: StringBuilder,
    stats_spans: Vec<u32>,
    stats_errors: Vec<u32>,
    rs_offsets: Vec<i32>,
    // resource spans level
    res_valid: Vec<bool>,
    res_attrs: AttrBuilder,
    res_dropped: Vec<u32>,
    res_entity_refs: BinaryBuilder,
    res_ded: DedBuilder,
    rs_schema_url: StringBuilder,
    ss_offsets: Vec<i32>,
    // scope spans level
    scope_valid: Vec<bool>,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    scope_attrs: AttrBuilder,
    scope_dropped: Vec<u32>,
    ss_schema_url: StringBuilder,
    span_offsets: Vec<i32>,
    // span level
    span_id: BinaryBuilder,
    parent_span_id: BinaryBuilder,
    span_trace_id: BinaryBuilder,
    trace_state: StringBuilder,
    flags: Vec<u32>,
    name: StringBuilder,
    kind: Vec<i32>,
    span_start: Vec<u64>,
    span_duration: Vec<u64>,
    status_valid: Vec<bool>,
    status_code: Vec<i32>,
    status_message: StringBuilder,
    span_attrs: AttrBuilder,
    span_dropped_attrs: Vec<u32>,
    event_offsets: Vec<i32>,
    dropped_events: Vec<u32>,
    link_offsets: Vec<i32>,
    dropped_links: Vec<u32>,
    ns_left: Vec<i32>,
    ns_right: Vec<i32>,
    ns_parent: Vec<i32>,
    span_ded: DedBuilder,
    // event level
    ev_time: Vec<i64>,
    ev_name: StringBuilder,
    ev_attrs: AttrBuilder,
    ev_dropped: Vec<u32>,
    // link level
    link_trace_id: BinaryBuilder,
    link_span_id: BinaryBuilder,
    link_trace_state: StringBuilder,
    link_flags: Vec<u32>,
    link_attrs: AttrBuilder,
    link_dropped: Vec<u32>,
}

pub(super) fn service_name(rs: &ResourceSpans) -> &str {
    rs.resource
        .as_ref()
        .and_then(|r| {
            let pos = dedicated_positions(&r.attributes, &DEDICATED_RESOURCE)[0]?;
            match r.attributes.get(pos)?.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            }
        })
        .unwrap_or("")
}

impl RowGroupBuilder {
    pub(super) fn new() -> Self {
        Self {
            est_bytes: 0,
            trace_id: Vec::new(),
            start: Vec::new(),
            end: Vec::new(),
            duration: Vec::new(),
            root_service: StringBuilder::new(),
            root_span: StringBuilder::new(),
            stats_offsets: vec![0],
            stats_service: StringBuilder::new(),
            stats_spans: Vec::new(),
            stats_errors: Vec::new(),
            rs_offsets: vec![0],
            res_valid: Vec::new(),
            res_attrs: AttrBuilder::new(),
            res_dropped: Vec::new(),
            res_entity_refs: BinaryBuilder::new(),
            res_ded: DedBuilder::new(&DEDICATED_RESOURCE),
            rs_schema_url: StringBuilder::new(),
            ss_offsets: vec![0],
            scope_valid: Vec::new(),
            scope_name: StringBuilder::new(),
            scope_version: StringBuilder::new(),
            scope_attrs: AttrBuilder::new(),
            scope_dropped: Vec::new(),
            ss_schema_url: StringBuilder::new(),
            span_offsets: vec![0],
            span_id: BinaryBuilder::new(),
            parent_span_id: BinaryBuilder::new(),
            span_trace_id: BinaryBuilder::new(),
            trace_state: StringBuilder::new(),
            flags: Vec::new(),
            name: StringBuilder::new(),
            kind: Vec::new(),
            span_start: Vec::new(),
            span_duration: Vec::new(),
            status_valid: Vec::new(),
            status_code: Vec::new(),
            status_message: StringBuilder::new(),
            span_attrs: AttrBuilder::new(),
            span_dropped_attrs: Vec::new(),
            event_offsets: vec![0],
            dropped_events: Vec::new(),
            link_offsets: vec![0],
            dropped_links: Vec::new(),
            ns_left: Vec::new(),
            ns_right: Vec::new(),
            ns_parent: Vec::new(),
            span_ded: DedBuilder::new(&DEDICATED_SPAN),
            ev_time: Vec::new(),
            ev_name: StringBuilder::new(),
            ev_attrs: AttrBuilder::new(),
            ev_dropped: Vec::new(),
            link_trace_id: BinaryBuilder::new(),
            link_span_id: BinaryBuilder::new(),
            link_trace_state: StringBuilder::new(),
            link_flags: Vec::new(),
            link_attrs: AttrBuilder::new(),
            link_dropped: Vec::new(),
        }
    }

    pub(super) fn push_trace(
        &mut self,
        id: TraceId,
        batches: &[ResourceSpans],
    ) -> Result<TraceSummary, BlockError> {
        self.est_bytes += batches.iter().map(Message::encoded_len).sum::<usize>();
        let facts = batches.iter().flat_map(|rs| {
            let service = service_name(rs);
            rs.scope_spans
                .iter()
                .flat_map(|ss| &ss.spans)
                .map(move |span| SpanFacts {
                    service,
                    id: &span.span_id,
                    parent: &span.parent_span_id,
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                    name: &span.name,
                    error: span
                        .status
                        .as_ref()
                        .is_some_and(|s| s.code == status::StatusCode::Error as i32),
                })
        });
        let Layout {
            summary,
            nested,
            derived,
            span_base,
        } = self.push_trace_level(id, facts)?;

        let mut span_idx = 0usize;
        for rs in batches {
            self.push_resource(rs.resource.as_ref())?;
            self.rs_schema_url.append_value(&rs.schema_url);
            for ss in &rs.scope_spans {
                match &ss.scope {
                    Some(s) => {
                        self.scope_valid.push(true);
                        self.scope_name.append_value(&s.name);
                        self.scope_version.append_value(&s.version);
                        self.scope_attrs.push_list(&s.attributes, &[])?;
                        self.scope_dropped.push(s.dropped_attributes_count);
                    }
                    None => self.push_no_scope()?,
                }
                self.ss_schema_url.append_value(&ss.schema_url);
                for span in &ss.spans {
                    let ns = nested.get(span_idx).copied().unwrap_or(NestedSet {
                        left: 0,
                        right: 0,
                        parent: -1,
                    });
                    let parent_derived = derived.get(span_idx).copied().unwrap_or(false);
                    span_idx += 1;
                    self.push_span(id, span_base, span, ns, parent_derived)?;
                }
                self.span_offsets.push(to_i32(self.span_start.len())?);
            }
            self.ss_offsets.push(to_i32(self.scope_valid.len())?);
        }
        self.rs_offsets.push(to_i32(self.res_valid.len())?);
        Ok(summary)
    }

    /// The trace-level columns (ID, times, root, service stats) from every span of the
    /// trace in storage order, and what the span rows need: nested sets, which parent IDs
    /// can be left out, the base of relative span starts.
    fn push_trace_level<'a>(
        &mut self,
        id: TraceId,
        facts: impl Iterator<Item = SpanFacts<'a>>,
    ) -> Result<Layout, BlockError> {
        let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
        let (mut start, mut end) = (u64::MAX, 0u64);
        let mut root: Option<(&str, &str)> = None;
        let mut stats: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        for f in facts {
            pairs.push((f.id, f.parent));
            start = start.min(f.start);
            end = end.max(f.end);
            if root.is_none() && f.parent.is_empty() {
                root = Some((f.service, f.name));
            }
            let e = stats.entry(f.service).or_default();
            e.0 = e.0.saturating_add(1);
            if f.error {
                e.1 = e.1.saturating_add(1);
            }
        }
        let nested = nested_sets(&parent_indices(&pairs));
        let mut derived = derivable_parents(&pairs, &nested);
        if legacy::on() {
            derived.fill(false);
        }
        let span_base = if legacy::on() { 0 } else { start };
        let spans = pairs.len() as u64;
        if spans == 0 {
            start = 0;
        }
        end = end.max(start);

        self.trace_id.extend_from_slice(id.as_bytes());
        self.start.push(start);
        self.end.push(end);
        self.duration.push(end - start);
        let (root_service, root_name) = root.unwrap_or(("", ""));
        self.root_service.append_value(root_service);
        self.root_span.append_value(root_name);
        for (service, (count, errors)) in &stats {
            self.stats_service.append_value(service);
            self.stats_spans.push(*count);
            self.stats_errors.push(*errors);
        }
        self.stats_offsets.push(to_i32(self.stats_spans.len())?);
        Ok(Layout {
            summary: TraceSummary { start, end, spans },
            nested,
            derived,
            span_base,
        })
    }

    fn push_no_scope(&mut self) -> Result<(), BlockError> {
        self.scope_valid.push(false);
        self.scope_name.append_value("");
        self.scope_version.append_value("");
        self.scope_attrs.push_list(&[], &[])?;
        self.scope_dropped.push(0);
        Ok(())
    }

    pub(super) fn push_resource(&mut self, r: Option<&Resource>) -> Result<(), BlockError> {
        match r {
            Some(r) => {
                let pos = dedicated_positions(&r.attributes, &DEDICATED_RESOURCE);
                self.res_valid.push(true);
                self.res_attrs.push_list(&r.attributes, &pos)?;
                self.res_dropped.push(r.dropped_attributes_count);
                if r.entity_refs.is_empty() {
                    self.res_entity_refs.append_null();
                } else {
                    // Rare and not searched: keep them opaque but exact.
                    let only_refs = Resource {
                        entity_refs: r.entity_refs.clone(),
                        ..Default::default()
                    };
                    self.res_entity_refs.append_value(only_refs.encode_to_vec());
                }
                self.res_ded.push(&r.attributes, &pos);
            }
            None => {
                self.res_valid.push(false);
                self.res_attrs.push_list(&[], &[])?;
                self.res_dropped.push(0);
                self.res_entity_refs.append_null();
                self.res_ded.push_none();
            }
        }
        Ok(())
    }

    pub(super) fn push_span(
        &mut self,
        trace: TraceId,
        trace_start: u64,
        span: &crate::model::Span,
        ns: NestedSet,
        parent_derived: bool,
    ) -> Result<(), BlockError> {
        self.span_id.append_value(&span.span_id);
        if parent_derived {
            self.parent_span_id.append_null();
        } else {
            self.parent_span_id.append_value(&span.parent_span_id);
        }
        // Almost always equal to the row's trace ID; only differing ones are stored.
        if span.trace_id.as_slice() == trace.as_bytes() {
            self.span_trace_id.append_null();
        } else {
            self.span_trace_id.append_value(&span.trace_id);
        }
        self.trace_state.append_value(&span.trace_state);
        self.flags.push(span.flags);
        self.name.append_value(&span.name);
        self.kind.push(span.kind);
        // Relative to the trace start (SPAN_START_KEY): small numbers pack tighter.
        self.span_start
            .push(span.start_time_unix_nano.wrapping_sub(trace_start));
        // Wrapping keeps even end < start exact on read.
        self.span_duration.push(
            span.end_time_unix_nano
                .wrapping_sub(span.start_time_unix_nano),
        );
        match &span.status {
            Some(s) => {
                self.status_valid.push(true);
                self.status_code.push(s.code);
                self.status_message.append_value(&s.message);
            }
            None => {
                self.status_valid.push(false);
                self.status_code.push(0);
                self.status_message.append_value("");
            }
        }
        let pos = dedicated_positions(&span.attributes, &DEDICATED_SPAN);
        self.span_attrs.push_list(&span.attributes, &pos)?;
        self.span_ded.push(&span.attributes, &pos);
        self.span_dropped_attrs.push(span.dropped_attributes_count);
        for ev in &span.events {
            self.ev_time
                .push(ev.time_unix_nano.wrapping_sub(span.start_time_unix_nano) as i64);
            self.ev_name.append_value(&ev.name);
            self.ev_attrs.push_list(&ev.attributes, &[])?;
            self.ev_dropped.push(ev.dropped_attributes_count);
        }
        self.event_offsets.push(to_i32(self.ev_time.len())?);
        self.dropped_events.push(span.dropped_events_count);
        for l in &span.links {
            self.link_trace_id.append_value(&l.trace_id);
            self.link_span_id.append_value(&l.span_id);
            self.link_trace_state.append_value(&l.trace_state);
            self.link_flags.push(l.flags);
            self.link_attrs.push_list(&l.attributes, &[])?;
            self.link_dropped.push(l.dropped_attributes_count);
        }
        self.link_offsets.push(to_i32(self.link_flags.len())?);
        self.dropped_links.push(span.dropped_links_count);
        self.ns_left.push(ns.left);
        self.ns_right.push(ns.right);
        self.ns_parent.push(ns.parent);
        Ok(())
    }

    pub(super) fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch, BlockError> {
        let top = schema.fields();
        let rs_field = child(top, "resource_spans")?;
        let (_, rs_fields) = list_element(rs_field)?;
        let res_field = child(rs_fields, "resource")?;
        let ss_field = child(rs_fields, "scope_spans")?;
        let (_, ss_fields) = list_element(ss_field)?;
        let scope_field = child(ss_fields, "scope")?;
        let spans_field = child(ss_fields, "spans")?;
        let (_, span_fields) = list_element(spans_field)?;
        let events_field = child(span_fields, "events")?;
        let (_, ev_fields) = list_element(events_field)?;
        let links_field = child(span_fields, "links")?;
        let (_, link_fields) = list_element(links_field)?;

        let events = make_struct(
            ev_fields,
            vec![
                ("time_since_start_nano", arc(Int64Array::from(self.ev_time))),
                ("name", arc(self.ev_name.finish())),
                ("attrs", self.ev_attrs.finish(child(ev_fields, "attrs")?)?),
                (
                    "dropped_attributes_count",
                    arc(UInt32Array::from(self.ev_dropped)),
                ),
            ],
            None,
        )?;
        let links = make_struct(
            link_fields,
            vec![
                ("trace_id", arc(self.link_trace_id.finish())),
                ("span_id", arc(self.link_span_id.finish())),
                ("trace_state", arc(self.link_trace_state.finish())),
                ("flags", arc(UInt32Array::from(self.link_flags))),
                (
                    "attrs",
                    self.link_attrs.finish(child(link_fields, "attrs")?)?,
                ),
                (
                    "dropped_attributes_count",
                    arc(UInt32Array::from(self.link_dropped)),
                ),
            ],
            None,
        )?;
        let status_field = child(span_fields, "status")?;
        let status = make_struct(
            struct_fields(status_field)?,
            vec![
                ("code", arc(Int32Array::from(self.status_code))),
                ("message", arc(self.status_message.finish())),
            ],
            nulls(self.status_valid),
        )?;
        let mut span_cols: Vec<(&str, ArrayRef)> = vec![
            ("span_id", arc(self.span_id.finish())),
            ("parent_span_id", arc(self.parent_span_id.finish())),
            ("trace_id", arc(self.span_trace_id.finish())),
            ("trace_state", arc(self.trace_state.finish())),
            ("flags", arc(UInt32Array::from(self.flags))),
            ("name", arc(self.name.finish())),
            ("kind", arc(Int32Array::from(self.kind))),
            (
                "start_time_unix_nano",
                arc(UInt64Array::from(self.span_start)),
            ),
            ("duration_nano", arc(UInt64Array::from(self.span_duration))),
            ("status", arc(status)),
            (
                "attrs",
                self.span_attrs.finish(child(span_fields, "attrs")?)?,
            ),
            (
                "dropped_attributes_count",
                arc(UInt32Array::from(self.span_dropped_attrs)),
            ),
            (
                "events",
                make_list(events_field, self.event_offsets, events)?,
            ),
            (
                "dropped_events_count",
                arc(UInt32Array::from(self.dropped_events)),
            ),
            ("links", make_list(links_field, self.link_offsets, links)?),
            (
                "dropped_links_count",
                arc(UInt32Array::from(self.dropped_links)),
            ),
            ("nested_set_left", arc(Int32Array::from(self.ns_left))),
            ("nested_set_right", arc(Int32Array::from(self.ns_right))),
            ("parent_id", arc(Int32Array::from(self.ns_parent))),
        ];
        self.span_ded.finish(&mut span_cols);
        let spans = make_struct(span_fields, span_cols, None)?;

        let scope = make_struct(
            struct_fields(scope_field)?,
            vec![
                ("name", arc(self.scope_name.finish())),
                ("version", arc(self.scope_version.finish())),
                (
                    "attrs",
                    self.scope_attrs
                        .finish(child(struct_fields(scope_field)?, "attrs")?)?,
                ),
                (
                    "dropped_attributes_count",
                    arc(UInt32Array::from(self.scope_dropped)),
                ),
            ],
            nulls(self.scope_valid),
        )?;
        let scope_spans = make_struct(
            ss_fields,
            vec![
                ("scope", arc(scope)),
                ("schema_url", arc(self.ss_schema_url.finish())),
                ("spans", make_list(spans_field, self.span_offsets, spans)?),
            ],
            None,
        )?;

        let res_fields = struct_fields(res_field)?;
        let mut res_cols: Vec<(&str, ArrayRef)> = vec![
            ("attrs", self.res_attrs.finish(child(res_fields, "attrs")?)?),
            (
                "dropped_attributes_count",
                arc(UInt32Array::from(self.res_dropped)),
            ),
            ("entity_refs", arc(self.res_entity_refs.finish())),
        ];
        self.res_ded.finish(&mut res_cols);
        let resource = make_struct(res_fields, res_cols, nulls(self.res_valid))?;
        let resource_spans = make_struct(
            rs_fields,
            vec![
                ("resource", arc(resource)),
                ("schema_url", arc(self.rs_schema_url.finish())),
                (
                    "scope_spans",
                    make_list(ss_field, self.ss_offsets, scope_spans)?,
                ),
            ],
            None,
        )?;

        let stats_field = child(top, "service_stats")?;
        let (_, stats_fields) = list_element(stats_field)?;
        let stats = make_struct(
            stats_fields,
            vec![
                ("service", arc(self.stats_service.finish())),
                ("span_count", arc(UInt32Array::from(self.stats_spans))),
                ("error_count", arc(UInt32Array::from(self.stats_errors))),
            ],
            None,
        )?;
        let trace_ids = FixedSizeBinaryArray::try_new(16, Buffer::from(self.trace_id), None)?;
        let root = make_struct(
            top,
            vec![
                ("trace_id", arc(trace_ids)),
                ("start_time_unix_nano", arc(UInt64Array::from(self.start))),
                ("end_time_unix_nano", arc(UInt64Array::from(self.end))),
                ("duration_nano", arc(UInt64Array::from(self.duration))),
                ("root_service_name", arc(self.root_service.finish())),
                ("root_span_name", arc(self.root_span.finish())),
                (
                    "service_stats",
                    make_list(stats_field, self.stats_offsets, stats)?,
                ),
                (
                    "resource_spans",
                    make_list(rs_field, self.rs_offsets, resource_spans)?,
                ),
            ],
            None,
        )?;
        let (_, columns, _) = root.into_parts();
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}
