//! Liveness and readiness state shared by the loops and the HTTP server.
//!
//! Readiness means "this replica's view of the cluster is current": every registered watch has delivered its
//! whole initial state once (its `InitDone`: the streamed state's end bookmark, or the last list page) and
//! its last attempt did not fail, and we are not shutting down. The watches are `nodes`, `pods`,
//! `pod-sandbox-events` and, with `--placement`, `placement-pods` (unbound pods only); the pod watches start
//! once the Node index has synced, so on a start every pod of the cluster has been judged once against a
//! complete index before `/readyz` answers 200. Our own Events' watch (`published-events`) and the audit's
//! are not part of readiness. Readiness says nothing about writes: reconciles and Events may still be in
//! flight. Liveness means every long-running loop is still running; a loop that ends while the process is
//! not shutting down is a bug the kubelet should restart.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    shutting_down: AtomicBool,
    watches: Mutex<Vec<WatchHealth>>,
    dead_loops: Mutex<Vec<&'static str>>,
}

#[derive(Debug, Clone)]
struct WatchHealth {
    name: &'static str,
    synced: bool,
    /// The last error, cleared by the next successful event.
    error: Option<String>,
}

impl Health {
    /// Registers a watch that readiness waits for.
    pub fn register_watch(&self, name: &'static str) {
        let mut watches = lock(&self.watches);
        if !watches.iter().any(|w| w.name == name) {
            watches.push(WatchHealth {
                name,
                synced: false,
                error: None,
            });
        }
    }

    pub fn watch_synced(&self, name: &'static str) {
        self.update(name, |w| {
            w.synced = true;
            w.error = None;
        });
    }

    pub fn watch_ok(&self, name: &'static str) {
        self.update(name, |w| w.error = None);
    }

    /// Whether the watch's last attempt failed (and nothing has succeeded since).
    pub fn watch_failing(&self, name: &'static str) -> bool {
        lock(&self.watches)
            .iter()
            .any(|w| w.name == name && w.error.is_some())
    }

    /// Whether the watch has completed its first list.
    pub fn watch_is_synced(&self, name: &'static str) -> bool {
        lock(&self.watches)
            .iter()
            .any(|w| w.name == name && w.synced)
    }

    pub fn watch_failed(&self, name: &'static str, error: String) {
        self.update(name, |w| w.error = Some(error));
    }

    fn update(&self, name: &'static str, f: impl FnOnce(&mut WatchHealth)) {
        if let Some(w) = lock(&self.watches).iter_mut().find(|w| w.name == name) {
            f(w);
        }
    }

    pub fn start_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Records that a loop ended; unless we are shutting down, liveness fails from now on.
    pub fn loop_ended(&self, name: &'static str) {
        if !self.is_shutting_down() {
            lock(&self.dead_loops).push(name);
        }
    }

    /// `Ok(report)` when ready, `Err(report)` otherwise; the report lists every check.
    pub fn readiness(&self) -> Result<String, String> {
        let mut ok = true;
        let mut report = String::new();
        for w in lock(&self.watches).iter() {
            let line = match (&w.error, w.synced) {
                (Some(error), _) => format!("[-] watch {}: failing: {error}", w.name),
                (None, false) => format!("[-] watch {}: not synced yet", w.name),
                (None, true) => format!("[+] watch {}: ok", w.name),
            };
            ok &= line.starts_with("[+]");
            report.push_str(&line);
            report.push('\n');
        }
        if self.is_shutting_down() {
            ok = false;
            report.push_str("[-] shutting down\n");
        }
        if ok { Ok(report) } else { Err(report) }
    }

    pub fn liveness(&self) -> Result<String, String> {
        let dead = lock(&self.dead_loops);
        if dead.is_empty() {
            Ok("[+] all loops running\n".to_owned())
        } else {
            Err(format!(
                "[-] loops ended unexpectedly: {}\n",
                dead.join(", ")
            ))
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_sync_and_while_watch_is_healthy() {
        let health = Health::default();
        health.register_watch("nodes");
        assert!(health.readiness().unwrap_err().contains("not synced"));
        health.watch_synced("nodes");
        assert!(health.readiness().is_ok());
        health.watch_failed("nodes", "403 Forbidden".into());
        assert!(health.readiness().unwrap_err().contains("403 Forbidden"));
        assert!(health.watch_failing("nodes") && health.watch_is_synced("nodes"));
        health.watch_ok("nodes");
        assert!(health.readiness().is_ok());
        health.start_shutdown();
        assert!(health.readiness().unwrap_err().contains("shutting down"));
    }

    #[test]
    fn liveness_fails_when_a_loop_dies_outside_shutdown() {
        let health = Health::default();
        assert!(health.liveness().is_ok());
        health.loop_ended("node-controller");
        assert!(health.liveness().unwrap_err().contains("node-controller"));
        let health = Health::default();
        health.start_shutdown();
        health.loop_ended("node-controller");
        assert!(health.liveness().is_ok());
    }
}
