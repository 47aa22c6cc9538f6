//! Tag discovery for autocomplete: attribute names per scope and the values of one
//! attribute or intrinsic, optionally only from spans matching a TraceQL filter.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use futures::stream::{self, StreamExt};

use super::scan::Columns;
use super::{Querier, QueryError, TimeRange};
use crate::backend::BackendError;
use crate::block::{self, BlockMeta, TagSummary};
use crate::model::{
    any_value, kind_name, status_name, AnyValue, KeyValue, ResourceSpans, Span, TenantId,
};
use crate::traceql::engine;
use crate::traceql::otlp::OtlpTrace;
use crate::traceql::{Intrinsic, Query, Scope};

/// Scopes as the tag endpoints name them.
pub(crate) const ATTRIBUTE_SCOPES: [&str; 5] =
    ["resource", "span", "event", "link", "instrumentation"];

/// Intrinsics offered for autocomplete: Tempo's list (legacy and scoped forms), plus the
/// ID intrinsics vivace has always offered.
pub(crate) const INTRINSIC_TAGS: [&str; 25] = [
    "duration",
    "event:name",
    "event:timeSinceStart",
    "instrumentation:name",
    "instrumentation:version",
    "kind",
    "link:spanID",
    "link:traceID",
    "name",
    "rootName",
    "rootServiceName",
    "span:duration",
    "span:id",
    "span:kind",
    "span:name",
    "span:parentID",
    "span:status",
    "span:statusMessage",
    "status",
    "statusMessage",
    "trace:duration",
    "trace:id",
    "trace:rootName",
    "trace:rootService",
    "traceDuration",
];

/// What to list values of.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TagTarget {
    Attribute { scope: Scope, name: String },
    Intrinsic(Intrinsic),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TagValue {
    /// `string`, `int`, `float`, `bool`, `keyword` or `duration`, as Tempo types them.
    pub(crate) kind: &'static str,
    pub(crate) value: String,
}

/// Tag names per scope (`resource`, `span`, ...).
#[derive(Default, Debug)]
pub(crate) struct TagNames(pub BTreeMap<&'static str, BTreeSet<String>>);

pub(crate) struct TagsRequest {
    pub(crate) range: Option<TimeRange>,
    /// Only tags of spans matching this filter (lenient: callers drop a bad `q`).
    pub(crate) filter: Option<Arc<Query>>,
    /// Most distinct entries collected per scope or target.
    pub(crate) limit: usize,
}

impl Querier {
    pub(crate) async fn tag_names(
        &self,
        tenant: &TenantId,
        req: &TagsRequest,
    ) -> Result<TagNames, QueryError> {
        Ok(self.tag_names_partial(tenant, req).await?.0)
    }

    /// [`Self::tag_names`], and whether the answer is partial (the scan reached
    /// `querier.max_tag_scan_bytes`).
    pub(crate) async fn tag_names_partial(
        &self,
        tenant: &TenantId,
        req: &TagsRequest,
    ) -> Result<(TagNames, bool), QueryError> {
        let filter = req.filter.clone();
        let limit = req.limit;
        let (summaries, to_scan) = self.summaries_for(tenant, req).await?;
        let scan = self
            .scan_sources(
                tenant,
                to_scan,
                None,
                move |_, batches, acc: &mut TagNames| {
                    let keep = matching_spans(filter.as_deref(), batches);
                    for rs in batches {
                        let mut any = false;
                        for ss in &rs.scope_spans {
                            let mut scope_used = false;
                            for s in ss.spans.iter().filter(|s| keep.allows(s)) {
                                any = true;
                                scope_used = true;
                                add_keys(acc, "span", &s.attributes, limit);
                                for e in &s.events {
                                    add_keys(acc, "event", &e.attributes, limit);
                                }
                                for l in &s.links {
                                    add_keys(acc, "link", &l.attributes, limit);
                                }
                            }
                            if scope_used {
                                if let Some(scope) = &ss.scope {
                                    add_keys(acc, "instrumentation", &scope.attributes, limit);
                                }
                            }
                        }
                        if any {
                            if let Some(r) = &rs.resource {
                                add_keys(acc, "resource", &r.attributes, limit);
                            }
                        }
                    }
                },
            )
            .await?;
        let partial = scan.partial;
        let mut out = TagNames::default();
        for s in scan.sources {
            for (scope, names) in s.value.0 {
                let set = out.0.entry(scope).or_default();
                for n in names {
                    if set.len() >= limit {
                        break;
                    }
                    set.insert(n);
                }
            }
        }
        for (_, summary) in &summaries {
            for scope in ATTRIBUTE_SCOPES {
                if let Some(names) = summary.scopes.get(scope) {
                    let set = out.0.entry(scope).or_default();
                    for n in names.keys() {
                        if set.len() >= limit {
                            break;
                        }
                        if !set.contains(n) {
                            set.insert(n.clone());
                        }
                    }
                }
            }
        }
        Ok((out, partial))
    }

    /// Splits the blocks a tag request covers into those whose `tags.json` answers it and
    /// those that must be scanned (a filter needs spans; old blocks have no summary).
    async fn summaries_for(
        &self,
        tenant: &TenantId,
        req: &TagsRequest,
    ) -> Result<SummarySplit, QueryError> {
        let blocks = self.blocks_in_range(tenant, req.range);
        if req.filter.is_some() {
            return Ok((Vec::new(), blocks));
        }
        let mut summaries = Vec::new();
        let mut to_scan = Vec::new();
        let mut fetched = stream::iter(blocks)
            .map(|meta| async move {
                let s = self.tag_summary(tenant, &meta).await;
                (meta, s)
            })
            .buffer_unordered(self.concurrent_blocks);
        while let Some((meta, s)) = fetched.next().await {
            match s? {
                Some(s) => summaries.push((meta, s)),
                None => to_scan.push(meta),
            }
        }
        Ok((summaries, to_scan))
    }

    /// A block's tag summary, cached; `None` when the block has none.
    async fn tag_summary(
        &self,
        tenant: &TenantId,
        meta: &BlockMeta,
    ) -> Result<Option<Arc<TagSummary>>, QueryError> {
        let bid = meta.block_id;
        if let Some(s) = self.tag_summaries.get(&bid) {
            return Ok(Some(s));
        }
        match self.backend.get(&block::tags_key(tenant, bid)).await {
            Ok(bytes) => {
                let s = Arc::new(
                    TagSummary::from_bytes(&bytes)
                        .map_err(|source| QueryError::Block { block: bid, source })?,
                );
                self.tag_summaries.insert(bid, s.clone());
                Ok(Some(s))
            }
            Err(BackendError::NotFound(_)) => Ok(None),
            Err(source) => Err(QueryError::Backend { block: bid, source }),
        }
    }

    pub(crate) async fn tag_values(
        &self,
        tenant: &TenantId,
        target: TagTarget,
        req: &TagsRequest,
    ) -> Result<BTreeSet<TagValue>, QueryError> {
        Ok(self.tag_values_partial(tenant, target, req).await?.0)
    }

    /// [`Self::tag_values`], and whether the answer is partial (the scan reached
    /// `querier.max_tag_scan_bytes`).
    pub(crate) async fn tag_values_partial(
        &self,
        tenant: &TenantId,
        target: TagTarget,
        req: &TagsRequest,
    ) -> Result<(BTreeSet<TagValue>, bool), QueryError> {
        let filter = req.filter.clone();
        let limit = req.limit;
        let (summaries, mut to_scan) = self.summaries_for(tenant, req).await?;
        let mut out = BTreeSet::new();
        for (meta, summary) in summaries {
            // A summary that dropped values of this tag cannot answer: scan that block.
            if !summary_values(&summary, &target, &mut out, limit) {
                to_scan.push(meta);
            }
        }
        // Without a filter only the target's columns are read; a filter may look at any.
        let columns = filter.is_none().then(|| columns_for(&target));
        let scan = self
            .scan_sources(
                tenant,
                to_scan,
                columns,
                move |_, batches, acc: &mut BTreeSet<TagValue>| {
                    let keep = matching_spans(filter.as_deref(), batches);
                    collect_values(&target, batches, &keep, acc, limit);
                },
            )
            .await?;
        for s in scan.sources {
            for v in s.value {
                if out.len() >= limit {
                    break;
                }
                out.insert(v);
            }
        }
        Ok((out, scan.partial))
    }
}

/// The leaf columns that hold a target's values (the scan adds what ties spans to parents).
fn columns_for(target: &TagTarget) -> Columns {
    use crate::block::paths::{RESOURCE, SCOPE, SPAN};
    let under = |prefix: String| -> Columns { Arc::new(move |p: &str| p.starts_with(&prefix)) };
    let leaf = |path: String| -> Columns { Arc::new(move |p: &str| p == path) };
    // Span attributes and dedicated span columns: the span's own leaves, not its events',
    // links' or status'.
    let span_own = |p: &str| {
        p.strip_prefix(SPAN).is_some_and(|l| {
            !(l.starts_with("events.") || l.starts_with("links.") || l.starts_with("status."))
        })
    };
    match target {
        TagTarget::Attribute { scope, .. } => match scope {
            Scope::Span => Arc::new(span_own),
            Scope::Resource => under(RESOURCE.into()),
            Scope::Unscoped => Arc::new(move |p: &str| span_own(p) || p.starts_with(RESOURCE)),
            Scope::Event => under(format!("{SPAN}events.")),
            Scope::Link => under(format!("{SPAN}links.")),
            Scope::Instrumentation => under(SCOPE.into()),
        },
        TagTarget::Intrinsic(i) => match i {
            Intrinsic::Name | Intrinsic::TraceRootName => leaf(format!("{SPAN}name")),
            Intrinsic::Kind => leaf(format!("{SPAN}kind")),
            Intrinsic::Status | Intrinsic::StatusMessage => under(format!("{SPAN}status.")),
            Intrinsic::EventName => leaf(format!("{SPAN}events.list.element.name")),
            Intrinsic::InstrumentationName => leaf(format!("{SCOPE}name")),
            Intrinsic::InstrumentationVersion => leaf(format!("{SCOPE}version")),
            Intrinsic::TraceRootService => under(RESOURCE.into()),
            // Nothing else is collected (see `intrinsic_value`).
            _ => Arc::new(|_: &str| false),
        },
    }
}

/// Blocks answered by their summary, and blocks to scan.
type SummarySplit = (Vec<(Arc<BlockMeta>, Arc<TagSummary>)>, Vec<Arc<BlockMeta>>);

/// Adds a target's values from a block summary; false when the summary cut them short.
fn summary_values(
    summary: &TagSummary,
    target: &TagTarget,
    out: &mut BTreeSet<TagValue>,
    limit: usize,
) -> bool {
    let places: Vec<(&str, String)> = match target {
        TagTarget::Attribute { scope, name } => match scope {
            Scope::Unscoped => vec![("span", name.clone()), ("resource", name.clone())],
            Scope::Span => vec![("span", name.clone())],
            Scope::Resource => vec![("resource", name.clone())],
            Scope::Event => vec![("event", name.clone())],
            Scope::Link => vec![("link", name.clone())],
            Scope::Instrumentation => vec![("instrumentation", name.clone())],
        },
        TagTarget::Intrinsic(i) => match summary_intrinsic(*i) {
            Some(n) => vec![("intrinsic", n.to_owned())],
            // Not summarised (IDs, durations): nothing to offer, as a scan would find.
            None => return true,
        },
    };
    for (scope, name) in places {
        let Some(values) = summary.scopes.get(scope).and_then(|m| m.get(&name)) else {
            continue;
        };
        if values.truncated {
            return false;
        }
        for (kind, value) in &values.values {
            if out.len() >= limit {
                return true;
            }
            let kind = match kind.as_str() {
                "string" => "string",
                "int" => "int",
                "float" => "float",
                "bool" => "bool",
                "keyword" => "keyword",
                _ => continue,
            };
            out.insert(TagValue {
                kind,
                value: value.clone(),
            });
        }
    }
    true
}

/// The summary's name for an intrinsic whose values are worth offering.
fn summary_intrinsic(i: Intrinsic) -> Option<&'static str> {
    Some(match i {
        Intrinsic::Name => "name",
        Intrinsic::Status => "status",
        Intrinsic::StatusMessage => "statusMessage",
        Intrinsic::Kind => "kind",
        Intrinsic::EventName => "event:name",
        Intrinsic::InstrumentationName => "instrumentation:name",
        Intrinsic::InstrumentationVersion => "instrumentation:version",
        Intrinsic::TraceRootName => "rootName",
        Intrinsic::TraceRootService => "rootServiceName",
        _ => return None,
    })
}

/// Which spans of a trace count: all of them, or those a filter matched.
enum Keep {
    All,
    Spans(HashSet<Vec<u8>>),
}

impl Keep {
    fn allows(&self, s: &Span) -> bool {
        match self {
            Keep::All => true,
            Keep::Spans(ids) => ids.contains(&s.span_id),
        }
    }
}

fn matching_spans(filter: Option<&Query>, batches: &[ResourceSpans]) -> Keep {
    let Some(q) = filter else { return Keep::All };
    let trace = OtlpTrace::new(batches);
    let mut ids = HashSet::new();
    if let Ok(sets) = engine::evaluate(q, &trace) {
        for set in sets {
            for i in set.spans {
                ids.insert(trace.span(i).span_id.clone());
            }
        }
    }
    Keep::Spans(ids)
}

fn add_keys(acc: &mut TagNames, scope: &'static str, attrs: &[KeyValue], limit: usize) {
    if attrs.is_empty() {
        return;
    }
    let set = acc.0.entry(scope).or_default();
    for kv in attrs {
        if set.len() >= limit {
            return;
        }
        if !set.contains(&kv.key) {
            set.insert(kv.key.clone());
        }
    }
}

fn typed(v: &AnyValue) -> Option<TagValue> {
    use any_value::Value as V;
    Some(match v.value.as_ref()? {
        V::StringValue(s) => TagValue {
            kind: "string",
            value: s.clone(),
        },
        V::IntValue(i) => TagValue {
            kind: "int",
            value: i.to_string(),
        },
        V::DoubleValue(d) => TagValue {
            kind: "float",
            value: d.to_string(),
        },
        V::BoolValue(b) => TagValue {
            kind: "bool",
            value: b.to_string(),
        },
        _ => return None,
    })
}

fn push(acc: &mut BTreeSet<TagValue>, v: TagValue, limit: usize) {
    if acc.len() < limit {
        acc.insert(v);
    }
}

fn attr_values(acc: &mut BTreeSet<TagValue>, attrs: &[KeyValue], name: &str, limit: usize) {
    for kv in attrs.iter().filter(|kv| kv.key == name) {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            // An array offers each scalar element with its own type, as Tempo does.
            Some(any_value::Value::ArrayValue(a)) => {
                for v in a.values.iter().filter_map(typed) {
                    push(acc, v, limit);
                }
            }
            _ => {
                if let Some(v) = kv.value.as_ref().and_then(typed) {
                    push(acc, v, limit);
                }
            }
        }
    }
}

fn keyword(v: &str) -> TagValue {
    TagValue {
        kind: "keyword",
        value: v.to_owned(),
    }
}

fn string(v: &str) -> TagValue {
    TagValue {
        kind: "string",
        value: v.to_owned(),
    }
}

fn collect_values(
    target: &TagTarget,
    batches: &[ResourceSpans],
    keep: &Keep,
    acc: &mut BTreeSet<TagValue>,
    limit: usize,
) {
    for rs in batches {
        for ss in &rs.scope_spans {
            for s in ss.spans.iter().filter(|s| keep.allows(s)) {
                match target {
                    TagTarget::Attribute { scope, name } => match scope {
                        Scope::Span => attr_values(acc, &s.attributes, name, limit),
                        Scope::Resource => {
                            if let Some(r) = &rs.resource {
                                attr_values(acc, &r.attributes, name, limit);
                            }
                        }
                        Scope::Unscoped => {
                            attr_values(acc, &s.attributes, name, limit);
                            if let Some(r) = &rs.resource {
                                attr_values(acc, &r.attributes, name, limit);
                            }
                        }
                        Scope::Event => {
                            for e in &s.events {
                                attr_values(acc, &e.attributes, name, limit);
                            }
                        }
                        Scope::Link => {
                            for l in &s.links {
                                attr_values(acc, &l.attributes, name, limit);
                            }
                        }
                        Scope::Instrumentation => {
                            if let Some(sc) = &ss.scope {
                                attr_values(acc, &sc.attributes, name, limit);
                            }
                        }
                    },
                    TagTarget::Intrinsic(i) => intrinsic_value(*i, rs, ss, s, acc, limit),
                }
            }
        }
    }
}

fn intrinsic_value(
    i: Intrinsic,
    rs: &ResourceSpans,
    ss: &crate::model::ScopeSpans,
    s: &Span,
    acc: &mut BTreeSet<TagValue>,
    limit: usize,
) {
    match i {
        Intrinsic::Name => push(acc, string(&s.name), limit),
        Intrinsic::Status => {
            push(acc, keyword(status_name(s)), limit);
        }
        Intrinsic::StatusMessage => {
            if let Some(st) = s.status.as_ref().filter(|st| !st.message.is_empty()) {
                push(acc, string(&st.message), limit);
            }
        }
        Intrinsic::Kind => {
            push(acc, keyword(kind_name(s)), limit);
        }
        Intrinsic::EventName => {
            for e in &s.events {
                push(acc, string(&e.name), limit);
            }
        }
        Intrinsic::InstrumentationName => {
            if let Some(sc) = &ss.scope {
                push(acc, string(&sc.name), limit);
            }
        }
        Intrinsic::InstrumentationVersion => {
            if let Some(sc) = &ss.scope {
                push(acc, string(&sc.version), limit);
            }
        }
        // Root spans only: a span with no parent.
        Intrinsic::TraceRootName if s.parent_span_id.is_empty() => {
            push(acc, string(&s.name), limit)
        }
        Intrinsic::TraceRootService if s.parent_span_id.is_empty() => {
            let svc = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(typed);
            if let Some(svc) = svc {
                push(acc, svc, limit);
            }
        }
        // Durations and IDs are not useful autocomplete values.
        _ => {}
    }
}

#[cfg(test)]
mod tests;
