//! The placing task of each gated pod, by uid, for as long as the pod is gated. A follower's task waits for
//! leadership and a leader's retries until the pod is released, so a task whose pod left the watch (bound
//! after another replica placed it, deleted, or its gate removed by hand) would wait forever: one task
//! (~12 KiB) per pod ever gated, the soak's RSS growth. The loop stops a task when the watch says its pod is
//! no longer gated, so the tasks held are never more than the pods gated now.
//!
//! Stopping is a signal, not an abort: the task ends at its next wait (for leadership, a permit, a retry),
//! never between its patch and its Event (the patch that removes the gate is itself what tells the loop).

use std::collections::{HashMap, HashSet};
use std::future::Future;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct PodTasks {
    running: JoinSet<()>,
    /// uid → its task. Tasks do not remove themselves: the loop reaps them ([`Self::reap`]).
    by_uid: HashMap<String, Running>,
}

#[derive(Debug)]
struct Running {
    id: Id,
    /// Cancelled when the pod is no longer gated.
    gone: CancellationToken,
}

impl PodTasks {
    /// Whether this pod has a task (running, stopping, or finished and not reaped yet).
    pub fn contains(&self, uid: &str) -> bool {
        self.by_uid.contains_key(uid)
    }

    /// Tasks held.
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// Starts the pod's task (the caller checked [`Self::contains`]: one task per pod); it gets the token
    /// that says its pod is gone, to end at its next wait.
    pub fn spawn<F, Fut>(&mut self, uid: String, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let gone = CancellationToken::new();
        let handle = self.running.spawn(task(gone.clone()));
        let running = Running {
            id: handle.id(),
            gone,
        };
        if let Some(previous) = self.by_uid.insert(uid, running) {
            previous.gone.cancel();
        }
    }

    /// The pod is no longer gated (or gone): its task ends at its next wait.
    pub fn stop(&mut self, uid: &str) {
        if let Some(running) = self.by_uid.remove(uid) {
            running.gone.cancel();
        }
    }

    /// After a re-list: only the pods it listed as gated keep their task.
    pub fn retain(&mut self, listed: &HashSet<String>) {
        self.by_uid.retain(|uid, running| {
            let keep = listed.contains(uid);
            if !keep {
                running.gone.cancel();
            }
            keep
        });
    }

    /// Waits for the next task to end (placed, gone or stopped) and forgets it. Pending while there is
    /// none, so it can sit in a `select!` beside the watch.
    pub async fn reap(&mut self) {
        let Some(ended) = self.running.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let id = match ended {
            Ok((id, ())) => id,
            Err(err) => err.id(),
        };
        // A stopped task is no longer in the map; a pod's new task (same uid) has another id.
        self.by_uid.retain(|_, running| running.id != id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    /// A task that ends only when its pod is gone (a follower waiting for leadership), holding `alive`
    /// while it lives.
    fn waits_for_leadership(
        alive: &Arc<()>,
    ) -> impl FnOnce(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let alive = alive.clone();
        move |gone| {
            Box::pin(async move {
                gone.cancelled().await;
                drop(alive);
            })
        }
    }

    /// Reaps whatever has ended within a short while.
    async fn settle(tasks: &mut PodTasks) {
        while tokio::time::timeout(Duration::from_millis(100), tasks.reap())
            .await
            .is_ok()
        {}
    }

    #[tokio::test]
    async fn a_pod_that_leaves_the_watch_frees_its_task_and_the_others_keep_theirs() {
        let alive = Arc::new(());
        let mut tasks = PodTasks::default();
        for uid in ["bound", "deleted", "still-gated"] {
            tasks.spawn(uid.to_owned(), waits_for_leadership(&alive));
        }
        settle(&mut tasks).await;
        // Positive control: tasks that wait for leadership stay while their pods are gated.
        assert_eq!((tasks.len(), Arc::strong_count(&alive)), (3, 4));
        tasks.stop("bound");
        tasks.stop("deleted");
        tasks.stop("never-seen");
        settle(&mut tasks).await;
        assert!(tasks.contains("still-gated"));
        assert_eq!((tasks.len(), Arc::strong_count(&alive)), (1, 2));
        // A re-list that no longer shows it (deleted while the watch was down).
        tasks.retain(&HashSet::new());
        settle(&mut tasks).await;
        assert!(tasks.is_empty());
        assert_eq!(Arc::strong_count(&alive), 1);
    }

    #[tokio::test]
    async fn churn_keeps_only_the_gated_pods_tasks() {
        // The soak's shape: pods gated one after another, each leaving the watch (bound or deleted) while
        // this replica follows; the tasks held stay the pods gated now, not every pod ever gated.
        let alive = Arc::new(());
        let mut tasks = PodTasks::default();
        for n in 0..1_000 {
            tasks.spawn(format!("pod-{n}"), waits_for_leadership(&alive));
            if n >= 10 {
                tasks.stop(&format!("pod-{}", n - 10));
            }
        }
        settle(&mut tasks).await;
        assert_eq!((tasks.len(), Arc::strong_count(&alive)), (10, 11));
    }

    #[tokio::test]
    async fn a_stop_during_the_write_lets_the_event_follow_the_patch() {
        // The leader's patch removes the gate, the watch sees that and stops the task: the Event after the
        // patch must still be written.
        let (patched, event_written) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(AtomicBool::new(false)),
        );
        let mut tasks = PodTasks::default();
        let (p, e) = (patched.clone(), event_written.clone());
        tasks.spawn("placed".to_owned(), move |_gone| async move {
            p.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
            e.store(true, Ordering::SeqCst);
        });
        patched.notified().await;
        tasks.stop("placed");
        assert!(!tasks.contains("placed"));
        settle(&mut tasks).await;
        assert!(event_written.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_finished_task_is_forgotten_so_the_pod_can_get_another() {
        let mut tasks = PodTasks::default();
        tasks.spawn("placed".to_owned(), |_gone| async {});
        assert!(tasks.contains("placed"));
        settle(&mut tasks).await;
        assert!(!tasks.contains("placed"));
    }
}
