//! The soak's cluster contents and the background churn: nodes of every kernelVersion format, pods bound to
//! them, kernelVersion upgrades and downgrades, nodes joining and leaving, our labels deleted or overwritten
//! by hand, pods failing with the mismatch in each shape and recovering. Every API error is counted and
//! survived: the churn goes on through the faults.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use osbuild_testkit::RUN_LABEL;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use serde_json::{Value, json};

use crate::checker::Checker;

/// Real kernelVersions of every format the controller parses (tests/data/kernel_versions.json has each
/// one's source): dotted with and without revision, the Windows Server 2016 long form, the bare build form.
pub const KERNELS: [&str; 10] = [
    "10.0.17763.3887",
    "10.0.17763.1158",
    "10.0.20348.2700",
    "10.0.20348.2227",
    "10.0.26100.32995",
    "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)",
    "16299.15.amd64fre.rs3_release.170928-1534",
    "10.0.17763",
    "10.0.14393.1944",
    "10.0.14393.1715",
];

/// A Windows kernelVersion the controller cannot parse (kubelet 1.9.1's bug).
const ODD_KERNEL: &str = "6.2.09200.192";

const OSBUILD: &str = "beta.kubernetes.io/osbuild";
const IMAGE: &str = "mcr.microsoft.com/windows/servercore:ltsc2019";

/// How an episode of a pod looks (tests/data/error_messages.json: real messages with their sources).
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// containerd: waiting RunContainerError with the shim's message.
    Waiting,
    /// containerd: CrashLoopBackOff, last state StartError.
    CrashLoop,
    /// Docker era: CrashLoopBackOff, last state ContainerCannotRun with HCS 0xc0370101.
    CannotRun,
}

pub struct Messages {
    containerd: String,
    hcs: String,
}

impl Messages {
    pub fn load() -> Self {
        let cases: Vec<Value> =
            serde_json::from_str(include_str!("../../tests/data/error_messages.json")).unwrap();
        let first = |variant: &str| {
            cases
                .iter()
                .find(|c| c["os_mismatch"] == true && c["variant"] == variant)
                .and_then(|c| c["message"].as_str())
                .unwrap_or_else(|| panic!("no real message for {variant}"))
                .to_owned()
        };
        Self {
            containerd: first("containerd"),
            hcs: first("hcs-0xc0370101"),
        }
    }

    fn status(&self, shape: Shape, restarts: i32) -> Value {
        let (state, last) = match shape {
            Shape::Waiting => (
                json!({"waiting": {"reason": "RunContainerError", "message": self.containerd}}),
                json!({}),
            ),
            Shape::CrashLoop | Shape::CannotRun => {
                let (reason, message) = match shape {
                    Shape::CrashLoop => ("StartError", &self.containerd),
                    _ => ("ContainerCannotRun", &self.hcs),
                };
                (
                    json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}),
                    json!({"terminated": {"reason": reason, "exitCode": 128, "message": message,
                        "startedAt": "2026-11-23T00:00:00Z", "finishedAt": "2026-11-23T00:00:01Z"}}),
                )
            }
        };
        json!({"phase": "Pending", "conditions": readiness(false),
            "containerStatuses": [{"name": "app", "image": IMAGE, "imageID": "",
            "ready": false, "restartCount": restarts, "state": state, "lastState": last}]})
    }
}

fn running_status(restarts: i32) -> Value {
    json!({"phase": "Running", "conditions": readiness(true),
        "containerStatuses": [{"name": "app", "image": IMAGE, "imageID": "",
        "ready": true, "restartCount": restarts, "state": {"running": {"startedAt": "2026-11-23T01:00:00Z"}}}]})
}

/// The conditions a kubelet writes when the containers become (not) ready, changed now: each status the
/// churn writes is a transition. Their `lastTransitionTime` is in whole seconds, as the API serves it.
fn readiness(ready: bool) -> Value {
    use k8s_openapi::jiff::Timestamp;
    let now = Timestamp::from_second(Timestamp::now().as_second())
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string();
    let (status, reason) = if ready {
        ("True", Value::Null)
    } else {
        ("False", json!("ContainersNotReady"))
    };
    json!([
        {"type": "ContainersReady", "status": status, "reason": reason, "lastTransitionTime": now},
        {"type": "Ready", "status": status, "reason": reason, "lastTransitionTime": now}
    ])
}

pub struct Sizes {
    pub windows: usize,
    pub linux: usize,
    /// Windows nodes without pods that leave and join.
    pub ephemeral: usize,
    pub pods: usize,
    /// Churn actions per second.
    pub rate: f64,
    /// New Windows pods (gated by the placement policy) per second, each deleted after `placement_keep`.
    pub placement_rate: f64,
    pub placement_keep: Duration,
}

/// What the churn knows of the cluster (its own writes; the checker judges from what it sees).
pub struct Workload {
    pub client: Client,
    pub prefix: String,
    pub namespace: String,
    pub stable: Vec<String>,
    pub ephemeral: Vec<(String, bool)>,
    pub pods: Vec<PodModel>,
    messages: Messages,
    next_node: usize,
}

pub struct PodModel {
    name: String,
    failing_since: Option<Instant>,
    restarts: i32,
    /// A status write to this pod failed or was cut off (a fault, the churn's timeout), so whether it
    /// landed is unknown and the model may not be the pod's status. Such a pod is churned no more: writing
    /// a new failure onto a pod still failing (the recovery lost) would move ContainersReady's transition
    /// time without a transition, which no kubelet does, and the checker would date a new episode the
    /// controller rightly does not see (found by the soak with seed 20261204).
    uncertain: bool,
}

#[derive(Default)]
pub struct ChurnStats {
    pub actions: AtomicUsize,
    pub errors: AtomicUsize,
    pub kernel_changes: AtomicUsize,
    pub joins: AtomicUsize,
    pub leaves: AtomicUsize,
    pub label_deletes: AtomicUsize,
    pub label_overwrites: AtomicUsize,
    pub pod_failures: AtomicUsize,
    pub pod_recoveries: AtomicUsize,
}

fn node_object(name: &str, prefix: &str, os: &str) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {
        RUN_LABEL: prefix, "kubernetes.io/os": os, "kubernetes.io/hostname": name}}}))
    .unwrap()
}

fn node_status(name: &str, os: &str, kernel: &str) -> Value {
    json!({"status": {
        "nodeInfo": {"kernelVersion": kernel, "operatingSystem": os, "architecture": "amd64",
            "osImage": if os == "windows" { "Windows Server Datacenter" } else { "Ubuntu 24.04 LTS" },
            "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "containerRuntimeVersion": "containerd://2.1.0",
            "machineID": name, "systemUUID": name, "bootID": name},
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}})
}

impl Workload {
    pub fn new(client: Client, prefix: &str, namespace: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            namespace: namespace.to_owned(),
            stable: Vec::new(),
            ephemeral: Vec::new(),
            pods: Vec::new(),
            messages: Messages::load(),
            next_node: 0,
        }
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn pod_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn create_node(&self, name: &str, os: &str, kernel: &str) -> kube::Result<()> {
        let nodes = self.nodes();
        nodes
            .create(&PostParams::default(), &node_object(name, &self.prefix, os))
            .await?;
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&node_status(name, os, kernel)),
            )
            .await?;
        Ok(())
    }

    fn new_node_name(&mut self, kind: &str) -> String {
        self.next_node += 1;
        format!("{}-{kind}{}", self.prefix, self.next_node)
    }

    /// Creates the nodes and pods (16 requests at a time); setup has no faults, so errors fail the soak.
    pub async fn populate(&mut self, sizes: &Sizes, rng: &mut XorShiftRng) {
        let mut plan = Vec::new();
        for i in 0..sizes.windows {
            let name = self.new_node_name("win");
            plan.push((name.clone(), "windows", KERNELS[i % KERNELS.len()]));
            self.stable.push(name);
        }
        for _ in 0..sizes.linux {
            plan.push((self.new_node_name("linux"), "linux", "5.15.0-1049-azure"));
        }
        // One Windows node with kubelet 1.9.1's wrong kernelVersion (tests/data/kernel_versions.json has its
        // source): unparseable, so the leader warns on it at every reconcile, and kube-runtime's Recorder
        // counts the repeats as a series of one Event (a patch: the right manifests/ grants for it is used).
        plan.push((self.new_node_name("odd"), "windows", ODD_KERNEL));
        for i in 0..sizes.ephemeral {
            let name = self.new_node_name("eph");
            plan.push((name.clone(), "windows", KERNELS[(i * 7) % KERNELS.len()]));
            self.ephemeral.push((name, true));
        }
        let this = &*self;
        futures::stream::iter(plan)
            .for_each_concurrent(16, |(name, os, kernel)| async move {
                this.create_node(&name, os, kernel)
                    .await
                    .unwrap_or_else(|e| panic!("create node {name}: {e}"));
            })
            .await;
        let mut pods = Vec::new();
        for i in 0..sizes.pods {
            let node = self.stable.choose(rng).unwrap().clone();
            pods.push((format!("pod-{i}"), node));
        }
        let api = self.pod_api();
        futures::stream::iter(pods.iter())
            .for_each_concurrent(16, |(name, node)| {
                let api = api.clone();
                async move {
                    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name},
                        "spec": {"nodeName": node, "containers": [{"name": "app", "image": IMAGE}]}}))
                    .unwrap();
                    api.create(&PostParams::default(), &pod)
                        .await
                        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
                }
            })
            .await;
        self.pods = pods
            .into_iter()
            .map(|(name, _)| PodModel {
                name,
                failing_since: None,
                restarts: 0,
                uncertain: false,
            })
            .collect();
    }

    /// One random churn action.
    async fn act(&mut self, rng: &mut XorShiftRng, checker: &Checker, stats: &ChurnStats) {
        stats.actions.fetch_add(1, Ordering::Relaxed);
        let roll: f64 = rng.random();
        let result: kube::Result<()> = if roll < 0.40 {
            // kernelVersion upgrade or downgrade of a node (an in-place upgrade, a rollback, a reimage)
            let node = if rng.random_bool(0.8) {
                self.stable.choose(rng).cloned()
            } else {
                self.ephemeral
                    .iter()
                    .filter(|(_, up)| *up)
                    .map(|(n, _)| n.clone())
                    .collect::<Vec<_>>()
                    .choose(rng)
                    .cloned()
            };
            let kernel = *KERNELS.choose(rng).unwrap();
            stats.kernel_changes.fetch_add(1, Ordering::Relaxed);
            match node {
                Some(node) => {
                    let patch = json!({"status": {"nodeInfo": {"kernelVersion": kernel}}});
                    self.nodes()
                        .patch_status(&node, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ())
                }
                None => Ok(()),
            }
        } else if roll < 0.55 {
            // a node of the pool leaves, or a new one joins in place of one that left
            let i = rng.random_range(0..self.ephemeral.len().max(1));
            let Some((name, up)) = self.ephemeral.get(i).cloned() else {
                return;
            };
            if up {
                stats.leaves.fetch_add(1, Ordering::Relaxed);
                self.ephemeral[i].1 = false;
                self.nodes()
                    .delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| ())
            } else {
                stats.joins.fetch_add(1, Ordering::Relaxed);
                let fresh = self.new_node_name("eph");
                self.ephemeral[i] = (fresh.clone(), true);
                let kernel = *KERNELS.choose(rng).unwrap();
                self.create_node(&fresh, "windows", kernel).await
            }
        } else if roll < 0.70 {
            // our osbuild label deleted, or overwritten with a wrong value, by hand
            let node = self.stable.choose(rng).unwrap().clone();
            let overwrite = rng.random_bool(0.5);
            let value = if overwrite {
                stats.label_overwrites.fetch_add(1, Ordering::Relaxed);
                json!("99999")
            } else {
                stats.label_deletes.fetch_add(1, Ordering::Relaxed);
                Value::Null
            };
            checker.tamper_begin(&node);
            let patch = json!({"metadata": {"labels": {OSBUILD: value}}});
            let params = PatchParams {
                field_manager: Some("soak-hand".into()),
                ..PatchParams::default()
            };
            let result = self
                .nodes()
                .patch(&node, &params, &Patch::Merge(&patch))
                .await;
            let rv = result
                .as_ref()
                .ok()
                .and_then(|n| n.resource_version())
                .and_then(|v| v.parse().ok());
            checker.tamper_done(&node, rv);
            result.map(|_| ())
        } else {
            // a pod starts failing with the mismatch (in one of its shapes), or a failing one recovers
            let now = Instant::now();
            let long_enough = |p: &PodModel| {
                p.failing_since
                    .is_some_and(|s| now - s > Duration::from_secs(40))
            };
            let recover: Vec<usize> = (0..self.pods.len())
                .filter(|&i| !self.pods[i].uncertain && long_enough(&self.pods[i]))
                .collect();
            let failing = self
                .pods
                .iter()
                .filter(|p| p.failing_since.is_some())
                .count();
            let (index, status) = if !recover.is_empty() && rng.random_bool(0.5) {
                let i = *recover.choose(rng).unwrap();
                let pod = &mut self.pods[i];
                pod.failing_since = None;
                stats.pod_recoveries.fetch_add(1, Ordering::Relaxed);
                (i, running_status(pod.restarts))
            } else if failing < self.pods.len() / 10 + 1 {
                let idle: Vec<usize> = (0..self.pods.len())
                    .filter(|&i| !self.pods[i].uncertain && self.pods[i].failing_since.is_none())
                    .collect();
                let Some(&i) = idle.choose(rng) else { return };
                let shape = *[Shape::Waiting, Shape::CrashLoop, Shape::CannotRun]
                    .choose(rng)
                    .unwrap();
                let pod = &mut self.pods[i];
                pod.failing_since = Some(now);
                pod.restarts += 1;
                stats.pod_failures.fetch_add(1, Ordering::Relaxed);
                (i, self.messages.status(shape, pod.restarts))
            } else {
                return;
            };
            let name = self.pods[index].name.clone();
            // Uncertain until the answer says it landed; stays so when it fails or is cut off.
            self.pods[index].uncertain = true;
            let result = self
                .pod_api()
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({ "status": status })),
                )
                .await
                .map(|_| ());
            self.pods[index].uncertain = result.is_err();
            result
        };
        if result.is_err() {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Churns until `stop`, at `rate` actions per second.
    pub async fn churn(
        mut self,
        seed: u64,
        rate: f64,
        checker: Checker,
        stats: Arc<ChurnStats>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let mut rng = XorShiftRng::seed_from_u64(seed);
        self.ephemeral.shuffle(&mut rng);
        let period = Duration::from_secs_f64(1.0 / rate);
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            // A hung request (the API server killed mid-call) must not stall the churn for long.
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                self.act(&mut rng, &checker, &stats),
            )
            .await;
            tokio::time::sleep(period.saturating_sub(started.elapsed())).await;
        }
        self
    }
}
