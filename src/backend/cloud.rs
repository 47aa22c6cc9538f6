//! Remote buckets: S3 (and S3-compatible servers), GCS and Azure Blob Storage, built from
//! the Tempo-shaped config sections. Everything here ends in an `Arc<dyn ObjectStore>` that
//! `Backend` wraps; the differences between clouds stop at this file.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, RetryConfig, StaticCredentialProvider,
};

use super::BackendError;
use crate::config::{AzureConfig, GcsConfig, S3Config};

/// Default size of one part of a multipart upload (S3 requires at least 5 MiB).
pub(super) const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
const MIN_S3_PART_SIZE: u64 = 5 * 1024 * 1024;

/// A store plus what `Backend` reports and needs to know about it.
pub(super) struct Built {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) description: String,
    pub(super) part_size: usize,
}

/// Transient failures (5xx, 429, timeouts, refused or dropped connections) are retried
/// with exponential backoff and jitter: each wait is drawn between 100 ms and 3x the last
/// one (capped at 10 s). Twenty retries, because the jitter can draw many short waits in a
/// row (ten once spanned only 2.5 s, less than an S3 server's restart plus the few seconds
/// of 500s while its volumes load); `retry_timeout` bounds the total.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            base: 3.0,
        },
        max_retries: 20,
        retry_timeout: Duration::from_secs(120),
    }
}

fn client_options(allow_http: bool, allow_invalid_certificates: bool) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_allow_invalid_certificates(allow_invalid_certificates)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(60))
}

/// Tempo writes endpoints as `host:port`; a full URL is accepted too.
fn endpoint_url(endpoint: &str, insecure: bool) -> String {
    let e = endpoint.trim_end_matches('/');
    if e.contains("://") {
        e.to_owned()
    } else if insecure {
        format!("http://{e}")
    } else {
        format!("https://{e}")
    }
}

fn with_prefix(
    store: Arc<dyn ObjectStore>,
    prefix: &str,
    description: String,
) -> (Arc<dyn ObjectStore>, String) {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        (store, description)
    } else {
        (
            Arc::new(PrefixStore::new(store, prefix)),
            format!("{description}/{prefix}"),
        )
    }
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Setup(format!("{what}: {e}"))
}

fn env_sets_s3_endpoint() -> bool {
    ["AWS_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
        .iter()
        .any(|k| std::env::var_os(k).is_some())
}

pub(super) fn s3(cfg: &S3Config) -> Result<Built, BackendError> {
    if cfg.bucket.is_empty() {
        return Err(BackendError::Setup(
            "storage.trace.s3.bucket is empty".into(),
        ));
    }
    if cfg.part_size != 0 && cfg.part_size < MIN_S3_PART_SIZE {
        return Err(BackendError::Setup(format!(
            "storage.trace.s3.part_size must be at least {MIN_S3_PART_SIZE} bytes"
        )));
    }
    // The standard AWS variables first; what the config file says wins.
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&cfg.bucket)
        .with_retry(retry_config())
        .with_client_options(client_options(cfg.insecure, cfg.insecure_skip_verify));
    if !cfg.region.is_empty() {
        b = b.with_region(&cfg.region);
    }
    let mut where_ = "aws".to_owned();
    if !cfg.endpoint.is_empty() {
        let url = endpoint_url(&cfg.endpoint, cfg.insecure);
        where_ = url.clone();
        // Like the Go clients Tempo uses: virtual-hosted requests for AWS itself unless
        // path style is forced; path style for every other (S3-compatible) server.
        let aws_host = url
            .split("://")
            .nth(1)
            .map(|h| h.split(['/', ':']).next().unwrap_or(""))
            .is_some_and(|h| h.ends_with(".amazonaws.com"));
        if aws_host && !cfg.forcepathstyle {
            let (scheme, host) = url.split_once("://").unwrap_or(("https", &url));
            b = b
                .with_endpoint(format!("{scheme}://{}.{host}", cfg.bucket))
                .with_virtual_hosted_style_request(true);
        } else {
            b = b
                .with_endpoint(url)
                .with_virtual_hosted_style_request(false);
        }
    } else if !env_sets_s3_endpoint() {
        b = b.with_virtual_hosted_style_request(!cfg.forcepathstyle);
    }
    match (cfg.access_key.is_empty(), cfg.secret_key.is_empty()) {
        (false, false) => {
            let token =
                (!cfg.session_token.is_empty()).then(|| cfg.session_token.expose().to_owned());
            b = b.with_credentials(Arc::new(StaticCredentialProvider::new(AwsCredential {
                key_id: cfg.access_key.clone(),
                secret_key: cfg.secret_key.expose().to_owned(),
                token,
            })));
        }
        (true, true) => {} // environment, container or instance credentials
        _ => {
            return Err(BackendError::Setup(
                "storage.trace.s3: set both access_key and secret_key, or neither".into(),
            ))
        }
    }
    let store = b.build().map_err(|e| setup_err("s3", e))?;
    let (store, description) = with_prefix(
        Arc::new(store),
        &cfg.prefix,
        format!("s3:{}@{where_}", cfg.bucket),
    );
    Ok(Built {
        store,
        description,
        part_size: if cfg.part_size == 0 {
            DEFAULT_PART_SIZE
        } else {
            cfg.part_size as usize
        },
    })
}

pub(super) fn gcs(cfg: &GcsConfig) -> Result<Built, BackendError> {
    if cfg.bucket_name.is_empty() {
        return Err(BackendError::Setup(
            "storage.trace.gcs.bucket_name is empty".into(),
        ));
    }
    let mut b = GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(&cfg.bucket_name)
        .with_retry(retry_config())
        .with_client_options(client_options(cfg.insecure, false));
    if !cfg.endpoint.is_empty() {
        b = b.with_base_url(&endpoint_url(&cfg.endpoint, cfg.insecure));
    }
    if !cfg.service_account.is_empty() {
        b = b.with_service_account_path(&cfg.service_account);
    }
    let store = b.build().map_err(|e| setup_err("gcs", e))?;
    let (store, description) = with_prefix(
        Arc::new(store),
        &cfg.prefix,
        format!("gcs:{}", cfg.bucket_name),
    );
    Ok(Built {
        store,
        description,
        part_size: DEFAULT_PART_SIZE,
    })
}

pub(super) fn azure(cfg: &AzureConfig) -> Result<Built, BackendError> {
    if cfg.container_name.is_empty() || cfg.storage_account_name.is_empty() {
        return Err(BackendError::Setup(
            "storage.trace.azure needs container_name and storage_account_name".into(),
        ));
    }
    let mut b = MicrosoftAzureBuilder::from_env()
        .with_account(&cfg.storage_account_name)
        .with_container_name(&cfg.container_name)
        .with_retry(retry_config())
        .with_client_options(client_options(false, false));
    if !cfg.storage_account_key.is_empty() {
        b = b.with_access_key(cfg.storage_account_key.expose());
    }
    let suffix = cfg.endpoint_suffix.trim_matches('.');
    if !suffix.is_empty() && suffix != "blob.core.windows.net" {
        b = b.with_endpoint(format!("https://{}.{suffix}", cfg.storage_account_name));
    }
    let store = b.build().map_err(|e| setup_err("azure", e))?;
    let (store, description) = with_prefix(
        Arc::new(store),
        &cfg.prefix,
        format!("azure:{}/{}", cfg.storage_account_name, cfg.container_name),
    );
    Ok(Built {
        store,
        description,
        part_size: DEFAULT_PART_SIZE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(endpoint_url("minio:9000", true), "http://minio:9000");
        assert_eq!(
            endpoint_url("s3.amazonaws.com", false),
            "https://s3.amazonaws.com"
        );
        assert_eq!(endpoint_url("http://x:1/", false), "http://x:1");
    }

    #[test]
    fn clouds_build_without_network() {
        let s3 = s3(&S3Config {
            bucket: "b".into(),
            endpoint: "127.0.0.1:9".into(),
            prefix: "/team/".into(),
            access_key: "a".into(),
            secret_key: crate::config::Secret("s".into()),
            insecure: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s3.description, "s3:b@http://127.0.0.1:9/team");
        assert!(matches!(
            super::s3(&S3Config {
                bucket: "b".into(),
                access_key: "a".into(),
                ..Default::default()
            }),
            Err(BackendError::Setup(_))
        ));
        let g = gcs(&GcsConfig {
            bucket_name: "g".into(),
            endpoint: "127.0.0.1:9".into(),
            insecure: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(g.description, "gcs:g");
        let a = azure(&AzureConfig {
            container_name: "c".into(),
            storage_account_name: "acct".into(),
            storage_account_key: crate::config::Secret("a2V5".into()),
            prefix: "p".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(a.description, "azure:acct/c/p");
    }
}
