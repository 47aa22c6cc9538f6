//! The one place that speaks the Kafka protocol (through `rskafka`): connecting, making sure
//! the topic exists, producing with acks=all and fetching. Everything else in `ingest/`
//! works on partitions, offsets and bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record as KafkaRecord;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot reach kafka broker {address} within {timeout:?}")]
    DialTimeout { address: String, timeout: Duration },
    #[error("kafka {op} timed out after {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("kafka {op} failed: {source}")]
    Client {
        op: &'static str,
        source: rskafka::client::error::Error,
    },
    #[error("topic {0} does not exist and ingest.kafka.auto_create_topic_enabled is false")]
    NoTopic(String),
    #[error("topic {0} has no partitions")]
    NoPartitions(String),
    #[error("kafka fetch offset {offset} is out of range for partition {partition}")]
    OutOfRange { partition: i32, offset: i64 },
}

/// One fetched record: its offset and value.
pub(crate) struct Fetched {
    pub(crate) offset: i64,
    pub(crate) value: Vec<u8>,
}

/// A connection to the cluster and the topic's partition clients, made once and shared.
pub(crate) struct Kafka {
    client: Client,
    topic: String,
    partitions: u32,
    write_timeout: Duration,
    clients: Mutex<HashMap<i32, Arc<PartitionClient>>>,
}

impl Kafka {
    /// Connects, creates the topic when allowed and missing, and learns its partition count.
    pub(crate) async fn connect(cfg: &KafkaConfig) -> Result<Arc<Kafka>, KafkaError> {
        let mut builder = ClientBuilder::new(vec![cfg.address.clone()])
            .client_id(cfg.client_id.as_str())
            // Without a deadline the client retries forever; the caller's timeouts decide.
            .backoff_config(rskafka::BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
                deadline: Some(cfg.write_timeout),
            });
        if !cfg.sasl_username.is_empty() {
            builder = builder.sasl_config(SaslConfig::Plain(Credentials::new(
                cfg.sasl_username.clone(),
                cfg.sasl_password.expose().to_owned(),
            )));
        }
        let client = tokio::time::timeout(cfg.dial_timeout, builder.build())
            .await
            .map_err(|_| KafkaError::DialTimeout {
                address: cfg.address.clone(),
                timeout: cfg.dial_timeout,
            })?
            .map_err(|source| KafkaError::Client {
                op: "connect",
                source,
            })?;
        let partitions = ensure_topic(&client, cfg).await?;
        info!(address = %cfg.address, topic = %cfg.topic, partitions, "connected to the ingest log");
        Ok(Arc::new(Kafka {
            client,
            topic: cfg.topic.clone(),
            partitions,
            write_timeout: cfg.write_timeout,
            clients: Mutex::new(HashMap::new()),
        }))
    }

    pub(crate) fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn partition(&self, p: i32) -> Result<Arc<PartitionClient>, KafkaError> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&p) {
            return Ok(c.clone());
        }
        let c = self
            .timed(
                "partition lookup",
                self.client
                    .partition_client(self.topic.clone(), p, UnknownTopicHandling::Retry),
            )
            .await?;
        let c = Arc::new(c);
        clients.insert(p, c.clone());
        Ok(c)
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, rskafka::client::error::Error>>,
    ) -> Result<T, KafkaError> {
        tokio::time::timeout(self.write_timeout, f)
            .await
            .map_err(|_| KafkaError::Timeout {
                op,
                timeout: self.write_timeout,
            })?
            .map_err(|source| KafkaError::Client { op, source })
    }

    /// Produces `values` to partition `p` and returns once the broker has acknowledged all
    /// of them (rskafka always asks for acks=all), or fails within `write_timeout`.
    pub(crate) async fn produce(
        &self,
        p: i32,
        key: &[u8],
        values: Vec<Vec<u8>>,
    ) -> Result<(), KafkaError> {
        let client = self.partition(p).await?;
        let now = rskafka::chrono::Utc::now();
        let records = values
            .into_iter()
            .map(|v| KafkaRecord {
                key: Some(key.to_vec()),
                value: Some(v),
                headers: Default::default(),
                timestamp: now,
            })
            .collect();
        self.timed(
            "produce",
            client.produce(records, Compression::NoCompression),
        )
        .await
        .map(|_| ())
    }

    /// Records of partition `p` from `offset` on (up to about `max_bytes`, waiting up to
    /// `max_wait` for some to arrive), and the partition's high watermark.
    pub(crate) async fn fetch(
        &self,
        p: i32,
        offset: i64,
        max_bytes: i32,
        max_wait: Duration,
    ) -> Result<(Vec<Fetched>, i64), KafkaError> {
        let client = self.partition(p).await?;
        let wait_ms = i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX);
        let res = self
            .timed(
                "fetch",
                client.fetch_records(offset, 1..max_bytes.max(2), wait_ms),
            )
            .await;
        match res {
            Ok((records, high)) => Ok((
                records
                    .into_iter()
                    .map(|r| Fetched {
                        offset: r.offset,
                        value: r.record.value.unwrap_or_default(),
                    })
                    .collect(),
                high,
            )),
            Err(KafkaError::Client {
                source:
                    rskafka::client::error::Error::ServerError {
                        protocol_error: rskafka::client::error::ProtocolError::OffsetOutOfRange,
                        ..
                    },
                ..
            }) => Err(KafkaError::OutOfRange {
                partition: p,
                offset,
            }),
            Err(e) => Err(e),
        }
    }

    /// The first offset the broker still keeps in partition `p`.
    pub(crate) async fn earliest(&self, p: i32) -> Result<i64, KafkaError> {
        let client = self.partition(p).await?;
        self.timed("list offsets", client.get_offset(OffsetAt::Earliest))
            .await
    }

    /// The high watermark of partition `p`: the offset the next record will get, so every
    /// record acknowledged so far lies below it. ListOffsets (latest) alone is not trusted:
    /// tansu 0.6 on object storage answers it from the batch object modified last, at the
    /// store's one-second resolution, so it can name an older batch. A fetch from that
    /// offset (one batch at most, no wait) carries the broker's own high watermark.
    pub(crate) async fn latest(&self, p: i32) -> Result<i64, KafkaError> {
        let client = self.partition(p).await?;
        let listed = self
            .timed("list offsets", client.get_offset(OffsetAt::Latest))
            .await?;
        let from = match self.fetch(p, listed, 1, Duration::ZERO).await {
            Ok((_, high)) => return Ok(high.max(listed)),
            // Retention removed everything below `listed`'s batch: ask from the start.
            Err(KafkaError::OutOfRange { .. }) => self.earliest(p).await?,
            Err(e) => return Err(e),
        };
        let (_, high) = self.fetch(p, from, 1, Duration::ZERO).await?;
        Ok(high.max(listed))
    }
}

async fn ensure_topic(client: &Client, cfg: &KafkaConfig) -> Result<u32, KafkaError> {
    let op = |op: &'static str| move |source| KafkaError::Client { op, source };
    let find = |topics: Vec<rskafka::topic::Topic>| {
        topics
            .into_iter()
            .find(|t| t.name == cfg.topic)
            .map(|t| t.partitions.len() as u32)
    };
    if let Some(n) = find(client.list_topics().await.map_err(op("list topics"))?) {
        return nonzero(n, &cfg.topic);
    }
    if !cfg.auto_create_topic_enabled {
        return Err(KafkaError::NoTopic(cfg.topic.clone()));
    }
    let controller = client
        .controller_client()
        .map_err(op("controller lookup"))?;
    let timeout_ms = i32::try_from(cfg.write_timeout.as_millis()).unwrap_or(i32::MAX);
    if let Err(e) = controller
        .create_topic(
            cfg.topic.clone(),
            cfg.auto_create_topic_default_partitions,
            1,
            timeout_ms,
        )
        .await
    {
        // Another node may have created it first; the listing below decides.
        warn!(topic = %cfg.topic, error = %e, "create topic failed");
    }
    // Topic metadata can lag its creation on some brokers.
    for _ in 0..50 {
        if let Some(n) = find(client.list_topics().await.map_err(op("list topics"))?) {
            if n > 0 {
                info!(topic = %cfg.topic, partitions = n, "ingest topic ready");
                return Ok(n);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(KafkaError::NoPartitions(cfg.topic.clone()))
}

fn nonzero(n: u32, topic: &str) -> Result<u32, KafkaError> {
    if n == 0 {
        Err(KafkaError::NoPartitions(topic.to_owned()))
    } else {
        Ok(n)
    }
}
