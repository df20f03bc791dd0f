//! The node controller's work queue: which nodes to reconcile next, each node at most once at a time.
//!
//! kube-runtime's `Controller` keeps a scheduled request per node (an `ObjectRef` with its strings, in a
//! hash map and a delay queue, plus the runner's slots) for the resync of every node: ~1 KiB per node, and
//! the peak while the initial state streams (docs/benchmarks.md, run D). Here a node waits as its name only,
//! and only while it has work; the resync and a new leader's takeover push every name of the index again.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// Node names waiting for a reconcile, in arrival order, without duplicates; and the nodes being reconciled,
/// so that a node is never reconciled twice at once (a change that arrives meanwhile runs after).
#[derive(Debug, Default)]
pub struct WorkQueue {
    waiting: VecDeque<Arc<str>>,
    queued: HashSet<Arc<str>>,
    running: HashSet<Arc<str>>,
    /// Pushed while running: queued again when the run ends.
    again: HashSet<Arc<str>>,
}

impl WorkQueue {
    /// Asks for a reconcile of `name`. A node already waiting keeps its place; a node being reconciled runs
    /// once more after the current run (its inputs may have changed after the run read them).
    pub fn push(&mut self, name: &str) {
        if self.running.contains(name) {
            if !self.again.contains(name) {
                self.again.insert(name.into());
            }
        } else if !self.queued.contains(name) {
            let name: Arc<str> = name.into();
            self.queued.insert(name.clone());
            self.waiting.push_back(name);
        }
    }

    /// The next node to reconcile, now marked running; `None` when nothing waits.
    pub fn start_next(&mut self) -> Option<Arc<str>> {
        let name = self.waiting.pop_front()?;
        self.queued.remove(&name);
        self.running.insert(name.clone());
        if self.waiting.is_empty() {
            // A sweep of every node grows these to the node count; give the memory back once it is done.
            self.waiting.shrink_to_fit();
            self.queued.shrink_to_fit();
        }
        Some(name)
    }

    /// The reconcile of `name` ended; a push that came during it queues the node again.
    pub fn finish(&mut self, name: &str) {
        self.running.remove(name);
        if self.again.remove(name) {
            self.push(name);
        }
    }

    /// Nodes waiting (not counting running ones).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Nodes being reconciled.
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut WorkQueue) -> Vec<String> {
        let mut started = Vec::new();
        while let Some(name) = queue.start_next() {
            started.push(name.to_string());
        }
        started
    }

    #[test]
    fn nodes_run_in_arrival_order_once_each() {
        let mut queue = WorkQueue::default();
        for name in ["a", "b", "a", "c", "b"] {
            queue.push(name);
        }
        assert_eq!(queue.waiting(), 3);
        assert_eq!(drain(&mut queue), ["a", "b", "c"]);
        assert_eq!(queue.running(), 3);
        assert_eq!(queue.start_next(), None);
    }

    #[test]
    fn a_node_pushed_while_running_runs_again_after_not_during() {
        let mut queue = WorkQueue::default();
        queue.push("a");
        assert_eq!(queue.start_next().as_deref(), Some("a"));
        queue.push("a");
        queue.push("a");
        assert_eq!(queue.start_next(), None, "never twice at once");
        queue.finish("a");
        assert_eq!(drain(&mut queue), ["a"], "once more, not twice");
        queue.finish("a");
        assert_eq!(queue.start_next(), None);
        assert_eq!((queue.waiting(), queue.running()), (0, 0));
    }

    #[test]
    fn a_finished_node_can_be_pushed_again() {
        let mut queue = WorkQueue::default();
        queue.push("a");
        queue.start_next();
        queue.finish("a");
        assert_eq!(queue.start_next(), None, "a positive control: nothing left");
        queue.push("a");
        assert_eq!(drain(&mut queue), ["a"]);
    }

    #[test]
    fn the_memory_of_a_sweep_is_given_back() {
        let mut queue = WorkQueue::default();
        for i in 0..5000 {
            queue.push(&format!("node-{i}"));
        }
        assert!(queue.queued.capacity() >= 5000);
        let started = drain(&mut queue);
        assert_eq!(started.len(), 5000);
        assert_eq!(queue.queued.capacity(), 0);
        assert_eq!(queue.waiting.capacity(), 0);
        for name in &started {
            queue.finish(name);
        }
        assert_eq!(queue.running(), 0);
    }
}
