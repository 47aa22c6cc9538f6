//! Process wiring: which components a `-target` starts (one table), and their start-up and
//! shutdown order. Components get their dependencies passed in; there is no global state.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::backend::Backend;
use crate::block::BlockConfig;
use crate::blocklist::BlockList;
use crate::config::{parse_listen_addr, Config, ConfigError};
use crate::distributor::Distributor;
use crate::frontend::Frontend;
use crate::generator::Generator;
use crate::ingester::wal::Wal;
use crate::ingester::{BlockCommitted, Ingester};
use crate::metrics::Metrics;
use crate::model::TenantId;
use crate::overrides::Overrides;
use crate::querier::Querier;
use crate::receiver;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Component {
    Distributor,
    Ingester,
    Querier,
    QueryFrontend,
    Compactor,
    MetricsGenerator,
}

use Component::*;

/// What each `-target` runs. A distributor without an ingester needs the ingest log
/// (`ingest.enabled`), and is refused without it. `metrics-generator` receives OTLP itself
/// and only derives metrics: its spans are not stored (send them to it as well as to the
/// storing process).
pub(crate) const TARGETS: &[(&str, &[Component])] = &[
    (
        "all",
        &[
            Distributor,
            Ingester,
            Querier,
            QueryFrontend,
            Compactor,
            MetricsGenerator,
        ],
    ),
    ("distributor", &[Distributor]),
    ("metrics-generator", &[Distributor, MetricsGenerator]),
    ("querier", &[Querier, QueryFrontend]),
    ("query-frontend", &[Querier, QueryFrontend]),
    ("compactor", &[Compactor]),
];

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("unknown or not yet supported target {0:?}: use one of {1}")]
    Target(String, String),
    #[error("storage: {0}")]
    Backend(#[from] crate::backend::BackendError),
    #[error("wal: {0}")]
    Wal(#[from] crate::ingester::wal::WalError),
    #[error("ingest log: {0}")]
    Ingest(#[from] crate::ingest::KafkaError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(String),
    #[error(transparent)]
    Generator(#[from] crate::generator::GeneratorError),
}

pub(crate) fn components_for(target: &str) -> Result<&'static [Component], AppError> {
    TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, c)| *c)
        .ok_or_else(|| {
            let names: Vec<_> = TARGETS.iter().map(|(n, _)| *n).collect();
            AppError::Target(target.to_owned(), names.join(", "))
        })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Listen { addr, source })
}

/// How long a compactor's tenant lease may go unrenewed before another compactor takes the
/// tenant over (a crashed compactor's tenants wait this long).
const COMPACTION_LEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// This node's name in the ingest partition leases and compaction leases: `ingest.instance_id`, else the host
/// name and HTTP port (stable across restarts, so a restarted node reclaims its leases).
fn instance_id(cfg: &Config) -> Result<String, AppError> {
    if !cfg.ingest.instance_id.is_empty() {
        return Ok(cfg.ingest.instance_id.clone());
    }
    let host: String = hostname()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect();
    Ok(format!("{host}-{}", cfg.server.http_addr()?.port()))
}

/// Where other nodes reach this one's HTTP API: `ingest.advertise_address`, else the HTTP
/// listen address (the host name when it listens on every interface).
fn advertise_address(cfg: &Config) -> Result<String, AppError> {
    if !cfg.ingest.advertise_address.is_empty() {
        return Ok(cfg.ingest.advertise_address.clone());
    }
    let addr = cfg.server.http_addr()?;
    if addr.ip().is_unspecified() {
        return Ok(format!("http://{}:{}", hostname(), addr.port()));
    }
    Ok(format!("http://{addr}"))
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Resolves once shutdown is signalled.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serves an axum router (HTTP/1 and h2c) until shutdown, finishing in-flight requests.
fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    stop: watch::Receiver<bool>,
) -> JoinHandle<Result<(), AppError>> {
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stopped(stop))
            .await
            .map_err(|e| AppError::Serve(e.to_string()))
    })
}

/// The partition leases of this node's consumer group and topic in the bucket.
fn ingest_ownership(
    cfg: &Config,
    backend: &Backend,
    kafka: &crate::ingest::Kafka,
    metrics: &Arc<Metrics>,
) -> Result<Arc<crate::ingest::ownership::Ownership>, AppError> {
    let k = &cfg.ingest.kafka;
    Ok(crate::ingest::ownership::Ownership::new(
        backend.clone(),
        crate::ingest::ownership::OwnershipConfig {
            instance: instance_id(cfg)?,
            address: advertise_address(cfg)?,
            timeout: cfg.ingest.partition_lease_timeout,
            partitions: kafka.partitions(),
            dir: crate::ingest::PartitionLog::dir(&k.consumer_group, &k.topic),
        },
        metrics.clone(),
    ))
}

/// Runs the configured components until `shutdown` resolves, then stops them in order:
/// stop accepting, finish in-flight requests (their acknowledgements included), stop
/// background work. The WAL keeps whatever was not yet in a block.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let target = cfg.target.clone().unwrap_or_else(|| "all".into());
    let components = components_for(&target)?;
    let has = |c: Component| components.contains(&c);
    let metrics = Arc::new(Metrics::default());
    let backend =
        Backend::from_config(&cfg.storage.trace)?.counting_into(metrics.backend_requests.clone());
    let blocklist = Arc::new(BlockList::default());
    let ready = Arc::new(AtomicBool::new(false));
    // Read once: the secret nodes present to each other on `/internal/live`.
    let peer_token = if cfg.ingest.enabled {
        cfg.ingest.peer_token()?
    } else {
        None
    };
    info!(target = %target, backend = backend.description(), "starting vivace");

    // With `ingest`, the Kafka-protocol log replaces the WAL as the durability point.
    let kafka = if cfg.ingest.enabled {
        Some(crate::ingest::Kafka::connect(&cfg.ingest.kafka).await?)
    } else {
        None
    };
    let mut consumers = Vec::new();
    // Tasks started before the servers (stopped with the other background work).
    let mut background_early: Vec<JoinHandle<()>> = Vec::new();
    let mut ownership = None;
    let caught_up = Arc::new(crate::ingest::CaughtUp::new(
        cfg.ingest.query_wait_timeout,
        metrics.clone(),
    ));
    // Blocks this node committed, offered to other nodes' queries until their block-list
    // poll has surely seen them.
    let recent = Arc::new(crate::querier::remote::RecentBlocks::new(
        cfg.storage.trace.blocklist_poll * 2 + Duration::from_secs(10),
    ));
    let ingester = if has(Ingester) {
        let bl = blocklist.clone();
        let rb = recent.clone();
        let on_commit: BlockCommitted =
            Arc::new(move |meta| match TenantId::new(&meta.tenant_id) {
                Ok(t) => {
                    rb.add(meta.clone());
                    bl.add(t, meta)
                }
                Err(e) => warn!(error = %e, "committed block has a bad tenant id"),
            });
        let block_cfg = BlockConfig {
            row_group_size_bytes: cfg.ingester.row_group_size_bytes,
            bloom_false_positive: cfg.storage.trace.block.bloom_filter_false_positive,
            bloom_shard_size_bytes: cfg.storage.trace.block.bloom_filter_shard_size_bytes,
            compression: BlockConfig::CUT_COMPRESSION,
            ..BlockConfig::default()
        };
        if let Some(kafka) = &kafka {
            let k = &cfg.ingest.kafka;
            let owners = ingest_ownership(&cfg, &backend, kafka, &metrics)?;
            info!(
                instance = owners.instance(),
                "sharing ingest partitions through bucket leases"
            );
            ownership = Some(owners.clone());
            let log = Arc::new(
                crate::ingest::PartitionLog::open_fenced(
                    backend.clone(),
                    &k.consumer_group,
                    &k.topic,
                    owners.clone(),
                )
                .await?,
            );
            let ing = Ingester::new(
                cfg.ingester.clone(),
                log.clone(),
                backend.clone(),
                block_cfg,
                metrics.clone(),
                on_commit,
            );
            consumers = crate::ingest::Consumer::new(kafka.clone(), ing.clone(), log)
                .with_caught_up(caught_up.clone())
                .start(Some(owners))
                .await?;
            ing.watch_memory();
            Some(ing)
        } else {
            let (wal, replay) =
                Wal::open_async(&cfg.storage.trace.wal.path, metrics.clone()).await?;
            let ing = Ingester::new(
                cfg.ingester.clone(),
                Arc::new(wal),
                backend.clone(),
                block_cfg,
                metrics.clone(),
                on_commit,
            );
            ing.replay_wal(replay).await?;
            ing.watch_memory();
            Some(ing)
        }
    } else {
        None
    };

    let querier = if has(Querier) {
        let mut q = Querier::new(
            backend.clone(),
            ingester.clone(),
            blocklist.clone(),
            metrics.clone(),
            cfg.querier.concurrent_blocks,
        )
        .with_poll_config(crate::blocklist::PollConfig::from_config(
            &cfg.storage.trace,
        ))
        .with_tag_scan_bytes(cfg.querier.max_tag_scan_bytes);
        if let (Some(kafka), None) = (&kafka, &ownership) {
            // A node consuming nothing still finds the owners: it reads their leases.
            let o = ingest_ownership(&cfg, &backend, kafka, &metrics)?;
            o.read_owners().await;
            info!(
                instance = o.instance(),
                "reading ingest partition leases to find live-trace owners"
            );
            background_early.push(tokio::spawn(o.clone().run_owner_reader()));
            ownership = Some(o);
        }
        if let (Some(o), Some(kafka)) = (&ownership, &kafka) {
            // An owner that does not answer within a lease period (beyond its bounded
            // wait for the high watermark) is treated as gone.
            let timeout = cfg
                .ingest
                .partition_lease_timeout
                .min(Duration::from_secs(10));
            // The consumer long-polls on `kafka`: watermarks get a connection of their own.
            let watermarks = if ingester.is_some() {
                crate::ingest::Kafka::connect(&cfg.ingest.kafka).await?
            } else {
                kafka.clone()
            };
            let peers = crate::ingest::peers::Peers::new(
                o.clone(),
                caught_up.clone(),
                watermarks,
                cfg.ingest.query_wait_timeout,
                timeout,
                peer_token.clone(),
            )
            .map_err(AppError::Serve)?;
            q = q.with_remote(Arc::new(peers), recent.clone(), caught_up.clone());
        }
        let q = Arc::new(q);
        if let Err(e) = q.poll_blocklist().await {
            warn!(error = %e, "first blocklist poll failed, serving without blocks until the next one");
        }
        Some(q)
    } else {
        None
    };
    let frontend = match (&querier, has(QueryFrontend)) {
        (Some(q), true) => Some(Arc::new(Frontend::new(q.clone(), metrics.clone()))),
        _ => None,
    };

    // Secrets are read (files, env) and hashed once, here; the resolver is shared by the
    // API, the streaming querier and both receivers so their rules cannot diverge.
    let tenants = api::auth::TenantResolver::new(
        cfg.multitenancy_enabled,
        api::auth::Authenticator::from_config(&cfg.auth)?,
    );
    let overrides = Overrides::new(&cfg.overrides)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers: Vec<JoinHandle<Result<(), AppError>>> = Vec::new();

    // The API.
    let api_addr = cfg.server.http_addr()?;
    let api_listener = bind(api_addr).await?;
    info!(addr = %api_listener.local_addr().unwrap_or(api_addr), "api listening");
    let api_router = api::router(ApiState {
        frontend,
        metrics: metrics.clone(),
        ready: ready.clone(),
        tenants: tenants.clone(),
        overrides: Some(overrides.clone()),
        query_limits: (&cfg.query_frontend.metrics).into(),
        peer: peer_token
            .as_ref()
            .map(|t| Arc::new(api::peer::PeerToken::new(t.expose()))),
    });
    servers.push(serve_http(api_listener, api_router, stop_rx.clone()));

    let mut background: Vec<JoinHandle<()>> = consumers;
    background.append(&mut background_early);
    // Every role reads limits (ingest, search, retention): one reloader per process.
    background.push(tokio::spawn(
        overrides
            .clone()
            .run_reloader(cfg.overrides.per_tenant_override_period),
    ));

    let generator = if has(MetricsGenerator) {
        Some(Generator::start(
            &cfg.metrics_generator,
            overrides.clone(),
            metrics.clone(),
        )?)
    } else {
        None
    };

    // The receivers.
    let mut distributor_members = None;
    if has(Distributor) {
        let log: Option<Arc<dyn crate::distributor::TraceLog>> = match &kafka {
            Some(_) => {
                // A connection of its own: brokers may answer one connection's requests in
                // order, and the consumer's long-polling fetches would delay every ack.
                let producer = crate::ingest::Kafka::connect(&cfg.ingest.kafka).await?;
                Some(Arc::new(crate::ingest::Producer::new(
                    producer,
                    cfg.ingest.kafka.producer_max_record_size_bytes,
                )))
            }
            None => None,
        };
        let distributor = match log {
            Some(log) if ingester.is_none() => {
                Distributor::log_only(log, metrics.clone(), overrides.clone())
            }
            Some(log) => {
                Distributor::new(ingester.clone(), metrics.clone(), overrides.clone()).with_log(log)
            }
            None if ingester.is_none() && !has(MetricsGenerator) => {
                return Err(AppError::Target(
                    format!("{target} (without ingest.enabled)"),
                    "all, or enable the ingest log".into(),
                ))
            }
            None => Distributor::new(ingester.clone(), metrics.clone(), overrides.clone()),
        };
        let mut distributor = distributor.with_generator(generator.clone());
        if kafka.is_some() {
            // Nodes on one topic count each other, so a `global` tenant rate is shared.
            let healthy = Arc::new(crate::distributor::HealthyDistributors::default());
            let k = &cfg.ingest.kafka;
            let members = crate::ingest::distributors::DistributorMembers::new(
                backend.clone(),
                &crate::ingest::PartitionLog::dir(&k.consumer_group, &k.topic),
                instance_id(&cfg)?,
                cfg.ingest.partition_lease_timeout,
                healthy.clone(),
                metrics.clone(),
            );
            let n = members.tick().await;
            info!(healthy = n, "counting distributors through the bucket");
            background.push(tokio::spawn(members.clone().run()));
            distributor_members = Some(members);
            distributor = distributor.with_healthy(healthy);
        }
        let distributor = Arc::new(distributor);
        let protocols = &cfg.distributor.receivers.otlp.protocols;
        // One in-flight budget for both receivers: memory is shared, so is the bound.
        let admission = receiver::admission::Admission::new(
            receiver::admission::RequestLimits {
                max_spans: cfg.distributor.max_spans_per_request,
                max_decoded_bytes: cfg.distributor.max_decoded_request_bytes,
            },
            cfg.distributor.max_inflight_request_bytes,
        );
        if let Some(g) = &protocols.grpc {
            let addr = parse_listen_addr(&g.endpoint)?;
            let listener = bind(addr).await?;
            info!(addr = %listener.local_addr().unwrap_or(addr), "otlp grpc receiver listening");
            let svc = receiver::grpc::OtlpGrpcService::new(
                distributor.clone(),
                tenants.clone(),
                g.max_recv_msg_size_mib * 1024 * 1024,
                admission.clone(),
            );
            let rx = stop_rx.clone();
            servers.push(tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        stopped(rx),
                    )
                    .await
                    .map_err(|e| AppError::Serve(e.to_string()))
            }));
        }
        if let Some(h) = &protocols.http {
            let addr = parse_listen_addr(&h.endpoint)?;
            let listener = bind(addr).await?;
            info!(addr = %listener.local_addr().unwrap_or(addr), "otlp http receiver listening");
            let router = receiver::http::router(receiver::http::HttpReceiverState {
                distributor: distributor.clone(),
                tenants: tenants.clone(),
                max_body_bytes: h.max_request_body_size,
                admission: admission.clone(),
            });
            servers.push(serve_http(listener, router, stop_rx.clone()));
        }
    }

    // Background work.
    if let Some(ing) = &ingester {
        background.push(tokio::spawn(ing.clone().run_flush_loop()));
    }
    if let Some(q) = &querier {
        background.push(tokio::spawn(
            q.clone().run_poller(cfg.storage.trace.blocklist_poll),
        ));
    }
    if let (Some(q), Some(o)) = (&querier, &ownership) {
        // A partition that changed hands may have left blocks its last holder committed
        // and no longer offers as recent (it may be dead): list the bucket now rather than
        // at the next poll.
        let (q, mut moves) = (q.clone(), o.moves());
        background.push(tokio::spawn(async move {
            while moves.changed().await.is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                moves.borrow_and_update();
                if let Err(e) = q.poll_blocklist().await {
                    warn!(error = %e, "block list poll after a partition move failed");
                }
            }
        }));
    }

    if has(Compactor) {
        // Outputs get the ingester's block shape; the compactor lists the bucket itself and
        // keeps this process's block list in step with what it commits.
        let block_cfg = BlockConfig {
            row_group_size_bytes: cfg.ingester.row_group_size_bytes,
            bloom_false_positive: cfg.storage.trace.block.bloom_filter_false_positive,
            bloom_shard_size_bytes: cfg.storage.trace.block.bloom_filter_shard_size_bytes,
            ..BlockConfig::default()
        };
        let compactor = Arc::new(
            crate::compactor::Compactor::new(
                backend.clone(),
                blocklist.clone(),
                cfg.compactor.compaction.clone(),
                block_cfg,
                overrides.clone(),
                metrics.clone(),
            )
            // Any number of compactors may share the bucket: one per tenant at a time.
            .with_tenant_leases(instance_id(&cfg)?, COMPACTION_LEASE_TIMEOUT),
        );
        background.push(tokio::spawn(compactor.run()));
    }

    ready.store(true, Ordering::Release);
    info!("vivace is ready");

    // Run until asked to stop, or until a server dies.
    let mut first_exit = None;
    tokio::select! {
        () = shutdown => info!("shutting down"),
        (res, _, _) = futures::future::select_all(servers.iter_mut()) => {
            first_exit = Some(match res {
                Ok(Ok(())) => AppError::Serve("a server stopped unexpectedly".into()),
                Ok(Err(e)) => e,
                Err(e) => AppError::Serve(e.to_string()),
            });
        }
    }
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    let grace = cfg.server.graceful_shutdown_timeout;
    let drained = tokio::time::timeout(grace, futures::future::join_all(servers.iter_mut())).await;
    if drained.is_err() {
        warn!(
            grace_ms = grace.as_millis() as u64,
            "in-flight requests did not finish in time"
        );
        for s in &servers {
            s.abort();
        }
    }
    // Requests are drained, so the generator has seen every accepted span: one last
    // collection, and a bounded wait for the endpoints to take it.
    if let Some(g) = &generator {
        g.shutdown(cfg.metrics_generator.storage.remote_write_flush_deadline)
            .await;
    }
    // Stopping the flush loop at an await point is safe: WAL segments outlive their blocks.
    for b in background {
        b.abort();
        let _ = b.await;
    }
    if let Some(m) = &distributor_members {
        m.leave().await;
    }
    // Readers are stopped: hand the partitions over now rather than after the lease timeout.
    if let Some(o) = &ownership {
        o.release_all().await;
    }
    drop(ingester);
    info!("vivace stopped");
    match first_exit {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
