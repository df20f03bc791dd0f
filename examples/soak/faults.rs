//! The faults, drawn from the seed: what, when, and against which replica when the leader is not the target.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use osbuild_testkit::{ControlPlane, signal};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use serde_json::json;

use crate::checker::{Checker, replica_of};
use crate::replicas::{Flags, NAMES, Replica};
use crate::verdict::{Invariant, Violation, violation};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ApiserverKill,
    EtcdRestart,
    LeaderKill,
    LeaderPause,
    FollowerPause,
    WatchExpired,
    Throttled,
}

pub const KINDS: [Kind; 7] = [
    Kind::ApiserverKill,
    Kind::EtcdRestart,
    Kind::LeaderKill,
    Kind::LeaderPause,
    Kind::FollowerPause,
    Kind::WatchExpired,
    Kind::Throttled,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::ApiserverKill => "kube-apiserver killed (-9) and restarted",
            Kind::EtcdRestart => "etcd restarted",
            Kind::LeaderKill => "leader killed (-9), restarted as a new pod",
            Kind::LeaderPause => "leader paused (SIGSTOP) past its lease, then resumed",
            Kind::FollowerPause => "follower paused (SIGSTOP), then resumed",
            Kind::WatchExpired => "a replica's connection cut until its watches expire (410)",
            Kind::Throttled => "API server throttling our ServiceAccounts (FlowSchema, 429)",
        }
    }
}

/// One scheduled fault: seconds after the soak's start, its kind, and a number picking the target
/// replica when the kind does not name it.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub at: f64,
    pub kind: Kind,
    pub pick: usize,
}

/// Faults from `seed` every `gap` seconds (uniform), kinds drawn from a shuffled bag of all seven, so any
/// seven faults in a row cover every kind.
pub fn schedule(seed: u64, duration: f64, gap: (f64, f64)) -> Vec<Fault> {
    let mut rng = XorShiftRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let mut bag = Vec::new();
    let mut at = 15.0;
    while at < duration {
        if bag.is_empty() {
            bag = KINDS.to_vec();
            bag.shuffle(&mut rng);
        }
        let kind = bag.pop().unwrap();
        faults.push(Fault {
            at,
            kind,
            pick: rng.random_range(0..NAMES.len()),
        });
        at += rng.random_range(gap.0..=gap.1);
    }
    faults
}

pub struct Context<'a> {
    pub cp: &'a ControlPlane,
    pub client: Client,
    pub replicas: &'a Arc<Mutex<Vec<Replica>>>,
    pub checker: &'a Checker,
    pub flags: &'a Flags,
    pub namespace: &'a str,
    pub lease_duration: Duration,
    /// Invariants a fault itself found violated (readiness).
    pub problems: Arc<Mutex<Vec<Violation>>>,
}

async fn readyz(addr: &str) -> u16 {
    osbuild_testkit::http_get(addr, "/readyz")
        .await
        .map_or(0, |(status, _)| status)
}

impl Context<'_> {
    /// The index of the replica holding the Lease as the checker saw it last, else `pick`.
    fn leader(&self, pick: usize) -> usize {
        let holder = self.checker.holder();
        replica_of(&holder)
            .and_then(|r| NAMES.iter().position(|n| *n == r))
            .unwrap_or(pick % NAMES.len())
    }
}

/// Injects one fault and heals it; returns what was done.
pub async fn inject(fault: Fault, ctx: &Context<'_>) -> String {
    let pause = ctx.lease_duration + Duration::from_secs(4);
    match fault.kind {
        Kind::ApiserverKill => {
            let pid_file = ctx.cp.dir.join("pids/kube-apiserver.pid");
            let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse::<u32>() {
                signal(pid, "KILL");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            ctx.cp.start("kube-apiserver").await;
            format!("kube-apiserver pid {} killed", pid.trim())
        }
        Kind::EtcdRestart => {
            ctx.cp.restart("etcd").await;
            "etcd restarted".into()
        }
        Kind::LeaderKill => {
            let i = ctx.leader(fault.pick);
            let name = {
                let mut replicas = ctx.replicas.lock().unwrap();
                replicas[i].kill();
                replicas[i].identity()
            };
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut replicas = ctx.replicas.lock().unwrap();
            replicas[i].spawn(ctx.flags);
            format!("{name} killed, {} started", replicas[i].identity())
        }
        Kind::LeaderPause | Kind::FollowerPause => {
            let leader = ctx.leader(fault.pick);
            let i = if fault.kind == Kind::LeaderPause {
                leader
            } else {
                (leader + 1 + fault.pick % 2) % NAMES.len()
            };
            let name = {
                let mut replicas = ctx.replicas.lock().unwrap();
                replicas[i].pause();
                replicas[i].identity()
            };
            tokio::time::sleep(pause).await;
            ctx.replicas.lock().unwrap()[i].resume();
            format!("{name} paused {pause:?}")
        }
        Kind::WatchExpired => {
            let i = fault.pick % NAMES.len();
            let (name, addr) = {
                let replicas = ctx.replicas.lock().unwrap();
                replicas[i].proxy.cut();
                (replicas[i].identity(), replicas[i].metrics_addr.clone())
            };
            // The API server compacts etcd every second and serves watches without a cache, so after the
            // churn's writes meanwhile, the replica's resourceVersions are gone: its watches get 410.
            // Readiness must say so while the watches are broken, and come back once they are healed.
            let cut = std::time::Instant::now();
            let mut not_ready = false;
            while cut.elapsed() < Duration::from_secs(8) {
                not_ready |= readyz(&addr).await == 503;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            ctx.replicas.lock().unwrap()[i].proxy.heal();
            let healed = std::time::Instant::now();
            let mut ready_again = None;
            while healed.elapsed() < Duration::from_secs(30) {
                if readyz(&addr).await == 200 {
                    ready_again = Some(healed.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            if !not_ready {
                ctx.problems.lock().unwrap().push(violation(
                    Invariant::Readiness,
                    format!("{name}: /readyz never 503 while its watches were cut off"),
                ));
            }
            match ready_again {
                Some(t) => format!(
                    "{name} cut off for 8s: not ready meanwhile {not_ready}, ready again {t:.1?} after"
                ),
                None => {
                    ctx.problems.lock().unwrap().push(violation(
                        Invariant::Readiness,
                        format!("{name}: not ready 30 s after its connection was healed"),
                    ));
                    format!("{name} cut off for 8s: not ready again within 30 s")
                }
            }
        }
        Kind::Throttled => {
            let name = format!("{}-soak-throttle", ctx.namespace);
            let level: PriorityLevelConfiguration = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 0, "lendablePercent": 0,
                         "borrowingLimitPercent": 0, "limitResponse": {"type": "Reject"}}},
            }))
            .unwrap();
            let subjects: Vec<_> = NAMES
                .iter()
                .map(|n| json!({"kind": "ServiceAccount", "serviceAccount": {"name": format!("soak-{n}"), "namespace": ctx.namespace}}))
                .collect();
            let schema: FlowSchema = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {
                    "priorityLevelConfiguration": {"name": name},
                    "matchingPrecedence": 100,
                    "distinguisherMethod": {"type": "ByUser"},
                    "rules": [{
                        "subjects": subjects,
                        "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }],
                },
            }))
            .unwrap();
            let levels: Api<PriorityLevelConfiguration> = Api::all(ctx.client.clone());
            let schemas: Api<FlowSchema> = Api::all(ctx.client.clone());
            let made = levels.create(&PostParams::default(), &level).await.is_ok()
                && schemas
                    .create(&PostParams::default(), &schema)
                    .await
                    .is_ok();
            tokio::time::sleep(Duration::from_secs(15)).await;
            let _ = schemas.delete(&name, &DeleteParams::default()).await;
            let _ = levels.delete(&name, &DeleteParams::default()).await;
            if made {
                "throttled for 15s".into()
            } else {
                ctx.problems.lock().unwrap().push(violation(
                    Invariant::FaultSetup,
                    "throttling could not be set up (the API server refused the FlowSchema)",
                ));
                "not throttled".into()
            }
        }
    }
}
