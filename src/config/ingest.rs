//! The `ingest` section: Tempo 3's key names for the Kafka-protocol ingest log. Absent or
//! `enabled: false`, vivace keeps its embedded WAL and nothing else changes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub enabled: bool,
    pub kafka: KafkaConfig,
    /// This consuming node's name in the partition leases; empty: hostname and HTTP port.
    /// Must be stable across restarts so a restarted node reclaims its own leases at once.
    pub instance_id: String,
    /// The HTTP address other nodes reach this one at for its live traces
    /// (`http://host:port`); empty: derived from `server.http_listen_*`.
    pub advertise_address: String,
    /// A partition lease not renewed for this long (as seen by the node that takes it
    /// over, on its own clock) moves to another node: the bound on takeover after a crash.
    #[serde(with = "duration")]
    pub partition_lease_timeout: Duration,
    /// How long a query waits for the nodes holding the partitions it reads to apply
    /// every record below the high watermark it learned from the broker at its start
    /// (learning the watermarks is bounded by it too). A partition not there in time makes
    /// the answer partial. Zero: no watermark is asked for, and a partition counts as
    /// covered once its holder has caught up after gaining it.
    #[serde(with = "duration")]
    pub query_wait_timeout: Duration,
    /// The secret nodes present to each other on `/internal/live` (live traces of any
    /// tenant), read at start-up from the first line of this file, or from the variable
    /// `peer_token_env` names. Set, that endpoint answers only requests carrying it as a
    /// bearer token; required when built-in auth is on.
    pub peer_token_file: Option<PathBuf>,
    pub peer_token_env: Option<String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            kafka: KafkaConfig::default(),
            instance_id: String::new(),
            advertise_address: String::new(),
            partition_lease_timeout: Duration::from_secs(15),
            query_wait_timeout: Duration::from_secs(2),
            peer_token_file: None,
            peer_token_env: None,
        }
    }
}

/// `ingest.kafka`. SASL PLAIN credentials are passed to the client when set; TLS is not
/// supported yet and is refused by name rather than ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap broker, `host:port`.
    pub address: String,
    pub topic: String,
    /// Names where this group's committed offsets live (in the bucket, see `src/ingest/`).
    pub consumer_group: String,
    pub client_id: String,
    #[serde(with = "duration")]
    pub dial_timeout: Duration,
    /// How long a produce may wait for the broker's acknowledgement before the export is
    /// refused as retryable.
    #[serde(with = "duration")]
    pub write_timeout: Duration,
    pub auto_create_topic_enabled: bool,
    pub auto_create_topic_default_partitions: i32,
    /// Records larger than this are split (by trace) before producing.
    pub producer_max_record_size_bytes: usize,
    pub sasl_username: String,
    pub sasl_password: Secret,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            address: "localhost:9092".into(),
            topic: String::new(),
            consumer_group: "vivace".into(),
            client_id: "vivace".into(),
            dial_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
            auto_create_topic_enabled: true,
            auto_create_topic_default_partitions: 4,
            producer_max_record_size_bytes: 15_983_616,
            sasl_username: String::new(),
            sasl_password: Secret::default(),
        }
    }
}

impl IngestConfig {
    /// The peer token from its file or variable; `None` when neither is set. Read once,
    /// at start-up: a missing or empty source is an error naming the key.
    pub fn peer_token(&self) -> Result<Option<Secret>, ConfigError> {
        let secret = if let Some(path) = &self.peer_token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!(
                    "ingest.peer_token_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            // A trailing newline is an editor's, not part of the secret.
            text.lines()
                .next()
                .unwrap_or("")
                .trim_end_matches('\r')
                .to_owned()
        } else if let Some(name) = &self.peer_token_env {
            std::env::var(name).map_err(|_| {
                ConfigError::Invalid(format!(
                    "ingest.peer_token_env: environment variable {name} is not set"
                ))
            })?
        } else {
            return Ok(None);
        };
        if secret.is_empty() {
            return Err(ConfigError::Invalid(
                "ingest: the peer token is empty".into(),
            ));
        }
        Ok(Some(Secret(secret)))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let k = &self.kafka;
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("ingest.kafka.{m}")));
        if k.address.is_empty() {
            return invalid("address must be set when ingest.enabled is true");
        }
        if k.topic.is_empty() {
            return invalid("topic must be set when ingest.enabled is true");
        }
        // The group names a folder in the bucket.
        if k.consumer_group.is_empty()
            || !k
                .consumer_group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return invalid("consumer_group must be non-empty letters, digits, '-', '_' or '.'");
        }
        if k.auto_create_topic_default_partitions < 1 {
            return invalid("auto_create_topic_default_partitions must be at least 1");
        }
        if k.write_timeout.is_zero() || k.dial_timeout.is_zero() {
            return invalid("dial_timeout and write_timeout must be greater than zero");
        }
        if self.partition_lease_timeout < Duration::from_millis(500) {
            return Err(ConfigError::Invalid(
                "ingest.partition_lease_timeout must be at least 500ms".into(),
            ));
        }
        if self.query_wait_timeout > Duration::from_secs(60) {
            return Err(ConfigError::Invalid(
                "ingest.query_wait_timeout must be at most 1m".into(),
            ));
        }
        if self
            .instance_id
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(c)))
        {
            return Err(ConfigError::Invalid(
                "ingest.instance_id must be letters, digits, '-', '_', '.' or ':'".into(),
            ));
        }
        if self.peer_token_file.is_some() && self.peer_token_env.is_some() {
            return Err(ConfigError::Invalid(
                "ingest: give one of peer_token_file and peer_token_env, not both".into(),
            ));
        }
        if k.producer_max_record_size_bytes < 1024 {
            return invalid("producer_max_record_size_bytes must be at least 1024");
        }
        if k.sasl_username.is_empty() != k.sasl_password.is_empty() {
            return invalid("sasl_username and sasl_password must be set together");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn parses_tempo_key_names() {
        let cfg = Config::from_yaml(
            "ingest:\n  enabled: true\n  kafka:\n    address: 127.0.0.1:9092\n    topic: traces\n    \
             consumer_group: g1\n    client_id: node-a\n    dial_timeout: 3s\n    write_timeout: 1s\n    \
             auto_create_topic_enabled: false\n    auto_create_topic_default_partitions: 8\n",
        )
        .unwrap();
        let k = &cfg.ingest.kafka;
        assert!(cfg.ingest.enabled);
        assert_eq!(k.address, "127.0.0.1:9092");
        assert_eq!(k.topic, "traces");
        assert_eq!(k.consumer_group, "g1");
        assert_eq!(k.client_id, "node-a");
        assert_eq!(k.dial_timeout.as_secs(), 3);
        assert_eq!(k.write_timeout.as_secs(), 1);
        assert!(!k.auto_create_topic_enabled);
        assert_eq!(k.auto_create_topic_default_partitions, 8);
        assert_eq!(cfg.ingest.query_wait_timeout.as_secs(), 2, "default");
    }

    #[test]
    fn query_wait_timeout_is_read_and_bounded() {
        let base = "ingest:\n  enabled: true\n  kafka:\n    topic: t\n";
        let cfg = Config::from_yaml(&format!("{base}  query_wait_timeout: 500ms\n")).unwrap();
        assert_eq!(cfg.ingest.query_wait_timeout.as_millis(), 500);
        let cfg = Config::from_yaml(&format!("{base}  query_wait_timeout: 0s\n")).unwrap();
        assert!(cfg.ingest.query_wait_timeout.is_zero());
        let err = Config::from_yaml(&format!("{base}  query_wait_timeout: 2m\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("query_wait_timeout"), "{err}");
        let err = Config::from_yaml("ingest:\n  query_wait: 1s\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("query_wait"), "{err}");
    }

    #[test]
    fn peer_token_is_required_under_auth_and_read_from_one_source() {
        let base = "ingest:\n  enabled: true\n  kafka:\n    topic: t\n";
        let auth = "auth:\n  enabled: true\n  credentials:\n    - tenants: [a]\n      token_sha256: 0000000000000000000000000000000000000000000000000000000000000000\n";
        let err = Config::from_yaml(&format!("{base}{auth}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("peer_token_file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peer");
        std::fs::write(&file, "s3cret\n").unwrap();
        let cfg = Config::from_yaml(&format!(
            "{base}  peer_token_file: {}\n{auth}",
            file.display()
        ))
        .unwrap();
        assert_eq!(cfg.ingest.peer_token().unwrap().unwrap().expose(), "s3cret");
        let both = format!(
            "{base}  peer_token_file: {}\n  peer_token_env: X\n",
            file.display()
        );
        let err = Config::from_yaml(&both).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        let cfg = Config::from_yaml(&format!(
            "{base}  peer_token_env: VIVACE_SURELY_UNSET_PEER_3e\n"
        ))
        .unwrap();
        let err = cfg.ingest.peer_token().unwrap_err().to_string();
        assert!(err.contains("VIVACE_SURELY_UNSET_PEER_3e"), "{err}");
        std::fs::write(&file, "\n").unwrap();
        let cfg =
            Config::from_yaml(&format!("{base}  peer_token_file: {}\n", file.display())).unwrap();
        assert!(cfg.ingest.peer_token().is_err(), "an empty token");
        // Without auth the endpoint may stay open (behind a gateway, as Tempo's is).
        assert!(Config::from_yaml(base)
            .unwrap()
            .ingest
            .peer_token()
            .unwrap()
            .is_none());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_yaml("ingest:\n  kafka:\n    adress: x:1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("adress"), "{err}");
        let err = Config::from_yaml("ingest:\n  enable: true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("enable"), "{err}");
    }

    #[test]
    fn enabled_needs_a_topic_and_sane_values() {
        let err = Config::from_yaml("ingest:\n  enabled: true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ingest.kafka.topic"), "{err}");
        let err = Config::from_yaml(
            "ingest:\n  enabled: true\n  kafka:\n    topic: t\n    auto_create_topic_default_partitions: 0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("auto_create_topic_default_partitions"),
            "{err}"
        );
        // Disabled, the section is parsed but not checked: nothing changes.
        let cfg = Config::from_yaml("ingest:\n  enabled: false\n").unwrap();
        assert!(!cfg.ingest.enabled);
    }
}
