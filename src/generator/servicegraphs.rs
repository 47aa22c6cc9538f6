//! The service-graphs processor: pairs a client (or producer) span with the server (or
//! consumer) span it called, and counts requests, failures and both sides' latency per edge
//! (`traces_service_graph_*`, Tempo's names, labels and buckets).
//!
//! A client span waits under (trace, its span id), a server span under (trace, its parent
//! span id); whichever comes second completes the edge. An edge that waits longer than
//! `wait` expires: a root server span becomes an edge from its peer attribute (or "user"),
//! a client span with a peer attribute an edge to a virtual node; others are counted and
//! forgotten. At most `max_items` edges wait at once.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::generator::ServiceGraphsConfig;
use crate::model::{span, status, KeyValue, Span};

use super::attrs;
use super::filter::SpanFilter;
use super::registry::{
    hist_series, key_values, sanitize_label_name, Emitter, Hist, KeyBuf, SeriesBudget,
};

pub(crate) const REQUEST_TOTAL: &str = "traces_service_graph_request_total";
pub(crate) const REQUEST_FAILED_TOTAL: &str = "traces_service_graph_request_failed_total";
pub(crate) const SERVER_SECONDS: &str = "traces_service_graph_request_server_seconds";
pub(crate) const CLIENT_SECONDS: &str = "traces_service_graph_request_client_seconds";
pub(crate) const MESSAGING_SECONDS: &str = "traces_service_graph_request_messaging_system_seconds";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Connection {
    Unset,
    MessagingSystem,
    Database,
    VirtualNode,
}

impl Connection {
    fn label(self) -> &'static str {
        match self {
            Connection::Unset => "",
            Connection::MessagingSystem => "messaging_system",
            Connection::Database => "database",
            Connection::VirtualNode => "virtual_node",
        }
    }
}

/// (trace id, span id or none for a root server span).
type EdgeKey = ([u8; 16], Option<[u8; 8]>);

struct Edge {
    seq: u64,
    expires: Instant,
    trace_id: [u8; 16],
    client: String,
    server: String,
    client_secs: f64,
    server_secs: f64,
    client_end_ns: u64,
    server_start_ns: u64,
    connection: Connection,
    failed: bool,
    /// Dimension label values in `label_names` order after the first three.
    dims: Vec<String>,
    peer: String,
    root: bool,
}

struct EdgeSeries {
    total: f64,
    failed: f64,
    /// `_failed_total` exists only once an edge has failed, as in Tempo.
    failed_new: Option<bool>,
    server: Hist,
    client: Hist,
    /// With `enable_messaging_system_latency_histogram`, once a messaging edge is seen.
    messaging: Option<(Hist, bool)>,
    updated_ms: i64,
    new: bool,
}

pub(crate) struct ServiceGraphs {
    wait: Duration,
    max_items: usize,
    buckets: Vec<f64>,
    dimensions: Vec<String>,
    client_server_prefix: bool,
    virtual_node_label: bool,
    messaging_histogram: bool,
    label_names: Vec<String>,
    peer_attributes: Vec<String>,
    db_attributes: Vec<String>,
    max_value_len: usize,
    edges: HashMap<EdgeKey, Edge>,
    /// Edges in the order they expire (all wait equally long); entries of edges completed
    /// since are skipped by their sequence number.
    expiry: VecDeque<(EdgeKey, u64)>,
    next_seq: u64,
    filter: SpanFilter,
    /// Halves of edges whose span was filtered out, by (key, is client), until they expire:
    /// the other half must not make an edge (or a virtual node) on its own.
    dropped_sides: HashMap<(EdgeKey, bool), Instant>,
    series: HashMap<Box<[u8]>, EdgeSeries>,
    key: KeyBuf,
    pub(crate) expired: u64,
    pub(crate) dropped: u64,
}

fn is_client(kind: i32) -> bool {
    kind == span::SpanKind::Client as i32 || kind == span::SpanKind::Producer as i32
}

fn is_server(kind: i32) -> bool {
    kind == span::SpanKind::Server as i32 || kind == span::SpanKind::Consumer as i32
}

fn duration_secs(s: &Span) -> f64 {
    s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64 / 1e9
}

fn failed(s: &Span) -> bool {
    s.status
        .as_ref()
        .is_some_and(|st| st.code == status::StatusCode::Error as i32)
}

impl ServiceGraphs {
    pub(crate) fn new(cfg: &ServiceGraphsConfig, filter: SpanFilter, max_value_len: usize) -> Self {
        let mut label_names: Vec<String> = ["client", "server", "connection_type"]
            .map(String::from)
            .to_vec();
        for d in &cfg.dimensions {
            if cfg.enable_client_server_prefix {
                label_names.push(sanitize_label_name(&format!("client_{d}")));
                label_names.push(sanitize_label_name(&format!("server_{d}")));
            } else {
                label_names.push(sanitize_label_name(d));
            }
        }
        if cfg.enable_virtual_node_label {
            label_names.push("virtual_node".to_owned());
        }
        Self {
            wait: cfg.wait,
            max_items: cfg.max_items,
            buckets: cfg.histogram_buckets.clone(),
            dimensions: cfg.dimensions.clone(),
            client_server_prefix: cfg.enable_client_server_prefix,
            virtual_node_label: cfg.enable_virtual_node_label,
            messaging_histogram: cfg.enable_messaging_system_latency_histogram,
            label_names,
            peer_attributes: cfg.peer_attributes.clone(),
            db_attributes: cfg.database_name_attributes.clone(),
            max_value_len,
            edges: HashMap::new(),
            expiry: VecDeque::new(),
            next_seq: 0,
            filter,
            dropped_sides: HashMap::new(),
            series: HashMap::new(),
            key: KeyBuf::default(),
            expired: 0,
            dropped: 0,
        }
    }

    fn weight(&self) -> usize {
        2 + (2 + usize::from(self.messaging_histogram)) * hist_series(&self.buckets)
    }

    pub(crate) fn series_count(&self) -> usize {
        self.series.len() * self.weight()
    }

    /// Edges waiting for their other half.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.edges.len()
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        resource: &[KeyValue],
        service: Option<&str>,
        s: &Span,
        trace_id: [u8; 16],
        now: Instant,
        now_ms: i64,
        budget: &mut SeriesBudget,
    ) {
        // Tempo skips resources without a service name here.
        let Some(service) = service else { return };
        let client_side = is_client(s.kind);
        if !client_side && !is_server(s.kind) {
            return;
        }
        let messaging =
            s.kind == span::SpanKind::Producer as i32 || s.kind == span::SpanKind::Consumer as i32;
        let key: EdgeKey = if client_side {
            (trace_id, s.span_id.as_slice().try_into().ok())
        } else {
            (trace_id, s.parent_span_id.as_slice().try_into().ok())
        };
        if !self.filter.keep(resource, s) {
            self.drop_side(key, client_side, now);
            return;
        }
        let is_new = !self.edges.contains_key(&key);
        if is_new && self.dropped_sides.contains_key(&(key, !client_side)) {
            self.dropped += 1;
            return;
        }
        if is_new && self.edges.len() >= self.max_items {
            // A client span of a database call completes on its own, so it still counts.
            if !(client_side && self.database_name(resource, s).is_some()) {
                self.dropped += 1;
                return;
            }
        }
        let mut e = self.edges.remove(&key).unwrap_or_else(|| Edge {
            seq: 0,
            expires: now + self.wait,
            trace_id,
            client: String::new(),
            server: String::new(),
            client_secs: 0.0,
            server_secs: 0.0,
            client_end_ns: 0,
            server_start_ns: 0,
            connection: Connection::Unset,
            failed: false,
            dims: vec![String::new(); self.label_names.len() - 3],
            peer: String::new(),
            root: key.1.is_none(),
        });
        e.connection = if messaging {
            Connection::MessagingSystem
        } else {
            Connection::Unset
        };
        e.failed |= failed(s);
        for (i, d) in self.dimensions.iter().enumerate() {
            if let Some(v) = attrs::find(d, &[resource, s.attributes.as_slice()]) {
                let slot = match (self.client_server_prefix, client_side) {
                    (false, _) => i,
                    (true, true) => 2 * i,
                    (true, false) => 2 * i + 1,
                };
                e.dims[slot] = v.into_owned();
            }
        }
        if let Some(p) = self
            .peer_attributes
            .iter()
            .find_map(|k| attrs::find(k, &[s.attributes.as_slice()]))
        {
            e.peer = p.into_owned();
        }
        if client_side {
            e.client = service.to_owned();
            e.client_secs = duration_secs(s);
            e.client_end_ns = s.end_time_unix_nano;
            if let Some(name) = self.database_name(resource, s) {
                e.connection = Connection::Database;
                e.server_secs = e.client_secs;
                e.server = name;
            }
        } else {
            e.server = service.to_owned();
            e.server_secs = duration_secs(s);
            e.server_start_ns = s.start_time_unix_nano;
        }
        if !e.client.is_empty() && !e.server.is_empty() {
            self.complete(&e, now_ms, budget);
            return;
        }
        if is_new {
            e.seq = self.next_seq;
            self.next_seq += 1;
            self.expiry.push_back((key, e.seq));
        }
        self.edges.insert(key, e);
        self.compact_expiry();
    }

    /// The server name of a database call: Tempo's order is `peer.service`,
    /// `server.address`, `network.peer.address[:port]`, then the database name attribute.
    fn database_name(&self, resource: &[KeyValue], s: &Span) -> Option<String> {
        let lists = [resource, s.attributes.as_slice()];
        let db = self
            .db_attributes
            .iter()
            .find_map(|k| attrs::find(k, &lists))?;
        if let Some(v) = attrs::find("peer.service", &lists) {
            return Some(v.into_owned());
        }
        if let Some(v) = attrs::find("server.address", &lists) {
            return Some(v.into_owned());
        }
        if let Some(host) = attrs::find("network.peer.address", &lists) {
            return Some(match attrs::find("network.peer.port", &lists) {
                Some(port) => format!("{host}:{port}"),
                None => host.into_owned(),
            });
        }
        Some(db.into_owned())
    }

    /// Marks a filtered-out half: a waiting other half is dropped, a later one ignored.
    fn drop_side(&mut self, key: EdgeKey, client_side: bool, now: Instant) {
        // A root server span has no client half to match.
        if !client_side && key.1.is_none() {
            return;
        }
        let other_half_waits = self
            .edges
            .get(&key)
            .is_some_and(|e| e.client.is_empty() == client_side);
        if other_half_waits {
            self.edges.remove(&key);
            self.dropped += 1;
        }
        let side = (key, client_side);
        if self.dropped_sides.contains_key(&side) || self.dropped_sides.len() < self.max_items {
            self.dropped_sides.insert(side, now + self.wait);
        }
    }

    /// Expires edges that waited `wait`, turning those that name a peer into edges.
    pub(crate) fn expire(&mut self, now: Instant, now_ms: i64, budget: &mut SeriesBudget) {
        self.dropped_sides.retain(|_, until| *until > now);
        while let Some((key, seq)) = self.expiry.front().copied() {
            let live = self.edges.get(&key).filter(|e| e.seq == seq);
            let Some(e) = live else {
                self.expiry.pop_front();
                continue;
            };
            if e.expires > now {
                break;
            }
            self.expiry.pop_front();
            let Some(mut e) = self.edges.remove(&key) else {
                continue;
            };
            e.connection = Connection::VirtualNode;
            let label = self.virtual_node_label;
            let virtual_side = |e: &mut Edge, side: &str| {
                if let Some(slot) = e.dims.last_mut().filter(|_| label) {
                    *slot = side.to_owned();
                }
            };
            if e.client.is_empty() && e.root {
                virtual_side(&mut e, "client");
                e.client = if e.peer.is_empty() {
                    "user".to_owned()
                } else {
                    std::mem::take(&mut e.peer)
                };
                self.complete(&e, now_ms, budget);
            } else if e.server.is_empty() && !e.peer.is_empty() {
                virtual_side(&mut e, "server");
                e.server = std::mem::take(&mut e.peer);
                self.complete(&e, now_ms, budget);
            } else {
                self.expired += 1;
            }
        }
    }

    /// Drops queue entries of completed edges once they outnumber the waiting ones.
    fn compact_expiry(&mut self) {
        if self.expiry.len() > 1024 && self.expiry.len() > 4 * self.edges.len() {
            let edges = &self.edges;
            self.expiry
                .retain(|(k, seq)| edges.get(k).is_some_and(|e| e.seq == *seq));
        }
    }

    fn complete(&mut self, e: &Edge, now_ms: i64, budget: &mut SeriesBudget) {
        let max = self.max_value_len;
        let k = &mut self.key;
        k.clear();
        k.push(&e.client, max);
        k.push(&e.server, max);
        k.push(e.connection.label(), max);
        for d in &e.dims {
            k.push(d, max);
        }
        // Tempo skips a queue wait that is not positive (clocks out of step).
        let queue_secs = (self.messaging_histogram
            && e.connection == Connection::MessagingSystem
            && e.server_start_ns > e.client_end_ns)
            .then(|| (e.server_start_ns - e.client_end_ns) as f64 / 1e9);
        let update = |s: &mut EdgeSeries, buckets: &[f64]| {
            s.total += 1.0;
            if let Some(secs) = queue_secs {
                let (h, _) = s
                    .messaging
                    .get_or_insert_with(|| (Hist::new(buckets), true));
                h.observe(buckets, secs, Some(e.trace_id));
            }
            if e.failed {
                s.failed += 1.0;
                s.failed_new.get_or_insert(true);
            }
            s.server.observe(buckets, e.server_secs, Some(e.trace_id));
            s.client.observe(buckets, e.client_secs, Some(e.trace_id));
            s.updated_ms = now_ms;
        };
        if let Some(s) = self.series.get_mut(k.as_bytes()) {
            update(s, &self.buckets);
            return;
        }
        let weight = 2 + (2 + usize::from(self.messaging_histogram)) * hist_series(&self.buckets);
        if !budget.admit(weight) {
            return;
        }
        let mut s = EdgeSeries {
            total: 0.0,
            failed: 0.0,
            failed_new: None,
            server: Hist::new(&self.buckets),
            client: Hist::new(&self.buckets),
            messaging: None,
            updated_ms: now_ms,
            new: true,
        };
        update(&mut s, &self.buckets);
        self.series.insert(k.as_bytes().into(), s);
    }

    pub(crate) fn collect(&mut self, e: &mut Emitter, stale_before_ms: i64) {
        self.series.retain(|_, s| s.updated_ms >= stale_before_ms);
        for (key, s) in &mut self.series {
            let labels: Vec<(&str, &str)> = self
                .label_names
                .iter()
                .map(String::as_str)
                .zip(key_values(key))
                .collect();
            e.counter(REQUEST_TOTAL, &labels, s.total, s.new);
            if let Some(new) = s.failed_new {
                e.counter(REQUEST_FAILED_TOTAL, &labels, s.failed, new);
                s.failed_new = Some(false);
            }
            e.histogram(SERVER_SECONDS, &labels, &self.buckets, &mut s.server, s.new);
            e.histogram(CLIENT_SECONDS, &labels, &self.buckets, &mut s.client, s.new);
            if let Some((h, new)) = &mut s.messaging {
                e.histogram(MESSAGING_SECONDS, &labels, &self.buckets, h, *new);
                *new = false;
            }
            s.new = false;
        }
    }
}

#[cfg(test)]
#[path = "servicegraphs_tests.rs"]
mod tests;
