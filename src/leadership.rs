//! Who may write: the one fact every writing loop checks before a write, set by the leader election (or
//! always true without it).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

/// Who may write. Without leader election every replica is the leader; with it, a replica is the leader
/// only until the deadline of its last renewal, checked at each use, so a process that was paused past its
/// lease stops writing the moment it wakes, before its election loop has run again.
#[derive(Debug)]
pub struct Leadership {
    state: Mutex<State>,
    changes: watch::Sender<bool>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Always,
    Until(Option<Instant>),
}

impl Leadership {
    pub fn always_leader() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::Always),
            changes: watch::Sender::new(true),
        })
    }

    pub fn follower() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::Until(None)),
            changes: watch::Sender::new(false),
        })
    }

    pub fn is_leader(&self) -> bool {
        match *lock(&self.state) {
            State::Always => true,
            State::Until(until) => until.is_some_and(|until| Instant::now() < until),
        }
    }

    /// A receiver that sees every change of leadership the election loop makes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.changes.subscribe()
    }

    /// Sets until when this replica leads (`None`: it follows) and broadcasts a change of role.
    pub fn lead_until(&self, until: Option<Instant>) {
        *lock(&self.state) = State::Until(until);
        let leader = self.is_leader();
        let changed = self.changes.send_if_modified(|current| {
            let changed = *current != leader;
            *current = leader;
            changed
        });
        if changed {
            if leader {
                tracing::info!("became the leader: this replica now writes");
            } else {
                tracing::warn!("no longer the leader: this replica stops writing");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn leadership_changes_are_broadcast_once() {
        let leadership = Leadership::follower();
        let mut rx = leadership.subscribe();
        let until = Some(Instant::now() + Duration::from_secs(60));
        leadership.lead_until(until);
        assert!(leadership.is_leader());
        assert!(rx.has_changed().unwrap());
        assert!(*rx.borrow_and_update());
        leadership.lead_until(until);
        assert!(!rx.has_changed().unwrap(), "no change, no broadcast");
        leadership.lead_until(None);
        assert!(!leadership.is_leader());
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn leadership_lapses_at_its_deadline_without_a_round() {
        let leadership = Leadership::follower();
        leadership.lead_until(Some(Instant::now() + Duration::from_millis(20)));
        assert!(leadership.is_leader());
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !leadership.is_leader(),
            "a paused leader must not write on waking"
        );
        assert!(Leadership::always_leader().is_leader());
    }
}
