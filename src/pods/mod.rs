//! The pod OS-mismatch detector: watches Pods and `FailedCreatePodSandBox` Events, and flags each pod,
//! container and failure episode once: a Warning Event with the remediation, a gauge while it lasts, a
//! counter, and (with `--annotate-pods`) an annotation.
//!
//! Pure parts: [`detect`] finds failures in a pod or an Event, [`remedy`] words the finding, [`episodes`]
//! decides what to flag and clear. This module is the driver: it feeds watch events in and carries the
//! effects out. It reads the Node index and never the node controller.

pub mod detect;
pub mod episodes;
pub mod remedy;

use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::FIELD_MANAGER;
use crate::events::api_error_category;
use crate::shared::Shared;
use crate::supervisor::Supervisor;
use crate::watches::{LIST_PAGE_SIZE, observe_watch, probe_failing_watch};
use detect::{SANDBOX_EVENT_REASON, sandbox_failure};
use episodes::{Effect, Episodes, Flag, PodRef};

/// The loop's name in liveness and in `osbuild_reconcile_errors_total{controller}`.
pub const CONTROLLER: &str = "pod-detector";
/// The Event reason on a flagged Pod.
pub const EVENT_REASON: &str = "OSVersionMismatch";
pub const PODS_WATCH: &str = "pods";
pub const SANDBOX_EVENTS_WATCH: &str = "pod-sandbox-events";

/// The detector's own options.
#[derive(Debug, Clone)]
pub struct PodOptions {
    /// `--annotate-pods`: also record findings as an annotation on the pod.
    pub annotate: bool,
    /// `--namespace`: watch one namespace only; all when `None`.
    pub namespace: Option<String>,
}

/// Starts the detector and the probes of its two watches.
pub fn start(shared: &Arc<Shared>, options: &PodOptions, tasks: &mut Supervisor) {
    let client = shared.client.clone();
    let (pods, events): (Api<Pod>, Api<CoreEvent>) = match &options.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let sandbox_selector = format!("involvedObject.kind=Pod,reason={SANDBOX_EVENT_REASON}");
    shared.health.register_watch(PODS_WATCH);
    shared.health.register_watch(SANDBOX_EVENTS_WATCH);
    tasks.spawn(
        "pods-watch-probe",
        probe_failing_watch(
            pods.clone(),
            ListParams::default(),
            PODS_WATCH,
            shared.health.clone(),
            shared.metrics.clone(),
            tasks.shutdown(),
        ),
    );
    tasks.spawn(
        "pod-sandbox-events-watch-probe",
        probe_failing_watch(
            events.clone(),
            ListParams::default().fields(&sandbox_selector),
            SANDBOX_EVENTS_WATCH,
            shared.health.clone(),
            shared.metrics.clone(),
            tasks.shutdown(),
        ),
    );
    let sandbox_events = watcher::Config::default().fields(&sandbox_selector);
    tasks.spawn(
        CONTROLLER,
        detect(
            shared.clone(),
            options.annotate,
            (pods, events, sandbox_events),
            tasks.shutdown(),
        ),
    );
}

enum Input {
    // Boxed: objects are large, and only the pointer moves through the merged stream.
    Pod(Box<Result<watcher::Event<Pod>, watcher::Error>>),
    Sandbox(Box<Result<watcher::Event<CoreEvent>, watcher::Error>>),
    /// Our own OSVersionMismatch Events, published by whichever replica led.
    Published(Box<Result<watcher::Event<CoreEvent>, watcher::Error>>),
    /// Time to publish the Events of episodes not reported yet (as the leader).
    Tick,
}

/// How often the leader looks for episodes whose Event is not published yet.
const REPORT_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs until `shutdown`. Waits for the Node index first: a pod's node must be known to judge it.
async fn detect(
    shared: Arc<Shared>,
    annotate: bool,
    (pods, events, sandbox_events): (Api<Pod>, Api<CoreEvent>, watcher::Config),
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut synced = shared.nodes_synced.clone();
    tokio::select! {
        result = synced.wait_for(|synced| *synced) => if result.is_err() { return Ok(()) },
        () = shutdown.cancelled() => return Ok(()),
    }
    let pod_stream = watcher(pods, watcher::Config::default().page_size(LIST_PAGE_SIZE))
        .default_backoff()
        .map(|e| Input::Pod(Box::new(e)));
    // Our own Events, so that every replica knows which episodes the leader has reported.
    let published_stream = watcher(
        events.clone(),
        watcher::Config::default().fields(&format!("reason={EVENT_REASON}")),
    )
    .default_backoff()
    .map(|e| Input::Published(Box::new(e)));
    let event_stream = watcher(events, sandbox_events)
        .default_backoff()
        .map(|e| Input::Sandbox(Box::new(e)));
    let ticks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(REPORT_RETRY).await;
        Some((Input::Tick, ()))
    });
    let mut inputs = pin!(
        futures::stream::select(
            futures::stream::select(pod_stream, event_stream),
            futures::stream::select(published_stream, ticks)
        )
        .take_until(shutdown.cancelled_owned())
    );

    let mut episodes = Episodes::new(shared.keys.clone());
    while let Some(input) = inputs.next().await {
        let effects = match input {
            Input::Pod(event) => {
                observe_watch(&shared.health, &shared.metrics, PODS_WATCH, &event);
                match *event {
                    Ok(event) => on_pod_event(&shared, &mut episodes, event),
                    Err(_) => Vec::new(),
                }
            }
            Input::Sandbox(event) => {
                observe_watch(
                    &shared.health,
                    &shared.metrics,
                    SANDBOX_EVENTS_WATCH,
                    &event,
                );
                match *event {
                    Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) => {
                        on_sandbox_event(&shared, &mut episodes, &e).await
                    }
                    _ => Vec::new(),
                }
            }
            Input::Published(event) => {
                if let Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) = *event
                    && e.reporting_component.as_deref() == Some(FIELD_MANAGER)
                    && let Some(uid) = e.involved_object.uid.as_deref()
                {
                    episodes.published(uid);
                }
                Vec::new()
            }
            Input::Tick => {
                // Episodes that began while no replica led, or whose Event could not be written: the
                // leader reports them now.
                if shared.may_write() {
                    for (flag, message) in episodes.unreported() {
                        if report(&shared, &flag, message).await {
                            episodes.reported(&flag.pod.uid, &flag.container);
                        }
                    }
                }
                Vec::new()
            }
        };
        for effect in effects {
            if let Some(flag) = carry_out(&shared, annotate, effect).await {
                episodes.reported(&flag.pod.uid, &flag.container);
            }
        }
    }
    Ok(())
}

fn on_pod_event(
    shared: &Shared,
    episodes: &mut Episodes,
    event: watcher::Event<Pod>,
) -> Vec<Effect> {
    match event {
        watcher::Event::Init => {
            episodes.relist_started();
            Vec::new()
        }
        watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
            let facts = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .and_then(|node| shared.node_facts(node));
            episodes.pod_observed(&pod, facts.as_ref())
        }
        watcher::Event::Delete(pod) => episodes.pod_deleted(&pod.uid().unwrap_or_default()),
        watcher::Event::InitDone => episodes.relist_done(),
    }
}

/// The Event names the pod; its node and image come from the pod itself, read now.
#[tracing::instrument(skip_all, fields(namespace, pod))]
async fn on_sandbox_event(
    shared: &Shared,
    episodes: &mut Episodes,
    event: &CoreEvent,
) -> Vec<Effect> {
    let Some(found) = sandbox_failure(event) else {
        return Vec::new();
    };
    tracing::Span::current()
        .record("namespace", found.namespace.as_str())
        .record("pod", found.pod.as_str());
    if found
        .uid
        .as_deref()
        .is_some_and(|uid| episodes.sandbox_flagged(uid))
    {
        return Vec::new();
    }
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &found.namespace);
    let pod = match api.get_opt(&found.pod).await {
        Ok(Some(pod)) => pod,
        Ok(None) => return Vec::new(),
        Err(err) => {
            shared
                .metrics
                .api_error(CONTROLLER, api_error_category(&err));
            tracing::warn!(error = %err, "cannot read the pod of a sandbox failure");
            return Vec::new();
        }
    };
    let facts = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .and_then(|node| shared.node_facts(node));
    episodes.sandbox_failed(&found, &pod, facts.as_ref())
}

/// Carries out one effect; returns the flag whose Event this replica has just published.
async fn carry_out(shared: &Shared, annotate: bool, effect: Effect) -> Option<Flag> {
    match effect {
        Effect::Flagged { flag, message } => flagged(shared, &flag, message).await.then_some(flag),
        Effect::Cleared { flag } => {
            cleared(shared, &flag);
            None
        }
        Effect::Annotate { pod, findings } if annotate => {
            sync_annotation(shared, &pod, findings).await;
            None
        }
        Effect::Annotate { .. } => None,
    }
}

#[tracing::instrument(skip_all, fields(namespace = %flag.pod.namespace, pod = %flag.pod.name, container = %flag.container, node = %flag.node))]
async fn flagged(shared: &Shared, flag: &Flag, message: String) -> bool {
    let metrics = &shared.metrics;
    metrics
        .pod_os_mismatch
        .with_label_values(&flag.gauge_labels())
        .set(1);
    metrics
        .pod_os_mismatch_detections
        .with_label_values(&[&flag.pod.namespace])
        .inc();
    tracing::warn!("{message}");
    report(shared, flag, message).await
}

/// Publishes the episode's Warning Event (as the leader); returns whether it was written.
async fn report(shared: &Shared, flag: &Flag, message: String) -> bool {
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(flag.pod.name.clone()),
        namespace: Some(flag.pod.namespace.clone()),
        uid: Some(flag.pod.uid.clone()),
        ..Default::default()
    };
    shared
        .publish(
            CONTROLLER,
            &reference,
            EventType::Warning,
            EVENT_REASON,
            "DetectOSMismatch",
            message,
        )
        .await
}

#[tracing::instrument(skip_all, fields(namespace = %flag.pod.namespace, pod = %flag.pod.name, container = %flag.container))]
fn cleared(shared: &Shared, flag: &Flag) {
    // The series may already be gone (never set on this replica); nothing to do then.
    let _ = shared
        .metrics
        .pod_os_mismatch
        .remove_label_values(&flag.gauge_labels());
    tracing::info!("OS mismatch cleared");
}

/// Makes the pod's annotation list exactly its current findings (none: removed), as the leader.
#[tracing::instrument(skip_all, fields(namespace = %pod.namespace, pod = %pod.name))]
async fn sync_annotation(shared: &Shared, pod: &PodRef, findings: Vec<serde_json::Value>) {
    if !shared.may_write() {
        return;
    }
    let annotations = if findings.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({ shared.keys.mismatch_annotation(): serde_json::Value::Array(findings).to_string() })
    };
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid, "annotations": annotations},
    });
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &pod.namespace);
    match api
        .patch(
            &pod.name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&patch),
        )
        .await
    {
        // Gone, or replaced by a pod of the same name (the uid precondition): nothing to annotate.
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(err) => {
            shared
                .metrics
                .api_error(CONTROLLER, api_error_category(&err));
            tracing::warn!(error = %err, "cannot annotate pod");
        }
    }
}
