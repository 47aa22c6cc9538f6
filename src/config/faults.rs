//! `storage.trace.fault_injection` (FOR TESTING ONLY): the rules the backend's fault-injecting
//! store applies, read from the config like every other section.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The operation a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultOp {
    Put,
    Get,
    GetRange,
    List,
    Delete,
    /// Every operation.
    Any,
}

impl fmt::Display for FaultOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultOp::Put => "put",
            FaultOp::Get => "get",
            FaultOp::GetRange => "get_range",
            FaultOp::List => "list",
            FaultOp::Delete => "delete",
            FaultOp::Any => "any",
        })
    }
}

/// What happens to a matching call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// Fails at once with a transient `object_store::Error::Generic`.
    Error,
    /// Waits `delay`, then fails as a timed-out request would.
    Timeout,
    /// Waits `delay`, then runs the call.
    Delay,
    /// Never returns: the process is stuck at this point until it is killed. Tests use it
    /// to stop a flush between two uploads and `kill -9` the server there.
    Hang,
}

fn default_probability() -> f64 {
    1.0
}

fn default_delay() -> Duration {
    Duration::from_secs(1)
}

/// One fault: which calls it hits and what it does to them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    #[serde(default = "any_op")]
    pub op: FaultOp,
    /// Only keys containing this text (empty: every key).
    #[serde(default)]
    pub key_contains: String,
    pub action: FaultAction,
    /// For `delay` and `timeout`.
    #[serde(
        default = "default_delay",
        deserialize_with = "crate::config::deserialize_duration"
    )]
    pub delay: Duration,
    /// Chance that a matching call is hit, in [0, 1].
    #[serde(default = "default_probability")]
    pub probability: f64,
    /// Only the next N matching calls are hit; then the rule is spent.
    #[serde(default)]
    pub times: Option<u64>,
    /// The rule is active only while this file exists, so a test can switch it off (or
    /// on) at runtime. Relative paths resolve against the server's working directory.
    #[serde(default)]
    pub while_file_exists: Option<PathBuf>,
}

fn any_op() -> FaultOp {
    FaultOp::Any
}

impl FaultRule {
    /// A rule hitting every matching call, every time, with no delay.
    pub fn new(op: FaultOp, key_contains: &str, action: FaultAction) -> Self {
        Self {
            op,
            key_contains: key_contains.to_owned(),
            action,
            delay: Duration::ZERO,
            probability: 1.0,
            times: None,
            while_file_exists: None,
        }
    }

    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p;
        self
    }

    pub(crate) fn matches(&self, op: FaultOp, key: &str) -> bool {
        (self.op == FaultOp::Any || self.op == op) && key.contains(&self.key_contains)
    }
}

/// `storage.trace.fault_injection`: FOR TESTING ONLY.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultInjectionConfig {
    /// Must be `true`: a guard so the section cannot be switched on by a stray copy-paste.
    #[serde(default)]
    pub for_testing_only: bool,
    #[serde(default)]
    pub rules: Vec<FaultRule>,
}
