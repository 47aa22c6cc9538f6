//! Prometheus remote write 1.0: the protobuf messages (schema/proto/remote_write.proto,
//! written out by hand so no protoc is needed), snappy block compression, and one sender per
//! endpoint with a bounded queue and retries.
//!
//! Batches are encoded and compressed by the generator thread, never on the async executor;
//! a sender only POSTs bytes. One sender per endpoint sends batches in order, so samples of a
//! series never arrive out of order, and a batch is retried until it is accepted, refused for
//! good (a 4xx other than 429) or pushed out of a full queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::config::generator::RemoteWriteConfig;
use crate::metrics::Metrics;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub(crate) timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TimeSeries {
    /// Sorted by name, `__name__` among them.
    #[prost(message, repeated, tag = "1")]
    pub(crate) labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub(crate) exemplars: Vec<Exemplar>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(crate) struct Label {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(string, tag = "2")]
    pub(crate) value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Sample {
    #[prost(double, tag = "1")]
    pub(crate) value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub(crate) timestamp: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub(crate) labels: Vec<Label>,
    #[prost(double, tag = "2")]
    pub(crate) value: f64,
    #[prost(int64, tag = "3")]
    pub(crate) timestamp: i64,
}

/// One encoded, compressed request body, shared by every endpoint's queue.
#[derive(Clone, Debug)]
pub(crate) struct Batch {
    pub(crate) tenant: String,
    pub(crate) body: Bytes,
    pub(crate) samples: usize,
}

/// Splits series into requests of at most `max_samples` samples each, encoded and
/// snappy-compressed (block format, as remote write requires).
pub(crate) fn encode_batches(
    tenant: &str,
    series: Vec<TimeSeries>,
    max_samples: usize,
) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut samples = 0;
    let mut flush = |current: &mut Vec<TimeSeries>, samples: &mut usize| {
        if current.is_empty() {
            return;
        }
        let req = WriteRequest {
            timeseries: std::mem::take(current),
        };
        let raw = req.encode_to_vec();
        // Compressing a buffer of our own making cannot fail; an error would mean a bug in
        // snap, and skipping the batch beats bringing the generator down.
        match snap::raw::Encoder::new().compress_vec(&raw) {
            Ok(body) => out.push(Batch {
                tenant: tenant.to_owned(),
                body: Bytes::from(body),
                samples: *samples,
            }),
            Err(e) => warn!(error = %e, "snappy compression failed, batch skipped"),
        }
        *samples = 0;
    };
    for ts in series {
        let n = ts.samples.len();
        if samples + n > max_samples {
            flush(&mut current, &mut samples);
        }
        samples += n;
        current.push(ts);
    }
    flush(&mut current, &mut samples);
    out
}

/// Batches waiting for one endpoint, bounded in samples.
struct Queue {
    batches: VecDeque<Batch>,
    samples: usize,
}

/// One remote-write endpoint: its queue and what its sender needs.
pub(crate) struct Endpoint {
    cfg: RemoteWriteConfig,
    add_org_id: bool,
    queue: Mutex<Queue>,
    /// Samples queued or in flight at this endpoint.
    pending: AtomicU64,
    wake: Notify,
    metrics: Arc<Metrics>,
    /// Samples pending over all endpoints, for the gauge.
    all_pending: Arc<AtomicU64>,
}

impl Endpoint {
    pub(crate) fn new(
        cfg: RemoteWriteConfig,
        add_org_id: bool,
        metrics: Arc<Metrics>,
        all_pending: Arc<AtomicU64>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            add_org_id,
            queue: Mutex::new(Queue {
                batches: VecDeque::new(),
                samples: 0,
            }),
            pending: AtomicU64::new(0),
            wake: Notify::new(),
            metrics,
            all_pending,
        })
    }

    pub(crate) fn max_samples_per_send(&self) -> usize {
        self.cfg.queue_config.max_samples_per_send
    }

    /// Samples queued or being sent.
    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    fn add_pending(&self, n: usize, up: bool) {
        let n = n as u64;
        let total = if up {
            self.pending.fetch_add(n, Ordering::AcqRel);
            self.all_pending.fetch_add(n, Ordering::AcqRel) + n
        } else {
            self.pending.fetch_sub(n, Ordering::AcqRel);
            self.all_pending.fetch_sub(n, Ordering::AcqRel) - n
        };
        self.metrics.generator.samples_queued.set(total);
    }

    /// Queues a batch; when the queue is over capacity the oldest batches go (counted), so
    /// what is kept is the most recent stretch of every series.
    pub(crate) fn push(&self, batch: Batch) {
        let n = batch.samples;
        let mut dropped = 0;
        {
            let mut q = self.queue.lock();
            q.samples += n;
            q.batches.push_back(batch);
            while q.samples > self.cfg.queue_config.capacity && q.batches.len() > 1 {
                if let Some(old) = q.batches.pop_front() {
                    q.samples -= old.samples;
                    dropped += old.samples;
                }
            }
        }
        self.add_pending(n, true);
        if dropped > 0 {
            self.metrics.generator.samples_dropped.add(dropped as u64);
            self.add_pending(dropped, false);
            warn!(endpoint = %self.cfg.url, samples = dropped, "remote-write queue full, oldest samples dropped");
        }
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<Batch> {
        let mut q = self.queue.lock();
        let b = q.batches.pop_front()?;
        q.samples -= b.samples;
        Some(b)
    }

    /// Sends queued batches in order until the task is dropped.
    pub(crate) async fn run(self: Arc<Self>, client: reqwest_client::Client) {
        loop {
            let Some(batch) = self.pop() else {
                self.wake.notified().await;
                continue;
            };
            self.send_until_done(&client, &batch).await;
            self.add_pending(batch.samples, false);
        }
    }

    async fn send_until_done(&self, client: &reqwest_client::Client, batch: &Batch) {
        let q = &self.cfg.queue_config;
        let mut backoff = q.min_backoff;
        let mut retries = 0u32;
        loop {
            match self.send_once(client, batch).await {
                Outcome::Sent => {
                    self.metrics
                        .generator
                        .samples_sent
                        .add(batch.samples as u64);
                    if retries > 0 {
                        info!(endpoint = %self.cfg.url, retries, "remote write recovered");
                    }
                    return;
                }
                Outcome::Refused(reason) => {
                    self.metrics
                        .generator
                        .samples_failed
                        .add(batch.samples as u64);
                    warn!(endpoint = %self.cfg.url, tenant = %batch.tenant, samples = batch.samples, reason = %reason, "remote write refused, batch dropped");
                    return;
                }
                Outcome::Retry(reason) => {
                    self.metrics.generator.send_retries.inc();
                    // Once per batch at warn, so an outage shows without a line per retry.
                    if retries == 0 {
                        warn!(endpoint = %self.cfg.url, reason = %reason, queued = self.pending(), "remote write failed, retrying until it succeeds");
                    }
                    retries += 1;
                    debug!(endpoint = %self.cfg.url, reason = %reason, backoff_ms = backoff.as_millis() as u64, "remote write failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(q.max_backoff);
                }
            }
        }
    }

    async fn send_once(&self, client: &reqwest_client::Client, batch: &Batch) -> Outcome {
        let mut req = client
            .post(&self.cfg.url)
            .timeout(self.cfg.remote_timeout)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("User-Agent", concat!("vivace/", env!("CARGO_PKG_VERSION")))
            .header("X-Prometheus-Remote-Write-Version", "0.1.0");
        if self.add_org_id {
            req = req.header("X-Scope-OrgID", batch.tenant.as_str());
        }
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(auth) = &self.cfg.basic_auth {
            req = req.basic_auth(&auth.username, Some(auth.password.expose()));
        }
        match req.body(batch.body.clone()).send().await {
            // A request that cannot even be built (a bad url) will never succeed.
            Err(e) if e.is_builder() => Outcome::Refused(e.to_string()),
            Err(e) => Outcome::Retry(e.to_string()),
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    return Outcome::Sent;
                }
                let body = resp.text().await.unwrap_or_default();
                let reason = format!("{status}: {}", body.trim());
                if status.is_server_error() || status.as_u16() == 429 {
                    Outcome::Retry(reason)
                } else {
                    Outcome::Refused(reason)
                }
            }
        }
    }
}

enum Outcome {
    Sent,
    Retry(String),
    Refused(String),
}

/// The HTTP client every endpoint shares.
pub(crate) fn client() -> Result<reqwest_client::Client, String> {
    reqwest_client::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("cannot build the remote-write http client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::generator::QueueConfig;

    fn series(name: &str, samples: usize) -> TimeSeries {
        TimeSeries {
            labels: vec![Label {
                name: "__name__".into(),
                value: name.into(),
            }],
            samples: (0..samples)
                .map(|i| Sample {
                    value: i as f64,
                    timestamp: i as i64,
                })
                .collect(),
            exemplars: vec![],
        }
    }

    #[test]
    fn batches_respect_max_samples_and_decode_back() {
        let all: Vec<_> = (0..5).map(|i| series(&format!("m{i}"), 2)).collect();
        let batches = encode_batches("t", all.clone(), 4);
        assert_eq!(
            batches.iter().map(|b| b.samples).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        let mut decoded = Vec::new();
        for b in &batches {
            let raw = snap::raw::Decoder::new().decompress_vec(&b.body).unwrap();
            decoded.extend(WriteRequest::decode(&raw[..]).unwrap().timeseries);
        }
        assert_eq!(decoded, all);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_batches_and_counts_them() {
        let metrics = Arc::new(Metrics::default());
        let cfg = RemoteWriteConfig {
            url: "http://127.0.0.1:1/api/v1/write".into(),
            name: String::new(),
            remote_timeout: Duration::from_secs(1),
            headers: Default::default(),
            basic_auth: None,
            queue_config: QueueConfig {
                capacity: 10,
                ..QueueConfig::default()
            },
        };
        let ep = Endpoint::new(cfg, true, metrics.clone(), Arc::new(AtomicU64::new(0)));
        for i in 0..4 {
            ep.push(Batch {
                tenant: format!("b{i}"),
                body: Bytes::new(),
                samples: 4,
            });
        }
        assert_eq!(metrics.generator.samples_dropped.get(), 8);
        assert_eq!(ep.pending(), 8);
        assert_eq!(metrics.generator.samples_queued.get(), 8);
        assert_eq!(ep.pop().unwrap().tenant, "b2");
        assert_eq!(ep.pop().unwrap().tenant, "b3");
        assert!(ep.pop().is_none());
    }
}
