//! Leader election on a coordination.k8s.io Lease, so that of several replicas only one writes labels,
//! Events and annotations while all keep their caches warm and stay ready.
//!
//! The algorithm is the pure [`elector`]; this module holds the [`Leadership`] every loop reads and the
//! thin driver that reads and writes the Lease.

pub mod elector;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use elector::{Elector, LeaseConfig, Step, WriteOutcome};

use crate::metrics::ComputedGauge;
use crate::shared::Shared;
use crate::supervisor::Supervisor;

/// Starts the election. It stops only after every loop has, so the lease is released once no writer is
/// left in this process and two replicas never write at once.
pub fn start(shared: &Arc<Shared>, config: LeaseConfig, tasks: &mut Supervisor) {
    tracing::info!(lease = %config.name, namespace = %config.namespace, identity = %config.identity, "leader election on");
    let api = Api::namespaced(shared.client.clone(), &config.namespace);
    let leadership = shared.leadership.clone();
    tasks.spawn_final("leader-election", move |stop| {
        run(api, config, leadership, stop)
    });
}

/// `osbuild_leader`, read from the leadership at scrape time.
pub struct LeaderGauge {
    leadership: Arc<Leadership>,
    gauge: ComputedGauge,
}

impl LeaderGauge {
    pub fn new(leadership: Arc<Leadership>) -> prometheus::Result<Self> {
        Ok(Self {
            leadership,
            gauge: ComputedGauge::new(
                "leader",
                "1 when this replica is the leader (always 1 without --leader-elect): only the leader writes.",
                &[],
            )?,
        })
    }
}

impl prometheus::core::Collector for LeaderGauge {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauge
            .family([(vec![], i64::from(self.leadership.is_leader()))])
    }
}

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

/// Runs the election until `stop`, then releases the lease if held.
pub async fn run(
    api: Api<Lease>,
    config: LeaseConfig,
    leadership: Arc<Leadership>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let retry = config.retry_period();
    let mut elector = Elector::new(config);
    loop {
        let until = round(&api, &mut elector).await;
        leadership.lead_until(until);
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = stop.cancelled() => break,
        }
    }
    leadership.lead_until(None);
    release(&api, &mut elector).await;
    Ok(())
}

/// One round: read the Lease, write what the elector decides, return until when we lead.
async fn round(api: &Api<Lease>, elector: &mut Elector) -> Option<Instant> {
    let name = elector.config().name.clone();
    let started = Instant::now();
    let current = match api.get_opt(&name).await {
        Ok(current) => current,
        Err(err) => {
            tracing::warn!(lease = %name, error = %err, "cannot read the lease");
            return elector.written(WriteOutcome::Failed, started);
        }
    };
    let step = elector.decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        started,
        Timestamp::now(),
    );
    let previous = current
        .as_ref()
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    let result = match step {
        Step::Follow => return elector.written(WriteOutcome::Conflict, started),
        Step::Create(spec) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(elector.config().namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await
        }
        Step::Update(spec) => {
            // `replace` sends the resourceVersion we read: if anyone wrote the lease since, we get a 409 and
            // try again next round instead of overwriting their claim.
            let mut lease = current.unwrap_or_default();
            lease.spec = Some(spec);
            api.replace(&name, &PostParams::default(), &lease).await
        }
    };
    let outcome = match result {
        Ok(_) => {
            if previous != elector.config().identity {
                tracing::info!(lease = %name, previous = %previous, "acquired the lease");
            }
            WriteOutcome::Written
        }
        Err(kube::Error::Api(status)) if status.code == 409 => WriteOutcome::Conflict,
        Err(err) => {
            tracing::warn!(lease = %name, error = %err, "cannot write the lease");
            WriteOutcome::Failed
        }
    };
    elector.written(outcome, started)
}

async fn release(api: &Api<Lease>, elector: &mut Elector) {
    let name = elector.config().name.clone();
    let Ok(Some(mut lease)) = api.get_opt(&name).await else {
        return;
    };
    let Some(spec) = lease
        .spec
        .as_ref()
        .and_then(|s| elector.release(s, Timestamp::now()))
    else {
        return;
    };
    lease.spec = Some(spec);
    match api.replace(&name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %name, "released the lease"),
        Err(err) => {
            tracing::warn!(lease = %name, error = %err, "cannot release the lease; it expires on its own");
        }
    }
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
