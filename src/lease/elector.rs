//! The leader-election algorithm on a coordination.k8s.io Lease, as a pure state machine: given the Lease
//! record it read and the current time (both clocks injected), it says what to write; given how the write
//! went, it says until when this replica may act as the leader. The driver in `lease/mod.rs` does the I/O.
//!
//! It follows client-go's leaderelection:
//! - the holder renews `renewTime` every retry period;
//! - a candidate takes over once the record has not changed for a whole lease duration, judged by its own
//!   monotonic clock from when it last saw the record change, never by comparing timestamps across
//!   machines, so clock skew cannot make two leaders;
//! - writes carry the resourceVersion read, so two candidates racing for an expired lease cannot both win;
//! - a leader acts only until `renew deadline` after the start of its last successful renewal: with a
//!   renew deadline shorter than the lease duration, it stops writing before anyone else may take over,
//!   even if it was paused (SIGSTOP, a long GC) and wakes up late;
//! - a stopping leader releases the lease so another replica takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
}

impl LeaseConfig {
    /// How often the holder renews and candidates retry (client-go's defaults keep the same ratio: 15s/2s).
    pub fn retry_period(&self) -> Duration {
        (self.lease_duration / 7).max(Duration::from_millis(200))
    }

    /// How long after the start of its last successful renewal a leader may act.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// What to write after reading the Lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// There is no Lease: create it with this spec.
    Create(LeaseSpec),
    /// Replace the Lease's spec with this one (the driver sends the resourceVersion it read).
    Update(LeaseSpec),
    /// Another replica holds a live lease: write nothing.
    Follow,
}

/// How the write of a [`Step`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// 409: someone wrote the Lease since we read it.
    Conflict,
    /// Any other failure (unreachable, 5xx, throttled, ...).
    Failed,
}

/// The holder and renewTime last seen, and when this process saw them change.
#[derive(Debug, Clone)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    duration: Duration,
    seen_at: Instant,
}

#[derive(Debug)]
pub struct Elector {
    config: LeaseConfig,
    observed: Option<Observed>,
    /// When the last successful write as the holder started.
    last_renew: Option<Instant>,
}

impl Elector {
    pub fn new(config: LeaseConfig) -> Self {
        Self {
            config,
            observed: None,
            last_renew: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Decides what to write, given the Lease's spec as read at `now` (`None`: no Lease).
    pub fn decide(&mut self, lease: Option<&LeaseSpec>, now: Instant, wall: Timestamp) -> Step {
        let Some(spec) = lease else {
            return Step::Create(self.spec_for_me(wall, wall, 0));
        };
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renew_time = spec.renew_time.as_ref().map(|t| t.0);
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew_time != renew_time);
        if changed {
            self.observed = Some(Observed {
                holder: holder.clone(),
                renew_time,
                duration,
                seen_at: now,
            });
        }
        let held_by_me = holder.as_deref() == Some(self.config.identity.as_str());
        let expired = holder.is_none()
            || self
                .observed
                .as_ref()
                .is_some_and(|o| now.saturating_duration_since(o.seen_at) > o.duration);
        if held_by_me {
            let acquired = spec.acquire_time.as_ref().map_or(wall, |t| t.0);
            let transitions = spec.lease_transitions.unwrap_or(0);
            return Step::Update(self.spec_for_me(acquired, wall, transitions));
        }
        if !expired {
            self.last_renew = None;
            return Step::Follow;
        }
        let transitions = spec.lease_transitions.unwrap_or(0).saturating_add(1);
        Step::Update(self.spec_for_me(wall, wall, transitions))
    }

    /// Records how the write decided at `started` went; returns until when this replica may act as the
    /// leader (`None`: it is a follower).
    pub fn written(&mut self, outcome: WriteOutcome, started: Instant) -> Option<Instant> {
        match outcome {
            WriteOutcome::Written => self.last_renew = Some(started),
            WriteOutcome::Conflict => self.last_renew = None,
            // Keep what we had: still the leader while the last renewal is recent enough.
            WriteOutcome::Failed => {}
        }
        self.leader_until()
    }

    /// Until when this replica may act as the leader, from its last successful renewal.
    pub fn leader_until(&self) -> Option<Instant> {
        self.last_renew.map(|at| at + self.config.renew_deadline())
    }

    /// The spec that gives the lease up, if we hold it, so another replica takes over at once rather than
    /// after the lease duration.
    pub fn release(&mut self, lease: &LeaseSpec, wall: Timestamp) -> Option<LeaseSpec> {
        self.last_renew = None;
        if lease.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return None;
        }
        Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(wall)),
            ..lease.clone()
        })
    }

    fn spec_for_me(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration_seconds()),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn elector(identity: &str) -> Elector {
        Elector::new(LeaseConfig {
            name: "osbuild-controller".into(),
            namespace: "ns".into(),
            identity: identity.into(),
            lease_duration: LEASE,
        })
    }

    fn wall(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn held_by(holder: &str, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(wall(0))),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    fn spec(step: Step) -> LeaseSpec {
        match step {
            Step::Create(s) | Step::Update(s) => s,
            Step::Follow => panic!("expected a write, got Follow"),
        }
    }

    #[test]
    fn timings_keep_client_go_ratios() {
        let config = elector("me").config().clone();
        assert_eq!(config.retry_period(), LEASE / 7);
        assert_eq!(config.renew_deadline(), Duration::from_secs(10));
        assert!(config.retry_period() < config.renew_deadline());
        assert!(config.renew_deadline() < config.lease_duration);
    }

    #[test]
    fn acquires_a_missing_lease_and_leads_until_the_renew_deadline() {
        let mut e = elector("me");
        let t0 = Instant::now();
        let created = match e.decide(None, t0, wall(0)) {
            Step::Create(s) => s,
            other => panic!("expected Create, got {other:?}"),
        };
        assert_eq!(created.holder_identity.as_deref(), Some("me"));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.lease_duration_seconds, Some(15));
        assert_eq!(e.leader_until(), None, "not the leader before the write");
        let until = e.written(WriteOutcome::Written, t0);
        assert_eq!(until, Some(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn renewing_keeps_acquire_time_and_transitions() {
        let mut e = elector("me");
        let t0 = Instant::now();
        let mine = held_by("me", wall(5), 3);
        let renewed = spec(e.decide(Some(&mine), t0, wall(7)));
        assert_eq!(renewed.acquire_time, mine.acquire_time);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.renew_time, Some(MicroTime(wall(7))));
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            e.written(WriteOutcome::Written, later),
            Some(later + Duration::from_secs(10))
        );
    }

    #[test]
    fn follows_a_live_lease_and_takes_it_over_only_after_a_whole_duration_unchanged() {
        let mut e = elector("me");
        let t0 = Instant::now();
        let theirs = held_by("other", wall(0), 1);
        assert_eq!(e.decide(Some(&theirs), t0, wall(0)), Step::Follow);
        // Still unchanged at exactly the lease duration: not yet.
        assert_eq!(e.decide(Some(&theirs), t0 + LEASE, wall(15)), Step::Follow);
        let stolen = spec(e.decide(
            Some(&theirs),
            t0 + LEASE + Duration::from_millis(1),
            wall(16),
        ));
        assert_eq!(stolen.holder_identity.as_deref(), Some("me"));
        assert_eq!(
            stolen.lease_transitions,
            Some(2),
            "a takeover is a transition"
        );
        assert_eq!(stolen.acquire_time, Some(MicroTime(wall(16))));
    }

    #[test]
    fn a_renewal_seen_restarts_the_expiry_clock() {
        let mut e = elector("me");
        let t0 = Instant::now();
        assert_eq!(
            e.decide(Some(&held_by("other", wall(0), 1)), t0, wall(0)),
            Step::Follow
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            e.decide(Some(&held_by("other", wall(10), 1)), t1, wall(10)),
            Step::Follow
        );
        // 20 s after the first sighting, but only 10 s after the renewal: still live.
        assert_eq!(
            e.decide(
                Some(&held_by("other", wall(10), 1)),
                t0 + Duration::from_secs(20),
                wall(20)
            ),
            Step::Follow
        );
    }

    #[test]
    fn clock_skew_cannot_expire_a_live_lease() {
        // The holder's clock is an hour behind ours: its renewTime looks ancient, but we just saw it change.
        let mut e = elector("me");
        let t0 = Instant::now();
        let skewed = held_by("other", wall(-3600), 1);
        assert_eq!(e.decide(Some(&skewed), t0, wall(0)), Step::Follow);
        let renewed_skewed = held_by("other", wall(-3598), 1);
        assert_eq!(
            e.decide(Some(&renewed_skewed), t0 + Duration::from_secs(2), wall(2)),
            Step::Follow
        );
        // And a holder whose clock runs ahead cannot keep a dead lease alive past one duration.
        let mut e = elector("me");
        let ahead = held_by("other", wall(3600), 1);
        assert_eq!(e.decide(Some(&ahead), t0, wall(0)), Step::Follow);
        assert!(matches!(
            e.decide(Some(&ahead), t0 + LEASE + Duration::from_secs(1), wall(16)),
            Step::Update(_)
        ));
    }

    #[test]
    fn an_empty_holder_is_free_at_once() {
        let mut e = elector("me");
        let released = LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            lease_transitions: Some(4),
            ..Default::default()
        };
        let taken = spec(e.decide(Some(&released), Instant::now(), wall(0)));
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(5));
    }

    #[test]
    fn losing_the_race_makes_a_follower() {
        let mut e = elector("me");
        let t0 = Instant::now();
        let _ = e.decide(None, t0, wall(0));
        assert_eq!(e.written(WriteOutcome::Conflict, t0), None);
    }

    #[test]
    fn failed_renewals_keep_leadership_only_until_the_renew_deadline() {
        let mut e = elector("me");
        let t0 = Instant::now();
        let _ = e.decide(None, t0, wall(0));
        let until = e.written(WriteOutcome::Written, t0);
        // The API server is down: the renewals fail, the deadline does not move.
        let t1 = t0 + Duration::from_secs(4);
        let _ = e.decide(Some(&held_by("me", wall(0), 0)), t1, wall(4));
        assert_eq!(e.written(WriteOutcome::Failed, t1), until);
        assert!(
            until.is_some_and(|u| u < t0 + LEASE),
            "steps down before others may take over"
        );
    }

    #[test]
    fn a_paused_leader_is_no_leader_when_it_wakes() {
        // Renewed at t0, then paused for longer than the lease: its deadline has passed when it wakes, so it
        // must not write on the strength of the old renewal; the next round finds the new holder.
        let mut e = elector("me");
        let t0 = Instant::now();
        let _ = e.decide(None, t0, wall(0));
        let until = e.written(WriteOutcome::Written, t0).unwrap();
        let woke = t0 + LEASE * 2;
        assert!(woke > until);
        assert_eq!(
            e.decide(Some(&held_by("other", wall(20), 1)), woke, wall(30)),
            Step::Follow
        );
        assert_eq!(e.leader_until(), None);
    }

    #[test]
    fn release_gives_up_only_our_own_lease() {
        let mut e = elector("me");
        let released = e.release(&held_by("me", wall(0), 2), wall(9)).unwrap();
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(2));
        assert_eq!(released.renew_time, Some(MicroTime(wall(9))));
        assert_eq!(e.release(&held_by("other", wall(0), 2), wall(9)), None);
        assert_eq!(e.leader_until(), None);
    }
}
