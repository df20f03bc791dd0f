//! Leader election on a coordination.k8s.io Lease, so that of several replicas only one writes labels,
//! Events and annotations while all keep their caches warm and stay ready.
//!
//! The algorithm follows client-go's leaderelection: the holder renews `renewTime` every retry period; a
//! candidate takes the lease over once the record has not changed for a whole lease duration, judged by
//! its own clock from when it last saw the record change (never by comparing timestamps across machines,
//! so clock skew cannot cause two leaders). Updates carry the resourceVersion, so two candidates racing
//! for an expired lease cannot both win. A leader that cannot renew steps down before its lease can expire
//! for the others, and a stopping leader releases the lease at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Who may write. Without leader election every replica is the leader.
#[derive(Debug)]
pub struct Leadership {
    leader: AtomicBool,
    changes: watch::Sender<bool>,
}

impl Leadership {
    pub fn always_leader() -> Arc<Self> {
        Arc::new(Self {
            leader: AtomicBool::new(true),
            changes: watch::Sender::new(true),
        })
    }

    pub fn follower() -> Arc<Self> {
        Arc::new(Self {
            leader: AtomicBool::new(false),
            changes: watch::Sender::new(false),
        })
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// A receiver that sees every change of leadership.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.changes.subscribe()
    }

    fn set(&self, leader: bool) {
        if self.leader.swap(leader, Ordering::SeqCst) != leader {
            self.changes.send_replace(leader);
            if leader {
                tracing::info!("became the leader: this replica now writes labels and events");
            } else {
                tracing::warn!("no longer the leader: this replica stops writing");
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
}

impl LeaseConfig {
    /// How often the holder renews and candidates retry (client-go's defaults keep the same ratio: 15s/2s).
    fn retry_period(&self) -> Duration {
        (self.lease_duration / 7).max(Duration::from_millis(200))
    }

    /// A leader that has not renewed for this long steps down, well before others may take over.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// Runs the election until `shutdown`, then releases the lease if held.
pub async fn run(
    api: Api<Lease>,
    config: LeaseConfig,
    leadership: Arc<Leadership>,
    shutdown: CancellationToken,
) {
    let mut elector = Elector {
        api,
        config,
        observed: None,
        last_renew: None,
    };
    loop {
        let leader = elector.try_acquire_or_renew().await;
        leadership.set(leader);
        tokio::select! {
            _ = tokio::time::sleep(elector.config.retry_period()) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    if leadership.is_leader() {
        leadership.set(false);
        elector.release().await;
    }
}

struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last record seen (holder, renewTime) and when this process saw it change.
    observed: Option<(Option<String>, Option<Timestamp>, Instant)>,
    /// When this process last renewed successfully as the holder.
    last_renew: Option<Instant>,
}

impl Elector {
    /// One round: returns whether this process holds the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> bool {
        match self.round().await {
            Ok(leader) => leader,
            Err(err) => {
                tracing::warn!(lease = %self.config.name, error = %err, "leader election round failed");
                // Keep leading only while the last renewal is recent enough that nobody else can have taken over.
                self.last_renew
                    .is_some_and(|at| at.elapsed() < self.config.renew_deadline())
            }
        }
    }

    async fn round(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let me = self.config.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec_for_me(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.last_renew = Some(Instant::now());
                    Ok(true)
                }
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        let record = (holder.clone(), renewed);
        match &self.observed {
            Some((h, r, _)) if (h, r) == (&record.0, &record.1) => {}
            _ => self.observed = Some((record.0, record.1, Instant::now())),
        }
        let held_by_me = holder.as_deref() == Some(me.as_str());
        let expired = holder.is_none()
            || self
                .observed
                .as_ref()
                .is_some_and(|(_, _, seen)| seen.elapsed() > self.lease_duration_of(&spec));
        if !held_by_me && !expired {
            self.last_renew = None;
            return Ok(false);
        }
        let (acquired, transitions) = if held_by_me {
            (
                spec.acquire_time.map_or(now, |t| t.0),
                spec.lease_transitions.unwrap_or(0),
            )
        } else {
            (now, spec.lease_transitions.unwrap_or(0) + 1)
        };
        lease.spec = Some(self.spec_for_me(acquired, now, transitions));
        // `replace` sends our resourceVersion: if anyone wrote the lease since we read it, we get a 409 and
        // try again next round instead of overwriting their claim.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !held_by_me {
                    tracing::info!(lease = %self.config.name, previous = holder.as_deref().unwrap_or(""), "acquired the lease");
                }
                self.last_renew = Some(Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    fn lease_duration_of(&self, spec: &LeaseSpec) -> Duration {
        spec.lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs)
    }

    fn spec_for_me(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                self.config
                    .lease_duration
                    .as_secs()
                    .clamp(1, i32::MAX as u64) as i32,
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Gives the lease up so another replica takes over at once rather than after the lease duration.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.config.name, "released the lease"),
            Err(err) => {
                tracing::warn!(lease = %self.config.name, error = %err, "cannot release the lease; it expires on its own")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_keep_client_go_ratios() {
        let config = LeaseConfig {
            name: "l".into(),
            namespace: "n".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
        };
        assert_eq!(config.retry_period(), Duration::from_secs(15) / 7);
        assert_eq!(config.renew_deadline(), Duration::from_secs(10));
        assert!(config.retry_period() < config.renew_deadline());
    }

    #[test]
    fn leadership_changes_are_broadcast_once() {
        let leadership = Leadership::follower();
        let mut rx = leadership.subscribe();
        leadership.set(true);
        assert!(leadership.is_leader());
        assert!(rx.has_changed().unwrap());
        assert!(*rx.borrow_and_update());
        leadership.set(true);
        assert!(!rx.has_changed().unwrap(), "no change, no broadcast");
    }
}
