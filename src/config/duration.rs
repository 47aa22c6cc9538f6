//! Durations written as Tempo writes them: `5s`, `1m30s`, `100ms`, or a bare number of seconds.

use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Secs(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse(&t).map_err(de::Error::custom),
    }
}

pub(crate) fn parse(t: &str) -> Result<Duration, String> {
    let t = t.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|e| format!("invalid duration {t:?}: {e}"))
}
