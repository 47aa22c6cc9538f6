//! Helper processes the tests start (SeaweedFS, tansu, Prometheus): how their binary is
//! found, and a supervisor that appends their output to a log file, reports an early exit
//! or a readiness timeout with the log's tail, and kills them on drop.

use std::fs;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this is CI, where a missing helper binary fails a test instead of skipping it.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The binary named by the environment variable `env_var`, else the first of `candidates`
/// that exists, else `name` on the `PATH`.
pub(crate) fn find_binary(env_var: &str, candidates: &[PathBuf], name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// One helper process, started and stopped as a test needs; killed (SIGKILL) on drop.
pub(crate) struct Process {
    name: &'static str,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// A process not started yet, whose output goes to `log`.
    pub(crate) fn new(name: &'static str, log: PathBuf) -> Process {
        Process {
            name,
            log,
            child: None,
        }
    }

    /// Spawns `cmd` with stdin closed and stdout and stderr appended to the log.
    pub(crate) fn spawn(&mut self, mut cmd: Command) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", cmd.get_program().display()));
        self.child = Some(child);
    }

    /// Polls `ready` until it says yes; panics with the log's tail if the process exits
    /// first or `timeout` passes (`ready`'s last error in the message).
    pub(crate) async fn wait_ready<F, Fut>(
        &mut self,
        timeout: Duration,
        poll: Duration,
        mut ready: F,
    ) where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let t0 = Instant::now();
        loop {
            let child = self.child.as_mut().expect("process started");
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                panic!(
                    "{} exited with {st} before it was ready\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            let last = match ready().await {
                Ok(()) => return,
                Err(e) => e,
            };
            if t0.elapsed() > timeout {
                panic!(
                    "{} not ready within {timeout:?}: {last}\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// The running child, taken out of supervision (to stop it some other way).
    pub(crate) fn take(&mut self) -> Option<Child> {
        self.child.take()
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `n` lines of the log.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
