//! Leader election on a coordination.k8s.io Lease, so that of several replicas only one writes labels,
//! Events and annotations while all keep their caches warm and stay ready.
//!
//! The algorithm is the pure [`elector`]; this module is the thin driver that reads and writes the Lease
//! and sets the [`Leadership`] every loop reads, and exports it as `osbuild_leader`.

pub mod elector;

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;

pub use crate::leadership::Leadership;
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
