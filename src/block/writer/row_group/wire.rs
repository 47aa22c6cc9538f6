//! The row-group columns of a trace read off its encoded chunks ([`WireRows`]): the same
//! rows [`RowGroupBuilder::push_trace`] makes from decoded structs, without them.

use super::{Layout, RowGroupBuilder, SpanFacts, TraceSummary};
use crate::block::wire_rows::{Span, Value, WireRows};
use crate::block::writer::columns::to_i32;
use crate::block::{wire_positions, BlockError, DEDICATED_RESOURCE, DEDICATED_SPAN};
use crate::model::{status, NestedSet, TraceId};

/// `service.name` of a resource's attributes when it is a string (the dedicated column).
fn service<'a>(rows: &WireRows<'a>, rs: &crate::block::wire_rows::ResourceSpans<'a>) -> &'a str {
    let Some(r) = &rs.resource else {
        return "";
    };
    let attrs = rows.attrs(&r.attrs);
    match wire_positions(attrs, &DEDICATED_RESOURCE)[0].map(|i| attrs[i].value) {
        Some(Some(Value::Str(s))) => s,
        _ => "",
    }
}

impl RowGroupBuilder {
    pub(in crate::block::writer) fn push_rows(
        &mut self,
        id: TraceId,
        rows: &WireRows<'_>,
    ) -> Result<TraceSummary, BlockError> {
        self.est_bytes += rows.encoded_len();
        let error = status::StatusCode::Error as i32;
        let facts = rows.resources.iter().flat_map(|rs| {
            let service = service(rows, rs);
            rs.scopes.iter().flat_map(|ss| &ss.spans).map(move |&i| {
                let s = &rows.spans[i];
                SpanFacts {
                    service,
                    id: s.span_id,
                    parent: s.parent_span_id,
                    start: s.start,
                    end: s.end,
                    name: s.name,
                    error: s.status.is_some_and(|(code, _)| code == error),
                }
            })
        });
        let Layout {
            summary,
            nested,
            derived,
            span_base,
        } = self.push_trace_level(id, facts)?;

        let mut span_idx = 0usize;
        for rs in &rows.resources {
            match &rs.resource {
                Some(r) => {
                    let attrs = rows.attrs(&r.attrs);
                    let pos = wire_positions(attrs, &DEDICATED_RESOURCE);
                    self.res_valid.push(true);
                    self.res_attrs.push_wire_list(attrs, &pos)?;
                    self.res_dropped.push(r.dropped);
                    // Resources with entity refs are decoded instead.
                    self.res_entity_refs.append_null();
                    self.res_ded.push_wire(attrs, &pos);
                }
                None => self.push_resource(None)?,
            }
            self.rs_schema_url.append_value(rs.schema_url);
            for ss in &rs.scopes {
                match &ss.scope {
                    Some(s) => {
                        self.scope_valid.push(true);
                        self.scope_name.append_value(s.name);
                        self.scope_version.append_value(s.version);
                        self.scope_attrs.push_wire_list(rows.attrs(&s.attrs), &[])?;
                        self.scope_dropped.push(s.dropped);
                    }
                    None => self.push_no_scope()?,
                }
                self.ss_schema_url.append_value(ss.schema_url);
                for &i in &ss.spans {
                    let ns = nested.get(span_idx).copied().unwrap_or(NestedSet {
                        left: 0,
                        right: 0,
                        parent: -1,
                    });
                    let parent_derived = derived.get(span_idx).copied().unwrap_or(false);
                    span_idx += 1;
                    self.push_wire_span(id, span_base, rows, &rows.spans[i], ns, parent_derived)?;
                }
                self.span_offsets.push(to_i32(self.span_start.len())?);
            }
            self.ss_offsets.push(to_i32(self.scope_valid.len())?);
        }
        self.rs_offsets.push(to_i32(self.res_valid.len())?);
        Ok(summary)
    }

    fn push_wire_span(
        &mut self,
        trace: TraceId,
        trace_start: u64,
        rows: &WireRows<'_>,
        span: &Span<'_>,
        ns: NestedSet,
        parent_derived: bool,
    ) -> Result<(), BlockError> {
        self.span_id.append_value(span.span_id);
        if parent_derived {
            self.parent_span_id.append_null();
        } else {
            self.parent_span_id.append_value(span.parent_span_id);
        }
        if span.trace_id == trace.as_bytes() {
            self.span_trace_id.append_null();
        } else {
            self.span_trace_id.append_value(span.trace_id);
        }
        self.trace_state.append_value(span.trace_state);
        self.flags.push(span.flags);
        self.name.append_value(span.name);
        self.kind.push(span.kind);
        self.span_start.push(span.start.wrapping_sub(trace_start));
        self.span_duration.push(span.end.wrapping_sub(span.start));
        match span.status {
            Some((code, message)) => {
                self.status_valid.push(true);
                self.status_code.push(code);
                self.status_message.append_value(message);
            }
            None => {
                self.status_valid.push(false);
                self.status_code.push(0);
                self.status_message.append_value("");
            }
        }
        let attrs = rows.attrs(&span.attrs);
        let pos = wire_positions(attrs, &DEDICATED_SPAN);
        self.span_attrs.push_wire_list(attrs, &pos)?;
        self.span_ded.push_wire(attrs, &pos);
        self.span_dropped_attrs.push(span.dropped_attrs);
        for ev in &rows.events[span.events.clone()] {
            self.ev_time.push(ev.time.wrapping_sub(span.start) as i64);
            self.ev_name.append_value(ev.name);
            self.ev_attrs.push_wire_list(rows.attrs(&ev.attrs), &[])?;
            self.ev_dropped.push(ev.dropped);
        }
        self.event_offsets.push(to_i32(self.ev_time.len())?);
        self.dropped_events.push(span.dropped_events);
        for l in &rows.links[span.links.clone()] {
            self.link_trace_id.append_value(l.trace_id);
            self.link_span_id.append_value(l.span_id);
            self.link_trace_state.append_value(l.trace_state);
            self.link_flags.push(l.flags);
            self.link_attrs.push_wire_list(rows.attrs(&l.attrs), &[])?;
            self.link_dropped.push(l.dropped);
        }
        self.link_offsets.push(to_i32(self.link_flags.len())?);
        self.dropped_links.push(span.dropped_links);
        self.ns_left.push(ns.left);
        self.ns_right.push(ns.right);
        self.ns_parent.push(ns.parent);
        Ok(())
    }
}
