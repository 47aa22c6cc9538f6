//! Per-block tag summaries (`tags.json`): the attribute names of every scope and a bounded
//! set of typed values per name, written at flush so autocomplete reads one small object per
//! block instead of scanning it. A name with more distinct values than the bound is marked
//! truncated; readers scan the block for that name's values.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ahash::RandomState;
use serde::{Deserialize, Serialize};

use prost::Message;

use super::wire_rows::{Attr, Value, WireRows};
use super::BlockError;
use crate::model::{
    any_value, kind_code_name, kind_name, status_code_name, status_name, AnyValue, KeyValue,
    ResourceSpans, TenantId,
};

pub const TAGS_FILE: &str = "tags.json";
/// Distinct values kept per tag name.
pub const MAX_VALUES_PER_TAG: usize = 1000;
/// Longer values are not worth offering for autocomplete.
const MAX_VALUE_LEN: usize = 256;

pub fn tags_key(tenant: &TenantId, id: uuid::Uuid) -> String {
    format!("{}/{}/{}", tenant.as_str(), id, TAGS_FILE)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TagValues {
    /// `(type, value)` with Tempo's type names: string, int, float, bool, keyword.
    pub values: BTreeSet<(String, String)>,
    /// More distinct values existed than were kept.
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TagSummary {
    /// scope (`resource`, `span`, `event`, `link`, `instrumentation`, `intrinsic`) → name → values
    pub scopes: BTreeMap<String, BTreeMap<String, TagValues>>,
}

impl TagSummary {
    pub fn from_bytes(b: &[u8]) -> Result<Self, BlockError> {
        Ok(serde_json::from_slice(b)?)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The tag kinds, in the order of [`Collected::values`].
const KINDS: [&str; 5] = ["string", "int", "float", "bool", "keyword"];
const STRING: usize = 0;
const INT: usize = 1;
const FLOAT: usize = 2;
const BOOL: usize = 3;
const KEYWORD: usize = 4;

/// One name's values while collecting: hash sets per kind, so a value seen before (most
/// are) costs one hash lookup and no allocation.
#[derive(Default)]
struct Collected {
    values: [HashSet<String, RandomState>; KINDS.len()],
    count: usize,
    truncated: bool,
}

/// Builds a [`TagSummary`] from a block's traces. A cut feeds it every span's attributes,
/// so it hashes and never allocates for a name or value it already holds (the ordered
/// maps of the summary cost a string comparison per tree level and an allocation per
/// insert attempt: about a sixth of ingest CPU, by perf, before this).
#[derive(Default)]
pub struct TagCollector {
    /// A handful of scopes: found by a short scan, not a hash.
    scopes: Vec<(&'static str, Names)>,
    /// Ints and floats are formatted here before the lookup.
    buf: String,
    /// Resources whose attributes were collected, by their encoded bytes: a block holds
    /// the same few resources in trace after trace (wire path only).
    resources: HashSet<Vec<u8>, RandomState>,
    /// Status and kind keywords seen (a handful of values): noted per span with a short
    /// scan, added to the summary at the end.
    keywords: Vec<(&'static str, &'static str)>,
}

/// One scope's names: a name seen before costs one hash lookup.
#[derive(Default)]
struct Names {
    index: HashMap<String, usize, RandomState>,
    collected: Vec<Collected>,
}

/// Resources remembered by [`TagCollector`]; past it, every trace's are collected again.
const MAX_SEEN_RESOURCES: usize = 4096;

impl TagCollector {
    /// Adds one trace's tags.
    pub fn add_trace(&mut self, batches: &[ResourceSpans]) {
        for rs in batches {
            let resource_attrs = rs
                .resource
                .as_ref()
                .map(|r| &r.attributes[..])
                .unwrap_or(&[]);
            self.add_attrs("resource", resource_attrs);
            for ss in &rs.scope_spans {
                if let Some(scope) = &ss.scope {
                    self.add_attrs("instrumentation", &scope.attributes);
                    self.add_intrinsic("instrumentation:name", STRING, &scope.name);
                    self.add_intrinsic("instrumentation:version", STRING, &scope.version);
                }
                for s in &ss.spans {
                    self.add_attrs("span", &s.attributes);
                    for e in &s.events {
                        self.add_attrs("event", &e.attributes);
                        self.add_intrinsic("event:name", STRING, &e.name);
                    }
                    for l in &s.links {
                        self.add_attrs("link", &l.attributes);
                    }
                    self.add_intrinsic("name", STRING, &s.name);
                    self.note_keyword("status", status_name(s));
                    if let Some(msg) = s.status.as_ref().map(|st| &st.message) {
                        self.add_intrinsic("statusMessage", STRING, msg);
                    }
                    self.note_keyword("kind", kind_name(s));
                    if s.parent_span_id.is_empty() {
                        self.add_intrinsic("rootName", STRING, &s.name);
                        if let Some(v) = resource_attrs
                            .iter()
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| kv.value.as_ref())
                        {
                            self.add_typed("intrinsic", "rootServiceName", v);
                        }
                    }
                }
            }
        }
    }

    /// [`TagCollector::add_trace`] for a trace read off the wire.
    pub(crate) fn add_wire(&mut self, rows: &WireRows<'_>) {
        for rs in &rows.resources {
            let resource_attrs = rs
                .resource
                .as_ref()
                .map_or(&[][..], |r| rows.attrs(&r.attrs));
            if self.resources.contains(rs.bytes) {
                // Its attributes are in already.
            } else {
                if self.resources.len() < MAX_SEEN_RESOURCES {
                    self.resources.insert(rs.bytes.to_vec());
                }
                self.add_wire_attrs("resource", resource_attrs);
            }
            for ss in &rs.scopes {
                if let Some(scope) = &ss.scope {
                    self.add_wire_attrs("instrumentation", rows.attrs(&scope.attrs));
                    self.add_intrinsic("instrumentation:name", STRING, scope.name);
                    self.add_intrinsic("instrumentation:version", STRING, scope.version);
                }
                for &i in &ss.spans {
                    let s = &rows.spans[i];
                    self.add_wire_attrs("span", rows.attrs(&s.attrs));
                    for e in &rows.events[s.events.clone()] {
                        self.add_wire_attrs("event", rows.attrs(&e.attrs));
                        self.add_intrinsic("event:name", STRING, e.name);
                    }
                    for l in &rows.links[s.links.clone()] {
                        self.add_wire_attrs("link", rows.attrs(&l.attrs));
                    }
                    self.add_intrinsic("name", STRING, s.name);
                    let code = s.status.map_or(0, |(code, _)| code);
                    self.note_keyword("status", status_code_name(code));
                    if let Some((_, msg)) = s.status {
                        self.add_intrinsic("statusMessage", STRING, msg);
                    }
                    self.note_keyword("kind", kind_code_name(s.kind));
                    if s.parent_span_id.is_empty() {
                        self.add_intrinsic("rootName", STRING, s.name);
                        if let Some(v) = resource_attrs
                            .iter()
                            .find(|a| a.key == "service.name")
                            .and_then(|a| a.value)
                        {
                            self.add_wire_value("intrinsic", "rootServiceName", v);
                        }
                    }
                }
            }
        }
    }

    fn add_wire_attrs(&mut self, scope: &'static str, attrs: &[Attr<'_>]) {
        for a in attrs {
            let Some(value) = a.value else {
                self.entry(scope, a.key);
                continue;
            };
            if self.add_wire_value(scope, a.key, value) {
                continue;
            }
            self.entry(scope, a.key);
            // Rare: the elements go the decoded way.
            if let Value::Array(body) = value {
                if let Ok(AnyValue {
                    value: Some(any_value::Value::ArrayValue(array)),
                }) = AnyValue::decode(body)
                {
                    for v in &array.values {
                        self.add_typed(scope, a.key, v);
                    }
                }
            }
        }
    }

    /// Adds a scalar value with its type; false for anything else (nothing added).
    fn add_wire_value(&mut self, scope: &'static str, name: &str, v: Value<'_>) -> bool {
        use std::fmt::Write;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let kind = match v {
            Value::Str(s) => {
                self.add(scope, name, STRING, s);
                self.buf = buf;
                return true;
            }
            Value::Int(i) => {
                let _ = write!(buf, "{i}");
                INT
            }
            Value::Double(d) => {
                let _ = write!(buf, "{d}");
                FLOAT
            }
            Value::Bool(b) => {
                buf.push_str(if b { "true" } else { "false" });
                BOOL
            }
            _ => {
                self.buf = buf;
                return false;
            }
        };
        self.add(scope, name, kind, &buf);
        self.buf = buf;
        true
    }

    fn note_keyword(&mut self, name: &'static str, value: &'static str) {
        if !self.keywords.contains(&(name, value)) {
            self.keywords.push((name, value));
        }
    }

    /// The summary, names and values sorted.
    pub fn finish(mut self) -> TagSummary {
        for (name, value) in std::mem::take(&mut self.keywords) {
            self.add_intrinsic(name, KEYWORD, value);
        }
        let scopes = self
            .scopes
            .into_iter()
            .map(|(scope, names)| {
                let mut collected: Vec<Option<Collected>> =
                    names.collected.into_iter().map(Some).collect();
                let names = names
                    .index
                    .into_iter()
                    .filter_map(|(name, i)| Some((name, collected.get_mut(i)?.take()?)))
                    .map(|(name, c)| {
                        let values = c
                            .values
                            .into_iter()
                            .enumerate()
                            .flat_map(|(k, vs)| {
                                vs.into_iter().map(move |v| (KINDS[k].to_owned(), v))
                            })
                            .collect();
                        let truncated = c.truncated;
                        (name, TagValues { values, truncated })
                    })
                    .collect();
                (scope.to_owned(), names)
            })
            .collect();
        TagSummary { scopes }
    }

    fn add_attrs(&mut self, scope: &'static str, attrs: &[KeyValue]) {
        use any_value::Value as V;
        for kv in attrs {
            let Some(value) = kv.value.as_ref() else {
                self.entry(scope, &kv.key);
                continue;
            };
            if self.add_typed(scope, &kv.key, value) {
                continue;
            }
            // The name is a tag whatever its type; arrays offer each scalar element with
            // its own type, as Tempo does. Maps and bytes offer no values.
            self.entry(scope, &kv.key);
            if let Some(V::ArrayValue(a)) = value.value.as_ref() {
                for v in &a.values {
                    self.add_typed(scope, &kv.key, v);
                }
            }
        }
    }

    /// Adds a scalar value with its type; false for anything else (nothing added).
    fn add_typed(&mut self, scope: &'static str, name: &str, v: &AnyValue) -> bool {
        use any_value::Value as V;
        let v = match v.value.as_ref() {
            Some(V::StringValue(s)) => Value::Str(s),
            Some(V::IntValue(i)) => Value::Int(*i),
            Some(V::DoubleValue(d)) => Value::Double(*d),
            Some(V::BoolValue(b)) => Value::Bool(*b),
            _ => return false,
        };
        self.add_wire_value(scope, name, v)
    }

    fn add_intrinsic(&mut self, name: &str, kind: usize, value: &str) {
        if !value.is_empty() {
            self.add("intrinsic", name, kind, value);
        }
    }

    fn entry(&mut self, scope: &'static str, name: &str) -> &mut Collected {
        let at = match self.scopes.iter().position(|(s, _)| *s == scope) {
            Some(at) => at,
            None => {
                self.scopes.push((scope, Names::default()));
                self.scopes.len() - 1
            }
        };
        let names = &mut self.scopes[at].1;
        // Look up before allocating the key: most calls hit existing entries.
        let i = match names.index.get(name) {
            Some(&i) => i,
            None => {
                names.collected.push(Collected::default());
                let i = names.collected.len() - 1;
                names.index.insert(name.to_owned(), i);
                i
            }
        };
        &mut names.collected[i]
    }

    fn add(&mut self, scope: &'static str, name: &str, kind: usize, value: &str) {
        let e = self.entry(scope, name);
        if e.truncated || value.len() > MAX_VALUE_LEN {
            e.truncated |= value.len() > MAX_VALUE_LEN;
            return;
        }
        if e.values[kind].contains(value) {
            return;
        }
        if e.count >= MAX_VALUES_PER_TAG {
            e.truncated = true;
            return;
        }
        e.values[kind].insert(value.to_owned());
        e.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::synth;

    #[test]
    fn summarises_scopes_and_bounds_values() {
        let mut c = TagCollector::default();
        for t in synth::realistic_traces(200, 7) {
            c.add_trace(&t.batches);
        }
        let s = c.finish();
        let resource = &s.scopes["resource"];
        let services = &resource["service.name"];
        assert!(!services.truncated);
        assert!(services
            .values
            .iter()
            .any(|(k, v)| k == "string" && v == "checkout"));
        assert!(s.scopes["span"].contains_key("http.route"));
        assert!(s.scopes["intrinsic"]["status"]
            .values
            .contains(&("keyword".to_owned(), "error".to_owned())));
        // High-cardinality values are cut, and say so.
        let mut big = TagCollector::default();
        for i in 0..(MAX_VALUES_PER_TAG + 10) {
            big.add("span", "id", STRING, &format!("v{i}"));
            // Values already held are no news, even past the bound.
            big.add("span", "id", STRING, "v0");
        }
        let big = big.finish();
        assert!(big.scopes["span"]["id"].truncated);
        assert_eq!(big.scopes["span"]["id"].values.len(), MAX_VALUES_PER_TAG);
        let back = TagSummary::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
        assert!(TagSummary::from_bytes(b"not json").is_err());
    }

    /// An array attribute offers each scalar element with its own type.
    #[test]
    fn array_elements_are_typed_values() {
        use crate::model::{ArrayValue, Resource, ScopeSpans, Span};
        use any_value::Value as V;
        let any = |v: V| AnyValue { value: Some(v) };
        let arr = |vals: Vec<V>| {
            any(V::ArrayValue(ArrayValue {
                values: vals.into_iter().map(any).collect(),
            }))
        };
        let span = Span {
            name: "s".into(),
            attributes: vec![
                KeyValue {
                    key: "tags".into(),
                    value: Some(arr(vec![
                        V::StringValue("a".into()),
                        V::StringValue("b".into()),
                    ])),
                    ..Default::default()
                },
                KeyValue {
                    key: "mixed".into(),
                    value: Some(arr(vec![
                        V::IntValue(7),
                        V::DoubleValue(1.5),
                        V::BoolValue(true),
                    ])),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let batches = vec![ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }];
        let mut c = TagCollector::default();
        c.add_trace(&batches);
        let s = c.finish();
        let pairs = |name: &str| -> Vec<(String, String)> {
            s.scopes["span"][name].values.iter().cloned().collect()
        };
        let own = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(pairs("tags"), vec![own("string", "a"), own("string", "b")]);
        assert_eq!(
            pairs("mixed"),
            vec![own("bool", "true"), own("float", "1.5"), own("int", "7")]
        );
    }
}
