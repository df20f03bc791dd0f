//! The pod OS-mismatch detector: watches Pods and `FailedCreatePodSandBox` Events, and flags each pod,
//! container and failure episode once: a Warning Event with the remediation, a gauge while it lasts, a
//! counter, and (with `--annotate-pods`) an annotation.
//!
//! It reads the Node index (which nodes are Windows, their osbuild and release) and never the node
//! controller. Pods are not cached: each watch event is judged and dropped, and only flagged pods are
//! remembered, so memory does not grow with the number of pods in the cluster.

pub mod detect;
pub mod remedy;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, ObjectReference, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::core::labels::LabelKeys;
use crate::events::{api_error_category, publish_warning};
use crate::health::Health;
use crate::index::{NodeFacts, NodesSynced, node_facts, observe_watch, probe_failing_watch};
use crate::lease::Leadership;
use crate::metrics::Metrics;
use detect::{
    Failure, SANDBOX, SANDBOX_EVENT_REASON, active_failures, main_image, sandbox_failure,
    sandbox_recovered,
};
use remedy::{annotation_value, finding_message};

/// Field manager for the pod annotation (server-side apply).
pub const MANAGER: &str = "osbuild-controller";
/// The Event reason on a flagged Pod.
pub const EVENT_REASON: &str = "OSVersionMismatch";
pub const PODS_WATCH: &str = "pods";
pub const SANDBOX_EVENTS_WATCH: &str = "pod-sandbox-events";

pub struct PodContext {
    pub client: Client,
    pub nodes: Store<Node>,
    pub nodes_synced: NodesSynced,
    pub keys: LabelKeys,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub dry_run: bool,
    pub annotate: bool,
    /// Only the leader publishes Events and annotations; every replica tracks findings and exports gauges.
    pub leadership: Arc<Leadership>,
    /// Watch one namespace only; all when `None`.
    pub namespace: Option<String>,
}

impl PodContext {
    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

/// The pod a finding is about.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodRef {
    namespace: String,
    name: String,
    uid: String,
}

/// One flagged container (or sandbox): the gauge's label values, kept to remove the series later.
#[derive(Debug, Clone)]
struct Flag {
    pod: PodRef,
    node: String,
    osbuild: String,
    annotation: String,
}

impl Flag {
    fn gauge_labels<'a>(&'a self, container: &'a str) -> [&'a str; 5] {
        [
            &self.pod.namespace,
            &self.pod.name,
            container,
            &self.node,
            &self.osbuild,
        ]
    }
}

pub struct Detector {
    ctx: Arc<PodContext>,
    /// pod uid → container → flag: the failure episodes in progress.
    flagged: HashMap<String, BTreeMap<String, Flag>>,
    /// Flagged pod uids seen during a re-list; the others were deleted while the watch was down.
    relist_seen: Option<HashSet<String>>,
}

/// Runs the detector until `shutdown`. Waits for the Node index first: a pod's node must be known to judge it.
pub async fn run(ctx: Arc<PodContext>, health: Arc<Health>, shutdown: CancellationToken) {
    health.register_watch(PODS_WATCH);
    health.register_watch(SANDBOX_EVENTS_WATCH);
    let mut synced = ctx.nodes_synced.clone();
    tokio::select! {
        result = synced.wait_for(|synced| *synced) => if result.is_err() { return },
        _ = shutdown.cancelled() => return,
    }
    let (pods, events): (Api<Pod>, Api<CoreEvent>) = match &ctx.namespace {
        Some(ns) => (
            Api::namespaced(ctx.client.clone(), ns),
            Api::namespaced(ctx.client.clone(), ns),
        ),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let sandbox_selector = format!("involvedObject.kind=Pod,reason={SANDBOX_EVENT_REASON}");
    let sandbox_events = watcher::Config::default().fields(&sandbox_selector);
    tokio::spawn(probe_failing_watch(
        pods.clone(),
        ListParams::default(),
        PODS_WATCH,
        health.clone(),
        ctx.metrics.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(probe_failing_watch(
        events.clone(),
        ListParams::default().fields(&sandbox_selector),
        SANDBOX_EVENTS_WATCH,
        health.clone(),
        ctx.metrics.clone(),
        shutdown.clone(),
    ));
    let pod_stream = watcher(
        pods,
        watcher::Config::default().page_size(crate::run::LIST_PAGE_SIZE),
    )
    .default_backoff()
    .map(|e| Input::Pod(Box::new(e)));
    let event_stream = watcher(events, sandbox_events)
        .default_backoff()
        .map(|e| Input::Sandbox(Box::new(e)));
    let mut inputs = pin!(
        futures::stream::select(pod_stream, event_stream).take_until(shutdown.cancelled_owned())
    );

    let mut detector = Detector {
        ctx,
        flagged: HashMap::new(),
        relist_seen: None,
    };
    while let Some(input) = inputs.next().await {
        match input {
            Input::Pod(event) => {
                let event = *event;
                observe_watch(&health, &detector.ctx.metrics, PODS_WATCH, &event);
                if let Ok(event) = event {
                    detector.on_pod_event(event).await;
                }
            }
            Input::Sandbox(event) => {
                let event = *event;
                observe_watch(&health, &detector.ctx.metrics, SANDBOX_EVENTS_WATCH, &event);
                if let Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) = event {
                    detector.on_sandbox_event(e).await;
                }
            }
        }
    }
}

enum Input {
    // Boxed: objects are large, and only the pointer moves through the merged stream.
    Pod(Box<Result<watcher::Event<Pod>, watcher::Error>>),
    Sandbox(Box<Result<watcher::Event<CoreEvent>, watcher::Error>>),
}

impl Detector {
    async fn on_pod_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relist_seen = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => self.on_pod(pod).await,
            watcher::Event::Delete(pod) => {
                let uid = pod.uid().unwrap_or_default();
                self.clear_all(&uid, false).await;
            }
            watcher::Event::InitDone => {
                let seen = self.relist_seen.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .flagged
                    .keys()
                    .filter(|uid| !seen.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.clear_all(&uid, false).await;
                }
            }
        }
    }

    async fn on_pod(&mut self, pod: Pod) {
        let Some(pod_ref) = pod_ref(&pod) else { return };
        if let Some(seen) = self.relist_seen.as_mut() {
            seen.insert(pod_ref.uid.clone());
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let facts = node.as_deref().and_then(|n| self.node_facts(n));
        // A terminating pod's episode is over: the user (or a rollout) is already replacing it.
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let failures = match (&node, &facts) {
            (Some(_), Some(f)) if f.windows && !terminating => active_failures(&pod),
            _ => Vec::new(),
        };
        let recovered: Vec<String> = self
            .flagged
            .get(&pod_ref.uid)
            .into_iter()
            .flat_map(|flags| flags.keys())
            .filter(|container| {
                if container.as_str() == SANDBOX {
                    terminating || sandbox_recovered(&pod)
                } else {
                    !failures.iter().any(|f| &f.container == *container)
                }
            })
            .cloned()
            .collect();
        let changed = !recovered.is_empty();
        for container in recovered {
            self.clear(&pod_ref.uid, &container);
        }
        let mut flagged_now = false;
        if let (Some(node), Some(facts)) = (node, facts) {
            for failure in failures {
                flagged_now |= self.flag(&pod_ref, failure, &node, &facts).await;
            }
        }
        if changed || flagged_now {
            self.sync_annotation(&pod_ref).await;
        }
    }

    async fn on_sandbox_event(&mut self, event: CoreEvent) {
        let Some(found) = sandbox_failure(&event) else {
            return;
        };
        if let Some(uid) = &found.uid
            && self
                .flagged
                .get(uid)
                .is_some_and(|f| f.contains_key(SANDBOX))
        {
            return;
        }
        // The Event names the pod; its node and image come from the pod itself, which must still exist, be
        // the same pod (not a new one with the same name) and not have come up since.
        let pod = match self.ctx.pods(&found.namespace).get_opt(&found.pod).await {
            Ok(Some(pod)) => pod,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(namespace = %found.namespace, pod = %found.pod, error = %err, "cannot read pod of a sandbox failure");
                return;
            }
        };
        let Some(pod_ref) = pod_ref(&pod) else { return };
        if found.uid.as_ref().is_some_and(|uid| *uid != pod_ref.uid) || sandbox_recovered(&pod) {
            return;
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return;
        };
        let Some(facts) = self.node_facts(&node).filter(|f| f.windows) else {
            return;
        };
        let failure = Failure {
            container: SANDBOX.to_owned(),
            image: main_image(&pod),
            variant: found.variant,
        };
        if self.flag(&pod_ref, failure, &node, &facts).await {
            self.sync_annotation(&pod_ref).await;
        }
    }

    fn node_facts(&self, node: &str) -> Option<NodeFacts> {
        self.ctx
            .nodes
            .get(&ObjectRef::new(node))
            .map(|n| node_facts(&n))
    }

    /// Flags a failure unless its episode is already flagged; returns whether it was new.
    async fn flag(
        &mut self,
        pod: &PodRef,
        failure: Failure,
        node: &str,
        facts: &NodeFacts,
    ) -> bool {
        if self
            .flagged
            .get(&pod.uid)
            .is_some_and(|f| f.contains_key(&failure.container))
        {
            return false;
        }
        let flag = Flag {
            pod: pod.clone(),
            node: node.to_owned(),
            osbuild: facts.osbuild.clone().unwrap_or_default(),
            annotation: annotation_value(&failure, node, facts),
        };
        let metrics = &self.ctx.metrics;
        metrics
            .pod_os_mismatch
            .with_label_values(&flag.gauge_labels(&failure.container))
            .set(1);
        metrics
            .pod_os_mismatch_detections
            .with_label_values(&[&pod.namespace])
            .inc();
        let message = finding_message(&failure, node, facts, &self.ctx.keys);
        tracing::warn!(namespace = %pod.namespace, pod = %pod.name, container = %failure.container, node, "{message}");
        if !self.ctx.dry_run && self.ctx.leadership.is_leader() {
            self.publish(pod, message).await;
        }
        self.flagged
            .entry(pod.uid.clone())
            .or_default()
            .insert(failure.container, flag);
        true
    }

    /// Ends one failure episode: the gauge series goes away.
    fn clear(&mut self, uid: &str, container: &str) {
        let Some(flags) = self.flagged.get_mut(uid) else {
            return;
        };
        if let Some(flag) = flags.remove(container) {
            let _ = self
                .ctx
                .metrics
                .pod_os_mismatch
                .remove_label_values(&flag.gauge_labels(container));
            tracing::info!(namespace = %flag.pod.namespace, pod = %flag.pod.name, container, "OS mismatch cleared");
        }
        if flags.is_empty() {
            self.flagged.remove(uid);
        }
    }

    /// Ends every episode of a pod; `pod_exists` says whether its annotation should be removed too.
    async fn clear_all(&mut self, uid: &str, pod_exists: bool) {
        let Some(flags) = self.flagged.get(uid) else {
            return;
        };
        let pod = flags.values().next().map(|f| f.pod.clone());
        let containers: Vec<String> = flags.keys().cloned().collect();
        for container in containers {
            self.clear(uid, &container);
        }
        if let (true, Some(pod)) = (pod_exists, pod) {
            self.sync_annotation(&pod).await;
        }
    }

    async fn publish(&self, pod: &PodRef, message: String) {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        };
        let ctx = &self.ctx;
        publish_warning(
            &ctx.recorder,
            &ctx.metrics,
            &reference,
            EVENT_REASON,
            "DetectOSMismatch",
            message,
        )
        .await;
    }

    /// With `--annotate-pods`, makes the pod's annotation list exactly its current findings (none: removed).
    async fn sync_annotation(&self, pod: &PodRef) {
        if !self.ctx.annotate || self.ctx.dry_run || !self.ctx.leadership.is_leader() {
            return;
        }
        let findings: Vec<serde_json::Value> = self
            .flagged
            .get(&pod.uid)
            .into_iter()
            .flat_map(|f| f.values())
            .filter_map(|f| serde_json::from_str(&f.annotation).ok())
            .collect();
        let annotations = if findings.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::json!({ self.ctx.keys.mismatch_annotation(): serde_json::Value::Array(findings).to_string() })
        };
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid, "annotations": annotations},
        });
        let result = self
            .ctx
            .pods(&pod.namespace)
            .patch(
                &pod.name,
                &PatchParams::apply(MANAGER),
                &Patch::Apply(&patch),
            )
            .await;
        match result {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(err) => {
                self.ctx
                    .metrics
                    .reconcile_errors
                    .with_label_values(&[api_error_category(&err)])
                    .inc();
                tracing::warn!(namespace = %pod.namespace, pod = %pod.name, error = %err, "cannot annotate pod");
            }
        }
    }
}

fn pod_ref(pod: &Pod) -> Option<PodRef> {
    Some(PodRef {
        namespace: pod.namespace()?,
        name: pod.metadata.name.clone()?,
        uid: pod.uid()?,
    })
}
