//! Fault injection for tests: an `ObjectStore` wrapper that fails, stalls or slows chosen
//! operations on chosen keys, so tests can prove that flushes retry, queries degrade with
//! clear errors and nothing acknowledged is lost.
//!
//! Unit tests build a `Faults` handle and change its rules while the store is in use. The
//! real binary takes rules from `storage.trace.fault_injection`, which is for testing only:
//! it is off unless the section is present, and the section is refused unless it also says
//! `for_testing_only: true`.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use parking_lot::Mutex;
use tracing::warn;

use super::{Backend, BackendError};

pub use crate::config::faults::{FaultAction, FaultInjectionConfig, FaultOp, FaultRule};

struct ActiveRule {
    rule: FaultRule,
    /// Calls still to hit, for rules limited by `times`.
    remaining: Option<u64>,
}

/// Shared, runtime-changeable set of fault rules. Cheap to clone; every clone sees changes.
#[derive(Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<Vec<ActiveRule>>>,
    injected: Arc<AtomicU64>,
    /// xorshift state for `probability`: no global RNG, and reproducible in tests.
    rng: Arc<AtomicU64>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("rules", &self.rules.lock().len())
            .field("injected", &self.injected())
            .finish()
    }
}

impl Faults {
    pub fn new() -> Self {
        Self {
            rng: Arc::new(AtomicU64::new(0x9E37_79B9_7F4A_7C15)),
            ..Self::default()
        }
    }

    /// Adds a rule; the first matching active rule decides a call's fate.
    pub fn add(&self, rule: FaultRule) {
        let remaining = rule.times;
        self.rules.lock().push(ActiveRule { rule, remaining });
    }

    /// Removes every rule: the store behaves normally from the next call on.
    pub fn clear(&self) {
        self.rules.lock().clear();
    }

    /// How many calls have been hit so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn roll(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The fault to inject into this call, if any.
    fn pick(&self, op: FaultOp, key: &str) -> Option<(FaultAction, Duration)> {
        let mut rules = self.rules.lock();
        for r in rules.iter_mut() {
            if r.remaining == Some(0) || !r.rule.matches(op, key) {
                continue;
            }
            if let Some(f) = &r.rule.while_file_exists {
                if !f.exists() {
                    continue;
                }
            }
            if r.rule.probability < 1.0 && self.roll() >= r.rule.probability {
                continue;
            }
            if let Some(n) = r.remaining.as_mut() {
                *n -= 1;
            }
            return Some((r.rule.action, r.rule.delay));
        }
        None
    }

    /// Runs before every store call: fails, stalls or delays it as the rules say.
    async fn check(&self, op: FaultOp, key: &str) -> object_store::Result<()> {
        let Some((action, delay)) = self.pick(op, key) else {
            return Ok(());
        };
        self.injected.fetch_add(1, Ordering::Relaxed);
        warn!(op = %op, key, action = ?action, delay_ms = delay.as_millis() as u64, "fault injected");
        match action {
            FaultAction::Error => Err(injected(format!("injected error on {op} of {key}"))),
            FaultAction::Timeout => {
                tokio::time::sleep(delay).await;
                Err(injected(format!(
                    "injected timeout on {op} of {key} after {}ms",
                    delay.as_millis()
                )))
            }
            FaultAction::Delay => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            FaultAction::Hang => std::future::pending().await,
        }
    }
}

fn injected(msg: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "fault-injection",
        source: msg.into(),
    }
}

/// An `ObjectStore` that consults [`Faults`] before passing each call through.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Faults,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultInjection({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.faults.check(FaultOp::Put, location.as_ref()).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.faults.check(FaultOp::Put, location.as_ref()).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.range.is_some() {
            FaultOp::GetRange
        } else {
            FaultOp::Get
        };
        self.faults.check(op, location.as_ref()).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.faults
            .check(FaultOp::GetRange, location.as_ref())
            .await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        let faults = self.faults.clone();
        let checked = locations
            .then(move |p| {
                let faults = faults.clone();
                async move {
                    let p = p?;
                    faults.check(FaultOp::Delete, p.as_ref()).await?;
                    Ok(p)
                }
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let faults = self.faults.clone();
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        let listing = self.inner.list(prefix);
        futures::stream::once(async move {
            match faults.check(FaultOp::List, &key).await {
                Ok(()) => listing,
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        self.faults.check(FaultOp::List, &key).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.faults.check(FaultOp::Put, to.as_ref()).await?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.faults.check(FaultOp::Put, to.as_ref()).await?;
        self.inner.rename_opts(from, to, options).await
    }
}

impl Backend {
    /// This backend with `faults` injected into every call. For tests.
    pub fn with_faults(self, faults: Faults) -> Self {
        let inner = self.store.clone();
        let local = self.local.clone().map(|l| super::local::LocalRoot {
            link_files: false,
            ..l
        });
        Self {
            store: Arc::new(FaultyStore::new(inner, faults)),
            local,
            description: format!("{} (FAULT INJECTION)", self.description),
            ..self
        }
    }
}

/// Applies `storage.trace.fault_injection` to a backend built from config.
pub(super) fn from_config(b: Backend, cfg: &FaultInjectionConfig) -> Result<Backend, BackendError> {
    if !cfg.for_testing_only {
        return Err(BackendError::Setup(
            "storage.trace.fault_injection is for testing only and makes storage fail on \
             purpose: set for_testing_only: true in that section to use it, or remove it"
                .into(),
        ));
    }
    let faults = Faults::new();
    for r in &cfg.rules {
        if !(0.0..=1.0).contains(&r.probability) {
            return Err(BackendError::Setup(format!(
                "storage.trace.fault_injection: probability must be in [0, 1], got {}",
                r.probability
            )));
        }
        faults.add(r.clone());
    }
    warn!(
        rules = cfg.rules.len(),
        "FAULT INJECTION IS ON: storage calls will fail on purpose; this is for testing only"
    );
    Ok(b.with_faults(faults))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn backend() -> (Backend, Faults) {
        let faults = Faults::new();
        (Backend::memory().with_faults(faults.clone()), faults)
    }

    #[tokio::test]
    async fn errors_hit_only_the_chosen_op_and_key() {
        let (b, faults) = backend();
        b.put("t/a/data.parquet", Bytes::from_static(b"d"))
            .await
            .unwrap();
        faults.add(FaultRule::new(
            FaultOp::Put,
            "meta.json",
            FaultAction::Error,
        ));
        let err = b
            .put("t/a/meta.json", Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("injected error on put of t/a/meta.json"),
            "{err}"
        );
        // Other keys and other operations pass.
        b.put("t/a/index", Bytes::from_static(b"i")).await.unwrap();
        assert_eq!(&b.get("t/a/data.parquet").await.unwrap()[..], b"d");
        assert!(matches!(
            b.get("t/a/meta.json").await,
            Err(BackendError::NotFound(_))
        ));
        assert_eq!(faults.injected(), 1);
    }

    #[tokio::test]
    async fn next_n_calls_then_recovers() {
        let (b, faults) = backend();
        b.put("k", Bytes::from_static(b"v")).await.unwrap();
        faults.add(FaultRule::new(FaultOp::Get, "", FaultAction::Error).times(3));
        for _ in 0..3 {
            assert!(matches!(b.get("k").await, Err(BackendError::Store(_))));
        }
        assert_eq!(&b.get("k").await.unwrap()[..], b"v");
        assert_eq!(faults.injected(), 3);
    }

    #[tokio::test]
    async fn every_operation_can_fail() {
        let (b, faults) = backend();
        b.put("t/x/data", Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        faults.add(FaultRule::new(FaultOp::GetRange, "", FaultAction::Error));
        faults.add(FaultRule::new(FaultOp::List, "", FaultAction::Error));
        faults.add(FaultRule::new(FaultOp::Delete, "", FaultAction::Error));
        assert!(b.get_range("t/x/data", 1..3).await.is_err());
        assert!(b.get_ranges("t/x/data", &[1..3, 5..6]).await.is_err());
        assert!(b.list_dirs(None).await.is_err());
        assert!(b.list("t").await.is_err());
        assert!(b.delete("t/x/data").await.is_err());
        // A whole-object get is a different operation.
        assert_eq!(b.get("t/x/data").await.unwrap().len(), 10);
        faults.clear();
        assert_eq!(&b.get_range("t/x/data", 1..3).await.unwrap()[..], b"12");
        assert_eq!(b.list("t").await.unwrap(), vec!["t/x/data".to_string()]);
        b.delete("t/x/data").await.unwrap();
        assert!(b.list("t").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn delay_slows_and_timeout_fails_after_waiting() {
        let (b, faults) = backend();
        b.put("k", Bytes::from_static(b"v")).await.unwrap();
        faults.add(
            FaultRule::new(FaultOp::Get, "", FaultAction::Delay)
                .delay(Duration::from_millis(150))
                .times(1),
        );
        let t = Instant::now();
        assert_eq!(&b.get("k").await.unwrap()[..], b"v");
        assert!(t.elapsed() >= Duration::from_millis(150));

        faults.add(
            FaultRule::new(FaultOp::Get, "", FaultAction::Timeout)
                .delay(Duration::from_millis(100))
                .times(1),
        );
        let t = Instant::now();
        let err = b.get("k").await.unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert!(err.to_string().contains("injected timeout"), "{err}");
    }

    #[tokio::test]
    async fn hang_never_returns() {
        let (b, faults) = backend();
        faults.add(FaultRule::new(FaultOp::Put, "", FaultAction::Hang));
        let r = tokio::time::timeout(
            Duration::from_millis(200),
            b.put("k", Bytes::from_static(b"v")),
        )
        .await;
        assert!(r.is_err(), "a hung call returned");
    }

    #[tokio::test]
    async fn probability_hits_about_that_share() {
        let (b, faults) = backend();
        b.put("k", Bytes::from_static(b"v")).await.unwrap();
        faults.add(FaultRule::new(FaultOp::Get, "", FaultAction::Error).probability(0.3));
        let mut failed = 0;
        for _ in 0..1000 {
            if b.get("k").await.is_err() {
                failed += 1;
            }
        }
        assert!((200..400).contains(&failed), "{failed} of 1000 failed");
    }

    #[tokio::test]
    async fn file_switch_turns_a_rule_on_and_off() {
        let dir = tempfile::tempdir().unwrap();
        let switch = dir.path().join("fail-gets");
        let (b, faults) = backend();
        b.put("k", Bytes::from_static(b"v")).await.unwrap();
        let mut rule = FaultRule::new(FaultOp::Get, "", FaultAction::Error);
        rule.while_file_exists = Some(switch.clone());
        faults.add(rule);
        assert!(b.get("k").await.is_ok());
        std::fs::write(&switch, b"").unwrap();
        assert!(b.get("k").await.is_err());
        std::fs::remove_file(&switch).unwrap();
        assert!(b.get("k").await.is_ok());
    }

    #[test]
    fn config_needs_the_testing_guard() {
        let cfg: FaultInjectionConfig = serde_yaml_ng::from_str(
            "rules:\n  - op: put\n    key_contains: meta.json\n    action: error\n",
        )
        .unwrap();
        let err = from_config(Backend::memory(), &cfg).unwrap_err();
        assert!(err.to_string().contains("for testing only"), "{err}");
        let cfg = FaultInjectionConfig {
            for_testing_only: true,
            ..cfg
        };
        let b = from_config(Backend::memory(), &cfg).unwrap();
        assert!(b.description().contains("FAULT INJECTION"));
        assert!(serde_yaml_ng::from_str::<FaultInjectionConfig>(
            "for_testing_only: true\nrules:\n  - action: explode\n"
        )
        .is_err());
    }
}
