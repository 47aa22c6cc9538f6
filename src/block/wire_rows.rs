//! A live trace's encoded chunks read as the block writer and the tag summary need them,
//! without decoding into owned structs: strings and bytes are borrowed from the chunks,
//! and fragments are combined as [`crate::model::combine`] combines decoded ones
//! (resources and scopes folded by their bytes, a span seen twice kept once).
//!
//! Decoding a cut's traces into prost structs (a `String` or `Vec` per attribute key,
//! value and ID) and combining them was about a sixth of sustained ingest CPU. This reads
//! exactly the fields OTLP traces define; anything else (an unknown field, a singular
//! field given twice, which prost would merge, a field of the wrong wire type, invalid
//! UTF-8) makes [`WireRows::parse`] answer `None`, and the caller decodes instead, so what
//! the block holds never depends on which way a trace went.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use ahash::RandomState;
use prost::encoding::encoded_len_varint;
use prost::Message;

use crate::model::combine::span_key;
use crate::model::walk::{utf8, Field, Fields};
use crate::model::AnyValue;

/// An attribute value, strings and bytes borrowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Value<'a> {
    /// An `AnyValue` with no value set.
    Empty,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// The whole `AnyValue` body, checked to decode.
    Array(&'a [u8]),
    /// The whole `AnyValue` body, checked to decode.
    Kvlist(&'a [u8]),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Attr<'a> {
    pub(crate) key: &'a str,
    /// `None`: the `KeyValue` has no value field.
    pub(crate) value: Option<Value<'a>>,
}

pub(crate) struct Event<'a> {
    pub(crate) time: u64,
    pub(crate) name: &'a str,
    pub(crate) attrs: Range<usize>,
    pub(crate) dropped: u32,
}

pub(crate) struct Link<'a> {
    pub(crate) trace_id: &'a [u8],
    pub(crate) span_id: &'a [u8],
    pub(crate) trace_state: &'a str,
    pub(crate) flags: u32,
    pub(crate) attrs: Range<usize>,
    pub(crate) dropped: u32,
}

#[derive(Default)]
pub(crate) struct Span<'a> {
    pub(crate) trace_id: &'a [u8],
    pub(crate) span_id: &'a [u8],
    pub(crate) trace_state: &'a str,
    pub(crate) parent_span_id: &'a [u8],
    pub(crate) flags: u32,
    pub(crate) name: &'a str,
    pub(crate) kind: i32,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) attrs: Range<usize>,
    pub(crate) dropped_attrs: u32,
    pub(crate) events: Range<usize>,
    pub(crate) dropped_events: u32,
    pub(crate) links: Range<usize>,
    pub(crate) dropped_links: u32,
    /// Code and message; `None` when the span has no status field.
    pub(crate) status: Option<(i32, &'a str)>,
}

pub(crate) struct Scope<'a> {
    pub(crate) name: &'a str,
    pub(crate) version: &'a str,
    pub(crate) attrs: Range<usize>,
    pub(crate) dropped: u32,
}

pub(crate) struct ScopeSpans<'a> {
    pub(crate) scope: Option<Scope<'a>>,
    pub(crate) schema_url: &'a str,
    /// Indexes into [`WireRows::spans`].
    pub(crate) spans: Vec<usize>,
    /// Encoded length of the scope message, when there is one.
    scope_len: usize,
    /// The scope's encoded body (empty when there is none): equal bytes, equal scope.
    bytes: &'a [u8],
}

pub(crate) struct Resource {
    pub(crate) attrs: Range<usize>,
    pub(crate) dropped: u32,
}

pub(crate) struct ResourceSpans<'a> {
    pub(crate) resource: Option<Resource>,
    /// The resource's encoded body (empty when there is none): equal bytes, equal resource.
    pub(crate) bytes: &'a [u8],
    pub(crate) schema_url: &'a str,
    pub(crate) scopes: Vec<ScopeSpans<'a>>,
    resource_len: usize,
}

/// One trace, combined; lists are ranges into the flat vectors.
#[derive(Default)]
pub(crate) struct WireRows<'a> {
    pub(crate) resources: Vec<ResourceSpans<'a>>,
    pub(crate) spans: Vec<Span<'a>>,
    pub(crate) attrs: Vec<Attr<'a>>,
    pub(crate) events: Vec<Event<'a>>,
    pub(crate) links: Vec<Link<'a>>,
    /// Encoded length of each kept span.
    span_lens: Vec<usize>,
}

type Keys<K> = HashMap<K, usize, RandomState>;

/// Resources (and scopes of a resource) found by comparing their bytes with each one
/// seen, up to this many; by a map beyond. A trace holds a few: hashing each resource's
/// whole body (and growing three maps per trace) was 2.4% of sustained ingest CPU.
const LINEAR: usize = 8;

/// The spans seen in a trace, by span ID and kind: one set per thread, kept between traces
/// so it is not grown anew for each.
type Seen = HashSet<([u8; 8], i32), RandomState>;

thread_local! {
    static SEEN: std::cell::RefCell<Seen> = std::cell::RefCell::default();
}

/// A set that grew past this many spans is not kept for the next trace.
const SEEN_KEPT: usize = 1 << 14;

/// Folding state while parsing: keys of the resources and scopes seen (in maps only once
/// there are more than [`LINEAR`]), spans seen.
#[derive(Default)]
struct Combine<'a> {
    resources: Keys<(&'a [u8], &'a str)>,
    /// Per resource, by index; grown only for a resource past [`LINEAR`] scopes.
    scopes: Vec<Keys<(&'a [u8], &'a str)>>,
    seen: Seen,
}

/// The index of the entry whose key is `key` among `len` entries: by `key_of` while they
/// are few, else through the map `map` gives (filled from every entry not in it yet).
fn find<'m, K: std::hash::Hash + Eq + 'm>(
    map: impl FnOnce() -> &'m mut Keys<K>,
    len: usize,
    key: &K,
    key_of: impl Fn(usize) -> K,
) -> Option<usize> {
    if len <= LINEAR {
        return (0..len).find(|&i| key_of(i) == *key);
    }
    let map = map();
    if map.len() < len {
        // Entries only ever grow, and each is added here once.
        for i in map.len()..len {
            map.insert(key_of(i), i);
        }
    }
    map.get(key).copied()
}

impl<'a> WireRows<'a> {
    /// The trace held in `chunks` (each a `TracesData` body), combined; `None` when a
    /// decode would read something this does not (see the module docs).
    pub(crate) fn parse<C: AsRef<[u8]>>(chunks: &'a [C]) -> Option<Self> {
        let mut rows = WireRows::default();
        let mut c = Combine {
            seen: SEEN.with(|s| std::mem::take(&mut *s.borrow_mut())),
            ..Combine::default()
        };
        c.seen.clear();
        let parsed = chunks.iter().try_for_each(|chunk| {
            Fields(chunk.as_ref()).try_for_each(|f| match f? {
                (1, Field::Len(rs)) => rows.resource_spans(rs, &mut c),
                _ => None,
            })
        });
        if c.seen.capacity() <= SEEN_KEPT {
            SEEN.with(|s| *s.borrow_mut() = c.seen);
        }
        parsed?;
        rows.resources.retain(|r| !r.scopes.is_empty());
        Some(rows)
    }

    /// What prost's `encoded_len` sums to over the combined `ResourceSpans` (the bytes of
    /// each message, without its own key and length), for canonical input.
    pub(crate) fn encoded_len(&self) -> usize {
        let field = |len: usize| 1 + encoded_len_varint(len as u64) + len;
        let url = |s: &str| if s.is_empty() { 0 } else { field(s.len()) };
        self.resources
            .iter()
            .map(|rs| {
                let scopes: usize = rs
                    .scopes
                    .iter()
                    .map(|ss| {
                        let spans: usize = ss.spans.iter().map(|&i| field(self.span_lens[i])).sum();
                        let scope = ss.scope.as_ref().map_or(0, |_| field(ss.scope_len));
                        field(scope + spans + url(ss.schema_url))
                    })
                    .sum();
                let resource = rs.resource.as_ref().map_or(0, |_| field(rs.resource_len));
                resource + scopes + url(rs.schema_url)
            })
            .sum()
    }

    pub(crate) fn attrs(&self, r: &Range<usize>) -> &[Attr<'a>] {
        &self.attrs[r.clone()]
    }

    fn resource_spans(&mut self, body: &'a [u8], c: &mut Combine<'a>) -> Option<()> {
        let (mut resource, mut url) = (None, None);
        for f in Fields(body) {
            match f? {
                (1, Field::Len(r)) if resource.is_none() => resource = Some(r),
                (2, Field::Len(_)) => {}
                (3, Field::Len(u)) if url.is_none() => url = Some(utf8(u)?),
                _ => return None,
            }
        }
        let url = url.unwrap_or("");
        let key = (resource.unwrap_or(&[]), url);
        let found = find(
            || &mut c.resources,
            self.resources.len(),
            &key,
            |i| (self.resources[i].bytes, self.resources[i].schema_url),
        );
        let ri = match found {
            Some(i) => i,
            None => {
                let parsed = match resource {
                    Some(r) => Some(self.resource(r)?),
                    None => None,
                };
                self.resources.push(ResourceSpans {
                    resource: parsed,
                    bytes: key.0,
                    schema_url: url,
                    scopes: Vec::new(),
                    resource_len: resource.map_or(0, <[u8]>::len),
                });
                self.resources.len() - 1
            }
        };
        for ss in Fields::each(body, 2) {
            self.scope_spans(ri, ss, c)?;
        }
        Some(())
    }

    fn scope_spans(&mut self, ri: usize, body: &'a [u8], c: &mut Combine<'a>) -> Option<()> {
        let (mut scope, mut url) = (None, None);
        for f in Fields(body) {
            match f? {
                (1, Field::Len(s)) if scope.is_none() => scope = Some(s),
                (2, Field::Len(_)) => {}
                (3, Field::Len(u)) if url.is_none() => url = Some(utf8(u)?),
                _ => return None,
            }
        }
        let mut kept = Vec::new();
        for span in Fields::each(body, 2) {
            let s = self.span(span)?;
            if c.seen.insert((span_key(s.span_id), s.kind)) {
                kept.push(self.spans.len());
                self.spans.push(s);
                self.span_lens.push(span.len());
            }
        }
        if kept.is_empty() {
            return Some(());
        }
        let url = url.unwrap_or("");
        let key = (scope.unwrap_or(&[]), url);
        let scopes = &self.resources[ri].scopes;
        let maps = &mut c.scopes;
        let found = find(
            move || {
                if maps.len() <= ri {
                    maps.resize_with(ri + 1, Keys::default);
                }
                &mut maps[ri]
            },
            scopes.len(),
            &key,
            |i| (scopes[i].bytes, scopes[i].schema_url),
        );
        match found {
            Some(si) => self.resources[ri].scopes[si].spans.extend(kept),
            None => {
                let parsed = match scope {
                    Some(s) => Some(self.scope(s)?),
                    None => None,
                };
                let scopes = &mut self.resources[ri].scopes;
                scopes.push(ScopeSpans {
                    scope: parsed,
                    schema_url: url,
                    spans: kept,
                    scope_len: scope.map_or(0, <[u8]>::len),
                    bytes: key.0,
                });
            }
        }
        Some(())
    }

    fn resource(&mut self, body: &'a [u8]) -> Option<Resource> {
        let start = self.attrs.len();
        let mut dropped = None;
        for f in Fields(body) {
            match f? {
                (1, Field::Len(kv)) => self.attr(kv)?,
                (2, Field::Varint(v)) if dropped.is_none() => dropped = Some(v as u32),
                // Entity refs (3) and anything newer: decoded instead.
                _ => return None,
            }
        }
        Some(Resource {
            attrs: start..self.attrs.len(),
            dropped: dropped.unwrap_or(0),
        })
    }

    fn scope(&mut self, body: &'a [u8]) -> Option<Scope<'a>> {
        let start = self.attrs.len();
        let (mut name, mut version, mut dropped) = (None, None, None);
        for f in Fields(body) {
            match f? {
                (1, Field::Len(b)) if name.is_none() => name = Some(utf8(b)?),
                (2, Field::Len(b)) if version.is_none() => version = Some(utf8(b)?),
                (3, Field::Len(kv)) => self.attr(kv)?,
                (4, Field::Varint(v)) if dropped.is_none() => dropped = Some(v as u32),
                _ => return None,
            }
        }
        Some(Scope {
            name: name.unwrap_or(""),
            version: version.unwrap_or(""),
            attrs: start..self.attrs.len(),
            dropped: dropped.unwrap_or(0),
        })
    }

    fn span(&mut self, body: &'a [u8]) -> Option<Span<'a>> {
        let mut s = Span::default();
        let attrs = self.attrs.len();
        // Attributes, events and links are read in a second pass so each list is one
        // contiguous range even when the wire interleaves them.
        let mut seen = 0u32;
        let (mut events, mut links) = (false, false);
        for f in Fields(body) {
            let (n, f) = f?;
            if !matches!(n, 9 | 11 | 13) {
                if n > 16 || seen & (1 << n) != 0 {
                    return None;
                }
                seen |= 1 << n;
            }
            match (n, f) {
                (1, Field::Len(b)) => s.trace_id = b,
                (2, Field::Len(b)) => s.span_id = b,
                (3, Field::Len(b)) => s.trace_state = utf8(b)?,
                (4, Field::Len(b)) => s.parent_span_id = b,
                (5, Field::Len(b)) => s.name = utf8(b)?,
                (6, Field::Varint(v)) => s.kind = v as i32,
                (7, Field::Fixed64(v)) => s.start = v,
                (8, Field::Fixed64(v)) => s.end = v,
                (9, Field::Len(kv)) => self.attr(kv)?,
                (10, Field::Varint(v)) => s.dropped_attrs = v as u32,
                (11, Field::Len(_)) => events = true,
                (12, Field::Varint(v)) => s.dropped_events = v as u32,
                (13, Field::Len(_)) => links = true,
                (14, Field::Varint(v)) => s.dropped_links = v as u32,
                (15, Field::Len(b)) => s.status = Some(status(b)?),
                (16, Field::Fixed32(v)) => s.flags = v,
                _ => return None,
            }
        }
        s.attrs = attrs..self.attrs.len();
        let first = self.events.len();
        if events {
            for e in Fields::each(body, 11) {
                let ev = self.event(e)?;
                self.events.push(ev);
            }
        }
        s.events = first..self.events.len();
        let first = self.links.len();
        if links {
            for l in Fields::each(body, 13) {
                let link = self.link(l)?;
                self.links.push(link);
            }
        }
        s.links = first..self.links.len();
        Some(s)
    }

    fn event(&mut self, body: &'a [u8]) -> Option<Event<'a>> {
        let start = self.attrs.len();
        let (mut time, mut name, mut dropped) = (None, None, None);
        for f in Fields(body) {
            match f? {
                (1, Field::Fixed64(v)) if time.is_none() => time = Some(v),
                (2, Field::Len(b)) if name.is_none() => name = Some(utf8(b)?),
                (3, Field::Len(kv)) => self.attr(kv)?,
                (4, Field::Varint(v)) if dropped.is_none() => dropped = Some(v as u32),
                _ => return None,
            }
        }
        Some(Event {
            time: time.unwrap_or(0),
            name: name.unwrap_or(""),
            attrs: start..self.attrs.len(),
            dropped: dropped.unwrap_or(0),
        })
    }

    fn link(&mut self, body: &'a [u8]) -> Option<Link<'a>> {
        let start = self.attrs.len();
        let mut l = Link {
            trace_id: &[],
            span_id: &[],
            trace_state: "",
            flags: 0,
            attrs: 0..0,
            dropped: 0,
        };
        let mut seen = 0u8;
        for f in Fields(body) {
            let (n, f) = f?;
            if n != 4 {
                if n > 6 || seen & (1 << n) != 0 {
                    return None;
                }
                seen |= 1 << n;
            }
            match (n, f) {
                (1, Field::Len(b)) => l.trace_id = b,
                (2, Field::Len(b)) => l.span_id = b,
                (3, Field::Len(b)) => l.trace_state = utf8(b)?,
                (4, Field::Len(kv)) => self.attr(kv)?,
                (5, Field::Varint(v)) => l.dropped = v as u32,
                (6, Field::Fixed32(v)) => l.flags = v,
                _ => return None,
            }
        }
        l.attrs = start..self.attrs.len();
        Some(l)
    }

    fn attr(&mut self, body: &'a [u8]) -> Option<()> {
        let (mut key, mut value) = (None, None);
        for f in Fields(body) {
            match f? {
                (1, Field::Len(b)) if key.is_none() => key = Some(utf8(b)?),
                (2, Field::Len(b)) if value.is_none() => value = Some(any(b)?),
                _ => return None,
            }
        }
        self.attrs.push(Attr {
            key: key.unwrap_or(""),
            value,
        });
        Some(())
    }
}

/// An `AnyValue` body: one value field at most.
pub(crate) fn any(body: &[u8]) -> Option<Value<'_>> {
    let mut out = Value::Empty;
    for f in Fields(body) {
        if !matches!(out, Value::Empty) {
            return None;
        }
        out = match f? {
            (1, Field::Len(b)) => Value::Str(utf8(b)?),
            (2, Field::Varint(v)) => Value::Bool(v != 0),
            (3, Field::Varint(v)) => Value::Int(v as i64),
            (4, Field::Fixed64(v)) => Value::Double(f64::from_bits(v)),
            // Rare, nested, stored encoded: checked the way a decode would check them.
            (5, Field::Len(_)) => {
                AnyValue::decode(body).ok()?;
                Value::Array(body)
            }
            (6, Field::Len(_)) => {
                AnyValue::decode(body).ok()?;
                Value::Kvlist(body)
            }
            (7, Field::Len(b)) => Value::Bytes(b),
            _ => return None,
        };
    }
    Some(out)
}

/// A `Status` body's code and message.
fn status(body: &[u8]) -> Option<(i32, &str)> {
    let (mut code, mut message) = (None, None);
    for f in Fields(body) {
        match f? {
            (2, Field::Len(b)) if message.is_none() => message = Some(utf8(b)?),
            (3, Field::Varint(v)) if code.is_none() => code = Some(v as i32),
            _ => return None,
        }
    }
    Some((code.unwrap_or(0), message.unwrap_or("")))
}
