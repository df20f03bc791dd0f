//! Every long-running task of the process, supervised in one place.
//!
//! Loops (the node controller, the pod detector, watch probes, ...) run until shutdown. Any of them ending
//! while the process is not shutting down is a bug: liveness fails from then on, the other loops are told to
//! stop, and the process exits non-zero so the kubelet restarts it.
//!
//! Some tasks must outlive the loops: the leader election releases the Lease only after every writer has
//! stopped (so two replicas never write at once), and the HTTP server keeps answering `/readyz` with 503
//! while the loops drain. Those are "final" tasks: they get their own stop signal, sent once every loop has
//! ended.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::health::Health;

type Outcome = (&'static str, anyhow::Result<()>);

pub struct Supervisor {
    shutdown: CancellationToken,
    health: Arc<Health>,
    loops: JoinSet<Outcome>,
    finals: JoinSet<Outcome>,
    finals_stop: CancellationToken,
    /// Task names by id, to name a task that panicked.
    names: HashMap<Id, &'static str>,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken, health: Arc<Health>) -> Self {
        Self {
            shutdown,
            health,
            loops: JoinSet::new(),
            finals: JoinSet::new(),
            finals_stop: CancellationToken::new(),
            names: HashMap::new(),
        }
    }

    /// The process-wide shutdown signal, for loops to stop on.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs a loop until shutdown. It should return when `shutdown()` is cancelled, not before.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.loops.spawn(async move { (name, task.await) });
        self.names.insert(handle.id(), name);
    }

    /// Runs a task that must stop only after every loop has ended; it gets its own stop signal.
    pub fn spawn_final<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let fut = task(self.finals_stop.clone());
        let handle = self.finals.spawn(async move { (name, fut.await) });
        self.names.insert(handle.id(), name);
    }

    /// Waits for shutdown (or the first task that ends early), then for every task. Returns an error naming
    /// each task that ended outside shutdown or failed.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        loop {
            tokio::select! {
                Some(joined) = self.loops.join_next_with_id() => self.ended(joined, &mut failures),
                Some(joined) = self.finals.join_next_with_id() => self.ended(joined, &mut failures),
                () = self.shutdown.cancelled(), if self.loops.is_empty() && !self.finals_stop.is_cancelled() => {}
                else => break,
            }
            if self.loops.is_empty() && self.shutdown.is_cancelled() {
                self.finals_stop.cancel();
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{}", failures.join("; "))
        }
    }

    fn ended(&self, joined: Result<(Id, Outcome), JoinError>, failures: &mut Vec<String>) {
        let (name, result) = match joined {
            Ok((_, outcome)) => outcome,
            Err(err) => {
                let name = self.names.get(&err.id()).copied().unwrap_or("task");
                (name, Err(anyhow::anyhow!("panicked or was aborted: {err}")))
            }
        };
        let early = !self.shutdown.is_cancelled();
        match (&result, early) {
            (Ok(()), false) => tracing::debug!(task = name, "stopped"),
            (Ok(()), true) => {
                tracing::error!(task = name, "stopped unexpectedly; shutting down");
                failures.push(format!("{name} stopped unexpectedly"));
            }
            (Err(err), _) => {
                tracing::error!(task = name, error = %format!("{err:#}"), "failed; shutting down");
                failures.push(format!("{name}: {err:#}"));
            }
        }
        if early || result.is_err() {
            self.health.loop_ended(name);
            self.shutdown.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_loop_ending_early_fails_liveness_and_stops_the_others() {
        let shutdown = CancellationToken::new();
        let health = Arc::new(Health::default());
        let mut supervisor = Supervisor::new(shutdown.clone(), health.clone());
        let other_stopped = Arc::new(AtomicBool::new(false));
        supervisor.spawn("quitter", async { Ok(()) });
        let (stop, flag) = (shutdown.clone(), other_stopped.clone());
        supervisor.spawn("worker", async move {
            stop.cancelled().await;
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        let err = supervisor.wait().await.unwrap_err().to_string();
        assert!(err.contains("quitter stopped unexpectedly"), "{err}");
        assert!(
            other_stopped.load(Ordering::SeqCst),
            "the other loop was stopped"
        );
        assert!(health.liveness().unwrap_err().contains("quitter"));
    }

    #[tokio::test]
    async fn final_tasks_stop_after_every_loop() {
        let shutdown = CancellationToken::new();
        let health = Arc::new(Health::default());
        let mut supervisor = Supervisor::new(shutdown.clone(), health.clone());
        let loop_done = Arc::new(AtomicBool::new(false));
        let (stop, done) = (shutdown.clone(), loop_done.clone());
        supervisor.spawn("writer", async move {
            stop.cancelled().await;
            tokio::task::yield_now().await;
            done.store(true, Ordering::SeqCst);
            Ok(())
        });
        let done = loop_done.clone();
        supervisor.spawn_final("lease", move |finals_stop| async move {
            finals_stop.cancelled().await;
            anyhow::ensure!(
                done.load(Ordering::SeqCst),
                "released before the writer stopped"
            );
            Ok(())
        });
        shutdown.cancel();
        health.start_shutdown();
        supervisor.wait().await.unwrap();
        assert!(health.liveness().is_ok(), "a clean shutdown keeps liveness");
    }

    #[tokio::test]
    async fn a_failing_loop_is_reported_even_during_shutdown() {
        let shutdown = CancellationToken::new();
        let health = Arc::new(Health::default());
        let mut supervisor = Supervisor::new(shutdown.clone(), health);
        supervisor.spawn("server", async { anyhow::bail!("port gone") });
        shutdown.cancel();
        let err = supervisor.wait().await.unwrap_err().to_string();
        assert!(err.contains("server: port gone"), "{err}");
    }
}
