//! `vivace vulture`: a canary in the manner of tempo-vulture. It writes small traces to a
//! target over OTLP/HTTP, remembers exactly what it wrote, and after a delay reads each one
//! back by ID (`/api/v2/traces/<id>`) and by search (`{ span.vulture.id = "<id>" }`),
//! counting what came back ok, missing, incomplete or wrong. Counts are served as Prometheus
//! metrics on `--metrics-port`; every problem is logged with the trace ID.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use tracing::{debug, info, warn};

use crate::api::client::SearchResponseView;
use crate::api::tempopb::TraceByIdResponse;
use crate::block::synth::kv;
use crate::metrics::Counter;
use crate::model::{
    any_value, span, ExportTraceServiceRequest, ExportTraceServiceResponse, Resource,
    ResourceSpans, ScopeSpans, Span, TraceId,
};

#[derive(clap::Args, Debug, Clone)]
pub struct VultureArgs {
    /// OTLP/HTTP traces endpoint to write to.
    #[arg(
        long = "otlp-endpoint",
        default_value = "http://127.0.0.1:4318/v1/traces"
    )]
    pub(crate) otlp_endpoint: String,
    /// Base URL of the query API to read from.
    #[arg(long = "api-endpoint", default_value = "http://127.0.0.1:3200")]
    pub(crate) api_endpoint: String,
    /// Tenant sent as X-Scope-OrgID on writes and reads; none when unset.
    #[arg(long = "tenant")]
    pub(crate) tenant: Option<String>,
    /// How often a trace is written.
    #[arg(long = "write-interval", default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) write_interval: Duration,
    /// Spans in each written trace.
    #[arg(long = "spans-per-trace", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) spans_per_trace: u32,
    /// How long after writing a trace it is first read back.
    #[arg(long = "read-delay", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) read_delay: Duration,
    /// How long after the first read a trace that is not (fully) readable is retried before
    /// it counts as missing or incomplete.
    #[arg(long = "retry-for", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) retry_for: Duration,
    /// Serve `/metrics` on this port (all interfaces); 0 serves none.
    #[arg(long = "metrics-port", default_value_t = 8080)]
    pub(crate) metrics_port: u16,
    /// Stop writing after this long, verify what is outstanding, then exit. Runs until
    /// interrupted when unset.
    #[arg(long = "duration", value_parser = humantime::parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Exit with status 1 when any trace was missing, incomplete or wrong.
    #[arg(long = "fail-on-error")]
    pub(crate) fail_on_error: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum VultureError {
    #[error("cannot build http client: {0}")]
    Client(reqwest_client::Error),
    #[error("cannot serve metrics on port {port}: {source}")]
    Metrics { port: u16, source: std::io::Error },
}

/// What a read-back found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verdict {
    Ok,
    Missing,
    Incomplete,
    Wrong,
}

impl Verdict {
    pub(crate) const ALL: [Verdict; 4] = [
        Verdict::Ok,
        Verdict::Missing,
        Verdict::Incomplete,
        Verdict::Wrong,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Missing => "missing",
            Verdict::Incomplete => "incomplete",
            Verdict::Wrong => "wrong",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The vulture's counters, rendered as Prometheus text.
#[derive(Default, Debug)]
pub(crate) struct VultureMetrics {
    pub(crate) written: Counter,
    pub(crate) write_errors: Counter,
    pub(crate) read_errors: Counter,
    pub(crate) by_id: [Counter; 4],
    pub(crate) search: [Counter; 4],
}

impl VultureMetrics {
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        counter(
            "vivace_vulture_traces_written_total",
            "Traces the vulture wrote and the target acknowledged.",
            &[("", self.written.get())],
        );
        counter(
            "vivace_vulture_write_errors_total",
            "Trace writes the target refused or that failed.",
            &[("", self.write_errors.get())],
        );
        counter(
            "vivace_vulture_read_errors_total",
            "Reads that failed (and were retried) before a verdict.",
            &[("", self.read_errors.get())],
        );
        for (name, help, set) in [
            (
                "vivace_vulture_traces_verified_total",
                "Traces read back by ID, by result.",
                &self.by_id,
            ),
            (
                "vivace_vulture_search_verified_total",
                "Traces looked for by search, by result.",
                &self.search,
            ),
        ] {
            let labels: Vec<String> = Verdict::ALL
                .iter()
                .map(|v| format!("{{result=\"{}\"}}", v.as_str()))
                .collect();
            let samples: Vec<(&str, u64)> = Verdict::ALL
                .iter()
                .map(|v| (labels[v.index()].as_str(), set[v.index()].get()))
                .collect();
            counter(name, help, &samples);
        }
        out
    }

    /// Traces (by ID or by search) that came back other than ok.
    pub(crate) fn failures(&self) -> u64 {
        Verdict::ALL
            .iter()
            .filter(|v| **v != Verdict::Ok)
            .map(|v| self.by_id[v.index()].get() + self.search[v.index()].get())
            .sum()
    }
}

/// A trace written and not yet fully verified.
struct Pending {
    id: TraceId,
    sent: Vec<ResourceSpans>,
    spans: usize,
    start_secs: u64,
    due: Instant,
    deadline: Instant,
    by_id: Option<Verdict>,
    search: Option<Verdict>,
    /// The latest non-ok finding, reported if the deadline passes without an ok.
    last_by_id: Verdict,
    last_search: Verdict,
}

/// Entry point of `vivace vulture`: runs to completion and maps the outcome to an exit code.
pub fn main(args: VultureArgs) -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIVACE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vivace: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let fail_on_error = args.fail_on_error;
    match rt.block_on(run(args, shutdown())) {
        Ok(metrics) => {
            // The final counts on stdout, in the same form as /metrics, for scripts and tests.
            print!("{}", metrics.render());
            if fail_on_error && metrics.failures() > 0 {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("vivace: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Writes and verifies until `--duration` has passed (then verifies what is outstanding) or
/// `stop` resolves; returns the final counts.
pub(crate) async fn run(
    args: VultureArgs,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Arc<VultureMetrics>, VultureError> {
    let metrics = Arc::new(VultureMetrics::default());
    if args.metrics_port != 0 {
        serve_metrics(args.metrics_port, metrics.clone()).await?;
    }
    let client = reqwest_client::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(VultureError::Client)?;
    let vulture = Vulture {
        args: args.clone(),
        client,
        metrics: metrics.clone(),
    };
    let started = Instant::now();
    let write_until = args.duration.map(|d| started + d);
    let mut pending: Vec<Pending> = Vec::new();
    let mut write_tick = tokio::time::interval(args.write_interval);
    write_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check_tick = tokio::time::interval(args.write_interval.min(Duration::from_millis(250)));
    check_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        otlp = %args.otlp_endpoint,
        api = %args.api_endpoint,
        interval = ?args.write_interval,
        spans = args.spans_per_trace,
        "vulture started"
    );
    tokio::pin!(stop);
    loop {
        let writing = write_until.is_none_or(|t| Instant::now() < t);
        if !writing && pending.is_empty() {
            break;
        }
        tokio::select! {
            _ = &mut stop => {
                info!(outstanding = pending.len(), "vulture interrupted");
                break;
            }
            _ = write_tick.tick(), if writing => {
                if let Some(p) = vulture.write().await {
                    pending.push(p);
                }
            }
            _ = check_tick.tick() => {
                vulture.check(&mut pending).await;
            }
        }
    }
    let by_id = |v: Verdict| metrics.by_id[v.index()].get();
    let search_bad: u64 = Verdict::ALL
        .iter()
        .filter(|v| **v != Verdict::Ok)
        .map(|v| metrics.search[v.index()].get())
        .sum();
    info!(
        written = metrics.written.get(),
        write_errors = metrics.write_errors.get(),
        ok = by_id(Verdict::Ok),
        missing = by_id(Verdict::Missing),
        incomplete = by_id(Verdict::Incomplete),
        wrong = by_id(Verdict::Wrong),
        search_ok = metrics.search[Verdict::Ok.index()].get(),
        search_failed = search_bad,
        "vulture finished"
    );
    Ok(metrics)
}

async fn serve_metrics(port: u16, metrics: Arc<VultureMetrics>) -> Result<(), VultureError> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| VultureError::Metrics { port, source })?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move { m.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "vulture metrics server stopped");
        }
    });
    Ok(())
}

struct Vulture {
    args: VultureArgs,
    client: reqwest_client::Client,
    metrics: Arc<VultureMetrics>,
}

impl Vulture {
    fn with_tenant(&self, req: reqwest_client::RequestBuilder) -> reqwest_client::RequestBuilder {
        match &self.args.tenant {
            Some(t) => req.header(crate::api::TENANT_HEADER, t),
            None => req,
        }
    }

    /// Writes one new trace; `None` when the target did not acknowledge all of it (counted
    /// as a write error: only acknowledged spans are owed back).
    async fn write(&self) -> Option<Pending> {
        let now = unix_nanos();
        let id = new_trace_id();
        let sent = make_trace(&id, self.args.spans_per_trace as usize, now);
        let body = ExportTraceServiceRequest {
            resource_spans: sent.clone(),
        }
        .encode_to_vec();
        let req = self
            .client
            .post(&self.args.otlp_endpoint)
            .header("content-type", "application/x-protobuf")
            .body(body);
        let refused = match self.with_tenant(req).send().await {
            Ok(resp) if resp.status().is_success() => {
                let bytes = resp.bytes().await.unwrap_or_default();
                let rejected = ExportTraceServiceResponse::decode(bytes.as_ref())
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map_or(0, |p| p.rejected_spans);
                (rejected > 0).then(|| format!("{rejected} spans rejected"))
            }
            Ok(resp) => Some(format!("status {}", resp.status())),
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = refused {
            self.metrics.write_errors.inc();
            warn!(trace_id = %id, reason = %reason, "vulture write failed");
            return None;
        }
        self.metrics.written.inc();
        debug!(trace_id = %id, "vulture wrote trace");
        let due = Instant::now() + self.args.read_delay;
        Some(Pending {
            id,
            spans: self.args.spans_per_trace as usize,
            sent,
            start_secs: now / 1_000_000_000,
            due,
            deadline: due + self.args.retry_for,
            by_id: None,
            search: None,
            last_by_id: Verdict::Missing,
            last_search: Verdict::Missing,
        })
    }

    /// Reads back every due trace; records a verdict once it is ok, or wrong, or the retry
    /// window has passed.
    async fn check(&self, pending: &mut Vec<Pending>) {
        let now = Instant::now();
        for p in pending.iter_mut().filter(|p| p.due <= now) {
            let expired = now >= p.deadline;
            if p.by_id.is_none() {
                match self.read_by_id(&p.id).await {
                    Ok(found) => {
                        let v = compare(&p.sent, &found);
                        if v == Verdict::Ok || v == Verdict::Wrong || expired {
                            p.by_id = Some(v);
                        }
                        p.last_by_id = v;
                    }
                    Err(e) => {
                        self.metrics.read_errors.inc();
                        debug!(trace_id = %p.id, error = %e, "vulture read failed");
                        if expired {
                            p.by_id = Some(p.last_by_id);
                        }
                    }
                }
                if let Some(v) = p.by_id {
                    self.record("by_id", &self.metrics.by_id, p, v);
                }
            }
            if p.search.is_none() {
                match self.search(p).await {
                    Ok(v) => {
                        if v == Verdict::Ok || expired {
                            p.search = Some(v);
                        }
                        p.last_search = v;
                    }
                    Err(e) => {
                        self.metrics.read_errors.inc();
                        debug!(trace_id = %p.id, error = %e, "vulture search failed");
                        if expired {
                            p.search = Some(p.last_search);
                        }
                    }
                }
                if let Some(v) = p.search {
                    self.record("search", &self.metrics.search, p, v);
                }
            }
        }
        pending.retain(|p| p.by_id.is_none() || p.search.is_none());
    }

    fn record(&self, check: &str, counters: &[Counter; 4], p: &Pending, v: Verdict) {
        counters[v.index()].inc();
        if v == Verdict::Ok {
            debug!(trace_id = %p.id, check, "vulture verified trace");
        } else {
            warn!(
                trace_id = %p.id,
                check,
                result = v.as_str(),
                expected_spans = p.spans,
                written_secs = p.start_secs,
                "vulture found a bad trace"
            );
        }
    }

    /// The trace as the API returns it; empty when it is not found (404).
    async fn read_by_id(&self, id: &TraceId) -> Result<Vec<ResourceSpans>, String> {
        let url = format!(
            "{}/api/v2/traces/{id}",
            self.args.api_endpoint.trim_end_matches('/')
        );
        let req = self
            .client
            .get(url)
            .header("accept", "application/protobuf");
        let resp = self
            .with_tenant(req)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match resp.status().as_u16() {
            404 => Ok(Vec::new()),
            200 => {
                let body = resp.bytes().await.map_err(|e| e.to_string())?;
                let r = TraceByIdResponse::decode(body.as_ref()).map_err(|e| e.to_string())?;
                Ok(r.trace.map(|t| t.batches).unwrap_or_default())
            }
            s => Err(format!("status {s}")),
        }
    }

    /// Searches for the trace by its `vulture.id` attribute: ok when found with every span
    /// matched.
    async fn search(&self, p: &Pending) -> Result<Verdict, String> {
        let hex = p.id.to_hex();
        let q = format!("{{ span.vulture.id = \"{hex}\" }}");
        let end = unix_nanos() / 1_000_000_000 + 1;
        let base = format!(
            "{}/api/search",
            self.args.api_endpoint.trim_end_matches('/')
        );
        let mut url = reqwest_client::Url::parse(&base).map_err(|e| e.to_string())?;
        url.query_pairs_mut()
            .append_pair("q", &q)
            .append_pair("start", &p.start_secs.saturating_sub(1).to_string())
            .append_pair("end", &end.to_string())
            .append_pair("spss", "100");
        let req = self.client.get(url);
        let resp = self
            .with_tenant(req)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        let v = SearchResponseView::parse(&body).map_err(|e| e.to_string())?;
        Ok(search_verdict(&v, &p.id, p.spans))
    }
}

/// Judges a search response: the trace must be listed, and its span set must have matched
/// every span written.
pub(crate) fn search_verdict(resp: &SearchResponseView, id: &TraceId, spans: usize) -> Verdict {
    let Some(t) = resp
        .traces
        .iter()
        .find(|t| TraceId::parse_hex(&t.trace_id).is_ok_and(|found| found == *id))
    else {
        return Verdict::Missing;
    };
    let matched = t.span_set.as_ref().map_or(0, |s| s.matched) as usize;
    match matched.cmp(&spans) {
        std::cmp::Ordering::Equal => Verdict::Ok,
        std::cmp::Ordering::Less => Verdict::Incomplete,
        std::cmp::Ordering::Greater => Verdict::Wrong,
    }
}

/// Compares what was written with what was read back: `Missing` when nothing came back,
/// `Incomplete` when some spans are absent and the rest intact, `Wrong` when a span is
/// altered, foreign or duplicated.
pub(crate) fn compare(sent: &[ResourceSpans], found: &[ResourceSpans]) -> Verdict {
    let expected: BTreeMap<&[u8], SpanKey> = spans_of(sent).collect();
    let mut seen: BTreeMap<&[u8], ()> = BTreeMap::new();
    for (sid, key) in spans_of(found) {
        match expected.get(sid) {
            Some(want) if *want == key => {
                if seen.insert(sid, ()).is_some() {
                    return Verdict::Wrong;
                }
            }
            _ => return Verdict::Wrong,
        }
    }
    if seen.is_empty() {
        Verdict::Missing
    } else if seen.len() < expected.len() {
        Verdict::Incomplete
    } else {
        Verdict::Ok
    }
}

/// What must survive the round trip for a span: attributes are compared as a set, since
/// storage may reorder them.
#[derive(PartialEq, Debug)]
struct SpanKey {
    trace_id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    kind: i32,
    start: u64,
    end: u64,
    attributes: Vec<String>,
    status: i32,
    service: Option<String>,
}

fn spans_of(batches: &[ResourceSpans]) -> impl Iterator<Item = (&[u8], SpanKey)> {
    batches.iter().flat_map(|rs| {
        let service = rs.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .map(|kv| format!("{:?}", kv.value))
        });
        rs.scope_spans
            .iter()
            .flat_map(|ss| &ss.spans)
            .map(move |s| {
                let mut attributes: Vec<String> = s
                    .attributes
                    .iter()
                    .map(|kv| format!("{}={:?}", kv.key, kv.value))
                    .collect();
                attributes.sort();
                let key = SpanKey {
                    trace_id: s.trace_id.clone(),
                    parent: s.parent_span_id.clone(),
                    name: s.name.clone(),
                    kind: s.kind,
                    start: s.start_time_unix_nano,
                    end: s.end_time_unix_nano,
                    attributes,
                    status: s.status.as_ref().map_or(0, |st| st.code),
                    service: service.clone(),
                };
                (s.span_id.as_slice(), key)
            })
    })
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn new_trace_id() -> TraceId {
    loop {
        let b = uuid::Uuid::new_v4().into_bytes();
        if b != [0; 16] {
            return TraceId(b);
        }
    }
}

fn new_span_id() -> Vec<u8> {
    loop {
        let b = uuid::Uuid::new_v4().into_bytes();
        if b[..8] != [0; 8] {
            return b[..8].to_vec();
        }
    }
}

/// One trace of `n` spans in a binary tree under a root, each carrying `vulture.id` so a
/// search can find every span of it.
pub(crate) fn make_trace(id: &TraceId, n: usize, now: u64) -> Vec<ResourceSpans> {
    let hex = id.to_hex();
    let ids: Vec<Vec<u8>> = (0..n).map(|_| new_span_id()).collect();
    let spans = (0..n)
        .map(|i| {
            let start = now + i as u64 * 1_000_000;
            Span {
                trace_id: id.as_bytes().to_vec(),
                span_id: ids[i].clone(),
                parent_span_id: if i == 0 {
                    Vec::new()
                } else {
                    ids[(i - 1) / 2].clone()
                },
                name: format!("vulture-op-{i}"),
                kind: if i == 0 {
                    span::SpanKind::Server as i32
                } else {
                    span::SpanKind::Internal as i32
                },
                start_time_unix_nano: start,
                end_time_unix_nano: start + (n - i) as u64 * 100_000,
                attributes: vec![
                    kv("vulture.id", any_value::Value::StringValue(hex.clone())),
                    kv("vulture.seq", any_value::Value::IntValue(i as i64)),
                ],
                ..Default::default()
            }
        })
        .collect();
    vec![ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue("vivace-vulture".into()),
            )],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        schema_url: String::new(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(n: usize) -> (TraceId, Vec<ResourceSpans>) {
        let id = new_trace_id();
        (id, make_trace(&id, n, 1_700_000_000_000_000_000))
    }

    #[test]
    fn compare_classifies_read_backs() {
        let (_, sent) = trace(4);
        assert_eq!(compare(&sent, &sent), Verdict::Ok);
        assert_eq!(compare(&sent, &[]), Verdict::Missing);

        let mut fewer = sent.clone();
        fewer[0].scope_spans[0].spans.pop();
        assert_eq!(compare(&sent, &fewer), Verdict::Incomplete);

        // Storage may reorder attributes and split spans over batches: still ok.
        let mut moved = sent.clone();
        moved[0].scope_spans[0].spans[1].attributes.reverse();
        let last = moved[0].scope_spans[0].spans.pop().unwrap();
        let mut second = moved[0].clone();
        second.scope_spans[0].spans = vec![last];
        moved.push(second);
        assert_eq!(compare(&sent, &moved), Verdict::Ok);

        let mut renamed = sent.clone();
        renamed[0].scope_spans[0].spans[2].name = "other".into();
        assert_eq!(compare(&sent, &renamed), Verdict::Wrong);

        let mut doubled = sent.clone();
        let dup = doubled[0].scope_spans[0].spans[0].clone();
        doubled[0].scope_spans[0].spans.push(dup);
        assert_eq!(compare(&sent, &doubled), Verdict::Wrong);

        let (_, foreign) = trace(1);
        let mut mixed = sent.clone();
        mixed.extend(foreign);
        assert_eq!(compare(&sent, &mixed), Verdict::Wrong);
    }

    #[test]
    fn search_verdicts() {
        let id = TraceId([7; 16]);
        let hit = |matched: u64| {
            let body = format!(
                r#"{{"traces":[{{"traceID":"1","spanSet":{{"matched":9}}}},
                   {{"traceID":"{}","spanSet":{{"matched":{matched}}}}}]}}"#,
                id.to_hex()
            );
            SearchResponseView::parse(body.as_bytes()).unwrap()
        };
        assert_eq!(search_verdict(&hit(5), &id, 5), Verdict::Ok);
        assert_eq!(search_verdict(&hit(3), &id, 5), Verdict::Incomplete);
        assert_eq!(search_verdict(&hit(6), &id, 5), Verdict::Wrong);
        let none = SearchResponseView::parse(br#"{"traces":[]}"#).unwrap();
        assert_eq!(search_verdict(&none, &id, 5), Verdict::Missing);
        let empty = SearchResponseView::default();
        assert_eq!(search_verdict(&empty, &id, 5), Verdict::Missing);
    }

    #[test]
    fn metrics_render_every_result() {
        let m = VultureMetrics::default();
        m.written.add(3);
        m.by_id[Verdict::Ok.index()].add(2);
        m.search[Verdict::Missing.index()].inc();
        let text = m.render();
        assert!(text.contains("vivace_vulture_traces_written_total 3\n"));
        assert!(text.contains("vivace_vulture_traces_verified_total{result=\"ok\"} 2\n"));
        assert!(text.contains("vivace_vulture_traces_verified_total{result=\"wrong\"} 0\n"));
        assert!(text.contains("vivace_vulture_search_verified_total{result=\"missing\"} 1\n"));
        assert_eq!(m.failures(), 1);
    }
}
