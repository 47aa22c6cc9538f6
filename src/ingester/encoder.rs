//! The ingester's own thread for encoding cuts into blocks.
//!
//! A cut's working set (row-group builders, Arrow arrays, encoded pages: 30–160 MiB) is
//! allocated and freed on the thread that encodes it, and the allocator keeps a thread's
//! freed pages for that thread (returning them to the OS only after a delay). On tokio's
//! blocking pool each cut could land on a different thread, so the next cut's working set
//! came from fresh pages while the previous one's were still resident: one thread reuses
//! its own.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use tokio::sync::oneshot;
use tracing::warn;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, thiserror::Error)]
pub(super) enum EncoderError {
    #[error("block encoding panicked")]
    Panicked,
    #[error("the block encoding thread is gone")]
    Gone,
}

/// A thread running one job at a time; it exits once its handle is dropped and the jobs
/// already sent are done.
pub(super) struct Encoder {
    jobs: Option<mpsc::Sender<Job>>,
}

impl Encoder {
    pub(super) fn new() -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("vivace-encode".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            });
        match spawned {
            Ok(_) => Self { jobs: Some(tx) },
            Err(e) => {
                // Every cut then fails and retries, as a failed encode would; ingest is
                // refused once memory fills, never lost.
                warn!(error = %e, "cannot start the block encoding thread");
                Self { jobs: None }
            }
        }
    }

    /// Runs `f` on the encoding thread. A panic in `f` is an error here, not the end of
    /// the thread.
    pub(super) async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, EncoderError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        if self
            .jobs
            .as_ref()
            .is_none_or(|jobs| jobs.send(job).is_err())
        {
            return Err(EncoderError::Gone);
        }
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(EncoderError::Panicked),
            Err(_) => Err(EncoderError::Gone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_one_thread_and_a_panic_does_not_end_it() {
        let encoder = Encoder::new();
        let name = || std::thread::current().name().map(str::to_owned);
        let first = encoder.run(name).await.unwrap();
        assert_eq!(first.as_deref(), Some("vivace-encode"));
        let id = encoder.run(|| std::thread::current().id()).await.unwrap();
        let panicked = encoder.run(|| -> u8 { panic!("bad block") }).await;
        assert!(
            matches!(panicked, Err(EncoderError::Panicked)),
            "{panicked:?}"
        );
        let again = encoder.run(|| std::thread::current().id()).await.unwrap();
        assert_eq!(id, again, "the same thread after a panic");
    }
}
